//! Clones through codestorage, checked against the upstream with git as the oracle.
//!
//! The `check_*` functions are the scenarios; they take the URL to clone from, so `harness` runs
//! the same expectations against `git http-backend` directly: a failure here is then codestorage's.

use crate::support::git::EPOCH;
use crate::support::{Git, Seed, World, assert_maps_eq};

// ---- scenarios (also run against the upstream by `harness`) ----

/// A `--mirror` clone has exactly the upstream's heads, tags and HEAD, and passes fsck; a normal
/// clone tracks every upstream branch and checks out the default branch.
pub(crate) fn check_clone(git: &Git, seed: &Seed, url: &str) {
    let upstream_refs = git.served_refs(&seed.bare);

    let mirror = git.unique_path("mirror");
    git.clone(url, &mirror, &["--mirror"]);
    assert_maps_eq(
        &git.served_refs(&mirror),
        &upstream_refs,
        "mirror clone refs vs upstream",
    );
    git.fsck_strict(&mirror);

    let work = git.unique_path("work");
    git.clone(url, &work, &[]);
    assert_maps_eq(
        &git.remote_view(&work),
        &upstream_refs,
        "clone's remote view vs upstream",
    );
    assert_eq!(
        git.rev_parse(&work, "HEAD"),
        git.rev_parse(&seed.bare, "refs/heads/main"),
        "the clone checks out main's tip"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("src/lib.rs")).expect("src/lib.rs checked out"),
        git.run(&seed.bare, &["show", "refs/heads/main:src/lib.rs"])
            .stdout,
        "checked-out file content"
    );
    git.fsck_strict(&work);
}

/// `git ls-remote --symref` through `url` prints what it prints against the upstream.
pub(crate) fn check_ls_remote(git: &Git, seed: &Seed, url: &str) {
    let ours = git.ls_remote(url);
    let theirs = git.ls_remote(&seed.url);
    assert_eq!(ours, theirs, "ls-remote through {url} vs the upstream");
    assert!(
        ours.contains("ref: refs/heads/main\tHEAD"),
        "HEAD symref advertised:\n{ours}"
    );
    assert!(
        ours.contains("refs/tags/v1.0^{}"),
        "annotated tag peeled:\n{ours}"
    );
}

/// `--depth 1`, then `fetch --deepen 1`, then `fetch --unshallow`: main has 1, 2, then 3 commits,
/// and each step passes fsck.
pub(crate) fn check_shallow_deepen_unshallow(git: &Git, seed: &Seed, url: &str) {
    let work = git.unique_path("shallow");
    git.clone(url, &work, &["--depth", "1"]);
    assert_eq!(
        git.count_commits(&work, "HEAD"),
        1,
        "commits after --depth 1"
    );
    assert_eq!(git.rev_parse(&work, "HEAD"), seed.c3, "shallow tip");
    assert!(
        work.join(".git/shallow").exists(),
        "--depth 1 makes a shallow repo"
    );
    git.fsck_strict(&work);

    git.run(&work, &["fetch", "-q", "--deepen", "1"]);
    assert_eq!(
        git.count_commits(&work, "HEAD"),
        2,
        "commits after --deepen 1"
    );
    git.fsck_strict(&work);

    git.run(&work, &["fetch", "-q", "--unshallow"]);
    assert_eq!(
        git.count_commits(&work, "HEAD"),
        3,
        "commits after --unshallow"
    );
    assert!(
        !work.join(".git/shallow").exists(),
        "--unshallow removes .git/shallow"
    );
    git.fsck_strict(&work);
}

/// `--shallow-since` an hour before c2 keeps c2 and c3 of main.
pub(crate) fn check_shallow_since(git: &Git, seed: &Seed, url: &str) {
    let c2_time: u64 = git
        .run(&seed.work, &["log", "-1", "--format=%ct", &seed.c2])
        .stdout
        .trim()
        .parse()
        .expect("commit time");
    assert!(c2_time > EPOCH, "seed commits carry the fixed dates");
    let since = format!("--shallow-since=@{}", c2_time - 3600);
    let work = git.unique_path("since");
    git.clone(url, &work, &[&since]);
    assert_eq!(
        git.count_commits(&work, "HEAD"),
        2,
        "commits since c2 ({since})"
    );
    git.fsck_strict(&work);
}

