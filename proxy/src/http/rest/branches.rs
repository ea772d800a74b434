//! Branch routes (compat.md §4.2, §4.3, §7.2) over the default and the ephemeral namespace:
//! list, get, create / promote, delete.
//!
//! Changes to a mirror's default namespace go to the upstream first, with the native push
//! client (the upstream decides), then move the local ref; everything else (ephemeral refs,
//! local repositories) changes locally by compare-and-swap. The token's ref policy applies.

use std::sync::Arc;

use codestorage_store::objects::parse_commit;
use codestorage_store::{
    Expect, Namespace, ObjectId, ObjectReader, RefUpdate, RefValue, Repo, Transaction, refs,
};
use gix_object::Kind;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{Call, gate, json_response};
use crate::app::App;
use crate::auth::policy::Change;
use crate::auth::{Identity, Scope};
use crate::http::authz;
use crate::http::body::Body;
use crate::http::error::ApiError;
use crate::protocol::receive_pack::RefStatus;
use crate::time::rfc3339;
use crate::upstream::push::PushUpdate;
use crate::webhooks::RefMove;

fn ns_of(ephemeral: bool) -> Namespace {
    if ephemeral {
        Namespace::Ephemeral
    } else {
        Namespace::Default
    }
}

/// `refs/heads/<name>` for a branch name (a full `refs/heads/…` name is taken as is).
fn branch_ref(name: &str) -> Result<String, ApiError> {
    let full = if name.starts_with("refs/heads/") {
        name.to_owned()
    } else {
        format!("refs/heads/{name}")
    };
    if refs::valid_ref_name(&full) {
        Ok(full)
    } else {
        Err(ApiError::bad_request(format!(
            "invalid branch name {name:?}"
        )))
    }
}

/// A branch's `created_at`: the committer date of the commit it points at, which is what git
/// itself calls a branch's `creatordate` (git keeps no creation time for refs). Falls back to
/// the repository's creation time when the head cannot be read as a commit.
fn branch_time(reader: &mut ObjectReader, head: &ObjectId, fallback: u64) -> String {
    let from_graph = reader
        .graph()
        .and_then(|g| g.lookup(head))
        .map(|e| e.commit_time);
    let time = from_graph.or_else(|| {
        let mut buf = Vec::new();
        match reader.find(head, &mut buf) {
            Ok(Some((Kind::Commit, data))) => parse_commit(data).map(|c| c.time),
            _ => None,
        }
    });
    let secs = time.and_then(|t| u64::try_from(t).ok()).unwrap_or(fallback);
    rfc3339(secs)
}

fn short(full: &str) -> &str {
    full.strip_prefix("refs/heads/").unwrap_or(full)
}

/// `GET …/branches`: `ephemeral`, `cursor`, `limit`.
pub(super) fn list(
    app: &App,
    id: &Identity,
    repo: &Repo,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    authz::check_repo(app, id, repo, Scope::GitRead)?;
    gate(app, repo)?;
    let ephemeral = call.flag("ephemeral");
    let limit = call.limit(20, 100)?;
    let cursor = call.query("cursor");
    let view = repo.view();
    let table = view.refs(ns_of(ephemeral));
    let mut branches: Vec<(&str, ObjectId)> = table
        .iter()
        .filter_map(|(n, v)| Some((n.strip_prefix("refs/heads/")?, v.id()?)))
        .filter(|(n, _)| cursor.is_none_or(|c| *n > c))
        .collect();
    let has_more = branches.len() > limit;
    branches.truncate(limit);
    let next_cursor = if has_more {
        branches.last().map(|(n, _)| n.to_string())
    } else {
        None
    };
    let mut reader = view.reader();
    let fallback = repo.record().created_at;
    Ok(json_response(
        StatusCode::OK,
        json!({
            "branches": branches.iter().map(|(n, id)| json!({
                "cursor": n,
                "name": n,
                "head_sha": id.to_string(),
                "created_at": branch_time(&mut reader, id, fallback),
            })).collect::<Vec<_>>(),
            "next_cursor": next_cursor,
            "has_more": has_more,
            "ephemeral": ephemeral,
        }),
    ))
}

