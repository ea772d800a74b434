//! Incoming forge webhooks, end to end: deliveries shaped and signed as GitHub, GitLab, Gitea,
//! Forgejo and Bitbucket send them, posted to `POST /webhooks/{forge}` of a real server whose
//! mirrors follow a real upstream.
//!
//! A delivery is authenticated by its signature alone (no token). A good one makes every
//! mirror of the named repository sync; a bad or missing signature, or a forge without a
//! configured secret, is 401 and nothing happens; pings are answered; other events and unknown
//! repositories change nothing; a repeated delivery id and a burst of deliveries each sync once.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::forge::{
    bitbucket_push, deliver, delivery_id, gitea_push, github_ping, github_push, gitlab_push,
    hmac_hex, send_github,
};
use crate::support::{Git, Seed, Server, Upstream, World, seed_repo, wait_until};

const GITHUB_SECRET: &str = "gh-webhook-secret";
const GITLAB_SECRET: &str = "gl-webhook-token";
const GITEA_SECRET: &str = "gitea-webhook-secret";
const BITBUCKET_SECRET: &str = "bb-webhook-secret";
/// How long a test waits to be sure that no sync follows.
const QUIET: Duration = Duration::from_millis(1500);

/// A server with every forge's secret, GitHub repos coming from the upstream.
fn hooks_world() -> World {
    let git = Git::new();
    let upstream = Upstream::start();
    let server = Server::builder()
        .arg("--github-url")
        .arg(upstream.base())
        .arg("--github-webhook-secret")
        .arg(GITHUB_SECRET)
        .arg("--gitlab-webhook-secret")
        .arg(GITLAB_SECRET)
        .arg("--gitea-webhook-secret")
        .arg(GITEA_SECRET)
        // Bitbucket's comes from the environment.
        .env("CODESTORAGE_BITBUCKET_WEBHOOK_SECRET", BITBUCKET_SECRET)
        .start();
    World {
        server,
        upstream,
        git,
    }
}

/// A public-mode GitHub mirror `repo` of upstream `full_name`, seeded and synced.
fn github_mirror(w: &World, repo: &str, full_name: &str) -> Seed {
    let seed = seed_repo(&w.git, &w.upstream, full_name);
    let (owner, name) = full_name.split_once('/').expect("owner/name");
    let resp = w.server.try_create(&json!({
        "name": repo,
        "base_repo": { "owner": owner, "name": name, "auth": { "auth_type": "public" } },
    }));
    assert_eq!(
        resp.status,
        201,
        "create {repo}: {}\n{}",
        resp.describe(),
        w.server.logs()
    );
    w.server.wait_synced(repo);
    seed
}

/// A mirror of upstream repo `path` recorded as `provider` `owner`/`name`.
fn forge_mirror(w: &World, repo: &str, provider: &str, path: &str) -> Seed {
    let seed = seed_repo(&w.git, &w.upstream, path);
    let (owner, name) = path.rsplit_once('/').expect("owner/name");
    let resp = w.server.try_create(&json!({
        "name": repo,
        "base_repo": { "provider": provider, "owner": owner, "name": name, "url": seed.url },
    }));
    assert_eq!(
        resp.status,
        201,
        "create {repo}: {}\n{}",
        resp.describe(),
        w.server.logs()
    );
    w.server.wait_synced(repo);
    seed
}

/// Finished sync runs of `repo`, once none is running.
fn runs(server: &Server, repo: &str) -> u64 {
    wait_until(Duration::from_secs(60), "no sync running", || {
        let s = server.sync_state(repo);
        (!s.in_progress).then_some(s.run_count)
    })
}

/// Waits until `repo` has finished more than `before` runs and none is running.
#[track_caller]
fn wait_runs_past(server: &Server, repo: &str, before: u64) -> u64 {
    wait_until(
        Duration::from_secs(60),
        "a sync triggered by the webhook",
        || {
            let s = server.sync_state(repo);
            (!s.in_progress && s.run_count > before).then_some(s.run_count)
        },
    )
}

