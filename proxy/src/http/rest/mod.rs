//! The REST API, per `shared/spec/compat.md` §4, §5 and §7, in both route generations:
//! `/api/repos[/{name}/…]` (the repository in the path, raw or `%2F`-encoded) and the legacy
//! `/api/v1/…` that the released SDKs call (the repository taken from the token's `repo`).
//! Every route needs a token; errors are JSON `{"error": …}`.
//!
//! - `repos`: create, list, show, delete, pull-upstream, detach.
//! - `fork`: create-repo with a repository of this server as `base_repo` (forks).
//! - `branches`: list, get, create / promote, delete (default and ephemeral namespaces).
//! - `credentials`: the upstream credential: create, rotate, delete.
//! - `webhooks`: organisation-wide webhook subscriptions and their delivery logs.
//! - `admin`: `GET /api/v1/admin/backup` (admin scope), a consistent backup stream;
//!   `GET /api/v1/admin/refs`, every ref as text.
//! - `maintain`: `POST /api/admin/maintain`, compaction on demand (admin only).

mod admin;
mod branches;
mod credentials;
mod fork;
mod maintain;
mod repos;
mod webhooks;

use std::sync::Arc;

use codestorage_store::{Repo, RepoName};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::authz;
use super::body::{Body, full, read_limited};
use super::error::ApiError;
use crate::app::App;
use crate::auth::Identity;
use crate::sync::{Gate, SYNC_IN_PROGRESS};

/// A JSON response with `status`.
pub(crate) fn json_response(status: StatusCode, value: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(value.to_string()))
        .unwrap_or_else(|_| Response::new(full("{}")))
}

/// Decode `%XX` escapes (names may arrive as `owner%2Fname`).
pub(crate) fn percent_decode(s: &str) -> Option<String> {
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

/// A write's JSON body: `None` when blank.
fn parse_body(bytes: &[u8]) -> Result<Option<Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(None)
    } else {
        serde_json::from_slice(bytes)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The REST API's JSON request bodies, for [`check_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `POST /api/repos` (a mirror, a fork or a local repository).
    CreateRepo,
    /// `POST …/pull-upstream`.
    PullUpstream,
    /// `POST …/branches/create`.
    CreateBranch,
    /// `DELETE …/branches`.
    DeleteBranch,
    /// `POST|PUT|DELETE …/git-credentials`.
    Credential,
    /// `POST /api/webhooks`.
    CreateWebhook,
}

impl BodyKind {
    /// Every kind.
    pub const ALL: [BodyKind; 6] = [
        BodyKind::CreateRepo,
        BodyKind::PullUpstream,
        BodyKind::CreateBranch,
        BodyKind::DeleteBranch,
        BodyKind::Credential,
        BodyKind::CreateWebhook,
    ];
}

/// Parse `bytes` as a body of `kind` the way a request's body is parsed and run the checks that
/// need no server state (names, URLs, refs, ids, secrets). Public for the fuzz targets in
/// `fuzz/`; the handlers run the same code. Bodies over the default `--max-json-bytes` are
/// refused, as the server would with its default limits.
pub fn check_body(kind: BodyKind, bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.len() > crate::limits::DEFAULT_MAX_JSON_BYTES {
        return Err(ApiError::bad_request("body too large"));
    }
    let call = Call {
        query: Vec::new(),
        body: parse_body(bytes)?,
    };
    match kind {
        BodyKind::CreateRepo => repos::check_create(&call),
        BodyKind::PullUpstream => repos::check_pull(&call),
        BodyKind::CreateBranch => branches::check_create(&call),
        BodyKind::DeleteBranch => branches::check_delete(&call),
        BodyKind::Credential => credentials::check_body(&call),
        BodyKind::CreateWebhook => webhooks::check_create(&call),
    }
}

/// A request's query parameters and, for writes, its JSON body.
pub(super) struct Call {
    query: Vec<(String, String)>,
    body: Option<Value>,
}

