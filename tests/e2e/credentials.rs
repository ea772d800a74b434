//! Upstream credentials (compat.md §5.6) and detach (§5.8), against an upstream that requires
//! HTTP Basic auth (the CGI bridge answers 401 to anything else, and logs what it was shown):
//! syncs and forwarded pushes present the stored credential; a rotated one is used by the next
//! sync; the secret is found nowhere on disk or in the log; every bad request is refused and
//! changes nothing; a detached mirror keeps everything and stops talking to its upstream.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::clone::check_clone;
use crate::support::http::HttpResponse;
use crate::support::jwt::KeyDir;
use crate::support::server::SyncState;
use crate::support::{SYNC_TIMEOUT, Seed, Server, World, seed_repo, wait_until};

const LEGACY: &str = "/api/v1/repos/git-credentials";

/// A token of the server's own organisation for `repo` (`org` for organisation-wide).
fn token(server: &Server, repo: &str, scopes: &str) -> String {
    server.mint(&["--repo", repo, "--scopes", scopes, "--ttl", "3600"])
}

/// `method path` with a JSON `body` and `token` (none: anonymous).
fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> HttpResponse {
    let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON"));
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    match &bearer {
        Some(b) => headers.push(("Authorization", b.as_str())),
        None => return server.request_anonymous(method, path, bytes.as_deref(), &headers),
    }
    server.request(method, path, bytes.as_deref(), &headers)
}

/// `/api/repos/{name}/git-credentials` + `suffix`.
fn named(name: &str, suffix: &str) -> String {
    Server::repo_path(name, &format!("/git-credentials{suffix}"))
}

#[track_caller]
fn expect_status(resp: &HttpResponse, status: u16, context: &str) {
    assert_eq!(resp.status, status, "{context}: {}", resp.describe());
    if status >= 400 {
        assert!(
            resp.json()["error"].is_string(),
            "{context}: a JSON error body: {}",
            resp.describe()
        );
    }
}

/// Creates the credential of `name` through the legacy route with a token for the repository.
#[track_caller]
fn create_credential(
    server: &Server,
    name: &str,
    username: Option<&str>,
    password: &str,
) -> String {
    let mut body = json!({ "repo_id": name, "password": password });
    if let Some(u) = username {
        body["username"] = json!(u);
    }
    let t = token(server, name, "repo:write");
    let resp = call(server, "POST", LEGACY, Some(&t), Some(&body));
    expect_status(&resp, 201, "create the credential");
    let answer = resp.json();
    let id = answer["id"].as_str().expect("an id").to_owned();
    assert!(
        id.len() == 20 && id.starts_with("ggc_") && id[4..].chars().all(|c| c.is_ascii_hexdigit()),
        "ggc_ + 16 hex: {answer}"
    );
    let created = answer["created_at"].as_str().expect("created_at");
    assert!(
        created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "RFC 3339 created_at: {answer}"
    );
    id
}

/// Waits for the first sync run of `name` to finish; its state.
fn first_run(server: &Server, name: &str) -> SyncState {
    wait_until(SYNC_TIMEOUT, "the first sync run to finish", || {
        let s = server.sync_state(name);
        (s.run_count >= 1 && !s.in_progress).then_some(s)
    })
}

/// A seeded upstream repo `repo` that requires `alice:<password>`, mirrored (and synced) with a
/// stored credential. Returns the world, the seed and the credential id.
fn private_mirror(password: &str) -> (World, Seed, String) {
    private_mirror_with(Server::builder(), password)
}

fn private_mirror_with(
    builder: crate::support::server::ServerBuilder,
    password: &str,
) -> (World, Seed, String) {
    let w = World::with_server(builder);
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.upstream.require_basic_auth(Some(("alice", password)));
    w.server.create_mirror("repo", &seed.url);
    let first = first_run(&w.server, "repo");
    let err = first.last_error.clone().unwrap_or_default();
    assert!(
        first.last_success_at.is_none() && !err.is_empty(),
        "without a credential the private upstream refuses the first sync: {first:?}"
    );
    assert!(
        !err.contains(password),
        "no secret in the error either: {err}"
    );
    let id = create_credential(&w.server, "repo", Some("alice"), password);
    w.server.sync_now("repo");
    (w, seed, id)
}

