//! The harness itself, against the upstream directly (no codestorage needed): the CGI bridge
//! serves real git over v0 and v2 and takes pushes, the fault knobs work, pack capture lists the
//! right objects, the hand-made request bodies are valid, and every scenario the codestorage tests
//! run holds against `git http-backend` — so a failing codestorage test is codestorage's failure.

use std::time::{Duration, Instant};

use crate::support::git::pseudo_random_bytes;
use crate::support::http;
use crate::support::pkt::{self, UPLOAD_PACK_REQUEST};
use crate::support::{Git, Server, Upstream, assert_maps_eq, seed_repo};
use crate::{clone, fetch};

/// A git runner, an upstream and the seeded repo `repo` on it.
fn seeded() -> (Git, Upstream, crate::support::Seed) {
    let git = Git::new();
    let upstream = Upstream::start();
    let seed = seed_repo(&git, &upstream, "repo");
    (git, upstream, seed)
}

#[test]
fn seed_repo_publishes_branches_tags_and_head_to_the_upstream() {
    let (git, _upstream, seed) = seeded();
    let refs = git.served_refs(&seed.bare);
    let tag_object = git.rev_parse(&seed.bare, "refs/tags/v1.0");
    let expected = [
        ("HEAD", "ref: refs/heads/main"),
        ("refs/heads/main", seed.c3.as_str()),
        ("refs/heads/feature/x", seed.feature.as_str()),
        ("refs/tags/v1.0", tag_object.as_str()),
        ("refs/tags/light", seed.c2.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_maps_eq(&refs, &expected, "seeded upstream refs");
    assert_ne!(tag_object, seed.c1, "v1.0 is an annotated tag object");
    assert_eq!(
        git.rev_parse(&seed.bare, "v1.0^{commit}"),
        seed.c1,
        "v1.0 points at c1"
    );
}

#[test]
fn seeds_made_by_separate_runners_have_identical_object_ids() {
    let upstream = Upstream::start();
    let a = seed_repo(&Git::new(), &upstream, "a");
    let b = seed_repo(&Git::new(), &upstream, "b");
    assert_eq!(
        (&a.c1, &a.c3, &a.feature),
        (&b.c1, &b.c3, &b.feature),
        "fixed identities and dates"
    );
}

#[test]
fn upstream_serves_protocol_v2_clones_equal_to_the_bare_repo() {
    let (git, _upstream, seed) = seeded();
    let trace = git.unique_path("trace");
    let traced = git.v2().env("GIT_TRACE_PACKET", &trace);
    traced.run(git.scratch(), &["ls-remote", &seed.url]);
    let trace = std::fs::read_to_string(&trace).expect("packet trace");
    assert!(
        trace.contains("version 2"),
        "the upstream answers v2 when asked:\n{trace}"
    );
    assert!(
        trace.contains("command=ls-refs"),
        "v2 ls-refs was used:\n{trace}"
    );
    clone::check_clone(&git.v2(), &seed, &seed.url);
    clone::check_ls_remote(&git.v2(), &seed, &seed.url);
}

#[test]
fn upstream_serves_protocol_v0_clones_equal_to_the_bare_repo() {
    let (git, _upstream, seed) = seeded();
    let trace = git.unique_path("trace");
    git.v0()
        .env("GIT_TRACE_PACKET", &trace)
        .run(git.scratch(), &["ls-remote", &seed.url]);
    let trace = std::fs::read_to_string(&trace).expect("packet trace");
    assert!(
        !trace.contains("command=ls-refs"),
        "v0 has no ls-refs:\n{trace}"
    );
    assert!(
        trace.contains("multi_ack_detailed"),
        "v0 capabilities advertised:\n{trace}"
    );
    clone::check_clone(&git.v0(), &seed, &seed.url);
    clone::check_ls_remote(&git.v0(), &seed, &seed.url);
}

#[test]
fn pushing_a_large_pack_over_http_updates_the_upstream() {
    let (git, upstream, seed) = seeded();
    let work = git.unique_path("pusher");
    git.clone(&seed.url, &work, &[]);
    // 2 MiB of incompressible data: more than http.postBuffer, so git streams it chunked.
    let tip = git.commit_file(
        &work,
        "blob.bin",
        pseudo_random_bytes(2 << 20, 3),
        "big push",
    );
    let before = upstream.requests();
    git.push(&work, &["-q", "origin", "main"]);
    assert!(upstream.requests() > before, "the push went over HTTP");
    assert_eq!(
        git.rev_parse(&seed.bare, "refs/heads/main"),
        tip,
        "upstream main after push"
    );
    git.fsck_strict(&seed.bare);
}

#[test]
fn repos_and_branches_with_slashes_are_served() {
    let git = Git::new();
    let upstream = Upstream::start();
    let seed = seed_repo(&git, &upstream, "team/project");
    assert!(seed.url.ends_with("/team/project.git"), "URL: {}", seed.url);
    clone::check_clone(&git, &seed, &seed.url);
}

#[test]
fn delay_knob_slows_response_bodies_until_turned_off() {
    let (git, upstream, seed) = seeded();
    upstream.set_delay_per_chunk(Duration::from_millis(300));
    let started = Instant::now();
    // v2 ls-remote: GET info/refs and POST ls-refs, each with at least one delayed piece.
    git.v2().ls_remote(&seed.url);
    let slow = started.elapsed();
    assert!(
        slow >= Duration::from_millis(600),
        "ls-remote took {slow:?} with a 300 ms delay per piece"
    );

    upstream.set_delay_per_chunk(Duration::ZERO);
    let started = Instant::now();
    git.v2().ls_remote(&seed.url);
    let fast = started.elapsed();
    assert!(
        fast < slow,
        "turning the delay off speeds it up ({fast:?} vs {slow:?})"
    );
}

#[test]
fn fail_knob_answers_every_request_with_its_status_and_requests_are_counted() {
    let (git, upstream, seed) = seeded();
    let before = upstream.requests();
    git.ls_remote(&seed.url);
    assert!(upstream.requests() > before, "ls-remote is counted");
    assert!(
        upstream
            .request_log()
            .iter()
            .any(|r| r.starts_with("GET /repo.git/info/refs?service=git-upload-pack")),
        "request log: {:?}",
        upstream.request_log()
    );

    upstream.set_fail(Some(500));
    let out = git.run_fail(git.scratch(), &["ls-remote", &seed.url]);
    assert!(
        out.stderr.contains("500"),
        "git reports the injected status\n{}",
        out.describe()
    );
    // git prints a text/plain error body as `remote: ...`: the 409/502 tests rely on this.
    assert!(
        out.stderr
            .contains("remote: upstream failure injected by the test"),
        "git shows a text/plain error body\n{}",
        out.describe()
    );
    let resp = http::request(
        &upstream.base(),
        "GET",
        "/repo.git/info/refs?service=git-upload-pack",
        &[],
        None,
    );
    assert_eq!(
        resp.status,
        500,
        "raw request under set_fail: {}",
        resp.describe()
    );

    upstream.set_fail(None);
    git.ls_remote(&seed.url);
}

#[test]
fn basic_auth_knob_lets_only_listed_credentials_in() {
    let (git, upstream, seed) = seeded();
    let file = git.scratch().join("upstream-auth.txt");
    std::fs::write(&file, "x-access-token:good\n").expect("write the credentials file");
    upstream.require_basic_auth_check(Some(codestorage_tests::cgi::basic_auth_file(file.clone())));
    let path = "/repo.git/info/refs?service=git-upload-pack";
    let resp = http::request(&upstream.base(), "GET", path, &[], None);
    assert_eq!(resp.status, 401, "anonymous: {}", resp.describe());
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Basic")),
        "a Basic challenge: {:?}",
        resp.headers
    );
    let with = |cred: &str| seed.url.replacen("http://", &format!("http://{cred}@"), 1);
    git.ls_remote(&with("x-access-token:good"));
    git.run_fail(git.scratch(), &["ls-remote", &with("x-access-token:bad")]);
    // The file is read per request: rotating it takes effect at once.
    std::fs::write(&file, "x-access-token:rotated\n").expect("rewrite the credentials file");
    git.run_fail(git.scratch(), &["ls-remote", &with("x-access-token:good")]);
    git.ls_remote(&with("x-access-token:rotated"));
    upstream.require_basic_auth(None);
    git.ls_remote(&seed.url);
}

#[test]
fn unknown_upstream_repo_is_not_found() {
    let upstream = Upstream::start();
    let resp = http::request(
        &upstream.base(),
        "GET",
        "/nope.git/info/refs?service=git-upload-pack",
        &[],
        None,
    );
    assert_eq!(resp.status, 404, "unknown repo: {}", resp.describe());
}

#[test]
fn git_failures_panic_with_the_command_and_its_stderr() {
    let git = Git::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        git.run(git.scratch(), &["rev-parse", "--verify", "HEAD"])
    }));
    let panic = result.expect_err("git run in a non-repo must panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("rev-parse --verify HEAD"),
        "the command line is shown: {message}"
    );
    assert!(
        message.contains("not a git repository"),
        "git's stderr is shown: {message}"
    );
}

