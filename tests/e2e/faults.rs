//! Crash safety, proven with fault points, and an upstream that misbehaves.
//!
//! Fault points: the server runs with `CODESTORAGE_FAULT=<point>` (see `store/src/fault.rs`),
//! which aborts the process (as abruptly as SIGKILL) when the named write step is reached. Each
//! test drives the operation through the armed server, sees it die, runs `codestorage fsck` on the
//! crashed data dir, restarts the server disarmed and checks: the store opens, crash leftovers
//! (quarantines, `.keep` packs) are swept at start, a mirror clone of what is served passes
//! `git fsck --strict` (no ref points at a missing object), the state is exactly the old or the new
//! one as the point's position implies, every push acknowledged to a client is present, and after
//! the next sync the mirror equals the upstream.
//!
//! Upstream faults (the knobs of `support/upstream.rs`: 500s, garbage, a connection cut mid-pack,
//! a vanished host, slowness): reads keep being served from the store (stale-if-error), a failed
//! sync leaves no partial state, failed syncs are retried with growing backoff, recovery needs no
//! operator, and fetches of a mirror whose last good sync is older than `--stale-warning-after`
//! carry a `remote: warning:` line.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::git::pseudo_random_bytes;
use crate::support::server::SyncState;
use crate::support::{Git, Seed, Server, World, assert_maps_eq, seed_repo, wait_until};

const FAULT: &str = "CODESTORAGE_FAULT";
/// How long an armed server may take to reach its fault point once the operation started.
const ABORT_TIMEOUT: Duration = Duration::from_secs(60);

// ---- helpers ----

/// Crash leftovers in the data dir: entries of `repos/*/tmp/` and `.keep` files of packs.
fn leftovers(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(repos) = std::fs::read_dir(data.join("repos")) else {
        return out;
    };
    for repo in repos.flatten() {
        if let Ok(tmp) = std::fs::read_dir(repo.path().join("tmp")) {
            out.extend(tmp.flatten().map(|e| e.path()));
        }
        if let Ok(packs) = std::fs::read_dir(repo.path().join("objects/pack")) {
            out.extend(
                packs
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "keep")),
            );
        }
    }
    out
}

/// Restarts the (running) server with `point` armed.
fn arm(server: &mut Server, point: &str) {
    server.stop();
    server.set_env(FAULT, Some(point));
    server.restart();
}

/// Waits for the armed server to abort at `point`, checks `codestorage fsck` on the crashed data
/// dir, restarts the server disarmed and checks that start swept the crash leftovers. Returns
/// the leftovers the crash had left.
#[track_caller]
fn crash_and_recover(server: &mut Server, point: &str) -> Vec<PathBuf> {
    let status = server
        .wait_exit(ABORT_TIMEOUT)
        .unwrap_or_else(|| panic!("the server did not abort at {point}\n{}", server.logs()));
    assert_eq!(
        status.signal(),
        Some(6),
        "aborted (SIGABRT) at {point}: {status:?}\n{}",
        server.logs()
    );
    assert!(
        server
            .stderr()
            .contains(&format!("fault point {point} reached")),
        "the abort was the armed point\n{}",
        server.logs()
    );
    assert!(
        server.stderr().contains("fault injection armed"),
        "an armed server says so at start\n{}",
        server.logs()
    );
    let left = leftovers(server.data_dir());
    let out = server.fsck();
    assert!(
        out.success(),
        "fsck after an abort at {point} must pass\n{}",
        out.describe()
    );
    server.set_env(FAULT, None);
    server.restart();
    let after = leftovers(server.data_dir());
    assert!(
        after.is_empty(),
        "start sweeps crash leftovers; still there: {after:?}"
    );
    left
}

/// A mirror clone of `name` through the server; it must pass `git fsck --strict`. Its refs.
#[track_caller]
fn served(w: &World, name: &str) -> BTreeMap<String, String> {
    let dir = w.git.unique_path("served");
    w.git
        .clone(&w.server.git_url(name), &dir, &["--mirror", "-q"]);
    w.git.fsck_strict(&dir);
    w.git.served_refs(&dir)
}

