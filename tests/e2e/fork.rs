//! Forks through create-repo (`base_repo.provider: "code"`, `operation: "fork"`): an independent
//! repository that starts with the source's branches and tags, shares its objects, and moves on
//! its own; fork points (`sha` > `ref` > `HEAD`); and every refusal.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::support::jwt::{KeyDir, Signer};
use crate::support::{Server, World};

/// A local repository `name` with `main` (3 commits), `feature` (1 more) and tag `v1`; returns
/// the work tree's ids: (first commit, main tip, feature tip).
fn filled(w: &World, name: &str) -> (std::path::PathBuf, String, String, String) {
    w.server.create_local(name);
    let work = w.git.init(&format!("work-{}", name.replace('/', "-")));
    let first = w.git.commit_file(&work, "a.txt", "1\n", "one");
    w.git.commit_file(&work, "a.txt", "2\n", "two");
    let main = w.git.commit_file(&work, "b.txt", "3\n", "three");
    w.git.run(&work, &["tag", "-a", "v1", "-m", "v1", &first]);
    w.git.run(&work, &["checkout", "-q", "-b", "feature"]);
    let feature = w.git.commit_file(&work, "c.txt", "4\n", "four");
    w.git.run(&work, &["checkout", "-q", "main"]);
    let url = w.server.git_url(name);
    w.git.push(&work, &[&url, "main", "feature", "v1"]);
    (work, first, main, feature)
}

fn fork(server: &Server, body: Value) -> crate::support::http::HttpResponse {
    server.request_json("POST", "/api/repos", &body)
}

fn heads_and_tags(w: &World, name: &str) -> BTreeMap<String, String> {
    let out = w.git.ls_remote(&w.server.git_url(name));
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, r)| r.starts_with("refs/heads/") || r.starts_with("refs/tags/"))
        .map(|(id, r)| (r.to_owned(), id.to_owned()))
        .collect()
}

#[test]
fn a_fork_starts_with_the_source_refs_and_then_goes_its_own_way() {
    let mut w = World::new();
    let (work, _first, main, _feature) = filled(&w, "src");
    let resp = fork(
        &w.server,
        json!({"name": "team/copy", "base_repo": {"provider": "code", "owner": "ignored", "name": "src", "operation": "fork"}}),
    );
    assert_eq!(resp.status, 201, "fork: {}", resp.describe());
    assert_eq!(resp.json()["repo_id"], "team/copy");
    assert_eq!(heads_and_tags(&w, "team/copy"), heads_and_tags(&w, "src"));
    let record = w.server.repo("team/copy");
    assert_eq!(record["default_branch"], "main", "{record}");
    assert!(record["base_repo"].is_null(), "a fork is local: {record}");

    let clone = w.git.path("clone-of-fork");
    w.git.clone(&w.server.git_url("team/copy"), &clone, &[]);
    w.git.fsck_strict(&clone);
    assert_eq!(w.git.rev_parse(&clone, "HEAD"), main);

    // Each side moves on alone.
    let on_fork = w.git.commit_file(&clone, "fork.txt", "f\n", "on the fork");
    w.git.push(&clone, &["origin", "main"]);
    let on_src = w.git.commit_file(&work, "src.txt", "s\n", "on the source");
    w.git.push(&work, &[&w.server.git_url("src"), "main"]);
    assert_eq!(heads_and_tags(&w, "team/copy")["refs/heads/main"], on_fork);
    assert_eq!(heads_and_tags(&w, "src")["refs/heads/main"], on_src);

    // Deleting the source leaves the fork whole.
    let resp = w
        .server
        .request("DELETE", &Server::repo_path("src", ""), None, &[]);
    assert_eq!(resp.status, 200, "delete source: {}", resp.describe());
    let again = w.git.path("clone-after-delete");
    w.git.clone(&w.server.git_url("team/copy"), &again, &[]);
    w.git.fsck_strict(&again);
    assert_eq!(w.git.rev_parse(&again, "HEAD"), on_fork);
    // After a restart too, and the store checks out.
    w.server.restart();
    assert_eq!(heads_and_tags(&w, "team/copy")["refs/heads/main"], on_fork);
    w.server.stop();
    let fsck = w.server.fsck();
    assert!(fsck.success(), "codestorage fsck: {}", fsck.describe());
}

#[test]
fn fork_points_follow_sha_then_ref_then_head() {
    let w = World::new();
    let (_work, first, _main, feature) = filled(&w, "src");
    // ref (a branch) with another default branch name.
    let resp = fork(
        &w.server,
        json!({"name": "by-ref", "default_branch": "trunk",
               "base_repo": {"provider": "code", "name": "src", "operation": "fork", "ref": "feature"}}),
    );
    assert_eq!(resp.status, 201, "{}", resp.describe());
    let refs = heads_and_tags(&w, "by-ref");
    assert_eq!(refs["refs/heads/trunk"], feature);
    assert_eq!(w.server.repo("by-ref")["default_branch"], "trunk");
    // ref (an annotated tag) is peeled to its commit.
    let resp = fork(
        &w.server,
        json!({"name": "by-tag", "base_repo": {"provider": "code.storage", "name": "src", "ref": "v1"}}),
    );
    assert_eq!(resp.status, 201, "{}", resp.describe());
    assert_eq!(heads_and_tags(&w, "by-tag")["refs/heads/main"], first);
    // sha wins over ref.
    let resp = fork(
        &w.server,
        json!({"name": "by-sha", "base_repo": {"provider": "code", "name": "src", "operation": "fork", "ref": "feature", "sha": first}}),
    );
    assert_eq!(resp.status, 201, "{}", resp.describe());
    assert_eq!(heads_and_tags(&w, "by-sha")["refs/heads/main"], first);
    let clone = w.git.path("by-sha-clone");
    w.git.clone(&w.server.git_url("by-sha"), &clone, &[]);
    w.git.fsck_strict(&clone);
    assert_eq!(w.git.rev_parse(&clone, "HEAD"), first);
}

