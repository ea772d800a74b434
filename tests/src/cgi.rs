//! `git http-backend` as CGI behind a small hyper 1 HTTP/1.1 server: a real git smart-HTTP
//! server for loopback use (the e2e upstream, and the benchmark's upstream and baseline).
//!
//! Each HTTP request runs `git http-backend` as a child process (`tokio::process`); the request
//! body streams into the child's stdin and its stdout (after the CGI header block, `Status:`
//! becoming the status code) streams back as the response body. The environment follows
//! `shared/notes/deps.md` §7: cleared, then `GIT_PROJECT_ROOT`, `GIT_HTTP_EXPORT_ALL`, the request
//! variables, `HTTP_GIT_PROTOCOL` (without it git answers v0) and `HTTP_CONTENT_ENCODING` (git
//! gzips large bodies).
//!
//! A [`Bridge`] holds the configuration and the shared state; [`serve`] runs the accept loop on a
//! listener, on whatever tokio runtime the caller owns.
//!
//! Knobs, settable at any time: [`Bridge::set_delay_per_chunk`] (the response body goes out in
//! 1 KiB pieces, each after this delay), [`Bridge::set_fail`] (answer every request with this
//! status, without running git), [`Bridge::set_retry_after`] (a `Retry-After` header on those
//! answers) and [`Bridge::require_basic_auth`] (answer 401 unless the request carries this HTTP
//! Basic user and password, as a forge does for a private repository; or, with
//! [`Bridge::require_basic_auth_check`], unless its credentials pass a check of the caller's). [`Bridge::requests`] /
//! [`Bridge::request_log`] / [`Bridge::auth_log`] say what arrived; [`Bridge::max_in_flight`] how
//! many requests were served at once at most.
//!
//! Network faults: [`Bridge::set_cut_after`] (pack bodies stop after so many bytes and the
//! connection is reset), [`Bridge::set_garbage`] (every answer is 200 with a body that is not git
//! protocol) and [`Bridge::set_vanished`] (connections are closed unanswered as they arrive).
//!
//! [`serve`] speaks plain HTTP; [`serve_tls`] the same over TLS (a forge with its own CA).
//!
//! Resource accounting ([`Config::stats`]): while a request's child runs, its process tree
//! (`http-backend` → `upload-pack` → `pack-objects`) is sampled every [`SAMPLE_INTERVAL`] for
//! `VmHWM` (peak RSS, file-backed pages such as a mapped pack included) and `RssAnon` (anonymous
//! memory: heap and stacks, the part a mapped file does not explain); CPU time comes from `cutime`/`cstime` of this process, which the kernel accumulates
//! as children are reaped. `GET /__stats` answers both as JSON (see [`Stats`]), after waiting for
//! the children of finished requests to be reaped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::procfs;

/// Size of the pieces a delayed body is cut into.
const SLOW_CHUNK: usize = 1024;
/// A CGI header block larger than this is a bug in the bridge or the backend.
const MAX_CGI_HEADER: usize = 64 * 1024;
/// How often the process tree of a running CGI request is sampled for its peak RSS. The peak a
/// process reaches in its last interval before exiting is missed; a few ms is small next to a
/// clone.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(5);
/// How long `GET /__stats` waits for running CGI requests to finish before answering anyway.
const STATS_WAIT: Duration = Duration::from_secs(10);

/// What a [`Bridge`] serves, and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// `GIT_PROJECT_ROOT`: the directory of bare repos (`<root>/<name>.git` is
    /// `http://HOST/<name>.git`).
    pub project_root: PathBuf,
    /// `HOME` of the CGI children (git reads `$HOME/.gitconfig`; the system config is off).
    pub home: PathBuf,
    /// The `git-http-backend` executable ([`find_http_backend`]).
    pub backend: PathBuf,
    /// Track CPU time and peak RSS of the CGI children and answer `GET /__stats`.
    pub stats: bool,
    /// Copy what the CGI children print on stderr to this process's stderr, as it arrives (it is
    /// always kept for [`Bridge::cgi_stderr`] too).
    pub echo_stderr: bool,
}

