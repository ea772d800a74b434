//! Repository routes: create (local or mirror, with the provider host map), list, show,
//! delete, pull-upstream.

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
            (Some(p), _) => Some(p.clone()),
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

fn path_part(what: &str, value: Option<&str>) -> Result<String, ApiError> {
    let v = value.unwrap_or_default().trim_matches('/');
    let ok = !v.is_empty()
        && v.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/~".contains(c));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "base_repo.{what} is missing or invalid"
        )))
    }
}

/// The clone URL of a `base_repo`; GitHub repositories come from `github_url` (the
/// `--github-url` setting) unless the base names a host.
fn upstream_url(base: &BaseRepo, github_url: &str) -> Result<String, ApiError> {
    if let Some(url) = &base.url {
        return Ok(url.clone());
    }
    let provider = base.provider.as_deref().unwrap_or("github");
    if provider == "github" && base.upstream_host.is_none() {
        let owner = path_part("owner", base.owner.as_deref())?;
        let name = path_part("name", base.name.as_deref())?;
        return Ok(format!(
            "{}/{owner}/{}.git",
            github_url.trim_end_matches('/'),
            name.trim_end_matches(".git")
        ));
    }
    let default_host = host_of(provider)?;
    let host = match (&base.upstream_host, default_host) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => h.to_owned(),
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "base_repo.upstream_host is required for provider '{provider}'"
            )));
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
    {
        return Err(ApiError::bad_request("base_repo.upstream_host is invalid"));
    }
    let owner = path_part("owner", base.owner.as_deref())?;
    let name = path_part("name", base.name.as_deref())?;
    Ok(match provider {
        "sr.ht" | "sourcehut" => {
            let owner = owner.trim_start_matches('~');
            format!("https://{host}/~{owner}/{name}")
        }
        _ => format!(
            "https://{host}/{owner}/{}.git",
            name.trim_end_matches(".git")
        ),
    })
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
    .map_err(|e| match e {
        StoreError::RepoExists(_) => ApiError::new(
            StatusCode::CONFLICT,
            "Repository already exists or already has an upstream configured",
        ),
        StoreError::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::internal(other),
    })?;
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
    let allow_http = app.config.allow_http_upstream;
    let probe = tokio::task::spawn_blocking(move || {
        crate::sync::fetch::probe(&target, allow_http).map_err(|e| e.to_string())
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

fn base_repo_json(repo: &Repo) -> Value {
    match repo.record().upstream {
        None => Value::Null,
        Some(u) => {
            let mut v = json!({
                "provider": u.provider,
                "owner": u.owner,
                "name": u.name,
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
    let mut repos: Vec<Arc<Repo>> = app
        .store
        .repos()
        .into_iter()
        .filter(|r| all || authz::org_of(app, r) == id.claims.iss)
        .filter(|r| q.is_none_or(|q| r.record().name.contains(q)))
        .filter(|r| cursor.is_none_or(|c| r.record().name.as_str() > c))
        .collect();
    repos.sort_by_key(|r| r.record().name);
    let has_more = repos.len() > limit;
    repos.truncate(limit);
    let next_cursor = if has_more {
        repos.last().map(|r| Value::String(r.record().name))
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        json!({
            "repos": repos.iter().map(|r| summary(r)).collect::<Vec<_>>(),
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

/// Ask for a sync (202; it runs asynchronously).
pub(super) fn pull_upstream(
    app: &Arc<App>,
    id: &Identity,
    repo: Arc<Repo>,
) -> Result<Response<Body>, ApiError> {
    authz::check_repo(app, id, &repo, Scope::GitWrite)?;
    if repo.record().upstream.is_none() {
        return Err(ApiError::bad_request(
            "Repository has no upstream configured",
        ));
    }
    app.sync.request(repo);
    Ok(json_response(
        StatusCode::ACCEPTED,
        json!({ "message": "Repository sync initiated successfully" }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_urls_follow_the_host_map() {
        let base = |p: &str, host: Option<&str>| BaseRepo {
            provider: Some(p.into()),
            owner: Some("group/sub".into()),
            name: Some("proj".into()),
            upstream_host: host.map(Into::into),
            ..Default::default()
        };
        let upstream_url = |b: &BaseRepo| super::upstream_url(b, "https://github.com");
        assert_eq!(
            upstream_url(&base("github", None)).ok(),
            Some("https://github.com/group/sub/proj.git".into())
        );
        assert_eq!(
            super::upstream_url(&base("github", None), "http://127.0.0.1:9/").ok(),
            Some("http://127.0.0.1:9/group/sub/proj.git".into())
        );
        assert_eq!(
            upstream_url(&base("gitlab", None)).ok(),
            Some("https://gitlab.com/group/sub/proj.git".into())
        );
        assert_eq!(
            upstream_url(&base("sr.ht", None)).ok(),
            Some("https://git.sr.ht/~group/sub/proj".into())
        );
        assert!(upstream_url(&base("gitea", None)).is_err());
        assert_eq!(
            upstream_url(&base("forgejo", Some("git.example.com"))).ok(),
            Some("https://git.example.com/group/sub/proj.git".into())
        );
        assert!(upstream_url(&base("nope", None)).is_err());
    }
}
