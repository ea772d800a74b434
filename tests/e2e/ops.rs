//! Operability: `/metrics` moving with real traffic (requests by route template and status,
//! bytes served, packs generated, sync runs and failures, forwarded pushes), `/healthz` and
//! `/readyz` without a token, `--metrics-listen`, `--log-format json`, sync progress in the log
//! and in the repository record, and graceful shutdown on SIGTERM (a forwarded push and a sync
//! in flight finish, `/readyz` turns 503, the deadline interrupts what does not finish).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::git::pseudo_random_bytes;
use crate::support::http;
use crate::support::server::{Server, SyncState};
use crate::support::{SYNC_TIMEOUT, World, seed_repo, wait_until};

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[track_caller]
fn scrape(base: &str) -> BTreeMap<String, f64> {
    let resp = http::request(base, "GET", "/metrics", &[], None);
    assert_eq!(resp.status, 200, "GET /metrics: {}", resp.describe());
    parse_metrics(&resp.text())
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// The sum of every sample of metric `name` (all label sets).
fn sum(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// The `--metrics-listen` base URL the server printed (the line may follow `listening on`).
#[track_caller]
fn metrics_base(server: &Server) -> String {
    wait_until(
        Duration::from_secs(10),
        "a `metrics on` line on stdout",
        || {
            server
                .stdout()
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("metrics on "))
                .map(|l| l.trim().trim_end_matches("/metrics").to_owned())
        },
    )
}

fn sigterm(server: &Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

#[test]
fn metrics_move_with_clones_syncs_failures_and_pushes() {
    let (w, seed) = World::seeded_mirror("team/repo");
    let base = w.server.base().to_owned();
    let before = scrape(&base);

    let work = w.git.unique_path("clone");
    w.git.clone(&w.server.git_url("team/repo"), &work, &["-q"]);
    w.git.fsck_strict(&work);
    let after = scrape(&base);
    let post = r#"codestorage_http_requests_total{method="POST",route="/{repo}/git-upload-pack",status="200"}"#;
    assert!(
        get(&after, post) > get(&before, post),
        "upload-pack POSTs counted: {after:?}"
    );
    let bytes = r#"codestorage_http_response_bytes_total{route="/{repo}/git-upload-pack"}"#;
    assert!(
        get(&after, bytes) >= get(&before, bytes) + 4096.0,
        "the pack's bytes (a 4 KiB random blob at least) counted: {after:?}"
    );
    assert!(
        sum(&after, "codestorage_packs_generated_total")
            > sum(&before, "codestorage_packs_generated_total"),
        "a pack generated: {after:?}"
    );
    assert!(
        get(&after, "codestorage_pack_generation_seconds_count")
            > get(&before, "codestorage_pack_generation_seconds_count"),
        "pack generation timed: {after:?}"
    );
    assert!(get(&after, "codestorage_pack_objects_total") > 0.0);
    // Route templates only: no raw repository path in any label.
    assert!(
        after.keys().all(|k| !k.contains("team/repo.git")),
        "raw paths in labels: {after:?}"
    );

    // A 404 is counted under `other`.
    let missing = w
        .server
        .request_anonymous("GET", "/no/such/thing", None, &[]);
    assert_eq!(missing.status, 404);
    let m = scrape(&base);
    assert!(
        get(
            &m,
            r#"codestorage_http_requests_total{method="GET",route="other",status="404"}"#
        ) >= 1.0
    );

    // Syncs: runs, then a failure.
    let runs = r#"codestorage_sync_runs_total{repo="team/repo"}"#;
    let failures = r#"codestorage_sync_failures_total{repo="team/repo"}"#;
    let lag = r#"codestorage_sync_lag_seconds{repo="team/repo"}"#;
    let m0 = scrape(&base);
    assert!(get(&m0, runs) >= 1.0, "the first sync counted: {m0:?}");
    assert!(m0.contains_key(lag), "lag of a synced mirror: {m0:?}");
    assert!(get(&m0, lag) < 60.0, "lag just after a sync: {m0:?}");
    w.server.sync_now("team/repo");
    let m1 = scrape(&base);
    assert_eq!(get(&m1, runs), get(&m0, runs) + 1.0, "one more run: {m1:?}");
    assert_eq!(get(&m1, failures), get(&m0, failures));
    w.upstream.set_fail(Some(500));
    let err = w.server.try_sync_now("team/repo");
    assert!(
        err.is_err(),
        "the sync fails while the upstream answers 500"
    );
    w.upstream.set_fail(None);
    let m2 = scrape(&base);
    assert_eq!(get(&m2, runs), get(&m1, runs) + 1.0, "{m2:?}");
    assert_eq!(
        get(&m2, failures),
        get(&m1, failures) + 1.0,
        "a failure: {m2:?}"
    );

    // A forwarded push.
    let accepted = r#"codestorage_push_forwards_total{outcome="accepted"}"#;
    w.git
        .commit_file(&work, "pushed.txt", "through the mirror\n", "pushed");
    w.git.push(&work, &["-q", "origin", "HEAD:main"]);
    let m3 = scrape(&base);
    assert_eq!(get(&m3, accepted), get(&m2, accepted) + 1.0, "{m3:?}");
    assert_eq!(
        w.git.rev_parse(&seed.bare, "main"),
        w.git.rev_parse(&work, "HEAD"),
        "the push reached the upstream"
    );
    assert!(m3.contains_key("codestorage_webhook_queue_depth"));

    // Deleted repositories leave no series behind.
    let del = w
        .server
        .request("DELETE", &Server::repo_path("team/repo", ""), None, &[]);
    assert!(del.status < 300, "delete: {}", del.describe());
    let m4 = scrape(&base);
    assert!(
        !m4.keys().any(|k| k.contains("repo=\"team/repo\"")),
        "series of a deleted repository: {m4:?}"
    );
}

#[test]
fn health_readiness_and_metrics_need_no_token() {
    let w = World::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = w.server.request_anonymous("GET", path, None, &[]);
        assert_eq!(resp.status, 200, "{path}: {}", resp.describe());
    }
    let resp = w.server.request_anonymous("GET", "/metrics", None, &[]);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = resp.text();
    assert!(text.contains("# TYPE codestorage_http_requests_total counter"));
    assert!(text.contains("# TYPE codestorage_pack_generation_seconds histogram"));
    // An API route still needs one.
    let api = w.server.request_anonymous("GET", "/api/repos", None, &[]);
    assert_eq!(api.status, 401, "{}", api.describe());
}

#[test]
fn metrics_listen_moves_metrics_off_the_main_listener() {
    let w = World::with_server(Server::builder().arg("--metrics-listen").arg("127.0.0.1:0"));
    let ops = metrics_base(&w.server);
    assert_ne!(ops, w.server.base());
    let main = w.server.request_anonymous("GET", "/metrics", None, &[]);
    assert_eq!(main.status, 404, "main listener: {}", main.describe());
    let m = scrape(&ops);
    assert!(m.contains_key("codestorage_webhook_queue_depth"), "{m:?}");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http::request(&ops, "GET", path, &[], None).status, 200);
        assert_eq!(
            w.server.request_anonymous("GET", path, None, &[]).status,
            200,
            "{path} stays on the main listener"
        );
    }
    let other = http::request(&ops, "GET", "/api/repos", &[], None);
    assert_eq!(other.status, 404, "only the ops routes there");
}

