//! Smart HTTP (gitprotocol-http): `info/refs?service=…` and the service POSTs, mapped onto
//! the protocol engine. Handles `Git-Protocol`, gzip request bodies, the not-yet-synced gate
//! and streaming; the engine itself runs on a blocking thread and writes into a bounded channel.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use codestorage_store::{Namespace, Repo, RepoName};
use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::authz;
use super::body::{Body, ChannelReader, ChannelWriter, full, read_limited};
use super::error::ApiError;
use crate::app::App;
use crate::auth::{Identity, Scope};
use crate::protocol::pktline;
use crate::protocol::receive_pack::{self, local};
use crate::protocol::upload_pack::{self, Context};
use crate::sync::{Gate, SYNC_IN_PROGRESS};
use crate::webhooks::RefMove;

/// Which git endpoint a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `GET …/info/refs`.
    InfoRefs,
    /// `POST …/git-upload-pack`.
    UploadPack,
    /// `POST …/git-receive-pack`.
    ReceivePack,
}

/// Split a request path into repository part and endpoint, if it is a git path.
pub fn parse_path(path: &str) -> Option<(&str, Service)> {
    let path = path.strip_prefix('/')?;
    for (suffix, service) in [
        ("/info/refs", Service::InfoRefs),
        ("/git-upload-pack", Service::UploadPack),
        ("/git-receive-pack", Service::ReceivePack),
    ] {
        if let Some(repo) = path.strip_suffix(suffix) {
            return Some((repo, service));
        }
    }
    None
}

/// Authenticate the request and resolve the repository part (`team/project.git`,
/// `x+ephemeral.git`) to a repository and namespace the token may use with `scope`.
fn resolve(
    app: &App,
    headers: &HeaderMap,
    repo_part: &str,
    scope: Scope,
) -> Result<(Arc<Repo>, Namespace, Identity), ApiError> {
    let id = authz::identify(app, headers)?;
    let not_found = || ApiError::not_found(format!("repository '{repo_part}' not found"));
    let base = repo_part.strip_suffix(".git").unwrap_or(repo_part);
    let (name, ns) = match base.strip_suffix("+ephemeral") {
        Some(n) => (n, Namespace::Ephemeral),
        None => (base, Namespace::Default),
    };
    let name = RepoName::new(name).map_err(|_| not_found())?;
    authz::check_claim(&id, name.as_str())?;
    let repo = app.store.repo(name.as_str()).ok_or_else(not_found)?;
    authz::check_repo(app, &id, &repo, scope)?;
    match app.sync.gate(&repo) {
        Gate::Ready => Ok((repo, ns, id)),
        Gate::Syncing => Err(ApiError::new(StatusCode::CONFLICT, SYNC_IN_PROGRESS)),
        Gate::Failed(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the first sync from the upstream failed: {e}"),
        )),
    }
}

fn wants_v2(headers: &HeaderMap) -> bool {
    headers
        .get_all("git-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(':'))
        .any(|kv| kv.trim() == "version=2")
}

fn no_cache(builder: http::response::Builder) -> http::response::Builder {
    builder
        .header(
            header::CACHE_CONTROL,
            "no-cache, max-age=0, must-revalidate",
        )
        .header(header::EXPIRES, "Fri, 01 Jan 1980 00:00:00 GMT")
        .header(header::PRAGMA, "no-cache")
}

/// Handle a git endpoint.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    repo_part: &str,
    service: Service,
) -> Response<Body> {
    let result = match service {
        Service::InfoRefs => info_refs(&app, &req, repo_part).await,
        Service::UploadPack => upload_pack(&app, req, repo_part).await,
        Service::ReceivePack => receive_pack(&app, req, repo_part).await,
    };
    result.unwrap_or_else(|e| e.text())
}

async fn info_refs(
    app: &Arc<App>,
    req: &Request<Incoming>,
    repo_part: &str,
) -> Result<Response<Body>, ApiError> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use GET"));
    }
    let service = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("service="))
        .unwrap_or_default()
        .to_owned();
    let scope = if service == "git-receive-pack" {
        Scope::GitWrite
    } else {
        Scope::GitRead
    };
    let (repo, ns, _id) = resolve(app, req.headers(), repo_part, scope)?;
    match service.as_str() {
        "git-upload-pack" => {}
        "git-receive-pack" => {
            if forwards(&repo, ns) {
                return super::push::advertise(app, repo).await;
            }
            let mut body = Vec::new();
            pktline::line(&mut body, "# service=git-receive-pack");
            pktline::flush(&mut body);
            body.extend_from_slice(&receive_pack::advertise(&repo.view().refs(ns)));
            return no_cache(Response::builder())
                .header(
                    header::CONTENT_TYPE,
                    "application/x-git-receive-pack-advertisement",
                )
                .body(full(body))
                .map_err(ApiError::internal);
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only the smart HTTP protocol is supported (service=git-upload-pack)",
            ));
        }
    }
    let view = repo.view();
    let body = if wants_v2(req.headers()) {
        upload_pack::v2::advertise()
    } else {
        let interrupt = AtomicBool::new(false);
        let ctx = Context {
            view,
            ns,
            interrupt: &interrupt,
            notice: None,
            recent_tips: Vec::new(),
            share: None,
        };
        let adv = tokio::task::block_in_place(|| upload_pack::v0::advertise(&ctx))
            .map_err(ApiError::internal)?;
        let mut body = Vec::with_capacity(adv.len() + 64);
        pktline::line(&mut body, "# service=git-upload-pack");
        pktline::flush(&mut body);
        body.extend_from_slice(&adv);
        body
    };
    no_cache(Response::builder())
        .header(
            header::CONTENT_TYPE,
            "application/x-git-upload-pack-advertisement",
        )
        .body(full(body))
        .map_err(ApiError::internal)
}

