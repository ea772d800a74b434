//! How codestorage keeps a mirror in step with its upstream, as git clients and the REST API see
//! it: the window before the first sync (409), failed syncs (502), clones while a sync lands, no
//! upstream traffic for reads, the last good state while the upstream is down, and the interval.

use std::time::Duration;

use crate::clone::check_clone;
use crate::support::git::{lib_rs, pseudo_random_bytes};
use crate::support::pkt::{self, UPLOAD_PACK_REQUEST};
use crate::support::server::SyncState;
use crate::support::{SYNC_TIMEOUT, Server, World, assert_maps_eq, seed_repo, wait_until};

const SYNC_IN_PROGRESS: &str = "repository sync in progress. please retry shortly";

/// Waits until the first sync run of `name` has finished (successfully or not); returns the record.
fn wait_first_run(server: &Server, name: &str) -> serde_json::Value {
    wait_until(
        SYNC_TIMEOUT,
        &format!("the first sync run of {name} to finish"),
        || {
            let record = server.repo(name);
            let sync = SyncState::of(&record);
            (sync.run_count >= 1 && !sync.in_progress).then_some(record)
        },
    )
}

#[test]
fn git_and_rest_calls_answer_409_until_the_first_sync_completes() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    // 64 KiB of incompressible data at 500 ms per KiB: the first sync takes over 30 s unless the
    // delay is lifted, which the test does once it has looked at the window.
    w.git.commit_file(
        &seed.work,
        "payload.bin",
        pseudo_random_bytes(64 << 10, 11),
        "payload",
    );
    seed.publish(&w.git);
    w.upstream.set_delay_per_chunk(Duration::from_millis(500));
    w.server.create_mirror("repo", &seed.url);

    let out = w
        .git
        .run_fail(w.git.scratch(), &["ls-remote", &w.server.git_url("repo")]);
    assert!(
        out.stderr.contains("repository sync in progress"),
        "git shows the server's message\n{}",
        out.describe()
    );
    let refs = w.server.request(
        "GET",
        "/repo.git/info/refs?service=git-upload-pack",
        None,
        &[],
    );
    assert_eq!(
        refs.status,
        409,
        "info/refs during the first sync: {}",
        refs.describe()
    );
    assert!(
        refs.text().contains(SYNC_IN_PROGRESS),
        "409 body: {}",
        refs.describe()
    );
    let post = w.server.request(
        "POST",
        "/repo.git/git-upload-pack",
        Some(&pkt::v2_ls_refs()),
        &[
            ("Content-Type", UPLOAD_PACK_REQUEST),
            ("Git-Protocol", "version=2"),
        ],
    );
    assert_eq!(
        post.status,
        409,
        "upload-pack during the first sync: {}",
        post.describe()
    );
    let branches = w
        .server
        .request("GET", &Server::repo_path("repo", "/branches"), None, &[]);
    assert_eq!(
        branches.status,
        409,
        "REST below the record during the first sync: {}",
        branches.describe()
    );
    assert!(
        branches.text().contains(SYNC_IN_PROGRESS),
        "409 body: {}",
        branches.describe()
    );

    let record = w.server.repo("repo");
    assert!(
        SyncState::of(&record).last_success_at.is_none(),
        "the window must still be open here (is the delay knob working?): {record}"
    );
    w.server.pull_upstream("repo");

    w.upstream.set_delay_per_chunk(Duration::ZERO);
    w.server.wait_synced("repo");
    assert_eq!(
        w.git.ls_remote(&w.server.git_url("repo")),
        w.git.ls_remote(&seed.url),
        "served after the first sync"
    );
}

#[test]
fn failed_first_sync_shows_its_error_and_git_gets_502_until_the_upstream_recovers() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.upstream.set_fail(Some(500));
    w.server.create_mirror("repo", &seed.url);

    let record = wait_first_run(&w.server, "repo");
    let sync = SyncState::of(&record);
    assert!(
        sync.last_error.is_some(),
        "last_error after a failed first sync: {record}"
    );
    assert!(sync.last_success_at.is_none(), "no success yet: {record}");
    let out = w
        .git
        .run_fail(w.git.scratch(), &["ls-remote", &w.server.git_url("repo")]);
    assert!(
        out.stderr.contains("502"),
        "git sees a 502\n{}",
        out.describe()
    );
    let resp = w.server.request(
        "GET",
        "/repo.git/info/refs?service=git-upload-pack",
        None,
        &[],
    );
    assert_eq!(
        resp.status,
        502,
        "info/refs after a failed first sync: {}",
        resp.describe()
    );
    assert!(!resp.body.is_empty(), "the 502 carries the error");

    w.upstream.set_fail(None);
    w.server.sync_now("repo");
    check_clone(&w.git, &seed, &w.server.git_url("repo"));
}

#[test]
fn mirror_of_a_missing_upstream_repo_fails_until_the_repo_appears() {
    let w = World::new();
    w.server.create_mirror("later", &w.upstream.url("later"));
    let record = wait_first_run(&w.server, "later");
    assert!(
        SyncState::of(&record).last_error.is_some(),
        "last_error for a missing upstream repo: {record}"
    );
    let out = w
        .git
        .run_fail(w.git.scratch(), &["ls-remote", &w.server.git_url("later")]);
    assert!(
        out.stderr.contains("502"),
        "git sees a 502\n{}",
        out.describe()
    );

    let seed = seed_repo(&w.git, &w.upstream, "later");
    w.server.sync_now("later");
    check_clone(&w.git, &seed, &w.server.git_url("later"));
}

