//! Backup and restore: `codestorage backup --to DIR` (admin scope) while pushes and clones run,
//! `codestorage restore --from DIR --data-dir NEW`, and a server on NEW serves the same refs
//! and objects, still decrypts the mirror's stored credential and still has the webhook
//! subscriptions; a damaged backup, a non-empty target and a token without the admin scope are
//! refused and change nothing. Also `export-refs` / `import-refs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::support::git::hermetic_env;
use crate::support::server::binary;
use crate::support::{
    COMMAND_TIMEOUT, Out, SYNC_TIMEOUT, Server, World, run_command, scratch_dir, seed_repo,
    wait_until,
};

/// `codestorage ARGS` with its own HOME under `root`, whatever the outcome.
fn bin_cli(root: &Path, args: &[&str]) -> Out {
    let home = root.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut cmd = std::process::Command::new(binary());
    hermetic_env(&mut cmd, &home);
    cmd.args(args);
    run_command(&mut cmd, COMMAND_TIMEOUT)
}

/// `git ls-remote` of `name` on `server`, as a map ref -> id.
fn ls_remote(w: &World, server: &Server, name: &str) -> BTreeMap<String, String> {
    w.git
        .run(w.git.scratch(), &["ls-remote", &server.git_url(name)])
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, r)| (r.to_owned(), id.to_owned()))
        .collect()
}

/// A mirror clone of `name` on `server` passes `git fsck --strict`.
#[track_caller]
fn clone_is_clean(w: &World, server: &Server, name: &str) {
    let dir = w.git.unique_path("restored-clone");
    w.git
        .clone(&server.git_url(name), &dir, &["--mirror", "-q"]);
    w.git.fsck_strict(&dir);
}

/// A stopped server whose data dir is gone (absent), to restore into.
fn empty_server() -> Server {
    let mut s = Server::start();
    s.stop();
    std::fs::remove_dir_all(s.data_dir()).expect("remove the data dir");
    s
}

/// Files under `dir`, relative, sorted.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(dir).expect("under").to_owned());
            }
        }
    }
    out
}

