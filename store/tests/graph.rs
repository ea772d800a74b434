//! Commit-graph layers written by `codestorage_store::graph`, checked against real git:
//! `git commit-graph verify` must accept them, git must walk history the same with and without them,
//! and lookups must return what git says about each commit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use codestorage_store::graph::{self, CommitGraph, Error, GraphCommit};
use gix_hash::ObjectId;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A git repository in a temp dir, driven by the `git` binary with pinned identities and config.
struct Repo {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Repo {
    fn new() -> Self {
        let repo = Repo {
            dir: tempfile::tempdir().expect("temp dir for the repository"),
            home: tempfile::tempdir().expect("temp dir for HOME"),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        for (key, value) in [
            ("core.commitGraph", "true"),
            ("gc.auto", "0"),
            ("gc.writeCommitGraph", "false"),
            ("fetch.writeCommitGraph", "false"),
        ] {
            repo.git(&["config", key, value]);
        }
        repo
    }

    fn objects(&self) -> PathBuf {
        self.dir.path().join(".git/objects")
    }

    fn command(&self, time: i64, args: &[&str]) -> Output {
        let date = format!("@{time} +0000");
        Command::new("git")
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "A U Thor")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "C O Mitter")
            .env("GIT_COMMITTER_EMAIL", "committer@example.com")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .expect("git runs")
    }

