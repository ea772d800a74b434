//! GitHub mirrors, end to end.
//!
//! App mode: codestorage mints installation tokens from a fake GitHub API (the two documented
//! endpoints, verifying the App JWT's RS256 signature and claims) and presents them as
//! `x-access-token` to an upstream git server that accepts exactly the unexpired tokens the
//! fake handed out — for syncs and for forwarded pushes; an expired token is replaced.
//! Without an App, authenticated GitHub mirrors are refused with 412.
//!
//! Public mode (`auth.auth_type: "public"`): readability is checked at creation (400 for a
//! private or missing repository); pushes stay here (the upstream is untouched); a sync takes
//! the upstream's changes but never overwrites a ref moved here, and reports it as diverged.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::github::{AppKey, FakeGithub, Minted};
use crate::support::server::ServerBuilder;
use crate::support::{Git, Seed, Server, Upstream, World, assert_maps_eq, seed_repo, wait_until};

const APP_ID: &str = "424242";
const APP_REQUIRED: &str = "GitHub App configuration is required for authenticated GitHub sync";

/// A world whose upstream plays github.com for `--github-url`.
fn github_world(builder: impl FnOnce(ServerBuilder, &Upstream) -> ServerBuilder) -> World {
    let git = Git::new();
    let upstream = Upstream::start();
    let server = builder(
        Server::builder().arg("--github-url").arg(upstream.base()),
        &upstream,
    )
    .start();
    World {
        server,
        upstream,
        git,
    }
}

/// An App-mode world: the fake API, the App key (PKCS#1, as GitHub issues them), and an
/// upstream that only lets valid installation tokens in (`seen` collects what was offered).
struct AppWorld {
    w: World,
    github: FakeGithub,
    _key: AppKey,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

fn app_world() -> AppWorld {
    app_world_with(FakeGithub::start, |b, _| b)
}

/// [`app_world`] with the fake API started by `start` and more server arguments from `more`.
fn app_world_with(
    start: impl FnOnce(&str, &str) -> FakeGithub,
    more: impl FnOnce(ServerBuilder, &FakeGithub) -> ServerBuilder,
) -> AppWorld {
    let key = AppKey::generate();
    let github = start(APP_ID, &key.public_pem);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let w = github_world(|b, upstream| {
        upstream.require_basic_auth_check(Some(github.token_check(seen.clone())));
        more(b, &github)
            .arg("--github-api-url")
            .arg(github.api_url())
            .arg("--github-app-id")
            .arg(APP_ID)
            .arg("--github-app-key")
            .arg(key.pkcs1_file.to_str().expect("utf-8 path"))
    });
    AppWorld {
        w,
        github,
        _key: key,
        seen,
    }
}

impl AppWorld {
    /// The tokens the upstream was offered, in order, without repeats.
    fn tokens_offered(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (user, password) in self.seen.lock().expect("seen").iter() {
            assert_eq!(user, "x-access-token", "Basic user name offered upstream");
            if out.last() != Some(password) {
                out.push(password.clone());
            }
        }
        out
    }
}

/// `POST /api/repos` of a GitHub mirror `owner/name` called `repo`, with extra `base_repo` keys.
fn create_github(
    server: &Server,
    repo: &str,
    full_name: &str,
    extra: Value,
) -> crate::support::http::HttpResponse {
    let (owner, name) = full_name.split_once('/').expect("owner/name");
    let mut base = json!({ "owner": owner, "name": name });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    server.try_create(&json!({ "name": repo, "base_repo": base }))
}

/// Clones `repo` through codestorage and checks it against the upstream's bare repo.
#[track_caller]
fn assert_mirrors(w: &World, repo: &str, bare: &Path, context: &str) {
    let clone = w.git.unique_path("mirror");
    w.git
        .clone(&w.server.git_url(repo), &clone, &["-q", "--mirror"]);
    assert_maps_eq(
        &w.git.served_refs(&clone),
        &w.git.served_refs(bare),
        &format!("{context}: refs through codestorage vs the upstream"),
    );
    w.git.fsck_strict(&clone);
}

/// A new commit on `main` of the seed's working repo, published upstream (by path).
fn upstream_commit(w: &World, seed: &Seed, file: &str) -> String {
    let id = w.git.commit_file(
        &seed.work,
        file,
        format!("{file}\n"),
        &format!("upstream: {file}"),
    );
    seed.publish(&w.git);
    id
}

#[test]
fn app_mode_syncs_and_forwards_pushes_with_one_cached_installation_token() {
    let a = app_world();
    let w = &a.w;
    let seed = seed_repo(&w.git, &w.upstream, "acme/widgets");
    a.github
        .install("acme/widgets", 77, Duration::from_secs(3600));

    let resp = create_github(&w.server, "widgets", "acme/widgets", json!({}));
    assert_eq!(
        resp.status,
        201,
        "create: {}\n{}",
        resp.describe(),
        w.server.logs()
    );
    let record = w.server.wait_synced("widgets");
    assert_eq!(record["base_repo"]["provider"], "github", "{record}");
    assert_mirrors(w, "widgets", &seed.bare, "after the first sync");

    // A later sync and a forwarded push reuse the cached token.
    let c4 = upstream_commit(w, &seed, "more.txt");
    w.server.sync_now("widgets");
    assert_mirrors(w, "widgets", &seed.bare, "after the second sync");
    let clone = w.git.unique_path("work");
    w.git.clone(&w.server.git_url("widgets"), &clone, &["-q"]);
    assert_eq!(
        w.git.rev_parse(&clone, "HEAD"),
        c4,
        "clone is at the upstream's main"
    );
    let pushed = w
        .git
        .commit_file(&clone, "pushed.txt", "through codestorage\n", "pushed");
    w.git.push(&clone, &["-q", "origin", "main"]);
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        pushed,
        "the forwarded push reached the upstream with the installation token"
    );
    assert_mirrors(w, "widgets", &seed.bare, "after the forwarded push");

