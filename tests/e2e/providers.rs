//! Providers and politeness: forge URL shapes from `base_repo`, a self-hosted forge over TLS
//! with its own CA (`--upstream-ca-file`), the proxy environment, per-host concurrency,
//! `429`/`Retry-After`, and the size limit on fetched packs (`--max-fetch-bytes`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::clone::check_clone;
use crate::support::server::{SyncState, binary};
use crate::support::{
    COMMAND_TIMEOUT, Git, SYNC_TIMEOUT, Server, Upstream, World, run_command, scratch_dir,
    seed_repo, wait_until,
};

/// Waits for the first sync run of `name` to finish; its state.
fn first_run(server: &Server, name: &str) -> SyncState {
    wait_until(SYNC_TIMEOUT, "the first sync run to finish", || {
        let s = server.sync_state(name);
        (s.run_count >= 1 && !s.in_progress).then_some(s)
    })
}

/// A token-only credential for `name`, through the name-based route.
#[track_caller]
fn store_token(server: &Server, name: &str, token: &str) {
    let body = serde_json::to_vec(&json!({ "password": token })).expect("JSON");
    let resp = server.request(
        "POST",
        &Server::repo_path(name, "/git-credentials"),
        Some(&body),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(resp.status, 201, "store a credential: {}", resp.describe());
}

#[test]
fn a_self_hosted_gitlab_with_an_internal_ca_is_mirrored_over_tls_with_a_token() {
    let upstream = Upstream::start_tls();
    let git = Git::new();
    let ca = upstream.ca_file().to_str().expect("utf-8 path").to_owned();
    let server = Server::builder().arg("--upstream-ca-file").arg(ca).start();
    let w = World {
        server,
        upstream,
        git,
    };
    let seed = seed_repo(&w.git, &w.upstream, "group/sub/proj");
    assert!(seed.url.starts_with("https://"), "{}", seed.url);
    // A GitLab project access token goes with the user name `oauth2`.
    w.upstream
        .require_basic_auth(Some(("oauth2", "glpat-0123456789")));
    let host = w.upstream.addr().to_string();
    let resp = w.server.try_create(&json!({
        "name": "proj",
        "base_repo": {
            "provider": "gitlab",
            "upstream_host": host,
            "owner": "group/sub",
            "name": "proj",
        }
    }));
    assert_eq!(resp.status, 201, "create: {}", resp.describe());
    let first = first_run(&w.server, "proj");
    assert!(
        first.last_error.is_some(),
        "no credential yet: the forge refuses: {first:?}"
    );
    assert_eq!(
        w.server.repo("proj")["base_repo"]["url"],
        Value::String(seed.url.clone()),
        "GitLab's nested group URL"
    );
    store_token(&w.server, "proj", "glpat-0123456789");
    w.server.sync_now("proj");
    check_clone(&w.git, &seed, &w.server.git_url("proj"));

    // A forwarded push goes over the same TLS, with the same token.
    let work = w.git.unique_path("push");
    w.git.clone(&w.server.git_url("proj"), &work, &["-q"]);
    let tip = w
        .git
        .commit_file(&work, "tls.txt", "over tls\n", "over tls");
    w.git.push(&work, &["-q", "origin", "main"]);
    assert_eq!(w.git.rev_parse(&seed.bare, "refs/heads/main"), tip);
    let log = w.upstream.auth_log();
    assert!(
        log.iter().all(|l| l == "oauth2:glpat-0123456789 ok"),
        "{log:?}"
    );
}

#[test]
fn a_tls_upstream_whose_ca_is_not_trusted_is_refused() {
    let upstream = Upstream::start_tls();
    let git = Git::new();
    let w = World {
        server: Server::start(),
        upstream,
        git,
    };
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.server.create_mirror("repo", &seed.url);
    let first = first_run(&w.server, "repo");
    let err = first.last_error.unwrap_or_default().to_ascii_lowercase();
    assert!(
        err.contains("certificate") || err.contains("issuer") || err.contains("tls"),
        "a certificate error: {err}"
    );
    assert!(first.last_success_at.is_none());
}

/// `codestorage serve` with `args`, expected to exit at once with an error; its stderr.
fn serve_fails(args: &[&str]) -> String {
    let dir = scratch_dir("bad-serve");
    let mut cmd = std::process::Command::new(binary());
    crate::support::git::hermetic_env(&mut cmd, dir.path());
    cmd.arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args);
    let out = run_command(&mut cmd, COMMAND_TIMEOUT);
    assert!(
        !out.success(),
        "serve {args:?} should fail\n{}",
        out.describe()
    );
    out.stderr
}