/// After the next sync the mirror serves exactly the upstream's refs.
#[track_caller]
fn agrees_after_sync(w: &World, seed: &Seed) {
    w.server.sync_now(&seed.name);
    assert_maps_eq(
        &served(w, &seed.name),
        &w.git.served_refs(&seed.bare),
        "mirror vs upstream after the next sync",
    );
}

/// Commits a `kib` KiB incompressible file on the seed's main and publishes it upstream.
fn publish_payload(w: &World, seed: &Seed, kib: usize, salt: u64) -> String {
    let id = w.git.commit_file(
        &seed.work,
        "payload.bin",
        pseudo_random_bytes(kib << 10, salt),
        "payload",
    );
    seed.publish(&w.git);
    id
}

/// Aborts a sync of new upstream commits at `point`; returns (refs before, world, seed) after
/// recovery, with the leftovers the crash left.
fn crash_a_sync(point: &str, kib: usize) -> (World, Seed, BTreeMap<String, String>, Vec<PathBuf>) {
    let (mut w, seed) = World::seeded_mirror("repo");
    let before = served(&w, "repo");
    publish_payload(&w, &seed, kib, 21);
    arm(&mut w.server, point);
    let resp = w.server.try_pull_upstream("repo");
    assert!(resp.status < 300, "pull-upstream: {}", resp.describe());
    let left = crash_and_recover(&mut w.server, point);
    (w, seed, before, left)
}

/// A sync aborted at `point` leaves the old state served; the next sync completes.
fn sync_crash_keeps_the_old_state(point: &str, kib: usize) -> Vec<PathBuf> {
    let (w, seed, before, left) = crash_a_sync(point, kib);
    assert_maps_eq(
        &served(&w, "repo"),
        &before,
        &format!("served after an abort at {point} vs before the sync"),
    );
    agrees_after_sync(&w, &seed);
    left
}

/// A sync aborted at `point` (after its journal entry) serves the new state at once.
fn sync_crash_keeps_the_new_state(point: &str) {
    let (w, seed, _before, _) = crash_a_sync(point, 16);
    assert_maps_eq(
        &served(&w, "repo"),
        &w.git.served_refs(&seed.bare),
        &format!("served after an abort at {point} (journaled) vs upstream"),
    );
    agrees_after_sync(&w, &seed);
}

// ---- fault points during a sync ----

#[test]
fn abort_mid_fetch_keeps_the_old_state_and_sweeps_the_partial_quarantine() {
    let left = sync_crash_keeps_the_old_state("sync-mid-fetch", 256);
    assert!(
        left.iter()
            .any(|p| p.parent().is_some_and(|d| d.ends_with("tmp"))),
        "the crash left a partial quarantine behind (then swept): {left:?}"
    );
}

#[test]
fn abort_after_the_pack_is_written_before_it_is_verified_keeps_the_old_state() {
    let left = sync_crash_keeps_the_old_state("ingest-pack-written", 16);
    assert!(
        left.iter()
            .any(|p| p.parent().is_some_and(|d| d.ends_with("tmp"))),
        "the crash left the written quarantine behind (then swept): {left:?}"
    );
}

#[test]
fn abort_after_a_sync_verified_its_pack_before_refs_move_keeps_the_old_state() {
    sync_crash_keeps_the_old_state("sync-objects-landed", 16);
}

#[test]
fn abort_after_the_pack_is_promoted_before_the_journal_keeps_the_old_state() {
    let left = sync_crash_keeps_the_old_state("commit-pack-promoted", 16);
    assert!(
        left.iter()
            .any(|p| p.extension().is_some_and(|e| e == "keep")),
        "the promoted pack still carried its .keep (then swept): {left:?}"
    );
}

