//! Authentication and authorization (issue 4; compat.md §1, §7): who may clone, push and call
//! the REST API.
//!
//! - A missing or invalid token (garbage, `alg: none`, HS256 keyed with the public key, a
//!   tampered payload, expired or issued in the future beyond the 60 s leeway, an unknown
//!   issuer or key id, a revoked token) gets 401 with `WWW-Authenticate: Basic
//!   realm="codestorage"` on git and REST alike; git says "Authentication failed".
//! - A valid token for another repository, another organisation's repository, or without the
//!   scope gets 403; git says "The requested URL returned error: 403".
//! - Every refusal changes nothing: the refs served, the repository list.
//!
//! Also the CLI side: `token mint` prints a JWT git accepts, `token revoke` and `keys generate`
//! take effect on the running server at once.
//!
//! Shared by `policy` and `ephemeral`: [`local_repo`], [`ls_remote_map`], [`rest`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::http::HttpResponse;
use crate::support::jwt::{self, KeyDir, Signer};
use crate::support::{Git, Out, Server, World, assert_maps_eq, seed_repo};

/// The challenge of every 401.
pub(crate) const CHALLENGE: &str = "Basic realm=\"codestorage\"";

// ---- shared helpers ----

/// `git ls-remote URL` as `refname -> id` (peeled `^{}` entries and `HEAD` included).
#[track_caller]
pub(crate) fn ls_remote_map(git: &Git, url: &str) -> BTreeMap<String, String> {
    git.run(git.scratch(), &["ls-remote", url])
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, name)| (name.to_owned(), id.to_owned()))
        .collect()
}

/// What codestorage serves of `name` (`x` or `x+ephemeral`), read with the admin token.
#[track_caller]
pub(crate) fn served(w: &World, name: &str) -> BTreeMap<String, String> {
    ls_remote_map(&w.git, &w.server.git_url(name))
}

/// A repository without upstream called `name`, filled by the admin from a fresh working repo:
/// `main` (three commits), `feature/x` (from the second), `release` (= main), tag `v1` (on the
/// first). Returns the working repo, on `main`, whose remote `cs` is codestorage (admin token).
#[track_caller]
pub(crate) fn local_repo(w: &World, name: &str) -> PathBuf {
    w.server.create_local(name);
    let work = w.git.init(&format!("work-{}", name.replace('/', "_")));
    let c1 = w.git.commit_file(&work, "a.txt", "one\n", "c1");
    w.git.run(&work, &["tag", "v1", &c1]);
    w.git.commit_file(&work, "a.txt", "two\n", "c2");
    w.git.run(&work, &["branch", "feature/x"]);
    w.git.commit_file(&work, "a.txt", "three\n", "c3");
    w.git.run(&work, &["branch", "release"]);
    w.git
        .run(&work, &["remote", "add", "cs", &w.server.git_url(name)]);
    w.git.push(
        &work,
        &[
            "-q",
            "cs",
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ],
    );
    work
}

