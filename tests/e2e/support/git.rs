//! `Git`: the real `git` binary in a hermetic environment, and `seed_repo`.
//!
//! Every command runs with a cleared environment: `HOME` is a temp dir with its own `.gitconfig`,
//! no system config, no terminal prompts, the C locale (so messages can be matched), and fixed
//! author/committer identities and dates. Dates only move when a commit helper calls [`Git::tick`],
//! one day per commit from 2020-01-01, so a test that commits the same things gets the same ids.
//!
//! `Git` is cheap to clone and `Send`: clones share the scratch dir and the clock, and
//! [`Git::v0`]/[`Git::v2`]/[`Git::env`] return variants for one call chain.
//!
//! Helpers that must succeed (`run`, `clone`, `commit_file`, ...) panic with the command line,
//! its exit status, stdout and stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{COMMAND_TIMEOUT, Out, Upstream, run_command, run_command_with_stdin, scratch_dir};

/// 2020-01-01T00:00:00Z: the first commit of every test is dated one day later.
pub const EPOCH: u64 = 1_577_836_800;
/// How far [`Git::tick`] moves the clock: one day, so `--shallow-since` has room to cut.
pub const TICK_SECS: u64 = 86_400;

/// A hermetic `git` runner with its own scratch dir (named after the running test).
#[derive(Clone)]
pub struct Git {
    inner: Arc<Inner>,
    protocol: Option<u8>,
    env: Vec<(OsString, OsString)>,
}

struct Inner {
    scratch: tempfile::TempDir,
    home: PathBuf,
    /// Seconds since the epoch used for GIT_AUTHOR_DATE/GIT_COMMITTER_DATE.
    clock: AtomicU64,
    /// Makes `unique_path` names unique.
    counter: AtomicUsize,
}

impl Git {
    pub fn new() -> Git {
        let scratch = scratch_dir("git");
        let home = scratch.path().join("home");
        std::fs::create_dir_all(&home).expect("create HOME for git");
        std::fs::write(home.join(".gitconfig"), GITCONFIG).expect("write .gitconfig");
        Git {
            inner: Arc::new(Inner {
                scratch,
                home,
                clock: AtomicU64::new(EPOCH),
                counter: AtomicUsize::new(0),
            }),
            protocol: None,
            env: Vec::new(),
        }
    }

    /// The same runner, passing `-c protocol.version=0` to every command.
    pub fn v0(&self) -> Git {
        self.protocol(0)
    }

    /// The same runner, passing `-c protocol.version=2` to every command.
    pub fn v2(&self) -> Git {
        self.protocol(2)
    }

    pub fn protocol(&self, version: u8) -> Git {
        Git {
            protocol: Some(version),
            ..Clone::clone(self)
        }
    }

    /// The same runner with one more environment variable (e.g. `GIT_TRACE_PACKFILE`).
    pub fn env(&self, key: impl Into<OsString>, value: impl Into<OsString>) -> Git {
        let mut git = Clone::clone(self);
        git.env.push((key.into(), value.into()));
        git
    }

    /// The scratch dir all of this test's repos live in.
    pub fn scratch(&self) -> &Path {
        self.inner.scratch.path()
    }