#[test]
fn abort_after_the_journal_append_before_the_index_update_keeps_the_new_state() {
    sync_crash_keeps_the_new_state("commit-journaled");
}

#[test]
fn abort_after_the_index_update_before_publishing_keeps_the_new_state() {
    sync_crash_keeps_the_new_state("commit-indexed");
}

#[test]
fn abort_while_a_commit_graph_layer_is_half_chained_keeps_the_new_state() {
    sync_crash_keeps_the_new_state("graph-layer-written");
}

// ---- fault points during pushes ----

/// A working clone of `name` through the server.
fn work_clone(w: &World, name: &str) -> PathBuf {
    let work = w.git.unique_path("work");
    w.git.clone(&w.server.git_url(name), &work, &["-q"]);
    work
}

#[test]
fn abort_after_the_upstream_accepted_a_forwarded_push_loses_nothing() {
    let (mut w, seed) = World::seeded_mirror("repo");
    let work = work_clone(&w, "repo");
    let new = w
        .git
        .commit_file(&work, "pushed.txt", "pushed\n", "pushed through");
    arm(&mut w.server, "push-upstream-accepted");
    // The port changed with the restart.
    let url = w.server.git_url("repo");
    let push = w.git.try_run(&work, &["push", "-q", &url, "main"]);
    crash_and_recover(&mut w.server, "push-upstream-accepted");
    // The upstream has it whatever the client heard; an acknowledged push must be served.
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        new,
        "the upstream applied the push"
    );
    if push.success() {
        assert_eq!(
            served(&w, "repo").get("refs/heads/main"),
            Some(&new),
            "an acknowledged push is served"
        );
    }
    agrees_after_sync(&w, &seed);
    assert_eq!(served(&w, "repo").get("refs/heads/main"), Some(&new));
}

#[test]
fn abort_after_a_forwarded_push_is_journaled_serves_it_at_once() {
    let (mut w, seed) = World::seeded_mirror("repo");
    let work = work_clone(&w, "repo");
    let new = w.git.commit_file(&work, "pushed.txt", "pushed\n", "pushed");
    arm(&mut w.server, "commit-journaled");
    // The port changed with the restart.
    let url = w.server.git_url("repo");
    let push = w.git.try_run(&work, &["push", "-q", &url, "main"]);
    assert!(
        !push.success(),
        "the server died before acknowledging\n{}",
        push.describe()
    );
    crash_and_recover(&mut w.server, "commit-journaled");
    assert_eq!(
        served(&w, "repo").get("refs/heads/main"),
        Some(&new),
        "the journaled push is served after the restart"
    );
    agrees_after_sync(&w, &seed);
}

#[test]
fn abort_while_a_push_to_a_local_repo_is_promoted_leaves_the_old_state() {
    let mut w = World::new();
    w.server.create_local("local");
    let work = w.git.init("local-work");
    let first = w.git.commit_file(&work, "a.txt", "a\n", "first");
    let url = w.server.git_url("local");
    w.git.push(&work, &["-q", &url, "main"]);
    w.git
        .commit_file(&work, "b.bin", pseudo_random_bytes(8 << 10, 5), "second");
    arm(&mut w.server, "commit-pack-promoted");
    let url = w.server.git_url("local");
    let push = w.git.try_run(&work, &["push", "-q", &url, "main"]);
    assert!(!push.success(), "no acknowledgement\n{}", push.describe());
    crash_and_recover(&mut w.server, "commit-pack-promoted");
    assert_eq!(
        served(&w, "local").get("refs/heads/main"),
        Some(&first),
        "the unacknowledged push left no trace"
    );
    let url = w.server.git_url("local");
    w.git.push(&work, &["-q", &url, "main"]);
    assert_eq!(
        served(&w, "local").get("refs/heads/main"),
        Some(&w.git.rev_parse(&work, "HEAD")),
        "the push succeeds once retried"
    );
}