/// A REST call with `Authorization: Bearer <token>` (none when `token` is `None`) and a JSON
/// body if given.
#[track_caller]
pub(crate) fn rest(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> HttpResponse {
    let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON"));
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let body = match (&bytes, method) {
        (Some(b), _) => Some(b.as_slice()),
        (None, "POST" | "PUT" | "DELETE") => Some(&b""[..]),
        (None, _) => None,
    };
    if token.is_some() {
        server.request(method, path, body, &headers)
    } else {
        server.request_anonymous(method, path, body, &headers)
    }
}

/// A REST call with HTTP Basic `t:<token>`.
#[track_caller]
fn rest_basic(server: &Server, method: &str, path: &str, token: &str) -> HttpResponse {
    let basic = format!("Basic {}", b64(&format!("t:{token}")));
    server.request(method, path, None, &[("Authorization", &basic)])
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `GET /<name>.git/info/refs?service=SERVICE` with Basic `t:<token>` (none if `None`).
#[track_caller]
pub(crate) fn info_refs(
    server: &Server,
    name: &str,
    service: &str,
    token: Option<&str>,
) -> HttpResponse {
    let path = format!("/{name}.git/info/refs?service={service}");
    match token {
        Some(t) => {
            let basic = format!("Basic {}", b64(&format!("t:{t}")));
            server.request("GET", &path, None, &[("Authorization", &basic)])
        }
        None => server.request_anonymous("GET", &path, None, &[]),
    }
}

/// A 401 with the Basic challenge.
#[track_caller]
pub(crate) fn assert_401(resp: &HttpResponse, what: &str) {
    assert_eq!(resp.status, 401, "{what}: {}", resp.describe());
    assert_eq!(
        resp.header("www-authenticate"),
        Some(CHALLENGE),
        "{what}: the 401 carries the Basic challenge; headers {:?}",
        resp.headers
    );
}

/// A 403 (and no challenge).
#[track_caller]
pub(crate) fn assert_403(resp: &HttpResponse, what: &str) {
    assert_eq!(resp.status, 403, "{what}: {}", resp.describe());
    assert_eq!(
        resp.header("www-authenticate"),
        None,
        "{what}: a 403 carries no challenge"
    );
}

/// A REST 401/403 carries the JSON error envelope.
#[track_caller]
fn assert_json_error(resp: &HttpResponse, what: &str) {
    let body = resp.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: JSON error envelope expected, got {body}"
    );
}

/// git failed because the server answered 401: it says "Authentication failed" (credentials in
/// the URL) or that it cannot prompt (no credentials).
#[track_caller]
pub(crate) fn assert_git_401(out: &Out, what: &str) {
    assert!(
        !out.success(),
        "{what}: git succeeded with a bad token\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("Authentication failed")
            || out.stderr.contains("could not read Username"),
        "{what}: git should report an authentication failure\n{}",
        out.describe()
    );
    // git says "The requested URL returned error: 403"; match that, not any "403" (a random
    // port in a URL can contain it).
    assert!(
        !out.stderr.contains("error: 403"),
        "{what}: a 401, not a 403\n{}",
        out.describe()
    );
}

/// git failed because the server answered 403.
#[track_caller]
pub(crate) fn assert_git_403(out: &Out, what: &str) {
    assert!(
        !out.success(),
        "{what}: git succeeded without the right\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("The requested URL returned error: 403"),
        "{what}: git should report the 403\n{}",
        out.describe()
    );
}

/// `git ls-remote URL`, whatever the outcome.
fn try_ls_remote(git: &Git, url: &str) -> Out {
    git.try_run(git.scratch(), &["ls-remote", url])
}

/// `git clone URL` into a fresh dir, whatever the outcome; the dir.
fn try_clone(git: &Git, url: &str) -> (Out, PathBuf) {
    let dest = git.unique_path("clone");
    let d = dest.to_str().expect("utf-8 path").to_owned();
    (git.try_run(git.scratch(), &["clone", "-q", url, &d]), dest)
}

/// `git push URL REFSPECS` from `work`, whatever the outcome.
pub(crate) fn try_push(git: &Git, work: &Path, url: &str, refspecs: &[&str]) -> Out {
    let mut args = vec!["push", url];
    args.extend_from_slice(refspecs);
    git.try_run(work, &args)
}

/// A new commit on a detached HEAD of `work` (no branch moves), for pushes that must not land.
#[track_caller]
pub(crate) fn commit_detached(git: &Git, work: &Path, on: &str, file: &str) -> String {
    git.run(work, &["switch", "-q", "--detach", on]);
    let id = git.commit_file(work, file, format!("{file}\n"), file);
    git.run(work, &["switch", "-q", "-"]);
    id
}

/// What a refused request must leave alone.
#[derive(Debug, PartialEq)]
struct State {
    refs: BTreeMap<String, String>,
    repos: Vec<String>,
}

#[track_caller]
fn state(w: &World, name: &str) -> State {
    State {
        refs: served(w, name),
        repos: Server::listed_names(&w.server.list_repos()),
    }
}

#[track_caller]
fn assert_unchanged(w: &World, name: &str, before: &State, what: &str) {
    let after = state(w, name);
    assert_maps_eq(&after.refs, &before.refs, &format!("{what}: refs served"));
    assert_eq!(after.repos, before.repos, "{what}: the repository list");
}

/// Everything a bad `token` must be refused for with a 401, changing nothing: git (ls-remote,
/// clone, push) and REST (show, create, delete, pull-upstream; Bearer and Basic).
#[track_caller]
fn check_refused_401(w: &World, work: &Path, repo: &str, token: &str, what: &str) {
    let before = state(w, repo);
    let url = w.server.git_url_with(repo, token);
    for service in ["git-upload-pack", "git-receive-pack"] {
        assert_401(
            &info_refs(&w.server, repo, service, Some(token)),
            &format!("{what}: info/refs {service}"),
        );
    }
    assert_git_401(&try_ls_remote(&w.git, &url), &format!("{what}: ls-remote"));
    let (out, dest) = try_clone(&w.git, &url);
    assert_git_401(&out, &format!("{what}: clone"));
    assert!(!dest.exists(), "{what}: a failed clone leaves no dir");
    let main = &before.refs["refs/heads/main"];
    let new = commit_detached(&w.git, work, main, "refused.txt");
    let out = try_push(
        &w.git,
        work,
        &url,
        &[
            &format!("{new}:refs/heads/main"),
            &format!("{new}:refs/heads/new"),
        ],
    );
    assert_git_401(&out, &format!("{what}: push"));

    let show = Server::repo_path(repo, "");
    for resp in [
        rest(&w.server, "GET", &show, Some(token), None),
        rest_basic(&w.server, "GET", &show, token),
        rest(&w.server, "GET", "/api/repos", Some(token), None),
        rest(&w.server, "DELETE", &show, Some(token), None),
        rest(
            &w.server,
            "POST",
            "/api/repos",
            Some(token),
            Some(&json!({"name": "created-by-a-bad-token"})),
        ),
        rest(&w.server, "GET", "/api/v1/repo", Some(token), None),
        rest(
            &w.server,
            "POST",
            &Server::repo_path(repo, "/branches/create"),
            Some(token),
            Some(&json!({"base_branch": "main", "target_branch": "made-by-a-bad-token"})),
        ),
    ] {
        assert_401(&resp, &format!("{what}: REST"));
        assert_json_error(&resp, &format!("{what}: REST"));
    }
    assert_unchanged(w, repo, &before, what);
}

// =====================================================================================
// 1. 401: missing and invalid tokens
// =====================================================================================

#[test]
fn missing_token_gets_401_with_the_basic_challenge_on_git_and_rest() {
    let w = World::new();
    let work = local_repo(&w, "r");
    let before = state(&w, "r");
    for service in ["git-upload-pack", "git-receive-pack"] {
        assert_401(
            &info_refs(&w.server, "r", service, None),
            &format!("no token: info/refs {service}"),
        );
    }
    let url = w.server.git_url_plain("r");
    assert_git_401(&try_ls_remote(&w.git, &url), "no token: ls-remote");
    let (out, dest) = try_clone(&w.git, &url);
    assert_git_401(&out, "no token: clone");
    assert!(!dest.exists(), "a failed clone leaves no dir");
    let new = commit_detached(&w.git, &work, "main", "anon.txt");
    assert_git_401(
        &try_push(&w.git, &work, &url, &[&format!("{new}:refs/heads/main")]),
        "no token: push",
    );
    for (method, path) in [
        ("GET", "/api/repos".to_owned()),
        ("GET", Server::repo_path("r", "")),
        ("GET", Server::repo_path("r", "/branches")),
        ("DELETE", Server::repo_path("r", "")),
        ("POST", "/api/repos".to_owned()),
        ("GET", "/api/v1/repo".to_owned()),
    ] {
        let resp = rest(
            &w.server,
            method,
            &path,
            None,
            Some(&json!({"name": "anon"})),
        );
        assert_401(&resp, &format!("no token: {method} {path}"));
        assert_json_error(&resp, &format!("no token: {method} {path}"));
    }
    // An Authorization header without a token in it is no token either.
    for header in ["Bearer ", "Basic ", "Basic dDo=", "Token abc"] {
        let resp = w.server.request(
            "GET",
            &Server::repo_path("r", ""),
            None,
            &[("Authorization", header)],
        );
        assert_401(&resp, &format!("Authorization: {header:?}"));
    }
    assert_unchanged(&w, "r", &before, "no token");
}

#[test]
fn invalid_tokens_get_401_on_git_and_rest_and_change_nothing() {
    let w = World::new();
    let work = local_repo(&w, "r");
    let key = Signer::from_data_dir(w.server.data_dir());
    let now = jwt::now();
    let write = ["git:read", "git:write", "repo:write"];
    let good = key.token(Some("r"), &["git:read"]);
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "not-a-jwt".to_owned()),
        ("three garbage parts", "a.b.c".to_owned()),
        (
            "alg none",
            jwt::forge(
                &json!({"alg": "none", "typ": "JWT"}),
                &jwt::claims(&key.org, Some("r"), &write),
                "",
            ),
        ),
        (
            "alg none with the real kid",
            jwt::forge(
                &json!({"alg": "none", "typ": "JWT", "kid": key.kid}),
                &jwt::claims(&key.org, Some("r"), &write),
                "",
            ),
        ),
        (
            "HS256 keyed with the public key",
            jwt::hs256(
                &key.public_pem,
                key.kid.as_deref(),
                &jwt::claims(&key.org, Some("r"), &write),
            ),
        ),
        (
            "HS256 keyed with the public key, no kid",
            jwt::hs256(
                &key.public_pem,
                None,
                &jwt::claims(&key.org, Some("r"), &write),
            ),
        ),
        (
            "tampered payload (scopes raised to admin)",
            jwt::tamper(&good, |c| c["scopes"] = json!(["admin"])),
        ),
        (
            "tampered payload (exp pushed out)",
            jwt::tamper(&good, |c| c["exp"] = json!(now + 10 * 365 * 86_400)),
        ),
        (
            "signature of another token",
            format!(
                "{}.{}",
                good.rsplit_once('.').expect("a JWT").0,
                key.token(Some("other"), &["git:read"])
                    .rsplit_once('.')
                    .expect("a JWT")
                    .1
            ),
        ),
        (
            "expired beyond the leeway",
            key.token_with(Some("r"), &write, |c| {
                c["iat"] = json!(now - 3600);
                c["exp"] = json!(now - 120);
            }),
        ),
        (
            "issued in the future beyond the leeway",
            key.token_with(Some("r"), &write, |c| {
                c["iat"] = json!(now + 600);
                c["exp"] = json!(now + 4200);
            }),
        ),
        (
            "no exp",
            key.token_with(Some("r"), &write, |c| {
                c.as_object_mut().expect("object").remove("exp");
            }),
        ),
        (
            "unknown issuer",
            key.token_with(Some("r"), &write, |c| c["iss"] = json!("evil-corp")),
        ),
        (
            "no issuer",
            key.token_with(Some("r"), &write, |c| {
                c.as_object_mut().expect("object").remove("iss");
            }),
        ),
        (
            "unknown kid",
            key.with_kid(Some("no-such-key")).token(Some("r"), &write),
        ),
    ];
    for (what, token) in &cases {
        check_refused_401(&w, &work, "r", token, what);
    }
}

