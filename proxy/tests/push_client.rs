//! The native push client against a real upstream (`git http-backend`): create, update and
//! delete branches, with packs built from our store; git is the oracle on the upstream side.

use std::io::{BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use codestorage::protocol::receive_pack::RefStatus;
use codestorage::upstream::UpstreamClient;
use codestorage::upstream::push::PushUpdate;
use codestorage_store::{
    Expect, IngestOptions, Namespace, ObjectId, RefUpdate, RefValue, RepoName, Store, Transaction,
};
use codestorage_tests::cgi::{self, Bridge};

fn git(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "A")
        .env("GIT_AUTHOR_EMAIL", "a@example.com")
        .env("GIT_COMMITTER_NAME", "C")
        .env("GIT_COMMITTER_EMAIL", "c@example.com")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn text(dir: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&git(dir, args, None))
        .trim()
        .to_owned()
}

fn oid(hex: &str) -> ObjectId {
    ObjectId::from_hex(hex.as_bytes()).expect("hex")
}

/// Put all of `work`'s objects reachable from `tip` into `store` and point main at `tip`.
fn load(store: &Store, repo: &str, work: &Path, tip: &str) {
    let pack = git(
        work,
        &["pack-objects", "--revs", "--stdout", "-q"],
        Some(format!("{tip}\n").as_bytes()),
    );
    let repo = store.repo(repo).expect("repo");
    let interrupt = AtomicBool::new(false);
    let mut q = repo
        .receive_pack(
            &mut BufReader::new(pack.as_slice()),
            IngestOptions::default(),
            &interrupt,
        )
        .expect("ingest")
        .expect("objects");
    q.verify(repo.view().packs.clone(), Namespace::Default, &[oid(tip)])
        .expect("verify");
    let out = repo
        .commit(Transaction {
            ns: Namespace::Default,
            updates: vec![RefUpdate {
                name: "refs/heads/main".into(),
                expect: Expect::Any,
                new: Some(RefValue::Direct(oid(tip))),
            }],
            who: "test".into(),
            atomic: true,
            quarantine: Some(q),
        })
        .expect("commit");
    assert!(out.results.iter().all(|r| r.is_ok()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_push_creates_updates_and_deletes_branches_upstream() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("up");
    std::fs::create_dir_all(&root).expect("mkdir");
    git(&root, &["init", "-q", "--bare", "proj.git"], None);
    let bare = root.join("proj.git");
    git(&bare, &["config", "http.receivepack", "true"], None);
    let bridge = Bridge::new(cgi::Config {
        project_root: root.clone(),
        home: root.clone(),
        backend: cgi::find_http_backend().expect("git http-backend"),
        stats: false,
        echo_stderr: false,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = codestorage::upstream::UpstreamTarget {
        url: format!("http://{}/proj.git", listener.local_addr().expect("addr")),
        credential: None,
    };
    tokio::spawn(cgi::serve(listener, bridge));

    // History made with git: c1 is on the upstream, c2 only in our store.
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q", "-b", "main"], None);
    for (i, content) in ["one\n", "two\n"].iter().enumerate() {
        std::fs::write(work.join("file.txt"), content.repeat(500)).expect("write");
        git(&work, &["add", "-A"], None);
        git(&work, &["commit", "-q", "-m", &format!("c{i}")], None);
        if i == 0 {
            git(
                &work,
                &["push", "-q", bare.to_str().expect("utf-8"), "main"],
                None,
            );
        }
    }
    let c1 = text(&work, &["rev-parse", "HEAD~1"]);
    let c2 = text(&work, &["rev-parse", "HEAD"]);

    let data = tmp.path().join("data");
    let store = Store::open(&data).expect("store");
    store
        .create_repo(&RepoName::new("proj").expect("name"), "main", None, None)
        .expect("create");
    load(&store, "proj", &work, &c2);
    let view = store.repo("proj").expect("repo").view();
    let client = UpstreamClient::new(Duration::from_secs(30)).expect("client");
    let null = ObjectId::null(gix_hash::Kind::Sha1);

    // Fast-forward main and create a branch, atomically.
    let report = client
        .push(
            &url,
            view.clone(),
            vec![
                PushUpdate {
                    name: "refs/heads/main".into(),
                    expect: Some(oid(&c1)),
                    new: Some(oid(&c2)),
                },
                PushUpdate {
                    name: "refs/heads/topic".into(),
                    expect: Some(null),
                    new: Some(oid(&c1)),
                },
            ],
            true,
        )
        .await
        .expect("push");
    assert_eq!(report.unpack_error, None, "{report:?}");
    assert!(
        report.refs.iter().all(|(_, s)| *s == RefStatus::Ok),
        "{report:?}"
    );
    assert_eq!(text(&bare, &["rev-parse", "refs/heads/main"]), c2);
    assert_eq!(text(&bare, &["rev-parse", "refs/heads/topic"]), c1);
    git(&bare, &["fsck", "--strict"], None);

    // A stale expectation is refused by the upstream and changes nothing.
    let report = client
        .push(
            &url,
            view.clone(),
            vec![PushUpdate {
                name: "refs/heads/topic".into(),
                expect: Some(oid(&c2)),
                new: Some(oid(&c2)),
            }],
            false,
        )
        .await
        .expect("push");
    assert!(matches!(report.refs[0].1, RefStatus::Ng(_)), "{report:?}");
    assert_eq!(text(&bare, &["rev-parse", "refs/heads/topic"]), c1);

    // Delete the branch.
    let report = client
        .push(
            &url,
            view,
            vec![PushUpdate {
                name: "refs/heads/topic".into(),
                expect: None,
                new: None,
            }],
            false,
        )
        .await
        .expect("push");
    assert_eq!(report.refs[0].1, RefStatus::Ok, "{report:?}");
    let refs = text(&bare, &["for-each-ref", "--format=%(refname)"]);
    assert_eq!(refs, "refs/heads/main");
}