/// A commit on main pushed through codestorage; its id.
#[track_caller]
fn push_through(w: &World, label: &str) -> String {
    let work = w.git.unique_path(label);
    w.git.clone(&w.server.git_url("repo"), &work, &["-q"]);
    let tip = w
        .git
        .commit_file(&work, &format!("{label}.txt"), format!("{label}\n"), label);
    w.git.push(&work, &["-q", "origin", "main"]);
    tip
}

#[test]
fn a_private_upstream_is_mirrored_and_pushed_to_with_the_stored_credential() {
    let (w, seed, id) = private_mirror("s3cret-one");
    check_clone(&w.git, &seed, &w.server.git_url("repo"));

    let tip = push_through(&w, "pushed");
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        tip,
        "the forwarded push reached the private upstream"
    );
    let log = w.upstream.auth_log();
    assert!(
        log.iter().any(|l| l == "alice:s3cret-one ok"),
        "the upstream saw the stored credential: {log:?}"
    );
    assert!(
        log.iter().all(|l| l.starts_with("alice:")),
        "only the stored user name: {log:?}"
    );

    let record = w.server.repo("repo");
    assert_eq!(record["git_credential"]["id"], id, "{record}");
    assert!(
        !record.to_string().contains("s3cret-one"),
        "never returned: {record}"
    );
}

#[test]
fn a_rotated_credential_is_used_by_the_next_sync() {
    let (w, seed, id) = private_mirror("old-pass");
    let org = token(&w.server, "org", "repo:write");

    // The forge's password changes (and the repo moves on): the stored one is refused.
    w.upstream.require_basic_auth(Some(("alice", "new-pass")));
    let moved = w
        .git
        .commit_file(&seed.work, "after.txt", "after\n", "after rotation");
    seed.publish(&w.git);
    let err = w
        .server
        .try_sync_now("repo")
        .expect_err("old password refused");
    assert!(!err.contains("old-pass"), "{err}");
    assert_eq!(
        w.upstream.auth_log().last().map(String::as_str),
        Some("alice:old-pass refused")
    );

    // Rotate through the legacy route with an organisation-wide token (what the SDK sends):
    // the user name stays alice when the body has none.
    let resp = call(
        &w.server,
        "PUT",
        LEGACY,
        Some(&org),
        Some(&json!({ "id": id, "password": "new-pass" })),
    );
    expect_status(&resp, 200, "rotate");
    assert_eq!(resp.json()["id"], id.as_str());
    w.server.sync_now("repo");
    assert_eq!(
        w.upstream.auth_log().last().map(String::as_str),
        Some("alice:new-pass ok"),
        "the next sync presents the new password"
    );
    let served = w.git.ls_remote(&w.server.git_url("repo"));
    assert!(
        served.contains(&moved),
        "the new commit is served: {served}"
    );

    // And through the name-based route, with a token for the repository.
    w.upstream.require_basic_auth(Some(("bob", "third")));
    let resp = call(
        &w.server,
        "PUT",
        &named("repo", &format!("/{id}")),
        Some(&token(&w.server, "repo", "repo:write")),
        Some(&json!({ "username": "bob", "password": "third" })),
    );
    expect_status(&resp, 200, "rotate by name");
    w.server.sync_now("repo");
    assert_eq!(
        w.upstream.auth_log().last().map(String::as_str),
        Some("bob:third ok")
    );
    // A forwarded push uses it as well.
    let tip = push_through(&w, "after-rotation");
    assert_eq!(w.git.rev_parse(&seed.bare, "refs/heads/main"), tip);
}

