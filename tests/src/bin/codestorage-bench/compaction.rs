//! `compaction`: what many small syncs and force-pushes do to one mirrored repo, and what
//! `codestorage maintain --full` undoes (behind `scripts/bench compaction`).
//!
//! The upstream (`git-cgi-server`, i.e. `git http-backend`) holds the generated `small` repo.
//! codestorage mirrors it (with `--prune-grace 0s`, background maintenance off), then the
//! upstream gets `--syncs` commits (a small text change and a 2 KiB pseudo-random blob each),
//! every one followed by a sync, and `--force-pushes` amended tips (force-pushed upstream, each
//! followed by a sync: the replaced commits and blobs become garbage). Measured, median of
//! `--runs` clones each (`git clone --mirror`, protocol v2, client wall time and server CPU):
//!
//! - codestorage before compaction (one pack per sync);
//! - codestorage after `maintain --full` (timed too);
//! - a fresh codestorage mirror of the final upstream;
//! - `git http-backend` on the upstream after `git repack -ad`;
//!
//! and the store sizes (`.pack` + `.idx` bytes of the repo): before, after, fresh, git's. The
//! targets (issue 8): after compaction, clone wall and server CPU within 5% of the fresh mirror,
//! store size <= 1.1x git's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use codestorage_tests::procfs;
use serde_json::{Value, json};

use crate::util::{Server, git_env, http, run, run_timed, with_token};

/// Options of `compaction`.
pub struct CompactionArgs {
    pub syncs: usize,
    pub force_pushes: usize,
    pub runs: usize,
    pub keep: bool,
}

impl Default for CompactionArgs {
    fn default() -> Self {
        CompactionArgs {
            syncs: 1000,
            force_pushes: 200,
            runs: 5,
            keep: false,
        }
    }
}

struct Ctx {
    cs: Server,
    cgi: Server,
    token: String,
    home: PathBuf,
    work: PathBuf,
    codestorage: PathBuf,
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

    fn api(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
        http(method, &self.cs.base, path, body, Some(&self.token))
    }

