//! Write-through pushes to mirrors: the receive-pack advertisement after a fresh sync, and the
//! POST that tees the client's pack to the upstream and into a local quarantine.
//!
//! One blocking worker does the push in order: read the commands; start the upstream request;
//! stream the pack to both sides, holding back its trailer from the upstream until the local
//! quarantine verifies (else the upstream request is aborted, so it applies nothing); relay the
//! upstream's progress; then, for each ref the upstream accepted, move the local ref under the
//! repository's sync lock using the quarantined objects; answer with the upstream's report plus
//! our own `ng` lines; kick a background sync. An async task carries the upstream HTTP request.
//! Memory stays bounded: both directions go through small channels.

use std::io::{self, BufReader, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use codestorage_store::{Expect, IngestOptions, Namespace, RefUpdate, RefValue, Repo, Transaction};
use http::{Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::body::{Body, ChannelReader, ChannelWriter, full};
use super::error::ApiError;
use crate::app::App;
use crate::protocol::pktline;
use crate::protocol::receive_pack::forward::{self, Tee, UpstreamReport};
use crate::protocol::receive_pack::local::{LimitedReader, Limits};
use crate::protocol::receive_pack::{self, Command, RefStatus, Report, Request, refuse_name};
use crate::upstream::UpstreamError;

fn upstream_url(repo: &Repo) -> Result<String, ApiError> {
    repo.record()
        .upstream
        .map(|u| u.url)
        .ok_or_else(|| ApiError::internal("forwarding a push for a repository without upstream"))
}

/// `info/refs?service=git-receive-pack` of a mirror: sync first, so the client's pack fits
/// both the upstream and us, then advertise our refs with the capabilities both sides have.
pub async fn advertise(app: &Arc<App>, repo: Arc<Repo>) -> Result<Response<Body>, ApiError> {
    let url = upstream_url(&repo)?;
    app.sync.sync_wait(repo.clone()).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("could not sync from the upstream before the push: {e}"),
        )
    })?;
    let upstream = app
        .upstream
        .receive_pack_advertisement(&url)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let caps = forward::common_caps(&forward::advertised_caps(&upstream));
    let mut body = Vec::new();
    pktline::line(&mut body, "# service=git-receive-pack");
    pktline::flush(&mut body);
    body.extend_from_slice(&receive_pack::advertise_with(
        &repo.view().refs(Namespace::Default),
        &caps,
    ));
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "application/x-git-receive-pack-advertisement",
        )
        .header(
            header::CACHE_CONTROL,
            "no-cache, max-age=0, must-revalidate",
        )
        .body(full(body))
        .map_err(ApiError::internal)
}

type UpstreamBody = mpsc::Sender<Result<Bytes, io::Error>>;

/// `POST git-receive-pack` of a mirror.
pub fn forward(
    app: &Arc<App>,
    repo: Arc<Repo>,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let url = upstream_url(&repo)?;
    let input = ChannelReader::spawn(body, 8);
    let (writer, response_body) = ChannelWriter::new(8);
    let (start_tx, start_rx) = oneshot::channel::<()>();
    let (up_tx, up_rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);
    let (status_tx, status_rx) = oneshot::channel::<Result<(), UpstreamError>>();
    let (resp_tx, resp_rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);

    let client = app.upstream.clone();
    let upstream_target = url.clone();
    tokio::spawn(async move {
        if start_rx.await.is_err() {
            return;
        }
        let stream = futures_util::stream::unfold(up_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        match client.receive_pack(&upstream_target, stream).await {
            Err(e) => {
                let _ = status_tx.send(Err(e));
            }
            Ok(resp) => {
                let _ = status_tx.send(Ok(()));
                let mut resp = resp;
                loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            if resp_tx.send(Ok(chunk)).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = resp_tx
                                .send(Err(io::Error::other(e.without_url().to_string())))
                                .await;
                            break;
                        }
                    }
                }
            }
        }
    });

    let worker = Worker {
        app: app.clone(),
        repo,
        limits: app.config.push_limits,
        upstream_body: up_tx,
        client: writer,
    };
    tokio::task::spawn_blocking(move || {
        let name = worker.repo.record().name;
        let _span = tracing::info_span!("push-forward", repo = %name).entered();
        worker.run(input, start_tx, status_rx, resp_rx);
    });
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "application/x-git-receive-pack-result",
        )
        .header(
            header::CACHE_CONTROL,
            "no-cache, max-age=0, must-revalidate",
        )
        .body(response_body)
        .map_err(ApiError::internal)
}

/// Why teeing the pack failed: our checks (the upstream gets an aborted request), or the
/// upstream itself (its HTTP answer says why).
enum TeeFailure {
    Local(String),
    Upstream(String),
}

struct Worker {
    app: Arc<App>,
    repo: Arc<Repo>,
    limits: Limits,
    upstream_body: UpstreamBody,
    client: ChannelWriter,
}

