//! `codestorage-bench load`: concurrency against one codestorage on loopback, bounded in time
//! and in requests. Not a benchmark against git: it checks that many clients at once get
//! through (no errors) within a memory budget.
//!
//! Phases (repos are local ones, no upstream, seeded by a push through codestorage):
//! 1. `one-repo`: `--clones` concurrent `git clone --bare` (default 64) plus `--pushes`
//!    concurrent pushes (default 8, each a new commit on its own branch) of one repo (the cached
//!    `small` generated repo: 3,000 commits, 6.5 MB pack);
//! 2. `mixed`: `--repos` repos (default 50, each a 40-commit history), `--ops` operations
//!    (default 400) from `--workers` threads (default 16): clones, shallow clones, ls-remote,
//!    fetches, pushes, round robin over the repos.
//!
//! Per phase: operations, errors (must be 0), throughput, p50/p99 latency, and codestorage's
//! peak RSS (VmHWM from /proc/PID/status, reset through /proc/PID/clear_refs before the phase).
//! Every phase stops issuing operations after `--max-seconds` (default 300).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use codestorage_tests::procfs;

use crate::util::{Server, git_env, http, run, run_timed, with_token};

/// Options of `load`.
pub struct LoadArgs {
    pub clones: usize,
    pub pushes: usize,
    pub repos: usize,
    pub ops: usize,
    pub workers: usize,
    pub max_seconds: u64,
    pub keep: bool,
}

impl Default for LoadArgs {
    fn default() -> Self {
        LoadArgs {
            clones: 64,
            pushes: 8,
            repos: 50,
            ops: 400,
            workers: 16,
            max_seconds: 300,
            keep: false,
        }
    }
}

/// Limit of one git operation.
const OP_TIMEOUT: Duration = Duration::from_secs(600);

struct Ctx {
    work: PathBuf,
    home: PathBuf,
    base: String,
    token: String,
    pid: u32,
    seq: AtomicUsize,
}

impl Ctx {
    fn git(&self, dir: Option<&Path>) -> Command {
        let mut cmd = Command::new("git");
        git_env(&mut cmd, Some(&self.home));
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        cmd
    }

    fn url(&self, repo: &str) -> String {
        format!("{}/{repo}.git", with_token(&self.base, &self.token))
    }

    fn fresh(&self, label: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.work.join("clients").join(format!("{label}-{n}"))
    }

    fn create_repo(&self, name: &str) -> Result<()> {
        let body = format!("{{\"name\":\"{name}\"}}");
        let (status, text) = http(
            "POST",
            &self.base,
            "/api/repos",
            Some(&body),
            Some(&self.token),
        )?;
        if status != 201 {
            bail!("creating {name}: {status} {text}");
        }
        Ok(())
    }

    /// One git command, timed; `Err` carries its stderr.
    fn op(&self, mut cmd: Command) -> std::result::Result<f64, String> {
        match run_timed(&mut cmd, OP_TIMEOUT) {
            Ok(t) if t.status.success() => Ok(t.wall.as_secs_f64()),
            Ok(t) => Err(crate::util::redact(&t.stderr)),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// A clone that pushes a new commit to `branch` of `repo`, from `seed` (a local clone).
    fn push_commit(
        &self,
        seed: &Path,
        repo: &str,
        branch: &str,
    ) -> std::result::Result<f64, String> {
        let dir = self.fresh("push");
        let local = |args: &[&str]| {
            let mut c = self.git(Some(&dir));
            c.args(args);
            run(&mut c).map_err(|e| format!("{e:#}"))
        };
        let mut c = self.git(None);
        c.args(["clone", "-q", "--shared"]).arg(seed).arg(&dir);
        run(&mut c).map_err(|e| format!("{e:#}"))?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        std::fs::write(dir.join(format!("load-{n}.txt")), format!("load {n}\n"))
            .map_err(|e| e.to_string())?;
        local(&["add", "."])?;
        local(&["commit", "-q", "-m", &format!("load {n}")])?;
        let mut push = self.git(Some(&dir));
        push.args([
            "push",
            "-q",
            &self.url(repo),
            &format!("HEAD:refs/heads/{branch}"),
        ]);
        let r = self.op(push);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    fn reset_peak(&self) -> Result<()> {
        procfs::reset_peak_rss(&self.pid.to_string()).context("resetting codestorage's VmHWM")
    }

    fn peak_mib(&self) -> f64 {
        procfs::status_kb(&self.pid.to_string(), "VmHWM").unwrap_or(0) as f64 / 1024.0
    }
}

/// What one phase measured.
struct Phase {
    name: String,
    ops: usize,
    errors: Vec<String>,
    wall_s: f64,
    latencies: Vec<f64>,
    peak_mib: f64,
}

impl Phase {
    fn line(&self) -> String {
        let mut l = self.latencies.clone();
        l.sort_by(f64::total_cmp);
        let pct = |p: f64| -> f64 {
            if l.is_empty() {
                return 0.0;
            }
            let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
            l[i]
        };
        format!(
            "{:<10} ops {:>4}  errors {:>2}  wall {:>7.1} s  throughput {:>6.2} ops/s  \
             p50 {:>6.2} s  p99 {:>6.2} s  peak RSS {:>6.1} MiB",
            self.name,
            self.ops,
            self.errors.len(),
            self.wall_s,
            self.ops as f64 / self.wall_s.max(1e-9),
            pct(0.50),
            pct(0.99),
            self.peak_mib
        )
    }
}

/// Run `jobs` on `workers` threads until done or `deadline`; each job returns its latency.
fn drive(
    name: &str,
    ctx: &Ctx,
    jobs: usize,
    workers: usize,
    deadline: Instant,
    job: impl Fn(usize) -> std::result::Result<f64, String> + Sync,
) -> Result<Phase> {
    ctx.reset_peak()?;
    let next = AtomicUsize::new(0);
    let results = Mutex::new((Vec::new(), Vec::new()));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs || Instant::now() > deadline {
                        break;
                    }
                    let r = job(i);
                    let mut g = results.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(s) => g.0.push(s),
                        Err(e) => g.1.push(format!("job {i}: {}", e.trim())),
                    }
                }
            });
        }
    });
    let (latencies, errors) = results.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(Phase {
        name: name.to_owned(),
        ops: latencies.len() + errors.len(),
        errors,
        wall_s: started.elapsed().as_secs_f64(),
        latencies,
        peak_mib: ctx.peak_mib(),
    })
}

