//! Keeping mirrors in step with their upstreams: coalesced sync requests, the background
//! refresh schedule (jittered interval, capped exponential backoff after failures), sync
//! status, and the "not ready until the first sync succeeded" gate.
//!
//! At most one sync runs per repository. A request while one runs sets a flag so exactly one
//! more run follows (it may see newer upstream state); any number of requests coalesce into it.
//! Towards each upstream host the manager is polite ([`politeness`]): a few syncs at a time, and
//! none while the host's `Retry-After` runs.

pub mod fetch;
pub mod forge_hooks;
pub mod politeness;
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
use crate::upstream::{CredentialSource, UpstreamClient};
use crate::webhooks::{SyncEnd, SyncRun, Webhooks};
use politeness::Hosts;

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
    /// While a run receives from the upstream: what it has received so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<fetch::ProgressView>,
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

/// What a run that found its repository detached says (it ends the run loop, uncounted).
const DETACHED: &str = "the repository has no upstream any more";

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
    lock: Arc<RepoLock>,
    /// The progress of the fetch under way.
    progress: Option<Arc<fetch::Progress>>,
}

/// A repository's sync lock: held by a sync run, by a forwarded push or a REST ref change while
/// it moves local refs, and by a compaction. It counts who is waiting for it, so that a
/// compaction (which holds it longest) can give way instead of making a push wait.
#[derive(Debug, Default)]
pub struct RepoLock {
    mutex: Arc<tokio::sync::Mutex<()>>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// Counts one waiter while alive.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl RepoLock {
    /// Wait for the lock.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let _w = Waiting::new(&self.waiting);
        self.mutex.lock().await
    }

    /// Wait for the lock from a blocking thread.
    pub fn blocking_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let _w = Waiting::new(&self.waiting);
        self.mutex.blocking_lock()
    }

    /// Wait for the lock, as a guard that owns its lock.
    pub async fn lock_owned(&self) -> tokio::sync::OwnedMutexGuard<()> {
        let _w = Waiting::new(&self.waiting);
        self.mutex.clone().lock_owned().await
    }

    /// The lock if it is free now.
    pub fn try_lock_owned(
        &self,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, tokio::sync::TryLockError> {
        self.mutex.clone().try_lock_owned()
    }

    /// Whether someone is waiting for the lock.
    pub fn contended(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Acquire) > 0
    }
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
    fetch: Arc<fetch::FetchOptions>,
    interval: Duration,
    slots: Mutex<HashMap<String, Slot>>,
    limit: Semaphore,
    hosts: Hosts,
    /// Asks a throttling upstream for its `Retry-After`.
    probe: UpstreamClient,
    interrupt: Arc<AtomicBool>,
    /// Where `repo.sync.*` events go.
    webhooks: Arc<Webhooks>,
}

fn status_key(rid: &str) -> String {
    format!("sync/{rid}")
}