/// The received-pack capture lists exactly `rev-list --objects NEW --not OLD` for git's own packs
/// (thin-pack bases appended by `--fix-thin` left out).
fn pack_capture_matches_rev_list(protocol: u8) {
    let (git, _upstream, seed) = seeded();
    let got = fetch::incremental_fetch(&git.protocol(protocol), &seed, &seed.url, &|| {});
    assert!(
        got.expected.len() >= 8,
        "the update has commits, trees, blobs and a tag: {:?}",
        got.expected
    );
    assert!(
        got.thin_bases > 0,
        "git sent a thin pack, so base completion was exercised and left out"
    );
    fetch::assert_same_objects(&got.received, &got.expected, "captured pack vs rev-list");
}

#[test]
fn pack_capture_of_an_incremental_v2_fetch_equals_rev_list_objects() {
    pack_capture_matches_rev_list(2);
}

#[test]
fn pack_capture_of_an_incremental_v0_fetch_equals_rev_list_objects() {
    pack_capture_matches_rev_list(0);
}

#[test]
fn crafted_upload_pack_requests_get_packs_or_errors_from_real_git() {
    let (git, upstream, seed) = seeded();
    let post = |body: &[u8], v2: bool, gzip: bool| {
        let mut headers = vec![("Content-Type", UPLOAD_PACK_REQUEST)];
        if v2 {
            headers.push(("Git-Protocol", "version=2"));
        }
        let body = if gzip {
            headers.push(("Content-Encoding", "gzip"));
            pkt::gzip(body)
        } else {
            body.to_vec()
        };
        http::request(
            &upstream.base(),
            "POST",
            "/repo.git/git-upload-pack",
            &headers,
            Some(&body),
        )
    };

    let ls = post(&pkt::v2_ls_refs(), true, false);
    assert_eq!(ls.status, 200, "v2 ls-refs: {}", ls.describe());
    assert!(
        ls.text().contains("refs/heads/main"),
        "ls-refs lists main: {}",
        ls.describe()
    );
    for (v2, gzip) in [(true, false), (true, true), (false, false), (false, true)] {
        let body = if v2 {
            pkt::v2_fetch(&[&seed.c3])
        } else {
            pkt::v0_want(&[&seed.c3])
        };
        let resp = post(&body, v2, gzip);
        assert_eq!(
            resp.status,
            200,
            "fetch (v2={v2}, gzip={gzip}): {}",
            resp.describe()
        );
        assert!(
            pkt::has_pack(&resp.body),
            "fetch (v2={v2}, gzip={gzip}) sends a pack: {}",
            resp.describe()
        );
    }
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    for v2 in [true, false] {
        let body = if v2 {
            pkt::v2_fetch(&[unknown])
        } else {
            pkt::v0_want(&[unknown])
        };
        let resp = post(&body, v2, false);
        assert!(
            pkt::has_err(&resp.body),
            "want of an unknown id (v2={v2}) is an ERR: {}",
            resp.describe()
        );
    }

    // c3 unreachable after rewriting main: v0 refuses it (allowReachableSHA1InWant checks).
    fetch::rewrite_main(&git, &seed);
    seed.publish(&git);
    let resp = post(&pkt::v0_want(&[&seed.c3]), false, false);
    assert!(
        pkt::has_err(&resp.body),
        "v0 want of an unreachable commit is an ERR: {}",
        resp.describe()
    );
    // Note: git 2.47's v2 upload-pack checks only that a wanted object exists, so it *does* send the
    // unreachable c3 over v2. codestorage must not (objects are shared between namespaces; DESIGN.md
    // "check wants against reachability"), so `bad_input` expects a refusal for both protocols.
}