#[test]
fn clock_skew_within_the_60_second_leeway_is_accepted() {
    let w = World::new();
    local_repo(&w, "r");
    let key = Signer::from_data_dir(w.server.data_dir());
    let now = jwt::now();
    let cases = [
        (
            "expired 20 s ago",
            key.token_with(Some("r"), &["git:read"], |c| {
                c["iat"] = json!(now - 600);
                c["exp"] = json!(now - 20);
            }),
        ),
        (
            "issued 20 s in the future",
            key.token_with(Some("r"), &["git:read"], |c| {
                c["iat"] = json!(now + 20);
            }),
        ),
        (
            "no kid (every key of the issuer is tried)",
            key.with_kid(None).token(Some("r"), &["git:read"]),
        ),
    ];
    let expected = served(&w, "r");
    for (what, token) in &cases {
        let url = w.server.git_url_with("r", token);
        assert_eq!(ls_remote_map(&w.git, &url), expected, "{what}: ls-remote");
        let resp = rest(
            &w.server,
            "GET",
            &Server::repo_path("r", ""),
            Some(token),
            None,
        );
        assert_eq!(resp.status, 200, "{what}: REST show: {}", resp.describe());
    }
}

// =====================================================================================
// 2. 403: valid tokens without the right
// =====================================================================================

#[test]
fn a_token_for_another_repo_or_without_the_scope_gets_403_and_changes_nothing() {
    let w = World::new();
    let work = local_repo(&w, "r");
    w.server.create_local("other");
    let before = state(&w, "r");
    let main = before.refs["refs/heads/main"].clone();
    let new = commit_detached(&w.git, &work, &main, "forbidden.txt");
    let push_main = format!("{new}:refs/heads/main");

    let cases = [
        (
            "a git:write token for another repo",
            w.server
                .mint(&["--repo", "other", "--scopes", "git:read,git:write"]),
        ),
        (
            "a token without scopes",
            w.server.mint(&["--repo", "r", "--scopes", ""]),
        ),
        (
            "a repo:write token (no git:read)",
            w.server.mint(&["--repo", "r", "--scopes", "repo:write"]),
        ),
        (
            "an org:read org-wide token",
            w.server.mint(&["--repo", "org", "--scopes", "org:read"]),
        ),
    ];
    for (what, token) in &cases {
        let url = w.server.git_url_with("r", token);
        for service in ["git-upload-pack", "git-receive-pack"] {
            assert_403(
                &info_refs(&w.server, "r", service, Some(token)),
                &format!("{what}: info/refs {service}"),
            );
        }
        assert_git_403(&try_ls_remote(&w.git, &url), &format!("{what}: ls-remote"));
        let (out, dest) = try_clone(&w.git, &url);
        assert_git_403(&out, &format!("{what}: clone"));
        assert!(!dest.exists(), "{what}: a failed clone leaves no dir");
        assert_git_403(
            &try_push(
                &w.git,
                &work,
                &url,
                std::slice::from_ref(&push_main.as_str()),
            ),
            &format!("{what}: push"),
        );
        let resp = rest(
            &w.server,
            "GET",
            &Server::repo_path("r", ""),
            Some(token),
            None,
        );
        assert_403(&resp, &format!("{what}: REST show"));
        assert_json_error(&resp, &format!("{what}: REST show"));
        assert_unchanged(&w, "r", &before, what);
    }

    // A read-only token reads, and its push is refused at info/refs (403): git prints an
    // error and nothing moves.
    let read = w.server.mint(&["--repo", "r", "--scopes", "git:read"]);
    let url = w.server.git_url_with("r", &read);
    assert_eq!(ls_remote_map(&w.git, &url), before.refs, "git:read reads");
    let (out, _) = try_clone(&w.git, &url);
    assert!(out.success(), "git:read clones\n{}", out.describe());
    assert_403(
        &info_refs(&w.server, "r", "git-receive-pack", Some(&read)),
        "git:read: info/refs receive-pack",
    );
    let out = try_push(
        &w.git,
        &work,
        &url,
        &[&push_main, &format!("{new}:refs/heads/brand-new")],
    );
    assert_git_403(&out, "git:read: push");
    let out = try_push(&w.git, &work, &url, &[":refs/heads/feature/x"]);
    assert_git_403(&out, "git:read: deletion");
    assert_unchanged(&w, "r", &before, "git:read pushes");

    // git:write implies git:read, and pushes.
    let write = w.server.mint(&["--repo", "r", "--scopes", "git:write"]);
    let url = w.server.git_url_with("r", &write);
    assert_eq!(ls_remote_map(&w.git, &url), before.refs, "git:write reads");
    let out = try_push(&w.git, &work, &url, &[&push_main]);
    assert!(out.success(), "git:write pushes\n{}", out.describe());
    assert_eq!(served(&w, "r")["refs/heads/main"], new, "main moved");
}