#[test]
fn the_sdk_shape_with_a_nested_read_token_is_accepted_and_checked() {
    let w = World::new();
    filled(&w, "src");
    let signer = Signer::from_data_dir(w.server.data_dir());
    let outer = signer.token(Some("sdk-fork"), &["repo:write"]);
    let post = |token: &str, nested: &str, name: &str| {
        let body = json!({"default_branch": null, "base_repo": {"provider": "code", "owner": signer.org, "name": "src", "operation": "fork", "auth": {"token": nested}}});
        let mut body = body;
        body["name"] = json!(name);
        w.server.request(
            "POST",
            "/api/repos",
            Some(&serde_json::to_vec(&body).expect("json")),
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &format!("Bearer {token}")),
            ],
        )
    };
    let good = signer.token(Some("src"), &["git:read"]);
    let resp = post(&outer, &good, "sdk-fork");
    assert_eq!(resp.status, 201, "{}", resp.describe());
    // A nested token for another repository, or without read, or not a token at all.
    let outer2 = signer.token(Some("sdk-fork-2"), &["repo:write"]);
    let other = signer.token(Some("elsewhere"), &["git:read"]);
    assert_eq!(post(&outer2, &other, "sdk-fork-2").status, 403);
    let no_read = signer.token(Some("src"), &["repo:write"]);
    assert_eq!(post(&outer2, &no_read, "sdk-fork-2").status, 403);
    let resp = post(&outer2, "not-a-jwt", "sdk-fork-2");
    assert_eq!(resp.status, 401, "{}", resp.describe());
    assert!(resp.json()["error"].is_string());
    let (status, _) = w.server.get_repo("sdk-fork-2");
    assert_eq!(status, 404, "refused forks create nothing");
}

#[test]
fn bad_fork_requests_are_refused_and_create_nothing() {
    let w = World::new();
    let (_work, _first, _main, _feature) = filled(&w, "src");
    let cases = [
        (
            json!({"provider": "code", "operation": "fork"}),
            400,
            "no source name",
        ),
        (
            json!({"provider": "code", "name": "nope", "operation": "fork"}),
            404,
            "unknown source",
        ),
        (
            json!({"provider": "code", "name": "src", "operation": "snapshot", "ref": "main"}),
            400,
            "snapshot unsupported",
        ),
        (
            json!({"provider": "code", "name": "src", "ref": "no-such-branch"}),
            404,
            "unknown ref",
        ),
        (
            json!({"provider": "code", "name": "src", "sha": "abc"}),
            400,
            "short sha",
        ),
        (
            json!({"provider": "code", "name": "src", "sha": "0123456789abcdef0123456789abcdef01234567"}),
            404,
            "sha not in the source",
        ),
    ];
    for (base, status, what) in cases {
        let resp = fork(&w.server, json!({"name": "bad-fork", "base_repo": base}));
        assert_eq!(resp.status, status, "{what}: {}", resp.describe());
        assert!(resp.json()["error"].is_string(), "{what}: JSON error body");
        let (got, _) = w.server.get_repo("bad-fork");
        assert_eq!(got, 404, "{what}: nothing created");
    }
    // An existing name is a conflict, and the existing repository is untouched.
    let before = heads_and_tags(&w, "src");
    let resp = fork(
        &w.server,
        json!({"name": "src", "base_repo": {"provider": "code", "name": "src"}}),
    );
    assert_eq!(resp.status, 409, "{}", resp.describe());
    assert_eq!(heads_and_tags(&w, "src"), before);
}

#[test]
fn another_organisation_cannot_fork_a_repository() {
    let acme = KeyDir::generate("acme", "es256");
    let config = acme.config_file(Some(&acme.kid()));
    let w = World::with_server(
        Server::builder()
            .arg("--config")
            .arg(config.to_str().expect("utf-8 path")),
    );
    filled(&w, "src");
    let ac = acme.signer();
    let outer = ac.token(Some("acme/copy"), &["repo:write"]);
    let nested = ac.token(None, &["git:read"]);
    let body = json!({"name": "acme/copy", "base_repo": {"provider": "code", "name": "src", "auth": {"token": nested}}});
    let resp = w.server.request(
        "POST",
        "/api/repos",
        Some(&serde_json::to_vec(&body).expect("json")),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {outer}")),
        ],
    );
    assert_eq!(resp.status, 404, "{}", resp.describe());
    let (status, _) = w.server.get_repo("acme/copy");
    assert_eq!(status, 404);
}
