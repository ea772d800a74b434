//! The ephemeral namespace `<repo>+ephemeral.git` (compat.md §2, §4): its own refs over the
//! repository's shared objects; `HEAD` a symref to the default branch (unborn until pushed);
//! clone, fetch and push work; it is never forwarded upstream, never touched by sync and never
//! visible from the default namespace (neither its refs nor objects only it reaches). The REST
//! side: list, create / promote and delete branches with the `ephemeral` flags, on both route
//! generations (`/api/repos/{name}/…` and the legacy `/api/v1/…` that takes the repository from
//! the token).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::auth::{commit_detached, local_repo, ls_remote_map, rest, served};
use crate::support::pkt::{self, UPLOAD_PACK_REQUEST};
use crate::support::{Server, World, assert_maps_eq};

/// Heads and tags of an `ls-remote` map.
fn heads(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(k, _)| k.starts_with("refs/") && !k.ends_with("^{}"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `POST /<name>.git/git-upload-pack` with `body` (admin token), v2 or v0.
fn upload_pack(server: &Server, name: &str, body: &[u8], v2: bool) -> (u16, Vec<u8>) {
    let mut headers = vec![("Content-Type", UPLOAD_PACK_REQUEST)];
    if v2 {
        headers.push(("Git-Protocol", "version=2"));
    }
    let resp = server.request(
        "POST",
        &format!("/{name}.git/git-upload-pack"),
        Some(body),
        &headers,
    );
    (resp.status, resp.body)
}

/// Receive-pack requests (advertisements and POSTs) that reached the upstream so far.
fn upstream_receive_pack(w: &World) -> Vec<String> {
    w.upstream
        .request_log()
        .into_iter()
        .filter(|r| r.contains("receive-pack"))
        .collect()
}

/// A REST call with the admin token and a JSON body (none if `Null`); asserts the status, returns the body.
#[track_caller]
fn call(w: &World, method: &str, path: &str, body: &Value, status: u16) -> Value {
    let resp = if body.is_null() {
        w.server.request(method, path, None, &[])
    } else {
        w.server.request_json(method, path, body)
    };
    assert_eq!(
        resp.status,
        status,
        "{method} {path} {body}: {}\n{}",
        resp.describe(),
        w.server.logs()
    );
    serde_json::from_slice(&resp.body).unwrap_or(Value::Null)
}

/// Branch names of a `GET …/branches` answer, with their `head_sha`. Every entry also carries
/// the SDK's required `created_at` (RFC 3339, UTC).
fn branch_list(v: &Value) -> BTreeMap<String, String> {
    v["branches"]
        .as_array()
        .unwrap_or_else(|| panic!("no branches array in {v}"))
        .iter()
        .map(|b| {
            let created = b["created_at"].as_str().unwrap_or_default();
            assert!(
                created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
                "created_at of {b}"
            );
            (
                b["name"].as_str().expect("name").to_owned(),
                b["head_sha"].as_str().expect("head_sha").to_owned(),
            )
        })
        .collect()
}

#[test]
fn an_empty_ephemeral_namespace_has_an_unborn_head_naming_the_default_branch() {
    let w = World::new();
    call(
        &w,
        "POST",
        "/api/repos",
        &json!({"name": "t", "default_branch": "trunk"}),
        201,
    );
    // Clients init with `main`: a clone that ends on `trunk` was told so by the server.
    let clone = w.git.unique_path("empty-eph");
    let out = w.git.run(
        w.git.scratch(),
        &[
            "clone",
            &w.server.git_url("t+ephemeral"),
            clone.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.stderr.contains("empty repository"),
        "an empty clone\n{}",
        out.describe()
    );
    assert_eq!(
        w.git.run(&clone, &["symbolic-ref", "HEAD"]).stdout.trim(),
        "refs/heads/trunk",
        "the unborn HEAD of t+ephemeral names the default branch"
    );
    // Once pushed, HEAD is that branch.
    let c = w.git.commit_file(&clone, "f.txt", "f\n", "first");
    w.git.push(&clone, &["-q", "origin", "trunk"]);
    let ls = w.git.ls_remote(&w.server.git_url("t+ephemeral"));
    assert!(
        ls.contains("ref: refs/heads/trunk\tHEAD") && ls.contains(&format!("{c}\tHEAD")),
        "HEAD -> trunk once pushed:\n{ls}"
    );
    // The default namespace is still empty.
    assert!(
        heads(&served(&w, "t")).is_empty(),
        "nothing in t's default namespace"
    );
}

#[test]
fn ephemeral_refs_and_objects_stay_out_of_the_default_namespace_and_the_upstream_and_survive_syncs()
{
    let (w, seed) =
        World::seeded_mirror_with("m", Server::builder().arg("--moved-ref-grace").arg("0"));
    let eph_url = w.server.git_url("m+ephemeral");
    // An ephemeral-only commit E on main's tip, pushed as `eph-only` and as the ephemeral `main`.
    let e = commit_detached(&w.git, &seed.work, &seed.c3, "ephemeral.txt");
    let token = w
        .server
        .mint(&["--repo", "m", "--scopes", "git:read,git:write"]);
    w.git.push(
        &seed.work,
        &[
            "-q",
            &w.server.git_url_with("m+ephemeral", &token),
            &format!("{e}:refs/heads/eph-only"),
            &format!("{e}:refs/heads/main"),
            &format!("{}:refs/heads/feature/x", seed.feature),
        ],
    );
    let eph = heads(&ls_remote_map(&w.git, &eph_url));
    let expected_eph: BTreeMap<String, String> = [
        ("refs/heads/eph-only", e.as_str()),
        ("refs/heads/main", e.as_str()),
        ("refs/heads/feature/x", seed.feature.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_maps_eq(&eph, &expected_eph, "m+ephemeral after the push");
    let ls = w.git.ls_remote(&eph_url);
    assert!(
        ls.contains("ref: refs/heads/main\tHEAD"),
        "HEAD of m+ephemeral -> main:\n{ls}"
    );

    // The default namespace is the upstream's, over v0 and v2, and in a raw ls-refs.
    let upstream = heads(&ls_remote_map(&w.git, &seed.url));
    for v in [0, 2] {
        assert_maps_eq(
            &heads(&ls_remote_map(&w.git.protocol(v), &w.server.git_url("m"))),
            &upstream,
            &format!("ls-remote m over v{v}"),
        );
    }
    let (status, body) = upload_pack(&w.server, "m", &pkt::v2_ls_refs(), true);
    assert_eq!(status, 200, "ls-refs");
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains("eph-only") && !text.contains(&e),
        "ls-refs of m shows nothing ephemeral:\n{text}"
    );
    // Never forwarded: the upstream has neither the ref nor the object, and saw no push.
    assert!(
        upstream_receive_pack(&w).is_empty(),
        "the upstream saw receive-pack requests: {:?}",
        upstream_receive_pack(&w)
    );
    assert!(
        !upstream.contains_key("refs/heads/eph-only"),
        "{upstream:?}"
    );
    assert!(
        !w.git.try_run(&seed.bare, &["cat-file", "-e", &e]).success(),
        "E reached the upstream"
    );

    // E is only reachable from the ephemeral namespace: not fetchable through m.
    for v2 in [true, false] {
        let body = if v2 {
            pkt::v2_fetch(&[&e])
        } else {
            pkt::v0_want(&[&e])
        };
        let (status, resp) = upload_pack(&w.server, "m", &body, v2);
        assert!(
            ((400..500).contains(&status) || (status == 200 && pkt::has_err(&resp)))
                && !pkt::has_pack(&resp),
            "want E through m (v2 {v2}) must be refused, got {status}: {}",
            String::from_utf8_lossy(&resp)
        );
        let (status, resp) = upload_pack(&w.server, "m+ephemeral", &body, v2);
        assert!(
            status == 200 && pkt::has_pack(&resp),
            "want E through m+ephemeral (v2 {v2}) gets a pack, got {status}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
    let probe = w.git.unique_path("probe");
    w.git.clone(&w.server.git_url("m"), &probe, &["-q"]);
    let out = w
        .git
        .try_run(&probe, &["fetch", "-q", &w.server.git_url("m"), &e]);
    assert!(
        !out.success(),
        "git fetch of E through m\n{}",
        out.describe()
    );
    assert!(
        !w.git.try_run(&probe, &["cat-file", "-e", &e]).success(),
        "a clone of m has E"
    );
    // Through m+ephemeral it is there, and the clone is sound.
    let eclone = w.git.unique_path("eph-clone");
    w.git.clone(&eph_url, &eclone, &["-q", "--mirror"]);
    assert_eq!(w.git.rev_parse(&eclone, "refs/heads/eph-only"), e);
    w.git.fsck_strict(&eclone);

    // Syncs never touch the ephemeral namespace: the upstream moves main and deletes
    // feature/x, codestorage follows in m, m+ephemeral stays.
    w.git.run(&seed.work, &["switch", "-q", "main"]);
    let c4 = w.git.commit_file(&seed.work, "c4.txt", "c4\n", "c4");
    w.git.run(&seed.work, &["branch", "-q", "-D", "feature/x"]);
    seed.publish(&w.git);
    w.server.sync_now("m");
    w.server.sync_now("m");
    let m = heads(&served(&w, "m"));
    assert_eq!(m.get("refs/heads/main"), Some(&c4), "m follows: {m:?}");
    assert!(!m.contains_key("refs/heads/feature/x"), "m pruned: {m:?}");
    assert_maps_eq(
        &heads(&ls_remote_map(&w.git, &eph_url)),
        &expected_eph,
        "m+ephemeral after two syncs",
    );
    // Fetching through the ephemeral namespace still works and gets E.
    let out = w
        .git
        .try_run(&eclone, &["fetch", "-q", &eph_url, "+refs/*:refs/*"]);
    assert!(out.success(), "fetch m+ephemeral\n{}", out.describe());
    assert!(
        upstream_receive_pack(&w).is_empty(),
        "still no push upstream"
    );
}

#[test]
fn promotion_via_rest_on_a_local_repo_moves_the_default_branch_and_honours_force() {
    let w = World::new();
    let work = local_repo(&w, "r");
    let base = served(&w, "r");
    let main = base["refs/heads/main"].clone();
    let parent = w.git.rev_parse(&work, &format!("{main}~1"));
    let e = commit_detached(&w.git, &work, &main, "feat.txt");
    let s = commit_detached(&w.git, &work, &parent, "side.txt");
    w.git.push(
        &work,
        &[
            "-q",
            &w.server.git_url("r+ephemeral"),
            &format!("{e}:refs/heads/feat"),
            &format!("{s}:refs/heads/side"),
        ],
    );
    let create = Server::repo_path("r", "/branches/create");

    // Promotion to a new name.
    let v = call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "feat", "target_branch": "promoted", "base_is_ephemeral": true, "target_is_ephemeral": false}),
        200,
    );
    assert_eq!(v["target_branch"], "promoted", "{v}");
    assert_eq!(v["target_is_ephemeral"], false, "{v}");
    assert_eq!(v["commit_sha"], e.as_str(), "{v}");
    assert!(v["message"].is_string(), "{v}");
    // Without target_branch: the same name.
    let v = call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "feat", "base_is_ephemeral": true, "target_is_ephemeral": false}),
        200,
    );
    assert_eq!(v["target_branch"], "feat", "{v}");
    let mut expected = heads(&base);
    expected.insert("refs/heads/promoted".into(), e.clone());
    expected.insert("refs/heads/feat".into(), e.clone());
    assert_maps_eq(&heads(&served(&w, "r")), &expected, "r after promotions");
    // A clone of r has the promoted objects.
    let clone = w.git.unique_path("after-promotion");
    w.git
        .clone(&w.server.git_url("r"), &clone, &["-q", "--mirror"]);
    w.git.fsck_strict(&clone);
    assert_eq!(w.git.rev_parse(&clone, "refs/heads/promoted"), e);

    // Onto a diverged target: 409 without force, nothing moves; with force it moves.
    call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "side", "target_branch": "main", "base_is_ephemeral": true, "target_is_ephemeral": false}),
        409,
    );
    assert_maps_eq(&heads(&served(&w, "r")), &expected, "r after the 409");
    call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "side", "target_branch": "release", "base_is_ephemeral": true, "target_is_ephemeral": false, "force": true}),
        200,
    );
    expected.insert("refs/heads/release".into(), s.clone());
    // A fast-forward needs no force.
    call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "feat", "target_branch": "main", "base_is_ephemeral": true, "target_is_ephemeral": false}),
        200,
    );
    expected.insert("refs/heads/main".into(), e.clone());
    assert_maps_eq(&heads(&served(&w, "r")), &expected, "r after force and FF");
    // The other way: an ephemeral branch from a default one.
    let v = call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "feature/x", "target_branch": "from-default", "base_is_ephemeral": false, "target_is_ephemeral": true}),
        200,
    );
    assert_eq!(v["target_is_ephemeral"], true, "{v}");
    let eph = heads(&served(&w, "r+ephemeral"));
    assert_eq!(
        eph.get("refs/heads/from-default"),
        base.get("refs/heads/feature/x"),
        "{eph:?}"
    );
    assert_maps_eq(
        &heads(&served(&w, "r")),
        &expected,
        "r unchanged by an ephemeral create",
    );
    // The source stays in the ephemeral namespace.
    assert_eq!(eph.get("refs/heads/feat"), Some(&e), "{eph:?}");
    // Unknown base: 404.
    call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "nope", "target_branch": "x", "base_is_ephemeral": true}),
        404,
    );

    // The token's ref policy applies to promotion; git:read cannot promote at all.
    let locked = w.server.mint(&[
        "--repo",
        "r",
        "--scopes",
        "git:write",
        "--refs",
        "locked=no-push",
    ]);
    let body = json!({"base_branch": "feat", "target_branch": "locked", "base_is_ephemeral": true, "target_is_ephemeral": false});
    let resp = rest(&w.server, "POST", &create, Some(&locked), Some(&body));
    assert_eq!(
        resp.status,
        403,
        "promotion onto a no-push ref: {}",
        resp.describe()
    );
    let reader = w.server.mint(&["--repo", "r", "--scopes", "git:read"]);
    let resp = rest(&w.server, "POST", &create, Some(&reader), Some(&body));
    assert_eq!(
        resp.status,
        403,
        "promotion with git:read: {}",
        resp.describe()
    );
    assert_maps_eq(&heads(&served(&w, "r")), &expected, "r after refusals");
}

