//! `Server`: the real `codestorage` binary under test, on a fresh data dir and a free port.
//!
//! The CLI contract the tests rely on (the server is written to match it):
//! - `codestorage --data-dir DIR serve --listen 127.0.0.1:0 --allow-http-upstream --sync-interval S`
//!   prints `listening on http://127.0.0.1:<port>` on stdout once it accepts connections;
//! - `codestorage --data-dir DIR fsck` exits 0 on a clean data dir;
//! - `codestorage --server URL repo create|list|show|sync ...` talk to a running server.
//!
//! The binary is `$CODESTORAGE_BIN`, else `codestorage` next to the test's `deps/` dir
//! (`target/<profile>/codestorage`): build it first with `cargo build --workspace`.
//!
//! Both output streams are drained by threads into buffers for the whole life of the process (the
//! pipes never fill), and shown when a test panics while the server is alive. Dropping a `Server`
//! kills it and removes its data dir.
//!
//! Sync assumptions (see `GET /api/repos/{name}` in the tests' brief): `sync.run_count` counts
//! finished runs, successful or not; a successful run clears `sync.last_error`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::git::hermetic_env;
use super::http::{self, HttpResponse, encode_component};
use super::{COMMAND_TIMEOUT, Out, SYNC_TIMEOUT, run_command, scratch_dir, tail, wait_until};

/// How long the server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Options for starting a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    binary: Option<PathBuf>,
    sync_interval_secs: u64,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dev_switch: bool,
}

impl ServerBuilder {
    /// Start without `--allow-http-upstream` (outbound connections: https to public hosts only).
    pub fn without_dev_switch(mut self) -> Self {
        self.dev_switch = false;
        self
    }

    /// `--sync-interval SECS` (default 3600, so background refresh stays out of the way).
    pub fn sync_interval(mut self, secs: u64) -> Self {
        self.sync_interval_secs = secs;
        self
    }

    /// Runs this executable instead of the located `codestorage` (the harness tests use a fake).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// One more argument after the `serve` arguments.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// One more environment variable for the server process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn start(self) -> Server {
        let root = scratch_dir("server");
        let data = root.path().join("data");
        let home = root.path().join("home");
        std::fs::create_dir_all(&data).expect("create server data dir");
        std::fs::create_dir_all(&home).expect("create server HOME");
        let mut server = Server {
            root,
            data,
            home,
            bin: self.binary.clone().unwrap_or_else(binary),
            opts: self,
            running: None,
            base: String::new(),
            stdout: Arc::new(Mutex::new(String::new())),
            stderr: Arc::new(Mutex::new(String::new())),
            token: std::sync::OnceLock::new(),
        };
        server.spawn();
        server
    }
}

pub struct Server {
    /// Holds `data/` (the data dir) and `home/` (HOME for the server and CLI runs).
    root: tempfile::TempDir,
    data: PathBuf,
    home: PathBuf,
    bin: PathBuf,
    opts: ServerBuilder,
    running: Option<Running>,
    base: String,
    /// Everything the server printed, across restarts.
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// An admin token minted from the data dir's key, on first use.
    token: std::sync::OnceLock<String>,
}

struct Running {
    child: Child,
    readers: Vec<JoinHandle<()>>,
}

/// A record's `sync` object, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncState {
    pub in_progress: bool,
    pub run_count: u64,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub last_run_at: Option<String>,
}

impl SyncState {
    /// Parses `record["sync"]`, panicking with the record if it does not have the agreed shape.
    #[track_caller]
    pub fn of(record: &Value) -> SyncState {
        let sync = record
            .get("sync")
            .unwrap_or_else(|| panic!("repo record has no `sync` object: {record}"));
        let opt = |key: &str| -> Option<String> {
            match sync.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(other) => {
                    panic!("sync.{key} should be a string or null, got {other} in {record}")
                }
            }
        };
        SyncState {
            in_progress: sync
                .get("in_progress")
                .and_then(Value::as_bool)
                .unwrap_or_else(|| panic!("sync.in_progress should be a bool in {record}")),
            run_count: sync
                .get("run_count")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("sync.run_count should be an integer in {record}")),
            last_success_at: opt("last_success_at"),
            last_error: opt("last_error"),
            last_run_at: opt("last_run_at"),
        }
    }
}