    let minted = a.github.minted();
    assert_eq!(minted.len(), 1, "one token, cached: {minted:?}");
    let offered = a.tokens_offered();
    assert_eq!(
        offered,
        vec![minted[0].token.clone()],
        "the upstream saw only that token"
    );
    assert!(
        a.github.rejections().is_empty(),
        "App JWTs accepted: {:?}",
        a.github.rejections()
    );
    let log = a.github.log();
    assert!(
        log.contains(&"GET /repos/acme/widgets/installation".to_owned())
            && log.contains(&"POST /app/installations/77/access_tokens".to_owned()),
        "installation lookup, then token exchange: {log:?}"
    );
    let logs = w.server.logs();
    assert!(
        !logs.contains(&minted[0].token),
        "the token never reaches the server's logs"
    );
}

#[test]
fn app_mode_works_with_a_github_enterprise_api_behind_an_internal_ca_and_webhooks_wake_it() {
    const SECRET: &str = "enterprise-hook-secret";
    let a = app_world_with(FakeGithub::start_tls, |b, github| {
        let ca = github.ca_file().expect("the API's CA");
        b.arg("--upstream-ca-file")
            .arg(ca.to_str().expect("utf-8 path"))
            .arg("--github-webhook-secret")
            .arg(SECRET)
    });
    let w = &a.w;
    assert!(a.github.api_url().starts_with("https://"));
    let seed = seed_repo(&w.git, &w.upstream, "acme/gear");
    a.github.install("acme/gear", 78, Duration::from_secs(3600));
    let resp = create_github(&w.server, "gear", "acme/gear", json!({}));
    assert_eq!(resp.status, 201, "create: {}", resp.describe());
    w.server.wait_synced("gear");
    assert_mirrors(
        w,
        "gear",
        &seed.bare,
        "synced with a token from the https API",
    );
    assert_eq!(a.github.minted().len(), 1, "{:?}", a.github.minted());

    // An App-mode mirror is woken by a signed push webhook like any other.
    let before = w.git.rev_parse(&seed.bare, "refs/heads/main");
    let after = upstream_commit(w, &seed, "hooked.txt");
    let resp = crate::support::forge::send_github(
        &w.server,
        SECRET,
        "push",
        &crate::support::forge::delivery_id(),
        &crate::support::forge::github_push("acme/gear", "main", &before, &after),
    );
    assert_eq!(resp.status, 202, "push webhook: {}", resp.describe());
    assert_eq!(resp.json()["matched"], 1, "{}", resp.describe());
    wait_until(
        Duration::from_secs(30),
        "the pushed commit to be served",
        || {
            let refs = w.git.ls_remote(&w.server.git_url("gear"));
            let wanted = format!("{after}\trefs/heads/main");
            refs.lines().any(|l| l == wanted).then_some(())
        },
    );
}

