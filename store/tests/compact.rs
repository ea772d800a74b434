//! Compaction at the store level: a full compaction keeps what refs reach and the data dir
//! reopens to the compacted state; a transaction whose quarantine was verified against packs a
//! compaction has since pruned is verified again and refused, never committed over a hole.

mod common;

use std::io::BufReader;
use std::sync::atomic::AtomicBool;

use codestorage_store::{
    CompactOptions, Expect, IngestOptions, Namespace, RefError, RefUpdate, RefValue, RepoName,
    Store, Transaction,
};
use common::{Fixture, git, ingest, ingest_as, oid};

fn full() -> CompactOptions {
    CompactOptions {
        full: true,
        prune_grace: std::time::Duration::ZERO,
        max_rate: None,
    }
}

/// A fixture, and a store (in a temporary directory, at `root`) with an empty repository `r`.
fn store_with_repo() -> (Fixture, tempfile::TempDir, std::path::PathBuf, Store) {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("data");
    let store = Store::open(&root).expect("open");
    store
        .create_repo(&RepoName::new("r").expect("name"), "main", None, None)
        .expect("create");
    (f, tmp, root, store)
}

fn move_main(store: &Store, from: &str, to: &str) {
    let repo = store.repo("r").expect("repo");
    let out = repo
        .commit(Transaction {
            ns: Namespace::Default,
            updates: vec![RefUpdate {
                name: "refs/heads/main".into(),
                expect: Expect::Value(RefValue::Direct(oid(from))),
                new: Some(RefValue::Direct(oid(to))),
            }],
            who: "test".into(),
            atomic: true,
            quarantine: None,
        })
        .expect("commit");
    assert!(out.results.iter().all(|r| r.is_ok()), "{:?}", out.results);
}

#[test]
fn a_full_compaction_prunes_the_unreachable_and_survives_a_reopen() {
    let (f, _tmp, root, store) = store_with_repo();
    let a = f.commits(3, "a");
    ingest(&store, "r", &f.pack(&a, None), &a, None);
    let b = f.commits(3, "b");
    ingest(&store, "r", &f.pack(&b, Some(&a)), &b, Some(&a));
    let c = f.commits(3, "c");
    ingest(&store, "r", &f.pack(&c, Some(&b)), &c, Some(&b));
    move_main(&store, &c, &b);
    let repo = store.repo("r").expect("repo");
    assert_eq!(repo.view().packs.packs().len(), 3);

    let stats = repo
        .compact(&full(), &AtomicBool::new(false))
        .expect("compact");
    assert_eq!((stats.packs_merged, stats.packs_after), (3, 1), "{stats:?}");
    assert!(stats.objects_pruned >= 3, "c's commits at least: {stats:?}");
    assert_eq!(stats.closed.get("default"), Some(&true), "{stats:?}");
    let view = repo.view();
    assert!(view.packs.contains(&oid(&b)) && view.packs.contains(&oid(&a)));
    assert!(
        !view.packs.contains(&oid(&c)),
        "the unreachable tip is gone"
    );
    assert!(view.catalog.is_closed(Namespace::Default));
    // git reads the result.
    let pack = view.packs.packs()[0].index_path();
    git(&f.work, &["verify-pack", pack.to_str().expect("utf-8")]);
    let dir = repo.dir().to_owned();
    drop((view, repo));
    store.wait_idle();
    drop(store);

    let store = Store::open(&root).expect("reopen");
    let repo = store.repo("r").expect("repo");
    let view = repo.view();
    assert_eq!(view.packs.packs().len(), 1);
    assert_eq!(
        view.refs(Namespace::Default).get("refs/heads/main"),
        Some(&RefValue::Direct(oid(&b)))
    );
    let files = std::fs::read_dir(dir.join("objects/pack"))
        .expect("read")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .count();
    assert_eq!(files, 1, "the replaced packs were deleted");
    drop((view, repo));
    store.wait_idle();
    store.index().flush().expect("flush");
    drop(store);
    let report = codestorage_store::fsck::run(&root, false).expect("fsck runs");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_quarantine_verified_before_a_compaction_pruned_its_base_is_refused() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("data")).expect("open");
    store
        .create_repo(&RepoName::new("r").expect("name"), "main", None, None)
        .expect("create");
    let a = f.commits(2, "a");
    ingest(&store, "r", &f.pack(&a, None), &a, None);
    let b = f.commits(2, "b");
    ingest(&store, "r", &f.pack(&b, Some(&a)), &b, Some(&a));
    // b becomes garbage; a client that still has it builds d on it.
    move_main(&store, &b, &a);
    let d = f.commits(1, "d");
    let repo = store.repo("r").expect("repo");
    let interrupt = AtomicBool::new(false);
    let pack = f.pack(&d, Some(&b));
    let mut q = repo
        .receive_pack(
            &mut BufReader::new(pack.as_slice()),
            IngestOptions::default(),
            &interrupt,
        )
        .expect("ingest")
        .expect("objects");
    q.verify(repo.view().packs.clone(), Namespace::Default, &[oid(&d)])
        .expect("b is still there when the push is verified");

    let stats = repo.compact(&full(), &interrupt).expect("compact");
    assert!(stats.objects_pruned > 0, "{stats:?}");
    assert!(!repo.view().packs.contains(&oid(&b)));

    let out = repo
        .commit(Transaction {
            ns: Namespace::Default,
            updates: vec![RefUpdate {
                name: "refs/heads/d".into(),
                expect: Expect::Absent,
                new: Some(RefValue::Direct(oid(&d))),
            }],
            who: "test".into(),
            atomic: true,
            quarantine: Some(q),
        })
        .expect("commit");
    assert!(out.seq.is_none(), "nothing committed");
    assert!(
        matches!(out.results.as_slice(), [Err(RefError::MissingObject(_))]),
        "{:?}",
        out.results
    );
    assert!(
        repo.view()
            .refs(Namespace::Default)
            .get("refs/heads/d")
            .is_none()
    );
}