/// Decides whether HTTP Basic credentials `(user, password)` are accepted.
pub type BasicAuthCheck = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A [`BasicAuthCheck`] accepting the `user:password` lines of `file`, read at every request
/// (so the file can be rewritten while the server runs); a missing file accepts nothing.
pub fn basic_auth_file(file: PathBuf) -> BasicAuthCheck {
    Arc::new(move |user, password| {
        std::fs::read_to_string(&file).is_ok_and(|text| {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .any(|(u, p)| u == user && p == password)
        })
    })
}

/// The state shared by every request of one server.
pub struct Bridge {
    config: Config,
    delay_per_chunk_ms: AtomicU64,
    /// 0: answer normally; else the status every request gets.
    fail: AtomicU16,
    requests: AtomicUsize,
    log: Mutex<Vec<String>>,
    /// `Retry-After` value sent with injected failures.
    retry_after: Mutex<Option<String>>,
    /// When set, requests whose Basic credentials fail it get 401.
    basic_auth: Mutex<Option<BasicAuthCheck>>,
    /// Each presented Basic credential as `user:password`, with `ok`/`refused`.
    auth_log: Mutex<Vec<String>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    /// What the CGI children printed on stderr (for failure messages).
    cgi_stderr: Mutex<String>,
    usage: Usage,
    /// 0: whole bodies; else pack responses (`git-upload-pack` POSTs) are cut off after this
    /// many body bytes, the connection reset.
    cut_after: AtomicU64,
    /// Every request is answered 200 with bytes that are not git protocol.
    garbage: AtomicBool,
    /// Every connection is closed as soon as it is accepted, without an answer.
    vanished: AtomicBool,
}

/// Resource accounting of the CGI children (only with [`Config::stats`]).
#[derive(Default)]
struct Usage {
    /// Requests whose child is running or whose peak has not been recorded yet.
    active: AtomicUsize,
    /// CGI requests whose accounting is complete.
    finished: AtomicU64,
    /// Peaks since the last `GET /__stats?reset=1`.
    window: Mutex<Peaks>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Peaks {
    /// Largest sum, over one request, of the peak RSS of each process of its tree.
    tree_kb: u64,
    /// The same for the sampled anonymous RSS.
    anon_kb: u64,
    /// Largest peak RSS of any single process (what `getrusage(RUSAGE_CHILDREN)` reports).
    process_kb: u64,
}

/// The answer of `GET /__stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// HTTP requests served (including failed ones, excluding `/__stats`).
    pub requests: u64,
    /// CGI requests whose children have finished and been accounted.
    pub cgi_finished: u64,
    /// CGI requests still running when the answer was made (0 unless the wait timed out).
    pub active: u64,
    /// User CPU time of the reaped CGI children and their descendants, in ms, since start.
    pub children_user_ms: u64,
    /// System CPU time of the same, in ms, since start.
    pub children_sys_ms: u64,
    /// CPU time of this server process itself (the HTTP bridge), in ms, since start.
    pub bridge_cpu_ms: u64,
    /// Since the last reset: the largest peak RSS of one request's process tree (sum of the peaks
    /// of `http-backend`, `upload-pack`, `pack-objects`, ...), in KiB.
    pub peak_rss_kb: u64,
    /// Since the last reset: the largest peak RSS of a single CGI process, in KiB.
    pub peak_process_rss_kb: u64,
    /// Since the last reset: like `peak_rss_kb`, for the anonymous RSS (`RssAnon`, sampled).
    pub peak_anon_kb: u64,
}

impl Stats {
    /// The JSON object `GET /__stats` answers.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "cgi_finished": self.cgi_finished,
            "active": self.active,
            "children_user_ms": self.children_user_ms,
            "children_sys_ms": self.children_sys_ms,
            "children_cpu_ms": self.children_user_ms + self.children_sys_ms,
            "bridge_cpu_ms": self.bridge_cpu_ms,
            "peak_rss_kb": self.peak_rss_kb,
            "peak_process_rss_kb": self.peak_process_rss_kb,
            "peak_anon_kb": self.peak_anon_kb,
        })
    }
}

