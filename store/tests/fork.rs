//! Forks share their source's pack files (hard links, not copies), get their own refs, survive a
//! reopen, pass fsck, and stay intact when the source is deleted.

mod common;

use std::os::unix::fs::MetadataExt;

use codestorage_store::fsck::run;
use codestorage_store::{Namespace, RefValue, RepoName, Store};
use common::{Fixture, ingest, oid};

#[test]
fn a_fork_shares_packs_owns_its_refs_and_outlives_its_source() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("data");
    let store = Store::open(&root).expect("open");
    store
        .create_repo(&RepoName::new("src").expect("name"), "main", None, None)
        .expect("create");
    let c1 = f.commits(3, "a");
    ingest(&store, "src", &f.pack(&c1, None), &c1, None);
    let c2 = f.commits(2, "b");
    ingest(&store, "src", &f.pack(&c2, Some(&c1)), &c2, Some(&c1));
    let source = store.repo("src").expect("src");

    // Fork at the first commit set, on a branch of its own.
    let fork = store
        .fork_repo(
            &source,
            &RepoName::new("team/fork").expect("name"),
            "trunk",
            Some("acme".into()),
            vec![
                ("refs/heads/trunk".into(), RefValue::Direct(oid(&c1))),
                ("HEAD".into(), RefValue::Symbolic("refs/heads/trunk".into())),
            ],
        )
        .expect("fork");
    let refs = fork.view().refs(Namespace::Default);
    assert_eq!(
        refs.get("refs/heads/trunk"),
        Some(&RefValue::Direct(oid(&c1)))
    );
    assert_eq!(refs.get("refs/heads/main"), None, "only the refs asked for");
    assert_eq!(fork.view().packs.packs().len(), 2);
    assert!(fork.view().packs.contains(&oid(&c2)), "objects are shared");
    assert_eq!(fork.record().org.as_deref(), Some("acme"));
    assert!(fork.record().upstream.is_none());

    // The pack files are the same inodes: nothing was copied.
    let pack_files = |dir: &std::path::Path| {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(dir.join("objects/pack"))
            .expect("pack dir")
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().expect("meta").ino(),
                )
            })
            .filter(|(n, _)| n.ends_with(".pack") || n.ends_with(".idx"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(pack_files(source.dir()), pack_files(fork.dir()));
    assert!(
        !std::fs::read_dir(fork.dir().join("objects/pack"))
            .expect("dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".keep")),
        "no .keep left behind"
    );

    // The source moves on; the fork does not follow.
    let c3 = f.commits(1, "c");
    ingest(&store, "src", &f.pack(&c3, Some(&c2)), &c3, Some(&c2));
    assert_eq!(
        store
            .repo("team/fork")
            .expect("fork")
            .view()
            .refs(Namespace::Default)
            .get("refs/heads/trunk"),
        Some(&RefValue::Direct(oid(&c1)))
    );

    // Deleting the source leaves the fork whole, across a reopen, and fsck agrees.
    store.delete_repo("src").expect("delete source");
    store.wait_idle();
    store.index().flush().expect("flush");
    drop((source, fork, store));
    let store = Store::open(&root).expect("reopen");
    let fork = store.repo("team/fork").expect("fork after reopen");
    assert!(fork.view().packs.contains(&oid(&c2)));
    assert_eq!(
        fork.view().refs(Namespace::Default).get("HEAD"),
        Some(&RefValue::Symbolic("refs/heads/trunk".into()))
    );
    drop((fork, store));
    let report = run(&root, false).expect("fsck");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_fork_that_fails_leaves_no_repository_behind() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("data");
    let store = Store::open(&root).expect("open");
    store
        .create_repo(&RepoName::new("src").expect("name"), "main", None, None)
        .expect("create");
    let c = f.commits(2, "a");
    ingest(&store, "src", &f.pack(&c, None), &c, None);
    let source = store.repo("src").expect("src");
    // The source's pack file vanishes from disk (still mapped): linking it fails.
    for e in std::fs::read_dir(source.dir().join("objects/pack"))
        .expect("dir")
        .flatten()
    {
        if e.file_name().to_string_lossy().ends_with(".pack") {
            std::fs::remove_file(e.path()).expect("remove");
        }
    }
    let name = RepoName::new("fork").expect("name");
    let refs = vec![("refs/heads/main".to_owned(), RefValue::Direct(oid(&c)))];
    assert!(store.fork_repo(&source, &name, "main", None, refs).is_err());
    assert!(store.repo("fork").is_none());
    let repo_dirs = std::fs::read_dir(root.join("repos"))
        .expect("repos")
        .count();
    assert_eq!(repo_dirs, 1, "only the source's directory is left");
    // (The broken source goes too, so the store opens again.)
    drop(source);
    store.delete_repo("src").expect("delete the source");
    drop(store);
    let store = Store::open(&root).expect("reopen");
    assert!(store.repo("fork").is_none(), "not resurrected by a restart");
}
