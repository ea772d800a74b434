//! Crashes mid-sync: after a SIGKILL the data dir passes `codestorage fsck`, the restarted server
//! serves a consistent state, and the next sync completes.

use std::time::Duration;

use crate::clone::check_clone;
use crate::support::git::pseudo_random_bytes;
use crate::support::{Git, Seed, World, assert_maps_eq, seed_repo};

/// Adds a 64 KiB incompressible file on main and publishes it: with the delay knob at 200 ms per
/// KiB, a sync of it takes over 10 s.
fn add_payload(git: &Git, seed: &Seed) {
    git.commit_file(
        &seed.work,
        "payload.bin",
        pseudo_random_bytes(64 << 10, 13),
        "payload",
    );
    seed.publish(git);
}

/// Kills the server a second into a running sync of `name`, checks `fsck`, lifts the upstream
/// delay and restarts.
fn crash_mid_sync(w: &mut World, name: &str) {
    w.server.wait_sync_in_progress(name);
    std::thread::sleep(Duration::from_secs(1));
    w.server.kill();
    let out = w.server.fsck();
    assert!(
        out.success(),
        "fsck after a crash mid-sync must pass\n{}",
        out.describe()
    );
    w.upstream.set_delay_per_chunk(Duration::ZERO);
    w.server.restart();
}

#[test]
fn crash_during_the_first_sync_leaves_a_clean_data_dir_and_the_next_sync_completes() {
    let mut w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    add_payload(&w.git, &seed);
    w.upstream.set_delay_per_chunk(Duration::from_millis(200));
    w.server.create_mirror("repo", &seed.url);
    crash_mid_sync(&mut w, "repo");

    let (status, record) = w.server.get_repo("repo");
    assert_eq!(status, 200, "the repo record survives the crash: {record}");
    w.server.sync_now("repo");
    check_clone(&w.git, &seed, &w.server.git_url("repo"));
}

#[test]
fn crash_during_a_later_sync_keeps_the_old_state_until_the_next_sync_completes() {
    let (mut w, seed) = World::seeded_mirror("repo");
    let old = w.git.served_refs(&seed.bare);
    add_payload(&w.git, &seed);
    w.upstream.set_delay_per_chunk(Duration::from_millis(200));
    w.server.pull_upstream("repo");
    crash_mid_sync(&mut w, "repo");

    let url = w.server.git_url("repo");
    let after_crash = w.git.unique_path("after-crash");
    w.git.clone(&url, &after_crash, &["--mirror"]);
    assert_maps_eq(
        &w.git.served_refs(&after_crash),
        &old,
        "refs after the crash vs before the sync",
    );
    w.git.fsck_strict(&after_crash);

    w.server.sync_now("repo");
    check_clone(&w.git, &seed, &url);
    w.git.run(&after_crash, &["fetch", "-q", "origin"]);
    assert_maps_eq(
        &w.git.served_refs(&after_crash),
        &w.git.served_refs(&seed.bare),
        "fetch after recovery",
    );
    w.git.fsck_strict(&after_crash);
}
