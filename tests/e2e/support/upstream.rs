//! `Upstream`: a real git server for codestorage to mirror from, on `127.0.0.1:0`.
//!
//! Each HTTP request runs `git http-backend` as a CGI child (`tokio::process`) behind a hyper 1
//! HTTP/1.1 server; the request body streams into the child's stdin and its stdout (after the CGI
//! header block, `Status:` becoming the status code) streams back as the response body. The
//! environment follows `shared/notes/deps.md` §7: cleared, then `GIT_PROJECT_ROOT`,
//! `GIT_HTTP_EXPORT_ALL`, the request variables, `HTTP_GIT_PROTOCOL` (without it git answers v0)
//! and `HTTP_CONTENT_ENCODING` (git gzips large bodies).
//!
//! The server owns its own tokio runtime, so tests stay plain `#[test]` functions that run
//! blocking `git` commands. Dropping the `Upstream` stops the runtime, kills running CGI children
//! and removes the repos.
//!
//! Fault knobs, settable at any time from the test thread:
//! - [`Upstream::set_delay_per_chunk`]: the response body goes out in 1 KiB pieces, each after this
//!   delay (makes a sync take a while);
//! - [`Upstream::set_fail`]: answer every request with this status, without running git;
//! - [`Upstream::requests`] / [`Upstream::request_log`]: what reached the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::git::hermetic_env;
use super::{COMMAND_TIMEOUT, run_command, scratch_dir, tail};

/// Size of the pieces a delayed body is cut into.
const SLOW_CHUNK: usize = 1024;
/// A CGI header block larger than this is a bug in the bridge or the backend.
const MAX_CGI_HEADER: usize = 64 * 1024;

