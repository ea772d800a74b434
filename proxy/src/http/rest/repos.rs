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

#[derive(Debug, Deserialize, Default)]
struct BaseRepo {
    provider: Option<String>,
    owner: Option<String>,
    name: Option<String>,
    upstream_host: Option<String>,
    default_branch: Option<String>,
    url: Option<String>,
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

/// The clone URL of a `base_repo`.
fn upstream_url(base: &BaseRepo) -> Result<String, ApiError> {
    if let Some(url) = &base.url {
        return Ok(url.clone());
    }
    let provider = base.provider.as_deref().unwrap_or("github");
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
    if super::fork::requested(call) {
        return super::fork::create(app, id, &name, call).await;
    }
    let upstream = match &body.base_repo {
        Some(base) => {
            let url = upstream_url(base)?;
            crate::sync::fetch::check_url(&url, app.config.allow_http_upstream)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some(UpstreamRecord {
                url,
                provider: base.provider.clone(),
                owner: base.owner.clone(),
                name: base.name.clone(),
                upstream_host: base.upstream_host.clone(),
                default_branch: base.default_branch.clone(),
            })
        }
        None => None,
    };
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

fn base_repo_json(repo: &Repo) -> Value {
    match repo.record().upstream {
        None => Value::Null,
        Some(u) => json!({
            "provider": u.provider,
            "owner": u.owner,
            "name": u.name,
            "upstream_host": u.upstream_host,
            "default_branch": u.default_branch,
            "url": u.url,
        }),
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

/// The pull-upstream body (all optional).
#[derive(Debug, Deserialize, Default)]
struct PullBody {
    /// One ref to pull (`main`, `refs/heads/main`, a tag).
    #[serde(rename = "ref")]
    reference: Option<String>,
    /// "Only sync commits after this SHA" (older docs).
    after: Option<String>,
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
