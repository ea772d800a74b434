//! One sync run against an upstream: list its refs, fetch what we lack (our tips as haves),
//! index the pack into a quarantine, verify it, and move the local refs by compare-and-swap.
//!
//! Blocking (gix's HTTP client is blocking): callers run it on a blocking thread.
//!
//! The upstream is trusted over TLS by the system roots plus `--upstream-ca-file`; the standard
//! proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`) apply, as reqwest reads them. The
//! pack a sync receives is capped (`--max-fetch-bytes`): over the cap the sync fails and nothing
//! changes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bstr::ByteSlice;
use codestorage_store::{
    Expect, IngestOptions, Namespace, ObjectId, RefUpdate, RefValue, Repo, StoreError, Transaction,
    refs,
};
use gix_protocol::handshake::Ref;
use gix_transport::client::blocking_io::http;
use gix_transport::{Protocol, Service};

use crate::upstream::UpstreamTarget;

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The upstream URL is not usable.
    #[error("invalid upstream URL: {0}")]
    BadUrl(String),
    /// The upstream URL is refused by policy (plain http or loopback without the dev switch).
    #[error("{0}")]
    Refused(String),
    /// Talking to the upstream failed.
    #[error("upstream {step} failed: {source:#}")]
    Upstream {
        /// What was being done.
        step: &'static str,
        /// The gix error.
        #[source]
        source: gix_error::Error,
    },
    /// The upstream is a SHA-256 repository.
    #[error("the upstream is a SHA-256 repository; only SHA-1 repositories are supported")]
    Sha256,
    /// The upstream sent a pack larger than `--max-fetch-bytes`.
    #[error(
        "the upstream's pack exceeds the fetch limit of {limit} bytes (--max-fetch-bytes); nothing was changed"
    )]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The store failed (including a pack that does not verify).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Public mode: refs moved both here and upstream were left alone (every other update was
    /// applied).
    #[error("refs diverged from the upstream and were left alone: {0}")]
    Diverged(String),
}

impl SyncError {
    /// The throttling status (429, 503) the upstream answered, if that is why the sync failed.
    pub fn throttle_status(&self) -> Option<u16> {
        match self {
            SyncError::Upstream { source, .. } => super::politeness::throttle_status(source),
            _ => None,
        }
    }
}

/// How syncs reach upstreams.
#[derive(Clone)]
pub struct FetchOptions {
    /// Permit plain-http and loopback upstreams (`--allow-http-upstream`).
    pub allow_http: bool,
    /// Extra trusted roots for upstream TLS (`--upstream-ca-file`), besides the system's.
    pub ca_certs: Vec<reqwest::Certificate>,
    /// Largest pack one sync may receive, in bytes (`--max-fetch-bytes`).
    pub max_fetch_bytes: u64,
    /// How often a running sync logs its progress (`--sync-progress-interval`).
    pub progress_interval: Duration,
    /// Syncs running at once, across all hosts (`--max-concurrent-syncs`).
    pub max_concurrent_syncs: usize,
}

/// The default of `--max-fetch-bytes`: 8 GiB.
pub const DEFAULT_MAX_FETCH_BYTES: u64 = 8 << 30;

impl FetchOptions {
    /// Defaults: system roots only, the default fetch limit.
    pub fn new(allow_http: bool) -> FetchOptions {
        FetchOptions {
            allow_http,
            ca_certs: Vec::new(),
            max_fetch_bytes: DEFAULT_MAX_FETCH_BYTES,
            progress_interval: Duration::from_secs(10),
            max_concurrent_syncs: 4,
        }
    }
}

/// What a running sync has done so far: shown in the logs and in the repository's sync status.
#[derive(Debug, Default)]
pub struct Progress {
    phase: std::sync::atomic::AtomicU8,
    bytes: AtomicU64,
    /// The object count of the pack header (0 until it arrived).
    objects: AtomicU32,
    /// Objects indexed so far (counted by the store while it indexes the stream).
    indexed: Arc<std::sync::atomic::AtomicUsize>,
    /// The first bytes of the pack (its 12-byte header), as they arrive.
    header: Mutex<Vec<u8>>,
}

/// What a sync is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Listing the upstream's refs.
    Negotiating,
    /// Receiving and indexing the pack.
    Receiving,
    /// Checking the received objects.
    Verifying,
    /// Moving the refs.
    Committing,
}

