//! `git-remote-codestorage` (issue 5): real `git` with the real helper binary on `PATH`, against
//! the real server and a real upstream.
//!
//! - URL forms: `codestorage::<repo>`, `codestorage::<repo>+ephemeral`,
//!   `codestorage::http://127.0.0.1:PORT/<repo>`; clone, fetch, push, ls-remote; partial and
//!   shallow clones (lazy blob fetches go through the helper too); `--force-with-lease`,
//!   `--atomic` and push options.
//! - Where the token comes from: the server's data dir, a key file with its organisation, a fixed
//!   token; each as an environment variable and as `git config codestorage.*`.
//! - What the server sees: a capturing proxy between git and codestorage records every
//!   `Authorization` header; the JWTs must carry the least scope (`git:read` to read, `git:write`
//!   to push), at most an hour of life and the base repository name.
//! - The token never leaks: not into `.git/config`, a credential store, `git remote -v`, any file
//!   of the clone or HOME, or git's and the helper's stderr, traces included.
//! - Every error says what to do: nothing listening, no credentials, token refused (401/403 with
//!   the server's message), malformed URLs.
//!
//! The helper is `target/<profile>/git-remote-codestorage` (next to the `codestorage` binary the
//! harness runs): build it with `cargo build --workspace --bins`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::support::git::lib_rs;
use crate::support::jwt::{self, Signer};
use crate::support::{Git, Out, Seed, World, assert_maps_eq};

// ---- the helper on PATH ----

/// `target/<profile>`: where cargo put `git-remote-codestorage` (and `codestorage`).
fn helper_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps/")
        .to_owned();
    assert!(
        dir.join("git-remote-codestorage").is_file(),
        "git-remote-codestorage is not in {}: run `cargo build --workspace --bins` (same profile \
         as the tests) first",
        dir.display()
    );
    dir
}

/// `git` with the helper first on `PATH` and nothing else configured for it.
fn with_helper(git: &Git) -> Git {
    let mut dirs = vec![helper_dir()];
    match std::env::var_os("PATH") {
        Some(path) => dirs.extend(std::env::split_paths(&path)),
        None => dirs.extend(["/usr/bin".into(), "/bin".into()]),
    }
    git.env(
        "PATH",
        std::env::join_paths(dirs).expect("PATH of valid directories"),
    )
}

/// `git` with the helper on `PATH`, pointed at `server_url` (`CODESTORAGE_URL`), minting its
/// tokens from the server's data dir (`CODESTORAGE_DATA_DIR`).
fn helper_git_at(w: &World, server_url: &str) -> Git {
    with_helper(&w.git)
        .env("CODESTORAGE_URL", server_url)
        .env("CODESTORAGE_DATA_DIR", w.server.data_dir())
}

/// [`helper_git_at`] the server itself.
fn helper_git(w: &World) -> Git {
    helper_git_at(w, w.server.base())
}

// ---- small git helpers ----

/// `git ls-remote URL` as `refname -> id` (peeled `^{}` entries and `HEAD` included).
#[track_caller]
fn ls_remote_map(git: &Git, url: &str) -> BTreeMap<String, String> {
    git.run(git.scratch(), &["ls-remote", url])
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, name)| (name.to_owned(), id.to_owned()))
        .collect()
}

/// `git clone [extra] url` into a fresh scratch path; returns it.
#[track_caller]
fn clone_to(git: &Git, url: &str, label: &str, extra: &[&str]) -> PathBuf {
    let work = git.unique_path(label);
    git.clone(url, &work, extra);
    work
}

/// The id `rev` names in `repo`, or `None`.
fn try_rev(git: &Git, repo: &Path, rev: &str) -> Option<String> {
    let out = git.try_run(
        repo,
        &["rev-parse", "-q", "--verify", "--end-of-options", rev],
    );
    out.success().then(|| out.stdout.trim().to_owned())
}

/// Makes the upstream's main one commit longer (behind codestorage's back), then syncs the
/// mirror. Returns the new main.
#[track_caller]
fn upstream_gains_a_commit(w: &World, seed: &Seed, n: usize) -> String {
    w.git.run(&seed.work, &["switch", "-q", "main"]);
    let tip = w.git.commit_file(
        &seed.work,
        "src/lib.rs",
        lib_rs(n),
        &format!("upstream c{n}"),
    );
    seed.publish(&w.git);
    w.server.sync_now(&seed.name);
    tip
}

/// Upstream requests (advertisements and POSTs) for receive-pack so far.
fn upstream_receive_pack(w: &World) -> usize {
    w.upstream
        .request_log()
        .iter()
        .filter(|r| r.contains("receive-pack"))
        .count()
}

fn write_hook(git_dir: &Path, name: &str, body: &str) {
    let hooks = git_dir.join("hooks");
    std::fs::create_dir_all(&hooks).expect("create hooks dir");
    let path = hooks.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write hook");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod hook");
}

/// The organisation of the server's data-dir key.
fn data_dir_org(w: &World) -> String {
    std::fs::read_to_string(w.server.data_dir().join("keys").join("org"))
        .expect("read keys/org")
        .trim()
        .to_owned()
}

// ---- a proxy that records every Authorization header ----

/// One request that went through the [`CaptureProxy`].
#[derive(Clone, Debug)]
struct Captured {
    /// `METHOD /path?query`.
    request: String,
    /// The `Authorization` header, if any.
    authorization: Option<String>,
}

impl Captured {
    /// The JWT inside `Authorization: Basic base64(user:jwt)` or `Bearer jwt`.
    #[track_caller]
    fn token(&self) -> String {
        let auth = self
            .authorization
            .as_deref()
            .unwrap_or_else(|| panic!("{} carried no Authorization header", self.request));
        if let Some(b) = auth.strip_prefix("Basic ") {
            let raw = STANDARD
                .decode(b.trim())
                .unwrap_or_else(|e| panic!("{}: Basic credentials not base64: {e}", self.request));
            let text = String::from_utf8(raw).expect("Basic credentials are UTF-8");
            let (_, pass) = text
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: Basic credentials without ':'", self.request));
            pass.to_owned()
        } else if let Some(t) = auth.strip_prefix("Bearer ") {
            t.trim().to_owned()
        } else {
            panic!("{}: unexpected Authorization scheme", self.request)
        }
    }
}