#[test]
fn unusable_upstream_settings_stop_the_server_with_a_clear_error() {
    let dir = scratch_dir("ca");
    let missing = dir.path().join("missing.pem");
    let err = serve_fails(&["--upstream-ca-file", missing.to_str().expect("utf-8")]);
    assert!(
        err.contains("--upstream-ca-file") && err.contains("missing.pem"),
        "{err}"
    );
    let garbage: PathBuf = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let err = serve_fails(&["--upstream-ca-file", garbage.to_str().expect("utf-8")]);
    assert!(
        err.contains("--upstream-ca-file") && err.contains("no PEM certificate"),
        "{err}"
    );
    let err = serve_fails(&["--max-fetch-bytes", "0"]);
    assert!(err.contains("--max-fetch-bytes"), "{err}");
}

#[test]
fn base_repo_shapes_are_checked_at_creation_and_bad_ones_change_nothing() {
    let w = World::new();
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"provider": "gitea", "owner": "o", "name": "r"}),
            "upstream_host is required",
        ),
        (
            json!({"provider": "forgejo", "owner": "o", "name": "r"}),
            "upstream_host is required",
        ),
        (
            json!({"provider": "nope", "owner": "o", "name": "r"}),
            "unknown provider",
        ),
        (
            json!({"provider": "github", "owner": "a/b", "name": "r"}),
            "single path segment",
        ),
        (
            json!({"provider": "bitbucket", "owner": "ws", "name": "a/b"}),
            "single path segment",
        ),
        (
            json!({"provider": "gitlab", "owner": "g/../x", "name": "r"}),
            "owner",
        ),
        (
            json!({"provider": "gitea", "upstream_host": "https://git.example.com", "owner": "o", "name": "r"}),
            "bare host",
        ),
        (
            json!({"provider": "gitea", "upstream_host": "u:hunter2@git.example.com", "owner": "o", "name": "r"}),
            "git-credentials",
        ),
        (
            json!({"url": "https://user:hunter2@git.example.com/o/r.git"}),
            "git-credentials",
        ),
        (
            json!({"url": "http://hunter2@127.0.0.1:1/r.git"}),
            "git-credentials",
        ),
    ];
    for (i, (base, needle)) in bad.iter().enumerate() {
        let name = format!("bad{i}");
        let resp = w
            .server
            .try_create(&json!({ "name": name, "base_repo": base }));
        assert_eq!(resp.status, 400, "{base}: {}", resp.describe());
        let err = resp.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(err.contains(needle), "{base}: {err}");
        assert!(!err.contains("hunter2"), "the secret is not echoed: {err}");
        assert_eq!(w.server.get_repo(&name).0, 404, "{base}: nothing created");
    }
    let log = w.server.stderr();
    assert!(!log.contains("hunter2"), "nor logged");

    // Good shapes: the stored URL follows each forge's convention (these syncs fail: port 1).
    let good = [
        (
            json!({"provider": "sr.ht", "upstream_host": "127.0.0.1:1", "owner": "~alice", "name": "tool"}),
            "https://127.0.0.1:1/~alice/tool",
        ),
        (
            json!({"provider": "sourcehut", "upstream_host": "127.0.0.1:1", "owner": "alice", "name": "tool"}),
            "https://127.0.0.1:1/~alice/tool",
        ),
        (
            json!({"provider": "bitbucket", "upstream_host": "127.0.0.1:1", "owner": "workspace", "name": "repo"}),
            "https://127.0.0.1:1/workspace/repo.git",
        ),
        (
            json!({"provider": "gitlab", "upstream_host": "127.0.0.1:1", "owner": "a/b/c", "name": "p.git"}),
            "https://127.0.0.1:1/a/b/c/p.git",
        ),
        (
            json!({"provider": "forgejo", "upstream_host": "127.0.0.1:1", "owner": "o", "name": "r"}),
            "https://127.0.0.1:1/o/r.git",
        ),
    ];
    for (i, (base, url)) in good.iter().enumerate() {
        let name = format!("good{i}");
        let resp = w
            .server
            .try_create(&json!({ "name": name, "base_repo": base }));
        assert_eq!(resp.status, 201, "{base}: {}", resp.describe());
        assert_eq!(w.server.repo(&name)["base_repo"]["url"], *url, "{base}");
    }
}

#[test]
fn a_throttling_upstream_is_left_alone_for_its_retry_after() {
    let (w, seed) = World::seeded_mirror("repo");
    w.upstream.set_retry_after(Some("8"));
    w.upstream.set_fail(Some(429));
    let err = w.server.try_sync_now("repo").expect_err("429");
    let throttled_at = Instant::now();
    assert!(err.contains("429") && err.contains("Retry-After"), "{err}");
    w.upstream.set_fail(None);
    w.upstream.set_retry_after(None);

    // Asked again at once: the run fails without a request.
    let requests = w.upstream.requests();
    let err = w.server.try_sync_now("repo").expect_err("still throttled");
    assert!(err.contains("asked to be left alone"), "{err}");
    assert_eq!(w.upstream.requests(), requests, "nothing was sent");

    // The upstream moves on; the scheduler comes back by itself once the wait is over.
    let moved = w
        .git
        .commit_file(&seed.work, "later.txt", "later\n", "later");
    seed.publish(&w.git);
    wait_until(SYNC_TIMEOUT, "the next request to the upstream", || {
        (w.upstream.requests() > requests).then_some(())
    });
    let waited = throttled_at.elapsed();
    assert!(
        waited >= Duration::from_secs(7),
        "the next request came {waited:?} after an 8 s Retry-After"
    );
    wait_until(SYNC_TIMEOUT, "the new commit to be served", || {
        w.git
            .ls_remote(&w.server.git_url("repo"))
            .contains(&moved)
            .then_some(())
    });
}

