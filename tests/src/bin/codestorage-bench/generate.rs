//! Deterministic synthetic repositories for the benchmark, written with `git fast-import`.
//!
//! A repo is a line of commits on `main`; each commit changes a few distinct files: it either
//! adds a file of fresh pseudo-random bytes or overwrites a window of an existing file with fresh
//! bytes (sometimes also appending some). The bytes come from a seeded splitmix64, so they do not
//! compress and the pack grows by about the number of fresh bytes, while deltas between versions
//! of one file stay small (as in real repos, where most of a file survives a change). Every
//! `tag_every` commits get an annotated tag and every `branch_every` a `release-N` branch.
//!
//! Same [`Shape`] and seed, same object ids: the generated repos are cached by name and
//! [`GENERATOR_VERSION`] (bump it when the output changes).
//!
//! The result is repacked into one pack with a bitmap and fresh deltas (`git repack -adfb`:
//! fast-import only deltifies a blob against the blob written just before it, so without `-f`
//! versions of a file would stay whole) and gets a commit-graph, as a well-kept git server holds
//! its repos.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::util::{git_env, run};

/// Part of the cache directory names: bump when a shape or the generator changes its output.
pub const GENERATOR_VERSION: u32 = 1;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub commits: u32,
    /// Files live in `dNN/` directories.
    pub dirs: u32,
    /// No new files once this many exist.
    pub max_files: u32,
    /// Distinct files changed by each commit.
    pub changes_per_commit: u32,
    /// Percent of changes that add a new file (while there are fewer than `max_files`; always
    /// while there are fewer than `changes_per_commit`).
    pub new_file_percent: u64,
    /// Size range of a new file, bytes.
    pub new_file_size: (usize, usize),
    /// Size range of the overwritten window of a modified file, bytes.
    pub window: (usize, usize),
    /// Percent of modifications that also append, and the appended size range.
    pub append_percent: u64,
    pub append: (usize, usize),
    /// Files stop growing by appends beyond this size.
    pub max_file_size: usize,
    pub tag_every: u32,
    pub branch_every: u32,
    pub seed: u64,
}

/// 3,000 commits (~18,000 objects), a 6.5 MB pack: quick.
pub const SMALL: Shape = Shape {
    name: "small",
    commits: 3_000,
    dirs: 16,
    max_files: 400,
    changes_per_commit: 2,
    new_file_percent: 10,
    new_file_size: (512, 4096),
    window: (64, 1024),
    append_percent: 20,
    append: (64, 1024),
    max_file_size: 16 * 1024,
    tag_every: 250,
    branch_every: 1_000,
    seed: 0x5EED_0001,
};

/// 50,000 commits (~400,000 objects) and a pack of about 470 MB of incompressible content.
pub const LARGE: Shape = Shape {
    name: "large",
    commits: 50_000,
    dirs: 64,
    max_files: 6_000,
    changes_per_commit: 3,
    new_file_percent: 10,
    new_file_size: (2048, 12 * 1024),
    window: (256, 4096),
    append_percent: 20,
    append: (256, 2048),
    max_file_size: 48 * 1024,
    tag_every: 1_000,
    branch_every: 10_000,
    seed: 0x5EED_0002,
};

/// The shape called `name`.
pub fn shape(name: &str) -> Result<Shape> {
    match name {
        "small" => Ok(SMALL),
        "large" => Ok(LARGE),
        other => bail!("unknown repo shape {other:?} (small or large)"),
    }
}

/// splitmix64: tiny, fast, and fixed forever (the generated ids depend on it).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, (lo, hi): (usize, usize)) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// Generates `shape` as the bare repo `dest` (which must not exist), via `dest.partial`.
pub fn generate(shape: &Shape, dest: &Path) -> Result<()> {
    if dest.exists() {
        bail!("{} already exists", dest.display());
    }
    let partial = dest.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    if let Some(parent) = partial.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let started = Instant::now();
    eprintln!(
        "generating the {} repo ({} commits) in {} ...",
        shape.name,
        shape.commits,
        dest.display()
    );
    run(git_cmd(None)
        .args(["init", "-q", "--bare", "--initial-branch=main"])
        .arg(&partial))?;
    fast_import(shape, &partial)?;
    eprintln!(
        "  fast-import done after {:.0?}; repacking with bitmaps ...",
        started.elapsed()
    );
    run(git_cmd(Some(&partial)).args(["repack", "-a", "-d", "-f", "-q", "--write-bitmap-index"]))?;
    run(git_cmd(Some(&partial)).args(["commit-graph", "write", "--reachable", "--no-progress"]))?;
    run(git_cmd(Some(&partial)).args(["pack-refs", "--all"]))?;
    std::fs::rename(&partial, dest)
        .with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))?;
    eprintln!("  done after {:.0?}", started.elapsed());
    Ok(())
}