impl Phase {
    /// The name shown in logs and in the sync status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Negotiating => "negotiating",
            Phase::Receiving => "receiving",
            Phase::Verifying => "verifying",
            Phase::Committing => "committing",
        }
    }
}

/// A snapshot of [`Progress`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgressView {
    /// What the sync is doing.
    pub phase: Phase,
    /// Pack bytes received so far.
    pub bytes_received: u64,
    /// Objects received and indexed so far.
    pub objects_received: u64,
    /// Objects in the pack being received (from its header; absent until it arrived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_total: Option<u32>,
}

impl Progress {
    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn received(&self, data: &[u8]) {
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.objects.load(Ordering::Relaxed) != 0 {
            return;
        }
        let mut header = self.header.lock().unwrap_or_else(|p| p.into_inner());
        if header.len() < 12 {
            let take = (12 - header.len()).min(data.len());
            header.extend_from_slice(&data[..take]);
            if header.len() == 12 && header.starts_with(b"PACK") {
                let n = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
                self.objects.store(n, Ordering::Relaxed);
            }
        }
    }

    /// What has been done so far.
    pub fn view(&self) -> ProgressView {
        let objects = self.objects.load(Ordering::Relaxed);
        ProgressView {
            phase: match self.phase.load(Ordering::Relaxed) {
                1 => Phase::Receiving,
                2 => Phase::Verifying,
                3 => Phase::Committing,
                _ => Phase::Negotiating,
            },
            bytes_received: self.bytes.load(Ordering::Relaxed),
            objects_received: self.indexed.load(Ordering::Relaxed) as u64,
            objects_total: (objects != 0).then_some(objects),
        }
    }
}

/// How far into a pack the `sync-mid-fetch` fault point sits (the quarantine exists by then).
const MID_FETCH: u64 = 32 << 10;

/// A reader that fails once more than `limit` bytes were read, and says so in `exceeded`;
/// counts what it reads into `progress`.
struct Capped<'a, R> {
    inner: R,
    remaining: u64,
    exceeded: &'a AtomicBool,
    progress: &'a Progress,
    /// Reads and bytes so far (the `sync-mid-fetch` fault point fires past [`MID_FETCH`], not
    /// on the first read: that one happens before the quarantine exists).
    total: (u64, u64),
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.store(true, Ordering::SeqCst);
                    Err(std::io::Error::other("pack exceeds the fetch limit"))
                }
            };
        }
        // Reads of at most 16 KiB: the progress moves at that granularity.
        let max = buf
            .len()
            .min(16 << 10)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.total = (self.total.0 + 1, self.total.1 + n as u64);
        if self.total.0 > 1 && self.total.1 > MID_FETCH && n > 0 {
            codestorage_store::fault::point("sync-mid-fetch");
        }
        self.remaining -= n as u64;
        self.progress.received(&buf[..n]);
        Ok(n)
    }
}

/// What a successful run did.
#[derive(Debug, Default, Clone)]
pub struct Fetched {
    /// Refs created or moved.
    pub updated: usize,
    /// Refs deleted.
    pub deleted: usize,
    /// Objects received.
    pub objects: u32,
    /// Some updates lost a race with a concurrent write; run again.
    pub retry: bool,
}

/// Whether `url` carries user-info (`https://user:secret@host/…`): such URLs are refused, so a
/// secret never lands in a record or a log.
pub fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

/// Check an outbound URL against the policy: https only, and no loopback hosts, unless the
/// development switch allows them.
pub fn check_url(url: &str, allow_http: bool) -> Result<gix_url::Url, SyncError> {
    // Checked before anything echoes the URL: user-info may hold a secret.
    if has_userinfo(url) {
        return Err(SyncError::BadUrl(
            "the upstream URL must not contain credentials; store them with the git-credentials API"
                .into(),
        ));
    }
    let parsed = gix_url::Url::from_bytes(url.as_bytes().as_bstr())
        .map_err(|e| SyncError::BadUrl(format!("{url}: {e}")))?;
    match parsed.scheme {
        gix_url::Scheme::Https => {}
        gix_url::Scheme::Http if allow_http => {}
        gix_url::Scheme::Http => {
            return Err(SyncError::Refused(format!(
                "plain http upstream {url} refused (start the server with --allow-http-upstream to permit it)"
            )));
        }
        _ => {
            return Err(SyncError::BadUrl(format!(
                "{url}: only http(s) upstreams are supported"
            )));
        }
    }
    let host = parsed.host().unwrap_or_default().to_owned();
    if host.is_empty() {
        return Err(SyncError::BadUrl(format!("{url}: no host")));
    }
    if !allow_http && is_loopback(&host) {
        return Err(SyncError::Refused(format!(
            "loopback upstream {host} refused (start the server with --allow-http-upstream to permit it)"
        )));
    }
    Ok(parsed)
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback() || ip.is_unspecified())
        .unwrap_or(false)
}

