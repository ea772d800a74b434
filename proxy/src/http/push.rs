//! Write-through pushes to mirrors: the receive-pack advertisement after a fresh sync, and the
//! POST that tees the client's pack to the upstream and into a local quarantine.
//!
//! One blocking worker does the push in order: read the commands; refuse what the token's ref
//! policy or our state refuses; start the upstream request; stream the pack to both sides,
//! holding back its trailer from the upstream until the local quarantine verifies (else the
//! upstream request is aborted, so it applies nothing). A policy decision that needed the pack
//! (a `no-force-push` rule and a commit only the pack has) and refuses a ref aborts that request
//! too, and the rest goes upstream again in a new request, with the verified pack from the
//! quarantine. Then: relay the upstream's progress; for each ref the upstream accepted, move the
//! local ref under the repository's sync lock using the quarantined objects; answer with the
//! upstream's report plus our own `ng` lines; kick a background sync. An async task carries
//! each upstream HTTP request. Memory stays bounded: both directions go through small channels.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use codestorage_store::{
    Expect, IngestOptions, Namespace, ObjectId, ObjectReader, Quarantine, RefUpdate, RefValue,
    Repo, Transaction,
};
use http::{Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::body::{Body, ChannelReader, ChannelWriter, full};
use super::error::ApiError;
use crate::app::App;
use crate::auth::Identity;
use crate::protocol::pktline;
use crate::protocol::receive_pack::forward::{self, Tee, UpstreamReport};
use crate::protocol::receive_pack::local::{LimitedReader, Limits};
use crate::protocol::receive_pack::{
    self, Command, RefStatus, Report, Request, check_policy, refuse_name,
};
use crate::upstream::push::advertised_refs;
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamTarget};
use crate::webhooks::RefMove;

/// The upstream of `repo` with the credential to present there now.
async fn upstream_target(app: &App, repo: &Repo) -> Result<UpstreamTarget, ApiError> {
    app.credentials
        .target(repo)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?
        .ok_or_else(|| ApiError::internal("forwarding a push for a repository without upstream"))
}

/// `info/refs?service=git-receive-pack` of a mirror: make sure we hold the upstream's current
/// tips (the client's pack then fits both sides) — the upstream's own advertisement says, and a
/// (coalesced) sync runs when ours differ — then advertise our refs with the capabilities both
/// sides have.
pub async fn advertise(app: &Arc<App>, repo: Arc<Repo>) -> Result<Response<Body>, ApiError> {
    let target = upstream_target(app, &repo).await?;
    let upstream = app
        .upstream
        .receive_pack_advertisement(&target)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let followed = |name: &str| name.starts_with("refs/heads/") || name.starts_with("refs/tags/");
    let theirs: BTreeMap<String, ObjectId> = advertised_refs(&upstream)
        .into_iter()
        .filter(|(n, _)| followed(n))
        .collect();
    let ours: BTreeMap<String, ObjectId> = repo
        .view()
        .refs(Namespace::Default)
        .iter()
        .filter(|(n, _)| followed(n))
        .filter_map(|(n, v)| Some((n.clone(), v.id()?)))
        .collect();
    if theirs != ours {
        app.sync.sync_wait(repo.clone()).await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("could not sync from the upstream before the push: {e}"),
            )
        })?;
    }
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