impl Call {
    async fn read(req: Request<Incoming>, max_json: usize) -> Result<(Call, Method), ApiError> {
        let method = req.method().clone();
        let query = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .filter(|(k, _)| !k.is_empty())
            .filter_map(|(k, v)| Some((k.to_owned(), percent_decode(&v.replace('+', " "))?)))
            .collect();
        let body = if matches!(
            method,
            Method::POST | Method::PUT | Method::DELETE | Method::PATCH
        ) {
            let bytes = read_limited(req.into_body(), max_json, None)
                .await
                .map_err(|e| ApiError::new(e.status(), e.to_string()))?;
            parse_body(&bytes)?
        } else {
            None
        };
        Ok((Call { query, body }, method))
    }

    /// A query parameter.
    pub(super) fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean query parameter (`true`/`1`).
    pub(super) fn flag(&self, key: &str) -> bool {
        matches!(self.query(key), Some("true" | "1"))
    }

    /// The JSON body as `T` (an absent body is `{}`).
    pub(super) fn body<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let empty = Value::Object(Default::default());
        // `&Value` is a deserializer: no copy of the (up to --max-json-bytes) body per call.
        T::deserialize(self.body.as_ref().unwrap_or(&empty))
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }

    /// `limit` (1..=max, default `default`).
    pub(super) fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.query("limit") {
            None => Ok(default),
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=max).contains(l))
                .ok_or_else(|| ApiError::bad_request(format!("limit must be between 1 and {max}"))),
        }
    }
}

/// The repository `name`, or 404.
pub(super) fn find(app: &App, name: &str) -> Result<Arc<Repo>, ApiError> {
    RepoName::new(name)
        .ok()
        .and_then(|n| app.store.repo(n.as_str()))
        .ok_or_else(|| ApiError::not_found("Repository doesn't exist"))
}

/// The sync gate for routes other than show and pull-upstream.
pub(super) fn gate(app: &App, repo: &Repo) -> Result<(), ApiError> {
    match app.sync.gate(repo) {
        Gate::Ready => Ok(()),
        Gate::Syncing => Err(ApiError::new(StatusCode::CONFLICT, SYNC_IN_PROGRESS)),
        Gate::Failed(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the first sync failed: {e}"),
        )),
    }
}

/// What a route does with its repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Show,
    Delete,
    PullUpstream,
    ListBranches,
    GetBranch,
    CreateBranch,
    DeleteBranch,
    CreateCredential,
    Detach,
}

/// Route a request under `/api/`.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let id = match authz::identify(&app, req.headers()) {
        Ok(id) => id,
        Err(e) => return e.json(),
    };
    let result = match Call::read(req, app.throttle.limits.max_json_bytes).await {
        Ok((call, method)) => route(&app, &id, &method, &path, &call).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(|e| e.json())
}

async fn route(
    app: &Arc<App>,
    id: &Identity,
    method: &Method,
    path: &str,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    if let Some(rest) = path
        .strip_prefix("/api/v1/webhooks")
        .or_else(|| path.strip_prefix("/api/webhooks"))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    {
        return webhooks::route(app, id, method, rest, call).await;
    }
    if path == "/api/v1/admin/refs" {
        return match *method {
            Method::GET => admin::refs(app, id, call).await,
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            )),
        };
    }
    if path == "/api/v1/admin/backup" {
        return match *method {
            Method::GET => admin::backup(app, id),
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            )),
        };
    }
    if maintain::is_route(path) {
        return maintain::handle(app, id, method, call).await;
    }
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        return legacy(app, id, method, rest, call).await;
    }
    match (method, path) {
        (&Method::POST, "/api/repos") => {
            let name = call.body::<repos::CreateBody>()?.name;
            repos::create(app, id, name.as_deref(), call).await
        }
        (&Method::GET, "/api/repos") => repos::list(app, id, call),
        (_, "/api/repos") => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        )),
        (method, p) => {
            let rest = p
                .strip_prefix("/api/repos/")
                .and_then(percent_decode)
                .ok_or_else(|| ApiError::not_found("no such API route"))?;
            if matches!(*method, Method::PUT | Method::DELETE)
                && let Some((name, cred)) = credentials::split_id_route(app, &rest)
            {
                let locator = credentials::Locator::Path { name, id: cred };
                return if *method == Method::PUT {
                    credentials::update(app, id, locator, call).await
                } else {
                    credentials::delete(app, id, locator, call).await
                };
            }
            let (name, route) = split_route(app, id, method, &rest)?;
            on_repo(app, id, &name, route, call).await
        }
    }
}