#[test]
fn an_unknown_fault_point_is_ignored_with_a_message() {
    let mut w = World::with_server(Server::builder().env(FAULT, "no-such-point"));
    w.server.create_local("local");
    let work = w.git.init("local-work");
    let id = w.git.commit_file(&work, "a.txt", "a\n", "first");
    w.git
        .push(&work, &["-q", &w.server.git_url("local"), "main"]);
    assert_eq!(served(&w, "local").get("refs/heads/main"), Some(&id));
    assert!(
        w.server.stderr().contains(
            "CODESTORAGE_FAULT=\"no-such-point\" is not <point>[:<n>] with a known point; ignored"
        ),
        "{}",
        w.server.logs()
    );
    assert!(w.server.is_running());
    w.server.stop();
}

// ---- fsck --rebuild ----

#[test]
fn fsck_rebuild_recreates_a_deleted_index_from_the_packs_and_journals() {
    let (mut w, seed) = World::seeded_mirror("repo");
    w.server.create_local("local");
    let work = w.git.init("local-work");
    w.git.commit_file(&work, "a.txt", "a\n", "first");
    w.git
        .push(&work, &["-q", &w.server.git_url("local"), "main"]);
    let mirror_before = served(&w, "repo");
    let local_before = served(&w, "local");
    w.server.stop();
    std::fs::remove_dir_all(w.server.data_dir().join("index")).expect("delete the index");
    let out = w.server.data_cli(&["fsck", "--rebuild"]);
    assert!(out.success(), "fsck --rebuild\n{}", out.describe());
    assert!(
        w.server.data_dir().join("index").is_dir(),
        "the index is back"
    );
    let out = w.server.fsck();
    assert!(out.success(), "fsck after the rebuild\n{}", out.describe());
    w.server.restart();
    assert_maps_eq(
        &served(&w, "repo"),
        &mirror_before,
        "mirror after the rebuild",
    );
    assert_maps_eq(
        &served(&w, "local"),
        &local_before,
        "local repo after the rebuild",
    );
    agrees_after_sync(&w, &seed);
}

// ---- upstream faults ----

/// One way for the upstream to fail, and how to stop it.
struct Fault {
    what: &'static str,
    set: fn(&crate::support::Upstream),
}

const FAULTS: &[Fault] = &[
    Fault {
        what: "HTTP 500",
        set: |u| u.set_fail(Some(500)),
    },
    Fault {
        what: "garbage bodies",
        set: |u| u.set_garbage(true),
    },
    Fault {
        what: "connection cut mid-pack",
        set: |u| u.set_cut_after(Some(4096)),
    },
    Fault {
        what: "vanished host",
        set: |u| u.set_vanished(true),
    },
];

fn heal(u: &crate::support::Upstream) {
    u.set_fail(None);
    u.set_garbage(false);
    u.set_cut_after(None);
    u.set_vanished(false);
    u.set_delay_per_chunk(Duration::ZERO);
}

#[test]
fn reads_are_served_and_failed_syncs_leave_no_partial_state_whatever_the_upstream_does() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = served(&w, "repo");
    publish_payload(&w, &seed, 64, 3);
    for fault in FAULTS {
        (fault.set)(&w.upstream);
        let err = w
            .server
            .try_sync_now("repo")
            .expect_err(&format!("a sync against {} fails", fault.what));
        assert!(!err.is_empty(), "{}: the error is recorded", fault.what);
        assert_maps_eq(
            &served(&w, "repo"),
            &before,
            &format!("served while the upstream fails with {}", fault.what),
        );
        let left = leftovers(w.server.data_dir());
        assert!(
            left.is_empty(),
            "{}: a failed sync leaves nothing behind: {left:?}",
            fault.what
        );
        heal(&w.upstream);
    }
    agrees_after_sync(&w, &seed);
}

