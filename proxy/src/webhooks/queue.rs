//! The durable delivery queue: one JSON file per pending delivery under
//! `<data>/webhooks/queue/<delivery id>.json`, written atomically when the event is emitted and
//! rewritten after each failed attempt (attempt count, next attempt time). A delivery's file is
//! removed only once the delivery is settled (delivered, or given up), so one that was in flight
//! when the process died is attempted again after the restart: delivery is at-least-once, and
//! the delivery id (also a header) lets receivers drop duplicates.
//!
//! In memory: the pending deliveries by id, the schedule (next attempt time, id), the ones in
//! flight, and a count per subscription (the queue is bounded per subscription).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use codestorage_store::fsutil;
use serde::{Deserialize, Serialize};

use super::WebhookError;

/// A delivery: one event for one subscription, until it is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The delivery id (a UUID), the same on every attempt.
    pub id: String,
    /// The subscription id.
    pub subscription: String,
    /// The event name.
    pub event: String,
    /// The JSON payload, exactly as signed and sent.
    pub body: String,
    /// When the event was emitted, unix milliseconds.
    pub created_at_ms: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, unix milliseconds.
    pub next_at_ms: u64,
}

/// What the worker should do next.
#[derive(Debug)]
pub enum Next {
    /// Attempt this delivery now (it is marked in flight).
    Due(Delivery),
    /// Nothing is due before this time (unix ms).
    At(u64),
    /// The queue is empty.
    Idle,
}

#[derive(Debug, Default)]
struct State {
    items: HashMap<String, Delivery>,
    due: BTreeSet<(u64, String)>,
    in_flight: HashSet<String>,
    per_sub: HashMap<String, usize>,
}

impl State {
    fn add(&mut self, d: Delivery) {
        self.due.insert((d.next_at_ms, d.id.clone()));
        *self.per_sub.entry(d.subscription.clone()).or_default() += 1;
        self.items.insert(d.id.clone(), d);
    }

    fn forget(&mut self, id: &str) {
        if let Some(d) = self.items.remove(id) {
            self.due.remove(&(d.next_at_ms, d.id.clone()));
            if let Some(n) = self.per_sub.get_mut(&d.subscription) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_sub.remove(&d.subscription);
                }
            }
        }
        self.in_flight.remove(id);
    }
}

/// The queue.
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    state: Mutex<State>,
}

