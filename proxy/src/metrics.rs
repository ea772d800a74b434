//! Operability state: the process's metrics registry (counters, one histogram) and its
//! readiness flag, and their rendering in the Prometheus text exposition format (version 0.0.4)
//! for `GET /metrics`.
//!
//! Hand-written (atomics and small mutex'd maps) rather than a metrics crate: a dozen series
//! do not need one. Label values are bounded: routes are templates ([`route_template`]), never
//! raw paths; methods and push outcomes come from fixed lists; per-repository series are
//! rendered only for repositories that exist (counters of deleted ones are dropped at the next
//! scrape).
//!
//! The registry is process-global ([`global`]): the protocol engine records pack generation
//! without a handle on the server state, and one process serves one data directory.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use crate::app::App;

/// Upper bounds (seconds) of the pack-generation histogram buckets.
const PACK_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The outcomes of a forwarded push, as labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PushOutcome {
    /// The upstream accepted every ref.
    Accepted,
    /// Some refs were accepted, some refused (by us or by the upstream).
    Partial,
    /// Every ref was refused before anything was applied upstream (policy, atomic push).
    Refused,
    /// The push failed (bad pack, upstream unreachable or erroring): nothing was applied.
    Failed,
}

impl PushOutcome {
    fn label(self) -> &'static str {
        match self {
            PushOutcome::Accepted => "accepted",
            PushOutcome::Partial => "partial",
            PushOutcome::Refused => "refused",
            PushOutcome::Failed => "failed",
        }
    }
}