/// The refs a mirror follows: `HEAD` (symbolic), `refs/heads/*`, `refs/tags/*`.
#[derive(Debug, Default)]
struct Remote {
    refs: BTreeMap<String, ObjectId>,
    head: Option<String>,
}

pub(super) fn followed(name: &str) -> bool {
    (name.starts_with("refs/heads/") || name.starts_with("refs/tags/"))
        && refs::valid_ref_name(name)
}

fn collect(list: Vec<Ref>) -> Remote {
    let mut remote = Remote::default();
    for r in list {
        match r {
            Ref::Direct {
                full_ref_name,
                object,
            } => {
                if let Ok(name) = full_ref_name.to_str()
                    && followed(name)
                {
                    remote.refs.insert(name.to_owned(), object);
                }
            }
            Ref::Peeled {
                full_ref_name, tag, ..
            } => {
                if let Ok(name) = full_ref_name.to_str()
                    && followed(name)
                {
                    remote.refs.insert(name.to_owned(), tag);
                }
            }
            Ref::Symbolic {
                full_ref_name,
                target,
                tag,
                object,
            } => {
                let (Ok(name), Ok(target)) = (full_ref_name.to_str(), target.to_str()) else {
                    continue;
                };
                if name == "HEAD" {
                    if followed(target) {
                        remote.head = Some(target.to_owned());
                    }
                } else if followed(name) {
                    remote.refs.insert(name.to_owned(), tag.unwrap_or(object));
                }
            }
            Ref::Unborn {
                full_ref_name,
                target,
            } => {
                if let (Ok("HEAD"), Ok(target)) = (full_ref_name.to_str(), target.to_str())
                    && followed(target)
                {
                    remote.head = Some(target.to_owned());
                }
            }
        }
    }
    remote
}

/// How long an upstream may stay silent before a sync gives up on it.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

fn configure(
    transport: &mut http::Transport<http::reqwest::Remote>,
    opts: &FetchOptions,
) -> Result<(), SyncError> {
    use gix_transport::client::TransportWithoutIO as _;
    let certs = opts.ca_certs.clone();
    let backend = http::reqwest::Options {
        // reqwest's blocking timeout bounds each read: an idle timeout, not a transfer cap.
        // Extra roots are merged with the system's (rustls-platform-verifier).
        configure_client: Some(Box::new(move |b| {
            let b = b.timeout(UPSTREAM_IDLE_TIMEOUT);
            Ok(if certs.is_empty() {
                b
            } else {
                b.tls_certs_merge(certs.clone())
            })
        })),
        configure_request: None,
    };
    let options = http::Options {
        user_agent: Some(crate::protocol::upload_pack::agent()),
        connect_timeout: Some(Duration::from_secs(20)),
        backend: Some(Arc::new(Mutex::new(backend))),
        ..Default::default()
    };
    transport
        .configure(&options)
        .map_err(|e| SyncError::Upstream {
            step: "configure",
            source: gix_error::Error::from_error(e),
        })
}

fn upstream(step: &'static str) -> impl FnOnce(gix_error::Error) -> SyncError {
    move |source| SyncError::Upstream { step, source }
}

/// A protocol-v2 HTTP transport to `target` (its URL checked against the outbound policy),
/// configured with `opts` and presenting `target`'s credential, if any.
fn connect(
    target: &UpstreamTarget,
    opts: &FetchOptions,
) -> Result<http::Transport<http::reqwest::Remote>, SyncError> {
    use gix_transport::client::TransportWithoutIO as _;
    let parsed = check_url(&target.url, opts.allow_http)?;
    let mut transport = http::connect::<http::reqwest::Remote>(parsed, Protocol::V2, false);
    configure(&mut transport, opts)?;
    if let Some(c) = &target.credential {
        transport
            .set_identity(gix_sec::identity::Account {
                username: c.username.clone(),
                password: c.password.expose().to_owned(),
                oauth_refresh_token: None,
            })
            .map_err(|e| SyncError::Upstream {
                step: "credentials",
                source: gix_error::Error::from_error(e),
            })?;
    }
    Ok(transport)
}

