//! Bad input is answered cleanly (a 4xx, or a 200 carrying an `ERR` pkt-line for git), changes
//! nothing, and leaves the server healthy. The well-formed request bodies these are built from are
//! proven against real git in `harness`.

use serde_json::{Value, json};

use crate::fetch::rewrite_main;
use crate::support::http::HttpResponse;
use crate::support::pkt::{self, DELIM, FLUSH, UPLOAD_PACK_REQUEST, pkt};
use crate::support::{Seed, Server, World};

const UNKNOWN_ID: &str = "0123456789abcdef0123456789abcdef01234567";

/// `POST /<repo>.git/git-upload-pack` with `body`, as git would send it (plus `extra` headers).
fn upload_pack(
    server: &Server,
    repo: &str,
    body: &[u8],
    v2: bool,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let mut headers = vec![("Content-Type", UPLOAD_PACK_REQUEST)];
    if v2 {
        headers.push(("Git-Protocol", "version=2"));
    }
    headers.extend_from_slice(extra);
    server.request(
        "POST",
        &format!("/{repo}.git/git-upload-pack"),
        Some(body),
        &headers,
    )
}

/// A 4xx, or a 200 whose body carries an error (and no pack).
#[track_caller]
fn assert_refused(resp: &HttpResponse, what: &str) {
    let clean_4xx = (400..500).contains(&resp.status);
    let err_line = resp.status == 200 && pkt::has_err(&resp.body) && !pkt::has_pack(&resp.body);
    assert!(
        clean_4xx || err_line,
        "{what}: expected a 4xx or a 200 with ERR, got {}",
        resp.describe()
    );
}

/// What must not change: the advertised refs and the repo list.
struct Snapshot {
    ls_remote: String,
    repos: Value,
}

fn snapshot(w: &World, repo: &str) -> Snapshot {
    Snapshot {
        ls_remote: w.git.ls_remote(&w.server.git_url(repo)),
        repos: w.server.list_repos(),
    }
}

/// Nothing changed and the server still serves a good request.
#[track_caller]
fn assert_unchanged_and_healthy(w: &World, seed: &Seed, repo: &str, before: &Snapshot) {
    let after = snapshot(w, repo);
    assert_eq!(
        after.ls_remote, before.ls_remote,
        "refs unchanged by bad input"
    );
    assert_eq!(
        after.repos, before.repos,
        "repo list unchanged by bad input"
    );
    let tip = w.git.rev_parse(&seed.bare, "refs/heads/main");
    let good = upload_pack(&w.server, repo, &pkt::v2_fetch(&[&tip]), true, &[]);
    assert!(
        good.status == 200 && pkt::has_pack(&good.body),
        "a good fetch still works: {}",
        good.describe()
    );
}

#[test]
fn malformed_pkt_lines_are_refused_cleanly() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = snapshot(&w, "repo");
    let bodies: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "truncated pkt-line (v2)",
            b"0014command=ls-re".to_vec(),
            true,
        ),
        (
            "truncated pkt-line (v0)",
            format!("0032want {}", &seed.c3[..20]).into_bytes(),
            false,
        ),
        (
            "non-hex length zzzz (v2)",
            b"zzzzcommand=ls-refs\n0000".to_vec(),
            true,
        ),
        (
            "non-hex length zzzz (v0)",
            b"zzzzwant\n0000".to_vec(),
            false,
        ),
        (
            "length fff0 with few bytes (v2)",
            b"fff0command=ls-refs\n".to_vec(),
            true,
        ),
        (
            "length fff0 with few bytes (v0)",
            b"fff0want ".to_vec(),
            false,
        ),
        ("length 0003 (v2)", b"0003".to_vec(), true),
        ("empty body (v2)", Vec::new(), true),
        ("delim before command (v2)", [DELIM, FLUSH].concat(), true),
    ];
    for (what, body, v2) in &bodies {
        let resp = upload_pack(&w.server, "repo", body, *v2, &[]);
        assert_refused(&resp, what);
    }
    assert_unchanged_and_healthy(&w, &seed, "repo", &before);
}

#[test]
fn unknown_v2_command_is_refused() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = snapshot(&w, "repo");
    let body = [pkt("command=frobnicate\n"), DELIM.to_vec(), FLUSH.to_vec()].concat();
    assert_refused(
        &upload_pack(&w.server, "repo", &body, true, &[]),
        "command=frobnicate",
    );
    assert_unchanged_and_healthy(&w, &seed, "repo", &before);
}

#[test]
fn want_of_an_unknown_object_is_refused() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = snapshot(&w, "repo");
    assert_refused(
        &upload_pack(&w.server, "repo", &pkt::v2_fetch(&[UNKNOWN_ID]), true, &[]),
        "v2 want unknown",
    );
    assert_refused(
        &upload_pack(&w.server, "repo", &pkt::v0_want(&[UNKNOWN_ID]), false, &[]),
        "v0 want unknown",
    );
    assert_refused(
        &upload_pack(
            &w.server,
            "repo",
            &pkt::v2_fetch(&["not-an-object-id"]),
            true,
            &[],
        ),
        "v2 want of a malformed id",
    );
    assert_unchanged_and_healthy(&w, &seed, "repo", &before);
}