#[test]
fn token_only_credentials_present_the_conventional_user_name() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    // A mirror given by URL has no provider: its tokens go with the user name `git`.
    w.upstream.require_basic_auth(Some(("git", "tok-123")));
    w.server.create_mirror("repo", &seed.url);
    first_run(&w.server, "repo");
    create_credential(&w.server, "repo", None, "tok-123");
    w.server.sync_now("repo");
    check_clone(&w.git, &seed, &w.server.git_url("repo"));
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_password_appears_nowhere_under_the_data_dir_or_in_the_log() {
    let builder = Server::builder().env("RUST_LOG", "debug");
    let (mut w, _seed, id) = private_mirror_with(builder, "Pa55-first-secret");
    push_through(&w, "one");
    w.upstream
        .require_basic_auth(Some(("alice", "Pa55-second-secret")));
    let resp = call(
        &w.server,
        "PUT",
        LEGACY,
        Some(&token(&w.server, "org", "repo:write")),
        Some(&json!({ "id": id, "password": "Pa55-second-secret" })),
    );
    expect_status(&resp, 200, "rotate");
    w.server.sync_now("repo");
    push_through(&w, "two");
    let listed = w.server.list_repos().to_string() + &w.server.repo("repo").to_string();
    w.server.stop();

    let b64 = base64::engine::general_purpose::STANDARD;
    let secrets = [
        "Pa55-first-secret".to_owned(),
        "Pa55-second-secret".to_owned(),
        b64.encode("alice:Pa55-first-secret"),
        b64.encode("alice:Pa55-second-secret"),
    ];
    let all = files(w.server.data_dir());
    assert!(
        all.iter().any(|f| f.ends_with("record.json")),
        "the walk sees the records"
    );
    assert!(
        all.iter()
            .any(|f| f.starts_with(w.server.data_dir().join("index"))),
        "and sled's files"
    );
    for f in &all {
        let bytes = std::fs::read(f).expect("read a data file");
        for s in &secrets {
            assert!(
                !contains(&bytes, s.as_bytes()),
                "{s:?} found in {}",
                f.display()
            );
        }
    }
    let log = w.server.stderr() + &w.server.stdout();
    assert!(log.contains("upstream credential rotated"), "the log is on");
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "{s:?} in the server's log");
        assert!(!listed.contains(s.as_str()), "{s:?} in a REST answer");
    }
}

#[test]
fn deleting_a_credential_makes_syncs_anonymous_and_allows_a_new_one() {
    let (w, _seed, id) = private_mirror("pw");
    let repo_token = token(&w.server, "repo", "repo:write");
    let resp = call(
        &w.server,
        "DELETE",
        &named("repo", &format!("/{id}")),
        Some(&repo_token),
        None,
    );
    assert_eq!(resp.status, 204, "delete: {}", resp.describe());
    assert!(resp.body.is_empty(), "204 has no body");
    assert!(w.server.repo("repo")["git_credential"].is_null());
    let before = w.upstream.auth_log().len();
    w.server
        .try_sync_now("repo")
        .expect_err("anonymous sync of a private upstream");
    assert_eq!(
        w.upstream.auth_log().len(),
        before,
        "no credential was presented"
    );
    let again = call(
        &w.server,
        "DELETE",
        &named("repo", &format!("/{id}")),
        Some(&repo_token),
        None,
    );
    expect_status(&again, 404, "a second delete");

    // The legacy delete with an organisation-wide token, after a new create.
    let id2 = create_credential(&w.server, "repo", Some("alice"), "pw");
    assert_ne!(id, id2, "a new id");
    w.server.sync_now("repo");
    let resp = call(
        &w.server,
        "DELETE",
        LEGACY,
        Some(&token(&w.server, "org", "repo:write")),
        Some(&json!({ "id": id2 })),
    );
    assert_eq!(resp.status, 204, "legacy delete: {}", resp.describe());
}

/// One bad request: method, path, token, body, expected status, what it shows.
type Case<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Option<Value>,
    u16,
    &'a str,
);