#[test]
fn promotion_via_rest_on_a_mirror_pushes_the_branch_to_the_upstream() {
    let (w, seed) = World::seeded_mirror("m");
    let e = commit_detached(&w.git, &seed.work, &seed.c3, "feat.txt");
    let s = commit_detached(&w.git, &seed.work, &seed.c2, "side.txt");
    w.git.push(
        &seed.work,
        &[
            "-q",
            &w.server.git_url("m+ephemeral"),
            &format!("{e}:refs/heads/feat"),
            &format!("{s}:refs/heads/side"),
        ],
    );
    assert!(
        upstream_receive_pack(&w).is_empty(),
        "ephemeral pushes are not forwarded"
    );
    let create = Server::repo_path("m", "/branches/create");
    let v = call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "feat", "target_branch": "feat", "base_is_ephemeral": true, "target_is_ephemeral": false}),
        200,
    );
    assert_eq!(v["commit_sha"], e.as_str(), "{v}");
    // The upstream has the branch and its objects; codestorage serves it.
    assert_eq!(w.git.rev_parse(&seed.bare, "refs/heads/feat"), e);
    w.git.fsck_strict(&seed.bare);
    assert!(
        upstream_receive_pack(&w)
            .iter()
            .any(|r| r.starts_with("POST")),
        "promotion pushed to the upstream: {:?}",
        w.upstream.request_log()
    );
    let upstream = heads(&ls_remote_map(&w.git, &seed.url));
    assert_maps_eq(
        &heads(&served(&w, "m")),
        &upstream,
        "m vs upstream after promotion",
    );

    // A diverged target: 409 without force, and the upstream is untouched.
    call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "side", "target_branch": "main", "base_is_ephemeral": true, "target_is_ephemeral": false}),
        409,
    );
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        seed.c3,
        "upstream main unchanged"
    );
    call(
        &w,
        "POST",
        &create,
        &json!({"base_branch": "side", "target_branch": "main", "base_is_ephemeral": true, "target_is_ephemeral": false, "force": true}),
        200,
    );
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        s,
        "forced promotion reached the upstream"
    );
    w.git.fsck_strict(&seed.bare);
    let upstream = heads(&ls_remote_map(&w.git, &seed.url));
    assert_maps_eq(
        &heads(&served(&w, "m")),
        &upstream,
        "m vs upstream after the forced promotion",
    );
    // The ephemeral namespace still has both.
    let eph = heads(&served(&w, "m+ephemeral"));
    assert_eq!(eph.get("refs/heads/feat"), Some(&e));
    assert_eq!(eph.get("refs/heads/side"), Some(&s));
}