/// HTTP/1.1 on `127.0.0.1:0` that forwards every request to a codestorage server (a fresh
/// connection each) and records its `Authorization` header. Runs on its own tokio runtime, stopped
/// on drop.
struct CaptureProxy {
    base: String,
    seen: Arc<Mutex<Vec<Captured>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl CaptureProxy {
    /// A proxy in front of `target` (`http://host:port`).
    fn start(target: &str) -> CaptureProxy {
        let target: Arc<str> = target
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the capture proxy forwards to http:// only, not {target}"))
            .trim_end_matches('/')
            .into();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("capture-proxy")
            .enable_all()
            .build()
            .expect("build the capture proxy's runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the capture proxy");
        let addr = listener.local_addr().expect("capture proxy address");
        let log = seen.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let target = target.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        forward(req, target.clone(), log.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CaptureProxy {
            base: format!("http://{addr}"),
            seen,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:<port>`.
    fn base(&self) -> &str {
        &self.base
    }

    /// Everything recorded since the last call.
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.seen.lock().expect("capture log"))
    }
}

impl Drop for CaptureProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn text_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp
}

async fn forward(
    req: Request<Incoming>,
    target: Arc<str>,
    log: Arc<Mutex<Vec<Captured>>>,
) -> Result<Response<ProxyBody>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    log.lock().expect("capture log").push(Captured {
        request: format!("{} {path}", req.method()),
        authorization: req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    });
    let stream = match tokio::net::TcpStream::connect(&*target).await {
        Ok(s) => s,
        Err(e) => return Ok(text_response(StatusCode::BAD_GATEWAY, format!("{e}\n"))),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return Ok(text_response(StatusCode::BAD_GATEWAY, format!("{e}\n"))),
    };
    tokio::spawn(conn);
    match sender.send_request(req).await {
        Ok(resp) => Ok(resp.map(BodyExt::boxed)),
        Err(e) => Ok(text_response(StatusCode::BAD_GATEWAY, format!("{e}\n"))),
    }
}

/// The claims of every token in `captured`, asserting every request carried one.
#[track_caller]
fn claims_of(captured: &[Captured], what: &str) -> Vec<(String, Value)> {
    assert!(
        !captured.is_empty(),
        "{what}: no request went through the capture proxy"
    );
    captured
        .iter()
        .map(|c| {
            assert!(
                c.authorization.is_some(),
                "{what}: `{}` reached the server without a token (all: {captured:#?})",
                c.request
            );
            let token = c.token();
            let claims = jwt::payload(&token);
            (token, claims)
        })
        .collect()
}

/// Every token of `captured` is a helper-minted one for `repo`, with exactly `scopes`, for at
/// most an hour, issued by `org`. Returns the distinct tokens.
#[track_caller]
fn assert_minted(
    captured: &[Captured],
    repo: &str,
    scopes: &[&str],
    org: &str,
    what: &str,
) -> BTreeSet<String> {
    let mut tokens = BTreeSet::new();
    for (token, c) in claims_of(captured, what) {
        let got: Vec<&str> = c["scopes"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no scopes array in {c}"))
            .iter()
            .map(|s| s.as_str().expect("scopes are strings"))
            .collect();
        assert_eq!(got, scopes, "{what}: scopes of {c}");
        assert_eq!(c["repo"], repo, "{what}: repo claim of {c}");
        assert_eq!(c["iss"], org, "{what}: iss claim of {c}");
        let iat = c["iat"]
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: iat in {c}"));
        let exp = c["exp"]
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: exp in {c}"));
        assert!(
            exp > iat && exp - iat <= 3600,
            "{what}: token lives {}s (iat {iat}, exp {exp}); at most an hour expected",
            exp - iat
        );
        let now = jwt::now();
        assert!(
            (iat - now).abs() < 300,
            "{what}: iat {iat} is not now ({now})"
        );
        assert!(
            c["jti"].as_str().is_some_and(|j| !j.is_empty()),
            "{what}: no jti in {c}"
        );
        tokens.insert(token);
    }
    tokens
}

// ---- secrets must not appear anywhere ----

/// The forms a token could leak in: itself, its signature, and the Basic credentials git sends.
fn secret_forms(token: &str) -> Vec<String> {
    let mut forms = vec![
        token.to_owned(),
        STANDARD.encode(format!("t:{token}")),
        URL_SAFE_NO_PAD.encode(token),
    ];
    if let Some(sig) = token.rsplit('.').next()
        && sig.len() >= 16
        && sig != token
    {
        forms.push(sig.to_owned());
    }
    forms
}

/// Files under `root` (recursively, symlinks not followed) containing one of `secrets`.
fn files_containing(root: &Path, secrets: &[String]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(entry.path())
                && secrets.iter().any(|s| contains(&bytes, s.as_bytes()))
            {
                hits.push(entry.path());
            }
        }
    }
    hits
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// No output of `outs` mentions any of `secrets`.
#[track_caller]
fn assert_no_secret_in_output(outs: &[Out], secrets: &[String]) {
    for out in outs {
        for s in secrets {
            assert!(
                !out.stderr.contains(s.as_str()) && !out.stdout.contains(s.as_str()),
                "a token leaked into the output of `{}`:\n{}",
                out.cmd,
                out.describe()
            );
        }
    }
}

/// The token is nowhere in the clone `work` or in HOME: no file (config, FETCH_HEAD, logs,
/// packed-refs, ...), no credential store, not in `git remote -v` or the effective config.
#[track_caller]
fn assert_no_secret_at_rest(git: &Git, work: &Path, secrets: &[String]) {
    let hits = files_containing(work, secrets);
    assert!(hits.is_empty(), "a token was written to {hits:?}");
    let hits = files_containing(git.home(), secrets);
    assert!(hits.is_empty(), "a token was written under HOME: {hits:?}");
    assert!(
        !git.home().join(".git-credentials").exists(),
        "~/.git-credentials was created"
    );
    assert!(
        !git.home().join(".config/git/credentials").exists(),
        "~/.config/git/credentials was created"
    );
    let config = std::fs::read_to_string(work.join(".git/config")).expect("read .git/config");
    for s in secrets {
        assert!(
            !config.contains(s.as_str()),
            ".git/config holds a token:\n{config}"
        );
    }
    let remotes = git.run(work, &["remote", "-v"]);
    let config_list = git.run(work, &["config", "--list", "--show-origin"]);
    assert_no_secret_in_output(&[remotes, config_list], secrets);
}

// =====================================================================================
// 1. clone, fetch, push, ls-remote through codestorage:: URLs
// =====================================================================================

#[test]
fn mirror_clone_fetch_push_and_ls_remote_through_the_short_form() {
    let (w, seed) = World::seeded_mirror("repo");
    let git = helper_git(&w);

    // ls-remote: what the upstream serves.
    assert_maps_eq(
        &ls_remote_map(&git, "codestorage::repo"),
        &ls_remote_map(&w.git, &seed.url),
        "ls-remote codestorage::repo vs the upstream",
    );

    // clone
    let work = clone_to(&git, "codestorage::repo", "clone", &["-q"]);
    assert_maps_eq(
        &git.remote_view(&work),
        &w.git.served_refs(&seed.bare),
        "clone through codestorage::repo vs the upstream",
    );
    git.fsck_strict(&work);
    let url = git.run(&work, &["remote", "get-url", "origin"]);
    assert_eq!(url.stdout.trim(), "codestorage::repo", "origin's URL");

    // fetch, after the upstream moved and codestorage synced
    let c4 = upstream_gains_a_commit(&w, &seed, 4);
    git.run(&work, &["fetch", "-q", "origin"]);
    assert_eq!(
        try_rev(&git, &work, "refs/remotes/origin/main").as_deref(),
        Some(c4.as_str()),
        "fetch through codestorage::repo got the upstream's new main"
    );
    git.run(&work, &["merge", "-q", "--ff-only", "origin/main"]);

    // push: lands on the upstream (write-through)
    let c5 = git.commit_file(&work, "src/lib.rs", lib_rs(5), "c5 via the helper");
    git.push(&work, &["-q", "origin", "main"]);
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        c5,
        "the push through codestorage::repo reached the upstream"
    );
    git.push(&work, &["-q", "origin", "main:refs/heads/pushed-branch"]);
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/pushed-branch"),
        c5,
        "a new branch pushed through codestorage::repo"
    );
    // deletion
    git.push(&work, &["-q", "origin", ":refs/heads/pushed-branch"]);
    assert_eq!(
        try_rev(&w.git, &seed.bare, "refs/heads/pushed-branch"),
        None,
        "a branch deleted through codestorage::repo"
    );
    w.git.fsck_strict(&seed.bare);

    // read-your-writes: ls-remote through the helper shows the push at once
    assert_maps_eq(
        &ls_remote_map(&git, "codestorage::repo"),
        &ls_remote_map(&w.git, &seed.url),
        "ls-remote codestorage::repo after the pushes",
    );

    // `.git` suffix and `git pull`
    let other = clone_to(&git, "codestorage::repo.git", "clone-dotgit", &["-q"]);
    assert_eq!(
        git.rev_parse(&other, "HEAD"),
        c5,
        "clone of codestorage::repo.git"
    );
    git.run(&work, &["pull", "-q", "--ff-only"]);
}

#[test]
fn protocol_v0_through_the_helper() {
    let (w, seed) = World::seeded_mirror("repo");
    let git = helper_git(&w).v0();
    assert_maps_eq(
        &ls_remote_map(&git, "codestorage::repo"),
        &ls_remote_map(&w.git, &seed.url),
        "ls-remote over v0",
    );
    let work = clone_to(&git, "codestorage::repo", "v0", &["-q"]);
    assert_maps_eq(
        &git.remote_view(&work),
        &w.git.served_refs(&seed.bare),
        "clone over v0",
    );
    let c4 = upstream_gains_a_commit(&w, &seed, 4);
    git.run(&work, &["pull", "-q", "--ff-only"]);
    assert_eq!(git.rev_parse(&work, "HEAD"), c4, "pull over v0");
    let c5 = git.commit_file(&work, "v0.txt", "v0\n", "c5 over v0");
    git.push(&work, &["-q", "origin", "main"]);
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        c5,
        "push after a v0 fetch"
    );
    let shallow = clone_to(
        &git,
        "codestorage::repo",
        "v0-shallow",
        &["-q", "--depth", "1"],
    );
    assert_eq!(git.count_commits(&shallow, "HEAD"), 1, "--depth 1 over v0");
    git.fsck_strict(&work);
}

#[test]
fn the_long_form_names_the_server_itself() {
    let (w, seed) = World::seeded_mirror("team/app");
    // CODESTORAGE_URL points nowhere useful: the long form must not need it.
    let git = helper_git_at(&w, "http://127.0.0.1:9");
    let url = format!("codestorage::{}/team/app", w.server.base());

    assert_maps_eq(
        &ls_remote_map(&git, &url),
        &ls_remote_map(&w.git, &seed.url),
        "ls-remote through the long form",
    );
    let work = clone_to(&git, &url, "long", &["-q"]);
    assert_maps_eq(
        &git.remote_view(&work),
        &w.git.served_refs(&seed.bare),
        "clone through the long form",
    );
    git.fsck_strict(&work);

    let c4 = upstream_gains_a_commit(&w, &seed, 4);
    git.run(&work, &["pull", "-q", "--ff-only"]);
    assert_eq!(
        git.rev_parse(&work, "HEAD"),
        c4,
        "pull through the long form"
    );

    let c5 = git.commit_file(&work, "notes.txt", "long form\n", "c5 via the long form");
    git.push(&work, &["-q", "origin", "main"]);
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        c5,
        "push through the long form reached the upstream"
    );

    // The same with `.git` and a trailing slash on the server part.
    let url_git = format!("codestorage::{}/team/app.git", w.server.base());
    assert_eq!(
        ls_remote_map(&git, &url_git).get("refs/heads/main"),
        Some(&c5),
        "ls-remote through the long form with .git"
    );
}

#[test]
fn ephemeral_namespace_through_the_helper_never_reaches_the_upstream() {
    let (w, seed) = World::seeded_mirror("repo");
    let git = helper_git(&w);
    let upstream_before = w.git.refs(&seed.bare);
    let receive_packs_before = upstream_receive_pack(&w);

    let work = clone_to(&git, "codestorage::repo", "work", &["-q"]);
    git.run(
        &work,
        &["remote", "add", "eph", "codestorage::repo+ephemeral"],
    );
    let tip = git.commit_file(&work, "scratch.txt", "ephemeral work\n", "ephemeral commit");
    git.push(&work, &["-q", "eph", "HEAD:refs/heads/eph-work"]);
    git.push(&work, &["-q", "eph", "HEAD:refs/heads/main"]);

    // Visible in the ephemeral namespace, not in the default one, never upstream.
    let eph = ls_remote_map(&git, "codestorage::repo+ephemeral");
    assert_eq!(
        eph.get("refs/heads/eph-work"),
        Some(&tip),
        "ls-remote of the ephemeral namespace: {eph:?}"
    );
    let default = ls_remote_map(&git, "codestorage::repo");
    assert!(
        !default.contains_key("refs/heads/eph-work"),
        "the ephemeral branch shows in the default namespace: {default:?}"
    );
    assert_eq!(
        default.get("refs/heads/main"),
        Some(&seed.c3),
        "the default namespace's main moved"
    );
    assert_maps_eq(
        &w.git.refs(&seed.bare),
        &upstream_before,
        "the upstream after ephemeral pushes",
    );
    assert_eq!(
        upstream_receive_pack(&w),
        receive_packs_before,
        "an ephemeral push talked to the upstream's receive-pack: {:?}",
        w.upstream.request_log()
    );
    assert!(
        !w.git
            .try_run(&seed.bare, &["cat-file", "-e", &tip])
            .success(),
        "the ephemeral commit reached the upstream's object store"
    );

    // Clone and fetch of the ephemeral namespace.
    let eph_clone = clone_to(
        &git,
        "codestorage::repo+ephemeral",
        "eph-clone",
        &["-q", "-b", "eph-work"],
    );
    assert_eq!(git.rev_parse(&eph_clone, "HEAD"), tip, "ephemeral clone");
    git.fsck_strict(&eph_clone);
    let tip2 = git.commit_file(&work, "scratch.txt", "more\n", "ephemeral commit 2");
    git.push(&work, &["-q", "eph", "HEAD:refs/heads/eph-work"]);
    git.run(&eph_clone, &["fetch", "-q", "origin"]);
    assert_eq!(
        git.rev_parse(&eph_clone, "refs/remotes/origin/eph-work"),
        tip2,
        "fetch of the ephemeral namespace"
    );
    // The long form works for the namespace too.
    let long = format!("codestorage::{}/repo+ephemeral", w.server.base());
    assert_eq!(
        ls_remote_map(&git, &long).get("refs/heads/eph-work"),
        Some(&tip2),
        "ls-remote of the long form +ephemeral"
    );
    assert_eq!(
        upstream_receive_pack(&w),
        receive_packs_before,
        "the upstream saw receive-pack requests"
    );
}

// =====================================================================================
// 2. partial and shallow clones, leases, atomic pushes, push options
// =====================================================================================

#[test]
fn partial_clone_fetches_blobs_lazily_through_the_helper() {
    let (w, seed) = World::seeded_mirror("repo");
    let git = helper_git(&w);
    let work = clone_to(
        &git,
        "codestorage::repo",
        "partial",
        &["-q", "--filter=blob:none"],
    );
    assert_eq!(
        git.run(&work, &["config", "remote.origin.promisor"])
            .stdout
            .trim(),
        "true",
        "origin is a promisor remote"
    );
    let blob = git.rev_parse(&work, "refs/remotes/origin/feature/x:feature.txt");
    let missing = git
        .run(
            &work,
            &[
                "rev-list",
                "--objects",
                "--missing=print",
                "refs/remotes/origin/feature/x",
            ],
        )
        .stdout;
    assert!(
        missing.lines().any(|l| l == format!("?{blob}")),
        "feature.txt ({blob}) should be missing after a blob:none clone:\n{missing}"
    );

    // Checking out another branch fetches its blobs through codestorage::repo.
    git.run(&work, &["checkout", "-q", "feature/x"]);
    assert_eq!(
        std::fs::read_to_string(work.join("feature.txt")).expect("read feature.txt"),
        "feature work\n",
        "feature.txt after the lazy fetch"
    );
    let present = git
        .env("GIT_NO_LAZY_FETCH", "1")
        .try_run(&work, &["cat-file", "-e", &blob]);
    assert!(present.success(), "the lazily fetched blob is not stored");
    // Everything else on demand too: blame on main needs every version of src/lib.rs.
    git.run(
        &work,
        &[
            "log",
            "-p",
            "-q",
            "refs/remotes/origin/main",
            "--",
            "src/lib.rs",
        ],
    );
    git.fsck_strict(&work);
    assert_eq!(
        git.rev_parse(&work, "HEAD"),
        seed.feature,
        "HEAD after checkout"
    );
}

#[test]
fn shallow_clone_and_deepen_through_the_helper() {
    let (w, seed) = World::seeded_mirror("repo");
    let git = helper_git(&w);
    let work = clone_to(
        &git,
        "codestorage::repo",
        "shallow",
        &["-q", "--depth", "1"],
    );
    assert_eq!(
        git.run(&work, &["rev-parse", "--is-shallow-repository"])
            .stdout
            .trim(),
        "true",
        "a --depth 1 clone is shallow"
    );
    assert_eq!(
        git.count_commits(&work, "HEAD"),
        1,
        "commits after --depth 1"
    );
    assert_eq!(git.rev_parse(&work, "HEAD"), seed.c3, "HEAD");
    git.run(&work, &["fetch", "-q", "--deepen", "1"]);
    assert_eq!(
        git.count_commits(&work, "HEAD"),
        2,
        "commits after --deepen 1"
    );
    git.run(&work, &["fetch", "-q", "--unshallow"]);
    assert_eq!(
        git.count_commits(&work, "HEAD"),
        3,
        "commits after --unshallow"
    );
    git.fsck_strict(&work);
}

#[test]
fn force_with_lease_through_the_helper() {
    let (w, seed) = World::seeded_mirror("repo");
    let git = helper_git(&w);
    let work = clone_to(&git, "codestorage::repo", "lease", &["-q"]);

    // A rewrite of main with the right lease lands.
    git.run(&work, &["reset", "-q", "--hard", &seed.c2]);
    let rewritten = git.commit_file(&work, "rewrite.txt", "rewritten\n", "rewrite main");
    git.push(
        &work,
        &[
            "-q",
            &format!("--force-with-lease=main:{}", seed.c3),
            "origin",
            "main",
        ],
    );
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        rewritten,
        "main rewritten with a matching lease"
    );

    // A stale lease is refused and changes nothing.
    git.run(&work, &["reset", "-q", "--hard", &seed.c2]);
    let third = git.commit_file(&work, "rewrite.txt", "third\n", "third");
    let out = git.run_fail(
        &work,
        &[
            "push",
            &format!("--force-with-lease=main:{}", seed.c3),
            "origin",
            "main",
        ],
    );
    assert!(
        out.stderr.contains("stale info"),
        "a stale lease should be refused as stale info\n{}",
        out.describe()
    );
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        rewritten,
        "main after a refused lease"
    );
    // The implicit lease (remote-tracking ref) works as well.
    git.push(&work, &["-q", "--force-with-lease", "origin", "main"]);
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        third,
        "main after --force-with-lease with the tracking ref"
    );
}

#[test]
fn atomic_push_through_the_helper() {
    let (w, seed) = World::seeded_mirror("repo");
    // The upstream refuses refs/heads/blocked: with --atomic nothing may land.
    write_hook(
        &seed.bare,
        "update",
        "case \"$1\" in refs/heads/blocked) echo \"blocked by policy\" >&2; exit 1;; esac\nexit 0\n",
    );
    let git = helper_git(&w);
    let work = clone_to(&git, "codestorage::repo", "atomic", &["-q"]);
    let tip = git.commit_file(&work, "atomic.txt", "atomic\n", "atomic");

    let before = w.git.refs(&seed.bare);
    let out = git.run_fail(
        &work,
        &[
            "push",
            "--atomic",
            "origin",
            "HEAD:refs/heads/ok-1",
            "HEAD:refs/heads/blocked",
        ],
    );
    assert!(
        out.stderr.contains("atomic") || out.stderr.contains("blocked"),
        "why the atomic push failed should be shown\n{}",
        out.describe()
    );
    assert_maps_eq(
        &w.git.refs(&seed.bare),
        &before,
        "the upstream after a refused atomic push",
    );
    let served = ls_remote_map(&git, "codestorage::repo");
    assert!(
        !served.contains_key("refs/heads/ok-1"),
        "codestorage serves ok-1 after a refused atomic push: {served:?}"
    );

    // Both refs of a good atomic push land.
    git.push(
        &work,
        &[
            "-q",
            "--atomic",
            "origin",
            "HEAD:refs/heads/ok-1",
            "HEAD:refs/heads/ok-2",
        ],
    );
    for r in ["refs/heads/ok-1", "refs/heads/ok-2"] {
        assert_eq!(
            try_rev(&w.git, &seed.bare, r).as_deref(),
            Some(tip.as_str()),
            "{r} on the upstream after an atomic push"
        );
    }
}

#[test]
fn push_options_through_the_helper() {
    let (w, seed) = World::seeded_mirror("repo");
    w.git.run(
        &seed.bare,
        &["config", "receive.advertisePushOptions", "true"],
    );
    let record = w.git.unique_path("push-options");
    write_hook(
        &seed.bare,
        "pre-receive",
        &format!(
            "cat >/dev/null\n{{ echo \"count=${{GIT_PUSH_OPTION_COUNT:-unset}}\"; echo \"0=${{GIT_PUSH_OPTION_0:-}}\"; echo \"1=${{GIT_PUSH_OPTION_1:-}}\"; }} > '{}'\nexit 0\n",
            record.display()
        ),
    );
    let git = helper_git(&w);
    let work = clone_to(&git, "codestorage::repo", "options", &["-q"]);
    let tip = git.commit_file(&work, "opt.txt", "options\n", "with options");
    git.push(
        &work,
        &["-q", "-o", "foo=bar", "-o", "ci.skip", "origin", "main"],
    );
    let seen = std::fs::read_to_string(&record).unwrap_or_else(|e| {
        panic!(
            "the upstream's pre-receive hook did not run ({e})\n{}",
            w.server.logs()
        )
    });
    assert_eq!(
        seen, "count=2\n0=foo=bar\n1=ci.skip\n",
        "push options as the upstream hook saw them"
    );
    assert_eq!(w.git.rev_parse(&seed.bare, "refs/heads/main"), tip, "main");
}

// =====================================================================================
// 3. where the token comes from
// =====================================================================================

/// ls-remote, clone, fetch and push (a new branch `branch`) with `git`; asserts each worked.
#[track_caller]
fn round_trip(w: &World, seed: &Seed, git: &Git, branch: &str, what: &str) {
    let refs = ls_remote_map(git, "codestorage::repo");
    assert!(
        refs.contains_key("refs/heads/main"),
        "{what}: ls-remote: {refs:?}"
    );
    let work = clone_to(git, "codestorage::repo", branch, &["-q"]);
    git.run(&work, &["fetch", "-q", "origin"]);
    let tip = git.commit_file(&work, &format!("{branch}.txt"), branch, branch);
    git.push(
        &work,
        &["-q", "origin", &format!("HEAD:refs/heads/{branch}")],
    );
    assert_eq!(
        try_rev(&w.git, &seed.bare, &format!("refs/heads/{branch}")).as_deref(),
        Some(tip.as_str()),
        "{what}: the push reached the upstream"
    );
}

#[test]
fn tokens_from_the_data_dir_a_key_file_or_a_fixed_token_in_the_environment() {
    let (w, seed) = World::seeded_mirror("repo");
    let keys = w.server.data_dir().join("keys");

    round_trip(
        &w,
        &seed,
        &helper_git(&w),
        "from-data-dir",
        "CODESTORAGE_DATA_DIR",
    );

    let key_file = with_helper(&w.git)
        .env("CODESTORAGE_URL", w.server.base())
        .env("CODESTORAGE_KEY_FILE", keys.join("signing.pem"))
        .env("CODESTORAGE_ORG", data_dir_org(&w));
    round_trip(
        &w,
        &seed,
        &key_file,
        "from-key-file",
        "CODESTORAGE_KEY_FILE",
    );

    let kid = std::fs::read_to_string(keys.join("signing.kid")).expect("read signing.kid");
    let key_file_kid = key_file.env("CODESTORAGE_KID", kid.trim());
    round_trip(
        &w,
        &seed,
        &key_file_kid,
        "from-key-file-kid",
        "CODESTORAGE_KEY_FILE with CODESTORAGE_KID",
    );

    let token = w
        .server
        .mint(&["--repo", "repo", "--scopes", "git:write", "--ttl", "3600"]);
    let fixed = with_helper(&w.git)
        .env("CODESTORAGE_URL", w.server.base())
        .env("CODESTORAGE_TOKEN", &token);
    round_trip(&w, &seed, &fixed, "from-fixed-token", "CODESTORAGE_TOKEN");

    // A fixed token wins over a key: a garbage token with a valid data dir is refused.
    let garbage_wins = helper_git(&w).env("CODESTORAGE_TOKEN", "not-a-token");
    let out = garbage_wins.run_fail(garbage_wins.scratch(), &["ls-remote", "codestorage::repo"]);
    assert!(
        out.stderr.contains("HTTP 401"),
        "CODESTORAGE_TOKEN should take precedence over CODESTORAGE_DATA_DIR\n{}",
        out.describe()
    );
}

#[test]
fn tokens_and_server_from_git_config() {
    let (w, seed) = World::seeded_mirror("repo");
    let keys = w.server.data_dir().join("keys");
    let git = with_helper(&w.git);
    let global = |args: &[&str]| {
        let mut all = vec!["config", "--global"];
        all.extend_from_slice(args);
        git.run(git.scratch(), &all);
    };
    let data = w.server.data_dir().to_str().expect("utf-8 path").to_owned();

    // codestorage.url + codestorage.dataDir
    global(&["codestorage.url", w.server.base()]);
    global(&["codestorage.dataDir", &data]);
    round_trip(&w, &seed, &git, "config-data-dir", "codestorage.dataDir");
    global(&["--unset", "codestorage.dataDir"]);

    // codestorage.keyFile + codestorage.org
    global(&[
        "codestorage.keyFile",
        keys.join("signing.pem").to_str().expect("utf-8 path"),
    ]);
    global(&["codestorage.org", &data_dir_org(&w)]);
    round_trip(&w, &seed, &git, "config-key-file", "codestorage.keyFile");
    global(&["--unset", "codestorage.keyFile"]);
    global(&["--unset", "codestorage.org"]);

    // codestorage.token
    let token = w
        .server
        .mint(&["--repo", "repo", "--scopes", "git:write", "--ttl", "3600"]);
    global(&["codestorage.token", &token]);
    round_trip(&w, &seed, &git, "config-token", "codestorage.token");
    global(&["--unset", "codestorage.token"]);

    // The repository's own config counts too (the helper runs inside it).
    global(&["codestorage.dataDir", &data]);
    let work = clone_to(&git, "codestorage::repo", "local-config", &["-q"]);
    global(&["--unset", "codestorage.dataDir"]);
    global(&["--unset", "codestorage.url"]);
    let out = git.run_fail(&work, &["fetch", "origin"]);
    assert_error_mentions(
        &out,
        &["no codestorage token or key configured"],
        "fetch without any configuration",
    );
    git.run(&work, &["config", "codestorage.url", w.server.base()]);
    git.run(&work, &["config", "codestorage.dataDir", &data]);
    let c4 = upstream_gains_a_commit(&w, &seed, 4);
    git.run(&work, &["fetch", "-q", "origin"]);
    assert_eq!(
        git.rev_parse(&work, "refs/remotes/origin/main"),
        c4,
        "fetch with codestorage.url/.dataDir in the repository's config"
    );
    git.run(&work, &["merge", "-q", "--ff-only", "origin/main"]);
    let tip = git.commit_file(&work, "local.txt", "local config\n", "local config");
    git.push(&work, &["-q", "origin", "main"]);
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        tip,
        "push with the repository's config"
    );

    // The environment wins over git config.
    let env_wins = git.env("CODESTORAGE_URL", "http://127.0.0.1:9");
    let out = env_wins.run_fail(&work, &["ls-remote", "origin"]);
    assert!(
        out.stderr.contains("127.0.0.1:9"),
        "CODESTORAGE_URL should override codestorage.url\n{}",
        out.describe()
    );
}

// =====================================================================================
// 4. the tokens the server sees: least scope, an hour at most, the base repository
// =====================================================================================

#[test]
fn minted_tokens_have_the_least_scope_a_short_life_and_the_base_repo() {
    let (w, seed) = World::seeded_mirror("repo");
    let proxy = CaptureProxy::start(w.server.base());
    let git = helper_git_at(&w, proxy.base());
    let org = data_dir_org(&w);
    let read = ["git:read"];
    let write = ["git:write"];
    let mut all_tokens: Vec<BTreeSet<String>> = Vec::new();

    ls_remote_map(&git, "codestorage::repo");
    all_tokens.push(assert_minted(
        &proxy.take(),
        "repo",
        &read,
        &org,
        "ls-remote",
    ));

    let work = clone_to(&git, "codestorage::repo", "clone", &["-q"]);
    all_tokens.push(assert_minted(&proxy.take(), "repo", &read, &org, "clone"));

    upstream_gains_a_commit(&w, &seed, 4);
    git.run(&work, &["fetch", "-q", "origin"]);
    all_tokens.push(assert_minted(&proxy.take(), "repo", &read, &org, "fetch"));

    git.run(&work, &["pull", "-q", "--ff-only"]);
    all_tokens.push(assert_minted(&proxy.take(), "repo", &read, &org, "pull"));

    git.commit_file(&work, "scoped.txt", "scoped\n", "scoped push");
    git.push(&work, &["-q", "origin", "main"]);
    let captured = proxy.take();
    assert!(
        captured
            .iter()
            .any(|c| c.request.contains("git-receive-pack")),
        "the push did not go through the proxy: {captured:#?}"
    );
    all_tokens.push(assert_minted(&captured, "repo", &write, &org, "push"));

    // The ephemeral namespace: the token names the base repository.
    git.push(
        &work,
        &["-q", "codestorage::repo+ephemeral", "HEAD:refs/heads/eph"],
    );
    let captured = proxy.take();
    assert!(
        captured
            .iter()
            .all(|c| c.request.contains("/repo+ephemeral.git/")),
        "requests of a +ephemeral push: {captured:#?}"
    );
    all_tokens.push(assert_minted(
        &captured,
        "repo",
        &write,
        &org,
        "push to +ephemeral",
    ));
    ls_remote_map(&git, "codestorage::repo+ephemeral");
    all_tokens.push(assert_minted(
        &proxy.take(),
        "repo",
        &read,
        &org,
        "ls-remote of +ephemeral",
    ));
    clone_to(
        &git,
        "codestorage::repo+ephemeral",
        "eph-clone",
        &["-q", "-b", "eph"],
    );
    all_tokens.push(assert_minted(
        &proxy.take(),
        "repo",
        &read,
        &org,
        "clone of +ephemeral",
    ));

    // Lazy fetches of a partial clone are reads too.
    let partial = clone_to(
        &git,
        "codestorage::repo",
        "partial",
        &["-q", "--filter=blob:none", "--no-checkout"],
    );
    all_tokens.push(assert_minted(
        &proxy.take(),
        "repo",
        &read,
        &org,
        "partial clone",
    ));
    git.run(&partial, &["checkout", "-q", "feature/x"]);
    all_tokens.push(assert_minted(
        &proxy.take(),
        "repo",
        &read,
        &org,
        "lazy fetch",
    ));

    // A name with slashes, through the long form, is the repo claim as it is.
    w.server.mirror("team/app", &seed.url);
    let long = format!("codestorage::{}/team/app", proxy.base());
    ls_remote_map(&git, &long);
    all_tokens.push(assert_minted(
        &proxy.take(),
        "team/app",
        &read,
        &org,
        "ls-remote of team/app (long form)",
    ));

    // A fresh token for every git command.
    let mut seen = BTreeSet::new();
    for tokens in &all_tokens {
        for t in tokens {
            assert!(seen.insert(t.clone()), "a token was reused across commands");
        }
    }
}

#[test]
fn a_fixed_token_is_sent_as_it_is() {
    let (w, _seed) = World::seeded_mirror("repo");
    let proxy = CaptureProxy::start(w.server.base());
    let token = w
        .server
        .mint(&["--repo", "repo", "--scopes", "git:write", "--ttl", "600"]);
    let git = with_helper(&w.git)
        .env("CODESTORAGE_URL", proxy.base())
        .env("CODESTORAGE_TOKEN", &token);
    let work = clone_to(&git, "codestorage::repo", "fixed", &["-q"]);
    git.commit_file(&work, "fixed.txt", "fixed\n", "fixed token push");
    git.push(&work, &["-q", "origin", "main"]);
    let captured = proxy.take();
    for (sent, _) in claims_of(&captured, "fixed token") {
        assert_eq!(sent, token, "the configured token is what the server gets");
    }
}

// =====================================================================================
// 5. the token never leaks
// =====================================================================================

/// The tracing environment of the leak checks.
fn traced(git: &Git) -> Git {
    git.env("GIT_TRACE", "1")
        .env("GIT_TRACE_CURL", "1")
        .env("GIT_TRACE_PACKET", "1")
        .env("GIT_CURL_VERBOSE", "1")
        .env("GIT_TRACE2_PERF", "1")
}

/// Clone, fetch, push and ls-remote with `git` (traced and untraced); returns the clone and every
/// output.
#[track_caller]
fn leak_workout(w: &World, seed: &Seed, git: &Git, n: usize) -> (PathBuf, Vec<Out>) {
    let tgit = traced(git);
    let mut outs = Vec::new();
    let work = git.unique_path("leak");
    let dest = work.to_str().expect("utf-8 path");
    outs.push(tgit.run(git.scratch(), &["clone", "codestorage::repo", dest]));
    upstream_gains_a_commit(w, seed, n);
    outs.push(tgit.run(&work, &["fetch", "origin"]));
    outs.push(git.run(&work, &["fetch", "origin"]));
    outs.push(tgit.run(&work, &["pull", "--ff-only"]));
    outs.push(tgit.v0().run(&work, &["fetch", "origin"]));
    git.commit_file(&work, &format!("leak-{n}.txt"), "leak\n", "leak check");
    outs.push(tgit.run(&work, &["push", "origin", "main"]));
    git.commit_file(&work, &format!("leak-{n}.txt"), "leak 2\n", "leak check 2");
    outs.push(git.run(&work, &["push", "-v", "origin", "main"]));
    outs.push(tgit.run(
        &work,
        &["push", "codestorage::repo+ephemeral", "HEAD:refs/heads/eph"],
    ));
    outs.push(tgit.run(&work, &["ls-remote", "origin"]));
    outs.push(tgit.run(&work, &["remote", "-v", "show", "origin"]));
    (work, outs)
}

#[test]
fn minted_tokens_never_leak_into_files_config_or_traces() {
    let (w, seed) = World::seeded_mirror("repo");
    let proxy = CaptureProxy::start(w.server.base());
    let git = helper_git_at(&w, proxy.base());
    let (work, outs) = leak_workout(&w, &seed, &git, 4);

    let tokens: BTreeSet<String> = claims_of(&proxy.take(), "leak workout")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(
        tokens.len() >= 7,
        "expected a token per git command, got {}",
        tokens.len()
    );
    let secrets: Vec<String> = tokens.iter().flat_map(|t| secret_forms(t)).collect();

    // The traces did show the headers (so the check means something), redacted.
    let traces: String = outs.iter().map(|o| o.stderr.as_str()).collect();
    assert!(
        traces.contains("Authorization: Basic <redacted>"),
        "GIT_TRACE_CURL should show the Authorization header, redacted; traces:\n{}",
        crate::support::tail(&traces, 6000)
    );
    assert_no_secret_in_output(&outs, &secrets);
    assert_no_secret_at_rest(&git, &work, &secrets);
}

#[test]
fn a_fixed_token_never_leaks_into_files_config_or_traces() {
    let (w, seed) = World::seeded_mirror("repo");
    let token = w
        .server
        .mint(&["--repo", "repo", "--scopes", "git:write", "--ttl", "3600"]);
    let secrets = secret_forms(&token);

    // From the environment.
    let git = with_helper(&w.git)
        .env("CODESTORAGE_URL", w.server.base())
        .env("CODESTORAGE_TOKEN", &token);
    let (work, outs) = leak_workout(&w, &seed, &git, 4);
    assert_no_secret_in_output(&outs, &secrets);
    assert_no_secret_at_rest(&git, &work, &secrets);
    let traces: String = outs.iter().map(|o| o.stderr.as_str()).collect();
    assert!(
        traces.contains("Authorization: Basic <redacted>"),
        "GIT_TRACE_CURL should show the Authorization header, redacted"
    );

    // A failing command (a refused push: no write scope) does not print it either.
    let read_only = w
        .server
        .mint(&["--repo", "repo", "--scopes", "git:read", "--ttl", "3600"]);
    let ro = traced(&git).env("CODESTORAGE_TOKEN", &read_only);
    git.commit_file(&work, "refused.txt", "refused\n", "refused");
    let out = ro.run_fail(&work, &["push", "origin", "main"]);
    let mut all = secrets.clone();
    all.extend(secret_forms(&read_only));
    assert_no_secret_in_output(&[out], &all);
    let out = traced(&git)
        .env("CODESTORAGE_TOKEN", "garbage-token-value-0123456789")
        .run_fail(&work, &["fetch", "origin"]);
    assert_no_secret_in_output(&[out], &["garbage-token-value-0123456789".to_owned()]);
}

// =====================================================================================
// 6. errors a person can act on
// =====================================================================================

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    l.local_addr().expect("probe addr").port()
}

/// Asserts `out` failed with every one of `needles` in its stderr.
#[track_caller]
fn assert_error_mentions(out: &Out, needles: &[&str], what: &str) {
    assert!(
        !out.success(),
        "{what}: expected a failure\n{}",
        out.describe()
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "{what}: the error should mention {n:?}\n{}",
            out.describe()
        );
    }
}

#[test]
fn no_server_at_the_resolved_address() {
    let (w, _seed) = World::seeded_mirror("repo");
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");

    // The short form, through CODESTORAGE_URL.
    let git = helper_git_at(&w, &format!("http://{addr}"));
    let out = git.run_fail(git.scratch(), &["ls-remote", "codestorage::repo"]);
    assert_error_mentions(
        &out,
        &[&addr, "CODESTORAGE_URL", "codestorage serve"],
        "ls-remote with nothing listening",
    );
    let dest = git.unique_path("nothing");
    let out = git.run_fail(
        git.scratch(),
        &["clone", "codestorage::repo", dest.to_str().expect("utf-8")],
    );
    assert_error_mentions(
        &out,
        &[&addr, "CODESTORAGE_URL"],
        "clone with nothing listening",
    );
    assert!(!dest.exists(), "a failed clone left {}", dest.display());

    // The short form, through codestorage.url.
    let cfg = with_helper(&w.git).env("CODESTORAGE_DATA_DIR", w.server.data_dir());
    cfg.run(
        cfg.scratch(),
        &[
            "config",
            "--global",
            "codestorage.url",
            &format!("http://{addr}/"),
        ],
    );
    let out = cfg.run_fail(cfg.scratch(), &["ls-remote", "codestorage::repo"]);
    assert_error_mentions(
        &out,
        &[&addr, "CODESTORAGE_URL"],
        "codestorage.url unreachable",
    );
    cfg.run(
        cfg.scratch(),
        &["config", "--global", "--unset", "codestorage.url"],
    );

    // The long form, and a push.
    let out = git.run_fail(
        git.scratch(),
        &["ls-remote", &format!("codestorage::http://{addr}/repo")],
    );
    assert_error_mentions(&out, &[&addr], "long form with nothing listening");
    let work = clone_to(&helper_git(&w), "codestorage::repo", "work", &["-q"]);
    let out = git.run_fail(&work, &["push", "origin", "main"]);
    assert_error_mentions(
        &out,
        &[&addr, "CODESTORAGE_URL"],
        "push with nothing listening",
    );
}

#[test]
fn no_token_and_no_key_configured() {
    let (w, _seed) = World::seeded_mirror("repo");
    let git = with_helper(&w.git).env("CODESTORAGE_URL", w.server.base());
    for args in [
        vec!["ls-remote", "codestorage::repo"],
        vec!["clone", "codestorage::repo", "no-creds"],
    ] {
        let out = git.run_fail(git.scratch(), &args);
        assert_error_mentions(
            &out,
            &[
                "no codestorage token or key configured",
                "CODESTORAGE_TOKEN",
                "codestorage.token",
                "CODESTORAGE_KEY_FILE",
                "CODESTORAGE_DATA_DIR",
            ],
            &args.join(" "),
        );
    }

    // A key file without its organisation, and one that does not exist.
    let keys = w.server.data_dir().join("keys");
    let no_org = git.env("CODESTORAGE_KEY_FILE", keys.join("signing.pem"));
    let out = no_org.run_fail(git.scratch(), &["ls-remote", "codestorage::repo"]);
    assert_error_mentions(
        &out,
        &["codestorage.org", "CODESTORAGE_ORG"],
        "key file without an organisation",
    );
    let missing = keys.join("nope.pem");
    let out = git
        .env("CODESTORAGE_KEY_FILE", &missing)
        .env("CODESTORAGE_ORG", "local")
        .run_fail(git.scratch(), &["ls-remote", "codestorage::repo"]);
    assert_error_mentions(
        &out,
        &["cannot mint a token", missing.to_str().expect("utf-8")],
        "a key file that does not exist",
    );
    // A data dir without keys.
    let empty = git.unique_path("empty-data");
    std::fs::create_dir_all(&empty).expect("create an empty data dir");
    let out = git
        .env("CODESTORAGE_DATA_DIR", &empty)
        .run_fail(git.scratch(), &["ls-remote", "codestorage::repo"]);
    assert_error_mentions(&out, &["cannot mint a token"], "a data dir without keys");
}

#[test]
fn a_refused_token_shows_the_status_and_the_servers_message() {
    let (w, _seed) = World::seeded_mirror("repo");
    w.server.create_local("other");
    let base = with_helper(&w.git).env("CODESTORAGE_URL", w.server.base());

    // 401: garbage.
    let out = base
        .env("CODESTORAGE_TOKEN", "garbage")
        .run_fail(base.scratch(), &["ls-remote", "codestorage::repo"]);
    assert_error_mentions(
        &out,
        &["refused the token", "HTTP 401", "authentication required"],
        "a garbage token",
    );

    // 401: expired, signed by the right key.
    let signer = Signer::from_data_dir(w.server.data_dir());
    let expired = signer.token_with(Some("repo"), &["git:read", "git:write"], |c| {
        let now = jwt::now();
        c["iat"] = (now - 7200).into();
        c["exp"] = (now - 3600).into();
    });
    let out = base
        .env("CODESTORAGE_TOKEN", &expired)
        .run_fail(base.scratch(), &["ls-remote", "codestorage::repo"]);
    assert_error_mentions(
        &out,
        &["HTTP 401", "authentication required"],
        "an expired token",
    );
    let dest = base.unique_path("expired");
    let out = base.env("CODESTORAGE_TOKEN", &expired).run_fail(
        base.scratch(),
        &["clone", "codestorage::repo", dest.to_str().expect("utf-8")],
    );
    assert_error_mentions(&out, &["HTTP 401"], "clone with an expired token");

    // 403: a valid token for another repository.
    let foreign = w
        .server
        .mint(&["--repo", "other", "--scopes", "git:write", "--ttl", "600"]);
    let git = base.env("CODESTORAGE_TOKEN", &foreign);
    let out = git.run_fail(git.scratch(), &["ls-remote", "codestorage::repo"]);
    assert_error_mentions(
        &out,
        &[
            "refused the token",
            "HTTP 403",
            "token is for another repository",
        ],
        "a token for another repository",
    );
    let work = clone_to(&helper_git(&w), "codestorage::repo", "work", &["-q"]);
    let out = git.run_fail(&work, &["push", "origin", "main"]);
    assert_error_mentions(
        &out,
        &["HTTP 403", "token is for another repository"],
        "push with a token for another repository",
    );
}

#[test]
fn a_push_with_a_read_only_token_shows_the_status_and_the_servers_message() {
    let (w, seed) = World::seeded_mirror("repo");
    let read_only = w
        .server
        .mint(&["--repo", "repo", "--scopes", "git:read", "--ttl", "600"]);
    let git = with_helper(&w.git)
        .env("CODESTORAGE_URL", w.server.base())
        .env("CODESTORAGE_TOKEN", &read_only);
    let work = clone_to(&git, "codestorage::repo", "work", &["-q"]);
    git.commit_file(&work, "ro.txt", "read only\n", "read only");
    let out = git.run_fail(&work, &["push", "origin", "main"]);
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        seed.c3,
        "a read-only push changed the upstream"
    );
    // git's transport reports this one (the helper's check reads): the status and the
    // server's reason must both be there.
    assert_error_mentions(&out, &["403", "git:write"], "push with a git:read token");
}

#[test]
fn malformed_urls_are_refused_with_the_reason() {
    let (w, _seed) = World::seeded_mirror("repo");
    let git = helper_git(&w);
    for (url, reason) in [
        ("codestorage::team//x", "segments"),
        (
            "codestorage::https://user:pw@127.0.0.1:9/x",
            "no user or token in the URL",
        ),
        (
            "codestorage::https://tok@127.0.0.1:9/x",
            "no user or token in the URL",
        ),
        (
            "codestorage::ssh://host/x",
            "only codestorage://, https:// and http://",
        ),
        ("codestorage::../x", "segments"),
        ("codestorage::x.git.git", "must not end in .git"),
        ("codestorage::a b", "segments"),
        ("codestorage::+ephemeral", "no repository name"),
        ("codestorage::http:///x", "scheme://host[:port]/repo"),
    ] {
        let out = git.run_fail(git.scratch(), &["ls-remote", url]);
        let inner = url.strip_prefix("codestorage::").expect("prefix");
        // User-info is a credential: the message names the URL with it masked.
        let shown = match inner.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => {
                let (_, host) = rest.split_once('@').expect("user-info");
                format!("{scheme}://***@{host}")
            }
            _ => inner.to_string(),
        };
        assert_error_mentions(
            &out,
            &["malformed codestorage URL", &shown, reason],
            &format!("ls-remote {url}"),
        );
        assert!(
            !out.stderr.contains("pw@") && !out.stderr.contains("tok@"),
            "ls-remote {url}: the error leaks the URL's credentials: {}",
            out.stderr
        );
    }
    // A bad CODESTORAGE_URL names the setting.
    let out = git
        .env("CODESTORAGE_URL", "ftp://127.0.0.1:21")
        .run_fail(git.scratch(), &["ls-remote", "codestorage::repo"]);
    assert_error_mentions(
        &out,
        &["malformed codestorage URL", "CODESTORAGE_URL"],
        "CODESTORAGE_URL=ftp://...",
    );
}

#[test]
fn a_token_in_a_malformed_url_is_not_echoed() {
    let (w, _seed) = World::seeded_mirror("repo");
    let git = helper_git(&w);
    let token = w
        .server
        .mint(&["--repo", "repo", "--scopes", "git:read", "--ttl", "600"]);
    let hostport = w.server.base().trim_start_matches("http://").to_owned();
    for url in [
        format!("codestorage::http://t:{token}@{hostport}/repo"),
        format!("codestorage::https://{token}@{hostport}/repo"),
        format!("codestorage://t:{token}@{hostport}/repo"),
    ] {
        let out = git.run_fail(git.scratch(), &["ls-remote", &url]);
        assert_error_mentions(
            &out,
            &["malformed codestorage URL", "no user or token in the URL"],
            "a URL with credentials",
        );
        assert_no_secret_in_output(&[out], &secret_forms(&token));
    }
}

#[test]
fn an_unknown_repository_is_not_found() {
    let (w, _seed) = World::seeded_mirror("repo");
    let git = helper_git(&w);
    let out = git.run_fail(git.scratch(), &["ls-remote", "codestorage::no-such-repo"]);
    assert_error_mentions(&out, &["not found"], "ls-remote of an unknown repository");
}
