//! Outgoing webhooks (compat.md §6; issue 6 item 6) against a real receiver on loopback: the
//! signature recomputed here (HMAC-SHA256 over `"<t>.<body>"`), the headers, the payloads of
//! `push` (local, forwarded, ephemeral, REST branch changes, one event per ref) and of the
//! `repo.sync.*` events; retries with a stable delivery id, delivery across a restart and a
//! kill -9, 410 and the end of the retry window; the subscription routes (both generations),
//! their bad input, scopes and organisation boundaries; the delivery log.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::auth::{local_repo, rest};
use crate::support::jwt::{KeyDir, Signer, now};
use crate::support::receiver::{Received, Receiver};
use crate::support::{Server, World, seed_repo, wait_until};

/// How long a delivery may take to arrive.
const WAIT: Duration = Duration::from_secs(60);
const ZERO: &str = "0000000000000000000000000000000000000000";
const SYNC_EVENTS: [&str; 3] = [
    "repo.sync.started",
    "repo.sync.succeeded",
    "repo.sync.failed",
];

// ---- helpers ----

/// `POST /api/v1/webhooks` with the admin token, asserting 201: `(id, secret)`.
#[track_caller]
fn subscribe(
    server: &Server,
    url: &str,
    events: &[&str],
    secret: Option<&str>,
) -> (String, String) {
    let mut body = json!({ "url": url, "events": events });
    if let Some(s) = secret {
        body["secret"] = json!(s);
    }
    let resp = server.request_json("POST", "/api/v1/webhooks", &body);
    assert_eq!(
        resp.status,
        201,
        "subscribe: {}\n{}",
        resp.describe(),
        server.logs()
    );
    let v = resp.json();
    let id = v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}"));
    let secret = v["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {v}"));
    (id.to_owned(), secret.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 of `msg` keyed with `secret`, in hex.
fn hmac_hex(secret: &str, msg: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    hex(aws_lc_rs::hmac::sign(&key, msg).as_ref())
}

/// Checks what every delivery carries: method, headers, a delivery id, and a fresh signature of
/// the raw body under `secret` (recomputed here, as a receiver would).
#[track_caller]
fn check_signed(r: &Received, secret: &str, event: &str) {
    assert_eq!(r.method, "POST", "method");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "content-type"
    );
    assert_eq!(
        r.header("user-agent"),
        Some("Pierre-Webhook/1.0"),
        "user-agent"
    );
    assert_eq!(r.event(), event, "X-Pierre-Event");
    let id = r.delivery();
    assert!(
        id.len() == 36 && id.matches('-').count() == 4,
        "X-Pierre-Delivery is a UUID: {id:?}"
    );
    let sig = r
        .header("x-pierre-signature")
        .unwrap_or_else(|| panic!("no X-Pierre-Signature in {:?}", r.headers));
    let mut t = None;
    let mut mac = None;
    for part in sig.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("sha256", v)) => mac = Some(v.to_owned()),
            _ => {}
        }
    }
    let (t, mac) = (
        t.unwrap_or_else(|| panic!("no t= in {sig}")),
        mac.unwrap_or_else(|| panic!("no sha256= in {sig}")),
    );
    assert!((now() - t).abs() <= 300, "timestamp {t} is fresh");
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(&r.body);
    assert_eq!(mac, hmac_hex(secret, &msg), "signature of {sig}");
}

/// The data dir's own organisation (`customer_id` of its repositories).
fn local_org(server: &Server) -> String {
    std::fs::read_to_string(server.data_dir().join("keys").join("org"))
        .expect("read keys/org")
        .trim()
        .to_owned()
}

/// The internal id of repository `name` (its record under `repos/`).
fn internal_id(server: &Server, name: &str) -> String {
    for entry in std::fs::read_dir(server.data_dir().join("repos")).expect("read repos/") {
        let dir = entry.expect("entry").path();
        let Ok(bytes) = std::fs::read(dir.join("record.json")) else {
            continue;
        };
        let record: Value = serde_json::from_slice(&bytes).expect("record JSON");
        if record["name"] == name {
            return record["id"].as_str().expect("id").to_owned();
        }
    }
    panic!("no record for {name}");
}

/// The `push` payloads among `got`, by ref.
fn pushes(got: &[Received]) -> Vec<Value> {
    got.iter()
        .filter(|r| r.event() == "push")
        .map(Received::json)
        .collect()
}

/// A `push` payload's seven documented fields are strings, and it has no `type`.
#[track_caller]
fn check_push_shape(p: &Value) {
    for key in ["ref", "before", "after", "customer_id", "pushed_at"] {
        assert!(p[key].is_string(), "{key} is a string in {p}");
    }
    assert!(p["repository"]["id"].is_string(), "repository.id in {p}");
    assert!(p["repository"]["url"].is_string(), "repository.url in {p}");
    assert!(p.get("type").is_none(), "push has no type: {p}");
    let at = p["pushed_at"].as_str().unwrap_or_default();
    assert!(
        at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "RFC 3339: {at}"
    );
}

