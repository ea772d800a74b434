//! Upstream credentials (compat.md §5.6): create, rotate and delete the one HTTP credential a
//! mirror presents to its upstream, in both route generations:
//!
//! - legacy `POST|PUT|DELETE /api/v1/repos/git-credentials` (create names the repository in the
//!   body's `repo_id`; update and delete name the credential by the body's `id`, with a token
//!   that may be organisation-wide, `repo: "org"`);
//! - `POST /api/repos/{name}/git-credentials`, `PUT|DELETE /api/repos/{name}/git-credentials/{id}`.
//!
//! Scope `repo:write`. The password (with the user name) is sealed by [`crate::secrets`] into
//! the repository's record; no route ever returns it and nothing logs it. A credential is found
//! by id among the repositories of the token's organisation (records are in memory; a scan is
//! cheap next to the fsync of the write).

use std::sync::Arc;

use codestorage_store::{CredentialRecord, Repo, StoreError};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{Call, json_response};
use crate::app::App;
use crate::auth::{Identity, Scope};
use crate::http::authz;
use crate::http::body::{Body, full};
use crate::http::error::ApiError;
use crate::secrets::Secret;
use crate::time::{now_unix, rfc3339};
use crate::upstream::credential;

/// Longest password or token accepted (forge tokens are well under 1 KiB).
const MAX_PASSWORD: usize = 8 << 10;
/// Longest user name accepted.
const MAX_USERNAME: usize = 256;

#[derive(Debug, Deserialize, Default)]
struct CredentialBody {
    repo_id: Option<String>,
    id: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Where an update or delete finds its credential.
pub(super) enum Locator<'a> {
    /// Legacy: the id is in the body; any repository of the token's organisation.
    Body,
    /// Name-based: the repository `name` and the credential `id` from the path.
    Path {
        /// The repository name.
        name: &'a str,
        /// The credential id.
        id: &'a str,
    },
}

/// `PUT|DELETE …/{name}/git-credentials/{id}`: the repository name and the credential id, when
/// `rest` (the decoded path after `/api/repos/`) has that shape. A repository whose own name
/// has that shape wins only when the shorter name is not a repository.
pub(super) fn split_id_route<'a>(app: &App, rest: &'a str) -> Option<(&'a str, &'a str)> {
    let (name, id) = rest.rsplit_once("/git-credentials/")?;
    let plausible = !name.is_empty() && !id.is_empty() && !id.contains('/');
    (plausible && (app.store.repo(name).is_some() || app.store.repo(rest).is_none()))
        .then_some((name, id))
}

fn require_scope(id: &Identity) -> Result<(), ApiError> {
    if id.has(Scope::RepoWrite) {
        Ok(())
    } else {
        Err(ApiError::forbidden("token lacks the repo:write scope"))
    }
}

fn password(body: &CredentialBody) -> Result<Secret, ApiError> {
    match body.password.as_deref() {
        None | Some("") => Err(ApiError::bad_request("password is required")),
        Some(p) if p.len() > MAX_PASSWORD => Err(ApiError::bad_request(format!(
            "password is longer than {MAX_PASSWORD} bytes"
        ))),
        Some(p) if p.chars().any(char::is_control) => Err(ApiError::bad_request(
            "password must not contain control characters",
        )),
        Some(p) => Ok(Secret::new(p)),
    }
}

/// The user name: `None` when absent, `Some(None)` when empty (use the forge's convention).
fn username(body: &CredentialBody) -> Result<Option<Option<String>>, ApiError> {
    match body.username.as_deref() {
        None => Ok(None),
        Some("") => Ok(Some(None)),
        Some(u) if u.len() > MAX_USERNAME => Err(ApiError::bad_request(format!(
            "username is longer than {MAX_USERNAME} bytes"
        ))),
        Some(u) if u.contains(':') || u.chars().any(char::is_control) => Err(
            ApiError::bad_request("username must not contain ':' or control characters"),
        ),
        Some(u) => Ok(Some(Some(u.to_owned()))),
    }
}

/// The credential body's checks that need no server state: its shape, password and user name.
pub(super) fn check_body(call: &Call) -> Result<(), ApiError> {
    let body: CredentialBody = call.body()?;
    password(&body)?;
    username(&body)?;
    Ok(())
}

