//! Forks through create-repo (compat.md §8.1): `base_repo` with `provider: "code"` (or
//! `"code.storage"`) and `operation: "fork"` makes an independent repository that shares the
//! source's objects (no copy; see `codestorage_store::Store::fork_repo`).
//!
//! The fork starts with the source's branches and tags; its default branch (the source's, unless
//! `default_branch` is given) points at the fork point: `sha` if given, else the tip of `ref`,
//! else the source's `HEAD`. The source must belong to the caller's organisation; a token nested
//! in `base_repo.auth.token` (as the SDKs send) must grant `git:read` on it — without one, the
//! caller's own token must.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use codestorage_store::{Namespace, ObjectId, RefValue, Repo, RepoName};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Call, json_response};
use crate::app::App;
use crate::auth::{Identity, Scope};
use crate::http::authz;
use crate::http::body::Body;
use crate::http::error::ApiError;

#[derive(Debug, Deserialize)]
struct ForkAuth {
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ForkBase {
    provider: Option<String>,
    name: Option<String>,
    operation: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    sha: Option<String>,
    auth: Option<ForkAuth>,
}

#[derive(Debug, Deserialize)]
struct ForkBody {
    default_branch: Option<String>,
    base_repo: ForkBase,
}

/// Whether a create-repo body asks for a repository of this server as its base.
pub(super) fn requested(call: &Call) -> bool {
    call.body
        .as_ref()
        .and_then(|b| b.get("base_repo"))
        .and_then(|b| b.get("provider"))
        .and_then(Value::as_str)
        .is_some_and(|p| matches!(p, "code" | "code.storage"))
}

/// The fork body's checks that need no server state: its shape, `operation` and `sha`.
pub(super) fn check(call: &Call) -> Result<(), ApiError> {
    let body: ForkBody = call.body()?;
    let base = body.base_repo;
    if !matches!(base.operation.as_deref(), None | Some("fork")) {
        return Err(ApiError::bad_request(
            "base_repo.operation is not supported",
        ));
    }
    if let Some(sha) = &base.sha {
        ObjectId::from_hex(sha.as_bytes())
            .map_err(|_| ApiError::bad_request("base_repo.sha is not a full object id"))?;
    }
    Ok(())
}

/// The commit `reference` names in `repo`'s default namespace (a branch, a tag or a full ref
/// name; tags are peeled).
fn resolve_ref(repo: &Repo, reference: &str) -> Option<ObjectId> {
    let view = repo.view();
    let refs = view.refs(Namespace::Default);
    let candidates = if reference.starts_with("refs/") {
        vec![reference.to_owned()]
    } else {
        vec![
            format!("refs/heads/{reference}"),
            format!("refs/tags/{reference}"),
        ]
    };
    let peeled = view.peeled(Namespace::Default).ok()?;
    candidates.iter().find_map(|name| {
        peeled
            .get(name)
            .copied()
            .or_else(|| refs.get(name).and_then(RefValue::id))
    })
}

/// Whether `sha` is a commit reachable from `repo`'s default-namespace refs.
fn reachable_commit(repo: &Repo, sha: ObjectId) -> Result<bool, ApiError> {
    let view = repo.view();
    let mut reader = view.reader();
    if !matches!(
        reader.header(&sha).map_err(ApiError::internal)?,
        Some((gix_object::Kind::Commit, _))
    ) {
        return Ok(false);
    }
    let tips: Vec<ObjectId> = view
        .refs(Namespace::Default)
        .values()
        .filter_map(RefValue::id)
        .collect();
    let unreachable = codestorage_store::walk::unreachable_wants(
        &mut reader,
        &tips,
        &[sha],
        &AtomicBool::new(false),
    )
    .map_err(ApiError::internal)?;
    Ok(unreachable.is_empty())
}

/// Create `name` as a fork.
pub(super) async fn create(
    app: &Arc<App>,
    id: &Identity,
    name: &RepoName,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let body: ForkBody = call.body()?;
    let base = body.base_repo;
    match base.operation.as_deref().unwrap_or("fork") {
        "fork" => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "base_repo.operation '{other}' is not supported for provider '{}' (only \"fork\")",
                base.provider.as_deref().unwrap_or("code")
            )));
        }
    }
    let source_name = base
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("base_repo.name (the repository to fork) is required")
        })?;
    let not_found = || ApiError::not_found("the repository to fork does not exist");
    let source = super::find(app, source_name).map_err(|_| not_found())?;
    let org = authz::org_of(app, &source);
    // Same organisation only; another organisation's repositories do not exist for the caller.
    if !(id.local_org && id.has(Scope::Admin)) && id.claims.iss != org {
        return Err(not_found());
    }
    let reader = match base.auth.and_then(|a| a.token) {
        Some(token) => app.auth.verify(&token).map_err(|e| {
            ApiError::unauthorized(format!("base_repo.auth.token is not valid: {e}"))
        })?,
        None => id.clone(),
    };
    if reader.claims.iss != id.claims.iss {
        return Err(not_found());
    }
    authz::check_repo(app, &reader, &source, Scope::GitRead)?;
    super::gate(app, &source)?;

    let point = match (&base.sha, &base.reference) {
        (Some(sha), _) => {
            let sha = ObjectId::from_hex(sha.as_bytes())
                .map_err(|_| ApiError::bad_request("base_repo.sha is not a full object id"))?;
            let src = source.clone();
            let ok = tokio::task::spawn_blocking(move || reachable_commit(&src, sha))
                .await
                .map_err(ApiError::internal)??;
            if !ok {
                return Err(ApiError::not_found(
                    "base_repo.sha is not a commit of the repository to fork",
                ));
            }
            Some(sha)
        }
        (None, Some(r)) => Some(resolve_ref(&source, r).ok_or_else(|| {
            ApiError::not_found(format!("base_repo.ref '{r}' does not exist in the source"))
        })?),
        (None, None) => None,
    };

    let view = source.view();
    let refs = view.refs(Namespace::Default);
    let source_head = match refs.get("HEAD") {
        Some(RefValue::Symbolic(t)) => t.strip_prefix("refs/heads/").map(str::to_owned),
        _ => None,
    };
    let default_branch = body
        .default_branch
        .or(source_head.clone())
        .unwrap_or_else(|| source.record().default_branch);
    let head_ref = format!("refs/heads/{default_branch}");
    let point = point.or_else(|| {
        source_head
            .as_ref()
            .and_then(|b| refs.get(&format!("refs/heads/{b}")).and_then(RefValue::id))
    });
    let mut new_refs: Vec<(String, RefValue)> = refs
        .iter()
        .filter(|(n, _)| n.starts_with("refs/heads/") || n.starts_with("refs/tags/"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .filter(|(n, _)| *n != head_ref)
        .collect();
    if let Some(p) = point {
        new_refs.push((head_ref.clone(), RefValue::Direct(p)));
    }
    new_refs.push(("HEAD".into(), RefValue::Symbolic(head_ref)));

    let new_org = (!id.local_org).then(|| id.claims.iss.clone());
    let store = app.store.clone();
    let target = name.clone();
    let fork = tokio::task::spawn_blocking(move || {
        store.fork_repo(&source, &target, &default_branch, new_org, new_refs)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(super::repos::create_error)?;
    tracing::info!(repo = %name, from = %source_name, who = %id.who(), "repository forked");
    Ok(json_response(
        StatusCode::CREATED,
        json!({
            "repo_id": fork.record().name,
            "message": "Repository forked successfully",
        }),
    ))
}
