//! `codestorage-bench`: the benchmark driver behind `scripts/bench` (codestorage against
//! `git http-backend` on the same repositories, in one run) and `scripts/bench-gen-large`.
//!
//! ```text
//! codestorage-bench run [--small-only] [--large generate|PATH] [--repo PATH]
//!                       [--runs N] [--large-runs N] [--keep] [--push-only]
//! codestorage-bench gen small|large DIR
//! codestorage-bench load [--clones N] [--pushes N] [--repos N] [--ops N] [--workers N]
//!                        [--max-seconds N] [--keep]
//! codestorage-bench compaction [--syncs N] [--force-pushes N] [--runs N] [--keep]
//! ```
//!
//! `run` expects `codestorage` and `git-cgi-server` next to its own executable (a release build
//! of the workspace) and uses `<target>/bench-data/` (cached generated repos) and
//! `<target>/bench-work/` (one directory per benchmarked repo and run: logs and `results.json`
//! are kept, the rest is removed unless `--keep`). What is measured: see `bench.rs`.
//!
//! - `main.rs`: arguments, the repos to benchmark, the final tables.
//! - `bench.rs`: the phases of one repo's benchmark and how each cost is measured.
//! - `load.rs`: `load`, concurrent clients against one server (behind `scripts/load`).
//! - `compaction.rs`: `compaction`, many syncs and force-pushes, then `maintain --full`.
//! - `push.rs`: the push phase (through codestorage to a mirror's upstream, and direct).
//! - `generate.rs`: deterministic synthetic repos (`git fast-import`).
//! - `report.rs`: samples, medians, the table.
//! - `util.rs`: commands, server processes, a tiny HTTP client.

mod bench;
mod compaction;
mod generate;
mod load;
mod push;
mod report;
mod util;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use crate::bench::Tools;
use crate::generate::{GENERATOR_VERSION, Shape};

const USAGE: &str = "\
usage: codestorage-bench run [--small-only] [--large generate|PATH] [--repo PATH]
                             [--runs N] [--large-runs N] [--keep] [--push-only]
       codestorage-bench gen small|large DIR
       codestorage-bench load [--clones N] [--pushes N] [--repos N] [--ops N] [--workers N]
                              [--max-seconds N] [--keep]
       codestorage-bench compaction [--syncs N] [--force-pushes N] [--runs N] [--keep]";

