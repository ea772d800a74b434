//! Store maintenance: compaction and pruning of repositories' packs, on demand
//! (`POST /api/admin/maintain`, `codestorage maintain`) and in the background
//! (`serve --maintain-interval`).
//!
//! A repository is compacted under its sync lock, so a compaction never runs while the same
//! repository syncs or moves refs for a forwarded push or a REST call; and it does not make them
//! wait either: as soon as one asks for the lock, the compaction stops, cleans up and gives the
//! lock up. The background task then leaves the repository to its next pass (and skips a busy
//! one); an explicit `maintain` waits its turn and starts again, and after [`YIELDS`] such
//! restarts it keeps the lock to the end (the operator asked for it: syncs and pushes of that
//! repository then wait for it, rather than starving it). It runs on a blocking thread,
//! one repository at a time, with its writes capped at `--maintain-max-rate` bytes per second. The background task runs geometric
//! compactions (no pruning) and, at most once per [`FULL_EVERY`] per repository, a full one
//! (with pruning) where a namespace is no longer the exact closure of its refs: that is where
//! unreachable objects come from (force-pushes, deleted and expired refs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use codestorage_store::{CompactOptions, CompactStats, Namespace, Repo};

use crate::app::App;

/// How often at most the background task runs a full (pruning) compaction of one repository.
pub const FULL_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Default of `--maintain-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

/// Default of `--maintain-max-rate`: bytes per second a compaction writes at most.
pub const DEFAULT_MAX_RATE: u64 = 64 << 20;

/// Packs a repository needs before the background task looks at it.
const MIN_PACKS: usize = 4;

/// Runs of the explicit route when a compaction was abandoned because refs moved meanwhile.
const RETRIES: usize = 3;

/// Times an explicit compaction gives way to a sync or push before it keeps the lock.
pub const YIELDS: usize = 3;

/// How often a running compaction looks whether someone waits for the repository's lock.
const CONTENTION_POLL: Duration = Duration::from_millis(20);

/// Maintenance settings (`serve --maintain-interval`, `--prune-grace`, `--maintain-max-rate`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Background compaction period (`None`: off).
    pub interval: Option<Duration>,
    /// Objects of packs younger than this are never pruned.
    pub prune_grace: Duration,
    /// Write cap of a compaction in bytes per second (`None`: none).
    pub max_rate: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Some(DEFAULT_INTERVAL),
            prune_grace: codestorage_store::repo::compact::DEFAULT_PRUNE_GRACE,
            max_rate: Some(DEFAULT_MAX_RATE),
        }
    }
}

/// When each repository last had a full compaction (in this process).
static LAST_FULL: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Default::default);

/// Why a repository could not be compacted.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// The store failed.
    #[error("compacting {repo}: {source}")]
    Store {
        /// The repository.
        repo: String,
        /// What failed.
        source: codestorage_store::StoreError,
    },
    /// The blocking task died.
    #[error("compacting {0}: the worker stopped")]
    Worker(String),
}

fn options(app: &App, full: bool) -> CompactOptions {
    CompactOptions {
        full,
        prune_grace: app.config.maintain.prune_grace,
        max_rate: app.config.maintain.max_rate,
    }
}

/// Compact `repo` now: wait for its sync lock (or skip it if busy and `wait` is false), then
/// run on a blocking thread. `Ok(None)`: skipped because busy.
pub async fn compact_repo(
    app: &Arc<App>,
    repo: Arc<Repo>,
    full: bool,
    wait: bool,
) -> Result<Option<CompactStats>, MaintainError> {
    let name = repo.record().name;
    let lock = app.sync.repo_lock(&name);
    let mut attempts = 0;
    let mut yields = 0;
    loop {
        let guard = if wait {
            lock.lock_owned().await
        } else {
            match lock.try_lock_owned() {
                Ok(g) => g,
                Err(_) => {
                    tracing::debug!(repo = %name, "busy syncing; compaction skipped");
                    return Ok(None);
                }
            }
        };
        attempts += 1;
        let opts = options(app, full);
        // Stopped at shutdown, or (unless it gave way often enough) as soon as a sync or push
        // waits for the lock.
        let stop = Arc::new(AtomicBool::new(false));
        let may_yield = !wait || yields < YIELDS;
        let watcher = tokio::spawn({
            let (stop, lock, shutdown) = (stop.clone(), lock.clone(), app.interrupt.clone());
            async move {
                while !((may_yield && lock.contended()) || shutdown.load(Ordering::Relaxed)) {
                    tokio::time::sleep(CONTENTION_POLL).await;
                }
                stop.store(true, Ordering::Release);
            }
        });
        let r = repo.clone();
        let span = tracing::info_span!("compact", repo = %name, full);
        let flag = stop.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let _s = span.enter();
            r.compact(&opts, &flag)
        })
        .await;
        watcher.abort();
        drop(guard);
        let outcome = outcome.map_err(|_| MaintainError::Worker(name.clone()))?;
        let gave_way = stop.load(Ordering::Acquire) && !app.interrupt.load(Ordering::Relaxed);
        let stats = match outcome {
            Err(_) if gave_way => {
                crate::metrics::global().compaction_yielded(full);
                tracing::info!(repo = %name, "compaction gave way to a sync or push");
                yields += 1;
                if !wait {
                    return Ok(None);
                }
                attempts -= 1;
                continue;
            }
            Ok(s) => s,
            Err(source) => {
                crate::metrics::global().compaction_finished(full, None);
                return Err(MaintainError::Store {
                    repo: name.clone(),
                    source,
                });
            }
        };
        crate::metrics::global().compaction_finished(full, Some(&stats));
        if stats.retry && wait && attempts < RETRIES {
            continue;
        }
        if full && stats.skipped.is_none() {
            last_full().insert(name.clone(), Instant::now());
        }
        return Ok(Some(stats));
    }
}

fn last_full() -> std::sync::MutexGuard<'static, HashMap<String, Instant>> {
    LAST_FULL.lock().unwrap_or_else(|p| p.into_inner())
}

/// One background pass over every repository.
pub async fn pass(app: &Arc<App>) {
    for repo in app.store.repos() {
        if app.interrupt.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let name = repo.record().name;
        let view = repo.view();
        let open = Namespace::ALL
            .into_iter()
            .any(|ns| !view.catalog.is_closed(ns));
        let full_due = open
            && last_full()
                .get(&name)
                .is_none_or(|t| t.elapsed() >= FULL_EVERY);
        if !full_due && view.packs.packs().len() < MIN_PACKS {
            continue;
        }
        drop(view);
        match compact_repo(app, repo, full_due, false).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "background compaction failed"),
        }
    }
}

/// Run [`pass`] every `interval` until shutdown.
pub async fn run(
    app: Arc<App>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; the first pass waits a period (start-up is busy enough).
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        pass(&app).await;
    }
}

/// Whether a flag value of `--maintain-interval` means "off".
pub fn parse_interval(s: &str) -> Option<Option<Duration>> {
    let d = crate::expiry::parse_duration(s)?;
    Some((!d.is_zero()).then_some(d))
}
