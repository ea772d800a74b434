//! Pack ingest and pack generation against git as the oracle: packs made by `git pack-objects`
//! (full and thin) go through quarantine, verification and commit; the packs we generate from
//! them (the full-clone fast path over several packs with duplicates, and walked selections)
//! must pass `git index-pack --strict` and `git fsck --strict`, with exactly the expected objects.

mod common;

use std::collections::BTreeSet;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use codestorage_store::packout::{PackOptions, Selection, write_pack};
use codestorage_store::walk::{WalkSpec, walk_objects};
use codestorage_store::{IngestOptions, Namespace, RepoName, Store};
use common::{Fixture, git, git_stdin, ingest, oid};

/// Index `pack` into a fresh bare repo with `git index-pack --strict` and return its object ids.
fn git_accepts(pack: &[u8], tip: &str, scratch: &Path) -> BTreeSet<String> {
    let bare = scratch.join(format!("check-{}", rand_suffix()));
    std::fs::create_dir_all(&bare).expect("mkdir");
    git(&bare, &["init", "-q", "--bare"]);
    git_stdin(
        &bare,
        &["index-pack", "--strict", "--stdin", "--fix-thin"],
        Some(pack),
    );
    git(&bare, &["update-ref", "refs/heads/main", tip]);
    git(&bare, &["fsck", "--strict", "--no-dangling"]);
    let listed = git(
        &bare,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objectname)",
        ],
    );
    listed.lines().map(str::to_owned).collect()
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[test]
fn full_clone_fast_path_over_packs_with_duplicates_is_a_valid_pack_of_every_object() {
    let f = Fixture::new();
    let data = tempfile::tempdir().expect("tempdir");
    let store = Store::open(data.path()).expect("open store");
    store
        .create_repo(&RepoName::new("r").expect("name"), "main", None, None)
        .expect("create");

    let c1 = f.commits(5, "a");
    ingest(&store, "r", &f.pack(&c1, None), &c1, None);
    let c2 = f.commits(5, "b");
    ingest(&store, "r", &f.pack(&c2, Some(&c1)), &c2, Some(&c1));
    let c3 = f.commits(3, "c");
    ingest(&store, "r", &f.pack(&c3, Some(&c2)), &c3, Some(&c2));

    let repo = store.repo("r").expect("repo");
    let view = repo.view();
    assert_eq!(view.packs.packs().len(), 3, "one pack per ingest");
    assert!(
        view.catalog.is_closed(Namespace::Default),
        "fast-forward ingests keep the namespace closed"
    );

    let mut out = Vec::new();
    let stats = write_pack(
        &view.packs,
        Selection::AllOf(Namespace::Default),
        &|_| false,
        PackOptions {
            ofs_delta: true,
            thin: false,
        },
        &mut out,
        &mut |_, _| {},
    )
    .expect("write pack");
    let got = git_accepts(&out, &c3, data.path());
    let expected: BTreeSet<String> = git(&f.work, &["rev-list", "--objects", &c3])
        .lines()
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        got, expected,
        "the fast path sends each object exactly once"
    );
    assert_eq!(stats.objects as usize, expected.len());
    assert_eq!(
        stats.inflated, 0,
        "nothing needs inflating when whole packs are sent"
    );
}

#[test]
fn walked_incremental_packs_are_thin_and_exactly_rev_list_objects() {
    let f = Fixture::new();
    let data = tempfile::tempdir().expect("tempdir");
    let store = Store::open(data.path()).expect("open store");
    store
        .create_repo(&RepoName::new("r").expect("name"), "main", None, None)
        .expect("create");
    let c1 = f.commits(4, "a");
    let c2 = f.commits(4, "b");
    ingest(&store, "r", &f.pack(&c2, None), &c2, None);

    let repo = store.repo("r").expect("repo");
    let view = repo.view();
    let mut reader = view.reader();
    let interrupt = AtomicBool::new(false);
    let spec = WalkSpec {
        wants: vec![oid(&c2)],
        haves: vec![oid(&c1)],
        ..Default::default()
    };
    let walked = walk_objects(&mut reader, &spec, &interrupt).expect("walk");
    let expected: BTreeSet<String> =
        git(&f.work, &["rev-list", "--objects", &c2, &format!("^{c1}")])
            .lines()
            .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
            .collect();
    let got: BTreeSet<String> = walked.objects.iter().map(|o| o.to_string()).collect();
    assert_eq!(got, expected, "walk equals rev-list --objects");

    for ofs_delta in [true, false] {
        let client_has = walked.client_has.clone();
        let mut out = Vec::new();
        let stats = write_pack(
            &view.packs,
            Selection::Objects(walked.objects.iter().copied().collect()),
            &|id| client_has.contains(id),
            PackOptions {
                ofs_delta,
                thin: true,
            },
            &mut out,
            &mut |_, _| {},
        )
        .expect("write pack");
        // Give the checking repo the client's side (c1) so the thin pack can be completed.
        let bare = data.path().join(format!("client-{ofs_delta}"));
        std::fs::create_dir_all(&bare).expect("mkdir");
        git(&bare, &["init", "-q", "--bare"]);
        git_stdin(&bare, &["index-pack", "--stdin"], Some(&f.pack(&c1, None)));
        git_stdin(
            &bare,
            &["index-pack", "--strict", "--stdin", "--fix-thin"],
            Some(&out),
        );
        git(&bare, &["update-ref", "refs/heads/main", &c2]);
        git(&bare, &["fsck", "--strict", "--no-dangling"]);
        assert_eq!(stats.objects as usize, expected.len());
        assert!(stats.thin_deltas + stats.reused > 0);
    }
}

#[test]
fn a_pack_missing_objects_fails_verification_and_changes_nothing() {
    let f = Fixture::new();
    let data = tempfile::tempdir().expect("tempdir");
    let store = Store::open(data.path()).expect("open store");
    store
        .create_repo(&RepoName::new("r").expect("name"), "main", None, None)
        .expect("create");
    let c1 = f.commits(2, "a");
    let c2 = f.commits(2, "b");
    // A thin pack whose base the store does not have.
    let repo = store.repo("r").expect("repo");
    let interrupt = AtomicBool::new(false);
    let pack = f.pack(&c2, Some(&c1));
    let result = repo
        .receive_pack(
            &mut BufReader::new(pack.as_slice()),
            IngestOptions::default(),
            &interrupt,
        )
        .and_then(|q| match q {
            Some(mut q) => q
                .verify(repo.view().packs.clone(), Namespace::Default, &[oid(&c2)])
                .map(|_| ()),
            None => Ok(()),
        });
    assert!(
        result.is_err(),
        "a pack that needs objects we lack is refused"
    );
    assert!(repo.view().packs.packs().is_empty(), "nothing was added");
    let tmp = repo.dir().join("tmp");
    assert_eq!(
        std::fs::read_dir(tmp).expect("tmp").count(),
        0,
        "the quarantine is gone"
    );
}