/// `GET …/branch?name=&ephemeral=`.
pub(super) fn get(
    app: &App,
    id: &Identity,
    repo: &Repo,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    authz::check_repo(app, id, repo, Scope::GitRead)?;
    gate(app, repo)?;
    let name = call
        .query("name")
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let ephemeral = call.flag("ephemeral");
    let full = branch_ref(name)?;
    let head = refs::resolve(&repo.view().refs(ns_of(ephemeral)), &full)
        .ok_or_else(|| ApiError::not_found(format!("branch {name} not found")))?;
    Ok(json_response(
        StatusCode::OK,
        json!({"name": short(&full), "head_sha": head.to_string(), "ephemeral": ephemeral}),
    ))
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    base_branch: Option<String>,
    base_ref: Option<String>,
    target_branch: Option<String>,
    #[serde(default)]
    base_is_ephemeral: bool,
    #[serde(default)]
    target_is_ephemeral: bool,
    #[serde(default)]
    force: bool,
}

/// The create-branch body's checks that need no server state: its shape and branch names.
pub(super) fn check_create(call: &Call) -> Result<(), ApiError> {
    let body: CreateBody = call.body()?;
    let base = body
        .base_branch
        .or(body.base_ref)
        .ok_or_else(|| ApiError::bad_request("base_branch is required"))?;
    branch_ref(&base)?;
    branch_ref(body.target_branch.as_deref().unwrap_or(short(&base)))?;
    Ok(())
}

/// The delete-branch body's checks that need no server state.
pub(super) fn check_delete(call: &Call) -> Result<(), ApiError> {
    let body: DeleteBody = call.body()?;
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    branch_ref(&name).map(drop)
}

/// What one ref change amounts to, for the policy and the answer.
fn change(repo: &Repo, old: Option<ObjectId>, new: Option<ObjectId>) -> Result<Change, ApiError> {
    Ok(match (old, new) {
        (_, None) => Change::Delete,
        (None, Some(_)) => Change::Create,
        (Some(o), Some(n)) => {
            let mut reader = repo.view().reader();
            if codestorage_store::repo::is_ancestor(&mut reader, o, n)
                .map_err(ApiError::internal)?
            {
                Change::FastForward
            } else {
                Change::NonFastForward
            }
        }
    })
}

/// Move `name` in `ns` from `old` to `new`: upstream first for a mirror's default namespace.
async fn move_ref(
    app: &Arc<App>,
    id: &Identity,
    repo: &Arc<Repo>,
    ns: Namespace,
    name: &str,
    old: Option<ObjectId>,
    new: Option<ObjectId>,
) -> Result<(), ApiError> {
    let kind = change(repo, old, new)?;
    id.policy.check(name, kind).map_err(ApiError::forbidden)?;
    if ns == Namespace::Default && crate::upstream::forwards_pushes(&repo.record()) {
        let target = app
            .credentials
            .target(repo)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?
            .ok_or_else(|| ApiError::internal("a mirror without upstream"))?;
        let update = PushUpdate {
            name: name.to_owned(),
            expect: Some(old.unwrap_or_else(|| ObjectId::null(gix_hash::Kind::Sha1))),
            new,
        };
        let report = app
            .upstream
            .push(&target, repo.view(), vec![update], false)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        if let Some((_, RefStatus::Ng(reason))) = report.refs.first() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("the upstream refused the update: {reason}"),
            ));
        }
        if let Some(e) = report.unpack_error {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("the upstream refused the pack: {e}"),
            ));
        }
    }
    let update = RefUpdate {
        name: name.to_owned(),
        expect: old.map_or(Expect::Absent, |o| Expect::Value(RefValue::Direct(o))),
        new: new.map(RefValue::Direct),
    };
    let repo2 = repo.clone();
    let who = format!("rest by {}", id.who());
    let lock = app.sync.repo_lock(&repo.record().name);
    let _guard = lock.lock().await;
    let outcome = tokio::task::spawn_blocking(move || {
        repo2.commit(Transaction {
            ns,
            updates: vec![update],
            who,
            atomic: true,
            quarantine: None,
        })
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    if let Some(Err(e)) = outcome.results.first() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the branch changed meanwhile: {e}"),
        ));
    }
    let moved = RefMove {
        name: name.to_owned(),
        before: old,
        after: new,
    };
    app.webhooks.pushed(&repo.record(), ns, &[moved]).await;
    if ns == Namespace::Default && repo.record().upstream.is_some() {
        app.sync.request(repo.clone());
    }
    Ok(())
}