/// The delivery log of subscription `id` (legacy route), polled until `done` holds.
#[track_caller]
fn log_until(server: &Server, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_until(WAIT, what, || {
        let resp = server.request(
            "GET",
            &format!("/api/v1/webhooks/{id}/deliveries"),
            None,
            &[],
        );
        assert_eq!(resp.status, 200, "deliveries: {}", resp.describe());
        let v = resp.json();
        done(&v).then_some(v)
    })
}

fn outcomes(log: &Value) -> Vec<String> {
    log["deliveries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d["outcome"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A fresh working repo with one commit on `main`, remote `cs` = codestorage's `name`.
fn work_repo(w: &World, name: &str) -> std::path::PathBuf {
    let work = w.git.init(&format!("work-{name}"));
    w.git.commit_file(&work, "a.txt", "one\n", "c1");
    w.git
        .run(&work, &["remote", "add", "cs", &w.server.git_url(name)]);
    work
}

/// Every regular file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

// ---- push events ----

/// A push to a local repository is delivered once, signed with the generated secret, with the
/// documented headers and exactly the §6.3 push fields (plus the namespace).
#[test]
fn a_local_push_is_delivered_signed_with_the_documented_headers_and_payload() {
    let w = World::new();
    let rx = Receiver::start();
    w.server.create_local("team/app");
    let (_, secret) = subscribe(&w.server, &rx.url("/hook"), &["push"], None);
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 32,
        "a strong secret is generated: {secret}"
    );
    let work = work_repo(&w, "team/app");
    w.git.push(&work, &["-q", "cs", "main"]);
    let head = w.git.rev_parse(&work, "main");

    let got = rx.wait_for(1, WAIT);
    let r = &got[0];
    assert_eq!(r.path, "/hook");
    check_signed(r, &secret, "push");
    let p = r.json();
    check_push_shape(&p);
    assert_eq!(
        p["repository"]["id"],
        internal_id(&w.server, "team/app"),
        "{p}"
    );
    assert_eq!(p["repository"]["url"], "team/app", "{p}");
    assert_eq!(p["ref"], "refs/heads/main");
    assert_eq!(p["before"], ZERO, "created: before is zeros");
    assert_eq!(p["after"], head.as_str());
    assert_eq!(p["customer_id"], local_org(&w.server));
    assert_eq!(p["namespace"], "default");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.requests().len(), 1, "one ref, one event");
}

