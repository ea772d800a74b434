//! Outgoing webhooks (compat.md §6): organisation-wide subscriptions, the events that happen
//! here (`push`, `repo.sync.started|succeeded|failed`), and their signed, retried delivery.
//!
//! Emitting only enqueues: the event is written to the durable queue (one fsynced file per
//! delivery) before the push or sync that caused it is acknowledged, and the worker delivers it
//! later, so a slow or dead receiver never holds up a push or a sync. An organisation without
//! subscriptions costs nothing.
//!
//! # Layout
//!
//! - [`event`] — event names and payloads.
//! - [`subscriptions`] — the stored subscriptions (sealed secrets).
//! - [`queue`] — the durable delivery queue.
//! - [`log`] — the bounded per-subscription delivery log.
//! - [`deliver`] — the worker: scheduling, HTTP attempts, backoff, settling.
//! - [`sign`] — the `X-Pierre-Signature` HMAC.
//! - [`target`] — which URLs and addresses may receive webhooks.
//!
//! # Data directory
//!
//! ```text
//! <data>/webhooks/subscriptions/<id>.json   one subscription (atomically replaced)
//! <data>/webhooks/queue/<delivery>.json     one pending delivery (removed once settled)
//! <data>/webhooks/log/<id>.jsonl            the subscription's delivery log (bounded)
//! ```

pub mod deliver;
pub mod event;
pub mod log;
pub mod queue;
pub mod sign;
pub mod subscriptions;
pub mod target;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use codestorage_store::{Namespace, RepoRecord};

use crate::secrets::{Secret, SecretBox, SecretError};
use crate::time::{now_unix, rfc3339};
pub use event::{Event, EventKind, RefMove, SyncEnd, SyncRun};
use queue::{Delivery, Queue};
use subscriptions::{Subscription, Subscriptions};

/// Subscriptions one organisation may have.
pub const MAX_SUBSCRIPTIONS_PER_ORG: usize = 100;
/// Longest secret a subscriber may choose.
pub const MAX_SECRET_LEN: usize = 1024;

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Permit http and non-public targets (the `--allow-http-upstream` dev switch).
    pub allow_dev: bool,
    /// The first retry delay; it doubles per failed attempt (capped at an hour, or at the base
    /// if that is longer).
    pub retry_base: Duration,
    /// How long a delivery is retried before it is marked failed.
    pub retry_window: Duration,
    /// Time limit of one attempt (connect, send, answer).
    pub attempt_timeout: Duration,
    /// Attempts in flight at once, over all subscriptions.
    pub max_in_flight: usize,
    /// Pending deliveries one subscription may have; more are dropped (and logged as failed).
    pub max_pending: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allow_dev: false,
            retry_base: Duration::from_secs(10),
            retry_window: Duration::from_secs(24 * 3600),
            attempt_timeout: Duration::from_secs(15),
            max_in_flight: 8,
            max_pending: 10_000,
        }
    }
}

/// Why webhook state cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A stored record does not parse (or cannot be encoded).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A secret cannot be sealed or opened.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The delivery client cannot be built.
    #[error("webhook client: {0}")]
    Client(String),
    /// A blocking task failed.
    #[error("webhook task failed: {0}")]
    Task(String),
}

impl WebhookError {
    /// A mapper of a file operation's error on `path`.
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WebhookError + '_ {
        move |source| WebhookError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Why a subscription is refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// Bad input (400).
    #[error("{0}")]
    Invalid(String),
    /// The organisation has as many subscriptions as it may (400).
    #[error("an organisation may have at most {0} webhook subscriptions")]
    TooMany(usize),
    /// Storing it failed (500).
    #[error(transparent)]
    Internal(#[from] WebhookError),
}

/// A subscription request, as the REST body gives it.
#[derive(Debug, Clone, Default)]
pub struct NewSubscription {
    /// Where to deliver.
    pub url: String,
    /// Event names.
    pub events: Vec<String>,
    /// The signing secret (generated when absent).
    pub secret: Option<Secret>,
}

/// The outgoing-webhook service: subscriptions, queue, log and the delivery client.
pub struct Webhooks {
    settings: Settings,
    secrets: Arc<SecretBox>,
    subs: Subscriptions,
    queue: Queue,
    log: log::DeliveryLog,
    wake: tokio::sync::Notify,
    client: reqwest::Client,
    local_org: Box<dyn Fn() -> String + Send + Sync>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> Result<String, SecretError> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| SecretError::Random)?;
    Ok(hex::encode(buf))
}

/// Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new delivery id: a UUIDv7 (time-ordered; a counter orders ids of the same millisecond).
fn delivery_id() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    // 48 bits of milliseconds and 12 bits of sequence, strictly increasing in this process.
    let mut stamp = now_ms() << 12;
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = stamp.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                stamp = next;
                break;
            }
            Err(p) => prev = p,
        }
    }
    let ms = stamp >> 12;
    let seq = stamp & 0xfff;
    let rand: u64 = rand::random();
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xffff,
        seq,
        0x8000 | (rand >> 48 & 0x3fff),
        rand & 0xffff_ffff_ffff
    )
}

impl Webhooks {
    /// Open the webhook state under `data_dir/webhooks`. `local_org` names the data directory's
    /// own organisation (the owner of repositories without an `org`).
    pub fn open(
        data_dir: &Path,
        secrets: Arc<SecretBox>,
        settings: Settings,
        local_org: Box<dyn Fn() -> String + Send + Sync>,
    ) -> Result<Arc<Webhooks>, WebhookError> {
        let root = data_dir.join("webhooks");
        let subs = Subscriptions::open(&root.join("subscriptions"))?;
        let queue = Queue::open(&root.join("queue"))?;
        let log = log::DeliveryLog::open(&root.join("log"))?;
        // Deliveries whose subscription is gone (deleted just before a crash) are dropped.
        for sub in queue.subscriptions() {
            if subs.get(&sub).is_none() {
                queue.drop_subscription(&sub)?;
            }
        }
        let client = deliver::client(&settings)?;
        Ok(Arc::new(Webhooks {
            settings,
            secrets,
            subs,
            queue,
            log,
            wake: tokio::sync::Notify::new(),
            client,
            local_org,
        }))
    }

    /// The organisation that owns a repository (its events go to that org's subscriptions).
    pub fn org_of(&self, record: &RepoRecord) -> String {
        record.org.clone().unwrap_or_else(|| (self.local_org)())
    }

    /// Create a subscription for `org`: the stored subscription and its secret in plaintext
    /// (shown once, in the creation response).
    pub async fn subscribe(
        self: &Arc<Self>,
        org: &str,
        req: NewSubscription,
    ) -> Result<(Subscription, Secret), SubscribeError> {
        let url = target::check_subscription_url(&req.url, self.settings.allow_dev)
            .await
            .map_err(|e| SubscribeError::Invalid(e.to_string()))?;
        if req.events.is_empty() {
            return Err(SubscribeError::Invalid(
                "events must name at least one event".into(),
            ));
        }
        let mut kinds = Vec::new();
        for name in &req.events {
            let kind = EventKind::parse(name).ok_or_else(|| {
                let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                SubscribeError::Invalid(format!(
                    "unknown event {name:?}; known events: {}",
                    known.join(", ")
                ))
            })?;
            kinds.push(kind);
        }
        kinds.sort();
        kinds.dedup();
        let secret = match req.secret {
            Some(s) if s.expose().is_empty() => {
                return Err(SubscribeError::Invalid("secret must not be empty".into()));
            }
            Some(s) if s.expose().len() > MAX_SECRET_LEN => {
                return Err(SubscribeError::Invalid(format!(
                    "secret must be at most {MAX_SECRET_LEN} bytes"
                )));
            }
            Some(s) => s,
            None => Secret::new(format!(
                "whsec_{}",
                random_hex(32).map_err(WebhookError::from)?
            )),
        };
        if self.subs.of_org(org).len() >= MAX_SUBSCRIPTIONS_PER_ORG {
            return Err(SubscribeError::TooMany(MAX_SUBSCRIPTIONS_PER_ORG));
        }
        let id = format!("wh_{}", random_hex(12).map_err(WebhookError::from)?);
        let sealed = self
            .secrets
            .seal(&Subscription::secret_context(&id), &secret)
            .map_err(WebhookError::from)?;
        let sub = Subscription {
            id,
            org: org.to_owned(),
            url: url.to_string(),
            events: kinds.iter().map(|k| k.as_str().to_owned()).collect(),
            secret_sealed: sealed,
            created_at_ms: now_ms(),
        };
        let this = self.clone();
        let stored = sub.clone();
        tokio::task::spawn_blocking(move || this.subs.insert(stored))
            .await
            .map_err(|e| WebhookError::Task(e.to_string()))??;
        tracing::info!(subscription = %sub.id, org = %org, events = ?sub.events, "webhook subscription created");
        Ok((sub, secret))
    }

