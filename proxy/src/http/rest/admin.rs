//! Administration routes of the data directory's admin (`admin` scope of the local
//! organisation): `GET /api/v1/admin/backup` streams a consistent backup (see
//! [`crate::backup`]) while the server keeps serving; `GET /api/v1/admin/refs[?repo=NAME]`
//! lists every ref as text (`codestorage_store::refs_text`).

use std::sync::Arc;

use http::{Response, StatusCode, header};

use super::super::body::{Body, ChannelWriter};
use super::super::error::ApiError;
use super::Call;
use crate::app::App;
use crate::auth::{Identity, Scope};

/// Chunks of the backup stream in flight at most (64 KiB each).
const BACKUP_DEPTH: usize = 16;

/// Refuse anything but the data directory's admin.
fn require_admin(id: &Identity) -> Result<(), ApiError> {
    if id.has(Scope::Admin) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "this needs a token with the admin scope of the local organisation",
        ))
    }
}

/// `GET /api/v1/admin/backup`: the backup stream. An error mid-way ends the stream before its
/// `end` line, which the reader refuses.
pub(super) fn backup(app: &Arc<App>, id: &Identity) -> Result<Response<Body>, ApiError> {
    require_admin(id)?;
    let (mut writer, body) = ChannelWriter::new(BACKUP_DEPTH);
    let app = app.clone();
    let who = id.who();
    tokio::task::spawn_blocking(move || {
        let _span = tracing::info_span!("backup", by = %who).entered();
        let started = std::time::Instant::now();
        let (store, data) = (&app.store, &app.config.data_dir);
        match crate::backup::write_backup(store, data, &mut writer, &app.interrupt) {
            Ok(m) => tracing::info!(
                repos = m.repos.len(),
                files = m.files.len(),
                bytes = m.files.iter().map(|f| f.size).sum::<u64>(),
                ms = started.elapsed().as_millis() as u64,
                "backup streamed"
            ),
            Err(e) => tracing::error!(error = %e, "backup failed"),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-codestorage-backup")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .map_err(ApiError::internal)
}

/// `GET /api/v1/admin/refs[?repo=NAME]`: every ref, one tab-separated line each.
pub(super) async fn refs(
    app: &Arc<App>,
    id: &Identity,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    require_admin(id)?;
    let only = call.query("repo").map(str::to_owned);
    let app = app.clone();
    let text = tokio::task::spawn_blocking(move || {
        codestorage_store::refs_text::export_store(&app.store, only.as_deref())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| match e {
        codestorage_store::StoreError::RepoNotFound(_) => {
            ApiError::not_found("Repository doesn't exist")
        }
        e => ApiError::internal(e),
    })?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(super::super::body::full(text))
        .map_err(ApiError::internal)
}
