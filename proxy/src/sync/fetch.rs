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
use std::sync::atomic::{AtomicBool, Ordering};
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
            max_concurrent_syncs: 4,
        }
    }
}

/// A reader that fails once more than `limit` bytes were read, and says so in `exceeded`.
struct Capped<'a, R> {
    inner: R,
    remaining: u64,
    exceeded: &'a AtomicBool,
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
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
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
            let exceeded = AtomicBool::new(false);
            let mut capped = std::io::BufReader::with_capacity(
                64 << 10,
                Capped {
                    inner: &mut reader,
                    remaining: opts.max_fetch_bytes,
                    exceeded: &exceeded,
                },
            );
            let received = repo.receive_pack(&mut capped, IngestOptions::default(), interrupt);
            if exceeded.load(Ordering::SeqCst) {
                // The quarantine (if any) is dropped, and with it the partial pack.
                return Err(SyncError::TooLarge {
                    limit: opts.max_fetch_bytes,
                });
            }
            if let Some(mut q) = received? {
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
    let started = std::time::Instant::now();
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