    /// The subscriptions of `org`.
    pub fn list(&self, org: &str) -> Vec<Subscription> {
        self.subs.of_org(org)
    }

    /// Subscription `id` of `org`.
    pub fn get(&self, org: &str, id: &str) -> Option<Subscription> {
        self.subs.get(id).filter(|s| s.org == org)
    }

    /// Delete subscription `id` of `org` with its pending deliveries and its log: `Ok(false)`
    /// if `org` has no such subscription. Blocking (file operations).
    pub fn unsubscribe(&self, org: &str, id: &str) -> Result<bool, WebhookError> {
        if !self.subs.remove(org, id)? {
            return Ok(false);
        }
        self.queue.drop_subscription(id)?;
        self.log.remove(id)?;
        tracing::info!(subscription = %id, org = %org, "webhook subscription deleted");
        Ok(true)
    }

    /// Pending deliveries of every subscription (the queue depth).
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Pending deliveries of subscription `id`.
    pub fn pending(&self, id: &str) -> usize {
        self.queue.pending_for(id)
    }

    /// The latest `limit` attempts of subscription `id` of `org` (newest first) and its
    /// pending delivery count; `None` if `org` has no such subscription.
    pub fn deliveries(
        &self,
        org: &str,
        id: &str,
        limit: usize,
    ) -> Result<Option<(Vec<log::Attempt>, usize)>, WebhookError> {
        if self.get(org, id).is_none() {
            return Ok(None);
        }
        Ok(Some((
            self.log.read(id, limit)?,
            self.queue.pending_for(id),
        )))
    }

    /// Queue `events` of organisation `org` for every subscription that wants them, durably,
    /// and wake the worker. Blocking (fsync); failures are logged, never returned: the event's
    /// cause (a push, a sync) has happened either way.
    pub fn emit_blocking(&self, org: &str, events: &[Event]) {
        if self.subs.is_empty() {
            return;
        }
        let now = now_ms();
        let mut batch: Vec<Delivery> = Vec::new();
        for event in events {
            for sub in self.subs.wanting(org, event.kind) {
                let queued = batch.iter().filter(|d| d.subscription == sub.id).count();
                if self.queue.pending_for(&sub.id) + queued >= self.settings.max_pending {
                    self.dropped(&sub, event);
                    continue;
                }
                batch.push(Delivery {
                    id: delivery_id(),
                    subscription: sub.id.clone(),
                    event: event.kind.as_str().to_owned(),
                    body: event.body.clone(),
                    created_at_ms: now,
                    attempts: 0,
                    next_at_ms: now,
                });
            }
        }
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        match self.queue.push(batch) {
            Ok(()) => {
                tracing::debug!(deliveries = n, "webhook deliveries queued");
                self.wake.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "webhook deliveries could not be queued"),
        }
    }