/// The wait before retrying after `failures` consecutive failed runs, before jitter: 5 s,
/// doubling per failure, capped at 300 s and at the refresh interval.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5 * (1u64 << exp))
        .min(Duration::from_secs(300))
        .min(interval)
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
        fetch: fetch::FetchOptions,
        probe: UpstreamClient,
        interval: Duration,
        interrupt: Arc<AtomicBool>,
        webhooks: Arc<Webhooks>,
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
        let sync_limit = fetch.max_concurrent_syncs.max(1);
        Arc::new(SyncManager {
            store,
            credentials,
            fetch: Arc::new(fetch),
            interval,
            slots: Mutex::new(slots),
            limit: Semaphore::new(sync_limit),
            hosts: Hosts::new(politeness::PER_HOST_SYNCS),
            probe,
            interrupt,
            webhooks,
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The options every fetch from an upstream uses (TLS roots, limits, the http switch).
    pub fn fetch_options(&self) -> Arc<fetch::FetchOptions> {
        self.fetch.clone()
    }

    /// The sync status of `repo`.
    pub fn status(&self, repo: &Repo) -> SyncStatus {
        self.slots()
            .get(&repo.record().name)
            .map(|s| {
                let mut status = s.status.clone();
                status.progress = s.progress.as_ref().map(|p| p.view());
                status
            })
            .unwrap_or_default()
    }

    /// How many syncs are running now.
    pub fn running(&self) -> usize {
        self.slots().values().filter(|s| s.running).count()
    }

    /// Wait until no sync runs (shutdown lets running syncs finish).
    pub async fn wait_idle(&self) {
        while self.running() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The warning shown to clients that fetch from `repo`'s default namespace when what it
    /// serves was last synced more than `bound` ago (mirrors only; `None` when fresh enough, for
    /// local repositories and other namespaces, or with no bound). The age is measured from the
    /// last successful sync, so it grows while the upstream fails (stale-if-error).
    pub fn stale_notice(
        &self,
        repo: &Repo,
        ns: codestorage_store::Namespace,
        bound: Option<Duration>,
    ) -> Option<String> {
        let bound = bound?;
        if ns != codestorage_store::Namespace::Default {
            return None;
        }
        let record = repo.record();
        record.upstream.as_ref()?;
        let status = self.status(repo);
        let last = status
            .last_success_at
            .as_deref()
            .and_then(crate::time::parse_rfc3339)
            .or(record.first_synced_at)?;
        let age = now_unix().saturating_sub(last);
        if age <= bound.as_secs() {
            return None;
        }
        let why = if status.last_error.is_some() {
            format!(
                "the last {} sync attempt(s) failed; serving the last good state",
                status.consecutive_failures.max(1)
            )
        } else {
            "serving the last synced state".to_owned()
        };
        Some(format!(
            "warning: {} was last synced with its upstream {} minutes ago ({why})",
            record.name,
            age / 60
        ))
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
            let Some(upstream) = repo.record().upstream else {
                self.stop_tracking(&name);
                break;
            };
            let host = politeness::host_key(&upstream.url);
            let started = Instant::now();
            let record = repo.record();
            let run = SyncRun {
                previous_runs: self.status(&repo).run_count,
                is_first_sync: record.first_synced_at.is_none(),
                started_at: rfc3339(now_unix()),
            };
            self.webhooks.sync_started(&record, &run).await;
            let mut throttled = self.hosts.throttled_until(&host);
            let result = match throttled {
                // The host asked us to wait: no request goes out; the scheduler comes back.
                Some(until) => Err(format!(
                    "upstream {host} asked to be left alone (HTTP 429/Retry-After); next try in {}s",
                    until.saturating_duration_since(Instant::now()).as_secs() + 1
                )),
                None => {
                    let (result, wait) = self.run_once(&repo, &host, &lock).await;
                    throttled = wait;
                    result
                }
            };
            if matches!(result, Err(ref e) if e == DETACHED) {
                let end = SyncEnd::Failed("the repository was detached from its upstream".into());
                self.webhooks.sync_ended(&repo.record(), &run, &end).await;
                self.stop_tracking(&name);
                break;
            }
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
                    if let Err(e) = repo.update_record(|record| {
                        record.first_synced_at.get_or_insert_with(now_unix);
                        Ok::<_, codestorage_store::StoreError>(())
                    }) {
                        tracing::error!(error = %e, "could not record the first sync");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sync failed"),
            }
            crate::metrics::global().sync_finished(&name, result.is_ok());
            let end = match &result {
                Ok(_) => SyncEnd::Succeeded,
                Err(e) => SyncEnd::Failed(e.clone()),
            };
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
                        let wait = backoff(slot.status.consecutive_failures, self.interval);
                        slot.next_due = Some(Instant::now() + jittered(wait));
                    }
                }
                if let Some(until) = throttled {
                    slot.next_due = Some(slot.next_due.map_or(until, |d| d.max(until)));
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
            self.webhooks.sync_ended(&repo.record(), &run, &end).await;
            if status.1 {
                break;
            }
        }
    }

    /// One sync run of `repo` from `host`, within the host's and the global concurrency limits,
    /// under the repository's lock. Also returns when the host may be contacted again, if it
    /// answered with a throttling status.
    async fn run_once(
        &self,
        repo: &Arc<Repo>,
        host: &str,
        lock: &RepoLock,
    ) -> (Result<fetch::Fetched, String>, Option<Instant>) {
        let host_slots = self.hosts.slots(host);
        let _host_permit = host_slots.acquire().await;
        let _permit = self.limit.acquire().await;
        let _guard = lock.lock().await;
        // Resolved under the lock: a rotated credential or a detach applies from here on.
        let target = match self.credentials.target(repo).await {
            Ok(Some(target)) => target,
            Ok(None) => return (Err(DETACHED.into()), None),
            Err(e) => return (Err(e.to_string()), None),
        };
        tracing::info!("sync started");
        let (r, opts, interrupt) = (repo.clone(), self.fetch.clone(), self.interrupt.clone());
        let probe_target = target.clone();
        let progress = Arc::new(fetch::Progress::default());
        let name = repo.record().name;
        if let Some(slot) = self.slots().get_mut(&name) {
            slot.progress = Some(progress.clone());
        }
        let p = progress.clone();
        let fetching =
            tokio::task::spawn_blocking(move || fetch::run(&r, &target, &opts, &interrupt, &p));
        let outcome = log_progress(fetching, &progress, self.fetch.progress_interval).await;
        if let Some(slot) = self.slots().get_mut(&name) {
            slot.progress = None;
        }
        match outcome {
            Ok(Ok(f)) => (Ok(f), None),
            Ok(Err(e)) => {
                let Some(status) = e.throttle_status() else {
                    return (Err(e.to_string()), None);
                };
                let wait = match self.probe.throttle_probe(&probe_target).await {
                    Some(Some(value)) => {
                        politeness::parse_retry_after(&value, std::time::SystemTime::now())
                    }
                    _ => None,
                };
                let wait = match (status, wait) {
                    (_, Some(w)) => w,
                    (429, None) => politeness::DEFAULT_RETRY_AFTER,
                    // A 503 without Retry-After is an ordinary failure (normal backoff).
                    _ => return (Err(e.to_string()), None),
                };
                let until = self.hosts.throttle(host, wait);
                tracing::warn!(%host, status, wait_s = wait.as_secs(), "upstream throttles; honouring Retry-After");
                let secs = until.saturating_duration_since(Instant::now()).as_secs() + 1;
                (
                    Err(format!(
                        "{e}; the upstream asks us to wait {secs}s (Retry-After)"
                    )),
                    Some(until),
                )
            }
            Err(join) => (Err(format!("sync task failed: {join}")), None),
        }
    }

    /// The lock a sync run holds; a forwarded push takes it to move local refs.
    pub fn repo_lock(&self, name: &str) -> Arc<RepoLock> {
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

    /// A run found its repository without an upstream (detached): end it, uncounted.
    fn stop_tracking(&self, name: &str) {
        if let Some(slot) = self.slots().get_mut(name) {
            slot.running = false;
            slot.pending = false;
            slot.status.in_progress = false;
            // Waiters of this run learn that it ends.
            let finished = slot.finished().borrow().0 + 1;
            slot.finished()
                .send_replace((finished, Some(DETACHED.to_owned())));
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
                let throttled = repo.record().upstream.is_some_and(|u| {
                    self.hosts
                        .throttled_until(&politeness::host_key(&u.url))
                        .is_some()
                });
                let due = !throttled && {
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

/// Await `fetching`, logging `progress` every `every` meanwhile.
async fn log_progress<T>(
    fetching: tokio::task::JoinHandle<T>,
    progress: &fetch::Progress,
    every: Duration,
) -> Result<T, tokio::task::JoinError> {
    let started = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(fetching);
    loop {
        tokio::select! {
            done = &mut fetching => return done,
            _ = tick.tick() => {
                let v = progress.view();
                tracing::info!(
                    phase = v.phase.as_str(),
                    bytes_received = v.bytes_received,
                    objects_received = v.objects_received,
                    objects_total = v.objects_total.unwrap_or(0),
                    elapsed_s = started.elapsed().as_secs(),
                    "sync progress"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        let hour = Duration::from_secs(3600);
        let secs: Vec<u64> = (1..=9).map(|f| backoff(f, hour).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX, hour), Duration::from_secs(300));
        assert_eq!(backoff(0, hour), Duration::from_secs(5));
        // Never later than the next regular refresh.
        assert_eq!(backoff(3, Duration::from_secs(8)), Duration::from_secs(8));
    }

    #[test]
    fn intervals_are_jittered_within_a_fifth_either_way() {
        let d = Duration::from_secs(300);
        let got: Vec<Duration> = (0..200).map(|_| jittered(d)).collect();
        assert!(
            got.iter()
                .all(|j| *j >= d.mul_f64(0.8) && *j <= d.mul_f64(1.2))
        );
        assert!(
            got.iter().any(|j| *j != got[0]),
            "not all the same: {got:?}"
        );
    }
}