#[test]
fn a_backup_taken_under_load_restores_into_a_server_with_the_same_refs_credentials_and_webhooks() {
    let w = World::new();
    // A private mirror with a sealed credential.
    let seed = seed_repo(&w.git, &w.upstream, "mirror");
    w.upstream.require_basic_auth(Some(("alice", "pw-backup")));
    w.server.create_mirror("mirror", &seed.url);
    // Its first sync fails (no credential yet); wait for it, as a user would.
    wait_until(SYNC_TIMEOUT, "the first sync run to finish", || {
        let s = w.server.sync_state("mirror");
        (s.run_count >= 1 && !s.in_progress).then_some(())
    });
    let t = w.server.mint(&[
        "--repo",
        "mirror",
        "--scopes",
        "repo:write",
        "--ttl",
        "3600",
    ]);
    let resp = w.server.request(
        "POST",
        "/api/v1/repos/git-credentials",
        Some(
            json!({ "repo_id": "mirror", "username": "alice", "password": "pw-backup" })
                .to_string()
                .as_bytes(),
        ),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {t}")),
        ],
    );
    assert_eq!(resp.status, 201, "credential: {}", resp.describe());
    w.server.sync_now("mirror");

    // A local repo with both namespaces, and one that takes pushes during the backup.
    w.server.create_local("team/app");
    w.server.create_local("busy");
    let work = w.git.unique_path("app");
    w.git.clone(&w.server.git_url("team/app"), &work, &["-q"]);
    w.git.commit_file(&work, "a.txt", "a\n", "a");
    w.git.push(&work, &["-q", "origin", "HEAD:refs/heads/main"]);
    w.git.commit_file(&work, "b.txt", "b\n", "b");
    w.git.run(&work, &["tag", "-a", "v1", "-m", "v1"]);
    w.git
        .push(&work, &["-q", "origin", "HEAD:refs/heads/main", "v1"]);
    w.git.commit_file(&work, "e.txt", "e\n", "eph");
    w.git.push(
        &work,
        &[
            "-q",
            &w.server.git_url("team/app+ephemeral"),
            "HEAD:refs/heads/wip",
        ],
    );
    let busy = w.git.unique_path("busy");
    w.git.clone(&w.server.git_url("busy"), &busy, &["-q"]);
    w.git.commit_file(&busy, "0.txt", "0\n", "0");
    w.git.push(&busy, &["-q", "origin", "HEAD:refs/heads/main"]);

    // A webhook subscription.
    let sub = w.server.request_json(
        "POST",
        "/api/v1/webhooks",
        &json!({ "url": "https://hooks.example.invalid/backup", "events": ["push"] }),
    );
    assert_eq!(sub.status, 201, "subscribe: {}", sub.describe());
    let sub_id = sub.json()["id"].as_str().expect("id").to_owned();

    let before_busy = ls_remote(&w, &w.server, "busy");
    let expected: Vec<(&str, BTreeMap<String, String>)> = [
        "mirror",
        "mirror+ephemeral",
        "team/app",
        "team/app+ephemeral",
    ]
    .into_iter()
    .map(|n| (n, ls_remote(&w, &w.server, n)))
    .collect();

    // Pushes (new branches of busy) and clones run while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    {
        let (git, url, halt, busy) = (
            Clone::clone(&w.git),
            w.server.git_url("busy"),
            stop.clone(),
            busy.clone(),
        );
        load.push(std::thread::spawn(move || {
            let mut n = 0;
            while !halt.load(Ordering::SeqCst) && n < 200 {
                n += 1;
                git.commit_file(
                    &busy,
                    &format!("{n}.txt"),
                    format!("{n}\n"),
                    &format!("{n}"),
                );
                git.push(&busy, &["-q", &url, &format!("HEAD:refs/heads/b{n}")]);
            }
        }));
        let (git, url, halt) = (
            Clone::clone(&w.git),
            w.server.git_url("team/app"),
            stop.clone(),
        );
        load.push(std::thread::spawn(move || {
            while !halt.load(Ordering::SeqCst) {
                let dir = git.unique_path("load-clone");
                git.clone(&url, &dir, &["--mirror", "-q"]);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let backup_root = scratch_dir("backup");
    let backup = backup_root.path().join("b");
    let out = w
        .server
        .cli_ok(&["backup", "--to", backup.to_str().expect("utf-8")]);
    assert!(
        out.stdout.contains("backed up 3 repositories"),
        "{}",
        out.describe()
    );
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().expect("load thread");
    }

    // The backup directory: a manifest, secrets apart, no index.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(backup.join("MANIFEST.json")).expect("MANIFEST.json"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest["data_format"], 2, "{manifest}");
    let listed = files(&backup);
    assert!(
        listed.contains(Path::new("secrets/keys/signing.pem")),
        "{listed:?}"
    );
    assert!(
        listed.contains(Path::new("secrets/keys/secrets.key")),
        "{listed:?}"
    );
    assert!(listed.contains(Path::new("README.txt")));
    assert!(
        !listed
            .iter()
            .any(|p| p.starts_with("data/index") || p.starts_with("data/keys")),
        "no index, no keys outside secrets/: {listed:?}"
    );

    // Restore into a new data dir and serve it.
    let mut restored = empty_server();
    let out = restored.data_cli(&["restore", "--from", backup.to_str().expect("utf-8")]);
    assert!(out.success(), "restore\n{}", out.describe());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let keys = restored.data_dir().join("keys");
        assert_eq!(mode(&keys), 0o700, "the restored keys dir is private");
        assert_eq!(mode(&keys.join("signing.pem")), 0o600);
        assert_eq!(mode(&keys.join("secrets.key")), 0o600);
        assert_eq!(
            mode(&backup.join("secrets")),
            0o700,
            "the backup's secrets/"
        );
        assert_eq!(mode(&backup.join("secrets/keys/signing.pem")), 0o600);
    }
    restored.restart();

    for (name, refs) in &expected {
        assert_eq!(
            &ls_remote(&w, &restored, name),
            refs,
            "refs of {name} after the restore"
        );
        clone_is_clean(&w, &restored, name);
    }
    let busy_restored = ls_remote(&w, &restored, "busy");
    let busy_live = ls_remote(&w, &w.server, "busy");
    for (r, id) in &before_busy {
        assert_eq!(
            busy_restored.get(r),
            Some(id),
            "busy: {r} existed before the backup"
        );
    }
    for (r, id) in &busy_restored {
        assert_eq!(
            busy_live.get(r),
            Some(id),
            "busy: {r} is a state the server had"
        );
    }
    clone_is_clean(&w, &restored, "busy");
    eprintln!(
        "busy: {} refs before the backup, {} in it, {} after the load",
        before_busy.len(),
        busy_restored.len(),
        busy_live.len()
    );
    assert!(
        busy_live.len() > before_busy.len(),
        "pushes ran during the test"
    );

    // The sealed credential still decrypts: a sync of new upstream commits succeeds.
    let tip = w
        .git
        .commit_file(&seed.work, "later.txt", "later\n", "later");
    seed.publish(&w.git);
    restored.sync_now("mirror");
    assert_eq!(
        ls_remote(&w, &restored, "mirror").get("refs/heads/main"),
        Some(&tip),
        "the restored mirror synced with its stored credential"
    );
    assert_eq!(
        w.upstream.auth_log().last().map(String::as_str),
        Some("alice:pw-backup ok")
    );

    // The webhook subscription is there.
    let list = restored.request("GET", "/api/webhooks", None, &[]);
    assert!(
        list.text().contains(&sub_id),
        "subscription {sub_id} restored: {}",
        list.describe()
    );
    let fsck = {
        restored.stop();
        restored.fsck()
    };
    assert!(fsck.success(), "{}", fsck.describe());
}

#[test]
fn damaged_backups_non_empty_targets_and_non_admin_tokens_are_refused() {
    let w = World::new();
    w.server.create_local("app");
    let work = w.git.unique_path("app");
    w.git.clone(&w.server.git_url("app"), &work, &["-q"]);
    w.git.commit_file(&work, "a.txt", "a\n", "a");
    w.git.push(&work, &["-q", "origin", "HEAD:refs/heads/main"]);

    // Without the admin scope: 403, nothing written.
    let reader = w.server.mint(&[
        "--repo",
        "org",
        "--scopes",
        "git:read,repo:write,org:read",
        "--ttl",
        "600",
    ]);
    let resp = w.server.request(
        "GET",
        "/api/v1/admin/backup",
        None,
        &[("Authorization", &format!("Bearer {reader}"))],
    );
    assert_eq!(resp.status, 403, "{}", resp.describe());
    assert!(resp.json()["error"].is_string(), "{}", resp.describe());
    let refs = w.server.request(
        "GET",
        "/api/v1/admin/refs",
        None,
        &[("Authorization", &format!("Bearer {reader}"))],
    );
    assert_eq!(refs.status, 403, "{}", refs.describe());
    let anon = w
        .server
        .request_anonymous("GET", "/api/v1/admin/backup", None, &[]);
    assert_eq!(anon.status, 401, "{}", anon.describe());
    let root = scratch_dir("backup");
    let denied = root.path().join("denied");
    let out = w.server.cli(&[
        "--token",
        &reader,
        "backup",
        "--to",
        denied.to_str().expect("utf-8"),
    ]);
    assert!(
        !out.success() && out.stderr.contains("403"),
        "{}",
        out.describe()
    );
    assert!(!denied.exists(), "nothing written for a refused backup");

    let backup = root.path().join("b");
    w.server
        .cli_ok(&["backup", "--to", backup.to_str().expect("utf-8")]);
    // A backup into a non-empty directory is refused.
    let out = w
        .server
        .cli(&["backup", "--to", backup.to_str().expect("utf-8")]);
    assert!(
        !out.success() && out.stderr.contains("not empty"),
        "{}",
        out.describe()
    );

    // Restore into a non-empty dir: refused, the dir untouched.
    let busy = root.path().join("busy");
    std::fs::create_dir_all(&busy).expect("mkdir");
    std::fs::write(busy.join("keep.txt"), "mine").expect("write");
    let out = bin_cli(
        root.path(),
        &[
            "--data-dir",
            busy.to_str().expect("utf-8"),
            "restore",
            "--from",
            backup.to_str().expect("utf-8"),
        ],
    );
    assert!(
        !out.success() && out.stderr.contains("not empty"),
        "{}",
        out.describe()
    );
    assert_eq!(files(&busy), BTreeSet::from([PathBuf::from("keep.txt")]));

    // A flipped byte in a pack: refused, naming the file; nothing created.
    let pack = files(&backup)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .expect("a pack in the backup");
    let path = backup.join(&pack);
    let mut bytes = std::fs::read(&path).expect("read pack");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).expect("write pack");
    let target = root.path().join("restored");
    let out = bin_cli(
        root.path(),
        &[
            "--data-dir",
            target.to_str().expect("utf-8"),
            "restore",
            "--from",
            backup.to_str().expect("utf-8"),
        ],
    );
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("damaged") && out.stderr.contains("SHA-256"),
        "a clear message\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains(pack.to_str().expect("utf-8")),
        "naming the file\n{}",
        out.describe()
    );
    assert!(!target.exists(), "nothing restored");
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .expect("read")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no staging dirs left: {leftovers:?}");
}

