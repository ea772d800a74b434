//! Maintenance: `codestorage maintain [--repo NAME] [--full]` and `POST /api/admin/maintain`
//! against a running server with real git clients.
//!
//! Many syncs and pushes leave many packs; a full compaction rolls them into one per namespace
//! group with the same refs served, `git fsck --strict` clean clones and the full-clone fast
//! path back; unreachable objects go once older than `--prune-grace` (and stay with the default
//! grace); a fork keeps serving when its source is compacted and deleted; geometric compaction
//! leaves the large pack alone; clones and pushes running during maintenance all succeed; a
//! crash at each compaction fault point leaves a store that opens, passes fsck and serves; the
//! route refuses non-admin tokens and bad bodies.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::git::pseudo_random_bytes;
use crate::support::http;
use crate::support::server::Server;
use crate::support::{World, assert_maps_eq, seed_repo};

// ---- helpers ----

/// The pack directory of repository `name` (found through its record).
fn pack_dir(server: &Server, name: &str) -> PathBuf {
    let repos = server.data_dir().join("repos");
    for e in std::fs::read_dir(&repos).expect("read repos").flatten() {
        let record = std::fs::read_to_string(e.path().join("record.json")).unwrap_or_default();
        let v: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
        if v["name"] == name {
            return e.path().join("objects/pack");
        }
    }
    panic!("no repository {name} in {}", repos.display())
}

/// The `.pack` file stems of `name`.
fn packs(server: &Server, name: &str) -> BTreeSet<String> {
    std::fs::read_dir(pack_dir(server, name))
        .expect("read pack dir")
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|f| f.strip_suffix(".pack"))
                .map(str::to_owned)
        })
        .collect()
}

/// Every object id in the stored packs of `name` (`git verify-pack -v` on each pack).
fn stored_objects(w: &World, name: &str) -> BTreeSet<String> {
    objects_on(w, &w.server, name)
}

/// [`stored_objects`] of `name` on `server`.
fn objects_on(w: &World, server: &Server, name: &str) -> BTreeSet<String> {
    let dir = pack_dir(server, name);
    let mut out = BTreeSet::new();
    for stem in packs(server, name) {
        let idx = dir.join(format!("{stem}.idx"));
        let listed = w.git.run(
            w.git.scratch(),
            &["verify-pack", "-v", idx.to_str().expect("utf-8")],
        );
        out.extend(listed.stdout.lines().filter_map(|l| {
            let id = l.split_whitespace().next()?;
            (id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
        }));
    }
    out
}

/// `git verify-pack` on every stored pack of `name`: all self-contained and sound.
#[track_caller]
fn verify_packs(w: &World, name: &str) {
    let dir = pack_dir(&w.server, name);
    for stem in packs(&w.server, name) {
        let idx = dir.join(format!("{stem}.idx"));
        w.git.run(
            w.git.scratch(),
            &["verify-pack", idx.to_str().expect("utf-8")],
        );
    }
}

/// `codestorage maintain ARGS`: the JSON it printed.
#[track_caller]
fn maintain(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["maintain"];
    all.extend_from_slice(args);
    let out = server.cli_ok(&all);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// The stats entry of `name` in a maintain answer.
fn entry<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["repos"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["repo"] == name))
        .unwrap_or_else(|| panic!("no entry for {name} in {answer}"))
}

