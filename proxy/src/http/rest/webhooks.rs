//! Webhook subscription routes (compat.md §6, §7.2), the same under `/api/v1/webhooks` and
//! `/api/webhooks`. Subscriptions are organisation-wide: the token must be org-wide (`repo`
//! absent or `"org"`), and a subscription belongs to the token's organisation (`iss`); other
//! organisations never see it (404).
//!
//! - `POST   …/webhooks` `{url, events, secret?}` → 201 with the id and the secret (repo:write)
//! - `GET    …/webhooks` → the org's subscriptions, without secrets (repo:write or org:read)
//! - `GET    …/webhooks/{id}` → one subscription (repo:write or org:read)
//! - `DELETE …/webhooks/{id}` → 204; its pending deliveries and log go too (repo:write)
//! - `GET    …/webhooks/{id}/deliveries?limit=` → the delivery log, newest first
//!   (repo:write or org:read)

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Call, json_response};
use crate::app::App;
use crate::auth::{Identity, Scope};
use crate::http::authz;
use crate::http::body::{Body, full};
use crate::http::error::ApiError;
use crate::secrets::Secret;
use crate::time::rfc3339;
use crate::webhooks::subscriptions::Subscription;
use crate::webhooks::{NewSubscription, SubscribeError, log};

/// Route `rest` (what follows `…/webhooks`).
pub(super) async fn route(
    app: &Arc<App>,
    id: &Identity,
    method: &Method,
    rest: &str,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (&Method::POST, [""]) => create(app, id, call).await,
        (&Method::GET, [""]) => list(app, id),
        (&Method::GET, [sub]) => show(app, id, sub),
        (&Method::DELETE, [sub]) if !sub.is_empty() => delete(app, id, sub).await,
        (&Method::GET, [sub, "deliveries"]) => deliveries(app, id, sub, call).await,
        (_, [_] | [_, "deliveries"]) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        )),
        _ => Err(ApiError::not_found("no such API route")),
    }
}

/// Org-wide token with `repo:write`.
fn check_write(id: &Identity) -> Result<(), ApiError> {
    authz::check_org(id, Scope::RepoWrite)
}

/// Org-wide token with `repo:write` or `org:read`.
fn check_read(id: &Identity) -> Result<(), ApiError> {
    authz::check_org(id, Scope::RepoWrite)
        .or_else(|_| authz::check_org(id, Scope::OrgRead))
        .map_err(|e| match e.status {
            StatusCode::FORBIDDEN if id.org_wide() => {
                ApiError::forbidden("token lacks the repo:write or org:read scope")
            }
            _ => e,
        })
}

fn org(id: &Identity) -> &str {
    &id.claims.iss
}

fn not_found() -> ApiError {
    ApiError::not_found("webhook subscription not found")
}

fn describe(app: &App, sub: &Subscription) -> Value {
    json!({
        "id": sub.id,
        "url": sub.url,
        "events": sub.events,
        "created_at": rfc3339(sub.created_at_ms / 1000),
        "pending_deliveries": app.webhooks.pending(&sub.id),
    })
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    url: Option<String>,
    events: Option<Vec<String>>,
    /// Taken as a raw value so a parse error can never echo it.
    secret: Option<Value>,
}

/// The create-webhook body's checks that need no server state (the URL is resolved and checked
/// when subscribing): its shape, `url` present, known `events`, a string `secret`.
pub(super) fn check_create(call: &Call) -> Result<(), ApiError> {
    let body: CreateBody = call.body()?;
    body.url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::bad_request("url is required"))?;
    let events = body
        .events
        .ok_or_else(|| ApiError::bad_request("events is required"))?;
    if let Some(e) = events
        .iter()
        .find(|e| crate::webhooks::event::EventKind::parse(e).is_none())
    {
        return Err(ApiError::bad_request(format!("unknown event {e:?}")));
    }
    match body.secret {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(_) => Err(ApiError::bad_request("secret must be a string")),
    }
}

async fn create(app: &Arc<App>, id: &Identity, call: &Call) -> Result<Response<Body>, ApiError> {
    check_write(id)?;
    let body: CreateBody = call.body()?;
    let url = body
        .url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::bad_request("url is required"))?;
    let events = body
        .events
        .ok_or_else(|| ApiError::bad_request("events is required"))?;
    let secret = match body.secret {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Secret::new(s)),
        Some(_) => return Err(ApiError::bad_request("secret must be a string")),
    };
    let req = NewSubscription {
        url,
        events,
        secret,
    };
    let (sub, secret) = app
        .webhooks
        .subscribe(org(id), req)
        .await
        .map_err(|e| match e {
            SubscribeError::Invalid(_) | SubscribeError::TooMany(_) => {
                ApiError::bad_request(e.to_string())
            }
            SubscribeError::Internal(e) => ApiError::internal(e),
        })?;
    let mut out = describe(app, &sub);
    if let Some(obj) = out.as_object_mut() {
        obj.insert("secret".into(), Value::String(secret.expose().to_owned()));
        obj.insert("message".into(), Value::String("webhook created".into()));
    }
    Ok(json_response(StatusCode::CREATED, out))
}

fn list(app: &App, id: &Identity) -> Result<Response<Body>, ApiError> {
    check_read(id)?;
    let subs: Vec<Value> = app
        .webhooks
        .list(org(id))
        .iter()
        .map(|s| describe(app, s))
        .collect();
    Ok(json_response(StatusCode::OK, json!({ "webhooks": subs })))
}

fn show(app: &App, id: &Identity, sub: &str) -> Result<Response<Body>, ApiError> {
    check_read(id)?;
    let sub = app.webhooks.get(org(id), sub).ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, describe(app, &sub)))
}

async fn delete(app: &Arc<App>, id: &Identity, sub: &str) -> Result<Response<Body>, ApiError> {
    check_write(id)?;
    let (webhooks, org, sub) = (app.webhooks.clone(), org(id).to_owned(), sub.to_owned());
    let deleted = tokio::task::spawn_blocking(move || webhooks.unsubscribe(&org, &sub))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    if !deleted {
        return Err(not_found());
    }
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(full(""))
        .map_err(ApiError::internal)
}

async fn deliveries(
    app: &Arc<App>,
    id: &Identity,
    sub: &str,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    check_read(id)?;
    let limit = call.limit(50, log::KEEP)?;
    let (webhooks, org, sub_id) = (app.webhooks.clone(), org(id).to_owned(), sub.to_owned());
    let found = tokio::task::spawn_blocking(move || webhooks.deliveries(&org, &sub_id, limit))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let (attempts, pending) = found.ok_or_else(not_found)?;
    Ok(json_response(
        StatusCode::OK,
        json!({
            "subscription_id": sub,
            "pending_deliveries": pending,
            "deliveries": attempts,
        }),
    ))
}