/// No sync of `repo` starts within [`QUIET`].
#[track_caller]
fn assert_no_sync(server: &Server, repo: &str, before: u64, context: &str) {
    std::thread::sleep(QUIET);
    let s = server.sync_state(repo);
    assert!(
        s.run_count == before && !s.in_progress,
        "{context}: no sync expected, run_count {} -> {}, in_progress {}",
        before,
        s.run_count,
        s.in_progress
    );
}

/// A new commit on the seed's `main`, published upstream.
fn upstream_commit(w: &World, seed: &Seed, file: &str) -> String {
    let id = w
        .git
        .commit_file(&seed.work, file, format!("{file}\n"), file);
    seed.publish(&w.git);
    id
}

/// What codestorage serves as `refs/heads/main` of `repo`.
fn served_main(w: &World, repo: &str) -> Option<String> {
    w.git
        .ls_remote(&w.server.git_url(repo))
        .lines()
        .find(|l| l.ends_with("\trefs/heads/main"))
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
}

#[test]
fn a_signed_github_push_is_served_within_five_seconds() {
    let w = hooks_world();
    let seed = github_mirror(&w, "lag", "acme/lag");
    let mut lags = Vec::new();
    for i in 0..5 {
        let before = w.git.rev_parse(&seed.bare, "refs/heads/main");
        let new = upstream_commit(&w, &seed, &format!("lag-{i}.txt"));
        let started = Instant::now();
        let resp = send_github(
            &w.server,
            GITHUB_SECRET,
            "push",
            &delivery_id(),
            &github_push("acme/lag", "main", &before, &new),
        );
        assert_eq!(resp.status, 202, "push webhook: {}", resp.describe());
        assert_eq!(resp.json()["matched"], 1, "{}", resp.describe());
        wait_until(
            Duration::from_secs(30),
            "the new commit to be served",
            || (served_main(&w, "lag").as_deref() == Some(new.as_str())).then_some(()),
        );
        lags.push(started.elapsed());
    }
    lags.sort();
    eprintln!(
        "webhook-to-served lag over {} pushes: min {:?}, median {:?}, max {:?}",
        lags.len(),
        lags[0],
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    assert!(
        lags[lags.len() - 1] < Duration::from_secs(5),
        "every push is served within 5 s of its webhook: {lags:?}"
    );
}

/// The served value of `refs/heads/{branch}` of `repo`.
fn served_branch(w: &World, repo: &str, branch: &str) -> Option<String> {
    let suffix = format!("\trefs/heads/{branch}");
    w.git
        .ls_remote(&w.server.git_url(repo))
        .lines()
        .find(|l| l.ends_with(&suffix))
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
}

#[test]
fn github_and_gitea_create_and_delete_events_sync_the_mirror() {
    let w = hooks_world();
    let gh = github_mirror(&w, "refsgh", "acme/refsgh");
    let gt = forge_mirror(&w, "refsgt", "gitea", "acme/refsgt");
    let web = w.upstream.base();
    for seed in [&gh, &gt] {
        w.git.run(&seed.work, &["branch", "-f", "topic", "main"]);
        seed.publish(&w.git);
    }
    let topic = w.git.rev_parse(&gh.bare, "refs/heads/topic");

    // GitHub `create` (documented shape: ref is the short name, with ref_type).
    let mut create = json!({
        "ref": "topic",
        "ref_type": "branch",
        "master_branch": "main",
        "description": null,
        "pusher_type": "user",
        "repository": github_push("acme/refsgh", "main", &topic, &topic)["repository"].clone(),
        "sender": { "login": "e2e", "id": 1, "type": "User" }
    });
    let resp = send_github(&w.server, GITHUB_SECRET, "create", &delivery_id(), &create);
    assert_eq!(resp.status, 202, "create: {}", resp.describe());
    assert_eq!(resp.json()["matched"], 1, "{}", resp.describe());
    wait_until(Duration::from_secs(30), "topic to appear", || {
        (served_branch(&w, "refsgh", "topic").as_deref() == Some(topic.as_str())).then_some(())
    });

    // GitHub `delete`.
    w.git.run(&gh.bare, &["branch", "-D", "topic"]);
    if let Some(obj) = create.as_object_mut() {
        obj.remove("master_branch");
        obj.remove("description");
    }
    let resp = send_github(&w.server, GITHUB_SECRET, "delete", &delivery_id(), &create);
    assert_eq!(resp.status, 202, "delete: {}", resp.describe());
    assert_eq!(resp.json()["matched"], 1, "{}", resp.describe());
    wait_until(Duration::from_secs(30), "topic to go", || {
        served_branch(&w, "refsgh", "topic").is_none().then_some(())
    });

    // Gitea `create` (X-Gitea-Event: create; ref, ref_type, sha, repository).
    let mut body = gitea_push("acme/refsgt", &web, &topic);
    if let Some(obj) = body.as_object_mut() {
        for key in [
            "before",
            "after",
            "compare_url",
            "commits",
            "total_commits",
            "head_commit",
            "pusher",
        ] {
            obj.remove(key);
        }
        obj.insert("ref".into(), json!("topic"));
        obj.insert("ref_type".into(), json!("branch"));
        obj.insert("sha".into(), json!(topic));
    }
    let body = serde_json::to_vec(&body).expect("JSON");
    let sig = hmac_hex(GITEA_SECRET, &body);
    let id = delivery_id();
    let gt_topic = w.git.rev_parse(&gt.bare, "refs/heads/topic");
    let resp = deliver(
        &w.server,
        "gitea",
        &[
            ("X-Gitea-Event", "create"),
            ("X-Gitea-Delivery", &id),
            ("X-Gitea-Signature", &sig),
        ],
        &body,
    );
    assert_eq!(resp.status, 202, "gitea create: {}", resp.describe());
    assert_eq!(resp.json()["matched"], 1, "{}", resp.describe());
    wait_until(Duration::from_secs(30), "gitea topic to appear", || {
        (served_branch(&w, "refsgt", "topic").as_deref() == Some(gt_topic.as_str())).then_some(())
    });
}

#[test]
fn github_pings_are_answered_and_other_events_change_nothing() {
    let w = hooks_world();
    github_mirror(&w, "quiet", "acme/quiet");
    let before = runs(&w.server, "quiet");
    let resp = send_github(
        &w.server,
        GITHUB_SECRET,
        "ping",
        &delivery_id(),
        &github_ping("acme/quiet"),
    );
    assert_eq!(resp.status, 200, "ping: {}", resp.describe());
    assert_eq!(resp.json()["message"], "pong", "{}", resp.describe());
    let resp = send_github(
        &w.server,
        GITHUB_SECRET,
        "issues",
        &delivery_id(),
        &json!({ "action": "opened", "repository": { "full_name": "acme/quiet" } }),
    );
    assert_eq!(resp.status, 202, "other event: {}", resp.describe());
    assert!(resp.text().contains("ignored"), "{}", resp.describe());
    assert_no_sync(&w.server, "quiet", before, "ping and issues events");
}

#[test]
fn bad_or_missing_signatures_are_401_and_nothing_happens() {
    let w = hooks_world();
    let seed = github_mirror(&w, "guarded", "acme/guarded");
    let served = served_main(&w, "guarded");
    upstream_commit(&w, &seed, "unsynced.txt");
    let before = runs(&w.server, "guarded");
    let body =
        serde_json::to_vec(&github_push("acme/guarded", "main", &seed.c3, &seed.c3)).expect("JSON");
    let good = format!("sha256={}", hmac_hex(GITHUB_SECRET, &body));
    let other_body = format!("sha256={}", hmac_hex(GITHUB_SECRET, b"{}"));
    let wrong_secret = format!("sha256={}", hmac_hex("not-the-secret", &body));
    let unprefixed = hmac_hex(GITHUB_SECRET, &body);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("missing signature", vec![]),
        ("wrong secret", vec![("X-Hub-Signature-256", &wrong_secret)]),
        (
            "signature of another body",
            vec![("X-Hub-Signature-256", &other_body)],
        ),
        (
            "no sha256= prefix",
            vec![("X-Hub-Signature-256", &unprefixed)],
        ),
        ("not hex", vec![("X-Hub-Signature-256", "sha256=zzzz")]),
        ("sha1 header only", vec![("X-Hub-Signature", &good)]),
    ];
    for (what, sig) in cases {
        let mut headers = vec![("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-bad")];
        headers.extend(sig);
        let resp = deliver(&w.server, "github", &headers, &body);
        assert_eq!(resp.status, 401, "{what}: {}", resp.describe());
        assert!(
            resp.json()["error"].is_string(),
            "{what}: JSON error: {}",
            resp.describe()
        );
    }
    assert_no_sync(&w.server, "guarded", before, "refused deliveries");
    assert_eq!(served_main(&w, "guarded"), served, "served refs unchanged");
    // The same delivery id, now signed, is not mistaken for a duplicate of the refused ones.
    let resp = deliver(
        &w.server,
        "github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-bad"),
            ("X-Hub-Signature-256", &good),
        ],
        &body,
    );
    assert_eq!(resp.status, 202, "signed: {}", resp.describe());
    wait_runs_past(&w.server, "guarded", before);
}