#[test]
fn without_the_internal_ca_the_enterprise_api_is_not_trusted_and_the_sync_says_so() {
    let a = app_world_with(FakeGithub::start_tls, |b, _| b);
    let w = &a.w;
    seed_repo(&w.git, &w.upstream, "acme/gear");
    a.github.install("acme/gear", 78, Duration::from_secs(3600));
    let resp = create_github(&w.server, "gear", "acme/gear", json!({}));
    assert_eq!(resp.status, 201, "create: {}", resp.describe());
    let err = wait_until(Duration::from_secs(60), "the first sync to fail", || {
        let s = w.server.sync_state("gear");
        (!s.in_progress && s.run_count > 0).then_some(s.last_error)
    })
    .expect("the sync failed");
    assert!(
        err.contains("GitHub"),
        "the error names the GitHub API: {err}"
    );
    assert!(a.github.minted().is_empty(), "no token minted");
    assert_eq!(w.upstream.requests(), 0, "nothing reached the upstream");
}

#[test]
fn an_expired_installation_token_is_replaced_by_a_new_one() {
    let a = app_world();
    let w = &a.w;
    let seed = seed_repo(&w.git, &w.upstream, "acme/short");
    // Tokens live 16 s: codestorage uses each for half of that, the upstream refuses it after.
    a.github.install("acme/short", 5, Duration::from_secs(16));
    let resp = create_github(&w.server, "short", "acme/short", json!({}));
    assert_eq!(resp.status, 201, "create: {}", resp.describe());
    w.server.wait_synced("short");
    let first: Vec<Minted> = a.github.minted_for(5);
    assert_eq!(first.len(), 1, "{first:?}");

    // Wait for the upstream to refuse the first token.
    wait_until(Duration::from_secs(40), "the first token to expire", || {
        let now = crate::support::jwt::now() as u64;
        (now > first[0].expires_at).then_some(())
    });
    let c4 = upstream_commit(w, &seed, "after-expiry.txt");
    w.server.sync_now("short");
    let minted = a.github.minted_for(5);
    assert_eq!(
        minted.len(),
        2,
        "a new token was minted after expiry: {minted:?}"
    );
    assert_ne!(minted[1].token, minted[0].token);
    assert_eq!(
        a.tokens_offered().last(),
        Some(&minted[1].token),
        "the new token is the one used"
    );
    let clone = w.git.unique_path("check");
    w.git.clone(&w.server.git_url("short"), &clone, &["-q"]);
    assert_eq!(
        w.git.rev_parse(&clone, "HEAD"),
        c4,
        "the sync with the new token landed"
    );
}

#[test]
fn a_push_is_refused_with_502_once_github_stops_handing_out_tokens() {
    let a = app_world();
    let w = &a.w;
    let seed = seed_repo(&w.git, &w.upstream, "acme/gone");
    a.github.install("acme/gone", 9, Duration::from_secs(10));
    let resp = create_github(&w.server, "gone", "acme/gone", json!({}));
    assert_eq!(resp.status, 201, "create: {}", resp.describe());
    w.server.wait_synced("gone");
    let clone = w.git.unique_path("work");
    w.git.clone(&w.server.git_url("gone"), &clone, &["-q"]);
    let minted = a.github.minted_for(9);
    assert_eq!(minted.len(), 1, "{minted:?}");

    // The App is uninstalled; once the cached token is stale, no new one can be had.
    a.github.uninstall("acme/gone");
    wait_until(Duration::from_secs(40), "the token to expire", || {
        ((crate::support::jwt::now() as u64) > minted[0].expires_at).then_some(())
    });
    let upstream_before = w.git.refs(&seed.bare);
    w.git.commit_file(&clone, "late.txt", "late\n", "late");
    let out = w.git.run_fail(&clone, &["push", "origin", "main"]);
    assert!(
        out.stderr.contains("502"),
        "git reports the 502:\n{}",
        out.describe()
    );
    let auth = format!("Basic {}", base64_t(&w.server.token()));
    let resp = w.server.request(
        "GET",
        "/gone.git/info/refs?service=git-receive-pack",
        None,
        &[("Authorization", &auth)],
    );
    assert_eq!(resp.status, 502, "{}", resp.describe());
    assert!(
        resp.text().contains("not installed on acme/gone"),
        "the 502 says why: {}",
        resp.describe()
    );
    assert_maps_eq(
        &w.git.refs(&seed.bare),
        &upstream_before,
        "the upstream is unchanged",
    );
    assert_eq!(
        a.github.minted_for(9).len(),
        1,
        "no token was minted for it"
    );
}

