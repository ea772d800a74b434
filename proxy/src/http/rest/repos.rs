//! Repository routes: create (local or mirror, with the provider host map and each forge's
//! URL shape), list, show, delete, pull-upstream, detach.

use std::sync::Arc;

use codestorage_store::{Repo, RepoName, StoreError, UpstreamRecord};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Call, json_response};
use crate::app::App;
use crate::auth::{Identity, Scope};
use crate::http::authz;
use crate::http::body::Body;
use crate::http::error::ApiError;
use crate::time::rfc3339;
use crate::upstream::github;

#[derive(Debug, Deserialize, Default)]
struct BaseRepo {
    provider: Option<String>,
    owner: Option<String>,
    name: Option<String>,
    upstream_host: Option<String>,
    default_branch: Option<String>,
    url: Option<String>,
    auth: Option<BaseAuth>,
}

/// `base_repo.auth` (compat.md §5.3): `{"auth_type": "public"}` for public GitHub mode.
#[derive(Debug, Deserialize, Default)]
struct BaseAuth {
    auth_type: Option<String>,
}

impl BaseRepo {
    /// The provider: as given, else `github` for an `owner`/`name` base (compat.md §5.2), none
    /// for a bare `url`.
    fn provider(&self) -> Option<String> {
        match (&self.provider, &self.url) {
            (Some(p), _) => Some(p.to_ascii_lowercase()),
            (None, None) => Some("github".to_owned()),
            (None, Some(_)) => None,
        }
    }

    /// `base_repo.auth.auth_type`, checked.
    fn auth_type(&self) -> Result<Option<String>, ApiError> {
        match self.auth.as_ref().and_then(|a| a.auth_type.as_deref()) {
            None => Ok(None),
            Some(github::PUBLIC) => Ok(Some(github::PUBLIC.to_owned())),
            Some(other) => Err(ApiError::bad_request(format!(
                "base_repo.auth.auth_type {other:?} is not supported (use \"public\", or omit auth)"
            ))),
        }
    }
}

/// The create-repo body (compat.md §5.5).
#[derive(Debug, Deserialize)]
pub(super) struct CreateBody {
    /// The name (new routes; the legacy route takes it from the token).
    pub(super) name: Option<String>,
    default_branch: Option<String>,
    base_repo: Option<BaseRepo>,
}

/// The default host of `provider` (compat.md §5.4); `None` for forges that are only
/// self-hosted (Gitea, Forgejo), which need `upstream_host`.
fn host_of(provider: &str) -> Result<Option<&'static str>, ApiError> {
    Ok(match provider {
        "github" => Some("github.com"),
        "gitlab" => Some("gitlab.com"),
        "bitbucket" => Some("bitbucket.org"),
        "codeberg" => Some("codeberg.org"),
        "sr.ht" | "sourcehut" => Some("git.sr.ht"),
        "gitea" | "forgejo" => None,
        other => return Err(ApiError::bad_request(format!("unknown provider '{other}'"))),
    })
}

/// A path part of a forge URL: `nested` allows `group/subgroup/…` (GitLab's nested groups),
/// otherwise one segment.
fn path_part(what: &str, value: Option<&str>, nested: bool) -> Result<String, ApiError> {
    let v = value.unwrap_or_default().trim_matches('/');
    let ok = !v.is_empty()
        && (nested || !v.contains('/'))
        && v.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.starts_with('-'))
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/~".contains(c));
    if ok {
        Ok(v.to_owned())
    } else if v.contains('/') && !nested {
        Err(ApiError::bad_request(format!(
            "base_repo.{what} must be a single path segment for this provider"
        )))
    } else {
        Err(ApiError::bad_request(format!(
            "base_repo.{what} is missing or invalid"
        )))
    }
}

/// Whether `host` is a bare host name or address with an optional port (`git.example.com`,
/// `git.example.com:8443`, `10.0.0.7`, `[::1]:3000`).
fn valid_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) => {
                if addr.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, rest.strip_prefix(':'))
            }
            None => return false,
        },
        None => match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        },
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.len() <= 253
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    });
    port_ok && name_ok
}