fn required<'a>(what: &str, value: Option<&'a str>) -> Result<&'a str, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("{what} is required")))
}

/// Whether the token's organisation owns `repo` (the data directory's admin owns all).
fn in_org(app: &App, id: &Identity, repo: &Repo) -> bool {
    (id.local_org && id.has(Scope::Admin)) || authz::org_of(app, repo) == id.claims.iss
}

/// The repository `name` of the token's organisation, or 404.
fn find_repo(app: &App, id: &Identity, name: &str) -> Result<Arc<Repo>, ApiError> {
    authz::check_claim(id, name)?;
    super::find(app, name)
        .ok()
        .filter(|r| in_org(app, id, r))
        .ok_or_else(|| ApiError::not_found("Repository doesn't exist"))
}

fn not_found() -> ApiError {
    ApiError::not_found("Credential not found")
}

/// The repository holding credential `cred` that this token may manage, or 404.
fn find_credential(
    app: &App,
    id: &Identity,
    locator: &Locator<'_>,
    cred: &str,
) -> Result<Arc<Repo>, ApiError> {
    if let Locator::Path { name, .. } = locator {
        let repo = find_repo(app, id, name)?;
        let held = repo.record().credential.is_some_and(|c| c.id == cred);
        return if held { Ok(repo) } else { Err(not_found()) };
    }
    app.store
        .repos()
        .into_iter()
        .filter(|r| in_org(app, id, r))
        .filter(|r| authz::check_claim(id, &r.record().name).is_ok())
        .find(|r| r.record().credential.is_some_and(|c| c.id == cred))
        .ok_or_else(not_found)
}

/// Failures of a record change: a client error decided under the record lock, or the store.
enum Failed {
    Api(ApiError),
    Store(StoreError),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Store(e)
    }
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Failed::Api(e)
    }
}

/// Run `change` on `repo`'s record on a blocking thread (the write is fsynced).
async fn change_record<T: Send + 'static>(
    repo: Arc<Repo>,
    change: impl FnOnce(&mut codestorage_store::RepoRecord) -> Result<T, Failed> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(move || repo.update_record(change)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(Failed::Api(e))) => Err(e),
        Ok(Err(Failed::Store(e))) => Err(ApiError::internal(e)),
        Err(join) => Err(ApiError::internal(join)),
    }
}

fn sealing_failed(e: credential::CredentialError) -> Failed {
    Failed::Api(ApiError::internal(e))
}

/// Create the credential of the repository `name` (`None`: the body's `repo_id`, legacy).
pub(super) async fn create(
    app: &Arc<App>,
    id: &Identity,
    name: Option<&str>,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    require_scope(id)?;
    let body: CredentialBody = call.body()?;
    let name = match (name, body.repo_id.as_deref()) {
        (Some(path), Some(given)) if !given.is_empty() && given != path => {
            return Err(ApiError::bad_request(format!(
                "repo_id {given:?} does not match the repository in the path"
            )));
        }
        (Some(path), _) => path.to_owned(),
        (None, given) => required("repo_id", given)?.to_owned(),
    };
    let secret = password(&body)?;
    let user = username(&body)?.flatten();
    let repo = find_repo(app, id, &name)?;
    let cred_id = format!("ggc_{:016x}", rand::random::<u64>());
    let secrets = app.secrets.clone();
    let stored_id = cred_id.clone();
    let created = change_record(repo, move |record| {
        if record.upstream.is_none() {
            return Err(ApiError::bad_request(
                "Repository has no upstream configured; a credential is only used to reach one",
            )
            .into());
        }
        if record.credential.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "A credential already exists for this repository",
            )
            .into());
        }
        let sealed = credential::seal(&secrets, &record.id, &stored_id, user.as_deref(), &secret)
            .map_err(sealing_failed)?;
        let now = now_unix();
        record.credential = Some(CredentialRecord {
            id: stored_id,
            sealed,
            created_at: now,
            updated_at: now,
        });
        Ok(now)
    })
    .await?;
    tracing::info!(repo = %name, credential = %cred_id, who = %id.who(), "upstream credential stored");
    Ok(json_response(
        StatusCode::CREATED,
        json!({ "id": cred_id, "created_at": rfc3339(created) }),
    ))
}