    /// `scratch/<name>` (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.scratch().join(name)
    }

    /// `scratch/<prefix>-<n>` with a fresh `n` (not created).
    pub fn unique_path(&self, prefix: &str) -> PathBuf {
        let n = self.inner.counter.fetch_add(1, Ordering::SeqCst);
        self.scratch().join(format!("{prefix}-{n}"))
    }

    /// The HOME all commands run with.
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// Moves the clock one day ahead; returns the new time (seconds since the epoch).
    pub fn tick(&self) -> u64 {
        self.inner.clock.fetch_add(TICK_SECS, Ordering::SeqCst) + TICK_SECS
    }

    /// The time the next commands are dated with.
    pub fn now(&self) -> u64 {
        self.inner.clock.load(Ordering::SeqCst)
    }

    /// A `git` command in `dir` with the hermetic environment and this runner's options.
    pub fn command(&self, dir: &Path) -> Command {
        let mut cmd = Command::new("git");
        hermetic_env(&mut cmd, self.home());
        let date = format!("{} +0000", self.now());
        cmd.env("GIT_AUTHOR_NAME", "E2E Author")
            .env("GIT_AUTHOR_EMAIL", "author@e2e.invalid")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_NAME", "E2E Committer")
            .env("GIT_COMMITTER_EMAIL", "committer@e2e.invalid")
            .env("GIT_COMMITTER_DATE", &date);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(v) = self.protocol {
            cmd.arg("-c").arg(format!("protocol.version={v}"));
        }
        cmd.current_dir(dir);
        cmd
    }

    /// Runs `git args` in `dir`, whatever the outcome.
    pub fn try_run(&self, dir: &Path, args: &[&str]) -> Out {
        let mut cmd = self.command(dir);
        cmd.args(args);
        run_command(&mut cmd, COMMAND_TIMEOUT)
    }

    /// Runs `git args` in `dir` and asserts it succeeds.
    #[track_caller]
    pub fn run(&self, dir: &Path, args: &[&str]) -> Out {
        let out = self.try_run(dir, args);
        assert!(out.success(), "git failed\n{}", out.describe());
        out
    }

    /// Runs `git args` in `dir` and asserts it fails.
    #[track_caller]
    pub fn run_fail(&self, dir: &Path, args: &[&str]) -> Out {
        let out = self.try_run(dir, args);
        assert!(
            !out.success(),
            "git was expected to fail but succeeded\n{}",
            out.describe()
        );
        out
    }

    /// Runs `git args` in `dir` with stdin read from `input`, asserting success.
    #[track_caller]
    pub fn run_with_stdin(&self, dir: &Path, args: &[&str], input: &Path) -> Out {
        let mut cmd = self.command(dir);
        cmd.args(args);
        let out = run_command_with_stdin(&mut cmd, Some(input), COMMAND_TIMEOUT);
        assert!(out.success(), "git failed\n{}", out.describe());
        out
    }

    /// `git clone [extra] url dest`, asserting success.
    #[track_caller]
    pub fn clone(&self, url: &str, dest: &Path, extra: &[&str]) -> Out {
        let dest = dest.to_str().expect("utf-8 path");
        let mut args = vec!["clone"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[url, dest]);
        self.run(self.scratch(), &args)
    }

    /// `git init -b main` of a working repo at `scratch/<name>`.
    pub fn init(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        let d = dir.to_str().expect("utf-8 path");
        self.run(self.scratch(), &["init", "-q", "-b", "main", d]);
        dir
    }

    /// Writes `contents` to `work/path`, commits it (one tick later), returns the commit id.
    #[track_caller]
    pub fn commit_file(
        &self,
        work: &Path,
        path: &str,
        contents: impl AsRef<[u8]>,
        msg: &str,
    ) -> String {
        let file = work.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).expect("create parent dirs");
        }
        std::fs::write(&file, contents).expect("write file to commit");
        self.tick();
        self.run(work, &["add", "--", path]);
        self.run(work, &["commit", "-q", "-m", msg]);
        self.rev_parse(work, "HEAD")
    }

    /// `git push [args]` from `work`, asserting success.
    #[track_caller]
    pub fn push(&self, work: &Path, args: &[&str]) -> Out {
        let mut all = vec!["push"];
        all.extend_from_slice(args);
        self.run(work, &all)
    }

    #[track_caller]
    pub fn rev_parse(&self, dir: &Path, rev: &str) -> String {
        self.run(dir, &["rev-parse", "--verify", "--end-of-options", rev])
            .stdout
            .trim()
            .to_owned()
    }

    /// Every ref of the repo at `dir` (`refname -> object id`), plus `HEAD`: `"ref: <target>"` when it
    /// is a symref (born or unborn), else the id it points at.
    #[track_caller]
    pub fn refs(&self, dir: &Path) -> BTreeMap<String, String> {
        let out = self.run(dir, &["for-each-ref", "--format=%(objectname) %(refname)"]);
        let mut refs = BTreeMap::new();
        for line in out.stdout.lines() {
            let (oid, name) = line.split_once(' ').expect("`<oid> <refname>` lines");
            refs.insert(name.to_owned(), oid.to_owned());
        }
        let sym = self.try_run(dir, &["symbolic-ref", "-q", "HEAD"]);
        if sym.success() {
            refs.insert("HEAD".to_owned(), format!("ref: {}", sym.stdout.trim()));
        } else {
            let head = self.try_run(dir, &["rev-parse", "-q", "--verify", "HEAD"]);
            if head.success() {
                refs.insert("HEAD".to_owned(), head.stdout.trim().to_owned());
            }
        }
        refs
    }

    /// What a server serves of `dir`: `refs/heads/*`, `refs/tags/*` and `HEAD`.
    #[track_caller]
    pub fn served_refs(&self, dir: &Path) -> BTreeMap<String, String> {
        self.refs(dir)
            .into_iter()
            .filter(|(k, _)| {
                k == "HEAD" || k.starts_with("refs/heads/") || k.starts_with("refs/tags/")
            })
            .collect()
    }

    /// The refs of a normal (non-bare) clone, renamed to what they say about the remote:
    /// `refs/remotes/origin/X -> refs/heads/X`, tags as they are, and `HEAD` from
    /// `refs/remotes/origin/HEAD`. Comparable with [`Git::served_refs`] of the upstream.
    #[track_caller]
    pub fn remote_view(&self, clone: &Path) -> BTreeMap<String, String> {
        let mut view = BTreeMap::new();
        for (name, oid) in self.refs(clone) {
            if let Some(tag) = name.strip_prefix("refs/tags/") {
                view.insert(format!("refs/tags/{tag}"), oid);
            } else if let Some(branch) = name.strip_prefix("refs/remotes/origin/")
                && branch != "HEAD"
            {
                view.insert(format!("refs/heads/{branch}"), oid);
            }
        }
        let head = self.try_run(clone, &["symbolic-ref", "-q", "refs/remotes/origin/HEAD"]);
        if head.success() {
            let target = head
                .stdout
                .trim()
                .replacen("refs/remotes/origin/", "refs/heads/", 1);
            view.insert("HEAD".to_owned(), format!("ref: {target}"));
        }
        view
    }

    /// `git fsck --strict` must pass.
    #[track_caller]
    pub fn fsck_strict(&self, dir: &Path) {
        let out = self.try_run(dir, &["fsck", "--strict", "--no-progress"]);
        assert!(
            out.success(),
            "git fsck --strict failed in {}\n{}",
            dir.display(),
            out.describe()
        );
    }

    /// `git rev-list --objects NEW... --not OLD...`: the object ids only.
    #[track_caller]
    pub fn rev_list_objects(&self, dir: &Path, new: &[&str], not_old: &[&str]) -> BTreeSet<String> {
        let mut args = vec!["rev-list", "--objects"];
        args.extend_from_slice(new);
        if !not_old.is_empty() {
            args.push("--not");
            args.extend_from_slice(not_old);
        }
        let out = self.run(dir, &args);
        out.stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// `git rev-list --count REV`.
    #[track_caller]
    pub fn count_commits(&self, dir: &Path, rev: &str) -> usize {
        let out = self.run(dir, &["rev-list", "--count", rev]);
        out.stdout
            .trim()
            .parse()
            .expect("rev-list --count prints a number")
    }

    /// `git ls-remote --symref URL`, asserting success.
    #[track_caller]
    pub fn ls_remote(&self, url: &str) -> String {
        self.run(self.scratch(), &["ls-remote", "--symref", url])
            .stdout
    }

    /// The ids of the objects in a pack captured with `GIT_TRACE_PACKFILE=<packfile>` by a fetch into
    /// `repo`. The pack is indexed (with `--fix-thin`, bases looked up in `repo`) in a scratch repo;
    /// the bases that thin-pack completion appends are left out: only the first `n` entries by offset
    /// count, `n` being the object count in the pack header. A missing file means no pack was sent:
    /// the empty set. Only the first pack in the file is read.
    #[track_caller]
    pub fn received_objects(&self, packfile: &Path, repo: &Path) -> BTreeSet<String> {
        self.received_pack(packfile, repo).0
    }

    /// [`Git::received_objects`], plus how many bases thin-pack completion appended (left out).
    #[track_caller]
    pub fn received_pack(&self, packfile: &Path, repo: &Path) -> (BTreeSet<String>, usize) {
        let Ok(bytes) = std::fs::read(packfile) else {
            return (BTreeSet::new(), 0);
        };
        assert!(
            bytes.len() >= 32 && bytes.starts_with(b"PACK"),
            "{} is not a pack (len {})",
            packfile.display(),
            bytes.len()
        );
        let count = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;

        let scratch = self.unique_path("index-pack");
        let s = scratch.to_str().expect("utf-8 path");
        self.run(self.scratch(), &["init", "-q", "--bare", s]);
        let objects = if repo.join(".git").is_dir() {
            repo.join(".git").join("objects")
        } else {
            repo.join("objects")
        };
        std::fs::write(
            scratch.join("objects/info/alternates"),
            format!(
                "{}\n",
                objects.canonicalize().expect("objects dir").display()
            ),
        )
        .expect("write alternates");
        let out = self.run_with_stdin(&scratch, &["index-pack", "--stdin", "--fix-thin"], packfile);
        let hash = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("pack\t"))
            .unwrap_or_else(|| panic!("index-pack printed no pack hash\n{}", out.describe()))
            .trim()
            .to_owned();
        let idx = scratch.join(format!("objects/pack/pack-{hash}.idx"));
        let index = self.run_with_stdin(&scratch, &["show-index"], &idx);
        let mut entries: Vec<(u64, String)> = index
            .stdout
            .lines()
            .map(|l| {
                let mut parts = l.split_whitespace();
                let offset = parts
                    .next()
                    .and_then(|o| o.parse().ok())
                    .expect("show-index offset");
                let oid = parts.next().expect("show-index oid").to_owned();
                (offset, oid)
            })
            .collect();
        entries.sort();
        assert!(
            entries.len() >= count,
            "index has {} entries but the pack header says {count}",
            entries.len()
        );
        let appended = entries.len() - count;
        let objects = entries
            .into_iter()
            .take(count)
            .map(|(_, oid)| oid)
            .collect();
        (objects, appended)
    }
}

