//! Shared helpers of the store's integration tests: real git builds the repositories and
//! packs, the store ingests them.

#![allow(dead_code)]

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use codestorage_store::{
    Expect, IngestOptions, Namespace, ObjectId, RefUpdate, RefValue, Store, Transaction,
};

pub fn git(dir: &Path, args: &[&str]) -> String {
    git_stdin(dir, args, None)
}

pub fn git_stdin(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "A")
        .env("GIT_AUTHOR_EMAIL", "a@example.com")
        .env("GIT_COMMITTER_NAME", "C")
        .env("GIT_COMMITTER_EMAIL", "c@example.com")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn git");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Fixture {
    _tmp: tempfile::TempDir,
    pub work: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        Fixture { _tmp: tmp, work }
    }

    /// Commit `n` changes of a growing file (good delta candidates), returning the new tip.
    pub fn commits(&self, n: usize, tag: &str) -> String {
        for i in 0..n {
            let mut body = String::new();
            for line in 0..200 {
                body.push_str(&format!(
                    "{tag} line {line} of a file that changes a little: {}\n",
                    line * i
                ));
            }
            std::fs::write(self.work.join("file.txt"), body).expect("write");
            std::fs::write(
                self.work.join(format!("{tag}-{i}.txt")),
                format!("{tag} {i}\n"),
            )
            .expect("write");
            git(&self.work, &["add", "-A"]);
            git(&self.work, &["commit", "-q", "-m", &format!("{tag} {i}")]);
        }
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// `git pack-objects` for `new --not old` (thin when `old` is given).
    pub fn pack(&self, new: &str, old: Option<&str>) -> Vec<u8> {
        let mut revs = format!("{new}\n");
        let mut args = vec!["pack-objects", "--revs", "--stdout", "-q"];
        if let Some(old) = old {
            revs.push_str(&format!("^{old}\n"));
            args.push("--thin");
        }
        let out = Command::new("git")
            .current_dir(&self.work)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().expect("stdin").write_all(revs.as_bytes())?;
                c.wait_with_output()
            })
            .expect("pack-objects");
        assert!(out.status.success());
        out.stdout
    }
}

pub fn oid(hex: &str) -> ObjectId {
    ObjectId::from_hex(hex.as_bytes()).expect("hex")
}

pub fn ingest(store: &Store, name: &str, pack: &[u8], tip: &str, old: Option<&str>) {
    ingest_as(
        store,
        name,
        Namespace::Default,
        "refs/heads/main",
        pack,
        tip,
        old,
    );
}

/// Receive `pack`, verify it for `ns` and move `refname` there from `old` (absent) to `tip`.
pub fn ingest_as(
    store: &Store,
    name: &str,
    ns: Namespace,
    refname: &str,
    pack: &[u8],
    tip: &str,
    old: Option<&str>,
) {
    let repo = store.repo(name).expect("repo");
    let interrupt = AtomicBool::new(false);
    let mut q = repo
        .receive_pack(
            &mut BufReader::new(pack),
            IngestOptions::default(),
            &interrupt,
        )
        .expect("ingest")
        .expect("a pack with objects");
    q.verify(repo.view().packs.clone(), ns, &[oid(tip)])
        .expect("verify");
    let out = repo
        .commit(Transaction {
            ns,
            updates: vec![RefUpdate {
                name: refname.into(),
                expect: old.map_or(Expect::Absent, |o| Expect::Value(RefValue::Direct(oid(o)))),
                new: Some(RefValue::Direct(oid(tip))),
            }],
            who: "test".into(),
            atomic: true,
            quarantine: Some(q),
        })
        .expect("commit");
    assert!(out.results.iter().all(|r| r.is_ok()), "{:?}", out.results);
}