/// Metric sample `series` of the server's `/metrics`.
fn metric(server: &Server, series: &str) -> f64 {
    let resp = http::request(server.base(), "GET", "/metrics", &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    resp.text()
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

const FAST: &str = r#"codestorage_packs_generated_total{path="fast"}"#;

/// A mirror clone of `name` through the server; it must pass `git fsck --strict`. Its refs.
#[track_caller]
fn served(w: &World, name: &str) -> BTreeMap<String, String> {
    let dir = w.git.unique_path("served");
    w.git
        .clone(&w.server.git_url(name), &dir, &["--mirror", "-q"]);
    w.git.fsck_strict(&dir);
    w.git.served_refs(&dir)
}

/// `n` commits on `main` of the seed's working repo, each published and synced: `n` packs.
fn grow_by_syncs(w: &World, seed: &crate::support::Seed, n: usize) {
    for _ in 0..n {
        let i = w.git.tick();
        w.git.commit_file(
            &seed.work,
            &format!("note-{i}.txt"),
            format!("note {i}\n"),
            &format!("note {i}"),
        );
        seed.publish(&w.git);
        w.server.sync_now(&seed.name);
    }
}

// ---- tests ----

#[test]
fn maintain_full_rolls_many_packs_into_one_and_restores_the_fast_path() {
    let (mut w, seed) = World::seeded_mirror("team/many");
    grow_by_syncs(&w, &seed, 6);
    let before = packs(&w.server, "team/many");
    assert!(before.len() >= 7, "one pack per sync: {before:?}");
    let objects_before = stored_objects(&w, "team/many");
    let refs_before = served(&w, "team/many");

    let answer = maintain(&w.server, &["--full"]);
    let stats = entry(&answer, "team/many");
    assert_eq!(stats["packs_after"], 1, "{answer}");
    assert_eq!(stats["objects_pruned"], 0, "nothing unreachable: {answer}");
    assert_eq!(stats["closed"]["default"], true, "{answer}");
    let after = packs(&w.server, "team/many");
    assert_eq!(
        after.len(),
        1,
        "one pack, the replaced ones deleted: {after:?}"
    );
    assert!(after.is_disjoint(&before));
    assert_eq!(stored_objects(&w, "team/many"), objects_before);
    verify_packs(&w, "team/many");

    // Same refs, a sound clone, and the full clone streams the stored pack again.
    let fast_before = metric(&w.server, FAST);
    assert_maps_eq(&served(&w, "team/many"), &refs_before, "ours vs before");
    assert!(
        metric(&w.server, FAST) > fast_before,
        "a full clone after --full takes the fast path\n{}",
        w.server.logs()
    );
    assert_eq!(
        w.git.ls_remote(&w.server.git_url("team/many")),
        w.git.ls_remote(&seed.url)
    );
    assert!(
        metric(
            &w.server,
            r#"codestorage_compactions_total{mode="full",outcome="done"}"#
        ) >= 1.0
    );

    // Syncs keep working on top, and the data dir is sound.
    grow_by_syncs(&w, &seed, 1);
    assert_maps_eq(
        &served(&w, "team/many"),
        &w.git.served_refs(&seed.bare),
        "ours vs upstream",
    );
    w.server.stop();
    let out = w.server.fsck();
    assert!(out.success(), "fsck after compaction\n{}", out.describe());
}

#[test]
fn unreachable_objects_are_pruned_only_after_the_grace_period() {
    // The default grace (14 days) keeps them.
    let (w, seed) = World::seeded_mirror("team/keep");
    let guide = w
        .git
        .rev_parse(&seed.work, &format!("{}:docs/guide.md", seed.c3));
    w.git.run(&seed.work, &["reset", "-q", "--hard", &seed.c2]);
    seed.publish(&w.git);
    w.server.sync_now("team/keep");
    maintain(&w.server, &["--full", "--repo", "team/keep"]);
    let kept = stored_objects(&w, "team/keep");
    assert!(kept.contains(&guide), "young unreachable blob kept");
    assert!(kept.contains(&seed.c3), "young unreachable commit kept");
    served(&w, "team/keep");
    drop(w);

    // With --prune-grace 0s they go; so do the objects of a deleted ephemeral branch.
    let (w, seed) = World::seeded_mirror_with(
        "team/prune",
        Server::builder().arg("--prune-grace").arg("0s"),
    );
    let guide = w
        .git
        .rev_parse(&seed.work, &format!("{}:docs/guide.md", seed.c3));
    let eph = w.git.unique_path("eph");
    w.git
        .clone(&w.server.git_url("team/prune+ephemeral"), &eph, &["-q"]);
    std::fs::write(eph.join("scratch.bin"), pseudo_random_bytes(2048, 99)).expect("write");
    w.git.run(&eph, &["checkout", "-q", "-b", "scratch"]);
    w.git.run(&eph, &["add", "scratch.bin"]);
    w.git.run(&eph, &["commit", "-q", "-m", "scratch"]);
    let scratch_blob = w.git.rev_parse(&eph, "HEAD:scratch.bin");
    w.git.push(&eph, &["-q", "origin", "scratch"]);
    assert!(stored_objects(&w, "team/prune").contains(&scratch_blob));
    w.git.push(&eph, &["-q", "origin", "--delete", "scratch"]);

    w.git.run(&seed.work, &["reset", "-q", "--hard", &seed.c2]);
    seed.publish(&w.git);
    w.server.sync_now("team/prune");
    let answer = maintain(&w.server, &["--full"]);
    assert!(
        entry(&answer, "team/prune")["objects_pruned"].as_u64() >= Some(3),
        "{answer}"
    );
    let left = stored_objects(&w, "team/prune");
    assert!(!left.contains(&guide), "unreachable blob pruned");
    assert!(!left.contains(&seed.c3), "unreachable commit pruned");
    assert!(
        !left.contains(&scratch_blob),
        "deleted ephemeral branch's blob pruned"
    );
    assert!(left.contains(&seed.c2) && left.contains(&seed.feature));
    verify_packs(&w, "team/prune");
    assert_maps_eq(
        &served(&w, "team/prune"),
        &w.git.served_refs(&seed.bare),
        "ours vs upstream",
    );
    // The ephemeral namespace still serves.
    let again = w.git.unique_path("eph-again");
    w.git
        .clone(&w.server.git_url("team/prune+ephemeral"), &again, &["-q"]);
    w.git.fsck_strict(&again);
}

#[test]
fn a_fork_keeps_serving_when_its_source_is_compacted_and_deleted() {
    let (w, seed) =
        World::seeded_mirror_with("src", Server::builder().arg("--prune-grace").arg("0s"));
    let resp = w.server.request_json(
        "POST",
        "/api/repos",
        &json!({"name": "copy", "base_repo": {"provider": "code", "owner": "x", "name": "src", "operation": "fork"}}),
    );
    assert_eq!(resp.status, 201, "{}", resp.describe());
    let fork_refs = served(&w, "copy");
    // The source drops c3; its compaction prunes c3 from its own packs only.
    w.git.run(&seed.work, &["reset", "-q", "--hard", &seed.c2]);
    seed.publish(&w.git);
    w.server.sync_now("src");
    maintain(&w.server, &["--full", "--repo", "src"]);
    assert!(!stored_objects(&w, "src").contains(&seed.c3));
    assert!(stored_objects(&w, "copy").contains(&seed.c3));
    let resp = w
        .server
        .request("DELETE", &Server::repo_path("src", ""), None, &[]);
    assert!(resp.status < 300, "{}", resp.describe());
    maintain(&w.server, &["--full"]);
    assert_maps_eq(&served(&w, "copy"), &fork_refs, "fork vs before");
    verify_packs(&w, "copy");
}

#[test]
fn geometric_maintain_leaves_the_large_pack_alone() {
    // A first pack well over twice the objects of the later ones together.
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "team/geo");
    for i in 0..40 {
        std::fs::write(
            seed.work.join(format!("file-{i}.txt")),
            format!("file {i}\n"),
        )
        .expect("write");
    }
    w.git.run(&seed.work, &["add", "."]);
    w.git.run(&seed.work, &["commit", "-q", "-m", "many files"]);
    seed.publish(&w.git);
    w.server.mirror("team/geo", &seed.url);
    let first = packs(&w.server, "team/geo");
    assert_eq!(first.len(), 1);
    grow_by_syncs(&w, &seed, 4);
    let answer = maintain(&w.server, &["--repo", "team/geo"]);
    let stats = entry(&answer, "team/geo");
    assert_eq!(stats["packs_merged"], 4, "the four small packs: {answer}");
    let after = packs(&w.server, "team/geo");
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(first.is_subset(&after), "the large pack untouched");
    verify_packs(&w, "team/geo");
    assert_maps_eq(
        &served(&w, "team/geo"),
        &w.git.served_refs(&seed.bare),
        "ours vs upstream",
    );
    // Nothing more to merge now.
    let again = maintain(&w.server, &["--repo", "team/geo"]);
    assert!(entry(&again, "team/geo")["skipped"].is_string(), "{again}");
}

#[test]
fn clones_and_pushes_during_maintenance_all_succeed() {
    let w = World::with_server(Server::builder().arg("--prune-grace").arg("0s"));
    w.server.create_local("busy");
    let work = w.git.unique_path("busy");
    w.git.clone(&w.server.git_url("busy"), &work, &["-q"]);
    for i in 0..5 {
        w.git
            .commit_file(&work, "a.txt", format!("v{i}\n"), &format!("c{i}"));
        w.git.push(&work, &["-q", "origin", "HEAD:refs/heads/main"]);
    }
    let url = w.server.git_url("busy");
    std::thread::scope(|s| {
        let pusher = s.spawn(|| {
            for i in 5..15 {
                w.git.commit_file(
                    &work,
                    "b.bin",
                    pseudo_random_bytes(1024, i as u64),
                    &format!("c{i}"),
                );
                w.git.push(&work, &["-q", "origin", "HEAD:refs/heads/main"]);
            }
        });
        let cloner = s.spawn(|| {
            for _ in 0..6 {
                let dir = w.git.unique_path("reader");
                w.git.clone(&url, &dir, &["-q"]);
                w.git.fsck_strict(&dir);
            }
        });
        for _ in 0..4 {
            maintain(&w.server, &["--full", "--repo", "busy"]);
        }
        pusher.join().expect("pusher");
        cloner.join().expect("cloner");
    });
    maintain(&w.server, &["--full", "--repo", "busy"]);
    let dir = w.git.unique_path("final");
    w.git.clone(&url, &dir, &["-q"]);
    w.git.fsck_strict(&dir);
    assert_eq!(
        w.git.rev_parse(&dir, "HEAD"),
        w.git.rev_parse(&work, "HEAD"),
        "every acknowledged push is served"
    );
    assert_eq!(w.git.count_commits(&dir, "HEAD"), 15);
}

#[test]
fn maintain_needs_an_admin_token_and_refuses_bad_input() {
    let (w, _seed) = World::seeded_mirror("team/guard");
    let path = "/api/admin/maintain";
    let body = br#"{"full": true}"#;
    let json_ct = [("Content-Type", "application/json")];
    let resp = w
        .server
        .request_anonymous("POST", path, Some(body), &json_ct);
    assert_eq!(resp.status, 401, "{}", resp.describe());
    for scopes in ["git:read,git:write", "repo:write,org:read"] {
        let token = w.server.mint(&["--repo", "org", "--scopes", scopes]);
        let bearer = format!("Bearer {token}");
        let resp = w.server.request(
            "POST",
            path,
            Some(body),
            &[("Authorization", &bearer), json_ct[0]],
        );
        assert_eq!(resp.status, 403, "{scopes}: {}", resp.describe());
        assert!(resp.json()["error"].is_string());
    }
    let packs_before = packs(&w.server, "team/guard");
    for (bad, status) in [
        (json!({"repo": "nope"}), 404),
        (json!({"full": "yes"}), 400),
        (json!({"repo": "team/guard", "extra": 1}), 400),
        (json!({"repo": 7}), 400),
    ] {
        let resp = w.server.request_json("POST", path, &bad);
        assert_eq!(resp.status, status, "{bad}: {}", resp.describe());
        assert!(resp.json()["error"].is_string(), "{}", resp.describe());
    }
    let resp = w.server.request("POST", path, Some(b"{not json"), &json_ct);
    assert_eq!(resp.status, 400, "{}", resp.describe());
    let resp = w.server.request("GET", path, None, &[]);
    assert_eq!(resp.status, 405, "{}", resp.describe());
    assert_eq!(
        packs(&w.server, "team/guard"),
        packs_before,
        "nothing changed"
    );
    // The v1 spelling works too.
    let resp = w.server.request_json(
        "POST",
        "/api/v1/admin/maintain",
        &json!({"repo": "team/guard"}),
    );
    assert_eq!(resp.status, 200, "{}", resp.describe());
    // The CLI without the data dir's key says what the server answered.
    let out = w.server.cli(&["--token", "not-a-jwt", "maintain"]);
    assert!(!out.success());
    assert!(out.stderr.contains("401"), "{}", out.describe());
}

/// Crash at each compaction fault point: the store opens, fsck passes, start sweeps the
/// leftovers, clones are sound and a later maintain finishes the job.
#[test]
fn a_crash_during_compaction_leaves_a_consistent_store() {
    for point in [
        "compact-pack-written",
        "compact-packs-promoted",
        "compact-journaled",
    ] {
        let (mut w, seed) = World::seeded_mirror_with(
            "team/crash",
            Server::builder().arg("--prune-grace").arg("0s"),
        );
        grow_by_syncs(&w, &seed, 2);
        w.git.run(&seed.work, &["reset", "-q", "--hard", &seed.c2]);
        seed.publish(&w.git);
        w.server.sync_now("team/crash");
        let refs = served(&w, "team/crash");
        w.server.stop();
        w.server.set_env("CODESTORAGE_FAULT", Some(point));
        w.server.restart();
        let out = w.server.cli(&["maintain", "--full"]);
        assert!(!out.success(), "{point}: the server died mid-maintain");
        let status = w
            .server
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no abort at {point}\n{}", w.server.logs()));
        assert_eq!(status.signal(), Some(6), "{point}: {status:?}");
        let out = w.server.fsck();
        assert!(out.success(), "fsck after {point}\n{}", out.describe());
        w.server.set_env("CODESTORAGE_FAULT", None);
        w.server.restart();
        let dir = pack_dir(&w.server, "team/crash");
        let markers: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("read")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "keep" || e == "replaced")
            })
            .collect();
        assert!(markers.is_empty(), "{point}: swept at start: {markers:?}");
        assert!(
            leftover_tmp(&dir).is_empty(),
            "{point}: work dirs swept: {:?}",
            leftover_tmp(&dir)
        );
        assert_maps_eq(&served(&w, "team/crash"), &refs, "after vs before");
        verify_packs(&w, "team/crash");
        let answer = maintain(&w.server, &["--full"]);
        let expect_packs = 1;
        assert_eq!(
            packs(&w.server, "team/crash").len(),
            expect_packs,
            "{point}: {answer}"
        );
        assert!(!stored_objects(&w, "team/crash").contains(&seed.c3));
        assert_maps_eq(&served(&w, "team/crash"), &refs, "final vs before");
    }
}

