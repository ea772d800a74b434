//! Subscriptions: who wants which events, where, signed with which secret. One JSON file per
//! subscription under `<data>/webhooks/subscriptions/<id>.json`, written atomically (write,
//! fsync, rename, fsync dir), held in memory for lookups. The secret is sealed with the
//! server's secret key (context `webhook:<id>`); its plaintext is never stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use codestorage_store::fsutil;
use serde::{Deserialize, Serialize};

use super::WebhookError;
use super::event::EventKind;

/// A stored subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// `wh_` + 24 hex digits.
    pub id: String,
    /// The organisation (JWT `iss`) it belongs to; it sees the events of that org's repos.
    pub org: String,
    /// Where deliveries go.
    pub url: String,
    /// The event names it wants.
    pub events: Vec<String>,
    /// The signing secret, sealed.
    pub secret_sealed: String,
    /// Creation time, unix milliseconds (orders the list).
    pub created_at_ms: u64,
}

impl Subscription {
    /// Whether it wants `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.iter().any(|e| e == kind.as_str())
    }

    /// The context its secret is sealed under.
    pub fn secret_context(id: &str) -> String {
        format!("webhook:{id}")
    }
}

/// All subscriptions: the files and their in-memory copy.
#[derive(Debug)]
pub struct Subscriptions {
    dir: PathBuf,
    by_id: RwLock<BTreeMap<String, Subscription>>,
}

impl Subscriptions {
    /// Load every subscription under `dir` (created if missing). Temp files of an interrupted
    /// write are removed; a file that does not parse stops the start (it is durable truth).
    pub fn open(dir: &Path) -> Result<Subscriptions, WebhookError> {
        fsutil::create_dir_all_durable(dir).map_err(WebhookError::io(dir))?;
        let mut by_id = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(WebhookError::io(dir))? {
            let path = entry.map_err(WebhookError::io(dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(WebhookError::io(&path))?;
            let sub: Subscription =
                serde_json::from_slice(&bytes).map_err(|e| WebhookError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            by_id.insert(sub.id.clone(), sub);
        }
        Ok(Subscriptions {
            dir: dir.to_owned(),
            by_id: RwLock::new(by_id),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Store `sub` durably, then make it visible.
    pub fn insert(&self, sub: Subscription) -> Result<(), WebhookError> {
        let path = self.path(&sub.id);
        let json = serde_json::to_vec_pretty(&sub).map_err(|e| WebhookError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fsutil::atomic_write(&path, &json).map_err(WebhookError::io(&path))?;
        if let Ok(mut m) = self.by_id.write() {
            m.insert(sub.id.clone(), sub);
        }
        Ok(())
    }

    /// Remove subscription `id` of `org`: `Ok(false)` if it does not exist for that org.
    pub fn remove(&self, org: &str, id: &str) -> Result<bool, WebhookError> {
        if self.get(id).is_none_or(|s| s.org != org) {
            return Ok(false);
        }
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WebhookError::io(&path)(e)),
        }
        fsutil::fsync_dir(&self.dir).map_err(WebhookError::io(&self.dir))?;
        if let Ok(mut m) = self.by_id.write() {
            m.remove(id);
        }
        Ok(true)
    }

    /// Subscription `id`.
    pub fn get(&self, id: &str) -> Option<Subscription> {
        self.by_id.read().ok().and_then(|m| m.get(id).cloned())
    }

    /// The subscriptions of `org`, oldest first.
    pub fn of_org(&self, org: &str) -> Vec<Subscription> {
        let mut subs: Vec<Subscription> = self
            .by_id
            .read()
            .map(|m| m.values().filter(|s| s.org == org).cloned().collect())
            .unwrap_or_default();
        subs.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        subs
    }

    /// The subscriptions of `org` that want `kind`.
    pub fn wanting(&self, org: &str, kind: EventKind) -> Vec<Subscription> {
        self.by_id
            .read()
            .map(|m| {
                m.values()
                    .filter(|s| s.org == org && s.wants(kind))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any subscription exists (the fast path of emitting).
    pub fn is_empty(&self) -> bool {
        self.by_id.read().map(|m| m.is_empty()).unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, org: &str, created_at_ms: u64) -> Subscription {
        Subscription {
            id: id.into(),
            org: org.into(),
            url: "https://example.com/h".into(),
            events: vec!["push".into()],
            secret_sealed: "v1:xx".into(),
            created_at_ms,
        }
    }

    #[test]
    fn subscriptions_survive_a_reopen_and_stay_within_their_org() {
        let dir = tempfile::tempdir().expect("tmp");
        let subs = Subscriptions::open(dir.path()).expect("open");
        subs.insert(sub("wh_b", "acme", 2)).expect("insert");
        subs.insert(sub("wh_a", "acme", 1)).expect("insert");
        subs.insert(sub("wh_c", "other", 3)).expect("insert");
        std::fs::write(dir.path().join(".tmp-wh_d.json-1234"), b"{").expect("write");
        let again = Subscriptions::open(dir.path()).expect("reopen");
        let ids: Vec<_> = again.of_org("acme").into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["wh_a", "wh_b"]);
        assert_eq!(again.wanting("acme", EventKind::Push).len(), 2);
        assert!(again.wanting("acme", EventKind::SyncFailed).is_empty());
        assert!(
            !again.remove("acme", "wh_c").expect("remove"),
            "another org's"
        );
        assert!(again.remove("other", "wh_c").expect("remove"));
        assert!(
            Subscriptions::open(dir.path())
                .expect("reopen")
                .get("wh_c")
                .is_none()
        );
        assert!(!dir.path().join(".tmp-wh_d.json-1234").exists());
    }
}
