//! The delivery worker: takes due deliveries from the queue (at most
//! [`Settings::max_in_flight`] at once), POSTs them, and settles each attempt:
//!
//! - a 2xx answer: delivered; the delivery leaves the queue;
//! - `410 Gone`: the receiver says the endpoint is gone; the delivery is marked failed at once
//!   (not retried), the subscription stays (delete it to stop all deliveries);
//! - anything else (other statuses, no answer, timeout, refused target): retried after
//!   `retry_base × 2^(failures−1)` (capped at an hour, ±20 % jitter), until the retry window
//!   (24 h by default) is over; the last attempt falls at its end, then the delivery is marked
//!   failed.
//!
//! Redirects are not followed (a 3xx is a failure: the signature was made for this URL).
//! Every attempt is signed afresh (new `t`), carries the same `X-Pierre-Delivery` id and goes
//! into the subscription's delivery log. The worker stops at shutdown; attempts in flight then
//! are made again after the restart (their queue files are still there).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::log::{Attempt, Outcome};
use super::queue::{Delivery, Next};
use super::subscriptions::Subscription;
use super::{Settings, WebhookError, Webhooks, now_ms, sign, target};
use crate::time::{now_unix, rfc3339};

/// The `User-Agent` of deliveries (compat.md §6.1).
pub const USER_AGENT: &str = "Pierre-Webhook/1.0";

/// Longest wait between retries (unless the base is longer).
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// How long the worker sleeps when nothing is due, at most (it is woken by new deliveries).
const MAX_IDLE: Duration = Duration::from_secs(30);

/// Most response-body bytes read (and discarded) per attempt.
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// The HTTP client for deliveries: the guarded resolver, no redirects, no proxy (so the
/// address check applies to the connection actually made), our user agent.
pub fn client(settings: &Settings) -> Result<reqwest::Client, WebhookError> {
    reqwest::Client::builder()
        .dns_resolver(target::GuardedResolver {
            allow_dev: settings.allow_dev,
        })
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(settings.attempt_timeout.min(Duration::from_secs(10)))
        .user_agent(USER_AGENT)
        .pool_max_idle_per_host(2)
        .build()
        .map_err(|e| WebhookError::Client(e.to_string()))
}

/// The delay after `failures` failed attempts.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let cap = MAX_DELAY.max(base);
    let exp = failures.saturating_sub(1).min(30);
    let delay = base.saturating_mul(1u32 << exp).min(cap);
    delay.mul_f64(0.8 + rand::random::<f64>() * 0.4)
}

/// What went wrong with a request, without its URL (a query string may hold a token).
fn describe(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {} s", timeout.as_secs_f64());
    }
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

