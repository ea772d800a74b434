//! The push phase: the same `git push` through codestorage (a mirror, which forwards the push
//! write-through to its upstream) and directly to `git http-backend`.
//!
//! Setup, untimed: the upstream copy `<label>.git` (mirrored by codestorage as `<label>`) is
//! cloned locally, hardlinked, as `<label>-direct.git` and served by the same git-cgi-server: two
//! upstreams with identical history, one pushed to through codestorage, one directly. Both get
//! `http.receivepack true` (git http-backend refuses anonymous pushes otherwise) and
//! `receive.autogc false` (so that no `git gc --auto` starts in the background of a later
//! measurement). The client is a bare clone of the upstream (hardlinked too).
//!
//! Each size and run: one commit on top of the upstream's HEAD that adds fresh files (new content
//! every run, so every push sends its full size) is written into the client with
//! `git fast-import`; then `git push` sends it to each side as the new branch
//! `bench-push/<size>-<run>`, alternating which side goes first. Both upstreams receive the same
//! pushes, so they stay equivalent (their refs are compared at the end). Every push is checked:
//! the branch is on the upstream it was meant for and, through codestorage, served by
//! codestorage. After a push through codestorage the benchmark waits (untimed) for the
//! background sync that codestorage starts after a push, so that it does not run into the next
//! measurement.
//!
//! Sizes: a small push (3 text files of about 1.8 KB), 50 MiB (200 files of 256 KiB of
//! pseudo-random, incompressible bytes) and 200 MiB (200 files of 1 MiB). Both large pushes have
//! more than 100 objects, so with git's default `receive.unpackLimit` the upstream keeps them as
//! a pack (`index-pack`); the small one it explodes into loose objects (`unpack-objects`), on both
//! sides alike. (50 files of 1 MiB would be exploded too: zlib and one file per object make the
//! upstream's share of the push several times slower, hiding what codestorage adds.)
//!
//! Measured as for clones (see `bench.rs`): client wall time; codestorage's CPU, its peak RSS above
//! its RSS before the push and its peak anonymous RSS; for git http-backend its children
//! (`http-backend`, `receive-pack`, `unpack-objects`/`index-pack`) from `/__stats`. The wall time
//! through codestorage includes its sync from the upstream before the advertisement and the
//! upstream's own receive-pack; the upstream's CPU and RSS are not in codestorage's figures.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::bench::{Bench, Side, cs_memory, head_lines};
use crate::generate::Rng;
use crate::report::{Op, Sample, Target};
use crate::util::{git_env, run};

/// How long codestorage's sync after a push may take before the benchmark gives up waiting.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1800);

/// One push size.
struct PushSize {
    /// The operation's name in the table.
    name: &'static str,
    /// Part of the branch name and of the paths of the added files.
    tag: &'static str,
    files: usize,
    /// Size of each file, bytes.
    file_bytes: usize,
    /// Pseudo-random bytes (incompressible), else short lines of text.
    random: bool,
    target: Target,
}

const MIB: usize = 1024 * 1024;

/// Issue 3: a push through codestorage takes at most 1.15 x a direct push, small and large; the
/// server grows by at most 64 MiB during a 200 MB push.
const SIZES: [PushSize; 3] = [
    PushSize {
        name: "push small (3 files)",
        tag: "small",
        files: 3,
        file_bytes: 1800,
        random: false,
        target: Target {
            wall_ratio: Some(1.15),
            cs_rss_mib: None,
        },
    },
    PushSize {
        name: "push 50 MiB (200 x 256 KiB)",
        tag: "50m",
        files: 200,
        file_bytes: MIB / 4,
        random: true,
        target: Target {
            wall_ratio: Some(1.15),
            cs_rss_mib: None,
        },
    },
    PushSize {
        name: "push 200 MiB (200 x 1 MiB)",
        tag: "200m",
        files: 200,
        file_bytes: MIB,
        random: true,
        target: Target {
            wall_ratio: Some(1.15),
            cs_rss_mib: Some(64.0),
        },
    },
];

