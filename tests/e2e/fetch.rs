//! Fetches through codestorage after the upstream moves.
//!
//! The scenarios take the URL to fetch from and a `sync` step (`sync_now` for codestorage,
//! nothing for the upstream itself), so `harness` proves each expectation against
//! `git http-backend` directly.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::git::lib_rs;
use crate::support::{Git, Seed, World, assert_maps_eq};

// ---- scenarios (also run against the upstream by `harness`) ----

/// The upstream gains commits on main and a new branch; after `sync`, `fetch --prune` makes the
/// clone's view equal to the upstream.
pub(crate) fn check_fetch_after_new_commits(git: &Git, seed: &Seed, url: &str, sync: &dyn Fn()) {
    let work = git.unique_path("fetcher");
    git.clone(url, &work, &[]);

    git.commit_file(&seed.work, "src/lib.rs", lib_rs(4), "c4: grow lib again");
    git.run(&seed.work, &["switch", "-q", "-c", "topic/new"]);
    git.commit_file(&seed.work, "topic.txt", "topic\n", "t1: topic");
    git.run(&seed.work, &["switch", "-q", "main"]);
    seed.publish(git);
    sync();

    git.run(&work, &["fetch", "-q", "--prune", "origin"]);
    assert_maps_eq(
        &git.remote_view(&work),
        &git.served_refs(&seed.bare),
        "clone after fetch vs upstream",
    );
    git.fsck_strict(&work);
}

/// The upstream rewrites main (force-push) and deletes feature/x; after `sync`, `fetch --prune`
/// reflects both.
pub(crate) fn check_force_push_and_branch_deletion(
    git: &Git,
    seed: &Seed,
    url: &str,
    sync: &dyn Fn(),
) {
    let work = git.unique_path("fetcher");
    git.clone(url, &work, &[]);

    rewrite_main(git, seed);
    git.run(&seed.work, &["branch", "-q", "-D", "feature/x"]);
    seed.publish(git);
    sync();

    git.run(&work, &["fetch", "-q", "--prune", "origin"]);
    let view = git.remote_view(&work);
    assert_maps_eq(
        &view,
        &git.served_refs(&seed.bare),
        "clone after force-push and prune vs upstream",
    );
    assert!(
        !view.contains_key("refs/heads/feature/x"),
        "deleted branch pruned: {view:?}"
    );
    assert_ne!(view["refs/heads/main"], seed.c3, "main was rewritten");
    git.fsck_strict(&work);
}

/// Rewrites main in the seed's working repo to `c2 -- c5`, leaving c3 reachable from nothing.
/// Returns c5. (Call `seed.publish` to push.)
pub(crate) fn rewrite_main(git: &Git, seed: &Seed) -> String {
    git.run(&seed.work, &["switch", "-q", "main"]);
    git.run(&seed.work, &["reset", "-q", "--hard", &seed.c2]);
    git.commit_file(
        &seed.work,
        "rewritten.txt",
        "history was rewritten\n",
        "c5: rewritten main",
    )
}