#[test]
fn rest_lists_and_deletes_ephemeral_branches_apart_from_the_default_ones() {
    let (w, seed) = World::seeded_mirror("m");
    let e = commit_detached(&w.git, &seed.work, &seed.c3, "e.txt");
    w.git.push(
        &seed.work,
        &[
            "-q",
            &w.server.git_url("m+ephemeral"),
            &format!("{e}:refs/heads/a"),
            &format!("{}:refs/heads/b", seed.c2),
            &format!("{e}:refs/heads/nested/c"),
            &format!("{e}:refs/heads/main"),
            &format!("{e}:refs/tags/not-a-branch"),
        ],
    );
    let default_before = served(&w, "m");
    let upstream_before = w.git.refs(&seed.bare);
    let branches = Server::repo_path("m", "/branches");

    let v = call(
        &w,
        "GET",
        &format!("{branches}?ephemeral=true"),
        &Value::Null,
        200,
    );
    let expected: BTreeMap<String, String> = [
        ("a", e.as_str()),
        ("b", seed.c2.as_str()),
        ("main", e.as_str()),
        ("nested/c", e.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(branch_list(&v), expected, "ephemeral branches: {v}");
    assert_eq!(v["has_more"], false, "{v}");
    assert!(v["next_cursor"].is_null(), "{v}");
    let v = call(&w, "GET", &branches, &Value::Null, 200);
    let default: BTreeMap<String, String> = [
        ("feature/x", seed.feature.as_str()),
        ("main", seed.c3.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(branch_list(&v), default, "default branches: {v}");
    // Pages.
    let v = call(
        &w,
        "GET",
        &format!("{branches}?ephemeral=true&limit=3"),
        &Value::Null,
        200,
    );
    assert_eq!(branch_list(&v).len(), 3, "{v}");
    assert_eq!(v["has_more"], true, "{v}");
    let cursor = v["next_cursor"].as_str().expect("next_cursor").to_owned();
    let v = call(
        &w,
        "GET",
        &format!("{branches}?ephemeral=true&limit=3&cursor={cursor}"),
        &Value::Null,
        200,
    );
    assert_eq!(
        branch_list(&v).keys().collect::<Vec<_>>(),
        vec!["nested/c"],
        "second page: {v}"
    );
    assert_eq!(v["has_more"], false, "{v}");

    // Delete ephemeral branches, including the ephemeral `main` (no default-branch protection
    // there); the default namespace and the upstream are untouched.
    for name in ["a", "nested/c", "main"] {
        let v = call(
            &w,
            "DELETE",
            &branches,
            &json!({"name": name, "ephemeral": true}),
            200,
        );
        assert_eq!(v["ephemeral"], true, "{v}");
    }
    let eph = heads(&served(&w, "m+ephemeral"));
    let expected_eph: BTreeMap<String, String> = [
        ("refs/heads/b", seed.c2.as_str()),
        ("refs/tags/not-a-branch", e.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_maps_eq(&eph, &expected_eph, "m+ephemeral after deletions");
    call(
        &w,
        "DELETE",
        &branches,
        &json!({"name": "a", "ephemeral": true}),
        404,
    );
    // The default branch of the default namespace cannot be deleted.
    call(&w, "DELETE", &branches, &json!({"name": "main"}), 400);
    assert_maps_eq(
        &served(&w, "m"),
        &default_before,
        "m's default namespace unchanged",
    );
    assert_eq!(
        w.git.refs(&seed.bare),
        upstream_before,
        "the upstream is unchanged"
    );
    assert!(
        upstream_receive_pack(&w).is_empty(),
        "ephemeral deletions never reach the upstream"
    );
    // Deleting a default branch of a mirror goes to the upstream.
    call(&w, "DELETE", &branches, &json!({"name": "feature/x"}), 200);
    assert!(
        !w.git.refs(&seed.bare).contains_key("refs/heads/feature/x"),
        "feature/x deleted upstream"
    );
}

#[test]
fn legacy_v1_routes_take_the_repository_from_the_token() {
    let (w, seed) = World::seeded_mirror("m");
    let mint = |repo: &str, scopes: &str| w.server.mint(&["--repo", repo, "--scopes", scopes]);
    let v1 = |method: &str, path: &str, token: &str, body: Option<&Value>| {
        rest(
            &w.server,
            method,
            &format!("/api/v1{path}"),
            Some(token),
            body,
        )
    };

    // Create: the name is the token's repo claim (any name in the body is ignored).
    let creator = mint("leg", "repo:write");
    let resp = v1(
        "POST",
        "/repos",
        &creator,
        Some(&json!({"name": "ignored"})),
    );
    assert_eq!(resp.status, 201, "legacy create: {}", resp.describe());
    assert_eq!(resp.json()["repo_id"], "leg");
    let resp = v1("POST", "/repos", &creator, Some(&json!({})));
    assert_eq!(resp.status, 409, "legacy create again: {}", resp.describe());
    let names = Server::listed_names(&w.server.list_repos());
    assert_eq!(names, vec!["leg", "m"], "no repo named 'ignored'");
    let org = mint("org", "repo:write");
    let resp = v1("POST", "/repos", &org, Some(&json!({})));
    assert_eq!(
        resp.status,
        400,
        "legacy create with an org token: {}",
        resp.describe()
    );

    // Fill it with git; show it and its branches.
    let t = mint("leg", "git:read,git:write");
    w.git.push(
        &seed.work,
        &[
            "-q",
            &w.server.git_url_with("leg", &t),
            "main:refs/heads/main",
            "feature/x:refs/heads/feature/x",
        ],
    );
    let resp = v1("GET", "/repo", &t, None);
    assert_eq!(resp.status, 200, "legacy show: {}", resp.describe());
    assert_eq!(resp.json()["name"], "leg");
    let resp = v1("GET", "/repos/branches", &t, None);
    assert_eq!(resp.status, 200, "legacy branches: {}", resp.describe());
    let listed = branch_list(&resp.json());
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        vec!["feature/x", "main"],
        "legacy branches"
    );

    // Ephemeral branches through the legacy routes.
    let e = commit_detached(&w.git, &seed.work, &seed.c3, "legacy-eph.txt");
    w.git.push(
        &seed.work,
        &[
            "-q",
            &w.server.git_url_with("leg+ephemeral", &t),
            &format!("{e}:refs/heads/work"),
        ],
    );
    let resp = v1("GET", "/repos/branches?ephemeral=true", &t, None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(
        branch_list(&resp.json()),
        [("work".to_owned(), e.clone())].into_iter().collect(),
        "legacy ephemeral branches"
    );
    let resp = v1(
        "POST",
        "/repos/branches/create",
        &t,
        Some(
            &json!({"base_branch": "work", "target_branch": "work", "base_is_ephemeral": true, "target_is_ephemeral": false}),
        ),
    );
    assert_eq!(resp.status, 200, "legacy promotion: {}", resp.describe());
    assert_eq!(resp.json()["commit_sha"], e.as_str());
    assert_eq!(served(&w, "leg").get("refs/heads/work"), Some(&e));
    let resp = v1(
        "DELETE",
        "/repos/branches",
        &t,
        Some(&json!({"name": "work", "ephemeral": true})),
    );
    assert_eq!(
        resp.status,
        200,
        "legacy ephemeral delete: {}",
        resp.describe()
    );
    assert!(
        !served(&w, "leg+ephemeral").contains_key("refs/heads/work"),
        "deleted from the ephemeral namespace"
    );
    assert_eq!(
        served(&w, "leg").get("refs/heads/work"),
        Some(&e),
        "the promoted branch stays"
    );
    let resp = v1(
        "DELETE",
        "/repos/branches",
        &t,
        Some(&json!({"name": "main"})),
    );
    assert_eq!(
        resp.status,
        400,
        "legacy delete of the default branch: {}",
        resp.describe()
    );

    // List (org-wide org:read) and pull-upstream (git:write).
    let resp = v1("GET", "/repos", &mint("org", "org:read"), None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(Server::listed_names(&resp.json()), vec!["leg", "m"]);
    let resp = v1("POST", "/repos/pull-upstream", &t, None);
    assert_eq!(
        resp.status,
        400,
        "pull-upstream without upstream: {}",
        resp.describe()
    );
    let runs = w.server.sync_state("m").run_count;
    let resp = v1(
        "POST",
        "/repos/pull-upstream",
        &mint("m", "git:write"),
        None,
    );
    assert_eq!(
        resp.status,
        202,
        "legacy pull-upstream: {}",
        resp.describe()
    );
    crate::support::wait_until(crate::support::SYNC_TIMEOUT, "the requested sync", || {
        (w.server.sync_state("m").run_count > runs).then_some(())
    });

    // Delete with repo:write; then the repository is gone.
    let resp = v1("DELETE", "/repos/delete", &t, None);
    assert_eq!(
        resp.status,
        403,
        "legacy delete with git:write: {}",
        resp.describe()
    );
    let resp = v1("DELETE", "/repos/delete", &creator, None);
    assert_eq!(resp.status, 200, "legacy delete: {}", resp.describe());
    let resp = v1("GET", "/repo", &t, None);
    assert_eq!(
        resp.status,
        404,
        "legacy show after delete: {}",
        resp.describe()
    );
    let resp = v1("DELETE", "/repos/delete", &creator, None);
    assert!(
        resp.status == 404 || resp.status == 409,
        "legacy delete again: {}",
        resp.describe()
    );
    assert_eq!(Server::listed_names(&w.server.list_repos()), vec!["m"]);
    // The legacy repo routes need a repo claim.
    let resp = v1("GET", "/repo", &mint("org", "git:read"), None);
    assert_eq!(
        resp.status,
        400,
        "legacy show with an org token: {}",
        resp.describe()
    );
}
