//! Incoming forge webhooks: a forge tells us a repository changed, and every mirror of that
//! repository syncs soon after. No JWT here: the forge's signature (or shared token) is the
//! authentication.
//!
//! What this module owns, in the order a delivery meets it:
//! 1. [`verify`]: the signature check per forge, in constant time — GitHub
//!    `X-Hub-Signature-256: sha256=<hex>`, Gitea `X-Gitea-Signature: <hex>`, Forgejo
//!    `X-Forgejo-Signature: <hex>` (either header on either endpoint: Forgejo sends both),
//!    Bitbucket `X-Hub-Signature: sha256=<hex>` (all HMAC-SHA256 of the raw body), GitLab
//!    `X-Gitlab-Token` (the secret itself).
//! 2. [`parse`]: the event and the repository it names — GitHub `repository.full_name`
//!    (`push`, `create`, `delete`; `ping`), GitLab `project.path_with_namespace` (`Push Hook`,
//!    `Tag Push Hook`), Gitea/Forgejo `repository.full_name` (`push`, `create`, `delete`),
//!    Bitbucket Cloud `repository.full_name` (`repo:push`) — plus the delivery id.
//! 3. [`ForgeHooks::accept`]: drop repeated deliveries (a bounded memory of recent delivery
//!    ids), find the mirrors, and request their syncs through a short trailing debounce, so a
//!    burst of deliveries becomes one sync.
//!
//! HTTP (status codes, body limits) lives in `http::forge_hooks`; this module sees header
//! values and bytes only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::{constant_time, hmac};
use codestorage_store::{Store, UpstreamRecord};
use serde_json::Value;

use super::SyncManager;
use crate::secrets::Secret;

/// How long after the last delivery for a repository its sync is requested: deliveries closer
/// together than this coalesce.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// A steady stream of deliveries still syncs this long after the first one.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);
/// How many delivery ids are remembered for deduplication.
const SEEN_CAPACITY: usize = 4096;

/// The configured webhook secrets, one per forge family. `Debug` masks them.
#[derive(Debug, Clone, Default)]
pub struct ForgeSecrets {
    /// `/webhooks/github`.
    pub github: Option<Secret>,
    /// `/webhooks/gitlab`.
    pub gitlab: Option<Secret>,
    /// `/webhooks/gitea` and `/webhooks/forgejo`.
    pub gitea: Option<Secret>,
    /// `/webhooks/bitbucket`.
    pub bitbucket: Option<Secret>,
}

impl ForgeSecrets {
    /// The secrets given; empty ones count as unset.
    pub fn new(
        github: Option<Secret>,
        gitlab: Option<Secret>,
        gitea: Option<Secret>,
        bitbucket: Option<Secret>,
    ) -> ForgeSecrets {
        let s = |v: Option<Secret>| v.filter(|v| !v.expose().is_empty());
        ForgeSecrets {
            github: s(github),
            gitlab: s(gitlab),
            gitea: s(gitea),
            bitbucket: s(bitbucket),
        }
    }
}

/// A forge that sends webhooks, by the endpoint they arrive at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forge {
    /// `/webhooks/github`.
    Github,
    /// `/webhooks/gitlab`.
    Gitlab,
    /// `/webhooks/gitea`.
    Gitea,
    /// `/webhooks/forgejo`.
    Forgejo,
    /// `/webhooks/bitbucket`.
    Bitbucket,
}

impl Forge {
    /// The forge of endpoint `/webhooks/{name}`.
    pub fn from_path(name: &str) -> Option<Forge> {
        Some(match name {
            "github" => Forge::Github,
            "gitlab" => Forge::Gitlab,
            "gitea" => Forge::Gitea,
            "forgejo" => Forge::Forgejo,
            "bitbucket" => Forge::Bitbucket,
            _ => return None,
        })
    }