async fn upload_pack(
    app: &Arc<App>,
    req: Request<Incoming>,
    repo_part: &str,
) -> Result<Response<Body>, ApiError> {
    if req.method() != http::Method::POST {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
    }
    let (repo, ns, _id) = resolve(app, req.headers(), repo_part, Scope::GitRead)?;
    let v2 = wants_v2(req.headers());
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_limited(
        req.into_body(),
        app.config.max_request_bytes,
        encoding.as_deref(),
    )
    .await
    .map_err(|e| ApiError::new(e.status(), e.to_string()))?;
    if let Err(max) = crate::limits::check_pktlines(&body, app.throttle.limits.max_pktlines) {
        // A git ERR packet: the client prints it and changes nothing.
        let mut err = Vec::new();
        pktline::err(&mut err, &format!("request has more than {max} pkt-lines"));
        return no_cache(Response::builder())
            .header(header::CONTENT_TYPE, "application/x-git-upload-pack-result")
            .body(full(err))
            .map_err(ApiError::internal);
    }
    // Queue for a pack-generation slot (waiting, never failing); held until the pack is sent.
    let permit = app
        .throttle
        .packs
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let (mut writer, response_body) = ChannelWriter::new(8);
    let view = repo.view();
    let recent_tips = repo.recent_tips(ns, app.config.moved_ref_grace);
    let notice = app
        .sync
        .stale_notice(&repo, ns, app.config.stale_warning_after);
    let interrupt = app.interrupt.clone();
    let record = repo.record();
    let name = record.name;
    let share = upload_pack::Share {
        herd: app.herd.clone(),
        repo: record.id,
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _span = tracing::info_span!("upload-pack", repo = %name, ns = %ns, v2).entered();
        let ctx = Context {
            view,
            ns,
            interrupt: &interrupt,
            notice,
            recent_tips,
            share: Some(share),
        };
        let result = if v2 {
            upload_pack::v2::serve(&ctx, &body, &mut writer)
        } else {
            upload_pack::v0::serve(&ctx, &body, &mut writer)
        };
        match result {
            Ok(()) => {}
            Err(e) if e.is_client_error() => {
                tracing::debug!(error = %e, "upload-pack request refused")
            }
            Err(e) => tracing::error!(error = %e, "upload-pack failed"),
        }
    });
    no_cache(Response::builder())
        .header(header::CONTENT_TYPE, "application/x-git-upload-pack-result")
        .body(response_body)
        .map_err(ApiError::internal)
}

/// Whether pushes to `ns` of `repo` go to the upstream (mirrors' default namespace) rather
/// than being applied here.
fn forwards(repo: &Repo, ns: Namespace) -> bool {
    ns == Namespace::Default && crate::upstream::forwards_pushes(&repo.record())
}

async fn receive_pack(
    app: &Arc<App>,
    req: Request<Incoming>,
    repo_part: &str,
) -> Result<Response<Body>, ApiError> {
    if req.method() != http::Method::POST {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
    }
    let (repo, ns, id) = resolve(app, req.headers(), repo_part, Scope::GitWrite)?;
    if forwards(&repo, ns) {
        return super::push::forward(app, repo, Some(id), req.into_body()).await;
    }
    let gzip = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "gzip");
    let reader = ChannelReader::spawn(req.into_body(), 8);
    let input: Box<dyn std::io::Read + Send> = if gzip {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let (mut writer, response_body) = ChannelWriter::new(8);
    let limits = app.config.push_limits;
    let interrupt = app.interrupt.clone();
    let webhooks = app.webhooks.clone();
    let name = repo.record().name;
    tokio::task::spawn_blocking(move || {
        let _span = tracing::info_span!("receive-pack", repo = %name, ns = %ns).entered();
        let mut input = std::io::BufReader::with_capacity(64 << 10, input);
        let request = match receive_pack::read_request_or_refusal(&mut input, limits.max_commands) {
            Ok(r) => r,
            Err((e, answer)) => {
                tracing::debug!(error = %e, "push request refused");
                let _ = std::io::Write::write_all(&mut writer, &answer);
                return;
            }
        };
        if request.commands.is_empty() {
            return;
        }
        let who = format!("push by {}", id.who());
        let report = local::apply(
            &repo,
            ns,
            &request,
            &mut input,
            limits,
            &who,
            Some(&id.policy),
            &interrupt,
        );
        for (r, status) in &report.refs {
            tracing::info!(r#ref = %r, status = ?status, who = %id.who(), "push");
        }
        let moves: Vec<RefMove> = request
            .commands
            .iter()
            .zip(&report.refs)
            .filter(|(_, (_, status))| *status == receive_pack::RefStatus::Ok)
            .map(|(c, _)| RefMove::from_ids(&c.name, c.old, c.new))
            .collect();
        webhooks.pushed_blocking(&repo.record(), ns, &moves);
        if let Err(e) = report.send(&request.caps, &mut writer) {
            tracing::debug!(error = %e, "client went away before the report");
        }
    });
    no_cache(Response::builder())
        .header(
            header::CONTENT_TYPE,
            "application/x-git-receive-pack-result",
        )
        .body(response_body)
        .map_err(ApiError::internal)
}
