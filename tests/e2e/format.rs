//! Data directory format versions: a format-1 data dir written by the previous release
//! (`tests/fixtures/format-v1`, made by `scripts/make-format-v1-fixture`) is migrated in place to
//! the current format at start and serves the same refs and objects; a crash mid-migration
//! leaves it at format 1, unchanged, and the next start migrates it; a data dir of a newer
//! format is refused with a message naming both versions, and left untouched.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::git::hermetic_env;
use crate::support::server::binary;
use crate::support::{COMMAND_TIMEOUT, Out, Server, World, run_command, scratch_dir};

/// The format the binary under test writes.
const CURRENT: &str = "2";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format-v1")
}

/// `(namespace, ls-remote line)` of the fixture's refs, as the release that wrote it served them.
fn fixture_refs() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format-v1.refs");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('\t'))
        .map(|(ns, rest)| (ns.to_owned(), rest.to_owned()))
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy fixture file");
        }
    }
}

/// Every file under `dir` with its contents, for "unchanged" checks.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            if e.file_type().expect("file type").is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).expect("under dir").to_owned();
                out.push((rel, std::fs::read(e.path()).expect("read file")));
            }
        }
    }
    out.sort();
    out
}

fn format_of(data: &Path) -> String {
    std::fs::read_to_string(data.join("FORMAT"))
        .expect("read FORMAT")
        .trim()
        .to_owned()
}

/// `codestorage --data-dir DATA ARGS` with `env`, whatever the outcome.
fn data_cli(data: &Path, home: &Path, env: &[(&str, &str)], args: &[&str]) -> Out {
    let mut cmd = Command::new(binary());
    hermetic_env(&mut cmd, home);
    cmd.arg("--data-dir").arg(data).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(&mut cmd, COMMAND_TIMEOUT)
}

/// A server whose data dir is a fresh copy of the fixture (the server that `World` started on
/// an empty dir is stopped, its data dir replaced, and started again).
fn world_on_fixture() -> World {
    let mut w = World::new();
    w.server.stop();
    let data = w.server.data_dir().to_owned();
    std::fs::remove_dir_all(&data).expect("empty the data dir");
    copy_tree(&fixture(), &data);
    assert_eq!(format_of(&data), "1", "the fixture is a format-1 data dir");
    w.server.restart();
    w
}

#[track_caller]
fn serves_the_fixture_refs_and_objects(w: &World) {
    for (ns, suffix) in [("default", ""), ("ephemeral", "+ephemeral")] {
        let url = w.server.git_url(&format!("fixture/app{suffix}"));
        let listed = w.git.run(w.git.scratch(), &["ls-remote", &url]).stdout;
        let mut got: Vec<&str> = listed.lines().collect();
        let refs = fixture_refs();
        let mut want: Vec<&str> = refs
            .iter()
            .filter(|(n, _)| n == ns)
            .map(|(_, l)| l.as_str())
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert!(!want.is_empty(), "the fixture lists refs of {ns}");
        assert_eq!(got, want, "refs of the {ns} namespace after the migration");
        let dir = w.git.unique_path("clone");
        w.git.clone(&url, &dir, &["--mirror", "-q"]);
        w.git.fsck_strict(&dir);
    }
}

#[test]
fn a_format_1_data_dir_is_migrated_in_place_and_serves_the_same_refs_and_objects() {
    let w = world_on_fixture();
    assert_eq!(format_of(w.server.data_dir()), CURRENT, "migrated at start");
    assert!(
        w.server.stderr().contains("data directory migrated"),
        "the migration is logged\n{}",
        w.server.logs()
    );
    serves_the_fixture_refs_and_objects(&w);
    // Pushes work on the migrated dir.
    let clone = w.git.unique_path("work");
    w.git
        .clone(&w.server.git_url("fixture/app"), &clone, &["-q"]);
    w.git
        .commit_file(&clone, "after.txt", b"after the migration", "after");
    w.git.push(&clone, &["origin", "HEAD:refs/heads/after"]);
}

#[test]
fn a_crash_mid_migration_leaves_format_1_unchanged_and_the_next_start_migrates() {
    let root = scratch_dir("format-crash");
    let data = root.path().join("data");
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    copy_tree(&fixture(), &data);
    let before = snapshot(&data);

    let out = data_cli(
        &data,
        &home,
        &[("CODESTORAGE_FAULT", "migrate-step-done")],
        &["fsck", "--rebuild"],
    );
    assert_eq!(
        out.status.signal(),
        Some(6),
        "aborted at the fault point\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("fault point migrate-step-done reached"),
        "{}",
        out.describe()
    );
    assert_eq!(format_of(&data), "1", "a crashed migration leaves format 1");
    let after: Vec<_> = snapshot(&data)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("index"))
        .collect();
    assert_eq!(
        after.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        before.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        "no file of the format-1 dir added or removed"
    );
    assert!(after == before, "no file of the format-1 dir changed");

    let out = data_cli(&data, &home, &[], &["fsck"]);
    assert!(out.success(), "fsck of the crashed dir\n{}", out.describe());
    assert!(
        out.stdout
            .contains(&format!("format 1: the server migrates it to {CURRENT}")),
        "fsck notes the old format\n{}",
        out.describe()
    );
    let out = data_cli(&data, &home, &[], &["fsck", "--rebuild"]);
    assert!(out.success(), "the next open migrates\n{}", out.describe());
    assert_eq!(format_of(&data), CURRENT);
}

#[test]
fn a_data_dir_of_a_newer_format_is_refused_with_both_versions_and_left_untouched() {
    let mut server = Server::start();
    server.create_local("app");
    server.stop();
    let data = server.data_dir().to_owned();
    std::fs::write(data.join("FORMAT"), "99\n").expect("write FORMAT");
    let before = snapshot(&data);
    for args in [
        &["fsck"][..],
        &["fsck", "--rebuild"],
        &["serve", "--listen", "127.0.0.1:0"],
    ] {
        let out = server.data_cli(args);
        assert!(
            !out.success(),
            "{args:?} on a newer dir\n{}",
            out.describe()
        );
        assert!(
            out.stderr.contains("format 99") && out.stderr.contains(&format!("(format {CURRENT})")),
            "the message names both versions\n{}",
            out.describe()
        );
        assert!(
            out.stderr.contains("newer codestorage"),
            "and says what to do\n{}",
            out.describe()
        );
    }
    assert!(
        snapshot(&data) == before,
        "nothing in the newer dir changed"
    );
}