fn git_cmd(dir: Option<&Path>) -> Command {
    let mut cmd = Command::new("git");
    git_env(&mut cmd, None);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd
}

/// Feeds the whole history into `git fast-import` in `repo`.
fn fast_import(shape: &Shape, repo: &Path) -> Result<()> {
    let mut child = git_cmd(Some(repo))
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting git fast-import")?;
    let stdin = child.stdin.take().context("fast-import stdin")?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdin);
    let written = write_stream(shape, &mut out);
    let flushed = out.flush();
    drop(out);
    let status = child.wait().context("waiting for git fast-import")?;
    written?;
    flushed.context("writing to git fast-import")?;
    if !status.success() {
        bail!("git fast-import failed: {status}");
    }
    Ok(())
}

fn write_stream(shape: &Shape, out: &mut impl std::io::Write) -> Result<()> {
    const EPOCH: u64 = 1_600_000_000;
    let mut rng = Rng(shape.seed);
    let mut files: Vec<Vec<u8>> = Vec::new();
    let path = |i: usize| format!("d{:02}/f{:05}.bin", i as u32 % shape.dirs, i);
    for n in 1..=shape.commits {
        let ts = EPOCH + u64::from(n) * 600;
        let mut touched: Vec<usize> = Vec::new();
        for _ in 0..shape.changes_per_commit {
            let add = files.len() < shape.changes_per_commit as usize
                || (files.len() < shape.max_files as usize && rng.percent(shape.new_file_percent));
            if add {
                let len = rng.range(shape.new_file_size);
                files.push(rng.bytes(len));
                touched.push(files.len() - 1);
                continue;
            }
            // A file not yet changed by this commit (one path, one blob per commit).
            let i = loop {
                let i = rng.below(files.len() as u64) as usize;
                if !touched.contains(&i) {
                    break i;
                }
            };
            let file = &mut files[i];
            let len = rng.range(shape.window).min(file.len());
            let off = rng.below((file.len() - len + 1) as u64) as usize;
            rng.fill(&mut file[off..off + len]);
            if file.len() < shape.max_file_size && rng.percent(shape.append_percent) {
                let extra = rng.range(shape.append);
                let start = file.len();
                file.resize(start + extra, 0);
                rng.fill(&mut file[start..]);
            }
            touched.push(i);
        }
        let names: Vec<String> = touched.iter().map(|&i| path(i)).collect();
        let msg = format!(
            "Change {} file(s) in commit {n}\n\nTouches {}.\n",
            names.len(),
            names.join(", ")
        );
        write!(
            out,
            "commit refs/heads/main\nmark :{n}\n\
             author A U Thor <author@example.com> {ts} +0000\n\
             committer C O Mitter <committer@example.com> {ts} +0000\n\
             data {}\n{msg}\n",
            msg.len()
        )?;
        for (&i, name) in touched.iter().zip(&names) {
            write!(out, "M 100644 inline {name}\ndata {}\n", files[i].len())?;
            out.write_all(&files[i])?;
            out.write_all(b"\n")?;
        }
        out.write_all(b"\n")?;
        if n % shape.tag_every == 0 {
            let k = n / shape.tag_every;
            let msg = format!("Release {k}\n");
            write!(
                out,
                "tag v{k}\nfrom :{n}\ntagger R E Leaser <release@example.com> {ts} +0000\n\
                 data {}\n{msg}\n",
                msg.len()
            )?;
        }
        if n % shape.branch_every == 0 {
            write!(
                out,
                "reset refs/heads/release-{}\nfrom :{n}\n\n",
                n / shape.branch_every
            )?;
        }
    }
    Ok(())
}