#[test]
fn clones_while_a_sync_lands_see_either_the_old_or_the_new_state() {
    let (w, seed) = World::seeded_mirror("repo");
    let git = &w.git;
    let old = git.served_refs(&seed.bare);
    git.commit_file(
        &seed.work,
        "payload.bin",
        pseudo_random_bytes(32 << 10, 5),
        "payload",
    );
    git.commit_file(&seed.work, "src/lib.rs", lib_rs(4), "c4");
    git.run(&seed.work, &["branch", "-q", "-D", "feature/x"]);
    git.run(&seed.work, &["tag", "-a", "v2.0", "-m", "2.0"]);
    seed.publish(git);
    let new = git.served_refs(&seed.bare);
    // ~40 pieces at 100 ms: the sync takes seconds, the clones through codestorage do not.
    w.upstream.set_delay_per_chunk(Duration::from_millis(100));
    w.server.pull_upstream("repo");

    let url = w.server.git_url("repo");
    let seen: Vec<Vec<bool>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut seen_new = Vec::new();
                    let deadline = std::time::Instant::now() + SYNC_TIMEOUT;
                    while std::time::Instant::now() < deadline {
                        let dest = git.unique_path("during-sync");
                        git.clone(&url, &dest, &["--mirror", "-q"]);
                        git.fsck_strict(&dest);
                        let refs = git.served_refs(&dest);
                        assert!(
                            refs == old || refs == new,
                            "a clone during the sync saw a mixed state: {refs:?}\nold: {old:?}\nnew: {new:?}"
                        );
                        seen_new.push(refs == new);
                        if refs == new {
                            break;
                        }
                    }
                    seen_new
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let all: Vec<bool> = seen.concat();
    assert!(
        all.contains(&false),
        "some clone ran before the sync landed (else the test proved nothing): {seen:?}"
    );
    assert!(
        seen.iter().all(|s| s.last() == Some(&true)),
        "every worker saw the new state in the end: {seen:?}"
    );

    w.upstream.set_delay_per_chunk(Duration::ZERO);
    w.server.wait_synced("repo");
    let last = git.unique_path("after-sync");
    git.clone(&url, &last, &["--mirror"]);
    assert_maps_eq(
        &git.served_refs(&last),
        &new,
        "clone after the sync vs upstream",
    );
}

#[test]
fn reads_of_a_synced_mirror_make_no_upstream_request() {
    let (w, seed) = World::seeded_mirror("repo");
    let url = w.server.git_url("repo");
    let work = w.git.unique_path("reader");
    w.git.clone(&url, &work, &[]);
    let before = w.upstream.requests();

    w.git.run(&work, &["fetch", "-q", "origin"]);
    w.git.v0().run(&work, &["fetch", "-q", "origin"]);
    w.git.ls_remote(&url);
    w.git
        .clone(&url, &w.git.unique_path("again"), &["--mirror"]);
    w.server.repo("repo");

    let log = w.upstream.request_log();
    assert_eq!(
        w.upstream.requests(),
        before,
        "no-op fetches, ls-remote and clones must be served locally; upstream saw: {:?}",
        &log[before.min(log.len())..]
    );
    assert_maps_eq(
        &w.git.remote_view(&work),
        &w.git.served_refs(&seed.bare),
        "still up to date",
    );
}

#[test]
fn while_the_upstream_is_down_the_last_good_state_is_served() {
    let (w, seed) = World::seeded_mirror("repo");
    let old = w.git.served_refs(&seed.bare);
    w.git.commit_file(&seed.work, "src/lib.rs", lib_rs(4), "c4");
    seed.publish(&w.git);
    w.upstream.set_fail(Some(503));

    let err = w
        .server
        .try_sync_now("repo")
        .expect_err("a sync against a failing upstream fails");
    assert!(!err.is_empty(), "the failed run has an error message");
    let record = w.server.repo("repo");
    assert!(
        SyncState::of(&record).last_success_at.is_some(),
        "the earlier success is kept: {record}"
    );
    let during = w.git.unique_path("during-outage");
    w.git
        .clone(&w.server.git_url("repo"), &during, &["--mirror"]);
    assert_maps_eq(
        &w.git.served_refs(&during),
        &old,
        "served during the outage vs last good state",
    );
    w.git.fsck_strict(&during);

    w.upstream.set_fail(None);
    w.server.sync_now("repo");
    assert!(
        SyncState::of(&w.server.repo("repo")).last_error.is_none(),
        "a success clears last_error"
    );
    w.git.run(&during, &["fetch", "-q", "origin"]);
    assert_maps_eq(
        &w.git.served_refs(&during),
        &w.git.served_refs(&seed.bare),
        "after recovery",
    );
}

#[test]
fn background_sync_interval_picks_up_upstream_changes() {
    let w = World::with_server(Server::builder().sync_interval(1));
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.server.mirror("repo", &seed.url);
    let tip = w.git.commit_file(&seed.work, "src/lib.rs", lib_rs(4), "c4");
    seed.publish(&w.git);
    let url = w.server.git_url("repo");
    wait_until(
        Duration::from_secs(30),
        "the interval sync to serve the new main",
        || {
            w.git
                .ls_remote(&url)
                .lines()
                .any(|l| l == format!("{tip}\trefs/heads/main"))
                .then_some(())
        },
    );
}