/// `$(git --exec-path)/git-http-backend`.
pub fn find_http_backend() -> std::io::Result<PathBuf> {
    let out = Command::new("git")
        .arg("--exec-path")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| std::io::Error::other(format!("run `git --exec-path`: {e}")))?;
    if !out.status.success() {
        return Err(std::io::Error::other("`git --exec-path` failed"));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let backend = PathBuf::from(dir).join("git-http-backend");
    if !backend.exists() {
        return Err(std::io::Error::other(format!(
            "{} does not exist",
            backend.display()
        )));
    }
    Ok(backend)
}

impl Bridge {
    pub fn new(config: Config) -> Arc<Bridge> {
        Arc::new(Bridge {
            config,
            delay_per_chunk_ms: AtomicU64::new(0),
            fail: AtomicU16::new(0),
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            retry_after: Mutex::new(None),
            basic_auth: Mutex::new(None),
            auth_log: Mutex::new(Vec::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: Arc::new(AtomicUsize::new(0)),
            cgi_stderr: Mutex::new(String::new()),
            usage: Usage::default(),
            cut_after: AtomicU64::new(0),
            garbage: AtomicBool::new(false),
            vanished: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Response bodies go out in 1 KiB pieces, each `delay` after the last; zero turns it off.
    /// Takes effect for the next piece of every response, including those under way.
    pub fn set_delay_per_chunk(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_per_chunk_ms.store(ms, Ordering::SeqCst);
    }

    /// `Some(status)`: every request is answered with `status` and a short text body, without
    /// running git. `None`: back to normal. Panics on a number that is not an HTTP status.
    pub fn set_fail(&self, status: Option<u16>) {
        if let Some(s) = status {
            assert!((100..=599).contains(&s), "not an HTTP status: {s}");
        }
        self.fail.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// `Some(n)`: the body of every `git-upload-pack` POST (the pack) stops after `n` bytes and
    /// the connection is reset, as when a network drops mid-pack. `None`: whole bodies.
    pub fn set_cut_after(&self, bytes: Option<u64>) {
        self.cut_after
            .store(bytes.map_or(0, |n| n.max(1)), Ordering::SeqCst);
    }

    /// `true`: every request is answered `200` with a body that is not git protocol (a
    /// misconfigured proxy or a captive portal in front of the forge).
    pub fn set_garbage(&self, on: bool) {
        self.garbage.store(on, Ordering::SeqCst);
    }

    /// `true`: the server vanishes: every connection is closed as soon as it is accepted,
    /// before any answer. `false`: back.
    pub fn set_vanished(&self, on: bool) {
        self.vanished.store(on, Ordering::SeqCst);
    }

    /// `Some(check)`: every request must carry HTTP Basic credentials that pass `check`, else it
    /// is answered 401 with a `WWW-Authenticate: Basic` challenge (without running git).
    /// `None`: no authentication (the default).
    pub fn require_basic_auth_check(&self, check: Option<BasicAuthCheck>) {
        *self.basic_auth.lock().expect("lock is never poisoned") = check;
    }

    /// `Some(value)`: answers made by [`Bridge::set_fail`] carry `Retry-After: value`.
    pub fn set_retry_after(&self, value: Option<&str>) {
        *self.retry_after.lock().expect("lock is never poisoned") = value.map(str::to_owned);
    }

    /// `Some((user, password))`: every request must carry this HTTP Basic credential, else it
    /// gets `401` with `WWW-Authenticate: Basic`. `None`: anonymous access.
    pub fn require_basic_auth(&self, credential: Option<(&str, &str)>) {
        let check = credential.map(|(u, p)| {
            let (user, password) = (u.to_owned(), p.to_owned());
            Arc::new(move |u: &str, p: &str| u == user && p == password) as BasicAuthCheck
        });
        self.require_basic_auth_check(check);
    }

    /// Every Basic credential presented so far, as `user:password ok` or `user:password refused`.
    pub fn auth_log(&self) -> Vec<String> {
        self.auth_log
            .lock()
            .expect("lock is never poisoned")
            .clone()
    }

    /// The most requests that were being served at the same time so far.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// How many requests have arrived so far (not counting `/__stats`).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn request_log(&self) -> Vec<String> {
        self.log
            .lock()
            .expect("request log lock is never poisoned")
            .clone()
    }

    /// What the `git http-backend` children printed on stderr so far.
    pub fn cgi_stderr(&self) -> String {
        self.cgi_stderr
            .lock()
            .expect("stderr lock is never poisoned")
            .clone()
    }

    /// The current accounting (see [`Stats`]); `reset` starts a new peak window afterwards.
    pub fn stats(&self, reset: bool) -> Stats {
        let cpu = procfs::cpu_ticks("self").unwrap_or_default();
        let ms = |ticks: u64| ticks * 1000 / procfs::ticks_per_sec();
        let mut window = self
            .usage
            .window
            .lock()
            .expect("usage lock is never poisoned");
        let stats = Stats {
            requests: self.requests() as u64,
            cgi_finished: self.usage.finished.load(Ordering::SeqCst),
            active: self.usage.active.load(Ordering::SeqCst) as u64,
            children_user_ms: ms(cpu.cutime),
            children_sys_ms: ms(cpu.cstime),
            bridge_cpu_ms: cpu.own_ms(),
            peak_rss_kb: window.tree_kb,
            peak_process_rss_kb: window.process_kb,
            peak_anon_kb: window.anon_kb,
        };
        if reset {
            *window = Peaks::default();
        }
        stats
    }

    /// Waits (up to `timeout`) until no CGI request is running or waiting to be accounted.
    async fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.usage.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn push_stderr(&self, text: &str) {
        if self.config.echo_stderr {
            eprint!("{text}");
        }
        self.cgi_stderr
            .lock()
            .expect("stderr lock is never poisoned")
            .push_str(text);
    }
}

/// Accepts connections on `listener` forever, serving each over TLS with `acceptor`.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    bridge: Arc<Bridge>,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if bridge.vanished.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let (bridge, acceptor) = (bridge.clone(), acceptor.clone());
        tokio::spawn(async move {
            // A client that does not trust our CA ends here.
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |req| serve_request(bridge.clone(), req, peer));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Accepts connections on `listener` forever, serving each with `bridge`.
pub async fn serve(listener: tokio::net::TcpListener, bridge: Arc<Bridge>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if bridge.vanished.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let bridge = bridge.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| serve_request(bridge.clone(), req, peer));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// [`handle`], unless the server has vanished: then the connection (even a kept-alive one)
/// closes without an answer.
async fn serve_request(
    bridge: Arc<Bridge>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ChannelBody>, std::io::Error> {
    if bridge.vanished.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("the upstream vanished"));
    }
    match handle(bridge, req, peer).await {
        Ok(resp) => Ok(resp),
        Err(never) => match never {},
    }
}

async fn handle(
    bridge: Arc<Bridge>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ChannelBody>, Infallible> {
    if bridge.config.stats && req.uri().path() == "/__stats" {
        let reset = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "reset=1"));
        bridge.wait_idle(STATS_WAIT).await;
        let json = bridge.stats(reset).to_json().to_string();
        return Ok(body_response(200, "application/json", json + "\n"));
    }
    bridge.requests.fetch_add(1, Ordering::SeqCst);
    bridge
        .log
        .lock()
        .expect("request log lock is never poisoned")
        .push(format!("{} {}", req.method(), req.uri()));
    let in_flight = InFlight::enter(&bridge);
    let fail = bridge.fail.load(Ordering::SeqCst);
    if fail != 0 {
        let mut resp = body_response(
            fail,
            "text/plain",
            "upstream failure injected by the test\n".to_owned(),
        );
        let retry_after = bridge
            .retry_after
            .lock()
            .expect("lock is never poisoned")
            .clone();
        if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            resp.headers_mut().insert("retry-after", v);
        }
        return Ok(resp);
    }
    if bridge.garbage.load(Ordering::SeqCst) {
        let content_type = if req.uri().path().ends_with("/git-upload-pack") {
            "application/x-git-upload-pack-result"
        } else {
            "application/x-git-upload-pack-advertisement"
        };
        return Ok(body_response(
            200,
            content_type,
            "<html><body>Please log in to the captive portal</body></html>\n".to_owned(),
        ));
    }
    if !authorized(&bridge, &req) {
        let mut resp = body_response(401, "text/plain", "authentication required\n".to_owned());
        resp.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"upstream\""),
        );
        return Ok(resp);
    }
    match run_cgi(&bridge, req, peer, in_flight).await {
        Ok(resp) => Ok(resp),
        Err(e) => Ok(body_response(
            502,
            "text/plain",
            format!("CGI bridge error: {e}\n"),
        )),
    }
}

