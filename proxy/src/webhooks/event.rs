//! What webhooks say: the event names and the payload shapes of compat.md §6.3, built from what
//! happened (a ref moved, a sync run started or ended). Payloads are serialized once, here;
//! the same bytes are signed and sent on every attempt.

use codestorage_store::{Namespace, ObjectId, RepoRecord};
use serde_json::{Value, json};

/// The null id: the "before" of a created ref, the "after" of a deleted one.
const ZERO: &str = "0000000000000000000000000000000000000000";

/// Longest `error` text in a `repo.sync.failed` payload.
const MAX_ERROR_LEN: usize = 300;

/// An event type a subscription can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// A ref moved.
    Push,
    /// A sync run began.
    SyncStarted,
    /// A sync run succeeded.
    SyncSucceeded,
    /// A sync run failed.
    SyncFailed,
}

impl EventKind {
    /// Every kind, in documentation order.
    pub const ALL: [EventKind; 4] = [
        EventKind::Push,
        EventKind::SyncStarted,
        EventKind::SyncSucceeded,
        EventKind::SyncFailed,
    ];

    /// The wire name (`X-Pierre-Event`, subscription `events`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Push => "push",
            EventKind::SyncStarted => "repo.sync.started",
            EventKind::SyncSucceeded => "repo.sync.succeeded",
            EventKind::SyncFailed => "repo.sync.failed",
        }
    }

    /// The kind called `name`.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, ready to be queued for every subscription that wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its kind.
    pub kind: EventKind,
    /// The JSON payload, serialized.
    pub body: String,
}

/// One ref that moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefMove {
    /// The full ref name.
    pub name: String,
    /// Its value before (`None`: created).
    pub before: Option<ObjectId>,
    /// Its value after (`None`: deleted).
    pub after: Option<ObjectId>,
}

impl RefMove {
    /// A move of `name` from `before` to `after`, where a null id means "absent".
    pub fn from_ids(name: &str, before: ObjectId, after: ObjectId) -> RefMove {
        RefMove {
            name: name.to_owned(),
            before: (!before.is_null()).then_some(before),
            after: (!after.is_null()).then_some(after),
        }
    }

    /// Whether the ref actually changed.
    pub fn moved(&self) -> bool {
        self.before != self.after
    }
}

fn id_or_zero(id: Option<ObjectId>) -> String {
    id.map_or_else(|| ZERO.to_owned(), |id| id.to_string())
}

fn repository(record: &RepoRecord) -> Value {
    json!({ "id": record.id, "url": record.name })
}

/// A `push` event: the §6.3 fields (all strings) plus the namespace.
pub fn push(record: &RepoRecord, org: &str, ns: Namespace, m: &RefMove, at: &str) -> Event {
    let body = json!({
        "repository": repository(record),
        "ref": m.name,
        "before": id_or_zero(m.before),
        "after": id_or_zero(m.after),
        "customer_id": org,
        "pushed_at": at,
        "namespace": ns.as_str(),
    });
    Event {
        kind: EventKind::Push,
        body: body.to_string(),
    }
}

/// A sync run, as the `repo.sync.*` events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRun {
    /// Completed runs before this one.
    pub previous_runs: u64,
    /// Whether the repository had never synced successfully before this run began.
    pub is_first_sync: bool,
    /// When the run began (before the upstream fetch).
    pub started_at: String,
}

/// How a sync run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEnd {
    /// It succeeded.
    Succeeded,
    /// It failed, with the error.
    Failed(String),
}

/// A concise, single-line form of a sync error.
fn concise(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default().trim();
    if line.len() <= MAX_ERROR_LEN {
        return line.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// `repo.sync.started`: `run_count` counts the runs completed before it.
pub fn sync_started(record: &RepoRecord, org: &str, run: &SyncRun) -> Event {
    let body = json!({
        "type": EventKind::SyncStarted.as_str(),
        "repository": repository(record),
        "run_count": run.previous_runs,
        "is_first_sync": run.is_first_sync,
        "started_at": run.started_at,
        "customer_id": org,
    });
    Event {
        kind: EventKind::SyncStarted,
        body: body.to_string(),
    }
}

/// `repo.sync.succeeded` / `repo.sync.failed`: `run_count` includes the run that just ended.
pub fn sync_ended(
    record: &RepoRecord,
    org: &str,
    run: &SyncRun,
    end: &SyncEnd,
    completed_at: &str,
) -> Event {
    let kind = match end {
        SyncEnd::Succeeded => EventKind::SyncSucceeded,
        SyncEnd::Failed(_) => EventKind::SyncFailed,
    };
    let mut body = json!({
        "type": kind.as_str(),
        "repository": repository(record),
        "run_count": run.previous_runs + 1,
        "is_first_sync": run.is_first_sync,
        "started_at": run.started_at,
        "completed_at": completed_at,
        "customer_id": org,
    });
    if let (SyncEnd::Failed(e), Some(obj)) = (end, body.as_object_mut()) {
        obj.insert("error".into(), Value::String(concise(e)));
    }
    Event {
        kind,
        body: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RepoRecord {
        RepoRecord {
            id: "r0123456789abcdef".into(),
            name: "team/app".into(),
            created_at: 0,
            default_branch: "main".into(),
            upstream: None,
            org: None,
            first_synced_at: None,
            credential: None,
        }
    }

    #[test]
    fn push_payload_has_the_documented_string_fields() {
        let id = ObjectId::from_hex(b"1111111111111111111111111111111111111111").expect("id");
        let m = RefMove {
            name: "refs/heads/main".into(),
            before: None,
            after: Some(id),
        };
        let e = push(
            &record(),
            "acme",
            Namespace::Ephemeral,
            &m,
            "2024-01-20T10:30:00Z",
        );
        assert_eq!(e.kind, EventKind::Push);
        let v: Value = serde_json::from_str(&e.body).expect("json");
        assert_eq!(v["repository"]["id"], "r0123456789abcdef");
        assert_eq!(v["repository"]["url"], "team/app");
        assert_eq!(v["before"], ZERO);
        assert_eq!(v["after"], id.to_string());
        assert_eq!(v["customer_id"], "acme");
        assert_eq!(v["namespace"], "ephemeral");
        assert!(v.get("type").is_none(), "push has no type field");
    }

    #[test]
    fn sync_payloads_count_runs_as_documented() {
        let run = SyncRun {
            previous_runs: 2,
            is_first_sync: false,
            started_at: "2026-03-17T10:00:00Z".into(),
        };
        let s: Value = serde_json::from_str(&sync_started(&record(), "o", &run).body).expect("j");
        assert_eq!(s["run_count"], 2);
        assert_eq!(s["type"], "repo.sync.started");
        let long = format!("upstream unreachable: {}\nsecond line", "x".repeat(1000));
        let f = sync_ended(&record(), "o", &run, &SyncEnd::Failed(long), "t");
        assert_eq!(f.kind, EventKind::SyncFailed);
        let f: Value = serde_json::from_str(&f.body).expect("json");
        assert_eq!(f["run_count"], 3);
        let err = f["error"].as_str().expect("error");
        assert!(
            err.len() <= MAX_ERROR_LEN + 3 && !err.contains('\n'),
            "{err}"
        );
        assert_eq!(
            EventKind::parse("repo.sync.failed"),
            Some(EventKind::SyncFailed)
        );
        assert_eq!(EventKind::parse("pull"), None);
    }
}