/// After main is rewritten upstream and synced, the old c3 (and its blob) stay in codestorage's
/// store but are reachable from no ref: neither protocol may hand them out. (git's own v2
/// upload-pack would; codestorage shares objects between namespaces, so it must check.)
#[test]
fn want_of_a_stored_object_unreachable_from_refs_is_refused() {
    // Former ref values stay fetchable for a grace period (a stateless client may fetch what it
    // saw advertised just before a sync moved the ref); without it, they are refused at once.
    let (w, seed) =
        World::seeded_mirror_with("repo", Server::builder().arg("--moved-ref-grace").arg("0"));
    rewrite_main(&w.git, &seed);
    seed.publish(&w.git);
    w.server.sync_now("repo");
    let before = snapshot(&w, "repo");
    let c3_blob = w
        .git
        .rev_parse(&seed.work, &format!("{}:src/lib.rs", seed.c3));

    let reachable = w.git.rev_parse(&seed.bare, "refs/heads/main");
    let control = upload_pack(&w.server, "repo", &pkt::v2_fetch(&[&reachable]), true, &[]);
    assert!(
        pkt::has_pack(&control.body),
        "control: want of main's tip works: {}",
        control.describe()
    );

    for id in [&seed.c3, &c3_blob] {
        assert_refused(
            &upload_pack(&w.server, "repo", &pkt::v2_fetch(&[id]), true, &[]),
            &format!("v2 want {id}"),
        );
        assert_refused(
            &upload_pack(&w.server, "repo", &pkt::v0_want(&[id]), false, &[]),
            &format!("v0 want {id}"),
        );
    }
    assert_unchanged_and_healthy(&w, &seed, "repo", &before);
}

#[test]
fn corrupt_gzip_bodies_are_refused() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = snapshot(&w, "repo");
    let gz = [("Content-Encoding", "gzip")];
    let garbage = b"this is not gzip at all".to_vec();
    let mut truncated = pkt::gzip(&pkt::v2_fetch(&[&seed.c3]));
    truncated.truncate(truncated.len() / 2);
    for (what, body, v2) in [
        ("garbage gzip (v2)", &garbage, true),
        ("garbage gzip (v0)", &garbage, false),
        ("truncated gzip (v2)", &truncated, true),
    ] {
        assert_refused(&upload_pack(&w.server, "repo", body, v2, &gz), what);
    }
    let good = upload_pack(
        &w.server,
        "repo",
        &pkt::gzip(&pkt::v2_fetch(&[&seed.c3])),
        true,
        &gz,
    );
    assert!(
        pkt::has_pack(&good.body),
        "a well-formed gzip body works: {}",
        good.describe()
    );
    assert_unchanged_and_healthy(&w, &seed, "repo", &before);
}

#[test]
fn unknown_repo_and_unknown_service_are_refused() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = snapshot(&w, "repo");
    let resp = w.server.request(
        "GET",
        "/nope.git/info/refs?service=git-upload-pack",
        None,
        &[],
    );
    assert_eq!(
        resp.status,
        404,
        "info/refs of an unknown repo: {}",
        resp.describe()
    );
    let resp = upload_pack(&w.server, "nope", &pkt::v2_ls_refs(), true, &[]);
    assert_eq!(
        resp.status,
        404,
        "upload-pack of an unknown repo: {}",
        resp.describe()
    );
    let resp = w.server.request(
        "GET",
        "/repo.git/info/refs?service=git-frobnicate",
        None,
        &[],
    );
    assert!(
        (400..500).contains(&resp.status),
        "unknown service: {}",
        resp.describe()
    );
    let resp = w.server.request(
        "GET",
        "/../repo.git/info/refs?service=git-upload-pack",
        None,
        &[],
    );
    assert!(
        (400..500).contains(&resp.status),
        "path traversal: {}",
        resp.describe()
    );
    assert_unchanged_and_healthy(&w, &seed, "repo", &before);
}

#[test]
fn invalid_repo_names_are_refused_with_400_and_create_nothing() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = snapshot(&w, "repo");
    let long = "a".repeat(201);
    let names = [
        "../x",
        "a//b",
        "x.git",
        "a/./b",
        "a/../b",
        "/abs",
        "trailing/",
        &long,
        "a+b",
        "",
        "a\nb",
    ];
    for name in names {
        for body in [
            json!({ "name": name }),
            json!({ "name": name, "base_repo": { "url": seed.url } }),
        ] {
            let resp = w.server.try_create(&body);
            assert_eq!(resp.status, 400, "create {name:?}: {}", resp.describe());
            assert!(
                resp.json()["error"].is_string(),
                "create {name:?}: JSON error body: {}",
                resp.describe()
            );
        }
    }
    assert_unchanged_and_healthy(&w, &seed, "repo", &before);
}

#[test]
fn malformed_create_bodies_are_refused_with_400() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = snapshot(&w, "repo");
    let bodies: [(&str, &[u8]); 4] = [
        ("not JSON", b"{not json"),
        (
            "no name",
            br#"{"base_repo": {"url": "http://127.0.0.1:1/x.git"}}"#,
        ),
        ("name not a string", br#"{"name": 42}"#),
        (
            "base_repo without url",
            br#"{"name": "y", "base_repo": {}}"#,
        ),
    ];
    for (what, body) in bodies {
        let resp = w.server.request(
            "POST",
            "/api/repos",
            Some(body),
            &[("Content-Type", "application/json")],
        );
        assert_eq!(resp.status, 400, "{what}: {}", resp.describe());
    }
    assert_unchanged_and_healthy(&w, &seed, "repo", &before);
}

#[test]
fn duplicate_create_is_409_and_keeps_the_first_repo() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = snapshot(&w, "repo");
    let record = w.server.repo("repo");
    for body in [
        json!({ "name": "repo" }),
        json!({ "name": "repo", "base_repo": { "url": w.upstream.url("other") } }),
    ] {
        let resp = w.server.try_create(&body);
        assert_eq!(
            resp.status,
            409,
            "duplicate create {body}: {}",
            resp.describe()
        );
    }
    let after = w.server.repo("repo");
    assert_eq!(after["repo_id"], record["repo_id"], "same repo");
    assert_eq!(after["base_repo"], record["base_repo"], "same upstream");
    assert_unchanged_and_healthy(&w, &seed, "repo", &before);
}
