//! `POST /api/admin/maintain` (also under `/api/v1/`): compact one repository or all of them now
//! and answer once done, with what each compaction did. Needs an `admin` token of the data
//! directory's own organisation.

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{Call, find, json_response};
use crate::app::App;
use crate::auth::{Identity, Scope};
use crate::http::body::Body;
use crate::http::error::ApiError;

/// Whether `path` is this route.
pub(super) fn is_route(path: &str) -> bool {
    matches!(path, "/api/admin/maintain" | "/api/v1/admin/maintain")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintainBody {
    repo: Option<String>,
    #[serde(default)]
    full: bool,
}

/// Handle the route.
pub(super) async fn handle(
    app: &Arc<App>,
    id: &Identity,
    method: &Method,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    if *method != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        ));
    }
    let admin = id.local_org && id.claims.scopes.iter().any(|s| s == Scope::Admin.as_str());
    if !admin {
        return Err(ApiError::forbidden(
            "maintenance needs an admin token of this server's organisation",
        ));
    }
    let body: MaintainBody = call.body()?;
    let repos = match &body.repo {
        Some(name) => vec![find(app, name)?],
        None => app.store.repos(),
    };
    let mut out = Vec::with_capacity(repos.len());
    for repo in repos {
        let name = repo.record().name;
        tracing::info!(repo = %name, full = body.full, who = %id.who(), "maintenance requested");
        match crate::maintain::compact_repo(app, repo, body.full, true).await {
            Ok(stats) => {
                let mut v = serde_json::to_value(stats).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("repo".into(), json!(name));
                }
                out.push(v);
            }
            Err(e) => {
                tracing::error!(error = %e, "maintenance failed");
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.to_string(),
                ));
            }
        }
    }
    Ok(json_response(StatusCode::OK, json!({ "repos": out })))
}