/// A stand-in for `codestorage` (a shell script): logs its arguments to stderr; `serve` prints a
/// log line and the `listening on` line, then sleeps until signalled; other commands print and
/// exit 0. `exit-early` as an extra serve argument makes it exit 3 before listening.
const FAKE_SERVER: &str = r#"#!/bin/sh
echo "args: $*" >&2
case "$*" in
  *exit-early*) echo "giving up" >&2; exit 3 ;;
  *" serve "*) echo "INFO booting"; echo "listening on http://127.0.0.1:9"; exec sleep 600 ;;
  *) echo "ran: $*"; exit 0 ;;
esac
"#;

fn fake_server_binary(git: &Git) -> std::path::PathBuf {
    let path = git.path("fake-codestorage");
    std::fs::write(&path, FAKE_SERVER).expect("write fake server");
    let status = std::process::Command::new("chmod")
        .args(["+x"])
        .arg(&path)
        .status()
        .expect("chmod");
    assert!(status.success(), "chmod +x the fake server");
    path
}

#[test]
fn server_harness_follows_the_cli_contract_with_a_fake_binary() {
    let git = Git::new();
    let fake = fake_server_binary(&git);
    let mut server = Server::builder().binary(&fake).sync_interval(7).start();
    assert_eq!(
        server.base(),
        "http://127.0.0.1:9",
        "base parsed from the listening line"
    );
    assert_eq!(
        server.git_url_plain("team/p"),
        "http://127.0.0.1:9/team/p.git",
        "git URL"
    );
    let data = server.data_dir().display().to_string();
    let expected_serve = format!(
        "args: --data-dir {data} serve --listen 127.0.0.1:0 --allow-http-upstream --sync-interval 7"
    );
    wait_for_log(&server, &expected_serve);

    let out = server.cli(&["repo", "list"]);
    assert!(out.success(), "fake CLI run\n{}", out.describe());
    assert_eq!(
        out.stdout.trim(),
        format!("ran: --server http://127.0.0.1:9 --data-dir {data} repo list"),
        "CLI arguments"
    );

    server.stop();
    assert!(!server.is_running(), "stopped by SIGTERM");
    let fsck = server.fsck();
    assert_eq!(
        fsck.stdout.trim(),
        format!("ran: --data-dir {data} fsck"),
        "fsck arguments"
    );

    server.restart();
    assert!(server.is_running(), "restarted");
    server.kill();
    assert!(!server.is_running(), "killed");
    server.restart();
    assert!(
        server.logs().contains("===== restart ====="),
        "logs span restarts:\n{}",
        server.logs()
    );
}