/// One event per updated ref of a multi-ref push, each its own delivery; a deletion has zeros
/// after.
#[test]
fn a_multi_ref_push_emits_one_event_per_ref() {
    let w = World::new();
    let rx = Receiver::start();
    subscribe(
        &w.server,
        &rx.url("/multi"),
        &["push"],
        Some("multi-secret"),
    );
    // Creates the repo and pushes main, feature/x, release and tag v1 in one push.
    let work = local_repo(&w, "multi");
    let got = rx.wait_for(4, WAIT);
    let mut refs: Vec<(String, String, String)> = pushes(&got)
        .iter()
        .map(|p| {
            check_push_shape(p);
            (
                p["ref"].as_str().unwrap_or_default().to_owned(),
                p["before"].as_str().unwrap_or_default().to_owned(),
                p["after"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    refs.sort();
    let expected: Vec<(String, String, String)> = [
        "refs/heads/feature/x",
        "refs/heads/main",
        "refs/heads/release",
        "refs/tags/v1",
    ]
    .iter()
    .map(|r| (r.to_string(), ZERO.to_owned(), w.git.rev_parse(&work, r)))
    .collect();
    assert_eq!(refs, expected);
    for r in &got {
        check_signed(r, "multi-secret", "push");
    }
    let mut ids: Vec<&str> = got.iter().map(Received::delivery).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each event is its own delivery");

    let release = w.git.rev_parse(&work, "release");
    w.git.push(&work, &["-q", "cs", ":release"]);
    let got = rx.wait_for(5, WAIT);
    let p = got[4].json();
    assert_eq!(
        (p["ref"].as_str(), p["before"].as_str(), p["after"].as_str()),
        (
            Some("refs/heads/release"),
            Some(release.as_str()),
            Some(ZERO)
        ),
        "deletion: {p}"
    );

    // Only refs that moved: `main` refused by the token's policy, `extra` created.
    let limited = w.server.mint(&[
        "--repo",
        "multi",
        "--scopes",
        "git:write",
        "--ttl",
        "600",
        "--refs",
        "refs/heads/main=no-push",
    ]);
    w.git.commit_file(&work, "b.txt", "more\n", "c4");
    w.git.run(&work, &["branch", "extra"]);
    let url = w.server.git_url_with("multi", &limited);
    let out = w.git.try_run(&work, &["push", &url, "main", "extra"]);
    assert!(!out.success(), "main is refused\n{}", out.describe());
    let got = rx.wait_for(6, WAIT);
    let p = got[5].json();
    assert_eq!(p["ref"], "refs/heads/extra", "{p}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.requests().len(), 6, "no event for the refused ref");
}

/// A push to a mirror goes upstream and is announced once the upstream accepted it.
#[test]
fn a_forwarded_push_to_a_mirror_emits_push() {
    let (w, seed) = World::seeded_mirror("mirrored");
    let rx = Receiver::start();
    let (_, secret) = subscribe(&w.server, &rx.url("/fwd"), &["push"], None);
    let clone = w.git.path("clone");
    w.git.clone(&w.server.git_url("mirrored"), &clone, &[]);
    let new = w
        .git
        .commit_file(&clone, "new.txt", "new\n", "through the mirror");
    w.git.push(&clone, &["-q", "origin", "main"]);
    assert_eq!(
        w.git.rev_parse(&seed.bare, "main"),
        new,
        "the upstream has the push"
    );
    let got = rx.wait_for(1, WAIT);
    check_signed(&got[0], &secret, "push");
    let p = got[0].json();
    check_push_shape(&p);
    assert_eq!(p["ref"], "refs/heads/main");
    assert_eq!(p["before"], seed.c3.as_str());
    assert_eq!(p["after"], new.as_str());
    assert_eq!(p["namespace"], "default");
    assert_eq!(p["repository"]["url"], "mirrored");
}

/// Pushes to `+ephemeral` say so in the payload; promoting an ephemeral branch over REST is a
/// push to the default namespace.
#[test]
fn ephemeral_pushes_and_promotion_emit_push_with_their_namespace() {
    let w = World::new();
    let rx = Receiver::start();
    let work = local_repo(&w, "eph");
    let (_, secret) = subscribe(&w.server, &rx.url("/eph"), &["push"], None);
    let tip = w.git.commit_file(&work, "e.txt", "ephemeral\n", "eph work");
    let eph_url = w.server.git_url("eph+ephemeral");
    w.git
        .push(&work, &["-q", &eph_url, "HEAD:refs/heads/preview"]);
    let got = rx.wait_for(1, WAIT);
    check_signed(&got[0], &secret, "push");
    let p = got[0].json();
    check_push_shape(&p);
    assert_eq!(
        (p["ref"].as_str(), p["before"].as_str(), p["after"].as_str()),
        (Some("refs/heads/preview"), Some(ZERO), Some(tip.as_str()))
    );
    assert_eq!(p["namespace"], "ephemeral");

    let resp = rest(
        &w.server,
        "POST",
        &Server::repo_path("eph", "/branches/create"),
        Some(&w.server.token()),
        Some(
            &json!({"base_branch": "preview", "target_branch": "promoted",
                     "base_is_ephemeral": true, "target_is_ephemeral": false}),
        ),
    );
    assert_eq!(resp.status, 200, "promote: {}", resp.describe());
    let got = rx.wait_for(2, WAIT);
    let p = got[1].json();
    assert_eq!(
        (
            p["ref"].as_str(),
            p["after"].as_str(),
            p["namespace"].as_str()
        ),
        (
            Some("refs/heads/promoted"),
            Some(tip.as_str()),
            Some("default")
        )
    );
}

/// REST branch create and delete are pushes too.
#[test]
fn rest_branch_create_and_delete_emit_push() {
    let w = World::new();
    let rx = Receiver::start();
    let work = local_repo(&w, "branchy");
    let main = w.git.rev_parse(&work, "main");
    let (_, secret) = subscribe(&w.server, &rx.url("/b"), &["push"], None);
    let token = w.server.token();
    let resp = rest(
        &w.server,
        "POST",
        "/api/v1/repos/branches/create",
        Some(
            &w.server
                .mint(&["--repo", "branchy", "--scopes", "git:write", "--ttl", "600"]),
        ),
        Some(&json!({"base_branch": "main", "target_branch": "made-by-rest"})),
    );
    assert_eq!(resp.status, 200, "create: {}", resp.describe());
    let got = rx.wait_for(1, WAIT);
    check_signed(&got[0], &secret, "push");
    let p = got[0].json();
    assert_eq!(
        (p["ref"].as_str(), p["before"].as_str(), p["after"].as_str()),
        (
            Some("refs/heads/made-by-rest"),
            Some(ZERO),
            Some(main.as_str())
        )
    );
    let resp = rest(
        &w.server,
        "DELETE",
        &Server::repo_path("branchy", "/branches"),
        Some(&token),
        Some(&json!({"name": "made-by-rest"})),
    );
    assert_eq!(resp.status, 200, "delete: {}", resp.describe());
    let got = rx.wait_for(2, WAIT);
    let p = got[1].json();
    assert_eq!(
        (p["ref"].as_str(), p["before"].as_str(), p["after"].as_str()),
        (
            Some("refs/heads/made-by-rest"),
            Some(main.as_str()),
            Some(ZERO)
        )
    );
}

// ---- sync events ----

/// The first sync and a later one: `started` counts the runs before it, `succeeded` includes
/// its own; `is_first_sync` until the first success.
#[test]
fn sync_runs_emit_started_and_succeeded_with_run_count_and_is_first_sync() {
    let w = World::new();
    let rx = Receiver::start();
    let (_, secret) = subscribe(&w.server, &rx.url("/sync"), &SYNC_EVENTS, None);
    let seed = seed_repo(&w.git, &w.upstream, "synced");
    w.server.mirror("synced", &seed.url);
    let got = rx.wait_for(2, WAIT);
    let by = |got: &[Received], event: &str| -> Vec<Value> {
        got.iter()
            .filter(|r| r.event() == event)
            .inspect(|r| check_signed(r, &secret, event))
            .map(Received::json)
            .collect()
    };
    let started = by(&got, "repo.sync.started");
    let succeeded = by(&got, "repo.sync.succeeded");
    assert_eq!((started.len(), succeeded.len()), (1, 1), "{got:#?}");
    let (s, d) = (&started[0], &succeeded[0]);
    assert_eq!(s["type"], "repo.sync.started");
    assert_eq!(s["run_count"], 0, "no run completed before the first: {s}");
    assert_eq!(s["is_first_sync"], true);
    assert!(s["started_at"].is_string(), "{s}");
    assert_eq!(s["repository"]["url"], "synced");
    assert_eq!(s["repository"]["id"], internal_id(&w.server, "synced"));
    assert_eq!(d["type"], "repo.sync.succeeded");
    assert_eq!(d["run_count"], 1, "includes the run itself: {d}");
    assert_eq!(d["is_first_sync"], true);
    assert_eq!(d["started_at"], s["started_at"]);
    assert!(d["completed_at"].is_string(), "{d}");
    assert!(d.get("error").is_none(), "{d}");

    w.server.sync_now("synced");
    let got = rx.wait_for(4, WAIT);
    let started = by(&got, "repo.sync.started");
    let succeeded = by(&got, "repo.sync.succeeded");
    let s = started
        .iter()
        .find(|s| s["run_count"] == 1)
        .expect("second started");
    let d = succeeded
        .iter()
        .find(|d| d["run_count"] == 2)
        .expect("second succeeded");
    assert_eq!(s["is_first_sync"], false, "{s}");
    assert_eq!(d["is_first_sync"], false, "{d}");
}

/// A sync against an upstream that is gone fails, and says so concisely.
#[test]
fn a_failed_sync_emits_repo_sync_failed_with_a_concise_error() {
    let (w, _seed) = World::seeded_mirror("doomed");
    let rx = Receiver::start();
    let (_, secret) = subscribe(&w.server, &rx.url("/fail"), &["repo.sync.failed"], None);
    let before = w.server.sync_state("doomed").run_count;
    w.upstream.remove_bare("doomed");
    assert!(w.server.try_sync_now("doomed").is_err(), "the sync fails");
    let got = rx.wait_for(1, WAIT);
    check_signed(&got[0], &secret, "repo.sync.failed");
    let f = got[0].json();
    assert_eq!(f["type"], "repo.sync.failed");
    assert_eq!(f["run_count"], before + 1, "{f}");
    assert_eq!(f["is_first_sync"], false);
    assert!(
        f["started_at"].is_string() && f["completed_at"].is_string(),
        "{f}"
    );
    let err = f["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {f}"));
    assert!(
        !err.is_empty() && err.len() <= 310 && !err.contains('\n'),
        "concise: {err:?}"
    );
    assert!(!err.contains(&w.server.token()), "no token in {err:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.requests()
            .iter()
            .all(|r| r.event() == "repo.sync.failed"),
        "only the subscribed event"
    );
}

// ---- delivery ----

/// Failed attempts are retried with backoff: same delivery id and body, fresh signatures; the
/// delivery log shows each attempt. The secret is never stored or logged in plaintext.
#[test]
fn failed_deliveries_are_retried_with_the_same_delivery_id_and_logged() {
    let w = World::with_server(Server::builder().arg("--webhook-retry-base").arg("1"));
    let rx = Receiver::start();
    rx.fail_next(2, 503);
    let secret = "s3cret-for-the-retry-test-4f1c2a";
    let (id, _) = subscribe(&w.server, &rx.url("/retry"), &["push"], Some(secret));
    w.server.create_local("flaky");
    let work = work_repo(&w, "flaky");
    w.git.push(&work, &["-q", "cs", "main"]);

    let got = rx.wait_for(3, WAIT);
    let answered: Vec<Option<u16>> = got.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [Some(503), Some(503), Some(200)]);
    for (i, r) in got.iter().enumerate() {
        check_signed(r, secret, "push");
        assert_eq!(r.delivery(), got[0].delivery(), "same delivery id");
        assert_eq!(r.body, got[0].body, "same body");
        assert_eq!(
            r.header("x-pierre-delivery-attempt"),
            Some((i + 1).to_string().as_str())
        );
    }
    assert!(
        got[2].at.duration_since(got[1].at) >= got[1].at.duration_since(got[0].at) / 2,
        "the wait grows (allowing for jitter)"
    );

    let log = log_until(&w.server, &id, "the delivered attempt in the log", |v| {
        outcomes(v).first().map(String::as_str) == Some("delivered")
    });
    assert_eq!(
        outcomes(&log),
        ["delivered", "retrying", "retrying"],
        "{log}"
    );
    let entries = log["deliveries"].as_array().expect("array");
    for (e, (attempt, status)) in entries.iter().zip([(3, 200), (2, 503), (1, 503)]) {
        assert_eq!(e["delivery_id"], got[0].delivery(), "{e}");
        assert_eq!(e["event"], "push");
        assert_eq!(e["attempt"], attempt, "{e}");
        assert_eq!(e["status_code"], status, "{e}");
        assert!(e["attempted_at"].is_string(), "{e}");
    }
    assert!(
        entries[1]["next_retry_at"].is_string(),
        "retrying has a next retry"
    );
    assert!(entries[0]["next_retry_at"].is_null());
    assert_eq!(log["pending_deliveries"], 0);
    let newer = w.server.request(
        "GET",
        &format!("/api/webhooks/{id}/deliveries?limit=2"),
        None,
        &[],
    );
    assert_eq!(newer.status, 200, "{}", newer.describe());
    assert_eq!(
        newer.json()["deliveries"].as_array().map(Vec::len),
        Some(2),
        "limit"
    );

    let hits = files_containing(w.server.data_dir(), secret.as_bytes());
    assert!(
        hits.is_empty(),
        "the secret is sealed at rest: found in {hits:?}"
    );
    assert!(
        !w.server.logs().contains(secret),
        "the secret is never logged"
    );
}

/// A delivery that failed is still queued after a graceful restart and is delivered then, with
/// its delivery id; the subscription survives too.
#[test]
fn a_queued_delivery_survives_a_restart() {
    let mut w = World::with_server(Server::builder().arg("--webhook-retry-base").arg("8"));
    let rx = Receiver::start();
    rx.fail_next(1, 500);
    let (id, secret) = subscribe(&w.server, &rx.url("/restart"), &["push"], None);
    w.server.create_local("durable");
    let work = work_repo(&w, "durable");
    w.git.push(&work, &["-q", "cs", "main"]);
    let first = rx.wait_for(1, WAIT)[0].clone();
    // The retry is at least 6.4 s away: restart well before it.
    w.server.restart();
    let got = rx.wait_for(2, WAIT);
    assert_eq!(got[1].delivery(), first.delivery(), "the same delivery");
    assert_eq!(got[1].answered, Some(200));
    check_signed(&got[1], &secret, "push");
    let list = w
        .server
        .request("GET", "/api/v1/webhooks", None, &[])
        .json();
    assert_eq!(
        list["webhooks"][0]["id"],
        id.as_str(),
        "subscription kept: {list}"
    );
    log_until(&w.server, &id, "delivered after the restart", |v| {
        outcomes(v).first().map(String::as_str) == Some("delivered")
    });
}

/// kill -9 while the receiver holds the request: a held receiver holds up neither pushes nor
/// other deliveries, and after the restart the held delivery is made again (at-least-once), with
/// the same delivery id.
#[test]
fn a_delivery_in_flight_at_kill_9_is_delivered_after_the_restart() {
    let mut w = World::new();
    let rx = Receiver::start();
    rx.hold_next(1);
    let (id, secret) = subscribe(&w.server, &rx.url("/crash"), &["push"], None);
    w.server.create_local("crashy");
    let work = work_repo(&w, "crashy");
    w.git.push(&work, &["-q", "cs", "main"]);
    let first = rx.wait_for(1, WAIT)[0].clone();
    assert_eq!(first.answered, None, "held");
    // The receiver still holds the first delivery: another push goes through, and its event
    // is delivered.
    w.git.run(&work, &["branch", "second"]);
    w.git.push(&work, &["-q", "cs", "second"]);
    let got = rx.wait_for(2, WAIT);
    assert_ne!(got[1].delivery(), first.delivery());
    assert_eq!(got[1].answered, Some(200), "not held up by the first");

    w.server.kill();
    rx.release();
    w.server.restart();
    let again = wait_until(WAIT, "the held delivery to be made again", || {
        rx.requests()
            .into_iter()
            .skip(1)
            .find(|r| r.delivery() == first.delivery())
    });
    assert_eq!(again.body, first.body, "the same payload");
    assert_eq!(again.answered, Some(200));
    check_signed(&again, &secret, "push");
    log_until(&w.server, &id, "delivered after the crash", |v| {
        v["deliveries"].as_array().is_some_and(|a| {
            a.iter()
                .any(|d| d["delivery_id"] == first.delivery() && d["outcome"] == "delivered")
        })
    });
    w.server.stop();
    let fsck = w.server.fsck();
    assert!(
        fsck.success(),
        "data dir consistent after kill -9\n{}",
        fsck.describe()
    );
}

/// 410 Gone stops the retries of that delivery at once; other failures are retried until the
/// retry window ends, then the delivery is marked failed and no more attempts are made.
#[test]
fn gone_stops_retries_and_the_retry_window_ends_in_failure() {
    let w = World::with_server(
        Server::builder()
            .arg("--webhook-retry-base")
            .arg("1")
            .arg("--webhook-retry-window")
            .arg("4"),
    );
    let gone = Receiver::start();
    gone.always(410);
    let down = Receiver::start();
    down.always(500);
    let (gone_id, _) = subscribe(&w.server, &gone.url("/gone"), &["push"], None);
    let (down_id, _) = subscribe(&w.server, &down.url("/down"), &["push"], None);
    w.server.create_local("window");
    let work = work_repo(&w, "window");
    w.git.push(&work, &["-q", "cs", "main"]);

    let log = log_until(&w.server, &gone_id, "the 410 logged", |v| {
        !outcomes(v).is_empty()
    });
    assert_eq!(outcomes(&log), ["failed"], "{log}");
    assert_eq!(log["deliveries"][0]["status_code"], 410);
    let log = log_until(&w.server, &down_id, "the window to end", |v| {
        outcomes(v).first().map(String::as_str) == Some("failed")
    });
    let outs = outcomes(&log);
    assert!(outs.len() >= 3, "retried within the window: {log}");
    assert!(outs[1..].iter().all(|o| o == "retrying"), "{log}");
    let err = log["deliveries"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("gave up"), "{err}");
    assert_eq!(log["pending_deliveries"], 0);
    let (g, d) = (gone.requests().len(), down.requests().len());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gone.requests().len(), 1, "410: one attempt only");
    assert_eq!(down.requests().len(), d, "no attempts after the window");
    assert_eq!(g, 1);
}

/// Deleting a subscription drops its pending deliveries: no more attempts, no log.
#[test]
fn deleting_a_subscription_stops_its_deliveries() {
    let w = World::with_server(Server::builder().arg("--webhook-retry-base").arg("1"));
    let rx = Receiver::start();
    rx.always(500);
    let (id, _) = subscribe(&w.server, &rx.url("/del"), &["push"], None);
    w.server.create_local("stop");
    let work = work_repo(&w, "stop");
    w.git.push(&work, &["-q", "cs", "main"]);
    rx.wait_for(1, WAIT);
    let resp = w
        .server
        .request("DELETE", &format!("/api/v1/webhooks/{id}"), None, &[]);
    assert_eq!(resp.status, 204, "{}", resp.describe());
    let n = rx.requests().len();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        rx.requests().len() <= n + 1,
        "at most an attempt already in flight: {} then {}",
        n,
        rx.requests().len()
    );
    let resp = w.server.request(
        "GET",
        &format!("/api/v1/webhooks/{id}/deliveries"),
        None,
        &[],
    );
    assert_eq!(resp.status, 404, "{}", resp.describe());
    let list = w.server.request("GET", "/api/webhooks", None, &[]).json();
    assert_eq!(list["webhooks"], json!([]), "{list}");
    let queued = std::fs::read_dir(w.server.data_dir().join("webhooks").join("queue"))
        .expect("queue dir")
        .count();
    assert_eq!(queued, 0, "nothing left in the queue");
    let again = w
        .server
        .request("DELETE", &format!("/api/webhooks/{id}"), None, &[]);
    assert_eq!(again.status, 404, "{}", again.describe());
}

// ---- the subscription routes ----

/// Both route generations: create, list (no secrets), show, delete.
#[test]
fn subscriptions_are_listed_shown_and_deleted_on_both_route_generations() {
    let w = World::new();
    let rx = Receiver::start();
    let resp = w.server.request_json(
        "POST",
        "/api/webhooks",
        &json!({"url": rx.url("/a"), "events": ["push", "repo.sync.failed", "push"]}),
    );
    assert_eq!(resp.status, 201, "{}", resp.describe());
    let created = resp.json();
    assert_eq!(
        created["events"],
        json!(["push", "repo.sync.failed"]),
        "deduplicated"
    );
    let id = created["id"].as_str().expect("id").to_owned();
    let (id2, _) = subscribe(&w.server, &rx.url("/b"), &["repo.sync.started"], None);
    for path in ["/api/v1/webhooks", "/api/webhooks"] {
        let list = w.server.request("GET", path, None, &[]);
        assert_eq!(list.status, 200, "{}", list.describe());
        let list = list.json();
        let ids: Vec<&str> = list["webhooks"]
            .as_array()
            .expect("webhooks")
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids, [id.as_str(), id2.as_str()], "{list}");
        assert!(
            !list.to_string().contains("secret"),
            "no secrets listed: {list}"
        );
    }
    let shown = w
        .server
        .request("GET", &format!("/api/v1/webhooks/{id}"), None, &[]);
    assert_eq!(shown.status, 200);
    assert_eq!(shown.json()["url"], rx.url("/a").as_str());
    let resp = w
        .server
        .request("DELETE", &format!("/api/webhooks/{id}"), None, &[]);
    assert_eq!(resp.status, 204, "{}", resp.describe());
    let shown = w
        .server
        .request("GET", &format!("/api/webhooks/{id}"), None, &[]);
    assert_eq!(shown.status, 404);
    let resp = w
        .server
        .request("PUT", &format!("/api/webhooks/{id2}"), Some(b"{}"), &[]);
    assert_eq!(resp.status, 405, "{}", resp.describe());
}