impl Queue {
    /// Load the pending deliveries under `dir` (created if missing). Temp files of interrupted
    /// writes are removed; a file that does not parse is renamed `*.bad` and reported.
    pub fn open(dir: &Path) -> Result<Queue, WebhookError> {
        fsutil::create_dir_all_durable(dir).map_err(WebhookError::io(dir))?;
        let mut state = State::default();
        for entry in std::fs::read_dir(dir).map_err(WebhookError::io(dir))? {
            let path = entry.map_err(WebhookError::io(dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(WebhookError::io(&path))?;
            match serde_json::from_slice::<Delivery>(&bytes) {
                Ok(d) => state.add(d),
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "unreadable queued webhook delivery; set aside as .bad");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        Ok(Queue {
            dir: dir.to_owned(),
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Write one delivery's file (fsynced, renamed into place; the directory is not fsynced).
    fn write(&self, d: &Delivery) -> Result<(), WebhookError> {
        let path = self.path(&d.id);
        let json = serde_json::to_vec(d).map_err(|e| WebhookError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{:08x}", d.id, rand::random::<u32>()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(WebhookError::io(&path))
    }

    /// Queue `deliveries` durably (every file and the directory fsynced), then schedule them.
    pub fn push(&self, deliveries: Vec<Delivery>) -> Result<(), WebhookError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        for d in &deliveries {
            self.write(d)?;
        }
        fsutil::fsync_dir(&self.dir).map_err(WebhookError::io(&self.dir))?;
        let mut state = self.state();
        for d in deliveries {
            state.add(d);
        }
        Ok(())
    }

    /// All pending deliveries (in flight included).
    pub fn len(&self) -> usize {
        self.state().items.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pending deliveries of subscription `sub` (in flight included).
    pub fn pending_for(&self, sub: &str) -> usize {
        self.state().per_sub.get(sub).copied().unwrap_or(0)
    }

    /// The next due delivery (marked in flight), or when to look again.
    pub fn take_due(&self, now_ms: u64) -> Next {
        let mut state = self.state();
        let Some((at, id)) = state.due.iter().next().cloned() else {
            return Next::Idle;
        };
        if at > now_ms {
            return Next::At(at);
        }
        state.due.remove(&(at, id.clone()));
        state.in_flight.insert(id.clone());
        match state.items.get(&id) {
            Some(d) => Next::Due(d.clone()),
            None => Next::At(now_ms),
        }
    }

    /// After a failed attempt: store `d` (its new attempt count and time) and schedule it.
    /// It is scheduled even if the file cannot be rewritten (the file then holds the previous
    /// attempt, which is still a valid delivery). A delivery dropped meanwhile (its
    /// subscription was deleted) stays dropped.
    pub fn reschedule(&self, d: Delivery) -> Result<(), WebhookError> {
        if !self.state().items.contains_key(&d.id) {
            return Ok(());
        }
        let path = self.path(&d.id);
        let written = serde_json::to_vec(&d)
            .map_err(|e| WebhookError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })
            .and_then(|json| fsutil::atomic_write(&path, &json).map_err(WebhookError::io(&path)));
        let mut state = self.state();
        if let Some(old) = state.items.get(&d.id) {
            let old_key = (old.next_at_ms, old.id.clone());
            state.due.remove(&old_key);
            state.in_flight.remove(&d.id);
            state.due.insert((d.next_at_ms, d.id.clone()));
            state.items.insert(d.id.clone(), d);
        } else {
            // Dropped while the file was written.
            drop(state);
            let _ = std::fs::remove_file(&path);
        }
        written
    }

    /// Settle delivery `id` (delivered or given up): its file goes, then its entry.
    pub fn finish(&self, id: &str) -> Result<(), WebhookError> {
        let path = self.path(id);
        let removed = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(WebhookError::io(&path)(e)),
        };
        if removed {
            fsutil::fsync_dir(&self.dir).map_err(WebhookError::io(&self.dir))?;
        }
        self.state().forget(id);
        Ok(())
    }

    /// Drop every pending delivery of subscription `sub` (it was deleted).
    pub fn drop_subscription(&self, sub: &str) -> Result<(), WebhookError> {
        let ids: Vec<String> = self
            .state()
            .items
            .values()
            .filter(|d| d.subscription == sub)
            .map(|d| d.id.clone())
            .collect();
        for id in &ids {
            let path = self.path(id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WebhookError::io(&path)(e)),
            }
            self.state().forget(id);
        }
        if !ids.is_empty() {
            fsutil::fsync_dir(&self.dir).map_err(WebhookError::io(&self.dir))?;
        }
        Ok(())
    }

    /// The subscriptions that have pending deliveries.
    pub fn subscriptions(&self) -> Vec<String> {
        self.state().per_sub.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str, sub: &str, next_at_ms: u64) -> Delivery {
        Delivery {
            id: id.into(),
            subscription: sub.into(),
            event: "push".into(),
            body: "{}".into(),
            created_at_ms: 0,
            attempts: 0,
            next_at_ms,
        }
    }

    #[test]
    fn deliveries_are_taken_in_time_order_and_survive_a_reopen_until_finished() {
        let dir = tempfile::tempdir().expect("tmp");
        let q = Queue::open(dir.path()).expect("open");
        q.push(vec![delivery("b", "s1", 20), delivery("a", "s1", 10)])
            .expect("push");
        q.push(vec![delivery("c", "s2", 30)]).expect("push");
        assert_eq!(q.pending_for("s1"), 2);
        assert!(matches!(q.take_due(5), Next::At(10)));
        let Next::Due(a) = q.take_due(25) else {
            panic!("a is due")
        };
        assert_eq!(a.id, "a");
        // "a" is in flight when the process dies: it is there again after a reopen.
        let q2 = Queue::open(dir.path()).expect("reopen");
        assert_eq!(q2.pending_for("s1"), 2);
        let mut a2 = a.clone();
        a2.attempts = 1;
        a2.next_at_ms = 100;
        q.reschedule(a2).expect("reschedule");
        let Next::Due(b) = q.take_due(25) else {
            panic!("b is due")
        };
        q.finish(&b.id).expect("finish");
        q.drop_subscription("s2").expect("drop");
        assert!(matches!(q.take_due(50), Next::At(100)));
        let q3 = Queue::open(dir.path()).expect("reopen");
        assert_eq!(q3.pending_for("s1"), 1);
        assert_eq!(q3.pending_for("s2"), 0);
        let Next::Due(a3) = q3.take_due(100) else {
            panic!("a is due again")
        };
        assert_eq!(a3.attempts, 1, "the attempt count is durable");
        q3.finish("a").expect("finish");
        assert!(matches!(q3.take_due(u64::MAX), Next::Idle));
    }
}