#[test]
fn an_unusable_metrics_address_fails_the_start_with_a_clear_error() {
    let mut w = World::new();
    w.server.stop();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = w.server.data_cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &addr,
    ]);
    assert!(!out.success(), "must not start: {}", out.describe());
    assert!(
        out.stderr
            .contains(&format!("binding --metrics-listen {addr}")),
        "{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("listening on"),
        "nothing announced before the failure: {}",
        out.describe()
    );
    let bad = w.server.data_cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "nowhere",
    ]);
    assert!(!bad.success());
    assert!(
        bad.stderr.contains("--metrics-listen"),
        "{}",
        bad.describe()
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (w, _seed) =
        World::seeded_mirror_with("repo", Server::builder().arg("--log-format").arg("json"));
    let work = w.git.unique_path("clone");
    w.git.clone(&w.server.git_url("repo"), &work, &["-q"]);
    let log = w.server.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "some log lines: {log}");
    let mut messages = Vec::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nlog:\n{log}"));
        for field in ["level", "target", "message", "timestamp"] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
        messages.push(v["message"].as_str().unwrap_or_default().to_owned());
        if v["message"] == "sync succeeded" {
            assert_eq!(v["level"], "INFO");
            assert!(v["objects"].is_u64(), "event fields kept: {line}");
            let spans = v["spans"].as_array().expect("spans");
            assert!(
                spans
                    .iter()
                    .any(|s| s["name"] == "sync" && s["repo"] == "repo"),
                "span fields kept: {line}"
            );
        }
    }
    assert!(
        messages.iter().any(|m| m == "sync succeeded"),
        "{messages:?}"
    );
}