/// Whether `req` satisfies the Basic credential the bridge requires (if any); logs what it
/// presented.
fn authorized(bridge: &Bridge, req: &Request<Incoming>) -> bool {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let required = bridge
        .basic_auth
        .lock()
        .expect("lock is never poisoned")
        .clone();
    let ok = match (&required, &presented) {
        (None, _) => true,
        (Some(check), Some(given)) => given.split_once(':').is_some_and(|(u, p)| check(u, p)),
        (Some(_), None) => false,
    };
    if let Some(given) = presented {
        bridge
            .auth_log
            .lock()
            .expect("lock is never poisoned")
            .push(format!("{given} {}", if ok { "ok" } else { "refused" }));
    }
    ok
}

/// A request being served: counted while alive, for [`Bridge::max_in_flight`].
struct InFlight {
    count: Arc<AtomicUsize>,
}

impl InFlight {
    fn enter(bridge: &Bridge) -> InFlight {
        let now = bridge.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        bridge.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight {
            count: bridge.in_flight.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accounting of one CGI request: dropping it (after the child was reaped, or when the request is
/// abandoned) tells the sampler to record the peak and finish.
struct Tracking {
    done: Arc<AtomicBool>,
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Samples the process tree under `pid` until `done`, then records its peaks.
async fn sample_peaks(bridge: Arc<Bridge>, pid: u32, done: Arc<AtomicBool>) {
    // Per process: (peak RSS, peak anonymous RSS).
    let mut peaks: HashMap<u32, (u64, u64)> = HashMap::new();
    loop {
        let finished = done.load(Ordering::SeqCst);
        for p in procfs::process_tree(pid) {
            if let Some([hwm, anon]) = procfs::status_kbs(&p.to_string(), ["VmHWM", "RssAnon"]) {
                let peak = peaks.entry(p).or_default();
                *peak = (peak.0.max(hwm), peak.1.max(anon));
            }
        }
        if finished {
            break;
        }
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    {
        let mut window = bridge
            .usage
            .window
            .lock()
            .expect("usage lock is never poisoned");
        window.tree_kb = window.tree_kb.max(peaks.values().map(|p| p.0).sum());
        window.anon_kb = window.anon_kb.max(peaks.values().map(|p| p.1).sum());
        window.process_kb = window
            .process_kb
            .max(peaks.values().map(|p| p.0).max().unwrap_or(0));
    }
    bridge.usage.finished.fetch_add(1, Ordering::SeqCst);
    bridge.usage.active.fetch_sub(1, Ordering::SeqCst);
}

/// Runs `git http-backend` for one request and streams its answer back.
async fn run_cgi(
    bridge: &Arc<Bridge>,
    req: Request<Incoming>,
    peer: SocketAddr,
    in_flight: InFlight,
) -> std::io::Result<Response<ChannelBody>> {
    let (parts, body) = req.into_parts();
    let config = &bridge.config;
    let cut_after = match bridge.cut_after.load(Ordering::SeqCst) {
        n if n > 0
            && parts.method == http::Method::POST
            && parts.uri.path().ends_with("/git-upload-pack") =>
        {
            Some(n)
        }
        _ => None,
    };
    let mut cmd = tokio::process::Command::new(&config.backend);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", &config.home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("LC_ALL", "C")
        .env("GIT_PROJECT_ROOT", &config.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_ADDR", peer.ip().to_string());
    let headers = [
        ("content-type", "CONTENT_TYPE"),
        ("content-length", "CONTENT_LENGTH"),
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
    ];
    for (header, var) in headers {
        if let Some(v) = parts.headers.get(header).and_then(|v| v.to_str().ok()) {
            cmd.env(var, v);
        }
    }
    if parts.headers.contains_key("authorization") {
        // Only used by http-backend to allow receive-pack and for reflog idents.
        cmd.env("REMOTE_USER", "upstream-user");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let tracking = match (config.stats, child.id()) {
        (true, Some(pid)) => {
            let done = Arc::new(AtomicBool::new(false));
            bridge.usage.active.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(sample_peaks(bridge.clone(), pid, done.clone()));
            Some(Tracking { done })
        }
        _ => None,
    };
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let mut stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr = child.stderr.take().expect("stderr was piped");

    // Request body -> stdin, concurrently with reading stdout (a big push would deadlock otherwise).
    tokio::spawn(async move {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data()
                && stdin.write_all(&data).await.is_err()
            {
                break;
            }
        }
        // Dropping stdin closes it: http-backend reads a chunked body until EOF.
    });
    let log_bridge = bridge.clone();
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        if !text.is_empty() {
            log_bridge.push_stderr(&text);
        }
    });

    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (header_len, sep_len) = loop {
        if let Some(end) = header_end(&buf) {
            break end;
        }
        if buf.len() > MAX_CGI_HEADER {
            return Err(std::io::Error::other("CGI header block too large"));
        }
        let n = stdout.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "git http-backend exited before its headers; output: {:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut response = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&buf[..header_len]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad CGI Status: {value}")))?;
            response = response.status(code);
        } else if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response = response.header(n, v);
        }
    }
    let rest = buf.split_off(header_len + sep_len);
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(pump_body(
        stdout,
        rest,
        tx,
        (bridge.clone(), cut_after),
        child,
        (tracking, in_flight),
    ));
    response
        .body(ChannelBody { rx })
        .map_err(|e| std::io::Error::other(format!("bad CGI response: {e}")))
}