#[test]
fn a_token_for_a_repo_works_for_its_ephemeral_namespace_and_no_other_token_does() {
    let w = World::new();
    let work = local_repo(&w, "x");
    w.server.create_local("y");
    let main = served(&w, "x")["refs/heads/main"].clone();

    // A git:write token for x pushes to and clones x+ephemeral.
    let x = w
        .server
        .mint(&["--repo", "x", "--scopes", "git:read,git:write"]);
    let url = w.server.git_url_with("x+ephemeral", &x);
    let out = try_push(&w.git, &work, &url, &[&format!("{main}:refs/heads/eph")]);
    assert!(
        out.success(),
        "x's token pushes to x+ephemeral\n{}",
        out.describe()
    );
    let (out, dest) = try_clone(&w.git, &url);
    assert!(
        out.success(),
        "x's token clones x+ephemeral\n{}",
        out.describe()
    );
    assert_eq!(
        w.git.rev_parse(&dest, "refs/remotes/origin/eph"),
        main,
        "the clone has the ephemeral branch"
    );
    let before = served(&w, "x+ephemeral");
    assert_eq!(before.get("refs/heads/eph"), Some(&main), "eph served");

    // A read-only token for x reads x+ephemeral but cannot push to it.
    let xr = w.server.mint(&["--repo", "x", "--scopes", "git:read"]);
    let url = w.server.git_url_with("x+ephemeral", &xr);
    assert_eq!(ls_remote_map(&w.git, &url), before, "x's read token reads");
    assert_git_403(
        &try_push(&w.git, &work, &url, &[&format!("{main}:refs/heads/eph2")]),
        "x's read token pushes to x+ephemeral",
    );

    // Tokens for y, even with every scope, get 403 on x+ephemeral.
    for scopes in ["git:read", "git:read,git:write,repo:write"] {
        let y = w.server.mint(&["--repo", "y", "--scopes", scopes]);
        let url = w.server.git_url_with("x+ephemeral", &y);
        let what = format!("y's token ({scopes}) on x+ephemeral");
        for service in ["git-upload-pack", "git-receive-pack"] {
            assert_403(
                &info_refs(&w.server, "x+ephemeral", service, Some(&y)),
                &format!("{what}: info/refs {service}"),
            );
        }
        assert_git_403(&try_ls_remote(&w.git, &url), &format!("{what}: ls-remote"));
        assert_git_403(
            &try_push(&w.git, &work, &url, &[&format!("{main}:refs/heads/from-y")]),
            &format!("{what}: push"),
        );
        let resp = rest(
            &w.server,
            "GET",
            &Server::repo_path("x", "/branches?ephemeral=true"),
            Some(&y),
            None,
        );
        assert_403(&resp, &format!("{what}: REST ephemeral branches"));
    }
    // And bad tokens get 401 there too.
    let out = try_ls_remote(&w.git, &w.server.git_url_with("x+ephemeral", "garbage"));
    assert_git_401(&out, "garbage token on x+ephemeral");
    assert_401(
        &info_refs(&w.server, "x+ephemeral", "git-upload-pack", None),
        "no token on x+ephemeral",
    );
    assert_eq!(served(&w, "x+ephemeral"), before, "x+ephemeral unchanged");
}

// =====================================================================================
// 3. Organisations: a second issuer from --config
// =====================================================================================

