//! The delivery log: every attempt of every delivery of a subscription, readable over REST.
//! One JSON-lines file per subscription under `<data>/webhooks/log/<subscription id>.jsonl`,
//! appended (and fsynced) per attempt and bounded: past twice [`KEEP`] lines the oldest are
//! dropped (atomic rewrite), so at most `2 × KEEP` attempts are kept and at least `KEEP`.
//! A torn last line after a crash is skipped when read.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use codestorage_store::fsutil;
use serde::{Deserialize, Serialize};

use super::WebhookError;

/// Attempts kept per subscription (at least).
pub const KEEP: usize = 200;

/// How an attempt left its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A 2xx: done.
    Delivered,
    /// Failed; another attempt is scheduled.
    Retrying,
    /// Failed for good (retry window over, 410 Gone, or the queue was full).
    Failed,
}

/// One attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The delivery id (the `X-Pierre-Delivery` header).
    pub delivery_id: String,
    /// The event name.
    pub event: String,
    /// 1 for the first attempt (0 when it was never attempted).
    pub attempt: u32,
    /// When it was made (RFC 3339).
    pub attempted_at: String,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// Where that left the delivery.
    pub outcome: Outcome,
    /// When the next attempt is due (RFC 3339), for `retrying`.
    pub next_retry_at: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u64,
}

/// The logs of all subscriptions.
#[derive(Debug)]
pub struct DeliveryLog {
    dir: PathBuf,
    /// Line counts of the files touched so far (counted on first touch).
    lines: Mutex<HashMap<String, usize>>,
}

fn read_lines(path: &Path) -> Result<Vec<String>, WebhookError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(WebhookError::io(path)(e)),
    }
}

impl DeliveryLog {
    /// The logs under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<DeliveryLog, WebhookError> {
        fsutil::create_dir_all_durable(dir).map_err(WebhookError::io(dir))?;
        Ok(DeliveryLog {
            dir: dir.to_owned(),
            lines: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.join(format!("{sub}.jsonl"))
    }

    /// Append `attempt` to the log of `sub`.
    pub fn append(&self, sub: &str, attempt: &Attempt) -> Result<(), WebhookError> {
        let path = self.path(sub);
        let mut line = serde_json::to_string(attempt).map_err(|e| WebhookError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        line.push('\n');
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let count = match lines.get(sub) {
            Some(n) => *n,
            None => {
                // First touch since the start: count, and end a torn last line first.
                let text = match std::fs::read(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(WebhookError::io(&path)(e)),
                };
                if text.last().is_some_and(|b| *b != b'\n') {
                    line.insert(0, '\n');
                }
                text.split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
            }
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(WebhookError::io(&path))?;
        f.write_all(line.as_bytes())
            .map_err(WebhookError::io(&path))?;
        f.sync_data().map_err(WebhookError::io(&path))?;
        drop(f);
        let mut count = count + 1;
        if count > 2 * KEEP {
            let all = read_lines(&path)?;
            let kept = &all[all.len().saturating_sub(KEEP)..];
            let mut text = kept.join("\n");
            text.push('\n');
            fsutil::atomic_write(&path, text.as_bytes()).map_err(WebhookError::io(&path))?;
            count = kept.len();
        }
        lines.insert(sub.to_owned(), count);
        Ok(())
    }

    /// The latest `limit` attempts of `sub`, newest first.
    pub fn read(&self, sub: &str, limit: usize) -> Result<Vec<Attempt>, WebhookError> {
        let _guard = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let lines = read_lines(&self.path(sub))?;
        Ok(lines
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(limit)
            .collect())
    }

    /// Delete the log of `sub`.
    pub fn remove(&self, sub: &str) -> Result<(), WebhookError> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.remove(sub);
        let path = self.path(sub);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(WebhookError::io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> Attempt {
        Attempt {
            delivery_id: format!("d{n}"),
            event: "push".into(),
            attempt: n,
            attempted_at: "2026-01-01T00:00:00Z".into(),
            status_code: Some(500),
            error: None,
            outcome: Outcome::Retrying,
            next_retry_at: None,
            duration_ms: 1,
        }
    }

    #[test]
    fn the_log_is_bounded_newest_first_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = DeliveryLog::open(dir.path()).expect("open");
        for n in 0..(2 * KEEP as u32 + 5) {
            log.append("s", &attempt(n)).expect("append");
        }
        let all = log.read("s", usize::MAX).expect("read");
        assert!(all.len() >= KEEP && all.len() <= 2 * KEEP, "{}", all.len());
        assert_eq!(all[0].attempt, 2 * KEEP as u32 + 4, "newest first");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("s.jsonl"))
            .expect("open");
        f.write_all(b"{\"delivery_id\":\"torn").expect("write");
        let again = DeliveryLog::open(dir.path()).expect("reopen");
        again
            .append("s", &attempt(9999))
            .expect("append after a torn line");
        let latest = again.read("s", 3).expect("read");
        assert_eq!(latest.len(), 3);
        assert_eq!(latest[0].attempt, 9999);
        again.remove("s").expect("remove");
        assert!(again.read("s", 10).expect("read").is_empty());
    }
}
