//! Fault injection for crash tests: the process aborts at a named point of a write path.
//!
//! `CODESTORAGE_FAULT=<point>` makes the process call [`std::process::abort`] (as abrupt as a
//! SIGKILL: no destructors, no flushes) the first time it reaches `<point>`;
//! `CODESTORAGE_FAULT=<point>:<n>` at the `n`-th time. The variable is read once, at the first
//! point reached; unset (production), a point costs one initialized-`OnceLock` check and a
//! comparison. The e2e suite arms the real binary with it (`tests/e2e/faults.rs`).
//!
//! The points (see [`POINTS`]) sit between the durable steps whose order the crash-safety
//! argument relies on; after an abort at any of them the data directory opens, passes
//! `codestorage fsck`, and holds either the old or the new state.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every fault point, with where it sits.
pub const POINTS: &[(&str, &str)] = &[
    (
        "ingest-pack-written",
        "a received pack and its .idx are written in the quarantine, not yet verified or promoted",
    ),
    (
        "commit-pack-promoted",
        "a transaction's pack is in objects/pack (with its .keep), not yet in the journal",
    ),
    (
        "commit-journaled",
        "a transaction is in the fsynced journal, the sled index not yet updated",
    ),
    (
        "commit-indexed",
        "a transaction is journaled and indexed, not yet published nor acknowledged",
    ),
    (
        "graph-layer-written",
        "a commit-graph layer file is written, the chain file does not name it yet",
    ),
    (
        "compact-pack-written",
        "a compaction wrote and indexed its new packs in tmp/, not yet moved into objects/pack",
    ),
    (
        "compact-packs-promoted",
        "a compaction's packs are in objects/pack (with .keep), the replaced ones marked, not yet journaled",
    ),
    (
        "compact-journaled",
        "a compaction is in the fsynced journal, the replaced packs not yet deleted",
    ),
    (
        "sync-mid-fetch",
        "a sync has received over 32 KiB of the upstream's pack into its quarantine",
    ),
    (
        "sync-objects-landed",
        "a sync's pack is received and verified, local refs not yet moved",
    ),
    (
        "push-upstream-accepted",
        "the upstream accepted a forwarded push, local refs not yet moved",
    ),
    (
        "migrate-step-done",
        "a format migration step's changes are durable, FORMAT not yet rewritten",
    ),
];

/// The name of the environment variable that arms a point.
pub const ENV: &str = "CODESTORAGE_FAULT";

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

/// Parse `<point>[:<n>]`: `None` unless `<point>` is one of [`POINTS`] and `n` is positive.
fn parse(value: &str) -> Option<(String, u64)> {
    let (name, n) = match value.split_once(':') {
        Some((name, n)) => (name, n.trim().parse::<u64>().ok().filter(|n| *n > 0)?),
        None => (value, 1),
    };
    let name = name.trim();
    POINTS
        .iter()
        .any(|(p, _)| *p == name)
        .then(|| (name.to_owned(), n))
}

fn armed() -> Option<&'static (String, u64)> {
    ARMED
        .get_or_init(|| {
            let value = std::env::var(ENV).ok()?;
            let parsed = parse(&value);
            if parsed.is_none() {
                eprintln!(
                    "codestorage: {ENV}={value:?} is not <point>[:<n>] with a known point; ignored"
                );
            }
            parsed
        })
        .as_ref()
}

/// The armed point and its hit number, if any (read from the environment on first use); the
/// server logs it at start, loudly.
pub fn armed_point() -> Option<(&'static str, u64)> {
    armed().map(|(name, n)| (name.as_str(), *n))
}

/// Abort the process here if `name` is the armed point (and this is its `n`-th hit).
#[inline]
pub fn point(name: &'static str) {
    if let Some((armed_name, n)) = armed()
        && armed_name == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *n
    {
        eprintln!("codestorage: fault point {name} reached; aborting ({ENV})");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_unique_and_unarmed_points_do_nothing() {
        let mut names: Vec<&str> = POINTS.iter().map(|(p, _)| *p).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POINTS.len());
        assert_eq!(
            parse("commit-journaled"),
            Some(("commit-journaled".into(), 1))
        );
        assert_eq!(
            parse("sync-mid-fetch:3"),
            Some(("sync-mid-fetch".into(), 3))
        );
        for bad in [
            "",
            "nonsense",
            "commit-journaled:0",
            "commit-journaled:x",
            ":2",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        if std::env::var_os(ENV).is_none() {
            for (p, _) in POINTS {
                point(p);
            }
        }
    }
}
