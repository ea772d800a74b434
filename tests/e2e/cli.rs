//! The `codestorage` CLI: `repo create/list/show/sync` against a running server, and `fsck` on a
//! stopped server's data dir.

use crate::clone::check_clone;
use crate::support::{World, seed_repo};

#[test]
fn cli_repo_create_sync_show_and_list_drive_a_running_server() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "team/project");
    w.server
        .cli_ok(&["repo", "create", "team/project", "--upstream", &seed.url]);
    w.server.cli_ok(&["repo", "sync", "team/project"]);
    check_clone(&w.git, &seed, &w.server.git_url("team/project"));

    let show = w.server.cli_ok(&["repo", "show", "team/project"]);
    let record: serde_json::Value = serde_json::from_str(show.stdout.trim())
        .unwrap_or_else(|e| panic!("`repo show` prints JSON ({e})\n{}", show.describe()));
    assert_eq!(record["name"], "team/project", "repo show: {record}");
    assert!(
        record["sync"]["last_success_at"].is_string(),
        "synced: {record}"
    );

    w.server.cli_ok(&["repo", "create", "plain"]);
    let list = w.server.cli_ok(&["repo", "list"]);
    for name in ["team/project", "plain"] {
        assert!(
            list.stdout.contains(name),
            "`repo list` shows {name}\n{}",
            list.describe()
        );
    }
}

#[test]
fn cli_repo_sync_exits_non_zero_when_the_sync_fails() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.server.mirror("repo", &seed.url);
    w.upstream.set_fail(Some(500));
    let out = w.server.cli(&["repo", "sync", "repo"]);
    assert!(
        !out.success(),
        "`repo sync` must fail when the upstream does\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "and say why\n{}",
        out.describe()
    );
}

#[test]
fn cli_repo_show_of_an_unknown_repo_fails() {
    let w = World::new();
    let out = w.server.cli(&["repo", "show", "nope"]);
    assert!(
        !out.success(),
        "`repo show nope` must fail\n{}",
        out.describe()
    );
}

#[test]
fn cli_fsck_passes_on_a_stopped_servers_data_dir() {
    let (mut w, _seed) = World::seeded_mirror("repo");
    w.server.create_local("plain");
    w.server.stop();
    let out = w.server.fsck();
    assert!(
        out.success(),
        "fsck of a cleanly stopped data dir\n{}",
        out.describe()
    );
}

#[test]
fn cli_fsck_fails_with_a_message_when_a_stored_pack_is_corrupt() {
    let (mut w, _seed) = World::seeded_mirror("repo");
    w.server.stop();
    let packs = find_files(w.server.data_dir(), ".pack");
    assert!(
        !packs.is_empty(),
        "the data dir stores packs in git's layout (DESIGN.md)"
    );
    for pack in &packs {
        let mut bytes = std::fs::read(pack).expect("read pack");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(pack, bytes).expect("corrupt pack");
    }
    let out = w.server.fsck();
    assert!(
        !out.success(),
        "fsck must notice a corrupt pack\n{}",
        out.describe()
    );
    assert!(
        !(out.stdout.trim().is_empty() && out.stderr.trim().is_empty()),
        "fsck says what is wrong\n{}",
        out.describe()
    );
}

/// Every file under `dir` whose name ends with `suffix`.
fn find_files(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found
}
