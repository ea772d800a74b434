//! `fsck` finds each kind of damage (and only damage): a clean store passes, crash leftovers are
//! notes, and every corruption is a problem with a message naming what is wrong. `--rebuild`
//! restores a lost index from the files.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use codestorage_store::fsck::{Report, run};
use codestorage_store::{Namespace, RepoName, Store};
use common::{Fixture, ingest};

/// A data dir with one repository holding two packs; the store is closed again.
struct Data {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo_dir: PathBuf,
    tip: String,
}

fn data() -> Data {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("data");
    let store = Store::open(&root).expect("open");
    store
        .create_repo(&RepoName::new("team/r").expect("name"), "main", None, None)
        .expect("create");
    let c1 = f.commits(3, "a");
    ingest(&store, "team/r", &f.pack(&c1, None), &c1, None);
    let c2 = f.commits(3, "b");
    ingest(&store, "team/r", &f.pack(&c2, Some(&c1)), &c2, Some(&c1));
    let repo_dir = store.repo("team/r").expect("repo").dir().to_owned();
    store.wait_idle();
    store.index().flush().expect("flush");
    drop(store);
    Data {
        _tmp: tmp,
        root,
        repo_dir,
        tip: c2,
    }
}

fn packs(d: &Data, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(d.repo_dir.join("objects/pack"))
        .expect("pack dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .collect();
    v.sort();
    v
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).expect("read");
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x40;
    fs::write(path, bytes).expect("write");
}

fn check(root: &Path) -> Report {
    run(root, false).expect("fsck runs")
}

fn assert_problem(report: &Report, needle: &str) {
    assert!(
        report.problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {:?}",
        report.problems
    );
}

#[test]
fn a_clean_store_passes() {
    let d = data();
    let r = check(&d.root);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.repos, r.packs), (1, 2));
    assert!(r.refs >= 2, "HEAD and main are checked");
}

#[test]
fn a_corrupt_pack_trailer_is_a_problem() {
    let d = data();
    let pack = &packs(&d, "pack")[0];
    let len = fs::metadata(pack).expect("meta").len() as usize;
    flip_byte(pack, len - 3);
    assert_problem(&check(&d.root), "pack checksum");
}

#[test]
fn corrupt_pack_data_is_a_problem() {
    let d = data();
    flip_byte(&packs(&d, "pack")[1], 40);
    assert_problem(&check(&d.root), "checksum");
}

#[test]
fn a_corrupt_index_is_a_problem() {
    let d = data();
    flip_byte(&packs(&d, "idx")[0], 1100);
    assert_problem(&check(&d.root), "index checksum");
}

#[test]
fn a_missing_pack_is_a_problem() {
    let d = data();
    fs::remove_file(&packs(&d, "pack")[0]).expect("rm");
    let r = check(&d.root);
    assert_problem(&r, "is missing");
    assert_problem(&r, "is broken");
}

#[test]
fn a_pack_outside_the_catalog_is_a_problem_unless_it_is_a_crash_leftover() {
    let d = data();
    let stray = d
        .repo_dir
        .join("objects/pack/pack-0000000000000000000000000000000000000000.pack");
    fs::write(&stray, b"PACK").expect("write");
    assert_problem(&check(&d.root), "not in the pack catalog");
    fs::write(stray.with_extension("keep"), b"").expect("keep");
    let r = check(&d.root);
    assert!(
        r.problems.is_empty(),
        "a .keep marks a crash leftover: {:?}",
        r.problems
    );
    assert!(
        r.notes.iter().any(|n| n.contains("interrupted ingest")),
        "{:?}",
        r.notes
    );
}

#[test]
fn quarantines_and_a_torn_journal_tail_are_notes() {
    let d = data();
    fs::create_dir_all(d.repo_dir.join("tmp/q-0123")).expect("mkdir");
    let mut journal = fs::OpenOptions::new()
        .append(true)
        .open(d.repo_dir.join("refs.journal"))
        .expect("open");
    std::io::Write::write_all(&mut journal, b"0badf00d {\"seq\":99").expect("write");
    let r = check(&d.root);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(
        r.notes.iter().any(|n| n.contains("quarantine")),
        "{:?}",
        r.notes
    );
    assert!(r.notes.iter().any(|n| n.contains("torn")), "{:?}", r.notes);
}

#[test]
fn journal_damage_before_the_end_is_a_problem() {
    let d = data();
    flip_byte(&d.repo_dir.join("refs.journal"), 20);
    assert_problem(&check(&d.root), "corrupt");
}

#[test]
fn a_ref_to_a_missing_object_is_a_problem() {
    let d = data();
    // Rewrite the last journal line so main points at an object that is nowhere.
    let path = d.repo_dir.join("refs.journal");
    let text = fs::read_to_string(&path).expect("read");
    let last = text.lines().last().expect("a line").to_owned();
    let (_, json) = last.split_once(' ').expect("crc and json");
    let forged = json.replace(&d.tip, "1111111111111111111111111111111111111111");
    let line = format!("{:08x} {forged}\n", crc32(forged.as_bytes()));
    fs::write(&path, text.replace(&format!("{last}\n"), &line)).expect("write");
    let r = check(&d.root);
    assert_problem(&r, "refs/heads/main");
    assert_problem(&r, "missing");
}

#[test]
fn an_index_that_disagrees_with_the_journal_is_a_problem_and_rebuild_fixes_it() {
    let d = data();
    // Drop the journal's last transaction: the index now claims more than the journal holds.
    let path = d.repo_dir.join("refs.journal");
    let text = fs::read_to_string(&path).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let kept: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&path, kept).expect("write");
    let r = check(&d.root);
    assert_problem(&r, "disagrees with its journal");
    fs::write(&path, text).expect("restore");

    fs::remove_dir_all(d.root.join("index")).expect("rm index");
    let r = run(&d.root, true).expect("rebuild");
    assert!(r.problems.is_empty(), "after rebuild: {:?}", r.problems);
    let store = Store::open(&d.root).expect("open");
    let view = store.repo("team/r").expect("repo").view();
    assert_eq!(
        view.refs(Namespace::Default)
            .get("refs/heads/main")
            .and_then(|v| v.id())
            .map(|id| id.to_string()),
        Some(d.tip.clone()),
        "refs come back from the journal"
    );
    assert_eq!(view.packs.packs().len(), 2);
}

#[test]
fn a_damaged_commit_graph_is_a_problem_and_rebuild_fixes_it() {
    let d = data();
    let dir = d.repo_dir.join("objects/info/commit-graphs");
    let layer = fs::read_dir(&dir)
        .expect("graph dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().and_then(|e| e.to_str()) == Some("graph"))
        .expect("a graph layer");
    flip_byte(&layer, 200);
    assert_problem(&check(&d.root), "commit graph");
    let r = run(&d.root, true).expect("rebuild");
    assert!(r.problems.is_empty(), "after rebuild: {:?}", r.problems);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
