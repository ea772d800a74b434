//! Keeping mirrors in step with their upstreams: coalesced sync requests, the background
//! refresh schedule (jittered interval, capped exponential backoff after failures), sync
//! status, and the "not ready until the first sync succeeded" gate.
//!
//! At most one sync runs per repository. A request while one runs sets a flag so exactly one
//! more run follows (it may see newer upstream state); any number of requests coalesce into it.

pub mod fetch;
pub mod forge_hooks;
pub mod public;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codestorage_store::{Repo, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::time::{now_unix, rfc3339};
use crate::upstream::CredentialSource;

/// The visible state of a repository's syncing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncStatus {
    /// A run is under way.
    pub in_progress: bool,
    /// Completed runs, successful or not.
    pub run_count: u64,
    /// End of the last successful run.
    pub last_success_at: Option<String>,
    /// The error of the last run, if it failed.
    pub last_error: Option<String>,
    /// End of the last run.
    pub last_run_at: Option<String>,
    /// Failed runs since the last success.
    pub consecutive_failures: u32,
}

/// Whether a mirror may be served yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Serve it.
    Ready,
    /// The first sync has not finished yet (409).
    Syncing,
    /// The first sync failed (502), with the error.
    Failed(String),
}

/// The message clients get while the first sync runs.
pub const SYNC_IN_PROGRESS: &str = "repository sync in progress. please retry shortly";

#[derive(Debug, Default)]
struct Slot {
    running: bool,
    pending: bool,
    status: SyncStatus,
    next_due: Option<Instant>,
    /// Runs started so far.
    started: u64,
    /// (runs finished, error of the last one): what `sync_wait` waits on.
    finished: Option<tokio::sync::watch::Sender<(u64, Option<String>)>>,
    /// Held by a sync run and by a forwarded push while it moves local refs.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Slot {
    fn finished(&mut self) -> &tokio::sync::watch::Sender<(u64, Option<String>)> {
        self.finished
            .get_or_insert_with(|| tokio::sync::watch::channel((0, None)).0)
    }
}

/// Schedules and runs syncs.
pub struct SyncManager {
    store: Arc<Store>,
    credentials: Arc<CredentialSource>,
    allow_http: bool,
    interval: Duration,
    slots: Mutex<HashMap<String, Slot>>,
    limit: Semaphore,
    interrupt: Arc<AtomicBool>,
}

fn status_key(rid: &str) -> String {
    format!("sync/{rid}")
}

fn jittered(d: Duration) -> Duration {
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(factor)
}