/// The upstream gains c6 -- c7 on main, with an annotated tag `v2.0` and a lightweight tag `light2`
/// on c6, and
/// a branch `side` with an annotated tag `side-tag`. A fetch of main alone brings v2.0 and light2
/// (auto-following tags that point into it; the annotated one inside the pack, by `include-tag`,
/// without a `want` of its own), and not side-tag.
pub(crate) fn check_tag_following(git: &Git, seed: &Seed, url: &str, sync: &dyn Fn()) {
    let work = git.unique_path("tags");
    git.clone(url, &work, &[]);

    let c6 = git.commit_file(&seed.work, "src/lib.rs", lib_rs(5), "c6: for v2.0");
    git.run(&seed.work, &["tag", "-a", "v2.0", "-m", "release 2.0", &c6]);
    git.run(&seed.work, &["tag", "light2", &c6]);
    // Tags below the tip: the client cannot tell from the ref list that they point into main, so
    // only the server's include-tag brings the annotated one along.
    git.commit_file(&seed.work, "src/lib.rs", lib_rs(6), "c7: on top of v2.0");
    git.run(&seed.work, &["switch", "-q", "-c", "side"]);
    let side = git.commit_file(&seed.work, "side.txt", "side\n", "s1: side");
    git.run(
        &seed.work,
        &["tag", "-a", "side-tag", "-m", "on side", &side],
    );
    git.run(&seed.work, &["switch", "-q", "main"]);
    seed.publish(git);
    sync();

    let trace = git.unique_path("packet-trace");
    git.env("GIT_TRACE_PACKET", &trace).run(
        &work,
        &[
            "fetch",
            "-q",
            "origin",
            "refs/heads/main:refs/remotes/origin/main",
        ],
    );
    let upstream = git.served_refs(&seed.bare);
    let local = git.refs(&work);
    for tag in ["refs/tags/v2.0", "refs/tags/light2"] {
        assert_eq!(
            local.get(tag),
            upstream.get(tag),
            "{tag} auto-followed with main"
        );
    }
    assert!(
        !local.contains_key("refs/tags/side-tag"),
        "a tag outside the fetched history is not followed"
    );
    // Without include-tag, git asks for the tag object in a second request: it must not have to.
    let trace = std::fs::read_to_string(&trace).expect("packet trace written");
    let tag_object = &upstream["refs/tags/v2.0"];
    assert!(
        !trace
            .lines()
            .any(|l| l.contains("> want ") && l.contains(tag_object.as_str())),
        "the v2.0 tag object came with the pack (include-tag), not by a want; trace:\n{}",
        crate::support::tail(&trace, 6000)
    );
    git.fsck_strict(&work);
}

/// What an incremental fetch received and what it should have received.
pub(crate) struct IncrementalFetch {
    /// Objects in the pack the fetch received (thin-pack completion left out).
    pub received: BTreeSet<String>,
    /// `git rev-list --objects NEW --not OLD` on the upstream.
    pub expected: BTreeSet<String>,
    /// How many delta bases the pack referred to without carrying them (a thin pack).
    pub thin_bases: usize,
}

/// Clones `url`, lets the upstream gain commits on main (a changed file: deltas against objects the
/// client has), a new branch and an annotated tag; `sync`s; fetches with `GIT_TRACE_PACKFILE` and
/// returns the received and the expected object sets. Also checks refs and fsck.
pub(crate) fn incremental_fetch(
    git: &Git,
    seed: &Seed,
    url: &str,
    sync: &dyn Fn(),
) -> IncrementalFetch {
    let work = git.unique_path("incremental");
    git.clone(url, &work, &[]);
    let old = git.served_refs(&seed.bare);

    let c4 = git.commit_file(&seed.work, "src/lib.rs", lib_rs(4), "c4: grow lib");
    git.commit_file(
        &seed.work,
        "README.md",
        "# seeded repo\n\nnow with more words\n",
        "c5: readme",
    );
    git.run(&seed.work, &["tag", "-a", "v1.1", "-m", "release 1.1", &c4]);
    git.run(
        &seed.work,
        &["switch", "-q", "-c", "topic/incr", &seed.feature],
    );
    git.commit_file(
        &seed.work,
        "feature.txt",
        "feature work\nmore feature work\n",
        "f2",
    );
    git.run(&seed.work, &["switch", "-q", "main"]);
    seed.publish(git);
    let new = git.served_refs(&seed.bare);
    sync();

    let packfile = git.unique_path("received.pack");
    git.env("GIT_TRACE_PACKFILE", &packfile)
        .run(&work, &["fetch", "-q", "origin"]);
    assert_maps_eq(
        &git.remote_view(&work),
        &new,
        "clone after incremental fetch vs upstream",
    );
    git.fsck_strict(&work);

    let (received, thin_bases) = git.received_pack(&packfile, &work);
    IncrementalFetch {
        received,
        expected: git.rev_list_objects(&seed.bare, &tips(&new), &tips(&old)),
        thin_bases,
    }
}