/// The clone URL of a `base_repo`: `https://{host}/{owner}/{name}.git`, where GitLab's owner may
/// be a nested group path, SourceHut's is `~owner` (`https://git.sr.ht/~owner/name`), and
/// Bitbucket's is the workspace; GitHub repositories come from `github_url` (the `--github-url`
/// setting) unless the base names a host. An explicit `url` is taken as is (without user-info).
fn upstream_url(base: &BaseRepo, github_url: &str) -> Result<String, ApiError> {
    if let Some(url) = &base.url {
        if crate::sync::fetch::has_userinfo(url) {
            return Err(ApiError::bad_request(
                "base_repo.url must not contain credentials; store them with the git-credentials API",
            ));
        }
        return Ok(url.clone());
    }
    let provider = base
        .provider
        .as_deref()
        .unwrap_or("github")
        .to_ascii_lowercase();
    let default_host = host_of(&provider)?;
    let host = match (&base.upstream_host, default_host) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => h.to_owned(),
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "base_repo.upstream_host is required for provider '{provider}'"
            )));
        }
    };
    if host.contains('@') {
        return Err(ApiError::bad_request(
            "base_repo.upstream_host must not contain credentials; store them with the git-credentials API",
        ));
    }
    if !valid_host(&host) {
        return Err(ApiError::bad_request(
            "base_repo.upstream_host must be a bare host name with an optional port, such as git.example.com",
        ));
    }
    let owner = path_part("owner", base.owner.as_deref(), provider == "gitlab")?;
    let name = path_part("name", base.name.as_deref(), false)?;
    let name = name.trim_end_matches(".git");
    if name.is_empty() {
        return Err(ApiError::bad_request(
            "base_repo.name is missing or invalid",
        ));
    }
    Ok(match provider.as_str() {
        "sr.ht" | "sourcehut" => {
            let owner = owner.trim_start_matches('~');
            format!("https://{host}/~{owner}/{name}")
        }
        "github" if base.upstream_host.is_none() => {
            format!("{}/{owner}/{name}.git", github_url.trim_end_matches('/'))
        }
        _ => format!("https://{host}/{owner}/{name}.git"),
    })
}

/// The create-repo checks that need no server state: the body's shape, its `name`, and for a
/// mirror the upstream URL and auth type (fork bodies: see [`super::fork::check`]).
pub(super) fn check_create(call: &Call) -> Result<(), ApiError> {
    if super::fork::requested(call) {
        return super::fork::check(call);
    }
    let body: CreateBody = call.body()?;
    if let Some(name) = &body.name {
        RepoName::new(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    if let Some(base) = &body.base_repo {
        let url = upstream_url(base, "https://github.com")?;
        crate::sync::fetch::check_url(&url, false)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        base.auth_type()?;
        let _ = (base.provider(), identity_from_url(&url));
    }
    Ok(())
}

/// Create a repository called `name` (a mirror when the body has `base_repo`).
pub(super) async fn create(
    app: &Arc<App>,
    id: &Identity,
    name: Option<&str>,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let body: CreateBody = call.body()?;
    let name = name.ok_or_else(|| ApiError::bad_request("name is required"))?;
    let name = RepoName::new(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    authz::check_claim(id, name.as_str())?;
    if !id.has(Scope::RepoWrite) {
        return Err(ApiError::forbidden("token lacks the repo:write scope"));
    }
    if super::fork::requested(call) {
        return super::fork::create(app, id, &name, call).await;
    }
    let upstream = match &body.base_repo {
        Some(base) => {
            let url = upstream_url(base, &app.config.github.url)?;
            crate::sync::fetch::check_url(&url, app.config.allow_http_upstream)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let record = UpstreamRecord {
                url,
                provider: base.provider(),
                owner: base.owner.clone(),
                name: base.name.clone(),
                upstream_host: base.upstream_host.clone(),
                default_branch: base.default_branch.clone(),
                auth_type: base.auth_type()?,
            };
            check_github_mode(app, &record).await?;
            Some(record)
        }
        None => None,
    };
    if app.store.repo(name.as_str()).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Repository already exists or already has an upstream configured",
        ));
    }
    let default_branch = body
        .base_repo
        .as_ref()
        .and_then(|b| b.default_branch.clone())
        .or(body.default_branch)
        .unwrap_or_else(|| "main".to_owned());
    // The repository belongs to the token's organisation (the data directory's own for its
    // admin tokens).
    let org = (!id.local_org).then(|| id.claims.iss.clone());
    let is_mirror = upstream.is_some();
    let store = app.store.clone();
    let repo = tokio::task::spawn_blocking(move || {
        store.create_repo(&name, &default_branch, upstream, org)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(create_error)?;
    let record = repo.record();
    tracing::info!(repo = %record.name, mirror = is_mirror, who = %id.who(), "repository created");
    if is_mirror {
        app.sync.add(repo);
    }
    Ok(json_response(
        StatusCode::CREATED,
        json!({
            "repo_id": record.name,
            "message": if is_mirror { "Repository created; initial sync started" } else { "Repository created successfully" },
        }),
    ))
}

/// GitHub mirrors: App mode needs the App (412 otherwise); public mode needs the repository to
/// be readable without credentials, checked now by an anonymous `ls-refs` (400 otherwise).
async fn check_github_mode(app: &App, upstream: &UpstreamRecord) -> Result<(), ApiError> {
    if !github::is_github(upstream) {
        return Ok(());
    }
    if !github::is_public(upstream) {
        if app.credentials.has_github_app() {
            return Ok(());
        }
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            github::APP_REQUIRED,
        ));
    }
    let target = crate::upstream::UpstreamTarget {
        url: upstream.url.clone(),
        credential: None,
    };
    let opts = app.sync.fetch_options();
    let probe = tokio::task::spawn_blocking(move || {
        crate::sync::fetch::probe(&target, &opts).map_err(|e| e.to_string())
    })
    .await
    .map_err(ApiError::internal)?;
    probe.map_err(|e| {
        ApiError::bad_request(format!(
            "the GitHub repository {}/{} is not publicly readable at {} ({e}); \
             create it without auth_type \"public\" to sync it with the GitHub App",
            upstream.owner.as_deref().unwrap_or_default(),
            upstream.name.as_deref().unwrap_or_default(),
            upstream.url,
        ))
    })
}