#[test]
fn a_slow_upstream_does_not_slow_reads_down() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = served(&w, "repo");
    publish_payload(&w, &seed, 64, 4);
    w.upstream.set_delay_per_chunk(Duration::from_millis(100));
    let resp = w.server.try_pull_upstream("repo");
    assert!(resp.status < 300, "{}", resp.describe());
    w.server.wait_sync_in_progress("repo");
    let started = Instant::now();
    assert_maps_eq(&served(&w, "repo"), &before, "served during a slow sync");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a clone during a slow sync took {:?}",
        started.elapsed()
    );
    heal(&w.upstream);
    agrees_after_sync(&w, &seed);
}

#[test]
fn forwarded_pushes_fail_cleanly_against_a_garbage_or_vanished_upstream() {
    let (w, seed) = World::seeded_mirror("repo");
    let work = work_clone(&w, "repo");
    let new = w.git.commit_file(&work, "pushed.txt", "pushed\n", "pushed");
    let before = served(&w, "repo");
    let upstream_before = w.git.served_refs(&seed.bare);
    for fault in [&FAULTS[1], &FAULTS[3]] {
        (fault.set)(&w.upstream);
        let out = w.git.try_run(&work, &["push", "origin", "main"]);
        assert!(
            !out.success(),
            "a push against {} fails\n{}",
            fault.what,
            out.describe()
        );
        assert!(
            out.stderr.contains("upstream"),
            "{}: the client hears it is the upstream\n{}",
            fault.what,
            out.stderr
        );
        heal(&w.upstream);
        assert_maps_eq(&served(&w, "repo"), &before, fault.what);
        assert_maps_eq(&w.git.served_refs(&seed.bare), &upstream_before, fault.what);
        let left = leftovers(w.server.data_dir());
        assert!(
            left.is_empty(),
            "{}: nothing left behind: {left:?}",
            fault.what
        );
    }
    w.git.push(&work, &["-q", "origin", "main"]);
    assert_eq!(served(&w, "repo").get("refs/heads/main"), Some(&new));
    assert_eq!(w.git.rev_parse(&seed.bare, "refs/heads/main"), new);
}