#[test]
fn server_harness_reports_a_server_that_exits_before_listening() {
    let git = Git::new();
    let fake = fake_server_binary(&git);
    let result =
        std::panic::catch_unwind(|| Server::builder().binary(&fake).arg("exit-early").start());
    let panic = result
        .err()
        .expect("starting a server that exits must panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("exited (exit status: 3)"),
        "exit status shown: {message}"
    );
    assert!(
        message.contains("giving up"),
        "server stderr shown: {message}"
    );
}

/// Waits until the server's logs contain `needle` (the output readers are threads).
fn wait_for_log(server: &Server, needle: &str) {
    crate::support::wait_until(
        Duration::from_secs(10),
        &format!("server log line {needle:?}"),
        || server.logs().contains(needle).then_some(()),
    );
}

// ---- the codestorage scenarios, against git http-backend ----

#[test]
fn shallow_scenarios_hold_against_git_http_backend() {
    let (git, _upstream, seed) = seeded();
    for g in [git.v2(), git.v0()] {
        clone::check_shallow_deepen_unshallow(&g, &seed, &seed.url);
        clone::check_shallow_since(&g, &seed, &seed.url);
    }
}

#[test]
fn partial_clone_scenarios_hold_against_git_http_backend() {
    let (git, _upstream, seed) = seeded();
    clone::check_blob_none(&git.v2(), &seed, &seed.url);
    clone::check_blob_none(&git.v0(), &seed, &seed.url);
    clone::check_blob_limit(&git.v2(), &seed, &seed.url);
    clone::check_tree_0(&git.v2(), &seed, &seed.url);
}

#[test]
fn empty_clone_scenario_holds_against_git_http_backend() {
    let git = Git::new();
    let upstream = Upstream::start();
    upstream.create_bare("empty");
    clone::check_empty_clone(&git.v2(), &upstream.url("empty"));
    clone::check_empty_clone(&git.v0(), &upstream.url("empty"));
}

#[test]
fn fetch_scenarios_hold_against_git_http_backend() {
    for protocol in [2, 0] {
        let (git, _upstream, seed) = seeded();
        fetch::check_fetch_after_new_commits(&git.protocol(protocol), &seed, &seed.url, &|| {});
    }
    for protocol in [2, 0] {
        let (git, _upstream, seed) = seeded();
        fetch::check_force_push_and_branch_deletion(
            &git.protocol(protocol),
            &seed,
            &seed.url,
            &|| {},
        );
    }
}

#[test]
fn tag_following_scenario_holds_against_git_http_backend() {
    for protocol in [2, 0] {
        let (git, _upstream, seed) = seeded();
        fetch::check_tag_following(&git.protocol(protocol), &seed, &seed.url, &|| {});
    }
}