/// Provider, owner and name of a mirror given by URL only, as the SDKs expect them (strings,
/// never null): the forge of a host in the provider map (else `git`, a generic git host), the
/// path's directory and its last segment without `.git`.
fn identity_from_url(url: &str) -> (String, String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let provider = ["github", "gitlab", "bitbucket", "codeberg", "sr.ht"]
        .into_iter()
        .find(|p| host_of(p).ok().flatten() == Some(host))
        .unwrap_or("git");
    let path = path.trim_matches('/');
    let (owner, name) = path.rsplit_once('/').unwrap_or(("", path));
    (
        provider.to_owned(),
        owner.to_owned(),
        name.trim_end_matches(".git").to_owned(),
    )
}

fn base_repo_json(repo: &Repo) -> Value {
    match repo.record().upstream {
        None => Value::Null,
        Some(u) => {
            let (provider, owner, name) = identity_from_url(&u.url);
            let mut v = json!({
                "provider": u.provider.unwrap_or(provider),
                "owner": u.owner.unwrap_or(owner),
                "name": u.name.unwrap_or(name),
                "upstream_host": u.upstream_host,
                "default_branch": u.default_branch,
                "url": u.url,
            });
            if let Some(auth_type) = &u.auth_type {
                v["auth"] = json!({ "auth_type": auth_type });
            }
            v
        }
    }
}

/// The default branch: where `HEAD` points (a mirror follows its upstream's), else the record's.
fn default_branch(repo: &Repo) -> String {
    match repo
        .view()
        .refs(codestorage_store::Namespace::Default)
        .get("HEAD")
    {
        Some(codestorage_store::RefValue::Symbolic(target)) => target
            .strip_prefix("refs/heads/")
            .unwrap_or(target)
            .to_owned(),
        _ => repo.record().default_branch,
    }
}

fn summary(repo: &Repo) -> Value {
    let r = repo.record();
    json!({
        "repo_id": r.name,
        "name": r.name,
        "url": r.name,
        "default_branch": default_branch(repo),
        "created_at": rfc3339(r.created_at),
        "base_repo": base_repo_json(repo),
        "git_credential": super::credentials::summary(repo),
    })
}