    /// The endpoint name.
    pub fn name(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitlab => "gitlab",
            Forge::Gitea => "gitea",
            Forge::Forgejo => "forgejo",
            Forge::Bitbucket => "bitbucket",
        }
    }

    /// The `base_repo.provider` values whose mirrors this forge's deliveries concern (Codeberg
    /// runs Forgejo; Forgejo is a Gitea fork and speaks its webhook dialect).
    fn providers(self) -> &'static [&'static str] {
        match self {
            Forge::Github => &["github"],
            Forge::Gitlab => &["gitlab"],
            Forge::Gitea | Forge::Forgejo => &["gitea", "forgejo", "codeberg"],
            Forge::Bitbucket => &["bitbucket"],
        }
    }

    fn secret(self, secrets: &ForgeSecrets) -> Option<&Secret> {
        match self {
            Forge::Github => secrets.github.as_ref(),
            Forge::Gitlab => secrets.gitlab.as_ref(),
            Forge::Gitea | Forge::Forgejo => secrets.gitea.as_ref(),
            Forge::Bitbucket => secrets.bitbucket.as_ref(),
        }
    }

    /// The header names carrying the signature, preferred first.
    fn signature_headers(self) -> &'static [&'static str] {
        match self {
            Forge::Github => &["x-hub-signature-256"],
            Forge::Gitlab => &["x-gitlab-token"],
            Forge::Gitea => &["x-gitea-signature", "x-forgejo-signature"],
            Forge::Forgejo => &["x-forgejo-signature", "x-gitea-signature"],
            Forge::Bitbucket => &["x-hub-signature"],
        }
    }
}

