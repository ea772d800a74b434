//! Server-wide resource bounds that are not part of one protocol: open connections, concurrent
//! pack generations, REST body size, header size and timeouts, the pkt-line count of a request,
//! the gzip expansion ratio, and the optional per-token request rate. [`ServerLimits`] holds the
//! settings (flags and config file, merged in `cli::serve`); [`Throttle`] holds the live
//! semaphores and rate buckets every request shares. Waiting for a connection or pack slot
//! queues; it never fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Settings (see `codestorage serve --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest REST (JSON) request body, bytes.
    pub max_json_bytes: usize,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head, and how long an idle keep-alive
    /// connection stays open.
    pub header_read_timeout: Duration,
    /// Longest pause while a request body arrives.
    pub body_idle_timeout: Duration,
    /// Open connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Pack generations (upload-pack responses) at once; more wait.
    pub max_pack_generations: usize,
    /// Most pkt-lines in one upload-pack request.
    pub max_pktlines: usize,
    /// Requests per minute per token `sub` (off when `None`).
    pub rate_per_minute: Option<u32>,
}

/// Largest expansion of a gzip request body: decoded bytes per compressed byte.
pub const MAX_GZIP_RATIO: usize = 100;

/// Default of `--max-json-bytes`: the largest REST request body.
pub const DEFAULT_MAX_JSON_BYTES: usize = 1 << 20;

impl Default for ServerLimits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        ServerLimits {
            max_json_bytes: DEFAULT_MAX_JSON_BYTES,
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_pack_generations: (2 * cpus).max(4),
            // A mirror clone of a repo with many tags sends one `want` per tip.
            max_pktlines: 1_000_000,
            rate_per_minute: None,
        }
    }
}

/// The body idle timeout in seconds, process-wide (set once at start; read by the body readers,
/// which have no access to the app).
static BODY_IDLE_SECS: AtomicU64 = AtomicU64::new(60);

/// Set the body idle timeout of this process.
pub fn set_body_idle_timeout(d: Duration) {
    BODY_IDLE_SECS.store(d.as_secs().max(1), Ordering::Relaxed);
}

/// The body idle timeout of this process.
pub fn body_idle_timeout() -> Duration {
    Duration::from_secs(BODY_IDLE_SECS.load(Ordering::Relaxed))
}

/// Count the pkt-lines of `body` (flush, delim and response-end packets included), stopping
/// early past `max`: `Err(max)` when there are more. Malformed framing stops the count; the
/// protocol parser reports it.
pub fn check_pktlines(body: &[u8], max: usize) -> Result<(), usize> {
    let mut at = 0;
    let mut count = 0usize;
    while at + 4 <= body.len() {
        let Some(len) = std::str::from_utf8(&body[at..at + 4])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
        else {
            break;
        };
        count += 1;
        if count > max {
            return Err(max);
        }
        at += if len < 4 { 4 } else { len };
    }
    Ok(())
}

/// Bucket entries kept before full buckets are dropped.
const MAX_BUCKETS: usize = 100_000;

/// A token bucket per `sub`: `per_minute` requests of burst, refilled evenly.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_minute` requests per minute per key (at least one).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request for `key`; `Err(seconds)` says when to retry.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        let per_sec = self.per_minute / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let full = self.per_minute;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < full
            });
            if buckets.len() >= MAX_BUCKETS {
                return Err(1);
            }
        }
        let (tokens, at) = buckets
            .entry(key.to_owned())
            .or_insert((self.per_minute, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec)
            .min(self.per_minute);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// The live limits every request shares.
#[derive(Debug)]
pub struct Throttle {
    /// The settings.
    pub limits: ServerLimits,
    /// Open-connection slots.
    pub connections: Arc<Semaphore>,
    /// Pack-generation slots.
    pub packs: Arc<Semaphore>,
    /// Per-token rate, when on.
    pub rate: Option<RateLimiter>,
}

impl Throttle {
    /// Semaphores and buckets for `limits`.
    pub fn new(limits: ServerLimits) -> Throttle {
        Throttle {
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            packs: Arc::new(Semaphore::new(limits.max_pack_generations.max(1))),
            rate: limits.rate_per_minute.map(RateLimiter::new),
        }
    }

    /// Count a request of the token subject `sub`; `Err(seconds)` when over the rate.
    pub fn check_rate(&self, sub: &str) -> Result<(), u64> {
        match &self.rate {
            Some(r) => r.check(sub, Instant::now()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pktlines_are_counted() {
        let body = b"0009done\n00000001000d0009abc\n";
        assert!(check_pktlines(body, 4).is_ok());
        assert_eq!(check_pktlines(body, 3), Err(3));
        assert!(check_pktlines(b"zz", 0).is_ok());
    }

    #[test]
    fn rate_buckets_refill() {
        let r = RateLimiter::new(2);
        let t = Instant::now();
        assert!(r.check("a", t).is_ok());
        assert!(r.check("a", t).is_ok());
        let wait = r.check("a", t).expect_err("third is over");
        assert!((1..=30).contains(&wait), "{wait}");
        assert!(
            r.check("b", t).is_ok(),
            "other subjects have their own bucket"
        );
        assert!(r.check("a", t + Duration::from_secs(31)).is_ok());
    }
}