#[test]
fn another_organisations_tokens_and_repos_are_kept_apart() {
    let acme = KeyDir::generate("acme", "es256");
    let config = acme.config_file(Some(&acme.kid()));
    let w = World::with_server(
        Server::builder()
            .arg("--config")
            .arg(config.to_str().expect("utf-8 path")),
    );
    let work = local_repo(&w, "r");
    let local = Signer::from_data_dir(w.server.data_dir());
    let ac = acme.signer();

    // acme creates its repository with a repo:write token and fills it with git:write.
    let create = ac.token(Some("acme/app"), &["repo:write"]);
    let resp = rest(
        &w.server,
        "POST",
        "/api/repos",
        Some(&create),
        Some(&json!({"name": "acme/app"})),
    );
    assert_eq!(
        resp.status,
        201,
        "acme creates acme/app: {}",
        resp.describe()
    );
    let acme_write = ac.token(Some("acme/app"), &["git:read", "git:write"]);
    let acme_url = w.server.git_url_with("acme/app", &acme_write);
    let out = try_push(
        &w.git,
        &work,
        &acme_url,
        &["refs/heads/main:refs/heads/main"],
    );
    assert!(out.success(), "acme pushes to its repo\n{}", out.describe());
    let acme_refs = served(&w, "acme/app");
    assert_eq!(
        ls_remote_map(&w.git, &acme_url),
        acme_refs,
        "acme reads its repo"
    );
    let r_refs = served(&w, "r");
    let repos = Server::listed_names(&w.server.list_repos());
    assert_eq!(repos, vec!["acme/app", "r"], "the admin lists both");

    // The data dir org's non-admin tokens, whatever their scopes, get 403 on acme's repo.
    let main = r_refs["refs/heads/main"].clone();
    let new = commit_detached(&w.git, &work, &main, "cross-org.txt");
    for scopes in [&["git:read"][..], &["git:read", "git:write", "repo:write"]] {
        for repo in [Some("acme/app"), None] {
            let t = local.token(repo, scopes);
            let what = format!("local token {scopes:?} repo {repo:?} on acme/app");
            let url = w.server.git_url_with("acme/app", &t);
            assert_git_403(&try_ls_remote(&w.git, &url), &what);
            assert_git_403(
                &try_push(&w.git, &work, &url, &[&format!("{new}:refs/heads/main")]),
                &what,
            );
            for (method, path) in [
                ("GET", Server::repo_path("acme/app", "")),
                ("DELETE", Server::repo_path("acme/app", "")),
                ("GET", Server::repo_path("acme/app", "/branches")),
            ] {
                assert_403(
                    &rest(&w.server, method, &path, Some(&t), None),
                    &format!("{what}: {method} {path}"),
                );
            }
        }
    }
    // ... and the other way round: acme's tokens get 403 on the data dir org's repo, even
    // an "admin" one (admin is only the data dir's own org).
    for scopes in [&["git:read", "git:write"][..], &["admin"]] {
        for repo in [Some("r"), None] {
            let t = ac.token(repo, scopes);
            let what = format!("acme token {scopes:?} repo {repo:?} on r");
            let url = w.server.git_url_with("r", &t);
            assert_git_403(&try_ls_remote(&w.git, &url), &what);
            assert_git_403(
                &try_push(&w.git, &work, &url, &[&format!("{new}:refs/heads/main")]),
                &what,
            );
            for (method, path) in [
                ("GET", Server::repo_path("r", "")),
                ("DELETE", Server::repo_path("r", "")),
                ("POST", Server::repo_path("r", "/pull-upstream")),
            ] {
                assert_403(
                    &rest(&w.server, method, &path, Some(&t), None),
                    &format!("{what}: {method} {path}"),
                );
            }
        }
    }
    let fake_admin = ac.token(None, &["admin"]);
    assert_403(
        &rest(
            &w.server,
            "POST",
            "/api/repos",
            Some(&fake_admin),
            Some(&json!({"name": "made-by-acme-admin"})),
        ),
        "acme 'admin' creating a repo",
    );

    // Listing: each org-wide org:read token sees its own org's repos only.
    let list = |t: &str| {
        let resp = rest(&w.server, "GET", "/api/repos", Some(t), None);
        assert_eq!(resp.status, 200, "list: {}", resp.describe());
        Server::listed_names(&resp.json())
    };
    assert_eq!(
        list(&ac.token(Some("org"), &["org:read"])),
        vec!["acme/app"]
    );
    assert_eq!(list(&ac.token(None, &["org:read"])), vec!["acme/app"]);
    assert_eq!(list(&local.token(Some("org"), &["org:read"])), vec!["r"]);

    // The configured kid: a token naming another kid is refused (401); no kid is fine.
    let t = ac
        .with_kid(Some("not-acmes-kid"))
        .token(Some("acme/app"), &["git:read"]);
    assert_git_401(
        &try_ls_remote(&w.git, &w.server.git_url_with("acme/app", &t)),
        "acme token with an unknown kid",
    );
    let t = ac.with_kid(None).token(Some("acme/app"), &["git:read"]);
    assert_eq!(
        ls_remote_map(&w.git, &w.server.git_url_with("acme/app", &t)),
        acme_refs,
        "acme token without kid"
    );
    // Keys are per issuer: acme's key cannot sign for the data dir's org, nor the other way.
    let t = ac.sign(&jwt::claims(&local.org, Some("r"), &["git:read"]));
    assert_git_401(
        &try_ls_remote(&w.git, &w.server.git_url_with("r", &t)),
        "a token of the local org signed with acme's key",
    );
    let t = local.sign(&jwt::claims("acme", Some("acme/app"), &["git:read"]));
    assert_git_401(
        &try_ls_remote(&w.git, &w.server.git_url_with("acme/app", &t)),
        "an acme token signed with the local key",
    );

    // Nothing changed; the admin still reaches both.
    assert_eq!(served(&w, "r"), r_refs, "r unchanged");
    assert_eq!(served(&w, "acme/app"), acme_refs, "acme/app unchanged");
    assert_eq!(
        Server::listed_names(&w.server.list_repos()),
        repos,
        "no repo created or deleted"
    );
    // acme deletes its own repository with repo:write.
    let resp = rest(
        &w.server,
        "DELETE",
        &Server::repo_path("acme/app", ""),
        Some(&create),
        None,
    );
    assert_eq!(
        resp.status,
        200,
        "acme deletes acme/app: {}",
        resp.describe()
    );
    assert_eq!(
        Server::listed_names(&w.server.list_repos()),
        vec!["r"],
        "acme/app gone"
    );
}

// =====================================================================================
// 4. REST scopes
// =====================================================================================