/// Sends `first` and then the rest of `stdout` into `tx`, honouring the delay and cut knobs; waits for the
/// child at the end (then drops `tracking`). Returns early (killing the child on drop) if the
/// client went away.
async fn pump_body(
    mut stdout: impl AsyncRead + Unpin,
    first: Vec<u8>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    (bridge, mut cut_after): (Arc<Bridge>, Option<u64>),
    mut child: tokio::process::Child,
    tracking: (Option<Tracking>, InFlight),
) {
    let mut pending = Bytes::from(first);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while !pending.is_empty() {
            let delay = Duration::from_millis(bridge.delay_per_chunk_ms.load(Ordering::SeqCst));
            let mut piece = if delay.is_zero() {
                pending.split_to(pending.len())
            } else {
                tokio::time::sleep(delay).await;
                pending.split_to(SLOW_CHUNK.min(pending.len()))
            };
            if let Some(left) = cut_after.as_mut() {
                if (piece.len() as u64) >= *left {
                    // The network drops mid-pack: what fits goes out, then the body fails,
                    // which makes hyper reset the connection (the chunked body never ends).
                    piece.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                    if !piece.is_empty() {
                        let _ = tx.send(Ok(piece)).await;
                    }
                    let _ = tx
                        .send(Err(std::io::Error::other("connection cut by the test")))
                        .await;
                    return;
                }
                *left -= piece.len() as u64;
            }
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        }
        match stdout.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => pending = Bytes::copy_from_slice(&buf[..n]),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
    let _ = child.wait().await;
    drop(tracking);
}

/// Where the CGI header block ends: `(header bytes, separator bytes)`.
fn header_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn body_response(status: u16, content_type: &str, text: String) -> Response<ChannelBody> {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(Bytes::from(text)));
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(ChannelBody { rx })
        .expect("a status in 100..=599 and a static content type are valid")
}

/// A response body fed by a channel: each message is one data frame; the sender dropping ends it.
pub struct ChannelBody {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|m| m.map(|r| r.map(Frame::data)))
    }
}