#[test]
fn export_refs_lists_every_ref_and_import_refs_sets_them_only_if_every_object_exists() {
    let mut w = World::new();
    w.server.create_local("app");
    let work = w.git.unique_path("app");
    w.git.clone(&w.server.git_url("app"), &work, &["-q"]);
    let first = w.git.commit_file(&work, "a.txt", "a\n", "a");
    w.git.push(&work, &["-q", "origin", "HEAD:refs/heads/main"]);
    let second = w.git.commit_file(&work, "b.txt", "b\n", "b");
    w.git.push(&work, &["-q", "origin", "HEAD:refs/heads/main"]);
    w.git.push(
        &work,
        &[
            "-q",
            &w.server.git_url("app+ephemeral"),
            "HEAD:refs/heads/wip",
        ],
    );

    // Export works while the server runs (it reads the journals).
    let out = w.server.data_cli(&["export-refs"]);
    assert!(out.success(), "{}", out.describe());
    let exported = out.stdout.clone();
    let served = w.server.cli_ok(&["export-refs", "--from-server"]);
    assert_eq!(
        served.stdout, exported,
        "the server lists what the journals hold"
    );
    let one = w
        .server
        .cli_ok(&["export-refs", "--from-server", "--repo", "app"]);
    assert_eq!(one.stdout, exported);
    let missing = w
        .server
        .request("GET", "/api/v1/admin/refs?repo=nope", None, &[]);
    assert_eq!(missing.status, 404, "{}", missing.describe());
    for line in [
        format!("app\tdefault\trefs/heads/main\t{second}"),
        "app\tdefault\tHEAD\tref: refs/heads/main".to_owned(),
        format!("app\tephemeral\trefs/heads/wip\t{second}"),
    ] {
        assert!(
            exported.lines().any(|l| l == line),
            "{line:?} in\n{exported}"
        );
    }
    let only = w.server.data_cli(&["export-refs", "--repo", "nope"]);
    assert!(!only.success(), "{}", only.describe());

    // Roll main back and add a branch through import-refs (server stopped).
    w.server.stop();
    let root = scratch_dir("refs");
    let file = root.path().join("refs.txt");
    std::fs::write(
        &file,
        format!(
            "# a comment\napp\tdefault\trefs/heads/main\t{first}\napp\tdefault\trefs/heads/old\t{first}\n"
        ),
    )
    .expect("write");
    let out = w
        .server
        .data_cli(&["import-refs", file.to_str().expect("utf-8")]);
    assert!(out.success(), "{}", out.describe());

    // A listing with a missing object is refused whole: nothing changes.
    let bad = root.path().join("bad.txt");
    std::fs::write(
        &bad,
        format!(
            "app\tdefault\trefs/heads/main\t{second}\napp\tdefault\trefs/heads/ghost\t{}\n",
            "1234567890123456789012345678901234567890"
        ),
    )
    .expect("write");
    let out = w
        .server
        .data_cli(&["import-refs", bad.to_str().expect("utf-8")]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("line 2") && out.stderr.contains("nothing was imported"),
        "{}",
        out.describe()
    );
    for bad_line in [
        "app\tdefault\trefs/heads/main".to_owned(),
        format!("nope\tdefault\trefs/heads/main\t{first}"),
        format!("app\tnowhere\trefs/heads/main\t{first}"),
        format!("app\tdefault\trefs/heads/a..b\t{first}"),
        "app\tdefault\trefs/heads/main\tnot-an-id".to_owned(),
    ] {
        std::fs::write(&bad, format!("{bad_line}\n")).expect("write");
        let out = w
            .server
            .data_cli(&["import-refs", bad.to_str().expect("utf-8")]);
        assert!(!out.success(), "{bad_line:?} refused\n{}", out.describe());
        assert!(out.stderr.contains("line 1"), "{}", out.describe());
    }

    w.server.restart();
    let refs = ls_remote(&w, &w.server, "app");
    assert_eq!(refs.get("refs/heads/main"), Some(&first), "{refs:?}");
    assert_eq!(refs.get("refs/heads/old"), Some(&first), "{refs:?}");
    assert!(!refs.contains_key("refs/heads/ghost"), "{refs:?}");
    let eph = ls_remote(&w, &w.server, "app+ephemeral");
    assert_eq!(
        eph.get("refs/heads/wip"),
        Some(&second),
        "untouched: {eph:?}"
    );
    clone_is_clean(&w, &w.server, "app");

    // Recovery: the journal and the index are lost, the packs survived. The export taken
    // earlier brings the refs back once --adopt-packs has cataloged the packs again.
    w.server.stop();
    let data = w.server.data_dir().to_owned();
    std::fs::remove_dir_all(data.join("index")).expect("remove the index");
    let repo_dir = std::fs::read_dir(data.join("repos"))
        .expect("repos")
        .flatten()
        .next()
        .expect("one repo")
        .path();
    std::fs::rename(
        repo_dir.join("refs.journal"),
        root.path().join("damaged.journal"),
    )
    .expect("move the journal aside");
    let listing = root.path().join("exported.txt");
    std::fs::write(&listing, &exported).expect("write");
    let out = w
        .server
        .data_cli(&["import-refs", listing.to_str().expect("utf-8")]);
    assert!(
        !out.success() && out.stderr.contains("nothing was imported"),
        "without --adopt-packs the objects are not cataloged\n{}",
        out.describe()
    );
    let out = w.server.data_cli(&[
        "import-refs",
        "--adopt-packs",
        listing.to_str().expect("utf-8"),
    ]);
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("adopted pack-"), "{}", out.describe());
    let fsck = w.server.fsck();
    assert!(
        fsck.success(),
        "fsck after the recovery\n{}",
        fsck.describe()
    );
    w.server.restart();
    let refs = ls_remote(&w, &w.server, "app");
    assert_eq!(refs.get("refs/heads/main"), Some(&second), "{refs:?}");
    assert_eq!(refs.get("HEAD"), Some(&second), "{refs:?}");
    let eph = ls_remote(&w, &w.server, "app+ephemeral");
    assert_eq!(eph.get("refs/heads/wip"), Some(&second), "{eph:?}");
    clone_is_clean(&w, &w.server, "app");
    clone_is_clean(&w, &w.server, "app+ephemeral");
}