impl Default for Git {
    fn default() -> Self {
        Git::new()
    }
}

const GITCONFIG: &str = "\
[user]
\tname = E2E Tester
\temail = tester@e2e.invalid
[init]
\tdefaultBranch = main
[advice]
\tdetachedHead = false
\tskippedCherryPicks = false
[gc]
\tauto = 0
[maintenance]
\tauto = false
[core]
\tautocrlf = false
[safe]
\tdirectory = *
[protocol]
\tversion = 2
";

/// Clears the environment of `cmd` down to what git needs, with `home` as HOME: no system or user
/// config from outside, no prompts, C locale.
pub fn hermetic_env(cmd: &mut Command, home: &Path) {
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "")
        .env("SSH_ASKPASS", "")
        .env("LC_ALL", "C")
        .env("LANG", "C");
    if let Some(tmp) = std::env::var_os("TMPDIR") {
        cmd.env("TMPDIR", tmp);
    }
}

/// A seeded upstream repo and the working repo it was pushed from.
///
/// History (one day per commit):
/// ```text
/// c1 ── c2 ── c3            main   (HEAD)
///  │     └── f1             feature/x
///  v1.0 (annotated tag on c1), light (lightweight tag on c2)
/// ```
/// Files: `README.md`, `src/lib.rs` (grows every commit: deltas), `big.bin` (4 KiB, incompressible,
/// so `blob:limit=1k` leaves it out), `docs/guide.md` (from c3), `feature.txt` (on feature/x).
/// `c3` and its `src/lib.rs` blob are reachable only from `main`: rewrite `main` to make them
/// unreachable.
pub struct Seed {
    pub name: String,
    /// The working repo (checked out on `main`).
    pub work: PathBuf,
    /// The upstream's bare repo.
    pub bare: PathBuf,
    /// The upstream URL (`git http-backend`).
    pub url: String,
    pub c1: String,
    pub c2: String,
    pub c3: String,
    pub feature: String,
}

