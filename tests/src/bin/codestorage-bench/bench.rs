//! One benchmark of one repository: codestorage against `git http-backend`, same repo, same run.
//!
//! Order of operations (each phase runs `runs` times, alternating which server goes first):
//! 1. Prepare the upstream: a local mirror clone of the source repo (hardlinked), repacked into
//!    one pack with a bitmap (unless it already is) and given a commit-graph. It is served by
//!    `git-cgi-server`, which is both the upstream that codestorage mirrors from and the baseline.
//! 2. Start `codestorage serve` on a fresh data dir (`RUST_LOG=codestorage=debug` to a log file)
//!    and, once it listens (its signing key then exists), mint an admin token with
//!    `codestorage token mint`. Every request to codestorage carries it: git URLs as
//!    `http://t:<token>@HOST/<name>.git` (HTTP Basic), REST calls as `Authorization: Bearer`.
//!    git-cgi-server (upstream and baseline) takes no token.
//! 3. Initial sync: `POST /api/repos` until `sync.last_success_at` is set, against
//!    `git clone --mirror` from the baseline. The first mirror is the one every later phase uses.
//! 4. Full clone (`git clone --mirror`), with the server's CPU and peak RSS. The first run checks
//!    that the two clones have the same refs and pass `git fsck --strict`.
//! 5. No-op fetch: `git fetch` in an up-to-date mirror clone.
//! 6. `git clone --bare --depth 1`.
//! 7. Fetch of one new commit: a commit is added to the upstream, codestorage syncs it (untimed),
//!    then `git fetch` in a clone that is one commit behind. The fetching clones are the same two
//!    clones as in 5, so each run leaves them one commit behind the next run's commit.
//! 8. Pushes (`push.rs`): a small one, 50 MiB and 200 MiB, each a new branch pushed through
//!    codestorage (forwarded write-through to the mirror's upstream) and directly to a second,
//!    identical upstream repo served by git http-backend.
//! 9. Stop codestorage, run `codestorage fsck` on its data dir, and scan its log for warnings and
//!    errors.
//!
//! Server cost: for codestorage, CPU is the utime+stime delta of its process, peak RSS is
//! `VmHWM` after the operation minus `VmRSS` before it (with the peak reset by
//! `/proc/PID/clear_refs`) and peak anonymous RSS is the largest `RssAnon` sampled every 5 ms
//! minus `RssAnon` before. For git http-backend, all three come from `GET /__stats` of
//! git-cgi-server (CPU of the finished CGI children; the peaks of the sum over one request's
//! processes). Peak RSS counts the file-backed pages of mapped packs; the anonymous RSS does not,
//! which is why both are shown: codestorage keeps its packs mapped between requests (they show in
//! its idle RSS), `pack-objects` maps the pack anew for every request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use codestorage_tests::procfs;
use serde_json::{Value, json};

use crate::report::{Op, RepoReport, Sample};
use crate::util::{Server, describe, dir_size, git_env, http, run, run_timed, with_token};

/// Where the binaries are.
pub struct Tools {
    pub codestorage: PathBuf,
    pub cgi_server: PathBuf,
}

/// How long the first sync of a mirror may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// How long one timed git command may take.
const OP_TIMEOUT: Duration = Duration::from_secs(3600);

const CLIENT_GITCONFIG: &str = "\
[user]
\tname = Bench
\temail = bench@example.com
[protocol]
\tversion = 2
[gc]
\tauto = 0
[maintenance]
\tauto = false
[fetch]
\twriteCommitGraph = false
[init]
\tdefaultBranch = main
[advice]
\tdetachedHead = false
";

/// Which server an operation runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Cs,
    Git,
}

/// The start of a server-cost measurement.
struct Mark {
    cpu_ms: u64,
    rss_kb: u64,
    anon_kb: u64,
    /// Samples codestorage's `RssAnon` until stopped (there is no high-water mark for it).
    anon_sampler: Option<AnonSampler>,
}

/// The server's cost over one operation.
struct Cost {
    cpu_ms: f64,
    rss_kb: f64,
    anon_kb: f64,
}