/// Per-repository sync counters.
#[derive(Debug, Default, Clone, Copy)]
struct SyncCounts {
    runs: u64,
    failures: u64,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; PACK_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, bound) in PACK_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    /// The histogram `name` in the text format.
    fn render(&self, w: &mut String, name: &str, help: &str) {
        header(w, name, "histogram", help);
        for (bound, n) in PACK_BUCKETS.iter().zip(self.buckets.iter()) {
            let _ = writeln!(w, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(w, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(w, "{name}_sum {}", self.sum);
        let _ = writeln!(w, "{name}_count {}", self.count);
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, route template, status) → requests.
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    /// route template → response body bytes sent.
    bytes: Mutex<BTreeMap<&'static str, u64>>,
    pack_seconds: Mutex<Histogram>,
    /// ("fast" | "walk") → packs generated.
    packs: Mutex<BTreeMap<&'static str, u64>>,
    pack_objects: AtomicU64,
    pack_bytes: AtomicU64,
    sync: Mutex<HashMap<String, SyncCounts>>,
    pushes: Mutex<BTreeMap<PushOutcome, u64>>,
    shutting_down: AtomicBool,
    /// Compactions: (mode, outcome) → runs; and totals of what they did.
    compactions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    compaction_seconds: Mutex<Histogram>,
    compaction_pruned: AtomicU64,
    compaction_bytes_freed: AtomicU64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's registry.
pub fn global() -> &'static Metrics {
    &METRICS
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The method as a label: the standard ones, else `other`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The route template of `path`: the repository part of git and REST paths is replaced by
/// `{repo}`, ids by `{id}`; unknown paths are `other`.
pub fn route_template(path: &str) -> &'static str {
    match path {
        "/healthz" => return "/healthz",
        "/readyz" => return "/readyz",
        "/metrics" => return "/metrics",
        "/api/repos" => return "/api/repos",
        "/api/webhooks" => return "/api/webhooks",
        "/api/v1/webhooks" => return "/api/v1/webhooks",
        _ => {}
    }
    if path.starts_with("/api/webhooks/") {
        return "/api/webhooks/{id}";
    }
    if path.starts_with("/api/v1/webhooks/") {
        return "/api/v1/webhooks/{id}";
    }
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        const V1: [&str; 8] = [
            "/api/v1/repos",
            "/api/v1/repo",
            "/api/v1/repos/delete",
            "/api/v1/repos/pull-upstream",
            "/api/v1/repos/branches",
            "/api/v1/repos/branches/create",
            "/api/v1/repos/base",
            "/api/v1/repos/git-credentials",
        ];
        return V1
            .iter()
            .find(|r| r.strip_prefix("/api/v1/") == Some(rest))
            .copied()
            .unwrap_or("/api/v1/other");
    }
    if path.starts_with("/api/repos/") {
        if path.contains("/git-credentials/") {
            return "/api/repos/{repo}/git-credentials/{id}";
        }
        const SUB: [(&str, &str); 6] = [
            ("/pull-upstream", "/api/repos/{repo}/pull-upstream"),
            ("/branches/create", "/api/repos/{repo}/branches/create"),
            ("/branches", "/api/repos/{repo}/branches"),
            ("/branch", "/api/repos/{repo}/branch"),
            ("/git-credentials", "/api/repos/{repo}/git-credentials"),
            ("/base", "/api/repos/{repo}/base"),
        ];
        return SUB
            .iter()
            .find(|(suffix, _)| path.ends_with(suffix))
            .map_or("/api/repos/{repo}", |(_, t)| t);
    }
    if path.starts_with("/api/") || path == "/api" {
        return "/api/other";
    }
    if crate::http::forge_hooks::is_hook_path(path) {
        return "/webhooks/{forge}";
    }
    match crate::http::smart::parse_path(path) {
        Some((_, crate::http::smart::Service::InfoRefs)) => "/{repo}/info/refs",
        Some((_, crate::http::smart::Service::UploadPack)) => "/{repo}/git-upload-pack",
        Some((_, crate::http::smart::Service::ReceivePack)) => "/{repo}/git-receive-pack",
        None => "other",
    }
}

impl Metrics {
    /// One request answered.
    pub fn request(&self, method: &'static str, route: &'static str, status: u16) {
        *lock(&self.requests)
            .entry((method, route, status))
            .or_default() += 1;
    }

    /// `n` response body bytes sent for `route`.
    pub fn bytes_served(&self, route: &'static str, n: u64) {
        *lock(&self.bytes).entry(route).or_default() += n;
    }

    /// One pack generated and streamed.
    pub fn pack_generated(&self, elapsed: Duration, objects: u64, bytes: u64, fast_path: bool) {
        lock(&self.pack_seconds).observe(elapsed.as_secs_f64());
        *lock(&self.packs)
            .entry(if fast_path { "fast" } else { "walk" })
            .or_default() += 1;
        self.pack_objects.fetch_add(objects, Ordering::Relaxed);
        self.pack_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One pack sent from a generation another request started (identical concurrent fetches).
    pub fn pack_shared(&self, bytes: u64) {
        *lock(&self.packs).entry("shared").or_default() += 1;
        self.pack_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One sync run of `repo` finished.
    pub fn sync_finished(&self, repo: &str, ok: bool) {
        let mut sync = lock(&self.sync);
        let c = sync.entry(repo.to_owned()).or_default();
        c.runs += 1;
        if !ok {
            c.failures += 1;
        }
    }

    /// One forwarded push ended.
    pub fn push_forwarded(&self, outcome: PushOutcome) {
        *lock(&self.pushes).entry(outcome).or_default() += 1;
    }

    /// One compaction ended (`None`: it failed).
    pub fn compaction_finished(&self, full: bool, stats: Option<&codestorage_store::CompactStats>) {
        let mode = if full { "full" } else { "geometric" };
        let outcome = match stats {
            None => "failed",
            Some(s) if s.retry => "retry",
            Some(s) if s.skipped.is_some() => "skipped",
            Some(_) => "done",
        };
        *lock(&self.compactions).entry((mode, outcome)).or_default() += 1;
        if let Some(s) = stats.filter(|s| s.skipped.is_none()) {
            lock(&self.compaction_seconds).observe(s.millis as f64 / 1000.0);
            self.compaction_pruned
                .fetch_add(s.objects_pruned, Ordering::Relaxed);
            self.compaction_bytes_freed.fetch_add(
                s.bytes_merged.saturating_sub(s.bytes_written),
                Ordering::Relaxed,
            );
        }
    }

    /// A compaction stopped to let a sync or push have the repository's lock.
    pub fn compaction_yielded(&self, full: bool) {
        let mode = if full { "full" } else { "geometric" };
        *lock(&self.compactions)
            .entry((mode, "yielded"))
            .or_default() += 1;
    }

    /// The server is shutting down: `/readyz` answers 503 from now on.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether the server is shutting down.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Everything, in the Prometheus text format, with the per-repository and queue state read
    /// from `app` now.
    pub fn render(&self, app: &App) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        header(
            w,
            "codestorage_http_requests_total",
            "counter",
            "HTTP requests answered, by method, route template and status.",
        );
        for ((method, route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                w,
                "codestorage_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            w,
            "codestorage_http_response_bytes_total",
            "counter",
            "Response body bytes sent, by route template.",
        );
        for (route, n) in lock(&self.bytes).iter() {
            let _ = writeln!(
                w,
                "codestorage_http_response_bytes_total{{route=\"{route}\"}} {n}"
            );
        }
        lock(&self.pack_seconds).render(
            w,
            "codestorage_pack_generation_seconds",
            "Time to generate and stream one pack to a client (upload-pack).",
        );
        header(
            w,
            "codestorage_packs_generated_total",
            "counter",
            "Packs sent, by path: fast (stored packs streamed as they are), walk, or shared (read from an identical concurrent request's generation).",
        );
        for (path, n) in lock(&self.packs).iter() {
            let _ = writeln!(
                w,
                "codestorage_packs_generated_total{{path=\"{path}\"}} {n}"
            );
        }
        counter(
            w,
            "codestorage_pack_objects_total",
            "Objects sent in generated packs.",
            self.pack_objects.load(Ordering::Relaxed),
        );
        counter(
            w,
            "codestorage_pack_bytes_total",
            "Bytes of generated packs.",
            self.pack_bytes.load(Ordering::Relaxed),
        );
        self.render_sync(w, app);
        self.render_compactions(w);
        header(
            w,
            "codestorage_push_forwards_total",
            "counter",
            "Pushes forwarded to an upstream, by outcome.",
        );
        {
            let pushes = lock(&self.pushes);
            for outcome in [
                PushOutcome::Accepted,
                PushOutcome::Partial,
                PushOutcome::Refused,
                PushOutcome::Failed,
            ] {
                let n = pushes.get(&outcome).copied().unwrap_or(0);
                let _ = writeln!(
                    w,
                    "codestorage_push_forwards_total{{outcome=\"{}\"}} {n}",
                    outcome.label()
                );
            }
        }
        header(
            w,
            "codestorage_webhook_queue_depth",
            "gauge",
            "Outgoing webhook deliveries queued (in flight included).",
        );
        let _ = writeln!(
            w,
            "codestorage_webhook_queue_depth {}",
            app.webhooks.queue_depth()
        );
        header(
            w,
            "codestorage_shutting_down",
            "gauge",
            "1 while the server shuts down.",
        );
        let _ = writeln!(
            w,
            "codestorage_shutting_down {}",
            u8::from(self.shutting_down())
        );
        out
    }

    fn render_compactions(&self, w: &mut String) {
        header(
            w,
            "codestorage_compactions_total",
            "counter",
            "Pack compactions, by mode (full, geometric) and outcome (done, skipped, retry, failed).",
        );
        for ((mode, outcome), n) in lock(&self.compactions).iter() {
            let _ = writeln!(
                w,
                "codestorage_compactions_total{{mode=\"{mode}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        lock(&self.compaction_seconds).render(
            w,
            "codestorage_compaction_seconds",
            "Wall time of one compaction that did something.",
        );
        counter(
            w,
            "codestorage_compaction_pruned_objects_total",
            "Unreachable objects dropped by compactions.",
            self.compaction_pruned.load(Ordering::Relaxed),
        );
        counter(
            w,
            "codestorage_compaction_bytes_freed_total",
            "Pack bytes compactions freed (merged minus written).",
            self.compaction_bytes_freed.load(Ordering::Relaxed),
        );
    }

    fn render_sync(&self, w: &mut String, app: &App) {
        let now = crate::time::now_unix();
        let mirrors: Vec<_> = app
            .store
            .repos()
            .into_iter()
            .filter(|r| r.record().upstream.is_some())
            .collect();
        let counts = {
            let mut sync = lock(&self.sync);
            // Counters of repositories that are gone are dropped: bounded cardinality.
            let names: std::collections::HashSet<String> =
                app.store.repos().iter().map(|r| r.record().name).collect();
            sync.retain(|name, _| names.contains(name));
            sync.clone()
        };
        let mut rows: Vec<(String, SyncCounts, crate::sync::SyncStatus)> = mirrors
            .iter()
            .map(|r| {
                let name = r.record().name;
                let c = counts.get(&name).copied().unwrap_or_default();
                (name, c, app.sync.status(r))
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        header(
            w,
            "codestorage_sync_runs_total",
            "counter",
            "Sync runs finished since the start, per mirror.",
        );
        for (name, c, _) in &rows {
            let _ = writeln!(
                w,
                "codestorage_sync_runs_total{{repo=\"{}\"}} {}",
                escape(name),
                c.runs
            );
        }
        header(
            w,
            "codestorage_sync_failures_total",
            "counter",
            "Failed sync runs since the start, per mirror.",
        );
        for (name, c, _) in &rows {
            let _ = writeln!(
                w,
                "codestorage_sync_failures_total{{repo=\"{}\"}} {}",
                escape(name),
                c.failures
            );
        }
        header(
            w,
            "codestorage_sync_lag_seconds",
            "gauge",
            "Seconds since the last successful sync, per mirror (absent before the first).",
        );
        for (name, _, status) in &rows {
            if let Some(at) = status
                .last_success_at
                .as_deref()
                .and_then(crate::time::parse_rfc3339)
            {
                let _ = writeln!(
                    w,
                    "codestorage_sync_lag_seconds{{repo=\"{}\"}} {}",
                    escape(name),
                    now.saturating_sub(at)
                );
            }
        }
        header(
            w,
            "codestorage_sync_in_progress",
            "gauge",
            "1 while a sync of the mirror runs.",
        );
        for (name, _, status) in &rows {
            let _ = writeln!(
                w,
                "codestorage_sync_in_progress{{repo=\"{}\"}} {}",
                escape(name),
                u8::from(status.in_progress)
            );
        }
    }
}

/// A counter without labels.
fn counter(w: &mut String, name: &str, help: &str, value: u64) {
    header(w, name, "counter", help);
    let _ = writeln!(w, "{name} {value}");
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value escaped as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates() {
        assert_eq!(route_template("/a/b.git/info/refs"), "/{repo}/info/refs");
        assert_eq!(
            route_template("/x+ephemeral.git/git-upload-pack"),
            "/{repo}/git-upload-pack"
        );
        assert_eq!(route_template("/api/repos/a%2Fb"), "/api/repos/{repo}");
        assert_eq!(
            route_template("/api/repos/a/pull-upstream"),
            "/api/repos/{repo}/pull-upstream"
        );
        assert_eq!(route_template("/api/v1/repos"), "/api/v1/repos");
        assert_eq!(route_template("/api/v1/whatever/x"), "/api/v1/other");
        assert_eq!(route_template("/webhooks/github"), "/webhooks/{forge}");
        assert_eq!(route_template("/random/path"), "other");
        assert_eq!(route_template("/metrics"), "/metrics");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        h.observe(1000.0);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[5], 2);
        assert_eq!(h.buckets[PACK_BUCKETS.len() - 1], 2);
        assert_eq!(h.count, 3);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