/// A 40-commit repo at `dir` (text files), for the mixed phase.
fn small_seed(ctx: &Ctx, dir: &Path) -> Result<()> {
    let mut c = ctx.git(None);
    c.args(["init", "-q", "-b", "main"]).arg(dir);
    run(&mut c)?;
    for i in 0..40 {
        std::fs::write(
            dir.join(format!("f{}.txt", i % 7)),
            format!("{}\n", "line of text ".repeat(50 + i)),
        )?;
        let mut add = ctx.git(Some(dir));
        run(add.args(["add", "."]))?;
        let mut commit = ctx.git(Some(dir));
        run(commit.args(["commit", "-q", "-m", &format!("c{i}")]))?;
    }
    Ok(())
}

/// Run the load phases against a fresh `codestorage serve`; print the figures.
pub fn load(codestorage: &Path, small_repo: &Path, work: &Path, args: &LoadArgs) -> Result<bool> {
    for d in ["clients", "home"] {
        std::fs::create_dir_all(work.join(d))?;
    }
    std::fs::write(
        work.join("home/.gitconfig"),
        "[user]\n\tname = Load\n\temail = load@example.com\n[protocol]\n\tversion = 2\n\
         [gc]\n\tauto = 0\n[advice]\n\tdetachedHead = false\n",
    )?;
    let data = work.join("cs-data");
    let mut cmd = Command::new(codestorage);
    cmd.arg("--data-dir")
        .arg(&data)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sync-interval",
            "3600",
        ])
        .env("RUST_LOG", "codestorage=info")
        .env("NO_COLOR", "1");
    let mut server = Server::start(cmd, &work.join("codestorage.log"))?;
    let mut mint = Command::new(codestorage);
    mint.arg("--data-dir").arg(&data).args([
        "token", "mint", "--repo", "org", "--scopes", "admin", "--ttl", "86400", "--sub", "load",
    ]);
    let token = run(&mut mint)?.trim().to_owned();
    let ctx = Ctx {
        work: work.to_owned(),
        home: work.join("home"),
        base: server.base.clone(),
        token,
        pid: server.pid(),
        seq: AtomicUsize::new(0),
    };
    let deadline = |secs: u64| Instant::now() + Duration::from_secs(secs);

    // Phase 1: one repo, many clones and a few pushes at once.
    eprintln!("[load] seeding repo `one` from {}", small_repo.display());
    ctx.create_repo("one")?;
    let mut push = ctx.git(None);
    push.arg("-C").arg(small_repo).args([
        "push",
        "-q",
        &ctx.url("one"),
        "refs/heads/main:refs/heads/main",
    ]);
    run(&mut push)?;
    let seed_one = work.join("seed-one");
    let mut c = ctx.git(None);
    c.args([
        "clone",
        "-q",
        "--bare",
        small_repo.to_str().context("utf-8 path")?,
    ])
    .arg(&seed_one);
    run(&mut c)?;
    eprintln!(
        "[load] one-repo: {} clones + {} pushes at once",
        args.clones, args.pushes
    );
    let total = args.clones + args.pushes;
    let phase1 = drive(
        "one-repo",
        &ctx,
        total,
        total,
        deadline(args.max_seconds),
        |i| {
            if i < args.pushes {
                ctx.push_commit(&seed_one, "one", &format!("load/p{i}"))
            } else {
                let dest = ctx.fresh("clone");
                let mut c = ctx.git(None);
                c.args(["clone", "-q", "--bare", &ctx.url("one")])
                    .arg(&dest);
                let r = ctx.op(c);
                let _ = std::fs::remove_dir_all(&dest);
                r
            }
        },
    )?;
    eprintln!("{}", phase1.line());

    // Phase 2: many repos, mixed operations.
    eprintln!("[load] seeding {} repos", args.repos);
    let seed = work.join("seed-small");
    small_seed(&ctx, &seed)?;
    for r in 0..args.repos {
        let name = format!("m{r:02}");
        ctx.create_repo(&name)?;
        let mut p = ctx.git(Some(&seed));
        p.args(["push", "-q", &ctx.url(&name), "main"]);
        run(&mut p)?;
    }
    let fetcher = work.join("fetcher");
    let mut c = ctx.git(None);
    c.args(["clone", "-q", "--bare", &ctx.url("m00")])
        .arg(&fetcher);
    run(&mut c)?;
    let fetch_lock = Mutex::new(());
    eprintln!(
        "[load] mixed: {} operations on {} workers across {} repos",
        args.ops, args.workers, args.repos
    );
    let phase2 = drive(
        "mixed",
        &ctx,
        args.ops,
        args.workers,
        deadline(args.max_seconds),
        |i| {
            let repo = format!("m{:02}", i % args.repos.max(1));
            match i % 10 {
                0..=4 => {
                    let dest = ctx.fresh("clone");
                    let mut c = ctx.git(None);
                    c.args(["clone", "-q", "--bare", &ctx.url(&repo)])
                        .arg(&dest);
                    if i % 10 == 4 {
                        c.args(["--depth", "1"]);
                    }
                    let r = ctx.op(c);
                    let _ = std::fs::remove_dir_all(&dest);
                    r
                }
                5..=6 => {
                    let mut c = ctx.git(None);
                    c.args(["ls-remote", &ctx.url(&repo)]);
                    ctx.op(c)
                }
                7..=8 => {
                    let _g = fetch_lock.lock().unwrap_or_else(|p| p.into_inner());
                    let mut c = ctx.git(Some(&fetcher));
                    c.args([
                        "fetch",
                        "-q",
                        &ctx.url(&repo),
                        "+refs/heads/*:refs/remotes/x/*",
                    ]);
                    ctx.op(c)
                }
                _ => ctx.push_commit(&seed, &repo, &format!("load/m{i}")),
            }
        },
    )?;
    eprintln!("{}", phase2.line());

    let alive = server.exited().is_none();
    server.stop(Duration::from_secs(20));
    let mut fsck = Command::new(codestorage);
    fsck.arg("--data-dir").arg(&data).arg("fsck");
    let fsck_ok = run(&mut fsck).is_ok();

    println!();
    println!("codestorage load (loopback; see tests/src/bin/codestorage-bench/load.rs)");
    println!("{}", phase1.line());
    println!("{}", phase2.line());
    let errors: Vec<&String> = phase1.errors.iter().chain(&phase2.errors).collect();
    for e in errors.iter().take(10) {
        println!("  error: {}", e.lines().last().unwrap_or_default());
    }
    let peak = phase1.peak_mib.max(phase2.peak_mib);
    let done = phase1.ops == total && phase2.ops == args.ops;
    println!(
        "targets: errors 0: {}; peak RSS <= 256 MiB: {} ({peak:.1} MiB); all operations ran \
         within --max-seconds: {}; server alive: {alive}; codestorage fsck after: {}",
        if errors.is_empty() { "met" } else { "MISSED" },
        if peak <= 256.0 { "met" } else { "MISSED" },
        if done { "yes" } else { "NO" },
        if fsck_ok { "clean" } else { "FAILED" },
    );
    if !args.keep {
        for d in ["clients", "cs-data", "seed-one", "seed-small", "fetcher"] {
            let _ = std::fs::remove_dir_all(work.join(d));
        }
    }
    Ok(errors.is_empty() && peak <= 256.0 && done && alive && fsck_ok)
}