/// A thread that samples `RssAnon` of one process every 5 ms and returns the largest value.
struct AnonSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl AnonSampler {
    fn start(pid: String) -> AnonSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                let last = flag.load(Ordering::SeqCst);
                if let Some(kb) = procfs::status_kb(&pid, "RssAnon") {
                    peak = peak.max(kb);
                }
                if last {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        AnonSampler { stop, handle }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap_or(0)
    }
}

pub(crate) struct Bench<'a> {
    pub(crate) tools: &'a Tools,
    pub(crate) label: String,
    pub(crate) runs: usize,
    pub(crate) work: PathBuf,
    pub(crate) clients: PathBuf,
    pub(crate) client_home: PathBuf,
    /// The upstream copy served by git-cgi-server as `<label>.git`.
    pub(crate) upstream: PathBuf,
    pub(crate) cgi: Server,
    pub(crate) cs: Server,
    /// Admin token for codestorage (minted once, after it started).
    pub(crate) cs_token: String,
    /// Only the push phase (after one untimed first sync).
    pub(crate) push_only: bool,
    pub(crate) report: RepoReport,
}

/// Benchmarks the bare repo `source` under the name `label`, `runs` times per operation; work
/// files go to `work` (everything but the logs and `results.json` is removed unless `keep`).
/// `push_only`: only the pushes (step 8), after one untimed first sync.
pub fn bench_repo(
    tools: &Tools,
    label: &str,
    source: &Path,
    runs: usize,
    work: &Path,
    keep: bool,
    push_only: bool,
) -> Result<RepoReport> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let dirs = ["upstream", "clients", "client-home", "cgi-home"];
    for d in dirs {
        std::fs::create_dir_all(work.join(d))?;
    }
    std::fs::write(work.join("client-home/.gitconfig"), CLIENT_GITCONFIG)?;
    let upstream = work.join("upstream").join(format!("{label}.git"));
    eprintln!(
        "[{label}] preparing the upstream copy of {}",
        source.display()
    );
    let prep_notes = prepare_upstream(source, &upstream)?;
    let info = repo_info(&upstream)?;

    let mut cgi_cmd = Command::new(&tools.cgi_server);
    cgi_cmd
        .arg("--root")
        .arg(work.join("upstream"))
        .arg("--home")
        .arg(work.join("cgi-home"));
    let cgi = Server::start(cgi_cmd, &work.join("git-cgi-server.log"))?;

    let mut cs_cmd = Command::new(&tools.codestorage);
    cs_cmd
        .arg("--data-dir")
        .arg(work.join("cs-data"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-http-upstream",
            "--sync-interval",
            "3600",
        ])
        .env("RUST_LOG", "codestorage=debug")
        .env("NO_COLOR", "1");
    let cs = Server::start(cs_cmd, &work.join("codestorage.log"))?;
    let cs_token = mint_admin_token(&tools.codestorage, &work.join("cs-data"))?;

    let mut bench = Bench {
        tools,
        label: label.to_owned(),
        runs,
        work: work.to_owned(),
        clients: work.join("clients"),
        client_home: work.join("client-home"),
        upstream,
        cgi,
        cs,
        cs_token,
        push_only,
        report: RepoReport {
            label: label.to_owned(),
            source: source.display().to_string(),
            info,
            runs,
            work: work.to_owned(),
            notes: prep_notes,
            ..RepoReport::default()
        },
    };
    let outcome = bench.run_phases();
    if let Err(e) = &outcome {
        bench
            .report
            .failures
            .push(format!("benchmark aborted: {e:#}"));
    }
    bench.finish();
    let report = bench.report;
    let results = work.join("results.json");
    std::fs::write(&results, serde_json::to_string_pretty(&report.to_json())?)
        .with_context(|| format!("writing {}", results.display()))?;
    if !keep {
        for d in ["upstream", "clients", "cs-data", "client-home", "cgi-home"] {
            let _ = std::fs::remove_dir_all(work.join(d));
        }
    }
    Ok(report)
}