#[test]
fn a_forge_without_a_configured_secret_is_401() {
    let w = World::new();
    w.server.create_local("plain");
    let body = serde_json::to_vec(&github_push("acme/x", "main", "a", "b")).expect("JSON");
    let sig = format!("sha256={}", hmac_hex("anything", &body));
    let resp = deliver(
        &w.server,
        "github",
        &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &sig)],
        &body,
    );
    assert_eq!(
        resp.status,
        401,
        "no secret configured: {}",
        resp.describe()
    );
    assert!(
        resp.text().contains("no webhook secret"),
        "{}",
        resp.describe()
    );
    let resp = deliver(
        &w.server,
        "gitlab",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "")],
        b"{}",
    );
    assert_eq!(
        resp.status,
        401,
        "gitlab without secret: {}",
        resp.describe()
    );
    let resp = deliver(&w.server, "nope", &[], b"{}");
    assert_eq!(resp.status, 404, "unknown forge: {}", resp.describe());
    let resp = w
        .server
        .request_anonymous("GET", "/webhooks/github", None, &[]);
    assert_eq!(resp.status, 405, "GET: {}", resp.describe());
}

#[test]
fn a_signed_delivery_with_a_bad_payload_is_400() {
    let w = hooks_world();
    for (what, body) in [
        ("not JSON", b"{not json".to_vec()),
        ("no repository", b"{\"ref\":\"refs/heads/main\"}".to_vec()),
    ] {
        let sig = format!("sha256={}", hmac_hex(GITHUB_SECRET, &body));
        let resp = deliver(
            &w.server,
            "github",
            &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &sig)],
            &body,
        );
        assert_eq!(resp.status, 400, "{what}: {}", resp.describe());
    }
    let body = b"{}";
    let sig = format!("sha256={}", hmac_hex(GITHUB_SECRET, body));
    let resp = deliver(&w.server, "github", &[("X-Hub-Signature-256", &sig)], body);
    assert_eq!(resp.status, 400, "no event header: {}", resp.describe());
}