#[test]
fn bad_credential_requests_are_refused_and_change_nothing() {
    let (w, _seed, id) = private_mirror("good-pass");
    w.server.create_local("local");
    let s = &w.server;
    let repo_w = token(s, "repo", "repo:write");
    let org_w = token(s, "org", "repo:write");
    let other_w = token(s, "other", "repo:write");
    let read_only = token(s, "repo", "git:read,git:write");
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            LEGACY.into(),
            None,
            Some(json!({"repo_id": "repo", "password": "x"})),
            401,
            "no token",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&read_only),
            Some(json!({"repo_id": "repo", "password": "x"})),
            403,
            "no repo:write",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&other_w),
            Some(json!({"repo_id": "repo", "password": "x"})),
            403,
            "token for another repo",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&repo_w),
            Some(json!({"password": "x"})),
            400,
            "missing repo_id",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&repo_w),
            Some(json!({"repo_id": "repo"})),
            400,
            "missing password",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&repo_w),
            Some(json!({"repo_id": "repo", "password": ""})),
            400,
            "empty password",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&repo_w),
            Some(json!({"repo_id": "repo", "password": "a\nb"})),
            400,
            "control characters",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&repo_w),
            Some(json!({"repo_id": "repo", "username": "a:b", "password": "x"})),
            400,
            "':' in the user name",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&repo_w),
            Some(json!({"repo_id": "repo", "password": 7})),
            400,
            "password not a string",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&org_w),
            Some(json!({"repo_id": "nope", "password": "x"})),
            404,
            "unknown repo",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&org_w),
            Some(json!({"repo_id": "local", "password": "x"})),
            400,
            "a repo without upstream",
        ),
        (
            "POST",
            LEGACY.into(),
            Some(&repo_w),
            Some(json!({"repo_id": "repo", "password": "x"})),
            409,
            "one exists already",
        ),
        (
            "POST",
            named("repo", ""),
            Some(&repo_w),
            Some(json!({"repo_id": "other", "password": "x"})),
            400,
            "repo_id differs from the path",
        ),
        (
            "POST",
            named("repo", ""),
            Some(&repo_w),
            Some(json!({"password": "x"})),
            409,
            "one exists already (by name)",
        ),
        (
            "PUT",
            LEGACY.into(),
            Some(&org_w),
            Some(json!({"password": "x"})),
            400,
            "missing id",
        ),
        (
            "PUT",
            LEGACY.into(),
            Some(&org_w),
            Some(json!({"id": id})),
            400,
            "missing password on update",
        ),
        (
            "PUT",
            LEGACY.into(),
            Some(&org_w),
            Some(json!({"id": "ggc_0000000000000000", "password": "x"})),
            404,
            "unknown id",
        ),
        (
            "PUT",
            LEGACY.into(),
            Some(&other_w),
            Some(json!({"id": id, "password": "x"})),
            404,
            "another repo's credential",
        ),
        (
            "PUT",
            LEGACY.into(),
            Some(&read_only),
            Some(json!({"id": id, "password": "x"})),
            403,
            "update without repo:write",
        ),
        (
            "PUT",
            named("repo", "/ggc_0000000000000000"),
            Some(&repo_w),
            Some(json!({"password": "x"})),
            404,
            "unknown id by name",
        ),
        (
            "PUT",
            named("local", &format!("/{id}")),
            Some(&org_w),
            Some(json!({"password": "x"})),
            404,
            "id of another repo by name",
        ),
        (
            "DELETE",
            LEGACY.into(),
            Some(&org_w),
            Some(json!({})),
            400,
            "delete without id",
        ),
        (
            "DELETE",
            LEGACY.into(),
            Some(&org_w),
            Some(json!({"id": "ggc_0000000000000000"})),
            404,
            "delete unknown id",
        ),
        (
            "DELETE",
            named("repo", "/ggc_0000000000000000"),
            Some(&repo_w),
            None,
            404,
            "delete unknown id by name",
        ),
        (
            "DELETE",
            named("nope", &format!("/{id}")),
            Some(&org_w),
            None,
            404,
            "delete in an unknown repo",
        ),
    ];
    for (method, path, tok, body, status, what) in &cases {
        let resp = call(s, method, path, *tok, body.as_ref());
        expect_status(&resp, *status, what);
    }
    let raw = s.request(
        "POST",
        LEGACY,
        Some(b"{not json"),
        &[("Authorization", &format!("Bearer {repo_w}"))],
    );
    expect_status(&raw, 400, "invalid JSON");

    // Nothing changed: the same credential still works, and the local repo has none.
    let record = s.repo("repo");
    assert_eq!(record["git_credential"]["id"], id.as_str(), "{record}");
    assert_eq!(
        record["git_credential"]["created_at"], record["git_credential"]["updated_at"],
        "never rotated: {record}"
    );
    s.sync_now("repo");
    assert!(s.repo("local")["git_credential"].is_null());
}