/// Pack files (`.pack`) in `dir/objects/pack`.
fn pack_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("objects/pack"))
        .expect("read")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .count()
}

#[test]
fn repeated_full_compactions_never_delete_a_pack_they_rewrote_byte_for_byte() {
    let (f, _tmp, root, store) = store_with_repo();
    let a = f.commits(3, "a");
    ingest(&store, "r", &f.pack(&a, None), &a, None);
    // An ephemeral branch on top: two namespace groups (both namespaces; ephemeral only).
    let b = f.commits(3, "b");
    ingest_as(
        &store,
        "r",
        Namespace::Ephemeral,
        "refs/heads/topic",
        &f.pack(&b, None),
        &b,
        None,
    );
    let repo = store.repo("r").expect("repo");
    let stop = AtomicBool::new(false);
    let first = repo.compact(&full(), &stop).expect("compact");
    assert_eq!(first.packs_after, 2, "one pack per group: {first:?}");
    // Nothing changed: the same two packs would be written again.
    let second = repo.compact(&full(), &stop).expect("compact again");
    assert_eq!(
        second.skipped.as_deref(),
        Some("already compact"),
        "{second:?}"
    );
    // Only the default namespace moves on: the ephemeral-only pack is rewritten byte for byte
    // and must stay.
    git(&f.work, &["reset", "-q", "--hard", &a]);
    let c = f.commits(2, "c");
    ingest(&store, "r", &f.pack(&c, Some(&a)), &c, Some(&a));
    let third = repo.compact(&full(), &stop).expect("compact a third time");
    assert!(third.skipped.is_none(), "{third:?}");
    let dir = repo.dir().to_owned();
    assert_eq!(
        pack_files(&dir),
        repo.view().packs.packs().len(),
        "every cataloged pack is on disk"
    );
    drop(repo);
    store.wait_idle();
    store.index().flush().expect("flush");
    drop(store);

    let store = Store::open(&root).expect("the store opens after repeated compactions");
    let repo = store.repo("r").expect("repo");
    let view = repo.view();
    for id in [&a, &b, &c] {
        assert!(view.packs.contains(&oid(id)), "{id} is kept");
    }
    drop((view, repo));
    store.wait_idle();
    store.index().flush().expect("flush");
    drop(store);
    let report = codestorage_store::fsck::run(&root, false).expect("fsck runs");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_ref_moved_onto_pruned_history_during_a_compaction_abandons_it() {
    let (f, _tmp, root, store) = store_with_repo();
    let a = f.commits(3, "a");
    ingest(&store, "r", &f.pack(&a, None), &a, None);
    let b = f.commits(2, "b");
    ingest(&store, "r", &f.pack(&b, Some(&a)), &b, Some(&a));
    // b is now unreachable (and, with no grace, prunable).
    move_main(&store, &b, &a);
    // A commit on top of b whose tree is a's: everything it needs but its parent is kept.
    let tree = git(&f.work, &["rev-parse", &format!("{a}^{{tree}}")]);
    let n = git(
        &f.work,
        &["commit-tree", tree.trim(), "-p", &b, "-m", "revert"],
    );
    let n = n.trim().to_owned();
    let pack = f.pack(&n, Some(&b));
    let repo = store.repo("r").expect("repo");
    // A slow compaction (a few KiB at 2 KiB/s), during which main moves to n.
    let slow = CompactOptions {
        max_rate: Some(2048),
        ..full()
    };
    let stats = std::thread::scope(|s| {
        let compaction = s.spawn(|| repo.compact(&slow, &AtomicBool::new(false)));
        std::thread::sleep(std::time::Duration::from_millis(700));
        ingest(&store, "r", &pack, &n, Some(&a));
        compaction.join().expect("compaction thread")
    })
    .expect("compact");
    // Either the compaction saw the move and gave up, or it kept b: never a hole.
    let view = repo.view();
    assert!(
        view.packs.contains(&oid(&b)),
        "the parent of main's tip is still stored: {stats:?}"
    );
    assert!(stats.retry || stats.objects_pruned == 0, "{stats:?}");
    drop((view, repo));
    store.wait_idle();
    store.index().flush().expect("flush");
    drop(store);
    let report = codestorage_store::fsck::run(&root, false).expect("fsck runs");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