/// Blobs that `git rev-list --objects --all --missing=print` reports missing (`?` lines).
pub(crate) fn missing_objects(
    git: &Git,
    dir: &std::path::Path,
) -> std::collections::BTreeSet<String> {
    git.run(dir, &["rev-list", "--objects", "--all", "--missing=print"])
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix('?'))
        .map(|l| l.split_whitespace().next().unwrap_or(l).to_owned())
        .collect()
}

/// `--filter=blob:none`: blobs are missing until a switch to another branch fetches them lazily.
pub(crate) fn check_blob_none(git: &Git, seed: &Seed, url: &str) {
    let work = git.unique_path("blobless");
    git.clone(url, &work, &["--filter=blob:none", "--no-checkout"]);
    let feature_blob = git.rev_parse(&seed.work, "feature/x:feature.txt");
    let missing = missing_objects(git, &work);
    assert!(
        missing.contains(&feature_blob),
        "feature.txt's blob should be missing before checkout; missing: {missing:?}"
    );
    git.run(&work, &["switch", "-q", "feature/x"]);
    assert_eq!(
        std::fs::read_to_string(work.join("feature.txt")).expect("feature.txt checked out"),
        "feature work\n",
        "lazily fetched content"
    );
    git.run(&work, &["cat-file", "-e", &feature_blob]);
    git.fsck_strict(&work);
}

/// `--filter=blob:limit=1k` leaves out exactly the blobs of 1024 bytes or more.
pub(crate) fn check_blob_limit(git: &Git, seed: &Seed, url: &str) {
    let big_blobs: std::collections::BTreeSet<String> = git
        .run(
            &seed.bare,
            &[
                "cat-file",
                "--batch-all-objects",
                "--batch-check=%(objectname) %(objecttype) %(objectsize)",
            ],
        )
        .stdout
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let (oid, kind, size) = (p.next()?, p.next()?, p.next()?.parse::<u64>().ok()?);
            (kind == "blob" && size >= 1024).then(|| oid.to_owned())
        })
        .collect();
    assert!(!big_blobs.is_empty(), "the seed has blobs of 1 KiB or more");
    let work = git.unique_path("limit");
    git.clone(url, &work, &["--filter=blob:limit=1k", "--no-checkout"]);
    assert_eq!(
        missing_objects(git, &work),
        big_blobs,
        "missing objects after blob:limit=1k"
    );
    git.run(&work, &["checkout", "-q", "main"]);
    assert_eq!(
        std::fs::read(work.join("big.bin"))
            .expect("big.bin checked out")
            .len(),
        4096,
        "big.bin fetched lazily on checkout"
    );
    git.fsck_strict(&work);
}

/// `--filter=tree:0`: trees are missing; a checkout fetches what it needs.
pub(crate) fn check_tree_0(git: &Git, seed: &Seed, url: &str) {
    let work = git.unique_path("treeless");
    git.clone(url, &work, &["--filter=tree:0", "--no-checkout"]);
    let root_tree = git.rev_parse(&seed.work, &format!("{}^{{tree}}", seed.c1));
    let missing = missing_objects(git, &work);
    assert!(
        missing.contains(&root_tree),
        "c1's root tree should be missing; missing: {missing:?}"
    );
    assert_eq!(git.count_commits(&work, "HEAD"), 3, "all commits are there");
    git.run(&work, &["checkout", "-q", "main"]);
    assert!(
        work.join("docs/guide.md").exists(),
        "checkout after tree:0 fills the worktree"
    );
    git.fsck_strict(&work);
}

/// Cloning an empty repo gives an empty repo on `main`, with git's usual warning.
pub(crate) fn check_empty_clone(git: &Git, url: &str) {
    let work = git.unique_path("empty");
    let out = git.clone(url, &work, &[]);
    assert!(
        out.stderr
            .contains("You appear to have cloned an empty repository"),
        "git's empty-clone warning\n{}",
        out.describe()
    );
    let refs = git.refs(&work);
    assert_eq!(
        refs.get("HEAD").map(String::as_str),
        Some("ref: refs/heads/main"),
        "HEAD of an empty clone: {refs:?}"
    );
    assert_eq!(refs.len(), 1, "no refs besides HEAD: {refs:?}");
    git.fsck_strict(&work);
}

// ---- tests through codestorage ----

