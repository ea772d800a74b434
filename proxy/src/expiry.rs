//! Expiry of ephemeral refs (`serve --ephemeral-ttl`): refs of the ephemeral namespace not
//! updated for that long are deleted, by compare-and-swap, so a push that just updated one wins.

use std::sync::Arc;
use std::time::Duration;

use codestorage_store::{Expect, Namespace, RefUpdate, Transaction};

use crate::app::App;
use crate::time::now_unix;

/// Parse `90`, `90s`, `15m`, `12h`, `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Delete the ephemeral refs of every repository not updated within `ttl`; the number deleted.
pub fn sweep(app: &App, ttl: Duration) -> usize {
    let cutoff = now_unix().saturating_sub(ttl.as_secs());
    let mut deleted = 0;
    for repo in app.store.repos() {
        let view = repo.view();
        let table = view.refs(Namespace::Ephemeral);
        let updates: Vec<RefUpdate> = view
            .catalog
            .ephemeral_updated
            .iter()
            .filter(|(name, at)| **at < cutoff && name.as_str() != "HEAD")
            .filter_map(|(name, _)| {
                Some(RefUpdate {
                    name: name.clone(),
                    expect: Expect::Value(table.get(name)?.clone()),
                    new: None,
                })
            })
            .collect();
        if updates.is_empty() {
            continue;
        }
        match repo.commit(Transaction {
            ns: Namespace::Ephemeral,
            updates,
            who: "ephemeral expiry".into(),
            atomic: false,
            quarantine: None,
        }) {
            Ok(out) => {
                let n = out.results.iter().filter(|r| r.is_ok()).count();
                deleted += n;
                tracing::info!(repo = %repo.record().name, deleted = n, "expired ephemeral refs");
            }
            Err(e) => {
                tracing::error!(repo = %repo.record().name, error = %e, "ephemeral expiry failed")
            }
        }
    }
    deleted
}

/// Sweep every minute (or every `ttl`, if shorter) until shutdown.
pub async fn run(app: Arc<App>, ttl: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let period = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let app = app.clone();
        let _ = tokio::task::spawn_blocking(move || sweep(&app, ttl)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("3w"), None);
    }
}