#[test]
fn rest_routes_need_their_scopes() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "m");
    w.server.mirror("m", &seed.url);
    local_repo(&w, "r");
    let mint = |repo: &str, scopes: &str| w.server.mint(&["--repo", repo, "--scopes", scopes]);
    let status = |method: &str, path: &str, token: &str, body: Option<&Value>| {
        rest(&w.server, method, path, Some(token), body)
    };

    // Create needs repo:write (for that name, or org-wide).
    let body = json!({"name": "new1"});
    for (what, t) in [
        ("git:write for the name", mint("new1", "git:read,git:write")),
        ("repo:write for another name", mint("other", "repo:write")),
        ("org:read org-wide", mint("org", "org:read")),
    ] {
        assert_403(
            &status("POST", "/api/repos", &t, Some(&body)),
            &format!("create with {what}"),
        );
    }
    assert!(
        !Server::listed_names(&w.server.list_repos()).contains(&"new1".to_owned()),
        "new1 not created"
    );
    let resp = status(
        "POST",
        "/api/repos",
        &mint("new1", "repo:write"),
        Some(&body),
    );
    assert_eq!(
        resp.status,
        201,
        "create with repo:write: {}",
        resp.describe()
    );
    let resp = status(
        "POST",
        "/api/repos",
        &mint("org", "repo:write"),
        Some(&json!({"name": "new2"})),
    );
    assert_eq!(
        resp.status,
        201,
        "create with org-wide repo:write: {}",
        resp.describe()
    );
    // Legacy create: the name comes from the token.
    let resp = status(
        "POST",
        "/api/v1/repos",
        &mint("new3", "git:write"),
        Some(&json!({})),
    );
    assert_403(&resp, "legacy create with git:write");
    let resp = status(
        "POST",
        "/api/v1/repos",
        &mint("new3", "repo:write"),
        Some(&json!({})),
    );
    assert_eq!(resp.status, 201, "legacy create: {}", resp.describe());

    // List needs org:read on an org-wide token.
    for (what, t) in [
        ("org:read for one repo", mint("r", "org:read")),
        (
            "git:read org-wide",
            mint("org", "git:read,git:write,repo:write"),
        ),
    ] {
        assert_403(
            &status("GET", "/api/repos", &t, None),
            &format!("list with {what}"),
        );
        assert_403(
            &status("GET", "/api/v1/repos", &t, None),
            &format!("legacy list with {what}"),
        );
    }
    let org = mint("org", "org:read");
    for path in ["/api/repos", "/api/v1/repos"] {
        let resp = status("GET", path, &org, None);
        assert_eq!(
            resp.status,
            200,
            "{path} with org:read: {}",
            resp.describe()
        );
        assert_eq!(
            Server::listed_names(&resp.json()),
            vec!["m", "new1", "new2", "new3", "r"],
            "{path}"
        );
    }

    // Show needs git:read (git:write implies it).
    for (what, t) in [
        ("repo:write", mint("r", "repo:write")),
        ("no scope", mint("r", "")),
    ] {
        assert_403(
            &status("GET", &Server::repo_path("r", ""), &t, None),
            &format!("show with {what}"),
        );
        assert_403(
            &status("GET", "/api/v1/repo", &t, None),
            &format!("legacy show with {what}"),
        );
    }
    // (The legacy route shows the token's own repository, so "another repo" is new-route only.)
    assert_403(
        &status(
            "GET",
            &Server::repo_path("r", ""),
            &mint("m", "git:read"),
            None,
        ),
        "show with git:read for another repo",
    );
    for scopes in ["git:read", "git:write"] {
        let t = mint("r", scopes);
        let resp = status("GET", &Server::repo_path("r", ""), &t, None);
        assert_eq!(resp.status, 200, "show with {scopes}: {}", resp.describe());
        assert_eq!(resp.json()["name"], "r");
        let resp = status("GET", "/api/v1/repo", &t, None);
        assert_eq!(
            resp.status,
            200,
            "legacy show with {scopes}: {}",
            resp.describe()
        );
        assert_eq!(resp.json()["name"], "r");
        let resp = status("GET", &Server::repo_path("r", "/branches"), &t, None);
        assert_eq!(
            resp.status,
            200,
            "branches with {scopes}: {}",
            resp.describe()
        );
    }

    // Pull-upstream needs git:write.
    let runs = w.server.sync_state("m").run_count;
    for (what, t) in [
        ("git:read", mint("m", "git:read")),
        ("repo:write", mint("m", "repo:write")),
    ] {
        assert_403(
            &status("POST", &Server::repo_path("m", "/pull-upstream"), &t, None),
            &format!("pull-upstream with {what}"),
        );
        assert_403(
            &status("POST", "/api/v1/repos/pull-upstream", &t, None),
            &format!("legacy pull-upstream with {what}"),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        w.server.sync_state("m").run_count,
        runs,
        "no sync was started"
    );
    let t = mint("m", "git:write");
    let resp = status("POST", &Server::repo_path("m", "/pull-upstream"), &t, None);
    assert_eq!(
        resp.status,
        202,
        "pull-upstream with git:write: {}",
        resp.describe()
    );
    let resp = status("POST", "/api/v1/repos/pull-upstream", &t, None);
    assert_eq!(
        resp.status,
        202,
        "legacy pull-upstream with git:write: {}",
        resp.describe()
    );

    // Branch writes need git:write.
    let t = mint("r", "git:read");
    assert_403(
        &status(
            "POST",
            &Server::repo_path("r", "/branches/create"),
            &t,
            Some(&json!({"base_branch": "main", "target_branch": "by-reader"})),
        ),
        "create branch with git:read",
    );
    assert_403(
        &status(
            "DELETE",
            &Server::repo_path("r", "/branches"),
            &t,
            Some(&json!({"name": "feature/x"})),
        ),
        "delete branch with git:read",
    );
    let refs = served(&w, "r");
    assert!(
        !refs.contains_key("refs/heads/by-reader"),
        "no branch created"
    );
    assert!(
        refs.contains_key("refs/heads/feature/x"),
        "no branch deleted"
    );

    // Delete needs repo:write.
    for (what, t) in [
        ("git:write", mint("new1", "git:read,git:write")),
        ("repo:write for another repo", mint("new2", "repo:write")),
    ] {
        assert_403(
            &status("DELETE", &Server::repo_path("new1", ""), &t, None),
            &format!("delete with {what}"),
        );
    }
    assert_403(
        &status(
            "DELETE",
            "/api/v1/repos/delete",
            &mint("new3", "git:write"),
            None,
        ),
        "legacy delete with git:write",
    );
    let resp = status(
        "DELETE",
        &Server::repo_path("new1", ""),
        &mint("new1", "repo:write"),
        None,
    );
    assert_eq!(
        resp.status,
        200,
        "delete with repo:write: {}",
        resp.describe()
    );
    let resp = status(
        "DELETE",
        "/api/v1/repos/delete",
        &mint("new3", "repo:write"),
        None,
    );
    assert_eq!(
        resp.status,
        200,
        "legacy delete with repo:write: {}",
        resp.describe()
    );
    assert_eq!(
        Server::listed_names(&w.server.list_repos()),
        vec!["m", "new2", "r"],
        "new1 and new3 deleted, nothing else"
    );
    assert_eq!(w.server.get_repo("new1").0, 404, "new1 is gone");
}

// =====================================================================================
// 5. The CLI: token mint, token revoke, keys generate
// =====================================================================================