pub struct Upstream {
    /// Holds `repos/` (GIT_PROJECT_ROOT) and `home/` (HOME for the CGI and setup commands).
    dir: tempfile::TempDir,
    addr: SocketAddr,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct State {
    repos: PathBuf,
    home: PathBuf,
    backend: PathBuf,
    delay_per_chunk_ms: AtomicU64,
    /// 0: answer normally; else the status every request gets.
    fail: AtomicU16,
    requests: AtomicUsize,
    log: Mutex<Vec<String>>,
    /// What the CGI children printed on stderr (for failure messages).
    cgi_stderr: Mutex<String>,
}

impl Upstream {
    /// Starts an upstream with no repos on `127.0.0.1:<free port>`.
    pub fn start() -> Upstream {
        let dir = scratch_dir("upstream");
        let repos = dir.path().join("repos");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&repos).expect("create upstream repo root");
        std::fs::create_dir_all(&home).expect("create upstream HOME");
        let state = Arc::new(State {
            repos,
            home,
            backend: http_backend().to_owned(),
            delay_per_chunk_ms: AtomicU64::new(0),
            fail: AtomicU16::new(0),
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            cgi_stderr: Mutex::new(String::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("upstream")
            .enable_all()
            .build()
            .expect("build the upstream's tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("upstream local addr");
        runtime.spawn(accept_loop(listener, state.clone()));
        Upstream {
            dir,
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The clone URL of repo `name`: `http://127.0.0.1:<port>/<name>.git`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }

    /// Where the bare repo `name` lives (whether or not it exists).
    pub fn path(&self, name: &str) -> PathBuf {
        self.state.repos.join(format!("{name}.git"))
    }

    /// Creates the bare repo `name` (which may contain `/`), on branch `main`, pushable over HTTP.
    /// Configured as a forge would be (and as codestorage serves): `uploadpack.allowFilter` and
    /// `uploadpack.allowReachableSHA1InWant` on, so partial clones can fetch lazily over v0 too.
    /// Returns its path.
    #[track_caller]
    pub fn create_bare(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let p = path.to_str().expect("utf-8 path");
        self.git(
            &self.state.repos,
            &["init", "-q", "--bare", "--initial-branch=main", p],
        );
        self.git(&path, &["config", "http.receivepack", "true"]);
        self.git(&path, &["config", "uploadpack.allowFilter", "true"]);
        self.git(
            &path,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        path
    }

    /// Deletes the bare repo `name`.
    pub fn remove_bare(&self, name: &str) {
        std::fs::remove_dir_all(self.path(name))
            .unwrap_or_else(|e| panic!("remove upstream repo {name}: {e}"));
    }

    /// Response bodies go out in 1 KiB pieces, each `delay` after the last; zero turns it off.
    /// Takes effect for the next piece of every response, including those under way.
    pub fn set_delay_per_chunk(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_per_chunk_ms.store(ms, Ordering::SeqCst);
    }

    /// `Some(status)`: every request is answered with `status` and a short text body, without
    /// running git. `None`: back to normal.
    pub fn set_fail(&self, status: Option<u16>) {
        if let Some(s) = status {
            assert!((100..=599).contains(&s), "not an HTTP status: {s}");
        }
        self.state.fail.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// How many requests have reached the upstream so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn request_log(&self) -> Vec<String> {
        self.state.log.lock().expect("request log lock").clone()
    }

    /// What the `git http-backend` children printed on stderr so far.
    pub fn cgi_stderr(&self) -> String {
        self.state.cgi_stderr.lock().expect("stderr lock").clone()
    }

    /// Runs a setup `git` command with the upstream's own hermetic environment.
    #[track_caller]
    fn git(&self, dir: &Path, args: &[&str]) {
        let mut cmd = Command::new("git");
        hermetic_env(&mut cmd, &self.state.home);
        cmd.args(args).current_dir(dir);
        let out = run_command(&mut cmd, COMMAND_TIMEOUT);
        assert!(out.success(), "upstream setup failed\n{}", out.describe());
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if std::thread::panicking() {
            let stderr = self.cgi_stderr();
            if !stderr.trim().is_empty() {
                eprintln!(
                    "--- upstream git http-backend stderr ---\n{}",
                    tail(&stderr, 8000)
                );
            }
            let log = self.request_log();
            eprintln!(
                "--- upstream requests ({}) ---\n{}",
                log.len(),
                tail(&log.join("\n"), 4000)
            );
        }
    }
}

/// `$(git --exec-path)/git-http-backend`, looked up once.
fn http_backend() -> &'static Path {
    static BACKEND: OnceLock<PathBuf> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let out = Command::new("git")
            .arg("--exec-path")
            .stderr(Stdio::inherit())
            .output()
            .expect("run `git --exec-path` (is git installed?)");
        assert!(out.status.success(), "`git --exec-path` failed");
        let dir = String::from_utf8(out.stdout).expect("utf-8 exec path");
        let backend = Path::new(dir.trim()).join("git-http-backend");
        assert!(backend.exists(), "{} does not exist", backend.display());
        backend
    })
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req, peer));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ChannelBody>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    state
        .log
        .lock()
        .expect("request log lock")
        .push(format!("{} {}", req.method(), req.uri()));
    let fail = state.fail.load(Ordering::SeqCst);
    if fail != 0 {
        return Ok(text_response(
            fail,
            "upstream failure injected by the test\n",
        ));
    }
    match run_cgi(&state, req, peer).await {
        Ok(resp) => Ok(resp),
        Err(e) => Ok(text_response(502, &format!("CGI bridge error: {e}\n"))),
    }
}

/// Runs `git http-backend` for one request and streams its answer back.
async fn run_cgi(
    state: &Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> std::io::Result<Response<ChannelBody>> {
    let (parts, body) = req.into_parts();
    let mut cmd = tokio::process::Command::new(&state.backend);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", &state.home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("LC_ALL", "C")
        .env("GIT_PROJECT_ROOT", &state.repos)
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
    let log_state = state.clone();
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        if !text.is_empty() {
            log_state
                .cgi_stderr
                .lock()
                .expect("stderr lock")
                .push_str(&text);
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
    tokio::spawn(pump_body(stdout, rest, tx, state.clone(), child));
    response
        .body(ChannelBody { rx })
        .map_err(|e| std::io::Error::other(format!("bad CGI response: {e}")))
}

/// Sends `first` and then the rest of `stdout` into `tx`, honouring the delay knob; waits for the
/// child at the end. Returns early (killing the child on drop) if the client went away.
async fn pump_body(
    mut stdout: impl AsyncRead + Unpin,
    first: Vec<u8>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    state: Arc<State>,
    mut child: tokio::process::Child,
) {
    let mut pending = Bytes::from(first);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while !pending.is_empty() {
            let delay = Duration::from_millis(state.delay_per_chunk_ms.load(Ordering::SeqCst));
            let piece = if delay.is_zero() {
                pending.split_to(pending.len())
            } else {
                tokio::time::sleep(delay).await;
                pending.split_to(SLOW_CHUNK.min(pending.len()))
            };
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

fn text_response(status: u16, text: &str) -> Response<ChannelBody> {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(Bytes::copy_from_slice(text.as_bytes())));
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(ChannelBody { rx })
        .expect("static response parts are valid")
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