#[test]
fn another_organisations_credentials_are_not_found() {
    let acme = KeyDir::generate("acme", "es256");
    let config = acme.config_file(Some(&acme.kid()));
    let w = World::with_server(
        Server::builder()
            .arg("--config")
            .arg(config.to_str().expect("utf-8")),
    );
    let seed = seed_repo(&w.git, &w.upstream, "acme/app");
    let ac = acme.signer();
    let create = ac.token(Some("acme/app"), &["repo:write"]);
    let resp = call(
        &w.server,
        "POST",
        "/api/repos",
        Some(&create),
        Some(&json!({ "name": "acme/app", "base_repo": { "url": seed.url } })),
    );
    expect_status(&resp, 201, "acme creates its mirror");
    let resp = call(
        &w.server,
        "POST",
        &named("acme/app", ""),
        Some(&create),
        Some(&json!({ "password": "acme-token" })),
    );
    expect_status(&resp, 201, "acme stores its credential by name");
    let id = resp.json()["id"].as_str().expect("id").to_owned();

    // The data directory's own organisation (not its admin) cannot see it.
    let ours = token(&w.server, "org", "repo:write");
    let cases = [
        (
            "POST",
            LEGACY.to_owned(),
            Some(json!({"repo_id": "acme/app", "password": "x"})),
        ),
        (
            "PUT",
            LEGACY.to_owned(),
            Some(json!({"id": id, "password": "x"})),
        ),
        ("DELETE", LEGACY.to_owned(), Some(json!({"id": id}))),
        ("DELETE", named("acme/app", &format!("/{id}")), None),
    ];
    for (method, path, body) in &cases {
        let resp = call(&w.server, method, path, Some(&ours), body.as_ref());
        expect_status(
            &resp,
            404,
            &format!("{method} {path} from another organisation"),
        );
    }
    // acme itself rotates it with its organisation-wide token.
    let resp = call(
        &w.server,
        "PUT",
        LEGACY,
        Some(&ac.token(Some("org"), &["repo:write"])),
        Some(&json!({ "id": id, "password": "acme-token-2" })),
    );
    expect_status(&resp, 200, "acme rotates");
}

// ---- detach ----

#[test]
fn detach_turns_a_mirror_into_a_local_repo_whose_pushes_stay_local() {
    let (mut w, seed, _id) = private_mirror_with(Server::builder().sync_interval(1), "pw");
    let upstream_main = w.git.rev_parse(&seed.bare, "refs/heads/main");
    let write = token(&w.server, "repo", "git:write");

    let resp = call(
        &w.server,
        "DELETE",
        &Server::repo_path("repo", "/base"),
        Some(&write),
        None,
    );
    expect_status(&resp, 200, "detach");
    assert_eq!(resp.json(), json!({"message": "repository detached"}));
    let record = w.server.repo("repo");
    assert!(record["base_repo"].is_null(), "no upstream: {record}");
    assert!(
        record["git_credential"].is_null(),
        "credential gone: {record}"
    );

    // Idempotent, in both route generations.
    for path in [
        Server::repo_path("repo", "/base"),
        "/api/v1/repos/base".to_owned(),
    ] {
        let resp = call(&w.server, "DELETE", &path, Some(&write), None);
        expect_status(&resp, 200, &format!("detach again via {path}"));
        assert_eq!(resp.json()["message"], "repository detached");
    }
    let resp = w.server.try_pull_upstream("repo");
    expect_status(&resp, 400, "pull-upstream on a detached repo");

    // The upstream moves on; codestorage no longer follows it (interval 1 s).
    w.git
        .commit_file(&seed.work, "upstream-only.txt", "u\n", "upstream only");
    seed.publish(&w.git);
    let requests = w.upstream.requests();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        w.upstream.requests(),
        requests,
        "no upstream traffic after detach"
    );

    // A push stays local; everything is still served.
    let tip = push_through(&w, "local-only");
    assert_ne!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        tip,
        "the push did not reach the upstream"
    );
    assert_eq!(w.upstream.requests(), requests, "not even a request");
    let clone = w.git.unique_path("after-detach");
    w.git
        .clone(&w.server.git_url("repo"), &clone, &["-q", "--mirror"]);
    w.git.fsck_strict(&clone);
    let refs = w.git.served_refs(&clone);
    assert_eq!(refs.get("refs/heads/main"), Some(&tip));
    for (name, id) in w.git.served_refs(&seed.bare) {
        if name != "refs/heads/main" && name != "HEAD" {
            assert_eq!(refs.get(&name), Some(&id), "{name} is still served");
        }
    }
    assert!(
        w.git
            .rev_list_objects(&clone, &[&tip], &[])
            .contains(&upstream_main)
    );

    // Durable: after a restart it is still local.
    w.server.restart();
    assert!(w.server.repo("repo")["base_repo"].is_null());
    let served = w.git.ls_remote(&w.server.git_url("repo"));
    assert!(served.contains(&tip), "served after a restart: {served}");
}