#[test]
fn syncs_use_at_most_two_connections_per_upstream_host() {
    let w = World::new();
    let names = ["a", "b", "c", "d", "e"];
    let seeds: Vec<_> = names
        .iter()
        .map(|n| seed_repo(&w.git, &w.upstream, n))
        .collect();
    // Slow answers, so the syncs overlap.
    w.upstream.set_delay_per_chunk(Duration::from_millis(60));
    for s in &seeds {
        w.server.create_mirror(&s.name, &s.url);
    }
    for s in &seeds {
        w.server.wait_synced(&s.name);
    }
    w.upstream.set_delay_per_chunk(Duration::ZERO);
    assert_eq!(
        w.upstream.max_in_flight(),
        2,
        "five first syncs of one host ran two at a time"
    );
    check_clone(&w.git, &seeds[4], &w.server.git_url("e"));
}

/// The packs and quarantine leftovers under the server's data dir.
fn pack_files(server: &Server) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let repos = server.data_dir().join("repos");
    let mut packs = Vec::new();
    let mut tmp = Vec::new();
    for repo in std::fs::read_dir(&repos).expect("repos dir").flatten() {
        for e in std::fs::read_dir(repo.path().join("objects/pack"))
            .expect("pack dir")
            .flatten()
        {
            packs.push(e.path());
        }
        if let Ok(entries) = std::fs::read_dir(repo.path().join("tmp")) {
            tmp.extend(entries.flatten().map(|e| e.path()));
        }
    }
    packs.sort();
    (packs, tmp)
}

#[test]
fn a_pack_over_max_fetch_bytes_fails_the_sync_and_changes_nothing() {
    let (mut w, seed) = World::seeded_mirror_with(
        "repo",
        Server::builder().arg("--max-fetch-bytes").arg("65536"),
    );
    let before_refs = w.git.ls_remote(&w.server.git_url("repo"));
    let (before_packs, _) = pack_files(&w.server);
    w.git.commit_file(
        &seed.work,
        "huge.bin",
        crate::support::git::pseudo_random_bytes(256 << 10, 5),
        "huge",
    );
    seed.publish(&w.git);
    let err = w.server.try_sync_now("repo").expect_err("over the limit");
    assert!(
        err.contains("--max-fetch-bytes") && err.contains("65536"),
        "{err}"
    );
    assert_eq!(
        w.git.ls_remote(&w.server.git_url("repo")),
        before_refs,
        "refs unchanged"
    );
    let (after_packs, tmp) = pack_files(&w.server);
    assert_eq!(after_packs, before_packs, "no pack kept");
    assert!(tmp.is_empty(), "no quarantine left: {tmp:?}");
    w.server.stop();
    let out = w.server.fsck();
    assert!(
        out.success(),
        "fsck after the refused sync\n{}",
        out.describe()
    );
}

/// A stand-in HTTP proxy: answers every request with 502 and remembers its request line.
fn fake_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            log.lock().expect("proxy log").push(line);
            let _ = stream.write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (format!("http://{addr}"), seen)
}

#[test]
fn upstream_traffic_follows_the_proxy_environment() {
    let (proxy, seen) = fake_proxy();
    let w = World::with_server(Server::builder().env("HTTP_PROXY", &proxy));
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.server.create_mirror("repo", &seed.url);
    let first = first_run(&w.server, "repo");
    assert!(first.last_error.is_some(), "the proxy answers 502");
    let lines = seen.lock().expect("proxy log").clone();
    let expected = format!("GET {}/info/refs?service=git-upload-pack", seed.url);
    assert!(
        lines.iter().any(|l| l.starts_with(&expected)),
        "the sync went through the proxy: {lines:?}"
    );
    assert_eq!(w.upstream.requests(), 0, "not straight to the upstream");

    // NO_PROXY exempts the host.
    let direct = Server::builder()
        .env("HTTP_PROXY", &proxy)
        .env("NO_PROXY", "127.0.0.1")
        .start();
    let before = seen.lock().expect("proxy log").len();
    direct.mirror("repo", &seed.url);
    assert_eq!(seen.lock().expect("proxy log").len(), before);
    check_clone(&w.git, &seed, &direct.git_url("repo"));
}