impl Bench<'_> {
    fn run_phases(&mut self) -> Result<()> {
        if self.push_only {
            eprintln!(
                "[{}] push only: first sync of the mirror (untimed)",
                self.label
            );
            let url = self.url(Side::Git);
            let sync = self
                .cs_first_sync(&self.label, &url)
                .map_err(|e| anyhow::anyhow!(e))?;
            self.report.notes.push(format!(
                "--push-only: the other phases were skipped; the mirror's first sync took {:.2} s",
                sync.wall_s
            ));
            return self.push_phase();
        }
        self.initial_sync()?;
        let base = self.full_clone()?;
        // Two identical up-to-date mirror clones, one fetching from each server.
        let fetch_git = self.clients.join("fetch-git.git");
        let fetch_cs = self.clients.join("fetch-cs.git");
        std::fs::rename(&base, &fetch_git)?;
        run(self
            .git(None)
            .args(["clone", "--mirror", "-q"])
            .arg(&fetch_git)
            .arg(&fetch_cs))?;
        run(self
            .git(Some(&fetch_cs))
            .args(["remote", "set-url", "origin", &self.url(Side::Cs)]))?;
        self.noop_fetch(&fetch_cs, &fetch_git)?;
        self.depth1_clone()?;
        self.fetch_one_commit(&fetch_cs, &fetch_git)?;
        self.push_phase()?;
        Ok(())
    }

    /// A `git` command with the client environment, in `dir`.
    pub(crate) fn git(&self, dir: Option<&Path>) -> Command {
        let mut cmd = Command::new("git");
        git_env(&mut cmd, Some(&self.client_home));
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// The clone URL of the benchmarked repo on `side` (for codestorage, with the token).
    pub(crate) fn url(&self, side: Side) -> String {
        let base = match side {
            Side::Cs => with_token(&self.cs.base, &self.cs_token),
            Side::Git => self.cgi.base.clone(),
        };
        format!("{base}/{}.git", self.label)
    }

    /// One REST call to codestorage, with the admin token.
    pub(crate) fn cs_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        http(method, &self.cs.base, path, body, Some(&self.cs_token))
    }

    /// Run `i` (0-based) does codestorage first when `i` is even.
    pub(crate) fn order(i: usize) -> [Side; 2] {
        if i.is_multiple_of(2) {
            [Side::Cs, Side::Git]
        } else {
            [Side::Git, Side::Cs]
        }
    }

    pub(crate) fn progress(&self, what: &str, i: usize) {
        eprintln!("[{}] {what}: run {}/{}", self.label, i + 1, self.runs);
    }

    /// Starts a measurement of the server's cost.
    fn mark(&self, side: Side) -> Result<Mark> {
        match side {
            Side::Cs => {
                let pid = self.cs.pid().to_string();
                let cpu = procfs::cpu_ticks(&pid).context("reading codestorage's CPU time")?;
                procfs::reset_peak_rss(&pid).context("resetting codestorage's peak RSS")?;
                let [rss, anon] = procfs::status_kbs(&pid, ["VmRSS", "RssAnon"])
                    .context("codestorage's VmRSS")?;
                Ok(Mark {
                    cpu_ms: cpu.own_ms(),
                    rss_kb: rss,
                    anon_kb: anon,
                    anon_sampler: Some(AnonSampler::start(pid)),
                })
            }
            Side::Git => {
                let stats = self.cgi_stats(true)?;
                Ok(Mark {
                    cpu_ms: stats["children_cpu_ms"].as_u64().unwrap_or(0),
                    rss_kb: 0,
                    anon_kb: 0,
                    anon_sampler: None,
                })
            }
        }
    }

    /// The server's cost since `mark`: for codestorage, growth above the values at `mark`.
    fn measure(&self, side: Side, mark: Mark) -> Result<Cost> {
        match side {
            Side::Cs => {
                let pid = self.cs.pid().to_string();
                let anon_peak = mark.anon_sampler.map(AnonSampler::finish).unwrap_or(0);
                let cpu = procfs::cpu_ticks(&pid).context("reading codestorage's CPU time")?;
                let hwm = procfs::status_kb(&pid, "VmHWM").context("codestorage's VmHWM")?;
                Ok(Cost {
                    cpu_ms: cpu.own_ms().saturating_sub(mark.cpu_ms) as f64,
                    rss_kb: hwm.saturating_sub(mark.rss_kb) as f64,
                    anon_kb: anon_peak.saturating_sub(mark.anon_kb) as f64,
                })
            }
            Side::Git => {
                let stats = self.cgi_stats(false)?;
                let cpu = stats["children_cpu_ms"].as_u64().unwrap_or(0);
                let kb = |field: &str| stats[field].as_u64().unwrap_or(0) as f64;
                Ok(Cost {
                    cpu_ms: cpu.saturating_sub(mark.cpu_ms) as f64,
                    rss_kb: kb("peak_rss_kb"),
                    anon_kb: kb("peak_anon_kb"),
                })
            }
        }
    }

    fn cgi_stats(&self, reset: bool) -> Result<Value> {
        let path = if reset {
            "/__stats?reset=1"
        } else {
            "/__stats"
        };
        let (status, body) = http("GET", &self.cgi.base, path, None, None)?;
        if status != 200 {
            bail!("git-cgi-server {path} answered {status}: {body}");
        }
        serde_json::from_str(&body).context("parsing /__stats")
    }

    /// Times `cmd` (which must succeed) and measures the server of `side` around it.
    pub(crate) fn timed_git(&self, side: Side, mut cmd: Command) -> Result<Sample, String> {
        let mark = self.mark(side).map_err(|e| format!("{e:#}"))?;
        let out = run_timed(&mut cmd, OP_TIMEOUT);
        let cost = self.measure(side, mark).map_err(|e| format!("{e:#}"))?;
        let out = out.map_err(|e| format!("{e:#}"))?;
        if !out.status.success() {
            return Err(format!(
                "`{}` failed ({}):\n{}",
                describe(&cmd),
                out.status,
                out.stderr.trim_end()
            ));
        }
        Ok(Sample {
            wall_s: out.wall.as_secs_f64(),
            cpu_ms: Some(cost.cpu_ms),
            rss_kb: Some(cost.rss_kb),
            anon_kb: Some(cost.anon_kb),
        })
    }

    fn initial_sync(&mut self) -> Result<()> {
        let mut op = Op::new("initial sync | clone --mirror");
        op.cpu_label = "CPU: cs server | git client";
        op.rss_label = "cs server peak RSS";
        op.anon_label = "cs server peak anon RSS";
        // The sync engine's goal: a first sync no slower than 1.2 x `git clone --mirror`.
        op.target.wall_ratio = Some(1.2);
        let upstream_url = self.url(Side::Git);
        for i in 0..self.runs {
            self.progress("initial sync", i);
            for side in Self::order(i) {
                let sample = match side {
                    Side::Cs => {
                        let name = if i == 0 {
                            self.label.clone()
                        } else {
                            format!("{}-sync{}", self.label, i + 1)
                        };
                        let r = self.cs_first_sync(&name, &upstream_url);
                        if i == 0 && r.is_ok() {
                            self.report.cs_stored_bytes =
                                Some(dir_size(&self.work.join("cs-data")));
                        }
                        r
                    }
                    Side::Git => self.git_mirror_clone(i),
                };
                op.push(side == Side::Cs, sample);
            }
        }
        self.report.ops.push(op);
        Ok(())
    }

    /// Creates the mirror `name` and waits for its first sync; codestorage's cost around it.
    pub(crate) fn cs_first_sync(&self, name: &str, upstream_url: &str) -> Result<Sample, String> {
        let mark = self.mark(Side::Cs).map_err(|e| format!("{e:#}"))?;
        let started = Instant::now();
        let body = json!({ "name": name, "base_repo": { "url": upstream_url } }).to_string();
        let (status, text) = self
            .cs_api("POST", "/api/repos", Some(&body))
            .map_err(|e| format!("{e:#}"))?;
        if status != 201 {
            return Err(format!("POST /api/repos answered {status}: {text}"));
        }
        loop {
            let (status, text) = self
                .cs_api("GET", &format!("/api/repos/{name}"), None)
                .map_err(|e| format!("{e:#}"))?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let sync = &v["sync"];
            if status == 200 && !sync["last_success_at"].is_null() {
                break;
            }
            if status == 200
                && sync["in_progress"] == Value::Bool(false)
                && !sync["last_error"].is_null()
            {
                return Err(format!(
                    "first sync of {name} failed: {}",
                    sync["last_error"]
                ));
            }
            if status != 200 && status != 409 {
                return Err(format!("GET /api/repos/{name} answered {status}: {text}"));
            }
            if started.elapsed() > SYNC_TIMEOUT {
                return Err(format!(
                    "first sync of {name} not done after {SYNC_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let wall = started.elapsed().as_secs_f64();
        let cost = self.measure(Side::Cs, mark).map_err(|e| format!("{e:#}"))?;
        Ok(Sample {
            wall_s: wall,
            cpu_ms: Some(cost.cpu_ms),
            rss_kb: Some(cost.rss_kb),
            anon_kb: Some(cost.anon_kb),
        })
    }

    /// `git clone --mirror` from the baseline, with the client's CPU (no RSS).
    fn git_mirror_clone(&self, i: usize) -> Result<Sample, String> {
        let dest = self.clients.join(format!("mirror-{i}.git"));
        let cpu0 = procfs::cpu_ticks("self").map_err(|e| e.to_string())?;
        let mut cmd = self.git(None);
        cmd.args(["clone", "--mirror", "-q", &self.url(Side::Git)])
            .arg(&dest);
        let out = run_timed(&mut cmd, OP_TIMEOUT);
        let cpu1 = procfs::cpu_ticks("self").map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&dest);
        let out = out.map_err(|e| format!("{e:#}"))?;
        if !out.status.success() {
            return Err(format!(
                "`{}` failed ({}):\n{}",
                describe(&cmd),
                out.status,
                out.stderr.trim_end()
            ));
        }
        Ok(Sample {
            wall_s: out.wall.as_secs_f64(),
            cpu_ms: Some(cpu1.children_ms().saturating_sub(cpu0.children_ms()) as f64),
            rss_kb: None,
            anon_kb: None,
        })
    }

    /// Full clones; returns the path of a kept clone from the baseline (for the fetch phases).
    fn full_clone(&mut self) -> Result<PathBuf> {
        let mut op = Op::new("full clone (--mirror)");
        let mut kept: Option<PathBuf> = None;
        self.report.cs_rss_before_clone = cs_memory(self.cs.pid());
        for i in 0..self.runs {
            self.progress("full clone", i);
            let mut dests = BTreeMap::new();
            for side in Self::order(i) {
                let dest = self.clients.join(format!("full-{side:?}-{i}.git"));
                let mut cmd = self.git(None);
                cmd.args(["clone", "--mirror", "-q", &self.url(side)])
                    .arg(&dest);
                let sample = self.timed_git(side, cmd);
                if sample.is_ok() {
                    dests.insert(side == Side::Cs, dest);
                }
                op.push(side == Side::Cs, sample);
            }
            if i == 0 {
                self.verify_clones(dests.get(&true), dests.get(&false), "full clone", true);
            }
            if let Some(cs) = dests.remove(&true) {
                let _ = std::fs::remove_dir_all(cs);
            }
            if let Some(git) = dests.remove(&false)
                && let Some(old) = kept.replace(git)
            {
                let _ = std::fs::remove_dir_all(old);
            }
        }
        self.report.ops.push(op);
        match kept {
            Some(k) => Ok(k),
            None => bail!("no full clone from git http-backend succeeded"),
        }
    }

    /// Compares refs (and HEAD) of two clones and runs `git fsck` on both; notes the outcome.
    fn verify_clones(
        &mut self,
        cs: Option<&PathBuf>,
        git: Option<&PathBuf>,
        what: &str,
        strict: bool,
    ) {
        let (Some(cs), Some(git)) = (cs, git) else {
            self.report
                .notes
                .push(format!("{what}: not verified (a clone failed)"));
            return;
        };
        let refs = |dir: &Path| -> Result<String> {
            let head = run(self.git(Some(dir)).args(["symbolic-ref", "-q", "HEAD"]))
                .unwrap_or_else(|_| "(detached)".to_owned());
            let refs = run(self
                .git(Some(dir))
                .args(["for-each-ref", "--format=%(objectname) %(refname)"]))?;
            Ok(format!("HEAD -> {head}{refs}"))
        };
        match (refs(cs), refs(git)) {
            (Ok(a), Ok(b)) if a == b => self.report.notes.push(format!(
                "{what}: codestorage's clone has the same refs as git's ({} refs)",
                a.lines().count() - 1
            )),
            (Ok(a), Ok(b)) => self.report.failures.push(format!(
                "{what}: refs differ\n--- codestorage ---\n{}\n--- git http-backend ---\n{}",
                head_lines(&a, 20),
                head_lines(&b, 20)
            )),
            (a, b) => self.report.failures.push(format!(
                "{what}: could not list refs: {:?} {:?}",
                a.err(),
                b.err()
            )),
        }
        let mut args = vec!["fsck", "--no-progress"];
        if strict {
            args.push("--strict");
        }
        for (name, dir) in [("codestorage", cs), ("git http-backend", git)] {
            eprintln!(
                "[{}] {what}: git {} on the {name} clone",
                self.label,
                args.join(" ")
            );
            match run(self.git(Some(dir)).args(&args)) {
                Ok(_) => self.report.notes.push(format!(
                    "{what}: `git {}` passes on the {name} clone",
                    args.join(" ")
                )),
                Err(e) => self.report.failures.push(format!(
                    "{what}: `git {}` fails on the {name} clone: {e:#}",
                    args.join(" ")
                )),
            }
        }
    }

    fn noop_fetch(&mut self, fetch_cs: &Path, fetch_git: &Path) -> Result<()> {
        let mut op = Op::new("no-op fetch");
        for i in 0..self.runs {
            self.progress("no-op fetch", i);
            for side in Self::order(i) {
                let dir = if side == Side::Cs {
                    fetch_cs
                } else {
                    fetch_git
                };
                let mut cmd = self.git(Some(dir));
                cmd.args(["fetch", "-q"]);
                op.push(side == Side::Cs, self.timed_git(side, cmd));
            }
        }
        self.report.ops.push(op);
        Ok(())
    }

    fn depth1_clone(&mut self) -> Result<()> {
        let mut op = Op::new("clone --depth 1 (--bare)");
        for i in 0..self.runs {
            self.progress("depth-1 clone", i);
            let mut dests = BTreeMap::new();
            for side in Self::order(i) {
                let dest = self.clients.join(format!("depth1-{side:?}-{i}.git"));
                let mut cmd = self.git(None);
                cmd.args(["clone", "--bare", "--depth", "1", "-q", &self.url(side)])
                    .arg(&dest);
                let sample = self.timed_git(side, cmd);
                if sample.is_ok() {
                    dests.insert(side == Side::Cs, dest);
                }
                op.push(side == Side::Cs, sample);
            }
            if i == 0 {
                self.verify_clones(dests.get(&true), dests.get(&false), "depth-1 clone", false);
            }
            for (_, d) in dests {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        self.report.ops.push(op);
        Ok(())
    }

    fn fetch_one_commit(&mut self, fetch_cs: &Path, fetch_git: &Path) -> Result<()> {
        let mut op = Op::new("fetch 1 new commit");
        for i in 0..self.runs {
            self.progress("fetch of one new commit", i);
            let new = self.add_upstream_commit(i)?;
            // `--data-dir`: the CLI authenticates with a token minted from the server's key.
            let sync = run(Command::new(&self.tools.codestorage)
                .arg("--data-dir")
                .arg(self.work.join("cs-data"))
                .args(["--server", &self.cs.base, "repo", "sync", &self.label]));
            if let Err(e) = sync {
                op.push(true, Err(format!("`codestorage repo sync` failed: {e:#}")));
            }
            for side in Self::order(i) {
                let dir = if side == Side::Cs {
                    fetch_cs
                } else {
                    fetch_git
                };
                let mut cmd = self.git(Some(dir));
                cmd.args(["fetch", "-q"]);
                let sample = self.timed_git(side, cmd);
                let sample = sample.and_then(|s| {
                    let head = run(self.git(Some(dir)).args(["rev-parse", "HEAD"]))
                        .map_err(|e| format!("{e:#}"))?;
                    if head.trim() == new {
                        Ok(s)
                    } else {
                        Err(format!(
                            "after the fetch HEAD is {} in {}, expected the new commit {new}",
                            head.trim(),
                            dir.display()
                        ))
                    }
                });
                op.push(side == Side::Cs, sample);
            }
        }
        self.report.ops.push(op);
        Ok(())
    }

    /// Commits one new file on the upstream's HEAD branch (with `git fast-import`); its id.
    fn add_upstream_commit(&self, i: usize) -> Result<String> {
        let branch = run(self
            .git(Some(&self.upstream))
            .args(["symbolic-ref", "HEAD"]))?;
        let branch = branch.trim();
        let old = run(self.git(Some(&self.upstream)).args(["rev-parse", "HEAD"]))?;
        let content = format!("benchmark fetch run {}\n", i + 1);
        let msg = format!("bench: one new commit (fetch run {})\n", i + 1);
        let ts = 1_900_000_000 + i;
        let stream = format!(
            "commit {branch}\ncommitter Bench <bench@example.com> {ts} +0000\ndata {}\n{msg}\
             from {}\nM 100644 inline bench-fetch/run-{}.txt\ndata {}\n{content}\n",
            msg.len(),
            old.trim(),
            i + 1,
            content.len()
        );
        let input = self.work.join("fast-import-input");
        std::fs::write(&input, stream)?;
        let out = self
            .git(Some(&self.upstream))
            .args(["fast-import", "--quiet"])
            .stdin(std::fs::File::open(&input)?)
            .output()
            .context("running git fast-import")?;
        let _ = std::fs::remove_file(&input);
        if !out.status.success() {
            bail!(
                "git fast-import (one new commit) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let new = run(self.git(Some(&self.upstream)).args(["rev-parse", "HEAD"]))?;
        Ok(new.trim().to_owned())
    }

    /// Stops the servers, runs `codestorage fsck`, scans the log.
    fn finish(&mut self) {
        self.report.cs_rss_at_end = cs_memory(self.cs.pid());
        if let Some(status) = self.cs.exited() {
            self.report
                .failures
                .push(format!("codestorage exited during the benchmark: {status}"));
        }
        self.cs.stop(Duration::from_secs(20));
        self.cgi.stop(Duration::from_secs(1));
        let fsck = Command::new(&self.tools.codestorage)
            .arg("--data-dir")
            .arg(self.work.join("cs-data"))
            .arg("fsck")
            .output();
        match fsck {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                if out.status.success() {
                    self.report
                        .notes
                        .push(format!("codestorage fsck: {}", last_line(&text)));
                } else {
                    self.report.failures.push(format!(
                        "codestorage fsck failed ({}):\n{}",
                        out.status,
                        text.trim_end()
                    ));
                }
            }
            Err(e) => self
                .report
                .failures
                .push(format!("could not run codestorage fsck: {e}")),
        }
        self.report.log = scan_log(&self.work.join("codestorage.log"));
        let cgi_log =
            std::fs::read_to_string(self.work.join("git-cgi-server.log")).unwrap_or_default();
        if !cgi_log.trim().is_empty() {
            self.report.notes.push(format!(
                "git http-backend stderr (see git-cgi-server.log):\n{}",
                head_lines(&cgi_log, 10)
            ));
        }
    }
}

/// Mints an admin token (one day) from the signing key in codestorage's data dir `data` (created
/// when the server first started).
pub(crate) fn mint_admin_token(codestorage: &Path, data: &Path) -> Result<String> {
    let out = run(Command::new(codestorage).arg("--data-dir").arg(data).args([
        "token", "mint", "--repo", "org", "--scopes", "admin", "--ttl", "86400", "--sub", "bench",
    ]))
    .context("minting codestorage's admin token")?;
    let token = out.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!("`codestorage token mint` printed {out:?}, not a token");
    }
    Ok(token.to_owned())
}

/// Copies `source` to `dest` (a hardlinked mirror clone) and makes sure it is one pack with a
/// bitmap and a commit-graph, as a well-kept git server holds it. Returns notes on what was done.
fn prepare_upstream(source: &Path, dest: &Path) -> Result<Vec<String>> {
    let git = |dir: Option<&Path>| {
        let mut cmd = Command::new("git");
        git_env(&mut cmd, None);
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        cmd
    };
    run(git(None)
        .args(["clone", "--mirror", "-q"])
        .arg(source)
        .arg(dest))?;
    let pack_dir = dest.join("objects/pack");
    let names: Vec<String> = std::fs::read_dir(&pack_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let packs = names.iter().filter(|n| n.ends_with(".pack")).count();
    let bitmaps = names.iter().filter(|n| n.ends_with(".bitmap")).count();
    let loose = run(git(Some(dest)).args(["count-objects", "-v"]))?
        .lines()
        .find_map(|l| l.strip_prefix("count: ").map(|n| n.trim().to_owned()))
        .unwrap_or_default();
    let mut notes = Vec::new();
    if packs != 1 || bitmaps != 1 || loose != "0" {
        eprintln!(
            "  repacking the upstream copy with a bitmap ({packs} packs, {loose} loose objects)"
        );
        run(git(Some(dest)).args(["repack", "-a", "-d", "-q", "--write-bitmap-index"]))?;
        notes.push(format!(
            "upstream copy repacked (`git repack -adb`): it had {packs} pack(s), {bitmaps} bitmap(s), {loose} loose object(s)"
        ));
    } else {
        notes.push("upstream copy served as is: one pack with a bitmap".to_owned());
    }
    let has_graph = dest.join("objects/info/commit-graph").exists()
        || dest.join("objects/info/commit-graphs").exists();
    if !has_graph {
        run(git(Some(dest)).args(["commit-graph", "write", "--reachable", "--no-progress"]))?;
    }
    Ok(notes)
}

/// Commits, refs, pack size and objects of the upstream copy.
fn repo_info(repo: &Path) -> Result<crate::report::RepoInfo> {
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        git_env(&mut cmd, None);
        cmd.current_dir(repo).args(args);
        run(&mut cmd)
    };
    let commits = git(&["rev-list", "--all", "--count"])?
        .trim()
        .parse()
        .unwrap_or(0);
    let refs = git(&["for-each-ref", "--format=x"])?.lines().count() as u64;
    let counts = git(&["count-objects", "-v"])?;
    let field = |name: &str| -> u64 {
        counts
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(crate::report::RepoInfo {
        commits,
        refs,
        objects: field("in-pack:"),
        pack_bytes: field("size-pack:") * 1024,
    })
}

/// `[VmRSS, RssAnon, RssFile]` of codestorage, KiB.
pub(crate) fn cs_memory(pid: u32) -> Option<[u64; 3]> {
    procfs::status_kbs(&pid.to_string(), ["VmRSS", "RssAnon", "RssFile"])
}

pub(crate) fn head_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[..lines.len().min(n)].join("\n");
    if lines.len() > n {
        out.push_str(&format!("\n… ({} more lines)", lines.len() - n));
    }
    out
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or("").to_owned()
}

/// Counts WARN and ERROR lines of the codestorage log and keeps a few distinct ones.
fn scan_log(path: &Path) -> crate::report::LogSummary {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut summary = crate::report::LogSummary {
        path: path.to_owned(),
        lines: text.lines().count() as u64,
        ..Default::default()
    };
    for line in text.lines() {
        let clean = strip_ansi(line);
        let level = if clean.contains(" ERROR ") {
            "ERROR"
        } else if clean.contains(" WARN ") {
            "WARN"
        } else {
            continue;
        };
        if level == "ERROR" {
            summary.errors += 1;
        } else {
            summary.warnings += 1;
        }
        // Without the timestamp, so repeats of one message collapse.
        let msg = clean
            .find(level)
            .map(|p| clean[p..].to_owned())
            .unwrap_or(clean.clone());
        if !summary.samples.contains(&msg) && summary.samples.len() < 12 {
            summary.samples.push(msg);
        }
    }
    summary
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