impl Bench<'_> {
    pub(crate) fn push_phase(&mut self) -> Result<()> {
        let direct_name = format!("{}-direct", self.label);
        let direct = self.upstream.with_file_name(format!("{direct_name}.git"));
        let direct_url = format!("{}/{direct_name}.git", self.cgi.base);
        eprintln!(
            "[{}] push: preparing {} and the client",
            self.label,
            direct.display()
        );
        run(plain_git(None)
            .args(["clone", "--mirror", "-q"])
            .arg(&self.upstream)
            .arg(&direct))?;
        for repo in [&self.upstream, &direct] {
            for (key, value) in [("http.receivepack", "true"), ("receive.autogc", "false")] {
                run(plain_git(Some(repo)).args(["config", key, value]))?;
            }
        }
        let client = self.clients.join("push-client.git");
        run(self
            .git(None)
            .args(["clone", "--bare", "-q"])
            .arg(&self.upstream)
            .arg(&client))?;
        let parent = run(self.git(Some(&client)).args(["rev-parse", "HEAD"]))?;
        let parent = parent.trim().to_owned();
        self.wait_cs_idle()
            .map_err(|e| anyhow::anyhow!("before the pushes: {e}"))?;
        self.report.cs_rss_before_push = cs_memory(self.cs.pid());

        for (k, size) in SIZES.iter().enumerate() {
            let mut op = Op::new(size.name);
            op.target = size.target;
            for i in 0..self.runs {
                self.progress(size.name, i);
                let branch = format!("refs/heads/bench-push/{}-{}", size.tag, i + 1);
                let seed = 0x5EED_9000_0000 + ((k as u64) << 16) + i as u64;
                let commit = write_commit(&client, &self.client_home, &branch, &parent, size, seed)
                    .with_context(|| format!("writing the commit of {branch}"))?;
                for side in Self::order(i) {
                    let (url, upstream) = match side {
                        Side::Cs => (self.url(Side::Cs), self.upstream.clone()),
                        Side::Git => (direct_url.clone(), direct.clone()),
                    };
                    let mut cmd = self.git(Some(&client));
                    cmd.args(["push", "-q", &url, &format!("{branch}:{branch}")]);
                    let sample = self.timed_git(side, cmd);
                    let idle = if side == Side::Cs {
                        self.wait_cs_idle()
                    } else {
                        Ok(())
                    };
                    let sample = sample
                        .and_then(|s| idle.map(|()| s))
                        .and_then(|s| self.check_push(side, &upstream, &branch, &commit, s));
                    op.push(side == Side::Cs, sample);
                }
            }
            self.report.ops.push(op);
        }
        self.compare_upstreams(&direct);
        Ok(())
    }

    /// After a push: the branch is `commit` on `upstream` and, for codestorage, in what it serves.
    fn check_push(
        &self,
        side: Side,
        upstream: &Path,
        branch: &str,
        commit: &str,
        sample: Sample,
    ) -> Result<Sample, String> {
        let on_upstream =
            run(plain_git(Some(upstream)).args(["rev-parse", "--verify", "-q", branch]))
                .map_err(|e| format!("after the push, {branch} is not on the upstream: {e:#}"))?;
        if on_upstream.trim() != commit {
            return Err(format!(
                "after the push, {branch} is {} on the upstream {}, expected {commit}",
                on_upstream.trim(),
                upstream.display()
            ));
        }
        if side == Side::Cs {
            let served = run(self
                .git(None)
                .args(["ls-remote", &self.url(Side::Cs), branch]))
            .map_err(|e| format!("{e:#}"))?;
            if served.split_whitespace().next() != Some(commit) {
                return Err(format!(
                    "after the push, codestorage serves {branch} as {:?}, expected {commit}",
                    served.trim()
                ));
            }
        }
        Ok(sample)
    }

    /// Waits until codestorage runs no sync of the benchmarked mirror (a push starts one as it
    /// ends); an error if that sync failed.
    fn wait_cs_idle(&self) -> Result<(), String> {
        let started = Instant::now();
        let path = format!("/api/repos/{}", self.label);
        loop {
            let (status, text) = self
                .cs_api("GET", &path, None)
                .map_err(|e| format!("{e:#}"))?;
            if status != 200 {
                return Err(format!("GET {path} answered {status}: {text}"));
            }
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let sync = &v["sync"];
            if sync["in_progress"] == Value::Bool(false) {
                return match &sync["last_error"] {
                    Value::Null => Ok(()),
                    e => Err(format!("codestorage's sync after the push failed: {e}")),
                };
            }
            if started.elapsed() > IDLE_TIMEOUT {
                return Err(format!(
                    "codestorage's sync after the push still runs after {IDLE_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Both upstreams got the same pushes: their refs must be equal.
    fn compare_upstreams(&mut self, direct: &Path) {
        let refs = |repo: &Path| {
            run(plain_git(Some(repo)).args(["for-each-ref", "--format=%(objectname) %(refname)"]))
        };
        match (refs(&self.upstream), refs(direct)) {
            (Ok(a), Ok(b)) if a == b => self.report.notes.push(format!(
                "push: the upstream pushed to through codestorage and the one pushed to directly \
                 have the same refs ({} refs)",
                a.lines().count()
            )),
            (Ok(a), Ok(b)) => self.report.failures.push(format!(
                "push: the two upstreams differ\n--- through codestorage ---\n{}\n--- direct ---\n{}",
                head_lines(&a, 20),
                head_lines(&b, 20)
            )),
            (a, b) => self.report.failures.push(format!(
                "push: could not list the upstreams' refs: {:?} {:?}",
                a.err(),
                b.err()
            )),
        }
    }
}

/// `git` without any user config (for the server-side repos).
fn plain_git(dir: Option<&Path>) -> Command {
    let mut cmd = Command::new("git");
    git_env(&mut cmd, None);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd
}

/// Writes one commit on top of `parent` adding `size.files` new files under
/// `bench-push/<tag>-<n>/` into `client` as `branch` (with `git fast-import`); its id.
fn write_commit(
    client: &Path,
    home: &Path,
    branch: &str,
    parent: &str,
    size: &PushSize,
    seed: u64,
) -> Result<String> {
    let name = branch.rsplit('/').next().unwrap_or(branch);
    let mut cmd = Command::new("git");
    git_env(&mut cmd, Some(home));
    let mut child = cmd
        .current_dir(client)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting git fast-import")?;
    let stdin = child.stdin.take().context("fast-import stdin")?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdin);
    let written = (|| -> std::io::Result<()> {
        let mut rng = Rng::new(seed);
        let msg = format!("bench: push {name} ({} files)\n", size.files);
        let ts = 1_950_000_000 + seed % 1_000_000;
        write!(
            out,
            "commit {branch}\ncommitter Bench <bench@example.com> {ts} +0000\ndata {}\n{msg}\
             from {parent}\n",
            msg.len()
        )?;
        let mut buf = vec![0u8; size.file_bytes];
        for f in 0..size.files {
            if size.random {
                rng.fill(&mut buf);
            } else {
                let mut text = String::with_capacity(size.file_bytes + 64);
                let mut line = 0;
                while text.len() < size.file_bytes {
                    line += 1;
                    text.push_str(&format!(
                        "file {f} line {line}: {:016x}{:016x}\n",
                        rng.next(),
                        rng.next()
                    ));
                }
                buf = text.into_bytes();
            }
            let ext = if size.random { "bin" } else { "txt" };
            write!(
                out,
                "M 100644 inline bench-push/{name}/f{f:03}.{ext}\ndata {}\n",
                buf.len()
            )?;
            out.write_all(&buf)?;
            out.write_all(b"\n")?;
        }
        out.write_all(b"\n")?;
        out.flush()
    })();
    drop(out);
    let output = child
        .wait_with_output()
        .context("waiting for git fast-import")?;
    written.context("writing to git fast-import")?;
    if !output.status.success() {
        bail!(
            "git fast-import failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    let mut cmd = Command::new("git");
    git_env(&mut cmd, Some(home));
    let id = run(cmd
        .current_dir(client)
        .args(["rev-parse", "--verify", branch]))?;
    Ok(id.trim().to_owned())
}