/// Why a delivery is refused. Nothing happens for any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// No secret is configured for this forge: deliveries cannot be authenticated (401).
    #[error("no webhook secret is configured for {0}")]
    NoSecret(&'static str),
    /// The delivery carries no signature (401).
    #[error("missing {0} header")]
    MissingSignature(&'static str),
    /// The signature does not match the body under our secret (401).
    #[error("invalid webhook signature")]
    BadSignature,
    /// The event header is missing (400).
    #[error("missing {0} header")]
    MissingEvent(&'static str),
    /// The payload is not what the forge documents (400).
    #[error("invalid {forge} payload: {message}")]
    BadPayload {
        /// The forge.
        forge: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl HookError {
    /// Whether the sender failed to authenticate (401) rather than sent a bad payload (400).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            HookError::NoSecret(_) | HookError::MissingSignature(_) | HookError::BadSignature
        )
    }
}

/// Header lookup by lower-case name, as the HTTP layer provides it.
pub type Headers<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Check that `body` was sent by the forge that knows our secret.
pub fn verify(
    forge: Forge,
    secrets: &ForgeSecrets,
    header: Headers<'_>,
    body: &[u8],
) -> Result<(), HookError> {
    let secret = forge
        .secret(secrets)
        .ok_or(HookError::NoSecret(forge.name()))?;
    let names = forge.signature_headers();
    let value = names
        .iter()
        .find_map(|h| header(h))
        .ok_or(HookError::MissingSignature(names[0]))?;
    let value = value.trim();
    if forge == Forge::Gitlab {
        // GitLab sends the secret itself; compare in constant time.
        return constant_time::verify_slices_are_equal(
            value.as_bytes(),
            secret.expose().as_bytes(),
        )
        .map_err(|_| HookError::BadSignature);
    }
    let hex_sig = match forge {
        Forge::Github | Forge::Bitbucket => value
            .strip_prefix("sha256=")
            .ok_or(HookError::BadSignature)?,
        _ => value.strip_prefix("sha256=").unwrap_or(value),
    };
    let tag = hex::decode(hex_sig).map_err(|_| HookError::BadSignature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    hmac::verify(&key, body, &tag).map_err(|_| HookError::BadSignature)
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A liveness check (GitHub `ping`, Bitbucket `diagnostics:ping`).
    Ping,
    /// An event we do not act on, by name.
    Ignored(String),
    /// The repository's refs changed.
    Changed {
        /// `owner/name` as the forge writes it (GitLab: `group/sub/project`).
        full_name: String,
        /// The forge's host, where the payload gives one (lower case, no port).
        host: Option<String>,
    },
}

/// A parsed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The forge's delivery id, if it sent one.
    pub id: Option<String>,
    /// The event name as sent.
    pub event_name: String,
    /// What it asks for.
    pub event: Event,
}

/// Read the event, the delivery id and (for events that trigger) the repository of a verified
/// delivery. `body` is the JSON payload.
pub fn parse(forge: Forge, header: Headers<'_>, body: &[u8]) -> Result<Delivery, HookError> {
    let (event_headers, id_headers): (&[&'static str], &[&str]) = match forge {
        Forge::Github => (&["x-github-event"], &["x-github-delivery"]),
        Forge::Gitlab => (&["x-gitlab-event"], &["x-gitlab-event-uuid"]),
        Forge::Gitea => (
            &["x-gitea-event", "x-forgejo-event"],
            &["x-gitea-delivery", "x-forgejo-delivery"],
        ),
        Forge::Forgejo => (
            &["x-forgejo-event", "x-gitea-event"],
            &["x-forgejo-delivery", "x-gitea-delivery"],
        ),
        Forge::Bitbucket => (&["x-event-key"], &["x-request-uuid", "x-request-id"]),
    };
    let event_name = event_headers
        .iter()
        .find_map(|h| header(h))
        .map(|e| e.trim().to_owned())
        .ok_or(HookError::MissingEvent(event_headers[0]))?;
    let id = id_headers
        .iter()
        .find_map(|h| header(h))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let bad = |message: String| HookError::BadPayload {
        forge: forge.name(),
        message,
    };
    let triggers = match forge {
        Forge::Github => match event_name.as_str() {
            "ping" => {
                return Ok(Delivery {
                    id,
                    event_name,
                    event: Event::Ping,
                });
            }
            e => matches!(e, "push" | "create" | "delete"),
        },
        Forge::Gitlab => matches!(event_name.as_str(), "Push Hook" | "Tag Push Hook"),
        Forge::Gitea | Forge::Forgejo => {
            matches!(event_name.as_str(), "push" | "create" | "delete")
        }
        Forge::Bitbucket => match event_name.as_str() {
            "diagnostics:ping" => {
                return Ok(Delivery {
                    id,
                    event_name,
                    event: Event::Ping,
                });
            }
            e => e == "repo:push",
        },
    };
    if !triggers {
        let event = Event::Ignored(event_name.clone());
        return Ok(Delivery {
            id,
            event_name,
            event,
        });
    }
    let payload: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let str_at = |path: &[&str]| -> Option<String> {
        let mut v = &payload;
        for key in path {
            v = v.get(key)?;
        }
        v.as_str().map(str::to_owned)
    };
    let (name_path, web_path): (&[&str], &[&str]) = match forge {
        Forge::Github => (&["repository", "full_name"], &["repository", "html_url"]),
        Forge::Gitlab => (&["project", "path_with_namespace"], &["project", "web_url"]),
        Forge::Gitea | Forge::Forgejo => {
            (&["repository", "full_name"], &["repository", "html_url"])
        }
        Forge::Bitbucket => (
            &["repository", "full_name"],
            &["repository", "links", "html", "href"],
        ),
    };
    let full_name = str_at(name_path)
        .filter(|n| !n.trim_matches('/').is_empty())
        .ok_or_else(|| bad(format!("no {}", name_path.join("."))))?;
    let host = str_at(web_path).and_then(|u| host_of(&u));
    Ok(Delivery {
        id,
        event_name,
        event: Event::Changed { full_name, host },
    })
}

/// The host name of `url` (lower case, without port or user-info).
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether a delivery about `full_name` (on `host`, if known) from `forge` concerns a mirror of
/// `upstream`.
fn concerns(forge: Forge, upstream: &UpstreamRecord, full_name: &str, host: Option<&str>) -> bool {
    let Some(provider) = upstream.provider.as_deref() else {
        return false;
    };
    if !forge
        .providers()
        .iter()
        .any(|p| p.eq_ignore_ascii_case(provider))
    {
        return false;
    }
    let (Some(owner), Some(name)) = (&upstream.owner, &upstream.name) else {
        return false;
    };
    let ours = format!(
        "{}/{}",
        owner.trim_matches('/'),
        name.trim_matches('/').trim_end_matches(".git")
    );
    let theirs = full_name.trim_matches('/').trim_end_matches(".git");
    if !ours.eq_ignore_ascii_case(theirs) {
        return false;
    }
    // GitHub mirrors all come from `--github-url`: the name says it all. Elsewhere, one server
    // may mirror several hosts of one forge software: the host must agree where both say one.
    if forge == Forge::Github {
        return true;
    }
    let mirror_host = upstream
        .upstream_host
        .as_deref()
        .and_then(host_of)
        .or_else(|| host_of(&upstream.url));
    match (host, mirror_host) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => true,
    }
}

/// What became of an accepted delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A ping, answered.
    Pong,
    /// An event we do not act on.
    Ignored(String),
    /// This delivery id was handled before.
    Duplicate(String),
    /// Syncs requested for these mirrors (possibly none) of `full_name`.
    Triggered {
        /// The forge's repository.
        full_name: String,
        /// Our repositories that mirror it.
        repos: Vec<String>,
    },
}

/// Recently handled delivery ids, oldest first, bounded.
#[derive(Default)]
struct Seen {
    order: VecDeque<(Forge, String)>,
    set: HashSet<(Forge, String)>,
}

impl Seen {
    /// Remember `key`; `false` if it was already there.
    fn insert(&mut self, key: (Forge, String)) -> bool {
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(key.clone());
        self.set.insert(key);
        true
    }
}

/// A pending debounced sync: when the first and the latest delivery for it arrived.
struct Pending {
    first: Instant,
    last: Instant,
}

/// The state of incoming webhooks: recent delivery ids and pending debounced syncs.
#[derive(Default)]
pub struct ForgeHooks {
    seen: Mutex<Seen>,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
}

impl ForgeHooks {
    /// No deliveries seen yet.
    pub fn new() -> ForgeHooks {
        ForgeHooks::default()
    }

    /// Act on a verified, parsed delivery: skip a repeated one, else request a (debounced)
    /// sync of every mirror of the repository it names.
    pub fn accept(
        &self,
        forge: Forge,
        delivery: &Delivery,
        store: &Arc<Store>,
        sync: &Arc<SyncManager>,
    ) -> Outcome {
        if let Some(id) = &delivery.id {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !seen.insert((forge, id.clone())) {
                return Outcome::Duplicate(id.clone());
            }
        }
        let (full_name, host) = match &delivery.event {
            Event::Ping => return Outcome::Pong,
            Event::Ignored(e) => return Outcome::Ignored(e.clone()),
            Event::Changed { full_name, host } => (full_name, host.as_deref()),
        };
        let mut repos = Vec::new();
        for repo in store.repos() {
            let record = repo.record();
            if record
                .upstream
                .as_ref()
                .is_some_and(|u| concerns(forge, u, full_name, host))
            {
                repos.push(record.name.clone());
                self.debounce(record.name, store.clone(), sync.clone());
            }
        }
        Outcome::Triggered {
            full_name: full_name.clone(),
            repos,
        }
    }

    /// Request a sync of `name` [`DEBOUNCE`] after the last call for it (at most
    /// [`MAX_DEBOUNCE`] after the first).
    fn debounce(&self, name: String, store: Arc<Store>, sync: Arc<SyncManager>) {
        let now = Instant::now();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = pending.get_mut(&name) {
                p.last = now;
                return;
            }
            pending.insert(
                name.clone(),
                Pending {
                    first: now,
                    last: now,
                },
            );
        }
        let pending = self.pending.clone();
        tokio::spawn(async move {
            loop {
                let due = {
                    let map = pending.lock().unwrap_or_else(|p| p.into_inner());
                    match map.get(&name) {
                        Some(p) => (p.last + DEBOUNCE).min(p.first + MAX_DEBOUNCE),
                        None => return,
                    }
                };
                if Instant::now() >= due {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            // The repository may have been deleted or detached meanwhile.
            if let Some(repo) = store.repo(&name)
                && repo.record().upstream.is_some()
            {
                tracing::info!(repo = %name, "sync requested by a forge webhook");
                sync.request(repo);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn secrets() -> ForgeSecrets {
        ForgeSecrets::new(
            Some(Secret::new("It's a Secret to Everybody")),
            Some(Secret::new("gl-token")),
            Some(Secret::new("gt")),
            None,
        )
    }

    #[test]
    fn githubs_documented_test_vector_verifies() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = headers(&[("X-Hub-Signature-256", sig)]);
        assert_eq!(
            verify(Forge::Github, &secrets(), &h, b"Hello, World!"),
            Ok(())
        );
        assert_eq!(
            verify(Forge::Github, &secrets(), &h, b"Hello, World?"),
            Err(HookError::BadSignature)
        );
        let unprefixed = headers(&[(
            "X-Hub-Signature-256",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(
            verify(Forge::Github, &secrets(), &unprefixed, b"Hello, World!"),
            Err(HookError::BadSignature)
        );
        assert_eq!(
            verify(Forge::Github, &secrets(), &headers(&[]), b"x"),
            Err(HookError::MissingSignature("x-hub-signature-256"))
        );
    }

    #[test]
    fn gitlab_compares_the_token_and_bitbucket_needs_a_secret() {
        let ok = headers(&[("X-Gitlab-Token", "gl-token")]);
        assert_eq!(verify(Forge::Gitlab, &secrets(), &ok, b"{}"), Ok(()));
        let bad = headers(&[("X-Gitlab-Token", "gl-tokeN")]);
        assert_eq!(
            verify(Forge::Gitlab, &secrets(), &bad, b"{}"),
            Err(HookError::BadSignature)
        );
        assert_eq!(
            verify(Forge::Bitbucket, &secrets(), &ok, b"{}"),
            Err(HookError::NoSecret("bitbucket"))
        );
    }

    #[test]
    fn forgejo_signatures_are_accepted_on_either_endpoint() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"gt");
        let sig = hex::encode(hmac::sign(&key, b"{}").as_ref());
        let h = headers(&[("X-Forgejo-Signature", &sig)]);
        assert_eq!(verify(Forge::Forgejo, &secrets(), &h, b"{}"), Ok(()));
        assert_eq!(verify(Forge::Gitea, &secrets(), &h, b"{}"), Ok(()));
        let h = headers(&[("X-Gitea-Signature", "zz")]);
        assert_eq!(
            verify(Forge::Gitea, &secrets(), &h, b"{}"),
            Err(HookError::BadSignature)
        );
    }

    #[test]
    fn events_and_repositories_are_read_per_forge() {
        let gl = br#"{"object_kind":"push","project":{"path_with_namespace":"Group/Sub/Proj","web_url":"https://GitLab.example.com:8443/group/sub/proj"}}"#;
        let h = headers(&[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Event-UUID", "u1"),
        ]);
        let d = parse(Forge::Gitlab, &h, gl).expect("parses");
        assert_eq!(d.id.as_deref(), Some("u1"));
        assert_eq!(
            d.event,
            Event::Changed {
                full_name: "Group/Sub/Proj".into(),
                host: Some("gitlab.example.com".into())
            }
        );
        let h = headers(&[("X-GitHub-Event", "ping")]);
        assert_eq!(
            parse(Forge::Github, &h, b"{}").map(|d| d.event),
            Ok(Event::Ping)
        );
        let h = headers(&[("X-GitHub-Event", "issues")]);
        assert_eq!(
            parse(Forge::Github, &h, b"not json").map(|d| d.event),
            Ok(Event::Ignored("issues".into()))
        );
        let h = headers(&[("X-GitHub-Event", "push")]);
        assert!(matches!(
            parse(Forge::Github, &h, b"{\"repository\":{}}"),
            Err(HookError::BadPayload { .. })
        ));
        assert_eq!(
            parse(Forge::Github, &headers(&[]), b"{}"),
            Err(HookError::MissingEvent("x-github-event"))
        );
        let bb = br#"{"repository":{"full_name":"team/repo","links":{"html":{"href":"https://bitbucket.org/team/repo"}}}}"#;
        let h = headers(&[("X-Event-Key", "repo:push"), ("X-Request-UUID", "r-1")]);
        let d = parse(Forge::Bitbucket, &h, bb).expect("parses");
        assert_eq!(
            d.event,
            Event::Changed {
                full_name: "team/repo".into(),
                host: Some("bitbucket.org".into())
            }
        );
    }

    #[test]
    fn mirrors_match_by_provider_name_and_host() {
        let gitea = UpstreamRecord {
            url: "https://git.example.com/acme/widgets.git".into(),
            provider: Some("forgejo".into()),
            owner: Some("acme".into()),
            name: Some("widgets".into()),
            upstream_host: Some("git.example.com".into()),
            ..Default::default()
        };
        assert!(concerns(
            Forge::Gitea,
            &gitea,
            "ACME/Widgets",
            Some("git.example.com")
        ));
        assert!(concerns(Forge::Forgejo, &gitea, "acme/widgets", None));
        assert!(!concerns(
            Forge::Gitea,
            &gitea,
            "acme/widgets",
            Some("other.example.com")
        ));
        assert!(!concerns(Forge::Gitea, &gitea, "acme/gadgets", None));
        assert!(!concerns(Forge::Github, &gitea, "acme/widgets", None));
        let github = UpstreamRecord {
            url: "http://127.0.0.1:9/acme/widgets.git".into(),
            provider: Some("github".into()),
            owner: Some("acme".into()),
            name: Some("widgets".into()),
            ..Default::default()
        };
        assert!(concerns(
            Forge::Github,
            &github,
            "acme/widgets",
            Some("github.com")
        ));
    }

    #[test]
    fn delivery_memory_is_bounded() {
        let mut seen = Seen::default();
        assert!(seen.insert((Forge::Github, "a".into())));
        assert!(!seen.insert((Forge::Github, "a".into())));
        assert!(seen.insert((Forge::Gitlab, "a".into())));
        for i in 0..SEEN_CAPACITY {
            seen.insert((Forge::Github, i.to_string()));
        }
        assert_eq!(seen.order.len(), SEEN_CAPACITY);
        assert_eq!(seen.set.len(), SEEN_CAPACITY);
        assert!(
            seen.insert((Forge::Github, "a".into())),
            "forgotten once evicted"
        );
    }
}