/// `POST …/branches/create`: a new branch from a base branch, or promotion of an ephemeral
/// branch (`base_is_ephemeral`, `target_is_ephemeral: false`).
pub(super) async fn create(
    app: &Arc<App>,
    id: &Identity,
    repo: Arc<Repo>,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    authz::check_repo(app, id, &repo, Scope::GitWrite)?;
    gate(app, &repo)?;
    let body: CreateBody = call.body()?;
    let base = body
        .base_branch
        .or(body.base_ref)
        .ok_or_else(|| ApiError::bad_request("base_branch is required"))?;
    let target = body
        .target_branch
        .unwrap_or_else(|| short(&base).to_owned());
    let (base_ns, target_ns) = (
        ns_of(body.base_is_ephemeral),
        ns_of(body.target_is_ephemeral),
    );
    let view = repo.view();
    let base_id = refs::resolve(&view.refs(base_ns), &branch_ref(&base)?)
        .or_else(|| {
            // A commit id works as a base too.
            ObjectId::from_hex(base.as_bytes())
                .ok()
                .filter(|id| base.len() == 40 && view.packs.contains(id))
        })
        .ok_or_else(|| ApiError::not_found(format!("base branch {base} not found")))?;
    let target_ref = branch_ref(&target)?;
    let current = refs::resolve(&view.refs(target_ns), &target_ref);
    if current != Some(base_id) {
        if let (Some(cur), false) = (current, body.force)
            && change(&repo, Some(cur), Some(base_id))? != Change::FastForward
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{target} exists and is not an ancestor of {base}; use force to overwrite"),
            ));
        }
        move_ref(
            app,
            id,
            &repo,
            target_ns,
            &target_ref,
            current,
            Some(base_id),
        )
        .await?;
    }
    Ok(json_response(
        StatusCode::OK,
        json!({
            "message": "branch created",
            "target_branch": short(&target_ref),
            "target_is_ephemeral": body.target_is_ephemeral,
            "commit_sha": base_id.to_string(),
        }),
    ))
}

#[derive(Debug, Deserialize)]
struct DeleteBody {
    name: Option<String>,
    #[serde(default)]
    ephemeral: bool,
}

/// `DELETE …/branches` with `{name, ephemeral?}`; the default branch cannot be deleted.
pub(super) async fn delete(
    app: &Arc<App>,
    id: &Identity,
    repo: Arc<Repo>,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    authz::check_repo(app, id, &repo, Scope::GitWrite)?;
    gate(app, &repo)?;
    let body: DeleteBody = call.body()?;
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let full = branch_ref(&name)?;
    let ns = ns_of(body.ephemeral);
    let table = repo.view().refs(ns);
    if !body.ephemeral
        && let Some(RefValue::Symbolic(head)) = table.get("HEAD")
        && head == &full
    {
        return Err(ApiError::bad_request(
            "the default branch cannot be deleted",
        ));
    }
    let current = refs::resolve(&table, &full)
        .ok_or_else(|| ApiError::not_found(format!("branch {name} not found")))?;
    move_ref(app, id, &repo, ns, &full, Some(current), None).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"message": "branch deleted", "name": short(&full), "ephemeral": body.ephemeral}),
    ))
}