    /// [`Webhooks::emit_blocking`] from async code.
    pub async fn emit(self: &Arc<Self>, org: String, events: Vec<Event>) {
        if self.subs.is_empty() || events.is_empty() {
            return;
        }
        let this = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || this.emit_blocking(&org, &events)).await
        {
            tracing::error!(error = %e, "queueing webhook deliveries failed");
        }
    }

    /// The `push` events of refs that moved in namespace `ns` of `record`'s repository.
    pub fn push_events(
        &self,
        record: &RepoRecord,
        ns: Namespace,
        moves: &[RefMove],
    ) -> (String, Vec<Event>) {
        let org = self.org_of(record);
        let at = rfc3339(now_unix());
        let events = moves
            .iter()
            .filter(|m| m.moved())
            .map(|m| event::push(record, &org, ns, m, &at))
            .collect();
        (org, events)
    }

    /// Emit `push` for refs that moved (blocking; for the push workers' threads).
    pub fn pushed_blocking(&self, record: &RepoRecord, ns: Namespace, moves: &[RefMove]) {
        if self.subs.is_empty() {
            return;
        }
        let (org, events) = self.push_events(record, ns, moves);
        self.emit_blocking(&org, &events);
    }

    /// Emit `push` for refs that moved (async).
    pub async fn pushed(self: &Arc<Self>, record: &RepoRecord, ns: Namespace, moves: &[RefMove]) {
        if self.subs.is_empty() {
            return;
        }
        let (org, events) = self.push_events(record, ns, moves);
        self.emit(org, events).await;
    }

    /// Emit `repo.sync.started`.
    pub async fn sync_started(self: &Arc<Self>, record: &RepoRecord, run: &SyncRun) {
        if self.subs.is_empty() {
            return;
        }
        let org = self.org_of(record);
        let e = event::sync_started(record, &org, run);
        self.emit(org, vec![e]).await;
    }

    /// Emit `repo.sync.succeeded` or `repo.sync.failed`.
    pub async fn sync_ended(self: &Arc<Self>, record: &RepoRecord, run: &SyncRun, end: &SyncEnd) {
        if self.subs.is_empty() {
            return;
        }
        let org = self.org_of(record);
        let e = event::sync_ended(record, &org, run, end, &rfc3339(now_unix()));
        self.emit(org, vec![e]).await;
    }

    /// Record an event that was not queued because the subscription's queue is full.
    fn dropped(&self, sub: &Subscription, event: &Event) {
        tracing::warn!(subscription = %sub.id, event = %event.kind, "webhook queue full; event dropped");
        let attempt = log::Attempt {
            delivery_id: delivery_id(),
            event: event.kind.as_str().to_owned(),
            attempt: 0,
            attempted_at: rfc3339(now_unix()),
            status_code: None,
            error: Some(format!(
                "not queued: {} deliveries are already pending for this subscription",
                self.settings.max_pending
            )),
            outcome: log::Outcome::Failed,
            next_retry_at: None,
            duration_ms: 0,
        };
        if let Err(e) = self.log.append(&sub.id, &attempt) {
            tracing::error!(error = %e, "webhook delivery log not written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_retried_for_a_day_by_default() {
        let day = Duration::from_secs(24 * 3600);
        assert!(Settings::default().retry_window >= day);
        let config = crate::app::Config::new(PathBuf::from("/nonexistent"));
        assert!(
            config.webhook_retry_window >= day,
            "the server's default too"
        );
    }

    #[test]
    fn delivery_ids_are_uuids_in_creation_order() {
        let ids: Vec<String> = (0..50).map(|_| delivery_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(&id[14..15], "7", "version 7: {id}");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "ids sort in creation order");
    }
}
