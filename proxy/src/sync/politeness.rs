//! Politeness towards forges: at most [`PER_HOST_SYNCS`] syncs talk to one upstream host at a
//! time, and a host that answered `429 Too Many Requests` (or `503` with `Retry-After`) is left
//! alone until the time it asked for — later syncs of any of its repositories fail at once
//! without a request, and the scheduler comes back when the wait is over.
//!
//! gix's HTTP transport reports an error status only as text ("Received HTTP status 429") and
//! drops the response headers, so the `Retry-After` value comes from one probe request
//! (`GET info/refs`) made right after such a failure; a throttling forge answers it the same
//! way. Without a usable value the host gets [`DEFAULT_RETRY_AFTER`]; no wait exceeds
//! [`MAX_RETRY_AFTER`], so a broken header cannot stop syncing for long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

/// Syncs that may talk to one upstream host at the same time.
pub const PER_HOST_SYNCS: usize = 2;
/// The wait after a 429 without a usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest wait a `Retry-After` can impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Host {
    slots: Arc<Semaphore>,
    not_before: Option<Instant>,
}

/// Per-host concurrency slots and `Retry-After` deadlines.
#[derive(Debug)]
pub struct Hosts {
    per_host: usize,
    map: Mutex<HashMap<String, Host>>,
}

impl Hosts {
    /// `per_host` concurrent syncs per host (at least one).
    pub fn new(per_host: usize) -> Hosts {
        Hosts {
            per_host: per_host.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, host: &str, f: impl FnOnce(&mut Host) -> T) -> T {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(host.to_owned()).or_insert_with(|| Host {
            slots: Arc::new(Semaphore::new(self.per_host)),
            not_before: None,
        });
        f(entry)
    }

    /// The semaphore bounding concurrent syncs of `host`.
    pub fn slots(&self, host: &str) -> Arc<Semaphore> {
        self.with(host, |h| h.slots.clone())
    }

    /// When `host` may be contacted again, if it asked us to wait and the time is not up.
    pub fn throttled_until(&self, host: &str) -> Option<Instant> {
        self.with(host, |h| h.not_before.filter(|t| *t > Instant::now()))
    }

    /// Leave `host` alone for `wait` (capped at [`MAX_RETRY_AFTER`]); an existing later
    /// deadline stays. Returns the deadline.
    pub fn throttle(&self, host: &str, wait: Duration) -> Instant {
        let until = Instant::now() + wait.min(MAX_RETRY_AFTER);
        self.with(host, |h| {
            let t = h.not_before.map_or(until, |t| t.max(until));
            h.not_before = Some(t);
            t
        })
    }
}

/// The host (and port) of an upstream URL, lower-cased: the unit of politeness.
pub fn host_key(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.to_ascii_lowercase()
}

/// The wait a `Retry-After` value asks for: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The throttling status (429, or 503) in an upstream error's text, as gix's transport writes
/// it ("Received HTTP status 429").
pub fn throttle_status(error: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut texts = vec![format!("{error:#}"), format!("{error:?}")];
    let mut source = error.source();
    while let Some(e) = source {
        texts.push(e.to_string());
        source = e.source();
    }
    texts.iter().find_map(|t| {
        let at = t.find("HTTP status ")? + "HTTP status ".len();
        match t.get(at..at + 3)? {
            "429" => Some(429),
            "503" => Some(503),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn hosts_are_keyed_without_user_info_and_case() {
        assert_eq!(host_key("https://GitLab.com/g/p.git"), "gitlab.com");
        assert_eq!(host_key("http://127.0.0.1:8080/r.git"), "127.0.0.1:8080");
        assert_eq!(host_key("https://u:p@h.example/r"), "h.example");
    }

    #[test]
    fn throttling_keeps_the_later_deadline_and_is_capped() {
        let hosts = Hosts::new(2);
        assert!(hosts.throttled_until("h").is_none());
        let long = hosts.throttle("h", Duration::from_secs(100));
        let short = hosts.throttle("h", Duration::from_secs(1));
        assert_eq!(long, short, "the later deadline stays");
        assert!(hosts.throttled_until("h").is_some());
        assert!(hosts.throttled_until("other").is_none());
        let capped = hosts.throttle("x", Duration::from_secs(10 * 86_400));
        assert!(capped <= Instant::now() + MAX_RETRY_AFTER);
        assert_eq!(hosts.slots("h").available_permits(), 2);
    }

    #[test]
    fn throttle_statuses_are_found_in_error_text() {
        let e = std::io::Error::other("Received HTTP status 429");
        assert_eq!(throttle_status(&e), Some(429));
        let e = std::io::Error::other("Received HTTP status 503");
        assert_eq!(throttle_status(&e), Some(503));
        let e = std::io::Error::other("Received HTTP status 404");
        assert_eq!(throttle_status(&e), None);
    }
}