/// Check that `target` answers an upload-pack handshake (with `ls-refs` under protocol v2):
/// how a public-mode mirror's upstream is shown to be readable without credentials.
pub fn probe(target: &UpstreamTarget, opts: &FetchOptions) -> Result<(), SyncError> {
    let mut transport = connect(target, opts)?;
    let mut progress = gix_utils::progress::Discard;
    let hs = gix_protocol::handshake(
        &mut transport,
        Service::UploadPack,
        |_| Ok(None),
        vec![],
        &mut progress,
    )
    .map_err(upstream("handshake"))?;
    if hs.refs.is_none() {
        let agent = ("agent", Some(crate::protocol::upload_pack::agent()));
        let mut prefixes = gix_protocol::ls_refs::RefPrefixes::new();
        prefixes.extend(["HEAD".into()]);
        gix_protocol::LsRefsCommand::new(Some(prefixes), &hs.capabilities, agent)
            .invoke_blocking(&mut transport, &mut progress, false)
            .map_err(upstream("ls-refs"))?;
    }
    Ok(())
}

/// Run one sync of `repo` from its upstream `target`.
pub fn run(
    repo: &Repo,
    target: &UpstreamTarget,
    opts: &FetchOptions,
    interrupt: &AtomicBool,
    status: &Progress,
) -> Result<Fetched, SyncError> {
    let mut transport = connect(target, opts)?;
    let mut progress = gix_utils::progress::Discard;
    let hs = gix_protocol::handshake(
        &mut transport,
        Service::UploadPack,
        |_| Ok(None),
        vec![],
        &mut progress,
    )
    .map_err(upstream("handshake"))?;
    if let Some(format) = hs
        .capabilities
        .capability("object-format")
        .and_then(|c| c.value())
        && format != "sha1"
    {
        return Err(SyncError::Sha256);
    }
    let agent = ("agent", Some(crate::protocol::upload_pack::agent()));
    let list = match hs.refs {
        Some(refs) => refs,
        None => {
            let mut prefixes = gix_protocol::ls_refs::RefPrefixes::new();
            prefixes.extend(["HEAD".into(), "refs/heads/".into(), "refs/tags/".into()]);
            gix_protocol::LsRefsCommand::new(Some(prefixes), &hs.capabilities, agent.clone())
                .invoke_blocking(&mut transport, &mut progress, false)
                .map_err(upstream("ls-refs"))?
        }
    };
    let remote = collect(list);
    let view = repo.view();
    let local = view.refs(Namespace::Default);

    let wants: BTreeSet<ObjectId> = remote
        .refs
        .values()
        .filter(|id| !view.packs.contains(id))
        .copied()
        .collect();
    let mut quarantine = None;
    let mut objects = 0;
    if !wants.is_empty() {
        let version = hs.server_protocol_version;
        let mut features = gix_protocol::Command::Fetch.default_features(version, &hs.capabilities);
        features.push(agent);
        let mut args = gix_protocol::fetch::Arguments::new(version, features, false);
        for w in &wants {
            args.want(w);
        }
        let haves: BTreeSet<ObjectId> = local.values().filter_map(RefValue::id).collect();
        for h in &haves {
            args.have(h);
        }
        let mut reader = args
            .send(&mut transport, true)
            .map_err(|e| SyncError::Upstream {
                step: "fetch",
                source: gix_error::Error::from_error(e),
            })?;
        let response = gix_protocol::fetch::Response::from_line_reader(
            version,
            &mut reader,
            true,
            !haves.is_empty(),
        )
        .map_err(upstream("fetch response"))?;
        if response.has_pack() {
            reader.set_progress_handler(Some(Box::new(|_is_err, _msg| {
                std::ops::ControlFlow::Continue(())
            })));
            let started = std::time::Instant::now();
            status.set_phase(Phase::Receiving);
            let exceeded = AtomicBool::new(false);
            let mut capped = std::io::BufReader::with_capacity(
                64 << 10,
                Capped {
                    inner: &mut reader,
                    remaining: opts.max_fetch_bytes,
                    exceeded: &exceeded,
                    progress: status,
                    total: (0, 0),
                },
            );
            let ingest = IngestOptions {
                objects_indexed: Some(status.indexed.clone()),
                ..Default::default()
            };
            let received = repo.receive_pack(&mut capped, ingest, interrupt);
            if exceeded.load(Ordering::SeqCst) {
                // The quarantine (if any) is dropped, and with it the partial pack.
                return Err(SyncError::TooLarge {
                    limit: opts.max_fetch_bytes,
                });
            }
            if let Some(mut q) = received? {
                status.set_phase(Phase::Verifying);
                let received = started.elapsed();
                let tips: Vec<ObjectId> = remote.refs.values().copied().collect();
                q.verify(view.packs.clone(), Namespace::Default, &tips)?;
                tracing::info!(
                    objects = q.pack().num_objects(),
                    receive_ms = received.as_millis() as u64,
                    verify_ms = (started.elapsed() - received).as_millis() as u64,
                    "pack received and verified"
                );
                objects = q.pack().num_objects();
                quarantine = Some(q);
            }
        }
    }

    // Public-mode GitHub mirrors keep their local pushes: see `public`.
    if repo
        .record()
        .upstream
        .as_ref()
        .is_some_and(crate::upstream::github::is_public)
    {
        let head = remote.head.as_deref();
        return super::public::apply(repo, &view, &remote.refs, head, quarantine, objects);
    }

    // Updates: every followed ref that differs; deletions of followed refs gone upstream.
    let mut updates = Vec::new();
    for (name, id) in &remote.refs {
        let current = local.get(name);
        if current == Some(&RefValue::Direct(*id)) {
            continue;
        }
        updates.push(RefUpdate {
            name: name.clone(),
            expect: current.cloned().map_or(Expect::Absent, Expect::Value),
            new: Some(RefValue::Direct(*id)),
        });
    }
    let mut deleted = 0;
    for (name, value) in local.iter() {
        if followed(name) && !remote.refs.contains_key(name) {
            deleted += 1;
            updates.push(RefUpdate {
                name: name.clone(),
                expect: Expect::Value(value.clone()),
                new: None,
            });
        }
    }
    if let Some(head) = &remote.head {
        let want = RefValue::Symbolic(head.clone());
        let current = local.get("HEAD");
        if current != Some(&want) {
            updates.push(RefUpdate {
                name: "HEAD".into(),
                expect: current.cloned().map_or(Expect::Absent, Expect::Value),
                new: Some(want),
            });
        }
    }
    if updates.is_empty() {
        return Ok(Fetched {
            objects,
            ..Default::default()
        });
    }
    let n = updates.len();
    codestorage_store::fault::point("sync-objects-landed");
    let started = std::time::Instant::now();
    status.set_phase(Phase::Committing);
    let outcome = repo.commit(Transaction {
        ns: Namespace::Default,
        updates,
        who: "sync".into(),
        atomic: false,
        quarantine,
    })?;
    tracing::info!(
        commit_ms = started.elapsed().as_millis() as u64,
        "refs committed"
    );
    let failed = outcome.results.iter().filter(|r| r.is_err()).count();
    for r in outcome.results.iter().filter_map(|r| r.as_ref().err()) {
        tracing::debug!(error = %r, "sync ref update not applied");
    }
    Ok(Fetched {
        updated: n - deleted - failed.min(n - deleted),
        deleted,
        objects,
        retry: failed > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_bytes_and_reads_the_object_count_from_a_split_header() {
        let p = Progress::default();
        assert_eq!(p.view().phase, Phase::Negotiating);
        assert_eq!(p.view().objects_total, None);
        p.set_phase(Phase::Receiving);
        p.received(b"PACK\0\0");
        assert_eq!(p.view().objects_total, None, "header incomplete");
        p.received(b"\0\x02\0\0\x01\x2cpayload");
        let v = p.view();
        assert_eq!(v.phase, Phase::Receiving);
        assert_eq!(v.objects_total, Some(300));
        assert_eq!(v.bytes_received, 19);
        p.received(b"more");
        assert_eq!(p.view().bytes_received, 23);
    }

    #[test]
    fn the_capped_reader_counts_into_progress_and_refuses_past_the_limit() {
        let data = [7u8; 100];
        let exceeded = AtomicBool::new(false);
        let progress = Progress::default();
        let mut r = Capped {
            inner: &data[..],
            remaining: 60,
            exceeded: &exceeded,
            progress: &progress,
            total: (0, 0),
        };
        let mut buf = Vec::new();
        assert!(r.read_to_end(&mut buf).is_err());
        assert!(exceeded.load(Ordering::SeqCst));
        assert_eq!(progress.view().bytes_received, 60);
    }
}