/// Base64 of `t:<token>`, for a hand-made Basic header.
fn base64_t(token: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("t:{token}"))
}

#[test]
fn app_mode_without_an_installation_fails_the_sync_with_a_clear_error() {
    let a = app_world();
    let w = &a.w;
    seed_repo(&w.git, &w.upstream, "acme/elsewhere");
    let resp = create_github(&w.server, "elsewhere", "acme/elsewhere", json!({}));
    assert_eq!(resp.status, 201, "create: {}", resp.describe());
    let err = wait_until(Duration::from_secs(60), "the first sync to fail", || {
        let s = w.server.sync_state("elsewhere");
        (!s.in_progress && s.run_count > 0).then_some(s.last_error)
    });
    let err = err.expect("the sync failed");
    assert!(
        err.contains("not installed on acme/elsewhere"),
        "error names the missing installation: {err}"
    );
    assert!(a.github.minted().is_empty(), "no token minted");
    assert_eq!(w.upstream.requests(), 0, "nothing reached the upstream");
}

#[test]
fn authenticated_github_mirrors_need_an_app_412() {
    let w = github_world(|b, _| b);
    seed_repo(&w.git, &w.upstream, "acme/private");
    for extra in [json!({}), json!({ "provider": "github" })] {
        let resp = create_github(&w.server, "private", "acme/private", extra.clone());
        assert_eq!(resp.status, 412, "{extra}: {}", resp.describe());
        assert_eq!(
            resp.json()["error"],
            APP_REQUIRED,
            "{extra}: {}",
            resp.describe()
        );
    }
    let (status, _) = w.server.get_repo("private");
    assert_eq!(status, 404, "nothing was created");
    assert_eq!(w.upstream.requests(), 0, "nothing reached the upstream");
    let resp = create_github(
        &w.server,
        "private",
        "acme/private",
        json!({ "auth": { "auth_type": "token" } }),
    );
    assert_eq!(resp.status, 400, "unknown auth_type: {}", resp.describe());
}

#[test]
fn public_mode_needs_a_publicly_readable_repository() {
    let w = github_world(|b, _| b);
    seed_repo(&w.git, &w.upstream, "acme/secret");
    w.upstream
        .require_basic_auth_check(Some(Arc::new(|_: &str, _: &str| false)));
    let public = json!({ "auth": { "auth_type": "public" } });
    let resp = create_github(&w.server, "secret", "acme/secret", public.clone());
    assert_eq!(resp.status, 400, "private repository: {}", resp.describe());
    let msg = resp.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("not publicly readable") && msg.contains("acme/secret"),
        "{msg}"
    );
    w.upstream.require_basic_auth(None);
    let resp = create_github(&w.server, "missing", "acme/missing", public);
    assert_eq!(resp.status, 400, "missing repository: {}", resp.describe());
    for name in ["secret", "missing"] {
        assert_eq!(w.server.get_repo(name).0, 404, "{name} was not created");
    }
}

