//! `POST /webhooks/{github,gitlab,gitea,forgejo,bitbucket}`: incoming forge webhooks over HTTP.
//! The signature check, payload reading and sync triggering are `sync::forge_hooks`; this
//! module maps them to statuses: 401 for a missing secret or signature or a bad one (before
//! anything else happens), 400 for a payload the forge would not send, 413 for a body over
//! [`MAX_BODY`], 200 for pings and repeated deliveries, 202 otherwise. Bodies are JSON
//! `{"message": …}` (`{"error": …}` for errors).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::body::{Body, read_limited};
use super::error::ApiError;
use crate::app::App;
use crate::sync::forge_hooks::{self, Forge, Outcome};

/// Largest webhook body accepted: GitHub caps its payloads at 25 MB.
pub const MAX_BODY: usize = 25 << 20;

/// Whether `path` is a webhook endpoint (`/webhooks/<one segment>`).
pub fn is_hook_path(path: &str) -> bool {
    path.strip_prefix("/webhooks/")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// A form-encoded GitHub delivery (`Content type: application/x-www-form-urlencoded`) carries
/// its JSON in the `payload` field; the signature covers the raw form body.
fn form_payload(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let value = text.split('&').find_map(|kv| kv.strip_prefix("payload="))?;
    super::rest::percent_decode(&value.replace('+', " ")).map(String::into_bytes)
}

/// Handle a request to `/webhooks/…`.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let name = path.trim_start_matches("/webhooks/");
    let Some(forge) = Forge::from_path(name) else {
        return ApiError::not_found(format!("no webhook endpoint for {name:?}")).json();
    };
    if req.method() != Method::POST {
        return ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use POST").json();
    }
    let headers = req.headers().clone();
    let header = move |name: &str| -> Option<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // Refuse unauthenticated senders before reading their body: a missing secret or signature
    // needs no body to tell.
    if let Err(e) = forge_hooks::verify(forge, &app.config.forge_secrets, &header, &[])
        && !matches!(e, forge_hooks::HookError::BadSignature)
    {
        tracing::info!(forge = forge.name(), error = %e, "webhook refused");
        return ApiError::unauthorized(e.to_string()).json();
    }
    let form = header("content-type").is_some_and(|t| {
        t.trim()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let body = match read_limited(req.into_body(), MAX_BODY, None).await {
        Ok(b) => b,
        // 413 over the limit, 408 on a stalled body, 400 otherwise: as for every request body.
        Err(e) => return ApiError::new(e.status(), e.to_string()).json(),
    };
    if let Err(e) = forge_hooks::verify(forge, &app.config.forge_secrets, &header, &body) {
        tracing::info!(forge = forge.name(), error = %e, "webhook refused");
        return ApiError::unauthorized(e.to_string()).json();
    }
    let payload = if form {
        match form_payload(&body) {
            Some(p) => p,
            None => {
                return ApiError::bad_request("form-encoded webhook without a payload field")
                    .json();
            }
        }
    } else {
        body
    };
    let delivery = match forge_hooks::parse(forge, &header, &payload) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(forge = forge.name(), error = %e, "webhook refused");
            return ApiError::bad_request(e.to_string()).json();
        }
    };
    let outcome = app
        .forge_hooks
        .accept(forge, &delivery, &app.store, &app.sync);
    tracing::info!(
        forge = forge.name(),
        event = %delivery.event_name,
        delivery = delivery.id.as_deref().unwrap_or("-"),
        outcome = ?outcome,
        "webhook received"
    );
    match outcome {
        Outcome::Pong => super::rest::json_response(StatusCode::OK, json!({ "message": "pong" })),
        Outcome::Duplicate(id) => super::rest::json_response(
            StatusCode::OK,
            json!({ "message": format!("delivery {id} was already handled") }),
        ),
        Outcome::Ignored(event) => super::rest::json_response(
            StatusCode::ACCEPTED,
            json!({ "message": format!("event {event:?} ignored") }),
        ),
        Outcome::Triggered { full_name, repos } => super::rest::json_response(
            StatusCode::ACCEPTED,
            json!({
                "message": if repos.is_empty() {
                    format!("no repository mirrors {full_name}")
                } else {
                    "sync requested".to_owned()
                },
                "repository": full_name,
                "matched": repos.len(),
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_paths_are_one_segment_under_webhooks() {
        assert!(is_hook_path("/webhooks/github"));
        assert!(is_hook_path("/webhooks/nope"));
        assert!(!is_hook_path("/webhooks/"));
        assert!(!is_hook_path("/webhooks/x.git/info/refs"));
        assert!(!is_hook_path("/webhooksgithub"));
    }

    #[test]
    fn form_encoded_payloads_are_decoded() {
        assert_eq!(
            form_payload(b"payload=%7B%22a%22%3A+1%7D").as_deref(),
            Some(&b"{\"a\": 1}"[..])
        );
        assert_eq!(form_payload(b"other=1"), None);
    }
}