    fn record(&self, name: &str) -> Result<Value> {
        let (status, text) = self.api("GET", &format!("/api/repos/{name}"), None)?;
        if status != 200 && status != 409 {
            bail!("GET /api/repos/{name} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Create a mirror of `url` and wait for its first sync.
    fn mirror(&self, name: &str, url: &str) -> Result<()> {
        let body = json!({ "name": name, "base_repo": { "url": url } }).to_string();
        let (status, text) = self.api("POST", "/api/repos", Some(&body))?;
        if status != 201 {
            bail!("POST /api/repos answered {status}: {text}");
        }
        let started = Instant::now();
        loop {
            let v = self.record(name)?;
            if !v["sync"]["last_success_at"].is_null() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("the first sync of {name} did not finish: {v}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sync `name` now and wait for the run to end.
    fn sync(&self, name: &str) -> Result<()> {
        let runs = |v: &Value| v["sync"]["run_count"].as_u64().unwrap_or(0);
        let before = runs(&self.record(name)?);
        let (status, text) = self.api(
            "POST",
            &format!("/api/repos/{name}/pull-upstream"),
            Some("{}"),
        )?;
        if status != 202 {
            bail!("pull-upstream answered {status}: {text}");
        }
        let started = Instant::now();
        loop {
            let v = self.record(name)?;
            if runs(&v) > before && v["sync"]["in_progress"] != Value::Bool(true) {
                if !v["sync"]["last_error"].is_null() {
                    bail!("sync of {name} failed: {}", v["sync"]["last_error"]);
                }
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("sync of {name} did not finish");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn cgi_cpu_ms(&self) -> Result<u64> {
        let (status, body) = http("GET", &self.cgi.base, "/__stats", None, None)?;
        if status != 200 {
            bail!("/__stats answered {status}");
        }
        let v: Value = serde_json::from_str(&body).context("parsing /__stats")?;
        Ok(v["children_cpu_ms"].as_u64().unwrap_or(0))
    }

    /// Median clone wall (s) and server CPU (ms) of `url` over `runs` mirror clones.
    fn clones(&self, url: &str, cs_side: bool, runs: usize, tag: &str) -> Result<(f64, f64)> {
        let mut walls = Vec::new();
        let mut cpus = Vec::new();
        let pid = self.cs.pid().to_string();
        for i in 0..runs {
            let dest = self.work.join(format!("clone-{tag}-{i}.git"));
            let cpu_before = if cs_side {
                procfs::cpu_ticks(&pid)?.own_ms()
            } else {
                self.cgi_cpu_ms()?
            };
            let mut cmd = self.git(None);
            cmd.args(["clone", "--mirror", "-q", url]).arg(&dest);
            let out = run_timed(&mut cmd, Duration::from_secs(3600))?;
            if !out.status.success() {
                bail!("clone {tag} failed: {}", out.stderr);
            }
            let cpu_after = if cs_side {
                procfs::cpu_ticks(&pid)?.own_ms()
            } else {
                self.cgi_cpu_ms()?
            };
            walls.push(out.wall.as_secs_f64());
            cpus.push(cpu_after.saturating_sub(cpu_before) as f64);
            if i + 1 < runs {
                let _ = std::fs::remove_dir_all(&dest);
            }
        }
        Ok((median(&mut walls), median(&mut cpus)))
    }

    /// `.pack` + `.idx` bytes and the number of packs of codestorage repo `name`.
    fn cs_store(&self, name: &str) -> Result<(u64, usize)> {
        let repos = self.work.join("cs-data/repos");
        for e in std::fs::read_dir(&repos)?.flatten() {
            let record = std::fs::read_to_string(e.path().join("record.json")).unwrap_or_default();
            let v: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
            if v["name"] == name {
                return Ok(pack_bytes(&e.path().join("objects/pack")));
            }
        }
        bail!("no repository {name} in {}", repos.display())
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

/// `.pack` + `.idx` bytes under `dir`, and the number of `.pack` files.
fn pack_bytes(dir: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut packs = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".pack") || name.ends_with(".idx") {
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            if name.ends_with(".pack") {
                packs += 1;
            }
        }
    }
    (bytes, packs)
}

fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Run the benchmark on a copy of `small` (the generated repo) under `work`.
pub fn compaction(
    codestorage: &Path,
    cgi_server: &Path,
    small: &Path,
    work: &Path,
    args: &CompactionArgs,
) -> Result<()> {
    for d in ["upstream", "home", "cgi-home"] {
        std::fs::create_dir_all(work.join(d))?;
    }
    std::fs::write(
        work.join("home/.gitconfig"),
        "[user]\n\tname = Bench\n\temail = bench@example.com\n[protocol]\n\tversion = 2\n\
         [gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n[init]\n\tdefaultBranch = main\n",
    )?;
    let upstream = work.join("upstream/repo.git");
    let mut cgi_cmd = Command::new(cgi_server);
    cgi_cmd
        .arg("--root")
        .arg(work.join("upstream"))
        .arg("--home")
        .arg(work.join("cgi-home"));
    let cgi = Server::start(cgi_cmd, &work.join("git-cgi-server.log"))?;
    let mut cs_cmd = Command::new(codestorage);
    cs_cmd
        .arg("--data-dir")
        .arg(work.join("cs-data"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-http-upstream",
            "--sync-interval",
            "86400",
            "--prune-grace",
            "0s",
            "--maintain-interval",
            "0",
            "--maintain-max-rate",
            "0",
        ])
        .env("RUST_LOG", "codestorage=info")
        .env("NO_COLOR", "1");
    let cs = Server::start(cs_cmd, &work.join("codestorage.log"))?;
    let token = crate::bench::mint_admin_token(codestorage, &work.join("cs-data"))?;
    let ctx = Ctx {
        cs,
        cgi,
        token,
        home: work.join("home"),
        work: work.to_owned(),
        codestorage: codestorage.to_owned(),
    };
    let outcome = measure(&ctx, small, &upstream, args);
    if !args.keep {
        for d in ["upstream", "cs-data", "home", "cgi-home", "work-clone"] {
            let _ = std::fs::remove_dir_all(work.join(d));
        }
        if let Ok(entries) = std::fs::read_dir(work) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("clone-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    outcome
}

fn measure(ctx: &Ctx, small: &Path, upstream: &Path, args: &CompactionArgs) -> Result<()> {
    run(ctx
        .git(None)
        .args(["clone", "--bare", "-q"])
        .arg(small)
        .arg(upstream))?;
    let url = format!("{}/repo.git", ctx.cgi.base);
    eprintln!("[compaction] mirroring the small repo");
    ctx.mirror("repo", &url)?;
    let local = ctx.work.join("work-clone");
    run(ctx
        .git(None)
        .args(["clone", "-q"])
        .arg(upstream)
        .arg(&local))?;
    let started = Instant::now();
    let total = args.syncs + args.force_pushes;
    // Spread the force-pushes evenly among the syncs.
    let every = (total / args.force_pushes.max(1)).max(1);
    let (mut syncs, mut forces) = (0, 0);
    for step in 0..total {
        let force =
            forces < args.force_pushes && (syncs >= args.syncs || (step + 1).is_multiple_of(every));
        let n = step as u64;
        std::fs::write(local.join("bench-counter.txt"), format!("step {n}\n"))?;
        std::fs::write(local.join("bench-blob.bin"), pseudo_random(2048, n + 1))?;
        run(ctx
            .git(Some(&local))
            .args(["add", "bench-counter.txt", "bench-blob.bin"]))?;
        if force {
            run(ctx.git(Some(&local)).args([
                "commit",
                "-q",
                "--amend",
                "-m",
                &format!("amended {n}"),
            ]))?;
            run(ctx
                .git(Some(&local))
                .args(["push", "-q", "--force", "origin", "HEAD"]))?;
            forces += 1;
        } else {
            run(ctx
                .git(Some(&local))
                .args(["commit", "-q", "-m", &format!("step {n}")]))?;
            run(ctx.git(Some(&local)).args(["push", "-q", "origin", "HEAD"]))?;
            syncs += 1;
        }
        ctx.sync("repo")?;
        if (step + 1) % 100 == 0 {
            eprintln!(
                "[compaction] {} syncs, {} force-pushes ({:.0} s)",
                syncs,
                forces,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let growth_s = started.elapsed().as_secs_f64();
    let cs_url = format!("{}/repo.git", with_token(&ctx.cs.base, &ctx.token));
    let (before_bytes, before_packs) = ctx.cs_store("repo")?;
    eprintln!("[compaction] clones before compaction");
    let before = ctx.clones(&cs_url, true, args.runs, "before")?;

    eprintln!("[compaction] codestorage maintain --full");
    let t = Instant::now();
    let out = run(Command::new(&ctx.codestorage)
        .arg("--server")
        .arg(&ctx.cs.base)
        .arg("--token")
        .arg(&ctx.token)
        .args(["maintain", "--full", "--repo", "repo"]))?;
    let maintain_s = t.elapsed().as_secs_f64();
    let stats: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let (after_bytes, after_packs) = ctx.cs_store("repo")?;
    eprintln!("[compaction] clones after compaction");
    let after = ctx.clones(&cs_url, true, args.runs, "after")?;

    eprintln!("[compaction] a fresh mirror of the final upstream");
    ctx.mirror("fresh", &url)?;
    let (fresh_bytes, fresh_packs) = ctx.cs_store("fresh")?;
    let fresh_url = format!("{}/fresh.git", with_token(&ctx.cs.base, &ctx.token));
    let fresh = ctx.clones(&fresh_url, true, args.runs, "fresh")?;

    eprintln!("[compaction] git repack -ad on the upstream");
    run(ctx.git(Some(upstream)).args(["repack", "-adq"]))?;
    let (git_bytes, git_packs) = pack_bytes(&upstream.join("objects/pack"));
    let git = ctx.clones(&url, false, args.runs, "git")?;

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "compaction benchmark: {} syncs + {} force-pushes on the generated small repo \
         (growth took {growth_s:.0} s); medians of {} mirror clones (protocol v2)",
        args.syncs, args.force_pushes, args.runs
    );
    println!(
        "{:<34} {:>7} {:>10} {:>10} {:>12}",
        "", "packs", "store MiB", "clone s", "server CPU ms"
    );
    for (label, packs, bytes, (wall, cpu)) in [
        (
            "codestorage before compaction",
            before_packs,
            before_bytes,
            before,
        ),
        (
            "codestorage after maintain --full",
            after_packs,
            after_bytes,
            after,
        ),
        ("codestorage fresh mirror", fresh_packs, fresh_bytes, fresh),
        (
            "git http-backend after repack -ad",
            git_packs,
            git_bytes,
            git,
        ),
    ] {
        println!(
            "{label:<34} {packs:>7} {:>10.2} {wall:>10.3} {cpu:>12.0}",
            mib(bytes)
        );
    }
    println!(
        "maintain --full took {maintain_s:.2} s: {}",
        serde_json::to_string(&stats["repos"][0]).unwrap_or_default()
    );
    let wall_ratio = ratio(after.0, fresh.0);
    let cpu_ratio = ratio(after.1, fresh.1);
    let size_ratio = ratio(after_bytes as f64, git_bytes as f64);
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    println!(
        "after / fresh mirror: clone wall {wall_ratio:.3}x, server CPU {cpu_ratio:.3}x \
         (target <= 1.05x: {}, {})",
        verdict(wall_ratio <= 1.05),
        verdict(cpu_ratio <= 1.05)
    );
    println!(
        "after / before: clone wall {:.3}x, server CPU {:.3}x, store {:.3}x",
        ratio(after.0, before.0),
        ratio(after.1, before.1),
        ratio(after_bytes as f64, before_bytes as f64)
    );
    println!(
        "store after / git repack -ad: {size_ratio:.3}x (target <= 1.1x: {}); \
         clone wall vs git http-backend {:.3}x, server CPU {:.3}x",
        verdict(size_ratio <= 1.1),
        ratio(after.0, git.0),
        ratio(after.1, git.1)
    );
    Ok(())
}