impl SyncManager {
    /// A manager for `store`'s mirrors.
    pub fn new(
        store: Arc<Store>,
        credentials: Arc<CredentialSource>,
        allow_http: bool,
        interval: Duration,
        interrupt: Arc<AtomicBool>,
    ) -> Arc<Self> {
        let mut slots = HashMap::new();
        for repo in store.repos() {
            let record = repo.record();
            if record.upstream.is_none() {
                continue;
            }
            let mut status: SyncStatus = store
                .index()
                .soft_get(&status_key(&record.id))
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            status.in_progress = false;
            // Never synced: at once. Otherwise spread the first refresh over one interval.
            let due = if record.first_synced_at.is_none() {
                Instant::now()
            } else {
                Instant::now() + interval.mul_f64(rand::random::<f64>())
            };
            slots.insert(
                record.name.clone(),
                Slot {
                    status,
                    next_due: Some(due),
                    ..Default::default()
                },
            );
        }
        Arc::new(SyncManager {
            store,
            credentials,
            allow_http,
            interval,
            slots: Mutex::new(slots),
            limit: Semaphore::new(4),
            interrupt,
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sync status of `repo`.
    pub fn status(&self, repo: &Repo) -> SyncStatus {
        self.slots()
            .get(&repo.record().name)
            .map(|s| s.status.clone())
            .unwrap_or_default()
    }

    /// Whether `repo` may be served.
    pub fn gate(&self, repo: &Repo) -> Gate {
        let record = repo.record();
        if record.upstream.is_none() || record.first_synced_at.is_some() {
            return Gate::Ready;
        }
        match self
            .slots()
            .get(&record.name)
            .and_then(|s| s.status.last_error.clone())
        {
            Some(err) => Gate::Failed(err),
            None => Gate::Syncing,
        }
    }

    /// Ask for a sync of `repo` (coalesced with one in progress).
    pub fn request(self: &Arc<Self>, repo: Arc<Repo>) {
        let name = repo.record().name;
        {
            let mut slots = self.slots();
            let slot = slots.entry(name.clone()).or_default();
            if slot.running {
                slot.pending = true;
                return;
            }
            slot.running = true;
            slot.status.in_progress = true;
            slot.started += 1;
        }
        let this = self.clone();
        let span = tracing::info_span!("sync", repo = %name);
        tokio::spawn(async move { this.run_loop(repo).await }.instrument(span));
    }

    async fn run_loop(self: Arc<Self>, repo: Arc<Repo>) {
        let name = repo.record().name;
        let lock = self.repo_lock(&name);
        loop {
            let permit = self.limit.acquire().await;
            let guard = lock.lock().await;
            let target = match self.credentials.target(&repo).await {
                Ok(Some(target)) => Ok(target),
                Ok(None) => break,
                Err(e) => Err(e.to_string()),
            };
            let started = Instant::now();
            tracing::info!("sync started");
            let result = match target {
                Ok(target) => {
                    let (r, allow, interrupt) =
                        (repo.clone(), self.allow_http, self.interrupt.clone());
                    match tokio::task::spawn_blocking(move || {
                        fetch::run(&r, &target, allow, &interrupt)
                    })
                    .await
                    {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(join) => Err(format!("sync task failed: {join}")),
                    }
                }
                Err(e) => Err(e),
            };
            drop(guard);
            drop(permit);
            let mut retry = false;
            match &result {
                Ok(f) => {
                    tracing::info!(
                        updated = f.updated,
                        deleted = f.deleted,
                        objects = f.objects,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "sync succeeded"
                    );
                    retry = f.retry;
                    let mut record = repo.record();
                    if record.first_synced_at.is_none() {
                        record.first_synced_at = Some(now_unix());
                        if let Err(e) = repo.set_record(record) {
                            tracing::error!(error = %e, "could not record the first sync");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sync failed"),
            }
            let status = {
                let mut slots = self.slots();
                let slot = slots.entry(name.clone()).or_default();
                let now = rfc3339(now_unix());
                slot.status.run_count += 1;
                slot.status.last_run_at = Some(now.clone());
                match result {
                    Ok(_) => {
                        slot.status.last_success_at = Some(now);
                        slot.status.last_error = None;
                        slot.status.consecutive_failures = 0;
                        slot.next_due = Some(Instant::now() + jittered(self.interval));
                    }
                    Err(e) => {
                        slot.status.last_error = Some(e);
                        slot.status.consecutive_failures += 1;
                        let exp = slot.status.consecutive_failures.saturating_sub(1).min(6);
                        let backoff =
                            Duration::from_secs(5 * (1u64 << exp)).min(Duration::from_secs(300));
                        slot.next_due = Some(Instant::now() + jittered(backoff.min(self.interval)));
                    }
                }
                if retry {
                    slot.pending = true;
                }
                let finished_runs = slot.finished().borrow().0 + 1;
                let error = slot.status.last_error.clone();
                slot.finished().send_replace((finished_runs, error));
                let done = !slot.pending;
                if done {
                    slot.running = false;
                    slot.status.in_progress = false;
                } else {
                    slot.pending = false;
                    slot.started += 1;
                }
                (slot.status.clone(), done)
            };
            if let Ok(json) = serde_json::to_vec(&status.0) {
                let _ = self
                    .store
                    .index()
                    .soft_put(&status_key(&repo.record().id), &json);
            }
            if status.1 {
                break;
            }
        }
    }

    /// The lock a sync run holds; a forwarded push takes it to move local refs.
    pub fn repo_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.slots()
            .entry(name.to_owned())
            .or_default()
            .lock
            .clone()
    }

    /// Run a sync that starts after this call (coalescing with others) and wait for it:
    /// `Err` with the sync's error if it failed.
    pub async fn sync_wait(self: &Arc<Self>, repo: Arc<Repo>) -> Result<(), String> {
        let name = repo.record().name;
        let (target, mut rx) = {
            let mut slots = self.slots();
            let slot = slots.entry(name.clone()).or_default();
            // A run in progress started before us: the one after it is ours.
            (slot.started + 1, slot.finished().subscribe())
        };
        self.request(repo);
        loop {
            {
                let (finished, error) = &*rx.borrow_and_update();
                if *finished >= target {
                    return match error {
                        Some(e) => Err(e.clone()),
                        None => Ok(()),
                    };
                }
            }
            if rx.changed().await.is_err() {
                return Err("sync manager stopped".into());
            }
        }
    }

    /// Stop tracking a deleted repository.
    pub fn forget(&self, name: &str) {
        self.slots().remove(name);
    }

    /// Start tracking a new mirror and run its first sync now.
    pub fn add(self: &Arc<Self>, repo: Arc<Repo>) {
        self.request(repo);
    }

    /// The background refresh loop: requests a sync of every mirror that is due.
    pub async fn schedule(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            for repo in self.store.repos() {
                if repo.record().upstream.is_none() {
                    continue;
                }
                let due = {
                    let slots = self.slots();
                    match slots.get(&repo.record().name) {
                        Some(s) => !s.running && s.next_due.is_some_and(|d| d <= now),
                        None => true,
                    }
                };
                if due {
                    self.request(repo);
                }
            }
        }
    }
}