fn tips(refs: &BTreeMap<String, String>) -> Vec<&str> {
    refs.iter()
        .filter(|(k, _)| k.as_str() != "HEAD")
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Asserts two object sets are equal, listing what is missing and what is extra.
#[track_caller]
pub(crate) fn assert_same_objects(
    actual: &BTreeSet<String>,
    expected: &BTreeSet<String>,
    context: &str,
) {
    let missing: Vec<_> = expected.difference(actual).collect();
    let extra: Vec<_> = actual.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{context}: object sets differ\n  missing ({}): {missing:?}\n  extra ({}): {extra:?}",
        missing.len(),
        extra.len()
    );
}

// ---- tests through codestorage ----

#[test]
fn fetch_over_v2_after_upstream_gains_commits_matches_the_upstream() {
    let (w, seed) = World::seeded_mirror("repo");
    check_fetch_after_new_commits(&w.git.v2(), &seed, &w.server.git_url("repo"), &|| {
        w.server.sync_now("repo");
    });
}

#[test]
fn fetch_over_v0_after_upstream_gains_commits_matches_the_upstream() {
    let (w, seed) = World::seeded_mirror("repo");
    check_fetch_after_new_commits(&w.git.v0(), &seed, &w.server.git_url("repo"), &|| {
        w.server.sync_now("repo");
    });
}

#[test]
fn upstream_force_push_and_branch_deletion_are_reflected_after_sync_over_v2() {
    let (w, seed) = World::seeded_mirror("repo");
    check_force_push_and_branch_deletion(&w.git.v2(), &seed, &w.server.git_url("repo"), &|| {
        w.server.sync_now("repo");
    });
}

#[test]
fn upstream_force_push_and_branch_deletion_are_reflected_after_sync_over_v0() {
    let (w, seed) = World::seeded_mirror("repo");
    check_force_push_and_branch_deletion(&w.git.v0(), &seed, &w.server.git_url("repo"), &|| {
        w.server.sync_now("repo");
    });
}

#[test]
fn fetching_a_branch_over_v2_auto_follows_tags_pointing_into_it() {
    let (w, seed) = World::seeded_mirror("repo");
    check_tag_following(&w.git.v2(), &seed, &w.server.git_url("repo"), &|| {
        w.server.sync_now("repo");
    });
}

#[test]
fn fetching_a_branch_over_v0_auto_follows_tags_pointing_into_it() {
    let (w, seed) = World::seeded_mirror("repo");
    check_tag_following(&w.git.v0(), &seed, &w.server.git_url("repo"), &|| {
        w.server.sync_now("repo");
    });
}

/// The same incremental fetch, once through codestorage and once against the upstream directly
/// (each from its own clone of the same old state): both packs hold exactly
/// `rev-list --objects NEW --not OLD`.
fn incremental_fetch_sends_what_git_sends(protocol: u8) {
    let w = World::new();
    // Two runners with their own clocks: both seeds and both updates get the same object ids.
    let (git_theirs, git_ours) = (Git::new().protocol(protocol), Git::new().protocol(protocol));
    let theirs_seed = crate::support::seed_repo(&git_theirs, &w.upstream, "theirs");
    let ours_seed = crate::support::seed_repo(&git_ours, &w.upstream, "ours");
    w.server.mirror("ours", &ours_seed.url);

    let theirs = incremental_fetch(&git_theirs, &theirs_seed, &theirs_seed.url, &|| {});
    let ours = incremental_fetch(&git_ours, &ours_seed, &w.server.git_url("ours"), &|| {
        w.server.sync_now("ours");
    });
    assert_eq!(
        ours.expected, theirs.expected,
        "both seeds moved the same way (same ids)"
    );
    assert_same_objects(
        &theirs.received,
        &theirs.expected,
        "git http-backend's pack vs rev-list (oracle)",
    );
    assert_same_objects(
        &ours.received,
        &theirs.received,
        "codestorage's pack vs git http-backend's",
    );
}

#[test]
fn incremental_fetch_over_v2_sends_exactly_the_objects_git_sends() {
    incremental_fetch_sends_what_git_sends(2);
}

#[test]
fn incremental_fetch_over_v0_sends_exactly_the_objects_git_sends() {
    incremental_fetch_sends_what_git_sends(0);
}