impl Worker {
    fn abort_upstream(&self, why: &str) {
        let _ = self
            .upstream_body
            .blocking_send(Err(io::Error::other(format!("push aborted: {why}"))));
    }

    fn run(
        mut self,
        input: ChannelReader,
        start: oneshot::Sender<()>,
        status: oneshot::Receiver<Result<(), UpstreamError>>,
        response: mpsc::Receiver<Result<Bytes, io::Error>>,
    ) {
        let mut input = BufReader::with_capacity(64 << 10, input);
        let req = match receive_pack::read_request(&mut input, self.limits.max_commands) {
            Ok(r) => r,
            Err(e) => {
                let mut err = Vec::new();
                pktline::err(&mut err, &e.to_string());
                let _ = self.client.write_all(&err);
                return;
            }
        };
        // A flush-only probe (git sends one before large pushes): nothing to forward.
        if req.commands.is_empty() {
            return;
        }
        if !req.caps.report_status {
            let mut err = Vec::new();
            pktline::err(
                &mut err,
                "pushes to a mirror need the report-status capability",
            );
            let _ = self.client.write_all(&err);
            return;
        }
        // Refused here, before anything reaches the upstream: bad names, and an old value that
        // is not what we hold (we synced right before advertising, so the upstream agrees).
        let local = self.repo.view().refs(Namespace::Default);
        let ours: Vec<(String, RefStatus)> = req
            .commands
            .iter()
            .filter_map(|c| {
                if let Some(r) = refuse_name(c) {
                    return Some((c.name.clone(), RefStatus::Ng(r.into())));
                }
                let current = local.get(&c.name).and_then(RefValue::id);
                let expected = (!c.old.is_null()).then_some(c.old);
                (current != expected).then(|| {
                    let at = current.map_or("absent".to_owned(), |id| id.to_string());
                    (
                        c.name.clone(),
                        RefStatus::Ng(format!("stale info (the ref is {at} here; fetch first)")),
                    )
                })
            })
            .collect();
        let accepted: Vec<&Command> = req
            .commands
            .iter()
            .filter(|c| !ours.iter().any(|(n, _)| n == &c.name))
            .collect();
        if accepted.is_empty() || (req.caps.atomic && !ours.is_empty()) {
            let mut report = Report {
                unpack_error: None,
                refs: ours,
            };
            for c in &accepted {
                report
                    .refs
                    .push((c.name.clone(), RefStatus::Ng("atomic push failed".into())));
            }
            let _ = report.send(&req.caps, &mut self.client);
            return;
        }

        let _ = start.send(());
        let head = forward::upstream_head(
            &accepted,
            &req.caps,
            &req.push_options,
            &crate::protocol::upload_pack::agent(),
        );
        let _ = self.upstream_body.blocking_send(Ok(Bytes::from(head)));

        let mut status = Some(status);
        let quarantine = if req.expects_pack() {
            match self.tee_pack(&mut input, &accepted) {
                Ok(q) => q,
                Err(TeeFailure::Local(reason)) => {
                    self.abort_upstream(&reason);
                    let report = forward::failed_report(&req.commands, &reason);
                    let _ = report.send(&req.caps, &mut self.client);
                    return;
                }
                Err(TeeFailure::Upstream(fallback)) => {
                    // The upstream stopped reading: its own answer says why.
                    let reason = match status.take().map(|s| s.blocking_recv()) {
                        Some(Ok(Err(e))) => e.to_string(),
                        _ => fallback,
                    };
                    tracing::warn!(error = %reason, "forwarded push failed");
                    let report = forward::failed_report(&req.commands, &reason);
                    let _ = report.send(&req.caps, &mut self.client);
                    return;
                }
            }
        } else {
            None
        };
        let Some(status) = status else { return };
        // End of the upstream request body.
        let (dead, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.upstream_body, dead));