    /// Run git at a fixed time, asserting success; returns trimmed stdout.
    fn git_at(&self, time: i64, args: &[&str]) -> String {
        let out = self.command(time, args);
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn git(&self, args: &[&str]) -> String {
        self.git_at(1_000_000_000, args)
    }

    /// Commit a change to `file` at `time`, returning the commit id.
    fn commit(&self, file: &str, time: i64) -> String {
        std::fs::write(self.dir.path().join(file), format!("{file} at {time}\n"))
            .expect("write work tree file");
        self.git_at(time, &["add", file]);
        self.git_at(time, &["commit", "-q", "-m", &format!("{file} at {time}")]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Commits in `range` as git parses them.
    fn commits(&self, range: &str) -> Vec<GraphCommit> {
        let log = self.git(&["log", "--format=%H %T %ct %P", range]);
        log.lines()
            .map(|line| {
                let mut fields = line.split_whitespace();
                let mut id = || ObjectId::from_hex(fields.next().unwrap_or_default().as_bytes());
                let (id, tree) = (id().expect("commit id"), id().expect("tree id"));
                let commit_time = fields
                    .next()
                    .and_then(|t| t.parse().ok())
                    .expect("commit time");
                let parents = fields
                    .map(|p| ObjectId::from_hex(p.as_bytes()).expect("parent id"))
                    .collect();
                GraphCommit {
                    id,
                    tree,
                    parents,
                    commit_time,
                }
            })
            .collect()
    }

    /// Outputs of history walks, first without any commit-graph, then with ours.
    fn walks_without_and_with_graph(&self, args: &[&[&str]]) -> (Vec<String>, Vec<String>) {
        let run = |graph: &str| -> Vec<String> {
            args.iter()
                .map(|a| self.git(&[&["-c", &format!("core.commitGraph={graph}")][..], a].concat()))
                .collect()
        };
        (run("false"), run("true"))
    }

    fn assert_verified(&self) {
        let out = self.command(0, &["commit-graph", "verify", "--no-progress"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "git commit-graph verify: {stderr}"
        );
        let info = self.objects().join("info");
        let gix = gix_commitgraph::at(info.join("commit-graphs"), gix_hash::Kind::Sha1, None)
            .expect("gix opens chain");
        gix.verify_integrity(|_| Ok::<_, std::io::Error>(()))
            .expect("gix verifies chain");
    }
}

/// Topological levels computed the slow, obvious way.
fn levels(commits: &[GraphCommit]) -> HashMap<ObjectId, u32> {
    fn level(
        id: ObjectId,
        parents: &HashMap<ObjectId, Vec<ObjectId>>,
        memo: &mut HashMap<ObjectId, u32>,
    ) -> u32 {
        if let Some(&l) = memo.get(&id) {
            return l;
        }
        let l = 1 + parents[&id]
            .iter()
            .map(|&p| level(p, parents, memo))
            .max()
            .unwrap_or(0);
        memo.insert(id, l);
        l
    }
    let parents = commits.iter().map(|c| (c.id, c.parents.clone())).collect();
    let mut memo = HashMap::new();
    for c in commits {
        level(c.id, &parents, &mut memo);
    }
    memo
}

fn graph_files(objects: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(objects.join("info/commit-graphs"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const T0: i64 = 1_000_000_000;

/// Merges, an octopus, clock skew (a child older than its parent) and a parent far in the future,
/// so that corrected commit dates need both GDA2 offsets and a GDO2 overflow entry.
fn build_history(repo: &Repo) {
    repo.commit("a", T0);
    repo.commit("a", T0 + 10);
    repo.git(&["checkout", "-q", "-b", "b", "HEAD~1"]);
    repo.commit("b", T0 + 20);
    repo.commit("b", T0 + 30);
    repo.git(&["checkout", "-q", "main"]);
    repo.git_at(T0 + 40, &["merge", "-q", "--no-ff", "-m", "merge b", "b"]);
    for (i, branch) in ["x", "y", "z"].into_iter().enumerate() {
        repo.git(&["checkout", "-q", "-b", branch, "main"]);
        repo.commit(branch, T0 + 50 + 10 * i as i64);
    }
    repo.git(&["checkout", "-q", "main"]);
    repo.commit("a", T0 + 80);
    repo.git_at(
        T0 + 90,
        &["merge", "-q", "--no-ff", "-m", "octopus", "x", "y", "z"],
    );
    repo.commit("a", T0 - 1000);
    repo.commit("a", T0 + 100);
    repo.git(&["tag", "L1"]);

    repo.git(&["checkout", "-q", "--orphan", "r"]);
    repo.git(&["rm", "-q", "-rf", "."]);
    repo.commit("r", T0 + 200);
    repo.git(&["checkout", "-q", "main"]);
    repo.commit("a", T0 + 210);
    repo.git_at(
        T0 + 220,
        &[
            "merge",
            "-q",
            "--allow-unrelated-histories",
            "-m",
            "merge r",
            "r",
        ],
    );
    repo.commit("a", 4_000_000_000);
    repo.commit("a", T0 + 230);
    repo.git(&["tag", "L2"]);

    repo.commit("a", T0 + 300);
    repo.commit("a", T0 + 310);
}

const WALKS: &[&[&str]] = &[
    &["rev-list", "--count", "main"],
    &["log", "--topo-order", "--format=%H %P", "main"],
    &["log", "--date-order", "--format=%H", "main"],
    &["log", "--graph", "--oneline", "main"],
    &["rev-list", "--count", "L1..main"],
    &["merge-base", "--all", "x", "b"],
    &["merge-base", "--all", "main", "r"],
    &["merge-base", "--octopus", "x", "y", "z"],
    &["tag", "--contains", "x"],
    &["branch", "--contains", "b"],
];

#[test]
fn three_layers_are_verified_by_git_and_walk_like_no_graph() -> TestResult {
    let repo = Repo::new();
    build_history(&repo);
    let objects = repo.objects();
    let ranges = ["L1", "L1..L2", "L2..main"];
    let sizes: Vec<usize> = ranges.iter().map(|r| repo.commits(r).len()).collect();
    assert_eq!(
        sizes,
        [12, 5, 2],
        "history shape (keeps the layers unmerged)"
    );

    for (i, range) in ranges.into_iter().enumerate() {
        let path = graph::append_layer(&objects, repo.commits(range))?.expect("a layer is written");
        assert!(path.is_file(), "{} exists", path.display());
        let graph = CommitGraph::open(&objects)?.expect("chain exists");
        assert_eq!(
            graph.num_layers(),
            i + 1,
            "one layer per append, none merged"
        );
        repo.assert_verified();
    }
    let chain = std::fs::read_to_string(objects.join("info/commit-graphs/commit-graph-chain"))?;
    assert_eq!(chain.lines().count(), 3, "chain: {chain}");

    let (without, with) = repo.walks_without_and_with_graph(WALKS);
    assert_eq!(without, with, "walks differ with the commit-graph");

    let all = repo.commits("main");
    let expected_levels = levels(&all);
    let graph = CommitGraph::open(&objects)?.expect("chain exists");
    assert_eq!(graph.num_commits() as usize, all.len());
    for c in &all {
        let entry = graph.lookup(&c.id).expect("every commit is in the graph");
        assert_eq!(entry.parents, c.parents, "parents of {}", c.id);
        assert_eq!(entry.tree, c.tree, "tree of {}", c.id);
        assert_eq!(entry.commit_time, c.commit_time, "time of {}", c.id);
        assert_eq!(
            entry.generation, expected_levels[&c.id],
            "generation of {}",
            c.id
        );
    }
    let octopus = all
        .iter()
        .find(|c| c.parents.len() == 4)
        .expect("an octopus merge");
    assert_eq!(graph.lookup(&octopus.id).map(|e| e.parents.len()), Some(4));
    assert!(
        graph
            .lookup(&ObjectId::null(gix_hash::Kind::Sha1))
            .is_none()
    );
    Ok(())
}

#[test]
fn a_missing_parent_is_an_error_and_writes_nothing() -> TestResult {
    let repo = Repo::new();
    let first = repo.commit("a", T0);
    repo.commit("a", T0 + 1);
    repo.commit("a", T0 + 2);
    let objects = repo.objects();

    let err = graph::append_layer(&objects, repo.commits("HEAD~1..HEAD"))
        .expect_err("parent not in graph");
    assert!(matches!(err, Error::MissingParent { .. }), "{err}");
    assert_eq!(
        graph_files(&objects),
        Vec::<String>::new(),
        "nothing written"
    );
    assert!(CommitGraph::open(&objects)?.is_none());

    graph::append_layer(&objects, repo.commits(&first))?;
    let before = graph_files(&objects);
    let chain = std::fs::read(objects.join("info/commit-graphs/commit-graph-chain"))?;
    let err = graph::append_layer(&objects, repo.commits("HEAD~1..HEAD"))
        .expect_err("parent not in graph");
    match err {
        Error::MissingParent { commit, parent } => {
            assert_eq!(commit.to_string(), repo.git(&["rev-parse", "HEAD"]));
            assert_eq!(parent.to_string(), repo.git(&["rev-parse", "HEAD~1"]));
        }
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(
        graph_files(&objects),
        before,
        "no new files, no lock left behind"
    );
    assert_eq!(
        std::fs::read(objects.join("info/commit-graphs/commit-graph-chain"))?,
        chain
    );
    repo.assert_verified();
    Ok(())
}

#[test]
fn commits_already_in_the_graph_or_listed_twice_are_rejected() -> TestResult {
    let repo = Repo::new();
    repo.commit("a", T0);
    let objects = repo.objects();
    let commits = repo.commits("HEAD");
    let twice = [commits.clone(), commits.clone()].concat();
    assert!(matches!(
        graph::append_layer(&objects, twice),
        Err(Error::DuplicateCommit { .. })
    ));
    graph::append_layer(&objects, commits.clone())?;
    assert!(matches!(
        graph::append_layer(&objects, commits),
        Err(Error::AlreadyPresent { .. })
    ));
    Ok(())
}

#[test]
fn an_empty_layer_writes_nothing() -> TestResult {
    let repo = Repo::new();
    assert_eq!(graph::append_layer(&repo.objects(), Vec::new())?, None);
    assert!(!repo.objects().join("info/commit-graphs").exists());
    Ok(())
}

#[test]
fn many_small_appends_merge_into_few_layers() -> TestResult {
    let repo = Repo::new();
    let objects = repo.objects();
    let mut max_layers = 0;
    for i in 0..40 {
        repo.commit("a", T0 + i);
        let range = if i == 0 { "HEAD" } else { "HEAD~1..HEAD" };
        graph::append_layer(&objects, repo.commits(range))?;
        let graph = CommitGraph::open(&objects)?.expect("chain exists");
        assert_eq!(graph.num_commits(), i as u32 + 1);
        max_layers = max_layers.max(graph.num_layers());
        let files = graph_files(&objects);
        assert_eq!(
            files.len(),
            graph.num_layers() + 1,
            "merged layers are deleted: {files:?}"
        );
    }
    assert!(
        max_layers <= 6,
        "chain stays logarithmic, got {max_layers} layers"
    );
    repo.assert_verified();
    let (without, with) =
        repo.walks_without_and_with_graph(&[&["log", "--topo-order", "--format=%H"]]);
    assert_eq!(without, with);
    Ok(())
}

#[test]
fn layers_interoperate_with_git_written_layers() -> TestResult {
    let repo = Repo::new();
    build_history(&repo);
    let objects = repo.objects();
    // git writes the bottom layer ...
    repo.git(&[
        "commit-graph",
        "write",
        "--no-progress",
        "--split",
        "--reachable",
    ]);
    repo.commit("a", T0 + 400);
    // ... we append on top of it ...
    graph::append_layer(&objects, repo.commits("HEAD~1..HEAD"))?;
    assert_eq!(
        CommitGraph::open(&objects)?.map(|g| g.num_layers()),
        Some(2)
    );
    repo.assert_verified();
    // ... and git appends on top of ours.
    repo.commit("a", T0 + 500);
    repo.git(&[
        "commit-graph",
        "write",
        "--no-progress",
        "--split=no-merge",
        "--reachable",
    ]);
    repo.assert_verified();
    let graph = CommitGraph::open(&objects)?.expect("chain exists");
    assert_eq!(graph.num_layers(), 3);
    let all = repo.commits("HEAD");
    let expected_levels = levels(&all);
    for c in &all {
        let entry = graph.lookup(&c.id).expect("in graph");
        assert_eq!(
            (entry.parents.as_slice(), entry.generation),
            (c.parents.as_slice(), expected_levels[&c.id])
        );
    }
    Ok(())
}

#[test]
fn a_stale_lock_blocks_appends_until_removed() -> TestResult {
    let repo = Repo::new();
    repo.commit("a", T0);
    let objects = repo.objects();
    std::fs::create_dir_all(objects.join("info/commit-graphs"))?;
    std::fs::write(
        objects.join("info/commit-graphs/commit-graph-chain.lock"),
        b"",
    )?;
    let err = graph::append_layer(&objects, repo.commits("HEAD")).expect_err("locked");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(graph::remove_stale_lock(&objects)?, "there was a lock");
    assert!(!graph::remove_stale_lock(&objects)?, "it is gone");
    graph::append_layer(&objects, repo.commits("HEAD"))?;
    repo.assert_verified();
    Ok(())
}

#[test]
fn remove_all_leaves_no_graph_behind_and_clears_a_stale_lock() -> TestResult {
    let repo = Repo::new();
    let objects = repo.objects();
    graph::remove_all(&objects)?;
    repo.commit("a", T0);
    graph::append_layer(&objects, repo.commits("HEAD"))?;
    std::fs::write(
        objects.join("info/commit-graphs/commit-graph-chain.lock"),
        b"",
    )?;
    graph::remove_all(&objects)?;
    assert!(!objects.join("info/commit-graphs").exists());
    assert!(CommitGraph::open(&objects)?.is_none());
    assert_eq!(repo.git(&["rev-list", "--count", "HEAD"]), "1");
    graph::append_layer(&objects, repo.commits("HEAD"))?;
    repo.assert_verified();
    Ok(())
}

#[test]
fn files_left_by_a_crash_are_swept_by_the_next_append() -> TestResult {
    let repo = Repo::new();
    let objects = repo.objects();
    repo.commit("a", T0);
    graph::append_layer(&objects, repo.commits("HEAD"))?;
    let dir = objects.join("info/commit-graphs");
    let orphan = format!("graph-{}.graph", "0".repeat(40));
    std::fs::write(dir.join(&orphan), b"left by a crash")?;
    std::fs::write(dir.join("tmp_graph_123"), b"left by a crash")?;
    repo.commit("a", T0 + 1);
    graph::append_layer(&objects, repo.commits("HEAD~1..HEAD"))?;
    let files = graph_files(&objects);
    assert!(
        !files.contains(&orphan) && !files.contains(&"tmp_graph_123".to_owned()),
        "{files:?}"
    );
    repo.assert_verified();
    Ok(())
}