#[test]
fn a_push_for_an_unknown_repository_syncs_nothing() {
    let w = hooks_world();
    let seed = github_mirror(&w, "known", "acme/known");
    let before = runs(&w.server, "known");
    let resp = send_github(
        &w.server,
        GITHUB_SECRET,
        "push",
        &delivery_id(),
        &github_push("acme/unknown", "main", &seed.c2, &seed.c3),
    );
    assert_eq!(resp.status, 202, "{}", resp.describe());
    assert_eq!(resp.json()["matched"], 0, "{}", resp.describe());
    assert_no_sync(&w.server, "known", before, "unknown repository");
}

#[test]
fn a_repeated_delivery_is_handled_once() {
    let w = hooks_world();
    let seed = github_mirror(&w, "dup", "acme/dup");
    let before = runs(&w.server, "dup");
    let new = upstream_commit(&w, &seed, "dup.txt");
    let id = delivery_id();
    let payload = github_push("acme/dup", "main", &seed.c3, &new);
    let resp = send_github(&w.server, GITHUB_SECRET, "push", &id, &payload);
    assert_eq!(resp.status, 202, "first delivery: {}", resp.describe());
    let after = wait_runs_past(&w.server, "dup", before);
    assert_eq!(after, before + 1, "one sync for the delivery");
    // GitHub's "Redeliver" sends the same delivery id again.
    let resp = send_github(&w.server, GITHUB_SECRET, "push", &id, &payload);
    assert_eq!(resp.status, 200, "redelivery: {}", resp.describe());
    assert!(
        resp.text().contains("already handled"),
        "{}",
        resp.describe()
    );
    assert_no_sync(&w.server, "dup", after, "redelivery");
    assert_eq!(served_main(&w, "dup").as_deref(), Some(new.as_str()));
}