#[test]
fn clone_over_protocol_v2_has_the_upstream_refs_and_passes_fsck() {
    let (w, seed) = World::seeded_mirror("repo");
    check_clone(&w.git.v2(), &seed, &w.server.git_url("repo"));
}

#[test]
fn clone_over_protocol_v0_has_the_upstream_refs_and_passes_fsck() {
    let (w, seed) = World::seeded_mirror("repo");
    check_clone(&w.git.v0(), &seed, &w.server.git_url("repo"));
}

#[test]
fn ls_remote_over_v2_equals_the_upstreams_ls_remote() {
    let (w, seed) = World::seeded_mirror("repo");
    check_ls_remote(&w.git.v2(), &seed, &w.server.git_url("repo"));
}

#[test]
fn ls_remote_over_v0_equals_the_upstreams_ls_remote() {
    let (w, seed) = World::seeded_mirror("repo");
    check_ls_remote(&w.git.v0(), &seed, &w.server.git_url("repo"));
}

#[test]
fn depth_1_clone_deepens_and_unshallows_over_v2() {
    let (w, seed) = World::seeded_mirror("repo");
    check_shallow_deepen_unshallow(&w.git.v2(), &seed, &w.server.git_url("repo"));
}

#[test]
fn depth_1_clone_deepens_and_unshallows_over_v0() {
    let (w, seed) = World::seeded_mirror("repo");
    check_shallow_deepen_unshallow(&w.git.v0(), &seed, &w.server.git_url("repo"));
}

#[test]
fn shallow_since_clone_keeps_only_commits_after_the_date() {
    let (w, seed) = World::seeded_mirror("repo");
    check_shallow_since(&w.git.v2(), &seed, &w.server.git_url("repo"));
    check_shallow_since(&w.git.v0(), &seed, &w.server.git_url("repo"));
}

#[test]
fn blob_none_clone_lacks_blobs_until_a_switch_fetches_them_over_v2() {
    let (w, seed) = World::seeded_mirror("repo");
    check_blob_none(&w.git.v2(), &seed, &w.server.git_url("repo"));
}

#[test]
fn blob_none_clone_lacks_blobs_until_a_switch_fetches_them_over_v0() {
    let (w, seed) = World::seeded_mirror("repo");
    check_blob_none(&w.git.v0(), &seed, &w.server.git_url("repo"));
}

#[test]
fn blob_limit_clone_leaves_out_exactly_the_large_blobs() {
    let (w, seed) = World::seeded_mirror("repo");
    check_blob_limit(&w.git.v2(), &seed, &w.server.git_url("repo"));
}

#[test]
fn tree_0_clone_works_and_checkout_fetches_trees_lazily() {
    let (w, seed) = World::seeded_mirror("repo");
    check_tree_0(&w.git.v2(), &seed, &w.server.git_url("repo"));
}

#[test]
fn empty_upstream_mirrors_and_clones_as_an_empty_repository() {
    let w = World::new();
    w.upstream.create_bare("empty");
    w.server.mirror("empty", &w.upstream.url("empty"));
    check_empty_clone(&w.git.v2(), &w.server.git_url("empty"));
    check_empty_clone(&w.git.v0(), &w.server.git_url("empty"));
    assert_eq!(
        w.git.v2().ls_remote(&w.server.git_url("empty")),
        w.git.v2().ls_remote(&w.upstream.url("empty")),
        "ls-remote of an empty mirror vs the upstream"
    );
}

#[test]
fn repo_and_branch_names_with_slashes_clone_and_are_addressable_as_percent_2f() {
    let w = World::new();
    let seed = crate::support::seed_repo(&w.git, &w.upstream, "team/project");
    w.server.mirror("team/project", &seed.url);
    let url = w.server.git_url("team/project");
    assert!(
        url.ends_with("/team/project.git"),
        "clone URL keeps the slash: {url}"
    );
    check_clone(&w.git, &seed, &url);
    let record = w.server.repo("team/project");
    assert_eq!(
        record["name"], "team/project",
        "the record is found through team%2Fproject"
    );
    let lower = w
        .server
        .request("GET", "/api/repos/team%2fproject", None, &[]);
    assert_eq!(
        lower.status,
        200,
        "lower-case %2f works too: {}",
        lower.describe()
    );
    w.server.sync_now("team/project");
}