fn leftover_tmp(pack_dir: &Path) -> Vec<PathBuf> {
    let tmp = pack_dir
        .parent()
        .and_then(Path::parent)
        .map(|r| r.join("tmp"))
        .expect("repo dir");
    std::fs::read_dir(tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn the_background_task_compacts_on_its_interval() {
    let (w, seed) = World::seeded_mirror_with(
        "team/bg",
        Server::builder().arg("--maintain-interval").arg("1s"),
    );
    grow_by_syncs(&w, &seed, 5);
    // Geometric, or full where a namespace was no longer its refs' exact closure; it may run
    // between two of the syncs (busy repositories are skipped, never waited for).
    let done = || {
        ["full", "geometric"]
            .iter()
            .map(|mode| {
                metric(
                    &w.server,
                    &format!(r#"codestorage_compactions_total{{mode="{mode}",outcome="done"}}"#),
                )
            })
            .sum::<f64>()
    };
    // A pass may run between two syncs, and syncs go on adding packs after it: wait for the
    // passes (every second) to bring the six packs down.
    crate::support::wait_until(Duration::from_secs(60), "a background compaction", || {
        (done() >= 1.0 && packs(&w.server, "team/bg").len() < 6).then_some(())
    });
    verify_packs(&w, "team/bg");
    assert_maps_eq(
        &served(&w, "team/bg"),
        &w.git.served_refs(&seed.bare),
        "ours vs upstream",
    );
}

#[test]
fn objects_of_expired_ephemeral_refs_are_pruned() {
    let (w, _seed) = World::seeded_mirror_with(
        "team/ttl",
        Server::builder()
            .arg("--prune-grace")
            .arg("0s")
            .arg("--ephemeral-ttl")
            .arg("2s"),
    );
    let eph = w.git.unique_path("eph");
    let url = w.server.git_url("team/ttl+ephemeral");
    w.git.clone(&url, &eph, &["-q"]);
    std::fs::write(eph.join("expiring.bin"), pseudo_random_bytes(2048, 5)).expect("write");
    w.git.run(&eph, &["checkout", "-q", "-b", "expiring"]);
    w.git.run(&eph, &["add", "expiring.bin"]);
    w.git.run(&eph, &["commit", "-q", "-m", "expiring"]);
    let blob = w.git.rev_parse(&eph, "HEAD:expiring.bin");
    w.git.push(&eph, &["-q", "origin", "expiring"]);
    assert!(stored_objects(&w, "team/ttl").contains(&blob));
    crate::support::wait_until(Duration::from_secs(30), "the ref to expire", || {
        (!w.git.ls_remote(&url).contains("refs/heads/expiring")).then_some(())
    });
    maintain(&w.server, &["--full", "--repo", "team/ttl"]);
    assert!(
        !stored_objects(&w, "team/ttl").contains(&blob),
        "the expired branch's blob is pruned"
    );
    served(&w, "team/ttl");
}

#[test]
fn a_backup_of_a_compacted_store_restores_and_serves_the_same_refs_and_objects() {
    let (w, seed) = World::seeded_mirror("team/kept");
    grow_by_syncs(&w, &seed, 3);
    maintain(&w.server, &["--full"]);
    // A sync after the compaction: the journal holds a compaction line, then a new pack.
    grow_by_syncs(&w, &seed, 1);
    let refs = served(&w, "team/kept");
    let objects = stored_objects(&w, "team/kept");
    let backup = w.git.unique_path("backup");
    w.server
        .cli_ok(&["backup", "--to", backup.to_str().expect("utf-8")]);

    let mut restored = Server::start();
    restored.stop();
    std::fs::remove_dir_all(restored.data_dir()).expect("remove the data dir");
    let out = restored.data_cli(&["restore", "--from", backup.to_str().expect("utf-8")]);
    assert!(out.success(), "restore\n{}", out.describe());
    restored.restart();
    let dir = w.git.unique_path("restored");
    w.git
        .clone(&restored.git_url("team/kept"), &dir, &["--mirror", "-q"]);
    w.git.fsck_strict(&dir);
    assert_maps_eq(&w.git.served_refs(&dir), &refs, "restored vs live");
    // The restored store compacts again and keeps every object.
    let answer = maintain(&restored, &["--full"]);
    assert_eq!(entry(&answer, "team/kept")["packs_after"], 1, "{answer}");
    assert_eq!(entry(&answer, "team/kept")["objects_pruned"], 0, "{answer}");
    let restored_objects = objects_on(&w, &restored, "team/kept");
    assert_eq!(
        restored_objects, objects,
        "the same objects after the restore"
    );
    restored.stop();
    let out = restored.fsck();
    assert!(
        out.success(),
        "fsck of the restored store\n{}",
        out.describe()
    );
}

#[test]
fn a_slow_compaction_gives_way_to_a_forwarded_push_and_then_completes() {
    // 1 MiB of incompressible content written at 64 KiB/s: a compaction of about 16 s.
    let (w, seed) = World::seeded_mirror_with(
        "team/yield",
        Server::builder()
            .sync_interval(3600)
            .arg("--maintain-max-rate")
            .arg("65536")
            .arg("--maintain-interval")
            .arg("0"),
    );
    w.git.commit_file(
        &seed.work,
        "big.bin",
        pseudo_random_bytes(1 << 20, 11),
        "big",
    );
    seed.publish(&w.git);
    w.server.sync_now(&seed.name);
    let work = w.git.unique_path("pusher");
    w.git.clone(&w.server.git_url("team/yield"), &work, &["-q"]);
    let started = std::time::Instant::now();
    let (answer, push_took) = std::thread::scope(|s| {
        let compaction = s.spawn(|| maintain(&w.server, &["--full", "--repo", "team/yield"]));
        std::thread::sleep(Duration::from_secs(2));
        w.git
            .commit_file(&work, "note.txt", "pushed\n", "during maintenance");
        let t = std::time::Instant::now();
        w.git.push(&work, &["-q", "origin", "HEAD:refs/heads/main"]);
        let push_took = t.elapsed();
        (compaction.join().expect("maintain"), push_took)
    });
    assert!(
        push_took < Duration::from_secs(8),
        "the push waited {push_took:?} for a compaction (started {:?} ago)",
        started.elapsed()
    );
    assert!(
        metric(
            &w.server,
            r#"codestorage_compactions_total{mode="full",outcome="yielded"}"#
        ) >= 1.0,
        "the compaction gave way"
    );
    assert_eq!(entry(&answer, "team/yield")["packs_after"], 1, "{answer}");
    let tip = w.git.rev_parse(&work, "HEAD");
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        tip,
        "upstream has it"
    );
    let served = served(&w, "team/yield");
    assert_eq!(served.get("refs/heads/main"), Some(&tip), "and we serve it");
}