#[test]
fn public_mode_keeps_pushes_local_and_never_overwrites_a_diverged_ref() {
    let w = github_world(|b, _| b);
    let seed = seed_repo(&w.git, &w.upstream, "acme/open");
    let resp = create_github(
        &w.server,
        "open",
        "acme/open",
        json!({ "auth": { "auth_type": "public" } }),
    );
    assert_eq!(
        resp.status,
        201,
        "create: {}\n{}",
        resp.describe(),
        w.server.logs()
    );
    let record = w.server.wait_synced("open");
    assert_eq!(
        record["base_repo"]["auth"]["auth_type"], "public",
        "{record}"
    );
    assert_mirrors(&w, "open", &seed.bare, "after the first sync");
    let receiver = crate::support::receiver::Receiver::start();
    let resp = w.server.request_json(
        "POST",
        "/api/v1/webhooks",
        &json!({ "url": receiver.url("/hook"), "events": ["repo.sync.failed"] }),
    );
    assert_eq!(resp.status, 201, "subscribe: {}", resp.describe());

    // Pushes stay here.
    let upstream_before = w.git.refs(&seed.bare);
    let posts_before = w
        .upstream
        .request_log()
        .iter()
        .filter(|r| r.contains("receive-pack"))
        .count();
    let clone = w.git.unique_path("work");
    w.git.clone(&w.server.git_url("open"), &clone, &["-q"]);
    let ours = w
        .git
        .commit_file(&clone, "ours.txt", "local work\n", "local: ours");
    w.git.push(&clone, &["-q", "origin", "main"]);
    w.git.run(&clone, &["branch", "local-only", "HEAD"]);
    w.git.push(&clone, &["-q", "origin", "local-only"]);
    assert_maps_eq(
        &w.git.refs(&seed.bare),
        &upstream_before,
        "the upstream is unchanged by pushes",
    );
    assert_eq!(
        w.upstream
            .request_log()
            .iter()
            .filter(|r| r.contains("receive-pack"))
            .count(),
        posts_before,
        "no receive-pack request reached the upstream"
    );

    // Upstream: main moves too (diverges from ours), feature/x fast-forwards, a branch appears.
    let theirs = upstream_commit(&w, &seed, "theirs.txt");
    w.git.run(&seed.work, &["switch", "-q", "feature/x"]);
    let feature = w
        .git
        .commit_file(&seed.work, "feature2.txt", "more\n", "f2");
    w.git
        .run(&seed.work, &["switch", "-q", "-c", "upstream-new", "main"]);
    w.git.run(&seed.work, &["switch", "-q", "main"]);
    seed.publish(&w.git);

    let err = w
        .server
        .try_sync_now("open")
        .expect_err("divergence fails the run");
    assert!(
        err.contains("refs/heads/main"),
        "the error names the diverged ref: {err}"
    );
    let record = w.server.repo("open");
    let diverged = record["sync"]["diverged_refs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(diverged.len(), 1, "one diverged ref: {record}");
    assert_eq!(diverged[0]["ref"], "refs/heads/main", "{record}");
    assert_eq!(diverged[0]["local"], ours.as_str(), "{record}");
    assert_eq!(diverged[0]["upstream"], theirs.as_str(), "{record}");
    let failed = receiver.wait_for(1, Duration::from_secs(30));
    let payload = failed[0].json();
    assert_eq!(failed[0].event(), "repo.sync.failed", "{payload}");
    let error = payload["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("diverged") && error.contains("refs/heads/main"),
        "repo.sync.failed reports the divergence: {payload}"
    );

    let check = w.git.unique_path("check");
    w.git
        .clone(&w.server.git_url("open"), &check, &["-q", "--mirror"]);
    let served = w.git.served_refs(&check);
    assert_eq!(
        served.get("refs/heads/main"),
        Some(&ours),
        "main keeps the local push"
    );
    assert_eq!(
        served.get("refs/heads/feature/x"),
        Some(&feature),
        "fast-forward applied"
    );
    assert_eq!(
        served.get("refs/heads/upstream-new"),
        Some(&theirs),
        "new upstream branch"
    );
    assert_eq!(
        served.get("refs/heads/local-only"),
        Some(&ours),
        "local branch kept"
    );
    w.git.fsck_strict(&check);

    // Merging the upstream's main here resolves the divergence; later syncs succeed.
    w.git.run(
        &clone,
        &["fetch", "-q", seed.bare.to_str().expect("utf-8"), "main"],
    );
    w.git
        .run(&clone, &["merge", "-q", "--no-edit", "FETCH_HEAD"]);
    let merged = w.git.rev_parse(&clone, "HEAD");
    w.git.push(&clone, &["-q", "origin", "main"]);
    let record = w.server.sync_now("open");
    assert_eq!(
        record["sync"]["diverged_refs"],
        json!([]),
        "no divergence once merged: {record}"
    );
    let served = w.git.ls_remote(&w.server.git_url("open"));
    assert!(
        served.contains(&format!("{merged}\trefs/heads/main")),
        "main stays at the local merge (ahead of the upstream):\n{served}"
    );
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        theirs,
        "upstream untouched"
    );
}