/// The instants at which the finished-run count of `name` grows to `runs`.
fn run_times(server: &Server, name: &str, runs: u64, timeout: Duration) -> Vec<Instant> {
    let mut times = Vec::new();
    let mut seen = SyncState::of(&server.repo(name)).run_count;
    let deadline = Instant::now() + timeout;
    while seen < runs {
        assert!(
            Instant::now() < deadline,
            "only {seen} of {runs} sync runs of {name} within {timeout:?}\n{}",
            server.logs()
        );
        let now = SyncState::of(&server.repo(name)).run_count;
        if now > seen {
            times.push(Instant::now());
            seen = now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    times
}

#[test]
fn failed_syncs_are_retried_with_growing_backoff_and_reads_keep_working() {
    let (w, seed) = World::seeded_mirror("repo");
    let before = served(&w, "repo");
    let runs = SyncState::of(&w.server.repo("repo")).run_count;
    publish_payload(&w, &seed, 4, 6);
    w.upstream.set_fail(Some(500));
    let resp = w.server.try_pull_upstream("repo");
    assert!(resp.status < 300, "{}", resp.describe());
    // Run 1 (asked for), then retries by themselves ~5 s and ~10 s later (±20 %, 1 s tick).
    let times = run_times(&w.server, "repo", runs + 3, Duration::from_secs(40));
    let (g1, g2) = (times[1] - times[0], times[2] - times[1]);
    eprintln!("retry gaps after failed syncs: {g1:?}, {g2:?}");
    assert!(
        g1 >= Duration::from_millis(3500) && g1 <= Duration::from_millis(8500),
        "first retry after {g1:?}, expected ~5 s"
    );
    assert!(
        g2 >= Duration::from_millis(7500) && g2 <= Duration::from_millis(15000),
        "second retry after {g2:?}, expected ~10 s"
    );
    let record = w.server.repo("repo");
    assert_eq!(
        record["sync"]["consecutive_failures"].as_u64(),
        Some(3),
        "{record}"
    );
    assert_maps_eq(&served(&w, "repo"), &before, "served while syncs fail");
}

#[test]
fn syncs_recover_by_themselves_when_the_upstream_returns() {
    let w = World::with_server(Server::builder().sync_interval(2));
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.server.mirror("repo", &seed.url);
    let new = publish_payload(&w, &seed, 4, 8);
    w.upstream.set_vanished(true);
    let runs = SyncState::of(&w.server.repo("repo")).run_count;
    run_times(&w.server, "repo", runs + 2, Duration::from_secs(30));
    assert!(
        SyncState::of(&w.server.repo("repo")).last_error.is_some(),
        "syncs fail while the upstream is gone"
    );
    assert_ne!(served(&w, "repo").get("refs/heads/main"), Some(&new));
    heal(&w.upstream);
    wait_until(
        Duration::from_secs(30),
        "the mirror to catch up by itself",
        || {
            let s = SyncState::of(&w.server.repo("repo"));
            (s.last_error.is_none() && !s.in_progress).then_some(())
        },
    );
    assert_maps_eq(
        &served(&w, "repo"),
        &w.git.served_refs(&seed.bare),
        "mirror vs upstream after it came back",
    );
}

// ---- the stale-state warning ----

const STALE: &str = "was last synced with its upstream";

/// `git clone` of `name` into a fresh dir; its stderr.
fn clone_stderr(git: &Git, server: &Server, name: &str, extra: &[&str]) -> (PathBuf, String) {
    let dir = git.unique_path("clone");
    let out = git.clone(&server.git_url(name), &dir, extra);
    (dir, out.stderr)
}

#[test]
fn fetches_warn_when_the_served_state_is_older_than_the_bound() {
    let (w, seed) = World::seeded_mirror_with(
        "repo",
        Server::builder().arg("--stale-warning-after").arg("3"),
    );
    w.server.sync_now("repo");
    let (_, stderr) = clone_stderr(&w.git, &w.server, "repo", &[]);
    assert!(
        !stderr.contains(STALE),
        "no warning right after a sync:\n{stderr}"
    );

    w.upstream.set_fail(Some(500));
    publish_payload(&w, &seed, 4, 9);
    w.server
        .try_sync_now("repo")
        .expect_err("the sync fails while the upstream answers 500");
    std::thread::sleep(Duration::from_secs(4));
    for git in [w.git.v0(), w.git.v2()] {
        let (_, stderr) = clone_stderr(&git, &w.server, "repo", &["-q"]);
        assert!(
            stderr.contains(&format!("remote: warning: repo {STALE} 0 minutes ago"))
                && stderr.contains("failed; serving the last good state"),
            "a clone of a stale mirror warns:\n{stderr}"
        );
    }
    // A fetch that receives a pack warns too.
    let (dir, _) = clone_stderr(&w.git, &w.server, "repo", &["--depth", "1", "-q"]);
    let out = w.git.run(&dir, &["fetch", "--unshallow", "origin"]);
    assert!(
        out.stderr.contains(STALE),
        "a fetch of a stale mirror warns:\n{}",
        out.stderr
    );

    heal(&w.upstream);
    w.server.sync_now("repo");
    let (_, stderr) = clone_stderr(&w.git, &w.server, "repo", &[]);
    assert!(
        !stderr.contains(STALE),
        "no warning once synced again:\n{stderr}"
    );
}

#[test]
fn no_stale_warning_within_the_default_bound_even_while_the_upstream_fails() {
    let (w, _seed) = World::seeded_mirror("repo");
    w.upstream.set_fail(Some(500));
    w.server
        .try_sync_now("repo")
        .expect_err("the sync fails while the upstream answers 500");
    let (_, stderr) = clone_stderr(&w.git, &w.server, "repo", &[]);
    assert!(
        !stderr.contains(STALE),
        "no warning within the default hour:\n{stderr}"
    );
}
