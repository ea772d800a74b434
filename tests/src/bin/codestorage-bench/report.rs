//! Results: samples per operation and server, medians, and the printed table.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{Value, json};

/// One run of one operation against one server.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Client wall time, seconds.
    pub wall_s: f64,
    /// Server CPU time (or client CPU where the operation says so), ms.
    pub cpu_ms: Option<f64>,
    /// Server peak RSS, KiB.
    pub rss_kb: Option<f64>,
    /// Server peak anonymous RSS, KiB.
    pub anon_kb: Option<f64>,
}

/// What an issue asks of an operation: printed under the table with the medians, met or missed.
/// A figure to look at, not a test (nothing fails on it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Target {
    /// Largest median wall-time ratio codestorage / git http-backend.
    pub wall_ratio: Option<f64>,
    /// Largest median growth of codestorage's RSS during the operation, MiB: checked against
    /// both the peak RSS and the peak anonymous RSS.
    pub cs_rss_mib: Option<f64>,
}

/// One operation: every run against codestorage and against git http-backend.
#[derive(Debug, Clone)]
pub struct Op {
    pub name: &'static str,
    pub cpu_label: &'static str,
    pub rss_label: &'static str,
    pub anon_label: &'static str,
    pub target: Target,
    pub cs: Vec<Result<Sample, String>>,
    pub git: Vec<Result<Sample, String>>,
}

impl Op {
    pub fn new(name: &'static str) -> Op {
        Op {
            name,
            cpu_label: "server CPU",
            rss_label: "server peak RSS",
            anon_label: "server peak anon RSS",
            target: Target::default(),
            cs: Vec::new(),
            git: Vec::new(),
        }
    }