/// Rotate a credential: a new password, and a new user name when one is given (an empty one
/// goes back to the forge's convention; an absent one keeps the current user name).
pub(super) async fn update(
    app: &Arc<App>,
    id: &Identity,
    locator: Locator<'_>,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    require_scope(id)?;
    let body: CredentialBody = call.body()?;
    let cred_id = match &locator {
        Locator::Path { id, .. } => (*id).to_owned(),
        Locator::Body => required("id", body.id.as_deref())?.to_owned(),
    };
    let secret = password(&body)?;
    let user = username(&body)?;
    let repo = find_credential(app, id, &locator, &cred_id)?;
    let secrets = app.secrets.clone();
    let wanted = cred_id.clone();
    let (created, updated) = change_record(repo.clone(), move |record| {
        let current = match &record.credential {
            Some(c) if c.id == wanted => c.clone(),
            _ => return Err(not_found().into()),
        };
        let user = match user {
            Some(u) => u,
            // Keep the user name given before (it is sealed with the old password).
            None => credential::stored_username(&secrets, record).map_err(sealing_failed)?,
        };
        let sealed = credential::seal(&secrets, &record.id, &wanted, user.as_deref(), &secret)
            .map_err(sealing_failed)?;
        let now = now_unix();
        record.credential = Some(CredentialRecord {
            sealed,
            updated_at: now,
            ..current.clone()
        });
        Ok((current.created_at, now))
    })
    .await?;
    tracing::info!(repo = %repo.record().name, credential = %cred_id, who = %id.who(), "upstream credential rotated");
    Ok(json_response(
        StatusCode::OK,
        json!({ "id": cred_id, "created_at": rfc3339(created), "updated_at": rfc3339(updated) }),
    ))
}

/// Delete a credential: the upstream is reached anonymously from the next sync on.
pub(super) async fn delete(
    app: &Arc<App>,
    id: &Identity,
    locator: Locator<'_>,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    require_scope(id)?;
    let cred_id = match &locator {
        Locator::Path { id, .. } => (*id).to_owned(),
        Locator::Body => {
            let body: CredentialBody = call.body()?;
            required("id", body.id.as_deref())?.to_owned()
        }
    };
    let repo = find_credential(app, id, &locator, &cred_id)?;
    let wanted = cred_id.clone();
    change_record(repo.clone(), move |record| {
        match &record.credential {
            Some(c) if c.id == wanted => record.credential = None,
            _ => return Err(not_found().into()),
        }
        Ok(())
    })
    .await?;
    tracing::info!(repo = %repo.record().name, credential = %cred_id, who = %id.who(), "upstream credential deleted");
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(full(""))
        .map_err(ApiError::internal)
}

/// What `GET` of a repository says about its credential: id and times, never the secret.
pub(super) fn summary(repo: &Repo) -> serde_json::Value {
    match repo.record().credential {
        None => serde_json::Value::Null,
        Some(c) => json!({
            "id": c.id,
            "created_at": rfc3339(c.created_at),
            "updated_at": rfc3339(c.updated_at),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(username: Option<&str>, password: Option<&str>) -> CredentialBody {
        CredentialBody {
            username: username.map(Into::into),
            password: password.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn passwords_and_user_names_are_checked() {
        assert!(password(&body(None, None)).is_err());
        assert!(password(&body(None, Some(""))).is_err());
        assert!(password(&body(None, Some("a\nb"))).is_err());
        assert!(password(&body(None, Some(&"x".repeat(MAX_PASSWORD + 1)))).is_err());
        assert_eq!(
            password(&body(None, Some("tok"))).map(|s| s.expose().to_owned()),
            Ok("tok".to_owned())
        );
        assert_eq!(username(&body(None, None)), Ok(None));
        assert_eq!(username(&body(Some(""), None)), Ok(Some(None)));
        assert_eq!(
            username(&body(Some("alice"), None)),
            Ok(Some(Some("alice".into())))
        );
        assert!(username(&body(Some("a:b"), None)).is_err());
    }
}
