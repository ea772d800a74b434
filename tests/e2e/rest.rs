//! The REST API for repos: create, list, show, pull-upstream, and their error statuses.
//! (Invalid names and duplicates are in `bad_input`.)

use serde_json::{Value, json};

use crate::support::server::SyncState;
use crate::support::{Server, World, seed_repo};

#[test]
fn creating_a_mirror_returns_201_and_its_record_describes_it() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    let created = w.server.create_mirror("repo", &seed.url);
    let record = w.server.wait_synced("repo");

    assert_eq!(record["name"], "repo", "name: {record}");
    assert_eq!(
        record["repo_id"], created["repo_id"],
        "repo_id matches the create answer: {record}"
    );
    assert_eq!(
        record["default_branch"], "main",
        "default branch from the upstream HEAD: {record}"
    );
    assert!(record["created_at"].is_string(), "created_at: {record}");
    assert!(
        record["base_repo"].is_object(),
        "a mirror has a base_repo: {record}"
    );
    assert!(
        record["base_repo"].to_string().contains(&seed.url),
        "base_repo names the upstream URL: {record}"
    );
    let sync = SyncState::of(&record);
    assert!(sync.run_count >= 1, "a finished run is counted: {record}");
    assert!(
        sync.last_run_at.is_some(),
        "last_run_at after a run: {record}"
    );
    assert!(
        sync.last_error.is_none(),
        "no error after a good sync: {record}"
    );
}

#[test]
fn creating_a_local_repo_returns_201_and_its_record_has_no_base_repo() {
    let w = World::new();
    w.server.create_local("plain");
    let record = w.server.repo("plain");
    assert_eq!(record["name"], "plain", "name: {record}");
    assert!(record["base_repo"].is_null(), "no upstream: {record}");
}

#[test]
fn created_repos_are_listed() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "mirrored");
    w.server.create_mirror("mirrored", &seed.url);
    w.server.create_local("plain");
    w.server.create_local("team/project");
    let list = w.server.list_repos();
    let names = Server::listed_names(&list);
    for name in ["mirrored", "plain", "team/project"] {
        assert!(names.iter().any(|n| n == name), "{name} listed in {list}");
    }
}

#[test]
fn repo_lists_page_by_cursor_filter_by_q_and_refuse_bad_limits() {
    let w = World::new();
    let names = ["alpha", "beta", "gamma", "team/alpha-2", "team/delta"];
    for name in names {
        w.server.create_local(name);
    }
    let get = |path: &str| {
        let resp = w.server.request("GET", path, None, &[]);
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.describe());
        resp.json()
    };

    // Pages of two, in name order, joined by next_cursor; the last page says has_more: false.
    let mut seen = Vec::new();
    let mut path = "/api/repos?limit=2".to_owned();
    for page in 0.. {
        assert!(page < 5, "pagination does not end: {seen:?}");
        let list = get(&path);
        let listed = Server::listed_names(&list);
        assert!(listed.len() <= 2, "limit 2: {list}");
        seen.extend(listed);
        if list["has_more"] == json!(false) {
            assert!(
                list["next_cursor"].is_null(),
                "no cursor on the last page: {list}"
            );
            break;
        }
        let cursor = list["next_cursor"]
            .as_str()
            .expect("next_cursor")
            .replace('/', "%2F");
        path = format!("/api/repos?limit=2&cursor={cursor}");
    }
    assert_eq!(seen, names, "every repository once, in order");

    // q is a substring of the name.
    let alphas = Server::listed_names(&get("/api/repos?q=alpha"));
    assert_eq!(alphas, ["alpha", "team/alpha-2"]);
    assert!(Server::listed_names(&get("/api/repos?q=nothing-like-it")).is_empty());

    for bad in ["0", "101", "ten"] {
        let resp = w
            .server
            .request("GET", &format!("/api/repos?limit={bad}"), None, &[]);
        assert_eq!(resp.status, 400, "limit={bad}: {}", resp.describe());
        assert!(
            resp.json()["error"].is_string(),
            "JSON error: {}",
            resp.describe()
        );
    }
}

