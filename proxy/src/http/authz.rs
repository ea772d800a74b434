//! Who may do what, for HTTP requests: the token from the request (401 when missing or
//! invalid), then repository, organisation and scope checks (403). The one place where auth
//! decisions become statuses.

use codestorage_store::Repo;
use http::HeaderMap;

use super::error::ApiError;
use crate::app::App;
use crate::auth::{Denied, Identity, Scope};

fn to_api(d: Denied) -> ApiError {
    match d {
        Denied::Unauthenticated(m) => {
            ApiError::unauthorized(format!("authentication required: {m}"))
        }
        Denied::Forbidden(m) => ApiError::forbidden(m),
    }
}

/// The verified caller, counted against the per-token request rate (429 when over it).
pub fn identify(app: &App, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let id = app.auth.authenticate(headers).map_err(to_api)?;
    app.throttle
        .check_rate(id.claims.sub.as_deref().unwrap_or_default())
        .map_err(ApiError::too_many_requests)?;
    Ok(id)
}

/// The organisation owning `repo`.
pub fn org_of(app: &App, repo: &Repo) -> String {
    repo.record().org.unwrap_or_else(|| app.auth.local_org())
}

/// Refuse a token bound to another repository before looking the name up (so a token for one
/// repository cannot probe which others exist).
pub fn check_claim(id: &Identity, name: &str) -> Result<(), ApiError> {
    if id.org_wide() || id.has(Scope::Admin) || id.claims.repo.as_deref() == Some(name) {
        Ok(())
    } else {
        Err(ApiError::forbidden("token is for another repository"))
    }
}

/// Require `scope` on `repo`.
pub fn check_repo(app: &App, id: &Identity, repo: &Repo, scope: Scope) -> Result<(), ApiError> {
    id.require_repo(scope, &repo.record().name, &org_of(app, repo))
        .map_err(to_api)
}

/// Require an organisation-wide `scope`.
pub fn check_org(id: &Identity, scope: Scope) -> Result<(), ApiError> {
    if !(id.org_wide() || id.has(Scope::Admin)) {
        return Err(ApiError::forbidden(
            "this needs an organisation-wide token (repo \"org\")",
        ));
    }
    id.require_org(scope).map_err(to_api)
}