/// Split `name/…/suffix` into the repository name and the route, preferring a sub-route when
/// the name before it is a repository.
fn split_route(
    app: &App,
    id: &Identity,
    method: &Method,
    rest: &str,
) -> Result<(String, Route), ApiError> {
    let subroutes: &[(&Method, &str, Route)] = &[
        (&Method::POST, "/pull-upstream", Route::PullUpstream),
        (&Method::POST, "/branches/create", Route::CreateBranch),
        (&Method::GET, "/branches", Route::ListBranches),
        (&Method::DELETE, "/branches", Route::DeleteBranch),
        (&Method::GET, "/branch", Route::GetBranch),
        (&Method::POST, "/git-credentials", Route::CreateCredential),
        (&Method::DELETE, "/base", Route::Detach),
    ];
    for (m, suffix, route) in subroutes {
        if *m == method
            && let Some(name) = rest.strip_suffix(suffix)
            && (app.store.repo(name).is_some() || app.store.repo(rest).is_none())
        {
            return Ok((name.to_owned(), *route));
        }
    }
    match *method {
        Method::GET => Ok((rest.to_owned(), Route::Show)),
        Method::DELETE => Ok((rest.to_owned(), Route::Delete)),
        _ => {
            authz::check_claim(id, rest)?;
            Err(ApiError::not_found("no such API route"))
        }
    }
}

async fn on_repo(
    app: &Arc<App>,
    id: &Identity,
    name: &str,
    route: Route,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    authz::check_claim(id, name)?;
    let repo = find(app, name)?;
    match route {
        Route::Show => repos::show(app, id, &repo),
        Route::Delete => repos::delete(app, id, &repo).await,
        Route::PullUpstream => repos::pull_upstream(app, id, repo, call),
        Route::ListBranches => branches::list(app, id, &repo, call),
        Route::GetBranch => branches::get(app, id, &repo, call),
        Route::CreateBranch => branches::create(app, id, repo, call).await,
        Route::DeleteBranch => branches::delete(app, id, repo, call).await,
        Route::CreateCredential => credentials::create(app, id, Some(name), call).await,
        Route::Detach => repos::detach(app, id, &repo).await,
    }
}