struct RunArgs {
    small_only: bool,
    /// `None`: generate (cached).
    large: Option<PathBuf>,
    repo: Option<PathBuf>,
    runs: usize,
    large_runs: usize,
    keep: bool,
    /// Only the push phase (after one untimed first sync of the mirror).
    push_only: bool,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(parse_run(&args[1..])?),
        Some("load") => run_load(&args[1..]),
        Some("compaction") => run_compaction(&args[1..]),
        Some("gen") => match &args[1..] {
            [shape, dir] => generate::generate(&generate::shape(shape)?, Path::new(dir)),
            _ => bail!("{USAGE}"),
        },
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn parse_run(args: &[String]) -> Result<RunArgs> {
    let mut out = RunArgs {
        small_only: false,
        large: None,
        repo: None,
        runs: 5,
        large_runs: 3,
        keep: false,
        push_only: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--small-only" => out.small_only = true,
            "--keep" => out.keep = true,
            "--push-only" => out.push_only = true,
            "--large" => {
                let v = value()?;
                out.large = (v != "generate").then(|| PathBuf::from(v));
            }
            "--repo" => out.repo = Some(PathBuf::from(value()?)),
            "--runs" => out.runs = parse_count(&value()?)?,
            "--large-runs" => out.large_runs = parse_count(&value()?)?,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(out)
}

/// The count that follows option `arg`.
fn count_after(it: &mut std::slice::Iter<'_, String>, arg: &str) -> Result<usize> {
    parse_count(
        &it.next()
            .cloned()
            .with_context(|| format!("{arg} needs a value\n{USAGE}"))?,
    )
}

/// The directory of this executable (where the workspace binaries are) and the target dir.
fn bin_and_target() -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin_dir = exe.parent().context("executable has no directory")?;
    let target = bin_dir
        .parent()
        .context("executable is not in a target dir")?;
    Ok((bin_dir.to_owned(), target.to_owned()))
}

/// `load`: parse its options, find the binaries and the cached `small` repo, run it.
fn run_load(args: &[String]) -> Result<()> {
    let mut opts = load::LoadArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || count_after(&mut it, arg);
        match arg.as_str() {
            "--clones" => opts.clones = value()?,
            "--pushes" => opts.pushes = value()?,
            "--repos" => opts.repos = value()?,
            "--ops" => opts.ops = value()?,
            "--workers" => opts.workers = value()?,
            "--max-seconds" => opts.max_seconds = value()? as u64,
            "--keep" => opts.keep = true,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let (bin_dir, target) = bin_and_target()?;
    let (bin_dir, target) = (bin_dir.as_path(), target.as_path());
    let codestorage = bin_dir.join("codestorage");
    if !codestorage.exists() {
        bail!(
            "{} is missing: build the workspace first",
            codestorage.display()
        );
    }
    let small = cached(&generate::SMALL, &target.join("bench-data"))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let work = target.join("load-work").join(format!("load-{stamp}"));
    if load::load(&codestorage, &small, &work, &opts)? {
        Ok(())
    } else {
        bail!("targets missed; logs in {}", work.display())
    }
}

/// `compaction`: parse its options, find the binaries and the cached `small` repo, run it.
fn run_compaction(args: &[String]) -> Result<()> {
    let mut opts = compaction::CompactionArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || count_after(&mut it, arg);
        match arg.as_str() {
            "--syncs" => opts.syncs = value()?,
            "--force-pushes" => opts.force_pushes = value()?,
            "--runs" => opts.runs = value()?,
            "--keep" => opts.keep = true,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let (bin_dir, target) = bin_and_target()?;
    let (bin_dir, target) = (bin_dir.as_path(), target.as_path());
    let (codestorage, cgi) = (bin_dir.join("codestorage"), bin_dir.join("git-cgi-server"));
    for tool in [&codestorage, &cgi] {
        if !tool.exists() {
            bail!("{} is missing: build the workspace first", tool.display());
        }
    }
    let small = cached(&generate::SMALL, &target.join("bench-data"))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let work = target
        .join("bench-work")
        .join(format!("compaction-{stamp}"));
    compaction::compaction(&codestorage, &cgi, &small, &work, &opts)
}

fn parse_count(v: &str) -> Result<usize> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("expected a positive number of runs, got {v:?}"),
    }
}

/// The generated repo of `shape`, from the cache under `data` (generated there if missing).
fn cached(shape: &Shape, data: &Path) -> Result<PathBuf> {
    let path = data.join(format!("{}-v{GENERATOR_VERSION}.git", shape.name));
    if path.exists() {
        eprintln!("using the cached {} repo {}", shape.name, path.display());
    } else {
        generate::generate(shape, &path)?;
    }
    Ok(path)
}

/// A codestorage repo name from a path: its file name without `.git`, other characters than
/// `[A-Za-z0-9._-]` replaced by `-`.
fn label_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_suffix(".git").unwrap_or(&name);
    let label: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if label.is_empty() || label.starts_with('.') {
        format!("repo{label}")
    } else {
        label
    }
}

fn check_bare_repo(path: &Path) -> Result<PathBuf> {
    let path = std::fs::canonicalize(path)
        .with_context(|| format!("{} does not exist", path.display()))?;
    if !path.join("objects").is_dir() || !path.join("HEAD").is_file() {
        bail!("{} is not a bare git repository", path.display());
    }
    Ok(path)
}

fn run(args: RunArgs) -> Result<()> {
    let (bin_dir, target) = bin_and_target()?;
    let (bin_dir, target) = (bin_dir.as_path(), target.as_path());
    let tools = Tools {
        codestorage: bin_dir.join("codestorage"),
        cgi_server: bin_dir.join("git-cgi-server"),
    };
    for tool in [&tools.codestorage, &tools.cgi_server] {
        if !tool.exists() {
            bail!(
                "{} is missing: run `cargo build --release --workspace --bins` first",
                tool.display()
            );
        }
    }
    let data = target.join("bench-data");
    let mut repos: Vec<(String, PathBuf, usize)> = Vec::new();
    if let Some(repo) = &args.repo {
        let path = check_bare_repo(repo)?;
        repos.push((label_of(&path), path, args.runs));
    } else {
        repos.push((
            "small".to_owned(),
            cached(&generate::SMALL, &data)?,
            args.runs,
        ));
        if !args.small_only {
            let large = match &args.large {
                Some(p) => check_bare_repo(p)?,
                None => cached(&generate::LARGE, &data)?,
            };
            repos.push(("large".to_owned(), large, args.large_runs));
        }
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut reports = Vec::new();
    for (label, path, runs) in &repos {
        let work = target.join("bench-work").join(format!("{label}-{stamp}"));
        let report =
            bench::bench_repo(&tools, label, path, *runs, &work, args.keep, args.push_only)?;
        eprintln!("\n{}", report.render());
        reports.push(report);
    }
    println!();
    for r in &reports {
        println!("{}", r.render());
    }
    Ok(())
}