/// `GET` a repository: record and sync state.
pub(super) fn show(app: &App, id: &Identity, repo: &Repo) -> Result<Response<Body>, ApiError> {
    authz::check_repo(app, id, repo, Scope::GitRead)?;
    let mut v = summary(repo);
    let status = app.sync.status(repo);
    v["sync"] = serde_json::to_value(&status).unwrap_or(Value::Null);
    if repo
        .record()
        .upstream
        .as_ref()
        .is_some_and(github::is_public)
    {
        v["sync"]["diverged_refs"] =
            serde_json::to_value(crate::sync::public::diverged(repo)).unwrap_or(Value::Null);
    }
    Ok(json_response(StatusCode::OK, v))
}

/// List the organisation's repositories (all of them for the data directory's admin).
pub(super) fn list(app: &App, id: &Identity, call: &Call) -> Result<Response<Body>, ApiError> {
    authz::check_org(id, Scope::OrgRead)?;
    let limit = call.limit(20, 100)?;
    let cursor = call.query("cursor");
    let q = call.query("q");
    let all = id.local_org && id.has(Scope::Admin);
    // One record read per repository (a record is a clone), then sort by name.
    let mut repos: Vec<(String, Arc<Repo>)> = app
        .store
        .repos()
        .into_iter()
        .filter(|r| all || authz::org_of(app, r) == id.claims.iss)
        .map(|r| (r.record().name, r))
        .filter(|(name, _)| q.is_none_or(|q| name.contains(q)))
        .filter(|(name, _)| cursor.is_none_or(|c| name.as_str() > c))
        .collect();
    repos.sort_by(|a, b| a.0.cmp(&b.0));
    let has_more = repos.len() > limit;
    repos.truncate(limit);
    let next_cursor = if has_more {
        repos.last().map(|(name, _)| Value::String(name.clone()))
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        json!({
            "repos": repos.iter().map(|(_, r)| summary(r)).collect::<Vec<_>>(),
            "next_cursor": next_cursor,
            "has_more": has_more,
        }),
    ))
}

/// Delete a repository: its refs and records at once.
pub(super) async fn delete(
    app: &Arc<App>,
    id: &Identity,
    repo: &Repo,
) -> Result<Response<Body>, ApiError> {
    authz::check_repo(app, id, repo, Scope::RepoWrite)?;
    let name = repo.record().name;
    let store = app.store.clone();
    let gone = name.clone();
    tokio::task::spawn_blocking(move || store.delete_repo(&gone))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            StoreError::RepoNotFound(_) => {
                ApiError::new(StatusCode::CONFLICT, "Repository already deleted")
            }
            other => ApiError::internal(other),
        })?;
    app.sync.forget(&name);
    tracing::info!(repo = %name, who = %id.who(), "repository deleted");
    Ok(json_response(
        StatusCode::OK,
        json!({ "message": "Repository deleted", "repo_id": name }),
    ))
}

/// The answer to a failed repository creation (plain, mirror or fork): 409 for a name in use,
/// 400 for what the store refuses as invalid, 500 otherwise.
pub(super) fn create_error(e: StoreError) -> ApiError {
    match e {
        StoreError::RepoExists(_) => ApiError::new(
            StatusCode::CONFLICT,
            "Repository already exists or already has an upstream configured",
        ),
        StoreError::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::internal(other),
    }
}

/// The pull-upstream body (all optional).
#[derive(Debug, Deserialize, Default)]
struct PullBody {
    /// One ref to pull (`main`, `refs/heads/main`, a tag).
    #[serde(rename = "ref")]
    reference: Option<String>,
    /// "Only sync commits after this SHA" (older docs).
    after: Option<String>,
}

/// The pull-upstream body, parsed and checked: `ref` a valid ref name, `after` an object id.
pub(super) fn check_pull(call: &Call) -> Result<(), ApiError> {
    let body: PullBody = call.body()?;
    if let Some(r) = &body.reference {
        let full = if r.starts_with("refs/") {
            r.clone()
        } else {
            format!("refs/heads/{r}")
        };
        if !codestorage_store::refs::valid_ref_name(&full) {
            return Err(ApiError::bad_request(format!("invalid ref '{r}'")));
        }
    }
    if let Some(a) = &body.after
        && codestorage_store::ObjectId::from_hex(a.as_bytes()).is_err()
    {
        return Err(ApiError::bad_request("after must be a full object id"));
    }
    Ok(())
}