#[test]
fn a_burst_of_deliveries_becomes_one_sync() {
    let w = hooks_world();
    let seed = github_mirror(&w, "burst", "acme/burst");
    let before = runs(&w.server, "burst");
    let new = upstream_commit(&w, &seed, "burst.txt");
    let payload = github_push("acme/burst", "main", &seed.c3, &new);
    let n = 6;
    let barrier = Arc::new(Barrier::new(n));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = barrier.clone();
                let (server, payload) = (&w.server, &payload);
                s.spawn(move || {
                    barrier.wait();
                    send_github(server, GITHUB_SECRET, "push", &delivery_id(), payload).status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sender"))
            .collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 202),
        "all accepted: {statuses:?}"
    );
    let after = wait_runs_past(&w.server, "burst", before);
    assert_no_sync(&w.server, "burst", after, "after the burst's sync");
    assert_eq!(after, before + 1, "{n} deliveries, one sync");
    assert_eq!(served_main(&w, "burst").as_deref(), Some(new.as_str()));
}

#[test]
fn gitlab_push_and_tag_push_hooks_with_the_token_sync_the_project() {
    let w = hooks_world();
    let seed = forge_mirror(&w, "gl", "gitlab", "group/sub/proj");
    let web = w.upstream.base();
    for (tag, event) in [(false, "Push Hook"), (true, "Tag Push Hook")] {
        let before = runs(&w.server, "gl");
        let new = upstream_commit(&w, &seed, &format!("gl-{tag}.txt"));
        let body =
            serde_json::to_vec(&gitlab_push("group/sub/proj", &web, tag, &new)).expect("JSON");
        let uuid = delivery_id();
        let bad = deliver(
            &w.server,
            "gitlab",
            &[
                ("X-Gitlab-Event", event),
                ("X-Gitlab-Token", "wrong"),
                ("X-Gitlab-Event-UUID", &uuid),
            ],
            &body,
        );
        assert_eq!(
            bad.status,
            401,
            "{event} with a wrong token: {}",
            bad.describe()
        );
        let resp = deliver(
            &w.server,
            "gitlab",
            &[
                ("User-Agent", "GitLab/17.0.0"),
                ("X-Gitlab-Event", event),
                ("X-Gitlab-Token", GITLAB_SECRET),
                ("X-Gitlab-Event-UUID", &uuid),
                ("X-Gitlab-Instance", &web),
            ],
            &body,
        );
        assert_eq!(resp.status, 202, "{event}: {}", resp.describe());
        assert_eq!(resp.json()["matched"], 1, "{event}: {}", resp.describe());
        wait_runs_past(&w.server, "gl", before);
        assert_eq!(
            served_main(&w, "gl").as_deref(),
            Some(new.as_str()),
            "{event}"
        );
    }
    // The same project path on another GitLab host is another repository.
    let before = runs(&w.server, "gl");
    let body = serde_json::to_vec(&gitlab_push(
        "group/sub/proj",
        "https://gitlab.other.example",
        false,
        &seed.c3,
    ))
    .expect("JSON");
    let resp = deliver(
        &w.server,
        "gitlab",
        &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", GITLAB_SECRET),
        ],
        &body,
    );
    assert_eq!(resp.json()["matched"], 0, "other host: {}", resp.describe());
    assert_no_sync(&w.server, "gl", before, "another host's project");
}