#[test]
fn pull_upstream_on_a_mirror_is_202_and_runs_a_sync() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.server.mirror("repo", &seed.url);
    let before = w.server.sync_state("repo").run_count;
    let resp = w.server.try_pull_upstream("repo");
    assert_eq!(resp.status, 202, "pull-upstream: {}", resp.describe());
    assert!(
        resp.json()["message"].is_string(),
        "202 carries a message: {}",
        resp.describe()
    );
    crate::support::wait_until(
        crate::support::SYNC_TIMEOUT,
        "the requested sync to finish",
        || {
            let sync = w.server.sync_state("repo");
            (sync.run_count > before && !sync.in_progress).then_some(())
        },
    );
}

#[test]
fn pull_upstream_takes_an_optional_ref_and_refuses_bad_ones() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.server.mirror("repo", &seed.url);
    let path = Server::repo_path("repo", "/pull-upstream");
    for body in [
        json!({"ref": "main"}),
        json!({"ref": "refs/heads/main"}),
        json!({}),
    ] {
        let resp = w.server.request_json("POST", &path, &body);
        assert_eq!(resp.status, 202, "{body}: {}", resp.describe());
    }
    for body in [
        json!({"ref": "bad..name"}),
        json!({"ref": "refs/heads/x y"}),
        json!({"after": "abc"}),
        json!({"ref": 7}),
    ] {
        let resp = w.server.request_json("POST", &path, &body);
        assert_eq!(resp.status, 400, "{body}: {}", resp.describe());
        assert!(resp.json()["error"].is_string(), "{body}: JSON error");
    }
    // The legacy route (repo from the token) behaves the same.
    let token = w.server.mint(&["--repo", "repo", "--scopes", "git:write"]);
    let resp = w.server.request(
        "POST",
        "/api/v1/repos/pull-upstream",
        Some(br#"{"ref":"main"}"#),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {token}")),
        ],
    );
    assert_eq!(resp.status, 202, "legacy: {}", resp.describe());
}

#[test]
fn pull_upstream_on_a_repo_without_upstream_is_400() {
    let w = World::new();
    w.server.create_local("plain");
    let resp = w.server.try_pull_upstream("plain");
    assert_eq!(
        resp.status,
        400,
        "pull-upstream without upstream: {}",
        resp.describe()
    );
    assert!(
        resp.json()["error"].is_string(),
        "JSON error body: {}",
        resp.describe()
    );
}

#[test]
fn unknown_repo_is_404_for_show_pull_upstream_and_git() {
    let w = World::new();
    let (status, body) = w.server.get_repo("nope");
    assert_eq!(status, 404, "GET unknown repo: {body}");
    let resp = w.server.try_pull_upstream("nope");
    assert_eq!(
        resp.status,
        404,
        "pull-upstream unknown repo: {}",
        resp.describe()
    );
    let resp = w.server.request(
        "GET",
        "/nope.git/info/refs?service=git-upload-pack",
        None,
        &[],
    );
    assert_eq!(
        resp.status,
        404,
        "git info/refs of an unknown repo: {}",
        resp.describe()
    );
    let out = w
        .git
        .run_fail(w.git.scratch(), &["ls-remote", &w.server.git_url("nope")]);
    assert!(
        out.stderr.contains("not found") || out.stderr.contains("404"),
        "git reports the missing repo\n{}",
        out.describe()
    );
}

#[test]
fn repo_names_with_slashes_are_addressed_with_percent_2f() {
    let w = World::new();
    w.server.create_local("team/project");
    let (status, record) = w.server.get_repo("team/project");
    assert_eq!(status, 200, "GET /api/repos/team%2Fproject: {record}");
    assert_eq!(record["name"], "team/project", "decoded name: {record}");
}

#[test]
fn create_answers_json_and_the_record_round_trips_through_list() {
    let w = World::new();
    let resp = w.server.try_create(&json!({ "name": "plain" }));
    assert_eq!(resp.status, 201, "create: {}", resp.describe());
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "JSON content type: {:?}",
        resp.headers
    );
    let repo_id = resp.json()["repo_id"].clone();
    let list = w.server.list_repos();
    let items = list
        .get("repos")
        .and_then(Value::as_array)
        .or_else(|| list.as_array());
    let listed = items
        .into_iter()
        .flatten()
        .find(|r| r.get("name") == Some(&json!("plain")))
        .unwrap_or_else(|| panic!("plain not listed: {list}"));
    assert_eq!(
        listed.get("repo_id").unwrap_or(&repo_id),
        &repo_id,
        "same repo_id in the list: {list}"
    );
}