#[test]
fn a_long_sync_shows_progress_in_the_log_and_the_record() {
    let w = World::with_server(Server::builder().arg("--sync-progress-interval").arg("1"));
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.git.commit_file(
        &seed.work,
        "payload.bin",
        pseudo_random_bytes(96 << 10, 5),
        "payload",
    );
    seed.publish(&w.git);
    // ~100 KiB in 1 KiB pieces 40 ms apart: about 4 s of receiving.
    w.upstream.set_delay_per_chunk(Duration::from_millis(40));
    w.server.create_mirror("repo", &seed.url);
    let progress = wait_until(SYNC_TIMEOUT, "sync.progress with bytes received", || {
        let record = w.server.repo("repo");
        let p = record["sync"]["progress"].clone();
        (p["bytes_received"].as_u64().unwrap_or(0) > 0).then_some(p)
    });
    assert_eq!(progress["phase"], "receiving", "{progress}");
    let total = progress["objects_total"].as_u64().unwrap_or(0);
    assert!(total > 0, "{progress}");
    // Objects are counted as they are indexed, before the pack is complete.
    let partial = wait_until(SYNC_TIMEOUT, "sync.progress.objects_received > 0", || {
        let p = w.server.repo("repo")["sync"]["progress"].clone();
        let n = p["objects_received"].as_u64().unwrap_or(0);
        (n > 0).then_some(n)
    });
    assert!(partial <= total, "{partial} of {total}");
    let record = w.server.wait_synced("repo");
    assert!(
        record["sync"].get("progress").is_none(),
        "no progress after the run: {record}"
    );
    w.upstream.set_delay_per_chunk(Duration::ZERO);
    let log = w.server.stderr();
    assert!(
        log.lines().any(|l| l.contains("sync progress")
            && l.contains("bytes_received=")
            && l.contains("objects_received=")),
        "a progress line in the log:\n{log}"
    );
}

