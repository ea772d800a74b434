//! The end-to-end harness: real processes on loopback, real git as the oracle.
//!
//! - [`upstream`]: `Upstream`, a real git server (`git http-backend` as CGI behind hyper), with fault
//!   knobs (slow bodies, forced status codes) and request counting.
//! - [`server`]: `Server`, the `codestorage` binary under test on a fresh data dir, its CLI and
//!   REST helpers.
//! - [`git`]: `Git`, the `git` binary in a hermetic environment, plus `seed_repo`.
//! - [`http`]: a tiny blocking HTTP/1.1 client for REST calls and hand-made git requests.
//! - [`pkt`]: pkt-line builders for hand-made upload-pack request bodies.
//! - [`receiver`]: `Receiver`, a loopback webhook receiver that records requests and fails or
//!   holds them on demand.
//! - [`github`]: a fake GitHub REST API (App installation tokens) and App keys.
//! - [`forge`]: forge webhook deliveries, shaped and signed as each forge sends them.
//!
//! This module holds what they share: `World` (server + upstream + git for one test), running a
//! child process with a deadline, scratch directories named after the running test, polling with
//! a timeout, and map diffs.
//!
//! Nothing here binds a fixed port or writes outside a temp dir, so tests run in parallel.
//! Set `E2E_KEEP=1` to keep the temp dirs of a run (their paths are printed).

#![allow(dead_code)] // not every test module uses every helper

pub mod forge;
pub mod git;
pub mod github;
pub mod http;
pub mod jwt;
pub mod pkt;
pub mod receiver;
pub mod server;
pub mod upstream;

pub use git::{Git, Seed, seed_repo};
pub use server::Server;
pub use upstream::Upstream;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long one git or CLI command may run before the harness kills it and fails the test.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a sync may take before `wait_synced`/`sync_now` give up.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The result of a finished child process, with its output decoded lossily as UTF-8.
#[derive(Debug, Clone)]
pub struct Out {
    /// The command line, for messages.
    pub cmd: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// stdout as raw bytes (pack data, binary git output).
    pub stdout_bytes: Vec<u8>,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The command, its exit status and both output streams: the body of every failure message.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd,
            self.status,
            tail(&self.stdout, 8000),
            tail(&self.stderr, 8000)
        )
    }
}

/// Runs `cmd` to completion with stdin closed, killing it and panicking after `timeout`.
pub fn run_command(cmd: &mut Command, timeout: Duration) -> Out {
    run_command_with_stdin(cmd, None, timeout)
}

/// [`run_command`], with stdin read from the file `stdin` when given.
pub fn run_command_with_stdin(cmd: &mut Command, stdin: Option<&Path>, timeout: Duration) -> Out {
    let desc = describe_command(cmd);
    let input = match stdin {
        None => Stdio::null(),
        Some(path) => std::fs::File::open(path)
            .unwrap_or_else(|e| panic!("could not open {} for `{desc}`: {e}", path.display()))
            .into(),
    };
    cmd.stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{desc}`: {e}"));
    let mut stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr = child.stderr.take().expect("stderr was piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let out = out_reader.join().unwrap_or_default();
                let err = err_reader.join().unwrap_or_default();
                panic!(
                    "`{desc}` did not finish within {timeout:?} and was killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    tail(&String::from_utf8_lossy(&out), 8000),
                    tail(&String::from_utf8_lossy(&err), 8000)
                );
            }
            Err(e) => panic!("waiting for `{desc}` failed: {e}"),
        }
    };
    let stdout_bytes = out_reader.join().unwrap_or_default();
    let stderr_bytes = err_reader.join().unwrap_or_default();
    Out {
        cmd: desc,
        status,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stderr: String::from_utf8_lossy(&stderr_bytes).into_owned(),
        stdout_bytes,
    }
}

fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    if let Some(dir) = cmd.get_current_dir() {
        let _ = write!(s, "    (in {})", dir.display());
    }
    s
}

/// The last `max` bytes of `s` (on a char boundary), marked when cut.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]{}", &s[start..])
}

/// The running test's name (`clone::clone_over_v2_...`), from the thread the test harness names
/// after it; `"e2e"` outside a test thread.
pub fn test_name() -> String {
    let name = std::thread::current().name().unwrap_or("e2e").to_owned();
    if name == "main" {
        "e2e".to_owned()
    } else {
        name
    }
}

/// A fresh temp dir whose name starts with the running test's name (and `label`), removed on drop
/// unless `E2E_KEEP` is set.
pub fn scratch_dir(label: &str) -> tempfile::TempDir {
    let safe: String = test_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("e2e-{safe}-{label}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("could not create a temp dir: {e}"));
    if std::env::var_os("E2E_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("E2E_KEEP: keeping {}", dir.path().display());
    }
    dir
}

/// Polls `check` every 50 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts two maps are equal, showing only the differing keys.
#[track_caller]
pub fn assert_maps_eq(
    actual: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
    context: &str,
) {
    if actual == expected {
        return;
    }
    let mut diff = String::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => {
                let _ = writeln!(diff, "  missing  {k} = {v}");
            }
            Some(a) if a != v => {
                let _ = writeln!(diff, "  differs  {k}: expected {v}, got {a}");
            }
            Some(_) => {}
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            let _ = writeln!(diff, "  extra    {k} = {v}");
        }
    }
    panic!("{context}: maps differ (expected vs actual):\n{diff}");
}

/// Asserts `path` exists, for "did the command leave what it should" checks.
#[track_caller]
pub fn assert_exists(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{what}: expected {} to exist",
        path.display()
    );
}

/// The usual cast of a server test: a fresh codestorage, an upstream and a git runner (dropped in
/// that order, so the server goes first).
pub struct World {
    pub server: Server,
    pub upstream: Upstream,
    pub git: Git,
}

impl World {
    pub fn new() -> World {
        World::with_server(Server::builder())
    }

    /// A world whose server starts with these options.
    pub fn with_server(builder: server::ServerBuilder) -> World {
        let git = Git::new();
        let upstream = Upstream::start();
        let server = builder.start();
        World {
            server,
            upstream,
            git,
        }
    }

    /// A world whose upstream holds the seeded repo `name`, mirrored by codestorage under the same
    /// name and synced.
    #[track_caller]
    pub fn seeded_mirror(name: &str) -> (World, Seed) {
        World::seeded_mirror_with(name, Server::builder())
    }

    /// [`World::seeded_mirror`] with a server started from `builder`.
    #[track_caller]
    pub fn seeded_mirror_with(name: &str, builder: server::ServerBuilder) -> (World, Seed) {
        let world = World::with_server(builder);
        let seed = seed_repo(&world.git, &world.upstream, name);
        world.server.mirror(name, &seed.url);
        (world, seed)
    }
}