/// Bad bodies get 400 with a JSON error and create nothing; wrong tokens get 401/403.
#[test]
fn bad_subscriptions_and_wrong_tokens_are_refused_and_change_nothing() {
    let w = World::new();
    let url = "https://hooks.example.com/x";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "missing url",
            json!({"events": ["push"]}).to_string().into_bytes(),
        ),
        (
            "empty url",
            json!({"url": "", "events": ["push"]})
                .to_string()
                .into_bytes(),
        ),
        (
            "missing events",
            json!({"url": url}).to_string().into_bytes(),
        ),
        (
            "empty events",
            json!({"url": url, "events": []}).to_string().into_bytes(),
        ),
        (
            "unknown event",
            json!({"url": url, "events": ["push", "pull_request"]})
                .to_string()
                .into_bytes(),
        ),
        (
            "not a url",
            json!({"url": "hooks", "events": ["push"]})
                .to_string()
                .into_bytes(),
        ),
        (
            "ftp url",
            json!({"url": "ftp://hooks.example.com/", "events": ["push"]})
                .to_string()
                .into_bytes(),
        ),
        (
            "credentials in the url",
            json!({"url": "https://u:p@hooks.example.com/", "events": ["push"]})
                .to_string()
                .into_bytes(),
        ),
        (
            "secret not a string",
            json!({"url": url, "events": ["push"], "secret": 42})
                .to_string()
                .into_bytes(),
        ),
        (
            "empty secret",
            json!({"url": url, "events": ["push"], "secret": ""})
                .to_string()
                .into_bytes(),
        ),
        ("not JSON", b"{not json".to_vec()),
        (
            "events not a list",
            br#"{"url":"https://h.example.com/","events":"push"}"#.to_vec(),
        ),
    ];
    for (what, body) in &cases {
        let resp = w.server.request(
            "POST",
            "/api/v1/webhooks",
            Some(body),
            &[("Content-Type", "application/json")],
        );
        assert_eq!(resp.status, 400, "{what}: {}", resp.describe());
        assert!(resp.json()["error"].is_string(), "{what}: JSON error body");
    }
    let unknown = w.server.request_json(
        "POST",
        "/api/v1/webhooks",
        &json!({"url": url, "events": ["pull_request"]}),
    );
    assert!(
        unknown.text().contains("pull_request"),
        "names the bad event: {}",
        unknown.text()
    );

    let signer = Signer::from_data_dir(w.server.data_dir());
    let body = json!({"url": url, "events": ["push"]});
    let read_only = signer.token(Some("org"), &["git:read"]);
    let repo_bound = signer.token(Some("some-repo"), &["repo:write"]);
    let org_reader = signer.token(None, &["org:read"]);
    for (what, token, status) in [
        ("git:read only", Some(read_only.as_str()), 403),
        ("a repository token", Some(repo_bound.as_str()), 403),
        ("org:read cannot create", Some(org_reader.as_str()), 403),
        ("no token", None, 401),
    ] {
        let resp = rest(&w.server, "POST", "/api/v1/webhooks", token, Some(&body));
        assert_eq!(resp.status, status, "{what}: {}", resp.describe());
    }
    for (what, token, status) in [
        ("git:read only", Some(read_only.as_str()), 403),
        ("a repository token", Some(repo_bound.as_str()), 403),
        ("org:read may list", Some(org_reader.as_str()), 200),
    ] {
        let resp = rest(&w.server, "GET", "/api/webhooks", token, None);
        assert_eq!(resp.status, status, "{what}: {}", resp.describe());
    }
    let list = w
        .server
        .request("GET", "/api/v1/webhooks", None, &[])
        .json();
    assert_eq!(list["webhooks"], json!([]), "nothing was created: {list}");
}