/// Ask for a sync (202; it runs asynchronously). A sync always brings every followed ref up to
/// date, so `ref` (validated) is satisfied by it; `after` must be an object id.
pub(super) fn pull_upstream(
    app: &Arc<App>,
    id: &Identity,
    repo: Arc<Repo>,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    authz::check_repo(app, id, &repo, Scope::GitWrite)?;
    if repo.record().upstream.is_none() {
        return Err(ApiError::bad_request(
            "Repository has no upstream configured",
        ));
    }
    check_pull(call)?;
    app.sync.request(repo);
    Ok(json_response(
        StatusCode::ACCEPTED,
        json!({ "message": "Repository sync initiated successfully" }),
    ))
}

/// Detach a mirror from its upstream (compat.md §5.8): it becomes a local repository with
/// everything it holds, its stored credential is deleted, syncing stops, and later pushes stay
/// here. Idempotent. Waits for a sync in progress (its lock) so none lands afterwards.
pub(super) async fn detach(
    app: &Arc<App>,
    id: &Identity,
    repo: &Arc<Repo>,
) -> Result<Response<Body>, ApiError> {
    authz::check_repo(app, id, repo, Scope::GitWrite)?;
    let name = repo.record().name;
    let lock = app.sync.repo_lock(&name);
    let _guard = lock.lock().await;
    let r = repo.clone();
    let was_mirror = tokio::task::spawn_blocking(move || {
        r.update_record(|record| {
            let was = record.upstream.is_some() || record.credential.is_some();
            record.upstream = None;
            record.credential = None;
            Ok::<_, StoreError>(was)
        })
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    if was_mirror {
        app.sync.forget(&name);
        tracing::info!(repo = %name, who = %id.who(), "repository detached from its upstream");
    }
    Ok(json_response(
        StatusCode::OK,
        json!({ "message": "repository detached" }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_only_mirrors_still_have_a_provider_owner_and_name() {
        let cases = [
            (
                "https://github.com/acme/widgets.git",
                ("github", "acme", "widgets"),
            ),
            ("https://gitlab.com/g/sub/proj", ("gitlab", "g/sub", "proj")),
            ("https://git.sr.ht/~me/tool", ("sr.ht", "~me", "tool")),
            (
                "https://u:p@git.example.com:8443/team/app.git",
                ("git", "team", "app"),
            ),
            ("http://127.0.0.1:9/solo.git", ("git", "", "solo")),
        ];
        for (url, (p, o, n)) in cases {
            assert_eq!(
                identity_from_url(url),
                (p.to_owned(), o.to_owned(), n.to_owned()),
                "{url}"
            );
        }
    }

    fn base(p: &str, owner: &str, name: &str, host: Option<&str>) -> BaseRepo {
        BaseRepo {
            provider: Some(p.into()),
            owner: Some(owner.into()),
            name: Some(name.into()),
            upstream_host: host.map(Into::into),
            ..Default::default()
        }
    }

    fn url(b: BaseRepo) -> Result<String, String> {
        upstream_url(&b, "https://github.com").map_err(|e| e.message)
    }

    #[test]
    fn github_repositories_come_from_the_github_url() {
        let b = || base("github", "octo", "app", None);
        assert_eq!(
            upstream_url(&b(), "http://127.0.0.1:9/").map_err(|e| e.message),
            Ok("http://127.0.0.1:9/octo/app.git".into())
        );
        assert_eq!(
            url(base("github", "octo", "app", Some("ghe.example.com"))).as_deref(),
            Ok("https://ghe.example.com/octo/app.git"),
            "an explicit host wins"
        );
    }

    #[test]
    fn provider_urls_follow_the_host_map() {
        assert_eq!(
            url(base("github", "octo", "app", None)).as_deref(),
            Ok("https://github.com/octo/app.git")
        );
        assert_eq!(
            url(base("gitlab", "group/sub/deeper", "proj", None)).as_deref(),
            Ok("https://gitlab.com/group/sub/deeper/proj.git"),
            "GitLab nested groups"
        );
        assert_eq!(
            url(base("bitbucket", "workspace", "repo.git", None)).as_deref(),
            Ok("https://bitbucket.org/workspace/repo.git"),
            "Bitbucket workspace/repo; a .git suffix is not doubled"
        );
        assert_eq!(
            url(base("codeberg", "forgejo", "forgejo", None)).as_deref(),
            Ok("https://codeberg.org/forgejo/forgejo.git")
        );
        for p in ["sr.ht", "sourcehut"] {
            assert_eq!(
                url(base(p, "~sircmpwn", "scdoc", None)).as_deref(),
                Ok("https://git.sr.ht/~sircmpwn/scdoc"),
                "{p}: ~owner/name"
            );
            assert_eq!(
                url(base(p, "sircmpwn", "scdoc", None)).as_deref(),
                Ok("https://git.sr.ht/~sircmpwn/scdoc"),
                "{p}: the ~ is added"
            );
        }
        for p in ["gitea", "forgejo"] {
            assert!(
                url(base(p, "o", "r", None))
                    .is_err_and(|e| e.contains("upstream_host is required")),
                "{p} has no default host"
            );
            assert_eq!(
                url(base(p, "o", "r", Some("git.example.com:3000"))).as_deref(),
                Ok("https://git.example.com:3000/o/r.git")
            );
        }
        assert_eq!(
            url(base("gitlab", "g", "p", Some("gitlab.internal"))).as_deref(),
            Ok("https://gitlab.internal/g/p.git"),
            "upstream_host overrides the default"
        );
        assert_eq!(
            url(base("GitLab", "g", "p", None)).as_deref(),
            Ok("https://gitlab.com/g/p.git"),
            "provider names are case-insensitive"
        );
    }

    #[test]
    fn bad_base_repos_are_refused_with_a_reason() {
        assert!(url(base("nope", "o", "r", None)).is_err_and(|e| e.contains("unknown provider")));
        for p in ["github", "bitbucket", "gitea", "sr.ht"] {
            assert!(
                url(base(p, "a/b", "r", Some("h.example"))).is_err_and(|e| e.contains("single")),
                "{p}: no nested owners"
            );
        }
        assert!(
            url(base("gitlab", "g", "a/b", None)).is_err(),
            "names are one segment"
        );
        assert!(url(base("gitlab", "g/../x", "p", None)).is_err());
        assert!(url(base("gitlab", "", "p", None)).is_err());
        assert!(url(base("gitlab", "g", "", None)).is_err());
        assert!(url(base("gitlab", "g", ".git", None)).is_err());
        assert!(
            url(base("gitlab", "-g", "p", None)).is_err(),
            "no option-like segments"
        );
        for host in [
            "https://git.example.com",
            "git.example.com/path",
            "git..example.com",
            "-x.example.com",
            "h:0",
            "h:99999",
            "h:",
            "[zz]",
            "",
        ] {
            assert!(
                url(base("gitea", "o", "r", Some(host))).is_err_and(|e| e.contains("bare host")),
                "{host:?}"
            );
        }
        assert!(
            url(base("gitea", "o", "r", Some("user:pw@h.example")))
                .is_err_and(|e| e.contains("credentials"))
        );
        assert_eq!(
            url(base("gitea", "o", "r", Some("[::1]:3000"))).as_deref(),
            Ok("https://[::1]:3000/o/r.git")
        );
    }

    #[test]
    fn urls_with_user_info_are_refused() {
        for bad in [
            "https://user:secret@git.example.com/o/r.git",
            "https://token@git.example.com/o/r.git",
            "http://u:p@127.0.0.1:8080/r.git",
        ] {
            let b = BaseRepo {
                url: Some(bad.into()),
                ..Default::default()
            };
            let err = url(b).expect_err(bad);
            assert!(err.contains("git-credentials"), "{err}");
            assert!(!err.contains("secret"), "the secret is not echoed: {err}");
        }
        use crate::sync::fetch::has_userinfo;
        assert!(!has_userinfo("https://git.example.com/o/r.git?x=a@b"));
        assert!(!has_userinfo("https://git.example.com/users/a@b/r.git"));
    }
}
