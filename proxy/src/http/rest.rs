//! The REST API (`/api/repos…`), per `shared/spec/compat.md` §5 and §7: create, list and show
//! repositories, and ask for a sync. Errors are JSON `{"error": …}` with the status decided in
//! `error.rs`.

use std::sync::Arc;

use codestorage_store::{Repo, RepoName, StoreError, UpstreamRecord};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Body, full, read_limited};
use super::error::ApiError;
use crate::app::App;
use crate::sync::{Gate, SYNC_IN_PROGRESS};
use crate::time::rfc3339;

/// Largest JSON request body accepted.
const MAX_JSON: usize = 1 << 20;

fn json_response(status: StatusCode, value: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(value.to_string()))
        .unwrap_or_else(|_| Response::new(full("{}")))
}

/// Decode `%XX` escapes (names may arrive as `owner%2Fname`).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| percent_decode(&v.replace('+', " ")))
}

/// Route a request under `/api/`.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let result = match (req.method().clone(), path.as_str()) {
        (Method::POST, "/api/repos") => create(&app, req).await,
        (Method::GET, "/api/repos") => list(&app, &req),
        (_, "/api/repos") => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        )),
        (method, p) => match p.strip_prefix("/api/repos/").and_then(percent_decode) {
            Some(rest) => repo_route(&app, method, &rest),
            None => Err(ApiError::not_found("no such API route")),
        },
    };
    result.unwrap_or_else(|e| e.json())
}

fn find(app: &App, name: &str) -> Result<Arc<Repo>, ApiError> {
    RepoName::new(name)
        .ok()
        .and_then(|n| app.store.repo(n.as_str()))
        .ok_or_else(|| ApiError::not_found("Repository doesn't exist"))
}

fn repo_route(app: &Arc<App>, method: Method, rest: &str) -> Result<Response<Body>, ApiError> {
    if method == Method::POST
        && let Some(name) = rest.strip_suffix("/pull-upstream")
    {
        return pull_upstream(app, name);
    }
    if method == Method::GET
        && let Ok(repo) = find(app, rest)
    {
        return Ok(json_response(StatusCode::OK, show(app, &repo)));
    }
    // Any other route of an existing repository: the sync gate comes first.
    let mut parts = rest.rsplitn(2, '/');
    let _route = parts.next();
    if let Some(name) = parts.next()
        && let Ok(repo) = find(app, name)
    {
        gate(app, &repo)?;
        return Err(ApiError::not_found("no such API route"));
    }
    Err(ApiError::not_found("Repository doesn't exist"))
}

/// The sync gate for REST routes other than show and pull-upstream.
fn gate(app: &App, repo: &Repo) -> Result<(), ApiError> {
    match app.sync.gate(repo) {
        Gate::Ready => Ok(()),
        Gate::Syncing => Err(ApiError::new(StatusCode::CONFLICT, SYNC_IN_PROGRESS)),
        Gate::Failed(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the first sync failed: {e}"),
        )),
    }
}

#[derive(Debug, Deserialize, Default)]
struct BaseRepo {
    provider: Option<String>,
    owner: Option<String>,
    name: Option<String>,
    upstream_host: Option<String>,
    default_branch: Option<String>,
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    name: Option<String>,
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

async fn create(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let bytes = read_limited(req.into_body(), MAX_JSON, None)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let body: CreateBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let name = body
        .name
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let name = RepoName::new(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
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
    let is_mirror = upstream.is_some();
    let store = app.store.clone();
    let repo =
        tokio::task::spawn_blocking(move || store.create_repo(&name, &default_branch, upstream))
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
    tracing::info!(repo = %record.name, mirror = is_mirror, "repository created");
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

fn show(app: &App, repo: &Repo) -> Value {
    let mut v = summary(repo);
    let status = app.sync.status(repo);
    v["sync"] = serde_json::to_value(&status).unwrap_or(Value::Null);
    v
}

fn list(app: &App, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let limit = match query_param(req, "limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::bad_request("limit must be between 1 and 100"))?,
        None => 20,
    };
    let cursor = query_param(req, "cursor");
    let q = query_param(req, "q");
    let mut repos: Vec<Arc<Repo>> = app
        .store
        .repos()
        .into_iter()
        .filter(|r| q.as_deref().is_none_or(|q| r.record().name.contains(q)))
        .filter(|r| {
            cursor
                .as_deref()
                .is_none_or(|c| r.record().name.as_str() > c)
        })
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

fn pull_upstream(app: &Arc<App>, name: &str) -> Result<Response<Body>, ApiError> {
    let repo = find(app, name)?;
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

    #[test]
    fn percent_decoding_handles_slashes() {
        assert_eq!(
            percent_decode("team%2Fproject").as_deref(),
            Some("team/project")
        );
        assert_eq!(percent_decode("bad%zz"), None);
    }
}