/// Without the development switch, webhook targets must be https on public addresses.
#[test]
fn without_the_dev_switch_plain_http_and_private_targets_are_refused() {
    let server = Server::builder().without_dev_switch().start();
    for url in [
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://localhost:8443/x",
        "https://10.1.2.3/x",
        "https://192.168.0.10/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://[fd00::1]/x",
    ] {
        let resp = server.request_json(
            "POST",
            "/api/v1/webhooks",
            &json!({"url": url, "events": ["push"]}),
        );
        assert_eq!(resp.status, 400, "{url}: {}", resp.describe());
        assert!(
            resp.json()["error"]
                .as_str()
                .unwrap_or_default()
                .contains("--allow-http-upstream"),
            "{url}: says how to allow it: {}",
            resp.text()
        );
    }
    let list = server.request("GET", "/api/v1/webhooks", None, &[]).json();
    assert_eq!(list["webhooks"], json!([]), "{list}");
    // A public address is fine.
    let ok = server.request_json(
        "POST",
        "/api/v1/webhooks",
        &json!({"url": "https://1.1.1.1/hook", "events": ["push"]}),
    );
    assert_eq!(ok.status, 201, "{}", ok.describe());
}

/// Subscriptions belong to the token's organisation: another org never sees, reads the log of
/// or deletes them, and gets none of the first org's events.
#[test]
fn other_organisations_cannot_see_or_delete_subscriptions_or_get_their_events() {
    let acme = KeyDir::generate("acme", "es256");
    let config = acme.config_file(Some(&acme.kid()));
    let w = World::with_server(
        Server::builder()
            .arg("--config")
            .arg(config.to_str().expect("utf-8 path")),
    );
    let ours = Receiver::start();
    let theirs = Receiver::start();
    let (our_id, _) = subscribe(&w.server, &ours.url("/ours"), &["push"], None);
    let acme_token = acme.signer().token(Some("org"), &["repo:write"]);
    let resp = rest(
        &w.server,
        "POST",
        "/api/v1/webhooks",
        Some(&acme_token),
        Some(&json!({"url": theirs.url("/theirs"), "events": ["push"]})),
    );
    assert_eq!(resp.status, 201, "{}", resp.describe());
    let their_id = resp.json()["id"].as_str().expect("id").to_owned();

    let list = rest(
        &w.server,
        "GET",
        "/api/v1/webhooks",
        Some(&acme_token),
        None,
    )
    .json();
    let ids: Vec<&str> = list["webhooks"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, [their_id.as_str()], "acme sees only its own: {list}");
    for (method, path) in [
        ("GET", format!("/api/v1/webhooks/{our_id}")),
        ("GET", format!("/api/v1/webhooks/{our_id}/deliveries")),
        ("DELETE", format!("/api/v1/webhooks/{our_id}")),
        ("DELETE", format!("/api/webhooks/{our_id}")),
    ] {
        let resp = rest(&w.server, method, &path, Some(&acme_token), None);
        assert_eq!(resp.status, 404, "{method} {path}: {}", resp.describe());
    }
    let resp = w
        .server
        .request("DELETE", &format!("/api/v1/webhooks/{their_id}"), None, &[]);
    assert_eq!(
        resp.status,
        404,
        "nor the other way round: {}",
        resp.describe()
    );

    w.server.create_local("local-only");
    let work = work_repo(&w, "local-only");
    w.git.push(&work, &["-q", "cs", "main"]);
    ours.wait_for(1, WAIT);
    std::thread::sleep(Duration::from_secs(1));
    assert!(theirs.requests().is_empty(), "acme gets none of our events");
    let resp = w
        .server
        .request("GET", &format!("/api/v1/webhooks/{our_id}"), None, &[]);
    assert_eq!(resp.status, 200, "ours is still there: {}", resp.describe());
}