#[test]
fn token_mint_prints_a_jwt_that_git_accepts_with_the_claims_asked_for() {
    let w = World::new();
    let work = local_repo(&w, "r");
    let token = w.server.mint(&[
        "--repo",
        "r",
        "--scopes",
        "git:read,git:write",
        "--ttl",
        "600",
        "--sub",
        "ci-bot",
        "--refs",
        "main=no-push",
        "--refs",
        "*=",
    ]);
    assert_eq!(token.lines().count(), 1, "one line: {token:?}");
    assert_eq!(token.split('.').count(), 3, "three parts: {token:?}");
    let key = Signer::from_data_dir(w.server.data_dir());
    let header = jwt::header(&token);
    assert_eq!(header["alg"], "ES256", "header {header}");
    assert_eq!(
        header["kid"].as_str(),
        key.kid.as_deref(),
        "header {header}"
    );
    let c = jwt::payload(&token);
    assert_eq!(c["iss"], "local", "claims {c}");
    assert_eq!(c["sub"], "ci-bot", "claims {c}");
    assert_eq!(c["repo"], "r", "claims {c}");
    assert_eq!(c["scopes"], json!(["git:read", "git:write"]), "claims {c}");
    assert_eq!(
        c["refs"],
        json!([["main", ["no-push"]], ["*", []]]),
        "claims {c}"
    );
    let (iat, exp) = (
        c["iat"].as_i64().expect("iat"),
        c["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 600, "exp = iat + ttl: {c}");
    assert!((iat - jwt::now()).abs() < 60, "iat is now: {c}");
    assert!(
        c["jti"].as_str().is_some_and(|j| j.len() >= 16),
        "a jti: {c}"
    );
    let other = w.server.mint(&["--repo", "r", "--scopes", "git:read"]);
    assert_ne!(
        jwt::payload(&other)["jti"],
        c["jti"],
        "every token has its own jti"
    );

    // git takes it: clone, push to a branch; its refs claim refuses main.
    let url = w.server.git_url_with("r", &token);
    let (out, dest) = try_clone(&w.git, &url);
    assert!(
        out.success(),
        "clone with a minted token\n{}",
        out.describe()
    );
    w.git.fsck_strict(&dest);
    let main = served(&w, "r")["refs/heads/main"].clone();
    let new = commit_detached(&w.git, &work, &main, "minted.txt");
    let out = try_push(&w.git, &work, &url, &[&format!("{new}:refs/heads/topic")]);
    assert!(
        out.success(),
        "push with a minted token\n{}",
        out.describe()
    );
    let out = try_push(&w.git, &work, &url, &[&format!("{new}:refs/heads/main")]);
    assert!(!out.success(), "main is no-push\n{}", out.describe());
    assert!(
        out.stderr.contains("[remote rejected]"),
        "{}",
        out.describe()
    );
    let refs = served(&w, "r");
    assert_eq!(refs["refs/heads/topic"], new, "topic pushed");
    assert_eq!(refs["refs/heads/main"], main, "main unchanged");

    // Bad mint arguments fail without printing a token.
    for args in [
        &[
            "token", "mint", "--repo", "r", "--scopes", "git:read", "--refs", "=no-push",
        ][..],
        &["token", "mint", "--scopes", "git:read"],
        &[
            "token", "mint", "--repo", "r", "--scopes", "git:read", "--ttl", "soon",
        ],
    ] {
        let out = w.server.data_cli(args);
        assert!(!out.success(), "{args:?} should fail\n{}", out.describe());
        assert!(
            out.stdout.trim().is_empty(),
            "{args:?} printed {:?}",
            out.stdout
        );
    }
}

#[test]
fn token_revoke_by_jti_sub_and_issued_before_takes_effect_at_once() {
    let w = World::new();
    local_repo(&w, "r");
    let key = Signer::from_data_dir(w.server.data_dir());
    let expected = served(&w, "r");
    let works = |t: &str, what: &str| {
        let out = try_ls_remote(&w.git, &w.server.git_url_with("r", t));
        assert!(out.success(), "{what}: should work\n{}", out.describe());
        let resp = rest(&w.server, "GET", &Server::repo_path("r", ""), Some(t), None);
        assert_eq!(resp.status, 200, "{what}: REST {}", resp.describe());
    };
    let refused = |t: &str, what: &str| {
        let out = try_ls_remote(&w.git, &w.server.git_url_with("r", t));
        assert_git_401(&out, what);
        let resp = rest(&w.server, "GET", &Server::repo_path("r", ""), Some(t), None);
        assert_401(&resp, &format!("{what}: REST"));
    };
    let mint = |sub: &str| {
        w.server
            .mint(&["--repo", "r", "--scopes", "git:read", "--sub", sub])
    };
    let a1 = mint("alice");
    let a2 = mint("alice");
    let b1 = mint("bob");
    let b2 = mint("bob");
    let c = mint("carol");
    let now = jwt::now();
    let old = key.token_with(Some("r"), &["git:read"], |c| {
        c["iat"] = json!(now - 600);
        c["sub"] = json!("dave");
    });
    for (t, what) in [
        (&a1, "a1"),
        (&a2, "a2"),
        (&b1, "b1"),
        (&b2, "b2"),
        (&c, "c"),
        (&old, "old"),
    ] {
        works(t, what);
    }

    // By jti: that token only.
    let jti = jwt::payload(&a1)["jti"].as_str().expect("jti").to_owned();
    let out = w.server.data_cli(&["token", "revoke", "--jti", &jti]);
    assert!(out.success(), "revoke --jti\n{}", out.describe());
    refused(&a1, "a1 revoked by jti");
    works(&a2, "a2, same sub, other jti");

    // By sub: every token of bob.
    let out = w.server.data_cli(&["token", "revoke", "--sub", "bob"]);
    assert!(out.success(), "revoke --sub\n{}", out.describe());
    refused(&b1, "b1 revoked by sub");
    refused(&b2, "b2 revoked by sub");
    refused(&a1, "a1 stays revoked");
    works(&a2, "a2");
    works(&c, "c");

    // Issued before a time: the old token goes, the recent ones stay.
    let cut = (now - 300).to_string();
    let out = w
        .server
        .data_cli(&["token", "revoke", "--issued-before", &cut]);
    assert!(out.success(), "revoke --issued-before\n{}", out.describe());
    refused(&old, "a token issued before the cut");
    works(&c, "c, issued after the cut");
    let fresh = mint("bob");
    refused(&fresh, "a token minted for bob after bob was revoked");
    let fresh = mint("erin");
    works(&fresh, "a new token");

    // The deny-list is a file in the data dir and survives a restart.
    let list: Value = serde_json::from_slice(
        &std::fs::read(w.server.data_dir().join("keys/revoked.json")).expect("revoked.json"),
    )
    .expect("revoked.json is JSON");
    assert_eq!(list["jti"], json!([jti]), "{list}");
    assert_eq!(list["sub"], json!(["bob"]), "{list}");
    assert_eq!(list["issued_before"], json!(now - 300), "{list}");
    assert_eq!(served(&w, "r"), expected, "nothing changed");

    // Revoking needs exactly one criterion.
    let out = w.server.data_cli(&["token", "revoke"]);
    assert!(
        !out.success(),
        "revoke without a criterion\n{}",
        out.describe()
    );
}

#[test]
fn token_revocations_survive_a_restart() {
    let mut w = World::new();
    local_repo(&w, "r");
    let t = w
        .server
        .mint(&["--repo", "r", "--scopes", "git:read", "--sub", "gone"]);
    let out = w.server.data_cli(&["token", "revoke", "--sub", "gone"]);
    assert!(out.success(), "revoke\n{}", out.describe());
    w.server.restart();
    assert_git_401(
        &try_ls_remote(&w.git, &w.server.git_url_with("r", &t)),
        "revoked token after a restart",
    );
}

/// Mint with the CLI on the data dir (the current key).
fn cli_token(server: &Server, repo: &str) -> String {
    server.mint(&["--repo", repo, "--scopes", "git:read,git:write"])
}

#[test]
fn keys_generate_while_serving_new_tokens_work_at_once_and_old_ones_still_work() {
    let mut w = World::new();
    let work = local_repo(&w, "r");
    let old_kid = Signer::from_data_dir(w.server.data_dir()).kid.expect("kid");
    let old = cli_token(&w.server, "r");
    let expected = served(&w, "r");
    // The server re-reads the key files at most once a second; this test is about rotation
    // itself (the next one is about that window).
    std::thread::sleep(Duration::from_millis(1100));

    let out = w.server.data_cli(&["keys", "generate"]);
    assert!(out.success(), "keys generate\n{}", out.describe());
    assert!(
        out.stdout.contains("org: local"),
        "keeps the org\n{}",
        out.stdout
    );
    let new_key = Signer::from_data_dir(w.server.data_dir());
    let new_kid = new_key.kid.clone().expect("kid");
    assert_ne!(new_kid, old_kid, "a new kid");
    assert!(
        out.stdout.contains(&new_kid),
        "prints the new kid\n{}",
        out.stdout
    );
    let trusted = w
        .server
        .data_dir()
        .join(format!("keys/trusted/local/{old_kid}.pub.pem"));
    assert!(
        trusted.is_file(),
        "the old public key is kept at {}",
        trusted.display()
    );
    let show = w.server.data_cli(&["keys", "show"]);
    assert!(
        show.success() && show.stdout.contains(&new_kid),
        "keys show\n{}",
        show.describe()
    );

    let new = cli_token(&w.server, "r");
    assert_eq!(
        jwt::header(&new)["kid"].as_str(),
        Some(new_kid.as_str()),
        "signed with the new key"
    );
    let url = w.server.git_url_with("r", &new);
    assert_eq!(
        ls_remote_map(&w.git, &url),
        expected,
        "the new key's token works at once"
    );
    let resp = rest(
        &w.server,
        "GET",
        &Server::repo_path("r", ""),
        Some(&new),
        None,
    );
    assert_eq!(
        resp.status,
        200,
        "REST with the new key: {}",
        resp.describe()
    );
    let c = commit_detached(&w.git, &work, &expected["refs/heads/main"], "rotated.txt");
    let out = try_push(&w.git, &work, &url, &[&format!("{c}:refs/heads/rotated")]);
    assert!(out.success(), "push with the new key\n{}", out.describe());
    assert_eq!(
        ls_remote_map(&w.git, &w.server.git_url_with("r", &old))["refs/heads/rotated"],
        c,
        "the old key's token still works"
    );
    // A second rotation (another algorithm): the first two keys stay trusted.
    std::thread::sleep(Duration::from_millis(1100));
    let out = w.server.data_cli(&["keys", "generate", "--alg", "eddsa"]);
    assert!(
        out.success(),
        "keys generate --alg eddsa\n{}",
        out.describe()
    );
    let newest = cli_token(&w.server, "r");
    assert_eq!(jwt::header(&newest)["alg"], "EdDSA", "EdDSA now");
    for (t, what) in [
        (&old, "first key"),
        (&new, "second key"),
        (&newest, "third key (EdDSA)"),
    ] {
        let out = try_ls_remote(&w.git, &w.server.git_url_with("r", t));
        assert!(out.success(), "{what}\n{}", out.describe());
    }
    // And after a restart.
    w.server.restart();
    for (t, what) in [
        (&old, "first key"),
        (&new, "second key"),
        (&newest, "third key"),
    ] {
        let out = try_ls_remote(&w.git, &w.server.git_url_with("r", t));
        assert!(out.success(), "{what} after a restart\n{}", out.describe());
    }
}

#[test]
fn a_token_of_a_new_key_works_even_right_after_an_unknown_kid_was_seen() {
    let w = World::new();
    local_repo(&w, "r");
    let key = Signer::from_data_dir(w.server.data_dir());
    let expected = served(&w, "r");
    // Someone presents a token with an unknown kid: the server re-reads its keys, finds none.
    let bogus = key.with_kid(Some("bogus")).token(Some("r"), &["git:read"]);
    assert_git_401(
        &try_ls_remote(&w.git, &w.server.git_url_with("r", &bogus)),
        "unknown kid",
    );
    // Right after, the operator rotates and hands out a token of the new key.
    let out = w.server.data_cli(&["keys", "generate"]);
    assert!(out.success(), "keys generate\n{}", out.describe());
    let new = cli_token(&w.server, "r");
    let out = try_ls_remote(&w.git, &w.server.git_url_with("r", &new));
    assert!(
        out.success(),
        "a token of the key generated a moment ago must work at once (the server re-reads keys \
         on an unknown kid)\n{}\n{}",
        out.describe(),
        w.server.logs()
    );
    assert_eq!(
        ls_remote_map(&w.git, &w.server.git_url_with("r", &new)),
        expected
    );
}