impl Webhooks {
    /// Deliver until `stop` turns true (or its sender goes).
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let limit = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        loop {
            if *stop.borrow() {
                break;
            }
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stop.changed() => break,
            };
            match self.queue.take_due(now_ms()) {
                Next::Due(d) => {
                    let span = tracing::info_span!(
                        "webhook",
                        delivery = %d.id,
                        event = %d.event,
                        subscription = %d.subscription,
                        attempt = d.attempts + 1
                    );
                    let this = self.clone();
                    tokio::spawn(
                        async move {
                            this.attempt(d).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                next => {
                    drop(permit);
                    let wait = match next {
                        Next::At(at) => Duration::from_millis(at.saturating_sub(now_ms())),
                        _ => MAX_IDLE,
                    }
                    .min(MAX_IDLE);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.wake.notified() => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        tracing::debug!("webhook worker stopped");
    }

    /// One attempt of `d`, then settle it.
    async fn attempt(self: Arc<Self>, d: Delivery) {
        let Some(sub) = self.subs.get(&d.subscription) else {
            // Deleted meanwhile.
            let _ = self.queue.finish(&d.id);
            return;
        };
        let started = Instant::now();
        let result = self.send(&sub, &d).await;
        let elapsed = started.elapsed();
        let this = self.clone();
        let settled =
            tokio::task::spawn_blocking(move || this.settle(&sub, d, result, elapsed)).await;
        if let Err(e) = settled {
            tracing::error!(error = %e, "settling a webhook delivery failed");
        }
        self.wake.notify_one();
    }

    /// POST `d` to `sub`: the receiver's status, or why there is none.
    async fn send(&self, sub: &Subscription, d: &Delivery) -> Result<u16, String> {
        let secret = self
            .secrets
            .open(&Subscription::secret_context(&sub.id), &sub.secret_sealed)
            .map_err(|e| e.to_string())?;
        let url =
            target::check_url(&sub.url, self.settings.allow_dev).map_err(|e| e.to_string())?;
        let signature = sign::header(&secret, now_unix(), d.body.as_bytes());
        let timeout = self.settings.attempt_timeout;
        let mut resp = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Pierre-Event", &d.event)
            .header("X-Pierre-Signature", signature)
            .header("X-Pierre-Delivery", &d.id)
            .header("X-Pierre-Delivery-Attempt", (d.attempts + 1).to_string())
            .timeout(timeout)
            .body(d.body.clone())
            .send()
            .await
            .map_err(|e| describe(e, timeout))?;
        let status = resp.status().as_u16();
        // Read a little of the answer so the connection can be reused; never much.
        let drain = async {
            let mut n = 0;
            while let Ok(Some(chunk)) = resp.chunk().await {
                n += chunk.len();
                if n > MAX_RESPONSE_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        Ok(status)
    }

    /// Record the attempt and decide: done, retry (when), or failed.
    fn settle(
        &self,
        sub: &Subscription,
        d: Delivery,
        result: Result<u16, String>,
        elapsed: Duration,
    ) {
        if self.subs.get(&sub.id).is_none() {
            let _ = self.queue.finish(&d.id);
            return;
        }
        let now = now_ms();
        let attempt = d.attempts + 1;
        let window_end = d
            .created_at_ms
            .saturating_add(self.settings.retry_window.as_millis() as u64);
        let (status_code, mut error) = match &result {
            Ok(code) if (200..300).contains(code) => (Some(*code), None),
            Ok(code) => (Some(*code), Some(format!("HTTP {code}"))),
            Err(e) => (None, Some(e.clone())),
        };
        let (outcome, next_at) = match result {
            Ok(code) if (200..300).contains(&code) => (Outcome::Delivered, None),
            Ok(410) => {
                error = Some("HTTP 410 Gone: the receiver asked us to stop; not retried".into());
                (Outcome::Failed, None)
            }
            _ if now >= window_end => {
                error = error.map(|e| {
                    format!(
                        "{e}; gave up after {attempt} attempts over {} s",
                        self.settings.retry_window.as_secs()
                    )
                });
                (Outcome::Failed, None)
            }
            _ => {
                let delay = backoff(self.settings.retry_base, attempt).as_millis() as u64;
                (
                    Outcome::Retrying,
                    Some(now.saturating_add(delay).min(window_end)),
                )
            }
        };
        let stored = match next_at {
            Some(at) => self.queue.reschedule(Delivery {
                attempts: attempt,
                next_at_ms: at,
                ..d.clone()
            }),
            None => self.queue.finish(&d.id),
        };
        if let Err(e) = stored {
            tracing::error!(error = %e, "webhook queue not updated; the delivery may be repeated");
        }
        match (&outcome, &error) {
            (Outcome::Delivered, _) => tracing::info!(status = ?status_code, "webhook delivered"),
            (_, Some(e)) => {
                tracing::warn!(error = %e, outcome = ?outcome, "webhook attempt failed")
            }
            _ => {}
        }
        let entry = Attempt {
            delivery_id: d.id.clone(),
            event: d.event.clone(),
            attempt,
            attempted_at: rfc3339(now / 1000),
            status_code,
            error,
            outcome,
            next_retry_at: next_at.map(|at| rfc3339(at / 1000)),
            duration_ms: elapsed.as_millis() as u64,
        };
        if let Err(e) = self.log.append(&sub.id, &entry) {
            tracing::error!(error = %e, "webhook delivery log not written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(10);
        for (failures, nominal) in [(1u32, 10u64), (2, 20), (3, 40), (6, 320)] {
            let d = backoff(base, failures).as_secs_f64();
            let n = nominal as f64;
            assert!(d >= n * 0.79 && d <= n * 1.21, "{failures}: {d}");
        }
        assert!(backoff(base, 40) <= Duration::from_secs(3600).mul_f64(1.21));
        assert!(backoff(Duration::from_secs(7200), 3) <= Duration::from_secs(7200).mul_f64(1.21));
    }
}