impl Server {
    /// Starts the server with the default options.
    pub fn start() -> Server {
        Server::builder().start()
    }

    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            binary: None,
            sync_interval_secs: 3600,
            args: Vec::new(),
            env: Vec::new(),
            dev_switch: true,
        }
    }

    /// `http://127.0.0.1:<port>` of the current process.
    pub fn base(&self) -> &str {
        assert!(self.running.is_some(), "the server is not running");
        &self.base
    }

    /// `http://t:<admin token>@127.0.0.1:<port>/<name>.git`: what git clients use.
    pub fn git_url(&self, name: &str) -> String {
        self.git_url_with(name, &self.token())
    }

    /// `http://t:<token>@127.0.0.1:<port>/<name>.git`.
    pub fn git_url_with(&self, name: &str, token: &str) -> String {
        let base = self.base();
        let rest = base.strip_prefix("http://").unwrap_or(base);
        format!("http://t:{token}@{rest}/{name}.git")
    }

    /// `http://127.0.0.1:<port>/<name>.git`, without credentials.
    pub fn git_url_plain(&self, name: &str) -> String {
        format!("{}/{name}.git", self.base())
    }

    /// An admin token (org-wide, every scope), minted from the data dir's key on first use.
    pub fn token(&self) -> String {
        self.token
            .get_or_init(|| {
                self.mint(&[
                    "--repo", "org", "--scopes", "admin", "--ttl", "86400", "--sub", "e2e",
                ])
            })
            .clone()
    }

    /// `codestorage token mint ARGS` on this server's data dir: the token.
    #[track_caller]
    pub fn mint(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "mint"];
        all.extend_from_slice(args);
        let out = self.data_cli(&all);
        assert!(out.success(), "token mint failed\n{}", out.describe());
        out.stdout.trim().to_owned()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The address (`host:port`) and CA certificate file of the TLS listener, from the latest
    /// `listening on https://` and `tls ca certificate:` lines (after a restart, the new ones).
    #[track_caller]
    pub fn tls_endpoint(&self) -> (String, PathBuf) {
        wait_until(
            Duration::from_secs(10),
            "the `listening on https://` and `tls ca certificate:` lines",
            || {
                let out = self.stdout();
                let start = out.rfind("listening on http://")?;
                let out = &out[start..];
                let addr = out
                    .lines()
                    .find_map(|l| l.split("listening on https://").nth(1))?
                    .trim()
                    .trim_end_matches('/')
                    .to_owned();
                let ca = out
                    .lines()
                    .find_map(|l| l.split("tls ca certificate: ").nth(1))?
                    .trim()
                    .to_owned();
                Some((addr, PathBuf::from(ca)))
            },
        )
    }

    /// Everything the server printed on stdout so far, across restarts (the `listening on`
    /// lines, e.g. the https address and the CA path of `--tls-self-signed`).
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout lock").clone()
    }

    /// Everything the server printed on stderr so far (its log), across restarts, untruncated.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Everything the server printed so far (stdout, then stderr), across restarts.
    pub fn logs(&self) -> String {
        format!(
            "--- codestorage stdout ---\n{}\n--- codestorage stderr ---\n{}",
            tail(&self.stdout.lock().expect("stdout lock"), 8000),
            tail(&self.stderr.lock().expect("stderr lock"), 16000)
        )
    }

    /// SIGTERM, then wait for the exit (panics if it takes longer than 20 s).
    pub fn stop(&mut self) -> ExitStatus {
        let mut running = self
            .running
            .take()
            .expect("stop: the server is not running");
        let pid = running.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match running.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = running.child.kill();
                    let _ = running.child.wait();
                    join_readers(running.readers);
                    panic!(
                        "codestorage did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed\n{}",
                        self.logs()
                    );
                }
            }
        };
        join_readers(running.readers);
        status
    }

    /// The process id of the running server (to signal it without waiting, as the shutdown
    /// tests do; [`Server::stop`] then waits for the exit).
    pub fn pid(&self) -> u32 {
        self.running
            .as_ref()
            .expect("pid: the server is not running")
            .child
            .id()
    }

    /// SIGKILL: a crash, as far as the data dir can tell.
    pub fn kill(&mut self) {
        let mut running = self
            .running
            .take()
            .expect("kill: the server is not running");
        let _ = running.child.kill();
        let _ = running.child.wait();
        join_readers(running.readers);
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the server process, for
    /// its next start (a fault point armed with `CODESTORAGE_FAULT`, then disarmed).
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.opts.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.opts.env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// Waits up to `timeout` for the server to exit by itself (a fault point aborting it);
    /// its exit status, or `None` if it still runs (it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.running.as_mut()?;
            match running.child.try_wait() {
                Ok(Some(status)) => {
                    if let Some(running) = self.running.take() {
                        join_readers(running.readers);
                    }
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Stops the server if it runs (SIGTERM), then starts it again on the same data dir. The port
    /// changes: use `base()`/`git_url()` afterwards.
    pub fn restart(&mut self) {
        if self.running.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// `codestorage --server <base> --data-dir <data> ARGS`, whatever the outcome (the CLI mints
    /// its own admin token from the data dir's key).
    pub fn cli(&self, args: &[&str]) -> Out {
        let base = self.base().to_owned();
        let mut cmd = self.bin_command();
        cmd.arg("--server")
            .arg(base)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args);
        run_command(&mut cmd, COMMAND_TIMEOUT)
    }

    /// [`Server::cli`], asserting success.
    #[track_caller]
    pub fn cli_ok(&self, args: &[&str]) -> Out {
        let out = self.cli(args);
        assert!(
            out.success(),
            "codestorage CLI failed\n{}\n{}",
            out.describe(),
            self.logs()
        );
        out
    }

    /// `codestorage --data-dir <data> ARGS`, whatever the outcome (for a stopped server).
    pub fn data_cli(&self, args: &[&str]) -> Out {
        let mut cmd = self.bin_command();
        cmd.arg("--data-dir").arg(&self.data).args(args);
        run_command(&mut cmd, COMMAND_TIMEOUT)
    }

    /// `codestorage --data-dir <data> fsck`.
    pub fn fsck(&self) -> Out {
        self.data_cli(&["fsck"])
    }

    // ---- REST ----

    /// A request to `base + path`, with the admin token unless `headers` carry an
    /// `Authorization` of their own.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        if headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            return http::request(self.base(), method, path, headers, body);
        }
        let bearer = format!("Bearer {}", self.token());
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("Authorization", &bearer));
        http::request(self.base(), method, path, &all, body)
    }

    /// A request without any token.
    pub fn request_anonymous(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        http::request(self.base(), method, path, headers, body)
    }

    /// A request with a JSON body.
    pub fn request_json(&self, method: &str, path: &str, body: &Value) -> HttpResponse {
        let bytes = serde_json::to_vec(body).expect("serialize JSON");
        self.request(
            method,
            path,
            Some(&bytes),
            &[("Content-Type", "application/json")],
        )
    }

    /// `/api/repos/<name, percent-encoded>` + `suffix`.
    pub fn repo_path(name: &str, suffix: &str) -> String {
        format!("/api/repos/{}{suffix}", encode_component(name))
    }

    /// `POST /api/repos` with `body`, whatever the outcome.
    pub fn try_create(&self, body: &Value) -> HttpResponse {
        self.request_json("POST", "/api/repos", body)
    }

    /// Creates a mirror of `upstream_url` (201 expected); returns the response body.
    #[track_caller]
    pub fn create_mirror(&self, name: &str, upstream_url: &str) -> Value {
        let resp = self.try_create(&json!({ "name": name, "base_repo": { "url": upstream_url } }));
        self.expect_created(name, resp)
    }

    /// Creates a repo without an upstream (201 expected); returns the response body.
    #[track_caller]
    pub fn create_local(&self, name: &str) -> Value {
        let resp = self.try_create(&json!({ "name": name }));
        self.expect_created(name, resp)
    }

    #[track_caller]
    fn expect_created(&self, name: &str, resp: HttpResponse) -> Value {
        assert_eq!(
            resp.status,
            201,
            "create {name}: expected 201, got {}\n{}",
            resp.describe(),
            self.logs()
        );
        let body = resp.json();
        assert!(
            body.get("repo_id").is_some_and(|v| !v.is_null()),
            "create {name}: no repo_id in {body}"
        );
        assert!(
            body.get("message").is_some(),
            "create {name}: no message in {body}"
        );
        body
    }

    /// `GET /api/repos/{name}`: status and body (`Value::Null` if the body is not JSON).
    pub fn get_repo(&self, name: &str) -> (u16, Value) {
        let resp = self.request("GET", &Server::repo_path(name, ""), None, &[]);
        let body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        (resp.status, body)
    }

    /// `GET /api/repos/{name}`, asserting 200.
    #[track_caller]
    pub fn repo(&self, name: &str) -> Value {
        let (status, body) = self.get_repo(name);
        assert_eq!(
            status,
            200,
            "GET repo {name}: expected 200, got {status}: {body}\n{}",
            self.logs()
        );
        body
    }

    /// The repo's parsed sync state.
    #[track_caller]
    pub fn sync_state(&self, name: &str) -> SyncState {
        SyncState::of(&self.repo(name))
    }

    /// `GET /api/repos`, asserting 200.
    #[track_caller]
    pub fn list_repos(&self) -> Value {
        let resp = self.request("GET", "/api/repos", None, &[]);
        assert_eq!(resp.status, 200, "list repos: {}", resp.describe());
        resp.json()
    }

    /// Names in a `GET /api/repos` answer: `repos[].name` (or `repos[].url`); a bare array is
    /// accepted too.
    pub fn listed_names(list: &Value) -> Vec<String> {
        let items = list
            .get("repos")
            .and_then(Value::as_array)
            .or_else(|| list.as_array())
            .cloned()
            .unwrap_or_default();
        items
            .iter()
            .filter_map(|r| {
                r.get("name")
                    .or_else(|| r.get("url"))
                    .and_then(Value::as_str)
            })
            .map(str::to_owned)
            .collect()
    }

    /// `POST /api/repos/{name}/pull-upstream`, whatever the outcome.
    pub fn try_pull_upstream(&self, name: &str) -> HttpResponse {
        self.request(
            "POST",
            &Server::repo_path(name, "/pull-upstream"),
            Some(b""),
            &[],
        )
    }

    /// `POST /api/repos/{name}/pull-upstream`, asserting 202.
    #[track_caller]
    pub fn pull_upstream(&self, name: &str) {
        let resp = self.try_pull_upstream(name);
        assert_eq!(
            resp.status,
            202,
            "pull-upstream {name}: {}\n{}",
            resp.describe(),
            self.logs()
        );
    }

    /// Polls until the first successful sync of `name` (and no sync running). Panics with the
    /// error if a run finished without any success yet, or after 60 s.
    #[track_caller]
    pub fn wait_synced(&self, name: &str) -> Value {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            let record = self.repo(name);
            let sync = SyncState::of(&record);
            if sync.last_success_at.is_some() && !sync.in_progress {
                return record;
            }
            if sync.last_success_at.is_none()
                && !sync.in_progress
                && sync.run_count > 0
                && let Some(err) = &sync.last_error
            {
                panic!(
                    "first sync of {name} failed: {err}\nrecord: {record}\n{}",
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{name} not synced within {SYNC_TIMEOUT:?}; last record: {record}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for any running sync to end, asks for a new one and waits for it: `Ok(record)` if it
    /// succeeded, `Err(last_error)` if it failed.
    #[track_caller]
    pub fn try_sync_now(&self, name: &str) -> Result<Value, String> {
        let before = wait_until(SYNC_TIMEOUT, &format!("no sync running on {name}"), || {
            let sync = self.sync_state(name);
            (!sync.in_progress).then_some(sync.run_count)
        });
        self.pull_upstream(name);
        let record = wait_until(
            SYNC_TIMEOUT,
            &format!("a new sync run of {name} to finish"),
            || {
                let record = self.repo(name);
                let sync = SyncState::of(&record);
                (sync.run_count > before && !sync.in_progress).then_some(record)
            },
        );
        match SyncState::of(&record).last_error {
            None => Ok(record),
            Some(err) => Err(err),
        }
    }

    /// [`Server::try_sync_now`], panicking with the error if the run failed.
    #[track_caller]
    pub fn sync_now(&self, name: &str) -> Value {
        self.try_sync_now(name)
            .unwrap_or_else(|err| panic!("sync of {name} failed: {err}\n{}", self.logs()))
    }

    /// Polls until a sync of `name` is running.
    #[track_caller]
    pub fn wait_sync_in_progress(&self, name: &str) {
        wait_until(
            SYNC_TIMEOUT,
            &format!("a sync of {name} to be in progress"),
            || self.sync_state(name).in_progress.then_some(()),
        );
    }

    /// Creates a mirror of `upstream_url` and waits for its first sync.
    #[track_caller]
    pub fn mirror(&self, name: &str, upstream_url: &str) -> Value {
        self.create_mirror(name, upstream_url);
        self.wait_synced(name)
    }

    // ---- process plumbing ----

    fn bin_command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        hermetic_env(&mut cmd, &self.home);
        cmd.env("RUST_BACKTRACE", "1");
        if let Some(log) = std::env::var_os("RUST_LOG") {
            cmd.env("RUST_LOG", log);
        }
        cmd
    }

    fn spawn(&mut self) {
        assert!(
            self.running.is_none(),
            "spawn: the server is already running"
        );
        let mut cmd = self.bin_command();
        cmd.arg("--data-dir")
            .arg(&self.data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(self.opts.dev_switch.then_some("--allow-http-upstream"))
            .arg("--sync-interval")
            .arg(self.opts.sync_interval_secs.to_string())
            .args(&self.opts.args);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", self.bin.display()));
        for buf in [&self.stdout, &self.stderr] {
            let mut b = buf.lock().expect("log lock");
            if !b.is_empty() {
                b.push_str("===== restart =====\n");
            }
        }
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        let out_buf = self.stdout.clone();
        let out_reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut announced = false;
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // Into the buffer first: once `spawn` returns, readers of `stdout()` (the TLS
                // tests) must see this start's lines, not only the previous start's.
                out_buf.lock().expect("log lock").push_str(&line);
                if !announced && let Some(url) = listening_url(&line) {
                    announced = true;
                    let _ = tx.send(url);
                }
            }
        });
        let err_buf = self.stderr.clone();
        let err_reader = std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut chunk = [0u8; 8192];
            loop {
                match stderr.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => err_buf
                        .lock()
                        .expect("log lock")
                        .push_str(&String::from_utf8_lossy(&chunk[..n])),
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let base = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(url) => break url,
                Err(mpsc::RecvTimeoutError::Timeout)
                | Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                join_readers(vec![out_reader, err_reader]);
                panic!(
                    "codestorage exited ({status}) before printing `listening on http://...`\n{}",
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                join_readers(vec![out_reader, err_reader]);
                panic!(
                    "codestorage printed no `listening on http://...` line within {START_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
        };
        self.base = base;
        self.running = Some(Running {
            child,
            readers: vec![out_reader, err_reader],
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
            join_readers(running.readers);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            eprintln!("codestorage data dir: {}", self.data.display());
        }
    }
}

/// The URL in a `listening on http://127.0.0.1:<port>` line, without a trailing slash.
fn listening_url(line: &str) -> Option<String> {
    let at = line.find("listening on http://")?;
    let url = line[at + "listening on ".len()..]
        .split_whitespace()
        .next()?;
    Some(url.trim_end_matches('/').to_owned())
}

/// Waits up to 5 s for the output readers (they end when the pipes close); leaves them otherwise.
fn join_readers(readers: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for r in readers {
        while !r.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }
}

/// The `codestorage` binary: `$CODESTORAGE_BIN`, else `target/<profile>/codestorage` next to the
/// test executable's `deps/` dir.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CODESTORAGE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "CODESTORAGE_BIN={} does not exist",
            bin.display()
        );
        return bin;
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps/");
    let bin = profile_dir.join("codestorage");
    assert!(
        bin.is_file(),
        "the codestorage binary is not at {}: run `cargo build --workspace` (same profile as the \
         tests) first, or set CODESTORAGE_BIN",
        bin.display()
    );
    bin
}

#[cfg(test)]
mod tests {
    use super::listening_url;

    #[test]
    fn the_listening_line_is_parsed_with_or_without_a_log_prefix() {
        assert_eq!(
            listening_url("listening on http://127.0.0.1:4242\n").as_deref(),
            Some("http://127.0.0.1:4242"),
            "bare line"
        );
        assert_eq!(
            listening_url(
                "2026-01-01T00:00:00Z INFO codestorage: listening on http://127.0.0.1:1/\n"
            )
            .as_deref(),
            Some("http://127.0.0.1:1"),
            "with a log prefix"
        );
        assert_eq!(listening_url("starting\n"), None, "other lines");
    }
}
