//! Reading `/proc`: CPU time, memory high-water marks and child processes (Linux only).
//!
//! Used by the CGI bridge (`/__stats`: CPU and peak RSS of the `git http-backend` children) and by
//! the benchmark (CPU and peak RSS of the `codestorage` process). Safe code only: the workspace
//! forbids `unsafe`, so there is no `getrusage`; `/proc` has everything needed.

use std::io;
use std::process::Command;
use std::sync::OnceLock;

/// CPU times of one process, in clock ticks (`/proc/<pid>/stat` fields 14-17).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// User time of the process itself (all its threads, live and exited).
    pub utime: u64,
    /// System time of the process itself.
    pub stime: u64,
    /// User time of its waited-for children (and, through them, of their descendants).
    pub cutime: u64,
    /// System time of its waited-for children.
    pub cstime: u64,
}

impl CpuTicks {
    /// utime + stime, in milliseconds.
    pub fn own_ms(&self) -> u64 {
        ticks_to_ms(self.utime + self.stime)
    }

    /// cutime + cstime, in milliseconds.
    pub fn children_ms(&self) -> u64 {
        ticks_to_ms(self.cutime + self.cstime)
    }
}

/// `pid` is a number or `"self"`.
pub fn cpu_ticks(pid: &str) -> io::Result<CpuTicks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat: {stat:?}")))?;
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no field {n}")))
    };
    Ok(CpuTicks {
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...); `None` if the process is gone
/// or has no such field (a zombie has no memory fields).
pub fn status_kb(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Several `kB` fields of `/proc/<pid>/status` at once, in the order asked; `None` if the process
/// is gone. A missing field reads as 0.
pub fn status_kbs<const N: usize>(pid: &str, fields: [&str; N]) -> Option<[u64; N]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut out = [0u64; N];
    for line in status.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let Some(i) = fields.iter().position(|f| *f == name) {
            out[i] = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    Some(out)
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS (`echo 5 > /proc/<pid>/clear_refs`).
pub fn reset_peak_rss(pid: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// The direct children of `pid` (those forked by its main thread, which is where git forks).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `pid` and all its descendants, parents before children.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let kids = children(tree[i]);
        tree.extend(kids);
        i += 1;
    }
    tree
}

/// Clock ticks per second for `/proc/*/stat` (`getconf CLK_TCK`; 100 if that fails, which is
/// USER_HZ on every common Linux architecture).
pub fn ticks_per_sec() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

fn ticks_to_ms(ticks: u64) -> u64 {
    ticks * 1000 / ticks_per_sec()
}