#[test]
fn sigterm_lets_an_in_flight_push_finish_and_refuses_new_work() {
    let (mut w, seed) = World::seeded_mirror_with(
        "repo",
        Server::builder()
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .arg("--shutdown-timeout")
            .arg("15"),
    );
    let ops = metrics_base(&w.server);
    let work = w.git.unique_path("clone");
    w.git.clone(&w.server.git_url("repo"), &work, &["-q"]);
    let tip = w.git.commit_file(
        &work,
        "big.bin",
        pseudo_random_bytes(256 << 10, 9),
        "a push in flight at SIGTERM",
    );
    let pushes_before = w.upstream.request_log().len();
    // The upstream answers slowly: the forwarded push is still waiting for its report when
    // SIGTERM arrives.
    w.upstream.set_delay_per_chunk(Duration::from_millis(1500));
    let main = w.server.base().to_owned();
    let push = {
        let (git, work) = (Clone::clone(&w.git), work.clone());
        std::thread::spawn(move || git.try_run(&work, &["push", "-q", "origin", "HEAD:main"]))
    };
    wait_until(
        SYNC_TIMEOUT,
        "the forwarded push to reach the upstream",
        || {
            w.upstream.request_log()[pushes_before..]
                .iter()
                .any(|l| l.starts_with("POST") && l.contains("git-receive-pack"))
                .then_some(())
        },
    );
    assert!(!push.is_finished(), "the push must still be in flight");
    let signalled = Instant::now();
    sigterm(&w.server);
    wait_until(Duration::from_secs(5), "/readyz to answer 503", || {
        (http::request(&ops, "GET", "/readyz", &[], None).status == 503).then_some(())
    });
    assert!(
        !push.is_finished(),
        "still in flight while the server drains"
    );
    let addr = main.trim_start_matches("http://").to_owned();
    wait_until(
        Duration::from_secs(5),
        "new connections to be refused",
        || std::net::TcpStream::connect(&addr).is_err().then_some(()),
    );
    w.upstream.set_delay_per_chunk(Duration::ZERO);
    let out = push.join().expect("push thread");
    assert!(
        out.success(),
        "the push finished during shutdown\n{}\n{}",
        out.describe(),
        w.server.logs()
    );
    let status = w.server.stop();
    assert!(
        status.success(),
        "exit status {status}\n{}",
        w.server.logs()
    );
    assert!(signalled.elapsed() < Duration::from_secs(15));
    assert_eq!(
        w.git.rev_parse(&seed.bare, "main"),
        tip,
        "the upstream has it"
    );
    w.server.restart();
    assert_eq!(
        w.git.rev_parse(&seed.bare, "main"),
        w.git
            .ls_remote(&w.server.git_url("repo"))
            .lines()
            .find(|l| l.ends_with("refs/heads/main"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default(),
        "and so does the mirror after the restart"
    );
}

#[test]
fn sigterm_lets_a_running_sync_finish_then_exits_zero() {
    let (mut w, seed) = World::seeded_mirror_with(
        "repo",
        Server::builder().arg("--shutdown-timeout").arg("15"),
    );
    let tip = w.git.commit_file(
        &seed.work,
        "payload.bin",
        pseudo_random_bytes(48 << 10, 3),
        "synced during shutdown",
    );
    seed.publish(&w.git);
    // ~50 pieces at 40 ms: a sync of about 2 s.
    w.upstream.set_delay_per_chunk(Duration::from_millis(40));
    w.server.pull_upstream("repo");
    w.server.wait_sync_in_progress("repo");
    let signalled = Instant::now();
    sigterm(&w.server);
    let status = w.server.stop();
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status}\n{}",
        w.server.logs()
    );
    assert!(
        took < Duration::from_secs(15),
        "exited within the deadline: {took:?}"
    );
    let log = w.server.stderr();
    assert!(log.contains("in-flight work finished"), "{log}");
    w.upstream.set_delay_per_chunk(Duration::ZERO);
    w.server.restart();
    let record = w.server.repo("repo");
    assert!(SyncState::of(&record).last_error.is_none(), "{record}");
    let served = w.git.ls_remote(&w.server.git_url("repo"));
    assert!(
        served.contains(&format!("{tip}\trefs/heads/main")),
        "the sync completed before the exit: {served}"
    );
}

#[test]
fn the_shutdown_deadline_interrupts_a_sync_that_does_not_finish() {
    let (mut w, seed) =
        World::seeded_mirror_with("repo", Server::builder().arg("--shutdown-timeout").arg("1"));
    w.git.commit_file(
        &seed.work,
        "payload.bin",
        pseudo_random_bytes(256 << 10, 4),
        "too slow to finish",
    );
    seed.publish(&w.git);
    // 256 pieces at 200 ms: far longer than the deadline.
    w.upstream.set_delay_per_chunk(Duration::from_millis(200));
    w.server.pull_upstream("repo");
    w.server.wait_sync_in_progress("repo");
    let signalled = Instant::now();
    sigterm(&w.server);
    let status = w.server.stop();
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status}\n{}",
        w.server.logs()
    );
    assert!(
        took < Duration::from_secs(10),
        "deadline honoured: {took:?}"
    );
    assert!(
        w.server.stderr().contains("interrupting it"),
        "{}",
        w.server.logs()
    );
    w.upstream.set_delay_per_chunk(Duration::ZERO);
    w.server.restart();
    w.server.sync_now("repo");
    assert!(w.server.stop().success());
    let fsck = w.server.fsck();
    assert!(fsck.success(), "{}", fsck.describe());
}