/// `/api/v1/…`: the repository comes from the token's `repo` claim.
async fn legacy(
    app: &Arc<App>,
    id: &Identity,
    method: &Method,
    rest: &str,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let claimed = || {
        id.claims
            .repo
            .clone()
            .filter(|r| r != "org")
            .ok_or_else(|| {
                ApiError::bad_request("this route takes the repository from the token's repo claim")
            })
    };
    let route = match (method, rest) {
        (&Method::POST, "repos") => {
            let name = claimed()?;
            return repos::create(app, id, Some(&name), call).await;
        }
        (&Method::GET, "repos") => return repos::list(app, id, call),
        (&Method::GET, "repo") => Route::Show,
        (&Method::DELETE, "repos/delete") => Route::Delete,
        (&Method::POST, "repos/pull-upstream") => Route::PullUpstream,
        (&Method::GET, "repos/branches") => Route::ListBranches,
        (&Method::POST, "repos/branches/create") => Route::CreateBranch,
        (&Method::DELETE, "repos/branches") => Route::DeleteBranch,
        (&Method::DELETE, "repos/base") => Route::Detach,
        (&Method::POST, "repos/git-credentials") => {
            return credentials::create(app, id, None, call).await;
        }
        (&Method::PUT, "repos/git-credentials") => {
            return credentials::update(app, id, credentials::Locator::Body, call).await;
        }
        (&Method::DELETE, "repos/git-credentials") => {
            return credentials::delete(app, id, credentials::Locator::Body, call).await;
        }
        _ => return Err(ApiError::not_found("no such API route")),
    };
    on_repo(app, id, &claimed()?, route, call).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_slashes() {
        assert_eq!(
            percent_decode("team%2Fproject").as_deref(),
            Some("team/project")
        );
        assert_eq!(percent_decode("bad%zz"), None);
    }

    fn status(kind: BodyKind, body: &str) -> Option<StatusCode> {
        check_body(kind, body.as_bytes()).err().map(|e| e.status)
    }

    #[test]
    fn bodies_are_parsed_and_checked_as_requests_are() {
        let bad = Some(StatusCode::BAD_REQUEST);
        for kind in BodyKind::ALL {
            assert_eq!(status(kind, "{not json"), bad, "{kind:?}");
            assert_eq!(status(kind, "[1, 2]"), bad, "{kind:?}");
            assert_eq!(status(kind, "\u{0}"), bad, "{kind:?}");
        }
        let ok = [
            (BodyKind::CreateRepo, r#"{"name": "team/app"}"#),
            (
                BodyKind::CreateRepo,
                r#"{"base_repo": {"owner": "o", "name": "r"}}"#,
            ),
            (
                BodyKind::CreateRepo,
                r#"{"base_repo": {"provider": "code", "name": "a"}}"#,
            ),
            (BodyKind::PullUpstream, "  "),
            (BodyKind::PullUpstream, r#"{"ref": "main"}"#),
            (
                BodyKind::CreateBranch,
                r#"{"base_branch": "main", "target_branch": "x"}"#,
            ),
            (BodyKind::DeleteBranch, r#"{"name": "x"}"#),
            (BodyKind::Credential, r#"{"password": "p", "username": ""}"#),
            (
                BodyKind::CreateWebhook,
                r#"{"url": "https://h", "events": ["push"]}"#,
            ),
        ];
        for (kind, body) in ok {
            assert_eq!(status(kind, body), None, "{kind:?} {body}");
        }
        let refused = [
            (BodyKind::CreateRepo, r#"{"name": "../x"}"#),
            (
                BodyKind::CreateRepo,
                r#"{"base_repo": {"provider": "nope"}}"#,
            ),
            (
                BodyKind::CreateRepo,
                r#"{"base_repo": {"url": "https://u:p@h/x.git"}}"#,
            ),
            (
                BodyKind::CreateRepo,
                r#"{"base_repo": {"provider": "code", "sha": "zz"}}"#,
            ),
            (BodyKind::PullUpstream, r#"{"after": "abc"}"#),
            (BodyKind::CreateBranch, r#"{"base_branch": "a..b"}"#),
            (BodyKind::DeleteBranch, "{}"),
            (BodyKind::Credential, r#"{"password": "a\u0000b"}"#),
            (
                BodyKind::CreateWebhook,
                r#"{"url": "https://h", "events": ["nope"]}"#,
            ),
            (
                BodyKind::CreateWebhook,
                r#"{"url": "https://h", "events": [], "secret": 1}"#,
            ),
        ];
        for (kind, body) in refused {
            assert_eq!(status(kind, body), bad, "{kind:?} {body}");
        }
        let huge = format!(
            "{{\"name\": \"{}\"}}",
            "a".repeat(crate::limits::DEFAULT_MAX_JSON_BYTES)
        );
        assert_eq!(status(BodyKind::CreateRepo, &huge), bad);
    }
}