impl Seed {
    /// Makes the upstream's heads and tags exactly the working repo's: force, prune, via the file
    /// path (no HTTP request to the upstream).
    #[track_caller]
    pub fn publish(&self, git: &Git) {
        publish(git, &self.work, &self.bare);
    }
}

/// Pushes every head and tag of `work` to the bare repo at `bare`, forcing and pruning.
#[track_caller]
pub fn publish(git: &Git, work: &Path, bare: &Path) {
    let bare = bare.to_str().expect("utf-8 path");
    git.push(
        work,
        &[
            "-q",
            "--force",
            "--prune",
            bare,
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ],
    );
    // The bare repo's HEAD follows the working repo's branch, as a forge's default branch would.
    let head = git
        .run(work, &["symbolic-ref", "HEAD"])
        .stdout
        .trim()
        .to_owned();
    git.run(Path::new(bare), &["symbolic-ref", "HEAD", &head]);
}

/// Creates `name` on the upstream and fills it with the [`Seed`] history.
#[track_caller]
pub fn seed_repo(git: &Git, upstream: &Upstream, name: &str) -> Seed {
    let bare = upstream.create_bare(name);
    let work = git.init(&format!("seed-{}", name.replace('/', "_")));
    let c1 = {
        std::fs::write(work.join("README.md"), "# seeded repo\n").expect("write README");
        std::fs::write(work.join("big.bin"), pseudo_random_bytes(4096, 7)).expect("write big.bin");
        git.run(&work, &["add", "README.md", "big.bin"]);
        git.commit_file(&work, "src/lib.rs", lib_rs(1), "c1: initial import")
    };
    git.run(&work, &["tag", "-a", "v1.0", "-m", "release 1.0", &c1]);
    let c2 = git.commit_file(&work, "src/lib.rs", lib_rs(2), "c2: grow lib");
    git.run(&work, &["tag", "light", &c2]);
    git.run(&work, &["branch", "feature/x", &c2]);
    let c3 = {
        std::fs::create_dir_all(work.join("docs")).expect("mkdir docs");
        std::fs::write(work.join("docs/guide.md"), "# guide\n\nread me\n").expect("write guide");
        git.run(&work, &["add", "docs/guide.md"]);
        git.commit_file(&work, "src/lib.rs", lib_rs(3), "c3: grow lib, add guide")
    };
    git.run(&work, &["switch", "-q", "feature/x"]);
    let feature = git.commit_file(&work, "feature.txt", "feature work\n", "f1: feature");
    git.run(&work, &["switch", "-q", "main"]);
    publish(git, &work, &bare);
    Seed {
        name: name.to_owned(),
        work,
        bare,
        url: upstream.url(name),
        c1,
        c2,
        c3,
        feature,
    }
}

/// `src/lib.rs` at version `n`: `40 * n` lines, each version a prefix-extension of the last (so
/// packs carry deltas).
pub fn lib_rs(n: usize) -> String {
    (0..40 * n)
        .map(|i| format!("pub fn f{i}() -> u32 {{ {i} }} // version {}\n", i / 40 + 1))
        .collect()
}

/// `len` deterministic, incompressible bytes (xorshift64 from `seed`).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}
