//! HTTP: one entry point that routes a request to the git endpoints (`smart`), the REST API
//! (`rest`) or incoming forge webhooks (`forge_hooks`), plus health checks. Nothing else lives
//! here.

pub mod authz;
pub mod body;
pub mod error;
pub mod forge_hooks;
pub mod push;
pub mod rest;
pub mod smart;
pub mod tls;

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::app::App;
use body::{Body, full};
use error::ApiError;

/// Handle one request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    async move {
        let path = req.uri().path().to_owned();
        let response = if path == "/healthz" || path == "/readyz" {
            Response::new(full("ok\n"))
        } else if path.starts_with("/api/") || path == "/api" {
            rest::handle(app, req).await
        } else if forge_hooks::is_hook_path(&path) {
            forge_hooks::handle(app, req).await
        } else if let Some((repo, service)) = smart::parse_path(&path) {
            let repo = repo.to_owned();
            smart::handle(app, req, &repo, service).await
        } else {
            ApiError::new(StatusCode::NOT_FOUND, "not found").text()
        };
        tracing::debug!(status = %response.status(), "response");
        response
    }
    .instrument(span)
    .await
}