    pub fn push(&mut self, cs: bool, sample: Result<Sample, String>) {
        if cs {
            self.cs.push(sample);
        } else {
            self.git.push(sample);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RepoInfo {
    pub commits: u64,
    pub refs: u64,
    pub objects: u64,
    pub pack_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct LogSummary {
    pub path: PathBuf,
    pub lines: u64,
    pub warnings: u64,
    pub errors: u64,
    /// A few distinct WARN/ERROR lines, without timestamps.
    pub samples: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RepoReport {
    pub label: String,
    pub source: String,
    pub info: RepoInfo,
    pub runs: usize,
    pub work: PathBuf,
    /// Size of codestorage's data dir after the first mirror's first sync.
    pub cs_stored_bytes: Option<u64>,
    /// codestorage's `[VmRSS, RssAnon, RssFile]` before the first full clone and at the end.
    pub cs_rss_before_clone: Option<[u64; 3]>,
    /// The same before the first push.
    pub cs_rss_before_push: Option<[u64; 3]>,
    pub cs_rss_at_end: Option<[u64; 3]>,
    pub ops: Vec<Op>,
    /// Verifications that passed, and facts about the setup.
    pub notes: Vec<String>,
    /// Anything that went wrong (failed operations are also listed per operation).
    pub failures: Vec<String>,
    pub log: LogSummary,
}

/// CPU times come in clock ticks (10 ms): no ratio unless one side has at least this much and
/// the other is not zero.
const CPU_RATIO_MIN_S: f64 = 0.03;

/// Picks one metric out of a sample.
type Metric = fn(&Sample) -> Option<f64>;
/// Formats a metric's value.
type Format = fn(f64) -> String;

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.3} s")
    } else {
        format!("{s:.2} s")
    }
}

/// The median of one metric over the successful samples, and how many runs failed.
fn cell(samples: &[Result<Sample, String>], metric: Metric) -> (Option<f64>, usize) {
    let ok: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .filter_map(metric)
        .collect();
    let failed = samples.iter().filter(|s| s.is_err()).count();
    (median(ok), failed)
}

impl RepoReport {
    /// The table and the notes, as printed at the end of a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let i = &self.info;
        let _ = writeln!(out, "== {} ({}) ==", self.label, self.source);
        let _ = writeln!(
            out,
            "{} commits, {} refs, {} objects in a {} pack",
            i.commits,
            i.refs,
            i.objects,
            mib(i.pack_bytes as f64)
        );
        if let Some(b) = self.cs_stored_bytes {
            let _ = writeln!(
                out,
                "codestorage data dir after the first sync: {}",
                mib(b as f64)
            );
        }
        let mem = |m: [u64; 3]| {
            let m = m.map(|kb| mib(kb as f64 * 1024.0));
            format!("RSS {} (anon {}, file {})", m[0], m[1], m[2])
        };
        if let Some(m) = self.cs_rss_before_clone {
            let _ = writeln!(out, "codestorage before the first full clone: {}", mem(m));
        }
        if let Some(m) = self.cs_rss_before_push {
            let _ = writeln!(out, "codestorage before the first push:       {}", mem(m));
        }
        if let Some(m) = self.cs_rss_at_end {
            let _ = writeln!(out, "codestorage at the end of the run:       {}", mem(m));
        }
        let _ = writeln!(
            out,
            "medians of {} runs; ratio = codestorage / git http-backend (below 1: codestorage does \
             better).\ncodestorage's RSS figures are growth above its RSS before the operation; \
             git http-backend has no idle process.\nRSS counts mapped pack files, anon RSS does \
             not. CPU is counted in 10 ms ticks (no ratio when both are tiny).\n",
            self.runs
        );
        let _ = writeln!(
            out,
            "{:<32} {:<28} {:>14} {:>17} {:>7}",
            "operation", "metric", "codestorage", "git-http-backend", "ratio"
        );
        let _ = writeln!(out, "{}", "-".repeat(102));
        for op in &self.ops {
            // (label, metric, format, smallest value worth a ratio)
            let metrics: [(&str, Metric, Format, f64); 4] = [
                ("wall (client)", |s| Some(s.wall_s), secs, 0.0),
                (
                    op.cpu_label,
                    |s| s.cpu_ms.map(|ms| ms / 1000.0),
                    secs,
                    CPU_RATIO_MIN_S,
                ),
                (op.rss_label, |s| s.rss_kb.map(|kb| kb * 1024.0), mib, 0.0),
                (op.anon_label, |s| s.anon_kb.map(|kb| kb * 1024.0), mib, 0.0),
            ];
            let mut first = true;
            for (label, metric, fmt, ratio_min) in metrics {
                let (cs, cs_failed) = cell(&op.cs, metric);
                let (git, git_failed) = cell(&op.git, metric);
                if cs.is_none() && git.is_none() && cs_failed == 0 && git_failed == 0 {
                    continue;
                }
                let show = |v: Option<f64>, failed: usize, total: usize| match v {
                    None if failed > 0 => format!("FAILED {failed}/{total}"),
                    None => "-".to_owned(),
                    Some(v) if failed > 0 => format!("{} ({failed} failed)", fmt(v)),
                    Some(v) => fmt(v),
                };
                // A ratio of tick-quantised CPU times is noise when both are tiny or one is 0.
                let meaningful = |a: f64, b: f64| {
                    b > 0.0 && (ratio_min == 0.0 || (a > 0.0 && a.max(b) >= ratio_min))
                };
                let ratio = match (cs, git) {
                    (Some(a), Some(b)) if meaningful(a, b) => format!("{:.2}", a / b),
                    _ => "-".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "{:<32} {:<28} {:>14} {:>17} {:>7}",
                    if first { op.name } else { "" },
                    label,
                    show(cs, cs_failed, op.cs.len()),
                    show(git, git_failed, op.git.len()),
                    ratio
                );
                first = false;
            }
        }
        self.render_targets(&mut out);
        let _ = writeln!(
            out,
            "\ncodestorage log: {} lines, {} WARN, {} ERROR ({})",
            self.log.lines,
            self.log.warnings,
            self.log.errors,
            self.log.path.display()
        );
        for s in &self.log.samples {
            let _ = writeln!(out, "  {s}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "ok: {n}");
        }
        for op in &self.ops {
            for (side, samples) in [("codestorage", &op.cs), ("git http-backend", &op.git)] {
                for (run, s) in samples.iter().enumerate() {
                    if let Err(e) = s {
                        let _ = writeln!(
                            out,
                            "FAILED: {} against {side}, run {}: {e}",
                            op.name,
                            run + 1
                        );
                    }
                }
            }
        }
        for f in &self.failures {
            let _ = writeln!(out, "FAILED: {f}");
        }
        let _ = writeln!(
            out,
            "all samples: {}",
            self.work.join("results.json").display()
        );
        out
    }

    /// The operations' targets, with the medians they are about.
    fn render_targets(&self, out: &mut String) {
        let with_target: Vec<&Op> = self
            .ops
            .iter()
            .filter(|op| op.target.wall_ratio.is_some() || op.target.cs_rss_mib.is_some())
            .collect();
        if with_target.is_empty() {
            return;
        }
        let _ = writeln!(out, "\ntargets (from the issues; figures, not tests):");
        let verdict = |value: f64, max: f64| {
            if value <= max {
                "met".to_owned()
            } else {
                format!("MISSED by {:.0}%", (value / max - 1.0) * 100.0)
            }
        };
        for op in with_target {
            let mut lines = Vec::new();
            if let Some(max) = op.target.wall_ratio {
                let (cs, _) = cell(&op.cs, |s| Some(s.wall_s));
                let (git, _) = cell(&op.git, |s| Some(s.wall_s));
                lines.push(match (cs, git) {
                    (Some(a), Some(b)) if b > 0.0 => format!(
                        "wall ratio {:.2} (target <= {max:.2}): {}",
                        a / b,
                        verdict(a / b, max)
                    ),
                    _ => format!("wall ratio: no median (target <= {max:.2})"),
                });
            }
            if let Some(max) = op.target.cs_rss_mib {
                let metrics: [(&str, Metric); 2] =
                    [(op.rss_label, |s| s.rss_kb), (op.anon_label, |s| s.anon_kb)];
                for (label, metric) in metrics {
                    let (cs, _) = cell(&op.cs, metric);
                    lines.push(match cs {
                        Some(kb) => {
                            let m = kb / 1024.0;
                            format!(
                                "codestorage {label} {m:.1} MiB (target <= {max:.0} MiB): {}",
                                verdict(m, max)
                            )
                        }
                        None => format!("codestorage {label}: no median (target <= {max:.0} MiB)"),
                    });
                }
            }
            for (i, line) in lines.iter().enumerate() {
                let _ = writeln!(out, "  {:<30} {line}", if i == 0 { op.name } else { "" });
            }
        }
    }

    /// Everything, every sample included.
    pub fn to_json(&self) -> Value {
        let samples = |v: &[Result<Sample, String>]| -> Vec<Value> {
            v.iter()
                .map(|s| match s {
                    Ok(s) => json!({
                        "wall_s": s.wall_s,
                        "cpu_ms": s.cpu_ms,
                        "rss_kb": s.rss_kb,
                        "anon_kb": s.anon_kb,
                    }),
                    Err(e) => json!({ "error": e }),
                })
                .collect()
        };
        json!({
            "repo": self.label,
            "source": self.source,
            "commits": self.info.commits,
            "refs": self.info.refs,
            "objects": self.info.objects,
            "pack_bytes": self.info.pack_bytes,
            "cs_stored_bytes": self.cs_stored_bytes,
            "cs_rss_before_clone_kb": self.cs_rss_before_clone,
            "cs_rss_before_push_kb": self.cs_rss_before_push,
            "cs_rss_at_end_kb": self.cs_rss_at_end,
            "runs": self.runs,
            "operations": self.ops.iter().map(|op| json!({
                "name": op.name,
                "cpu": op.cpu_label,
                "rss": op.rss_label,
                "target": {
                    "wall_ratio_max": op.target.wall_ratio,
                    "cs_rss_mib_max": op.target.cs_rss_mib,
                },
                "codestorage": samples(&op.cs),
                "git_http_backend": samples(&op.git),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "failures": self.failures,
            "log": {
                "path": self.log.path,
                "warnings": self.log.warnings,
                "errors": self.log.errors,
                "samples": self.log.samples,
            },
        })
    }
}