#[test]
fn detach_refuses_callers_without_git_write() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.server.mirror("repo", &seed.url);
    let path = Server::repo_path("repo", "/base");
    expect_status(
        &call(&w.server, "DELETE", &path, None, None),
        401,
        "no token",
    );
    for scopes in ["git:read", "repo:write"] {
        let t = token(&w.server, "repo", scopes);
        expect_status(
            &call(&w.server, "DELETE", &path, Some(&t), None),
            403,
            scopes,
        );
    }
    let other = token(&w.server, "other", "git:write");
    expect_status(
        &call(&w.server, "DELETE", &path, Some(&other), None),
        403,
        "another repo's token",
    );
    let org = token(&w.server, "org", "git:write");
    expect_status(
        &call(
            &w.server,
            "DELETE",
            &Server::repo_path("nope", "/base"),
            Some(&org),
            None,
        ),
        404,
        "unknown repo",
    );
    let legacy_unknown = token(&w.server, "nope", "git:write");
    expect_status(
        &call(
            &w.server,
            "DELETE",
            "/api/v1/repos/base",
            Some(&legacy_unknown),
            None,
        ),
        404,
        "legacy, unknown repo",
    );
    let record = w.server.repo("repo");
    assert!(record["base_repo"].is_object(), "still a mirror: {record}");
    w.server.sync_now("repo");
}

#[test]
fn a_key_from_the_environment_seals_credentials_across_restarts_and_a_bad_one_stops_the_start() {
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let builder = Server::builder().env("CODESTORAGE_SECRET_KEY", key);
    let (mut w, seed, _id) = private_mirror_with(builder, "env-pass");
    assert!(
        !w.server.data_dir().join("keys/secrets.key").exists(),
        "the key comes from the environment: no key file is written"
    );

    // After a restart (same key), the sealed credential opens and the next sync uses it.
    w.server.restart();
    let tip = w
        .git
        .commit_file(&seed.work, "after-restart.txt", "x\n", "after restart");
    seed.publish(&w.git);
    w.server.sync_now("repo");
    check_clone(&w.git, &seed, &w.server.git_url("repo"));
    assert_eq!(w.git.rev_parse(&seed.bare, "refs/heads/main"), tip);

    // A key that is not base64 of 32 bytes: the server refuses to start, saying why, and
    // without echoing the value.
    let data = tempfile::tempdir().expect("data dir");
    for bad in ["too-short", "AAAA"] {
        let mut cmd = std::process::Command::new(crate::support::server::binary());
        crate::support::git::hermetic_env(&mut cmd, data.path());
        cmd.arg("--data-dir")
            .arg(data.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("CODESTORAGE_SECRET_KEY", bad);
        let out = crate::support::run_command(&mut cmd, Duration::from_secs(30));
        assert!(
            !out.success(),
            "started with key {bad:?}: {}",
            out.describe()
        );
        assert!(
            out.stderr.contains("CODESTORAGE_SECRET_KEY") && !out.stderr.contains(bad),
            "names the variable, not its value: {}",
            out.describe()
        );
    }
}