/// `POST git-receive-pack` of a mirror.
pub async fn forward(
    app: &Arc<App>,
    repo: Arc<Repo>,
    identity: Option<Identity>,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let target = upstream_target(app, &repo).await?;
    let input = ChannelReader::spawn(body, 8);
    let (writer, response_body) = ChannelWriter::new(8);
    let worker = Worker {
        app: app.clone(),
        repo,
        target,
        identity,
        limits: app.config.push_limits,
        runtime: tokio::runtime::Handle::current(),
        client: writer,
    };
    tokio::task::spawn_blocking(move || {
        let name = worker.repo.record().name;
        let _span = tracing::info_span!("push-forward", repo = %name).entered();
        worker.run(input);
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

/// One upstream `git-receive-pack` request in flight: its body, its status, its response.
struct UpstreamRequest {
    body: mpsc::Sender<Result<Bytes, io::Error>>,
    status: oneshot::Receiver<Result<(), UpstreamError>>,
    response: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl UpstreamRequest {
    /// Start a request on `runtime`; its body is what is sent through `body`.
    fn start(
        runtime: &tokio::runtime::Handle,
        client: UpstreamClient,
        target: UpstreamTarget,
    ) -> Self {
        let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);
        let (status_tx, status_rx) = oneshot::channel();
        let (resp_tx, resp_rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);
        runtime.spawn(async move {
            let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let mut resp = match client.receive_pack(&target, stream).await {
                Err(e) => {
                    let _ = status_tx.send(Err(e));
                    return;
                }
                Ok(resp) => resp,
            };
            let _ = status_tx.send(Ok(()));
            loop {
                let item = match resp.chunk().await {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) => break,
                    Err(e) => Err(io::Error::other(e.without_url().to_string())),
                };
                let stop = item.is_err();
                if resp_tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        UpstreamRequest {
            body: body_tx,
            status: status_rx,
            response: resp_rx,
        }
    }

    /// Abort: the upstream sees a broken request and applies nothing.
    fn abort(&self, why: &str) {
        let _ = self
            .body
            .blocking_send(Err(io::Error::other(format!("push aborted: {why}"))));
    }

    /// End the body and wait for the upstream's answer.
    fn finish(self) -> Result<mpsc::Receiver<Result<Bytes, io::Error>>, String> {
        let UpstreamRequest {
            body,
            status,
            response,
        } = self;
        drop(body);
        match status.blocking_recv() {
            Ok(Ok(())) => Ok(response),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("upstream request failed".to_owned()),
        }
    }
}

/// A teed pack: its verified quarantine (none for an empty pack) and the ref-policy refusals
/// decided once its objects were known.
type Teed = (Option<Quarantine>, Vec<(String, RefStatus)>);

/// Why teeing the pack failed: our checks (the upstream gets an aborted request), or the
/// upstream itself (its HTTP answer says why).
enum TeeFailure {
    Local(String),
    Upstream(String),
}

struct Worker {
    app: Arc<App>,
    repo: Arc<Repo>,
    target: UpstreamTarget,
    identity: Option<Identity>,
    limits: Limits,
    runtime: tokio::runtime::Handle,
    client: ChannelWriter,
}

impl Worker {
    fn start_upstream(&self) -> UpstreamRequest {
        UpstreamRequest::start(
            &self.runtime,
            self.app.upstream.clone(),
            self.target.clone(),
        )
    }

    fn fail(&mut self, req: &Request, reason: &str) {
        tracing::warn!(error = %reason, "forwarded push failed");
        crate::metrics::global().push_forwarded(crate::metrics::PushOutcome::Failed);
        let report = forward::failed_report(&req.commands, reason);
        let _ = report.send(&req.caps, &mut self.client);
    }

    fn run(mut self, input: ChannelReader) {
        let mut input = BufReader::with_capacity(64 << 10, input);
        let req = match receive_pack::read_request_or_refusal(&mut input, self.limits.max_commands)
        {
            Ok(r) => r,
            Err((_, answer)) => {
                let _ = self.client.write_all(&answer);
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
        let (mut ours, pending) = self.refuse_early(&req);
        let mut accepted: Vec<&Command> = req
            .commands
            .iter()
            .filter(|c| !ours.iter().any(|(n, _)| n == &c.name))
            .collect();
        if accepted.is_empty() || (req.caps.atomic && !ours.is_empty()) {
            self.refuse_all(&req, ours, &accepted);
            return;
        }

        let agent = crate::protocol::upload_pack::agent();
        let head = forward::upstream_head(&accepted, &req.caps, &req.push_options, &agent);
        let mut upstream = self.start_upstream();
        let _ = upstream.body.blocking_send(Ok(Bytes::from(head)));

        let mut late = Vec::new();
        let quarantine = if req.expects_pack() {
            match self.tee_pack(&mut input, &req, &accepted, &pending, &upstream) {
                Ok((q, refused)) => {
                    late = refused;
                    q
                }
                Err(TeeFailure::Local(reason)) => {
                    upstream.abort(&reason);
                    self.fail(&req, &reason);
                    return;
                }
                Err(TeeFailure::Upstream(fallback)) => {
                    // The upstream stopped reading: its own answer says why.
                    let reason = upstream.finish().err().unwrap_or(fallback);
                    self.fail(&req, &reason);
                    return;
                }
            }
        } else {
            None
        };

        // Policy decisions that needed the pack: the trailer was held back, so refusing one now
        // means the request is aborted (the upstream applies nothing) and a new one is made.
        {
            if !late.is_empty() {
                upstream.abort("a ref was refused by the token's ref policy");
                ours.extend(late);
                accepted.retain(|c| !ours.iter().any(|(n, _)| n == &c.name));
                if accepted.is_empty() || req.caps.atomic {
                    self.refuse_all(&req, ours, &accepted);
                    return;
                }
                match self.resend(&req, &accepted, quarantine.as_ref()) {
                    Ok(u) => upstream = u,
                    Err(reason) => {
                        self.fail(&req, &reason);
                        return;
                    }
                }
            }
        }

        let upstream = match upstream
            .finish()
            .and_then(|response| self.read_upstream(&req, response))
        {
            Ok(u) => u,
            Err(reason) => {
                self.fail(&req, &reason);
                return;
            }
        };
        self.apply_locally(&accepted, &upstream, quarantine);
        self.send_report(&req, &upstream, &ours);
        self.app.sync.request(self.repo.clone());
    }

    /// Refusals decided before anything reaches the upstream: bad names, an old value that is
    /// not what we hold (we synced right before advertising, so the upstream agrees), and what
    /// the token's ref policy refuses already. Also the commands whose policy decision needs the
    /// pack.
    fn refuse_early(&self, req: &Request) -> (Vec<(String, RefStatus)>, Vec<usize>) {
        let view = self.repo.view();
        let local = view.refs(Namespace::Default);
        let mut reader = view.reader();
        let policy = self
            .identity
            .as_ref()
            .map(|i| check_policy(&req.commands, &i.policy, &mut reader));
        let mut ours = Vec::new();
        let mut pending = Vec::new();
        for (i, c) in req.commands.iter().enumerate() {
            if let Some(r) = refuse_name(c) {
                ours.push((c.name.clone(), RefStatus::Ng(r.into())));
                continue;
            }
            let current = local.get(&c.name).and_then(RefValue::id);
            let expected = (!c.old.is_null()).then_some(c.old);
            if current != expected {
                let at = current.map_or("absent".to_owned(), |id| id.to_string());
                ours.push((
                    c.name.clone(),
                    RefStatus::Ng(format!("stale info (the ref is {at} here; fetch first)")),
                ));
                continue;
            }
            match policy.as_ref().and_then(|p| p[i].clone()) {
                Some(Err(reason)) => ours.push((c.name.clone(), RefStatus::Ng(reason))),
                None if policy.is_some() => pending.push(i),
                _ => {}
            }
        }
        (ours, pending)
    }

    /// Policy decisions for `pending` commands, now that the pack's commits are at hand.
    fn refuse_late(
        &self,
        req: &Request,
        pending: &[usize],
        quarantine: Option<&Quarantine>,
    ) -> Vec<(String, RefStatus)> {
        let Some(identity) = self.identity.as_ref().filter(|_| !pending.is_empty()) else {
            return Vec::new();
        };
        let view = self.repo.view();
        let mut reader = match quarantine {
            Some(q) => ObjectReader::with_extra(view.packs.clone(), q.pack().clone()),
            None => view.reader(),
        };
        let commands: Vec<Command> = pending.iter().map(|i| req.commands[*i].clone()).collect();
        check_policy(&commands, &identity.policy, &mut reader)
            .into_iter()
            .zip(&commands)
            .filter_map(|(decision, c)| match decision {
                Some(Ok(())) => None,
                Some(Err(reason)) => Some((c.name.clone(), RefStatus::Ng(reason))),
                None => Some((
                    c.name.clone(),
                    RefStatus::Ng("missing necessary objects".into()),
                )),
            })
            .collect()
    }

    /// Answer without the upstream: our refusals, and "atomic push failed" for the rest.
    fn refuse_all(&mut self, req: &Request, ours: Vec<(String, RefStatus)>, rest: &[&Command]) {
        crate::metrics::global().push_forwarded(crate::metrics::PushOutcome::Refused);
        let mut report = Report {
            unpack_error: None,
            refs: ours,
        };
        for c in rest {
            report
                .refs
                .push((c.name.clone(), RefStatus::Ng("atomic push failed".into())));
        }
        let _ = report.send(&req.caps, &mut self.client);
    }

    /// A new upstream request for `accepted`, carrying the quarantined (verified, complete)
    /// pack instead of the client's bytes.
    fn resend(
        &self,
        req: &Request,
        accepted: &[&Command],
        quarantine: Option<&Quarantine>,
    ) -> Result<UpstreamRequest, String> {
        let agent = crate::protocol::upload_pack::agent();
        let head = forward::upstream_head(accepted, &req.caps, &req.push_options, &agent);
        let upstream = self.start_upstream();
        let send = |chunk: Bytes| {
            upstream
                .body
                .blocking_send(Ok(chunk))
                .map_err(|_| "the upstream stopped reading".to_owned())
        };
        send(Bytes::from(head))?;
        if accepted.iter().any(|c| !c.is_delete())
            && let Some(q) = quarantine
        {
            let path = q.pack().data_path();
            let mut file = std::fs::File::open(&path)
                .map_err(|e| format!("reading the received pack: {e}"))?;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| format!("reading the received pack: {e}"))?;
                if n == 0 {
                    break;
                }
                send(Bytes::copy_from_slice(&buf[..n]))?;
            }
        }
        Ok(upstream)
    }

    /// Stream the pack to the upstream (trailer held back) and into a quarantine; verify it.
    /// The pack's trailer goes upstream only if verification passes and the token's ref policy
    /// refuses none of the `pending` decisions; those refusals come back with the quarantine.
    fn tee_pack(
        &self,
        input: &mut dyn Read,
        req: &Request,
        accepted: &[&Command],
        pending: &[usize],
        upstream: &UpstreamRequest,
    ) -> Result<Teed, TeeFailure> {
        let sink = upstream.body.clone();
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
        let late = self.refuse_late(req, pending, quarantine.as_ref());
        if !late.is_empty() {
            // Keep the trailer: the caller aborts this request.
            return Ok((quarantine, late));
        }
        tee.release().map_err(|e| {
            TeeFailure::Upstream(format!("the upstream stopped reading the pack ({e})"))
        })?;
        Ok((quarantine, late))
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
        quarantine: Option<Quarantine>,
    ) {
        let moved: Vec<&&Command> = accepted
            .iter()
            .filter(|c| {
                upstream.status_of(&c.name) == Some(RefStatus::Ok) && !upstream.rewritten(&c.name)
            })
            .collect();
        // The upstream moved these refs: that is the push, whatever happens here next.
        let moves: Vec<RefMove> = moved
            .iter()
            .map(|c| RefMove::from_ids(&c.name, c.old, c.new))
            .collect();
        self.app
            .webhooks
            .pushed_blocking(&self.repo.record(), Namespace::Default, &moves);
        let updates: Vec<RefUpdate> = moved
            .into_iter()
            .map(|c| RefUpdate {
                name: c.name.clone(),
                expect: Expect::Any,
                new: (!c.is_delete()).then_some(RefValue::Direct(c.new)),
            })
            .collect();
        if updates.is_empty() {
            return;
        }
        codestorage_store::fault::point("push-upstream-accepted");
        let lock = self.app.sync.repo_lock(&self.repo.record().name);
        let _guard = lock.blocking_lock();
        let who = self
            .identity
            .as_ref()
            .map_or_else(|| "push".to_owned(), |i| format!("push by {}", i.who()));
        let result = self.repo.commit(Transaction {
            ns: Namespace::Default,
            updates,
            who,
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
        let all_ok = ours.is_empty()
            && req
                .commands
                .iter()
                .all(|c| upstream.status_of(&c.name) == Some(RefStatus::Ok));
        crate::metrics::global().push_forwarded(if all_ok {
            crate::metrics::PushOutcome::Accepted
        } else {
            crate::metrics::PushOutcome::Partial
        });
        let who = self.identity.as_ref().map(Identity::who);
        for c in &req.commands {
            tracing::info!(
                r#ref = %c.name,
                status = ?upstream.status_of(&c.name),
                who = who.as_deref().unwrap_or("-"),
                "forwarded push"
            );
        }
    }
}