        let upstream = match status.blocking_recv() {
            Ok(Ok(())) => self.read_upstream(&req, response),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("upstream request failed".to_owned()),
        };
        let upstream = match upstream {
            Ok(u) => u,
            Err(reason) => {
                tracing::warn!(error = %reason, "forwarded push failed");
                let report = forward::failed_report(&req.commands, &reason);
                let _ = report.send(&req.caps, &mut self.client);
                return;
            }
        };
        self.apply_locally(&accepted, &upstream, quarantine);
        self.send_report(&req, &upstream, &ours);
        self.app.sync.request(self.repo.clone());
    }

    /// Stream the pack to the upstream (trailer held back) and into a quarantine; verify it.
    fn tee_pack(
        &self,
        input: &mut dyn Read,
        accepted: &[&Command],
    ) -> Result<Option<codestorage_store::Quarantine>, TeeFailure> {
        let sink = self.upstream_body.clone();
        let limited = LimitedReader::new(input, self.limits.max_pack_bytes);
        let mut tee = Tee::new(limited, move |chunk: Vec<u8>| {
            sink.blocking_send(Ok(Bytes::from(chunk)))
                .map_err(|_| io::Error::other("the upstream stopped reading"))
        });
        let opts = IngestOptions {
            max_object_bytes: Some(self.limits.max_object_bytes),
            ..Default::default()
        };
        let received = {
            let mut buffered = BufReader::with_capacity(64 << 10, &mut tee);
            self.repo
                .receive_pack(&mut buffered, opts, &self.app.interrupt)
        };
        let mut quarantine = match received {
            Ok(q) => q,
            Err(e) if tee.sink_failed.is_some() => {
                return Err(TeeFailure::Upstream(format!(
                    "the upstream stopped reading the pack ({e})"
                )));
            }
            Err(e) => return Err(TeeFailure::Local(format!("unpack failed: {e}"))),
        };
        if let Some(q) = quarantine.as_mut() {
            let tips: Vec<_> = accepted
                .iter()
                .filter(|c| !c.is_delete())
                .map(|c| c.new)
                .collect();
            let view = self.repo.view();
            if let Err(e) = q.verify(view.packs.clone(), Namespace::Default, &tips) {
                return Err(TeeFailure::Local(format!("missing necessary objects: {e}")));
            }
        }
        tee.release().map_err(|e| {
            TeeFailure::Upstream(format!("the upstream stopped reading the pack ({e})"))
        })?;
        Ok(quarantine)
    }

    fn read_upstream(
        &mut self,
        req: &Request,
        rx: mpsc::Receiver<Result<Bytes, io::Error>>,
    ) -> Result<UpstreamReport, String> {
        let mut reader = ChannelReader::new(rx);
        let client = &mut self.client;
        // The upstream got `quiet` from us and honours it itself; what it still sends on
        // band 2 (hook output) is meant for the pusher.
        let relay_progress = req.caps.sideband;
        let report = forward::read_response(&mut reader, req.caps.sideband, &mut |pkt| {
            if relay_progress {
                client.write_all(pkt)?;
                client.flush()?;
            }
            Ok(())
        })
        .map_err(|e| format!("reading the upstream's answer: {e}"))?;
        Ok(report)
    }

    /// Move the local refs the upstream accepted, from whatever they hold now.
    fn apply_locally(
        &self,
        accepted: &[&Command],
        upstream: &UpstreamReport,
        quarantine: Option<codestorage_store::Quarantine>,
    ) {
        let updates: Vec<RefUpdate> = accepted
            .iter()
            .filter(|c| {
                upstream.status_of(&c.name) == Some(RefStatus::Ok) && !upstream.rewritten(&c.name)
            })
            .map(|c| RefUpdate {
                name: c.name.clone(),
                expect: Expect::Any,
                new: (!c.is_delete()).then_some(RefValue::Direct(c.new)),
            })
            .collect();
        if updates.is_empty() {
            return;
        }
        let lock = self.app.sync.repo_lock(&self.repo.record().name);
        let _guard = lock.blocking_lock();
        let result = self.repo.commit(Transaction {
            ns: Namespace::Default,
            updates,
            who: "push".into(),
            atomic: false,
            quarantine,
        });
        match result {
            Ok(outcome) => {
                for r in outcome.results.iter().filter_map(|r| r.as_ref().err()) {
                    tracing::warn!(error = %r, "local ref not moved after the upstream accepted; the next sync fixes it");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "local refs not moved after the upstream accepted; the next sync fixes it")
            }
        }
    }

    fn send_report(
        &mut self,
        req: &Request,
        upstream: &UpstreamReport,
        ours: &[(String, RefStatus)],
    ) {
        let mut out = Vec::new();
        if let (Some(e), true) = (&upstream.error, req.caps.sideband) {
            pktline::band(
                &mut out,
                pktline::Band::Error,
                format!("{e}\n").as_bytes(),
                pktline::MAX_SIDEBAND_DATA,
            );
        }
        let report = forward::merge(upstream, ours);
        if req.caps.sideband {
            pktline::band(
                &mut out,
                pktline::Band::Data,
                &report,
                pktline::MAX_SIDEBAND_DATA,
            );
            pktline::flush(&mut out);
        } else {
            out.extend_from_slice(&report);
        }
        let _ = self.client.write_all(&out);
        let _ = self.client.flush();
        for (name, status) in accepted_statuses(req, upstream) {
            tracing::info!(r#ref = %name, status = ?status, "forwarded push");
        }
    }
}

fn accepted_statuses<'a>(
    req: &'a Request,
    upstream: &UpstreamReport,
) -> Vec<(&'a str, Option<RefStatus>)> {
    req.commands
        .iter()
        .map(|c| (c.name.as_str(), upstream.status_of(&c.name)))
        .collect()
}