#[test]
fn gitea_and_forgejo_signed_pushes_sync_their_mirrors() {
    let w = hooks_world();
    let gitea = forge_mirror(&w, "gt", "gitea", "acme/gt");
    let forgejo = forge_mirror(&w, "fj", "forgejo", "acme/fj");
    let web = w.upstream.base();
    for (endpoint, repo, seed, sig_header, event_header, delivery_header) in [
        (
            "gitea",
            "gt",
            &gitea,
            "X-Gitea-Signature",
            "X-Gitea-Event",
            "X-Gitea-Delivery",
        ),
        (
            "forgejo",
            "fj",
            &forgejo,
            "X-Forgejo-Signature",
            "X-Forgejo-Event",
            "X-Forgejo-Delivery",
        ),
    ] {
        let before = runs(&w.server, repo);
        let new = upstream_commit(&w, seed, &format!("{endpoint}.txt"));
        let body =
            serde_json::to_vec(&gitea_push(&format!("acme/{repo}"), &web, &new)).expect("JSON");
        let sig = hmac_hex(GITEA_SECRET, &body);
        let bad_sig = hmac_hex("wrong", &body);
        let id = delivery_id();
        let bad = deliver(
            &w.server,
            endpoint,
            &[
                (event_header, "push"),
                (delivery_header, &id),
                (sig_header, &bad_sig),
            ],
            &body,
        );
        assert_eq!(bad.status, 401, "{endpoint} mis-signed: {}", bad.describe());
        let missing = deliver(&w.server, endpoint, &[(event_header, "push")], &body);
        assert_eq!(
            missing.status,
            401,
            "{endpoint} unsigned: {}",
            missing.describe()
        );
        let resp = deliver(
            &w.server,
            endpoint,
            &[
                (event_header, "push"),
                (delivery_header, &id),
                (sig_header, &sig),
            ],
            &body,
        );
        assert_eq!(resp.status, 202, "{endpoint}: {}", resp.describe());
        assert_eq!(resp.json()["matched"], 1, "{endpoint}: {}", resp.describe());
        wait_runs_past(&w.server, repo, before);
        assert_eq!(
            served_main(&w, repo).as_deref(),
            Some(new.as_str()),
            "{endpoint}"
        );
    }
}

#[test]
fn a_bitbucket_repo_push_signed_with_hub_signature_syncs_the_mirror() {
    let w = hooks_world();
    let seed = forge_mirror(&w, "bb", "bitbucket", "team/bb");
    let before = runs(&w.server, "bb");
    let new = upstream_commit(&w, &seed, "bb.txt");
    let body =
        serde_json::to_vec(&bitbucket_push("team/bb", &w.upstream.base(), &new)).expect("JSON");
    let sig = format!("sha256={}", hmac_hex(BITBUCKET_SECRET, &body));
    let id = delivery_id();
    let headers = [
        ("User-Agent", "Bitbucket-Webhooks/2.0"),
        ("X-Event-Key", "repo:push"),
        ("X-Hook-UUID", "{hook-1}"),
        ("X-Request-UUID", id.as_str()),
        ("X-Attempt-Number", "1"),
        ("X-Hub-Signature", sig.as_str()),
    ];
    let wrong = format!("sha256={}", hmac_hex("wrong", &body));
    let mut bad = headers.to_vec();
    bad[5] = ("X-Hub-Signature", &wrong);
    assert_eq!(
        deliver(&w.server, "bitbucket", &bad, &body).status,
        401,
        "mis-signed"
    );
    let resp = deliver(&w.server, "bitbucket", &headers, &body);
    assert_eq!(resp.status, 202, "{}", resp.describe());
    assert_eq!(resp.json()["matched"], 1, "{}", resp.describe());
    wait_runs_past(&w.server, "bb", before);
    assert_eq!(served_main(&w, "bb").as_deref(), Some(new.as_str()));
}
