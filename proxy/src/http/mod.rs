//! HTTP: one entry point that routes a request to the git endpoints (`smart`), the REST API
//! (`rest`) or incoming forge webhooks (`forge_hooks`), plus the operability routes
//! (`/healthz`, `/readyz`, `/metrics`, no token needed), and counts every request and the bytes
//! of every response for the metrics. Nothing else lives here.

pub mod authz;
pub mod body;
pub mod error;
pub mod forge_hooks;
pub mod push;
pub mod rest;
pub mod smart;
pub mod tls;

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tracing::Instrument;

use crate::app::App;
use crate::metrics;
use body::{Body, full};
use error::ApiError;

/// Handle one request on the main listeners.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    async move {
        let path = req.uri().path().to_owned();
        let (method, route) = (
            metrics::method_label(req.method()),
            metrics::route_template(&path),
        );
        // With `--metrics-listen`, /metrics lives on that listener only.
        let metrics_here = app.config.metrics_listen.is_none();
        let response = if let Some(r) = ops(&app, &path, metrics_here) {
            r
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
        counted(method, route, response)
    }
    .instrument(span)
    .await
}

/// Handle one request on the `--metrics-listen` listener: the operability routes only.
pub async fn handle_ops(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let (method, route) = (
        metrics::method_label(req.method()),
        metrics::route_template(path),
    );
    let response = ops(&app, path, true)
        .unwrap_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not found").text());
    counted(method, route, response)
}

/// `/healthz` (the process answers), `/readyz` (the store is open and the server accepts work;
/// 503 once shutdown began) and, if `metrics` is on, `/metrics`. `None` for other paths.
fn ops(app: &App, path: &str, metrics: bool) -> Option<Response<Body>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store")
            .body(full(body))
            .unwrap_or_else(|_| Response::new(full("")))
    };
    match path {
        "/healthz" => Some(text(StatusCode::OK, "ok\n".into())),
        "/readyz" if metrics::global().shutting_down() => Some(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".into(),
        )),
        // A read of the index shows the store open and answering.
        "/readyz" => Some(match app.store.index().soft_get("readyz") {
            Ok(_) => text(StatusCode::OK, "ok\n".into()),
            Err(e) => {
                tracing::error!(error = %e, "readiness check: the index does not answer");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable\n".into(),
                )
            }
        }),
        "/metrics" if metrics => {
            let body = metrics::global().render(app);
            Some(
                Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .header(header::CACHE_CONTROL, "no-store")
                    .body(full(body))
                    .unwrap_or_else(|_| Response::new(full(""))),
            )
        }
        _ => None,
    }
}

/// Response body bytes sent for one route, added to the registry once, when the body is done
/// (sent or dropped): streaming a pack takes no shared lock per frame.
struct BytesTally {
    route: &'static str,
    bytes: u64,
}

impl Drop for BytesTally {
    fn drop(&mut self) {
        if self.bytes > 0 {
            metrics::global().bytes_served(self.route, self.bytes);
        }
    }
}

/// Count the request now and its body bytes as they are sent.
fn counted(method: &'static str, route: &'static str, response: Response<Body>) -> Response<Body> {
    metrics::global().request(method, route, response.status().as_u16());
    let mut tally = BytesTally { route, bytes: 0 };
    response.map(|body| {
        body.map_frame(move |frame| {
            // The whole tally moves into the closure (not just its field), so its Drop runs
            // when the body is done.
            let tally = &mut tally;
            if let Some(data) = frame.data_ref() {
                tally.bytes += data.len() as u64;
            }
            frame
        })
        .boxed()
    })
}
