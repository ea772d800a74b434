//! GitHub as an upstream: the server-wide settings (`--github-url`, `--github-api-url`, the App),
//! the two sync modes of a GitHub mirror (App and public), and the App's installation tokens.
//!
//! App mode, per repository: sign an RS256 App JWT (`iat` = now − 60 s, `exp` = now + 9 min,
//! `iss` = the App id), look the repository's installation up
//! (`GET {api}/repos/{owner}/{repo}/installation`), exchange the JWT for an installation token
//! (`POST {api}/app/installations/{id}/access_tokens` → `{token, expires_at}`) and present it as
//! HTTP Basic `x-access-token:<token>`. Tokens are cached per installation until shortly before
//! they expire (5 minutes, or half the lifetime of a shorter-lived token); the installation is
//! looked up again whenever a token is minted, so a re-installed App is followed.
//!
//! Public mode (`auth.auth_type: "public"`) needs none of this: anonymous fetches, and pushes
//! stay local (see [`crate::upstream::forwards_pushes`] and `sync::public`).
//!
//! Neither the App key nor a token ever reaches a log or an error message.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use codestorage_store::UpstreamRecord;
use serde::{Deserialize, Serialize};

use crate::secrets::Secret;
use crate::time::now_unix;

/// The user name GitHub expects with an installation token.
pub const TOKEN_USER: &str = "x-access-token";
/// The REST API version we speak.
const API_VERSION: &str = "2022-11-28";
/// The `auth_type` of a public-mode mirror.
pub const PUBLIC: &str = "public";
/// The message of the 412 for an authenticated GitHub mirror without an App configured.
pub const APP_REQUIRED: &str = "GitHub App configuration is required for authenticated GitHub sync";
/// A token is replaced this long before it expires (at most: see [`refresh_at`]).
const REFRESH_MARGIN: u64 = 300;
/// How long a GitHub API call may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest GitHub API response read.
const MAX_API_RESPONSE: usize = 1 << 20;

/// Server-wide GitHub settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubSettings {
    /// Where GitHub repositories are cloned from (`https://github.com`, a GitHub Enterprise
    /// host, or a loopback upstream in tests); no trailing slash.
    pub url: String,
    /// The REST API base (`https://api.github.com`, or `https://HOST/api/v3`); no trailing slash.
    pub api_url: String,
    /// The GitHub App, if one is configured.
    pub app: Option<AppSettings>,
}

impl Default for GithubSettings {
    fn default() -> Self {
        GithubSettings {
            url: "https://github.com".into(),
            api_url: "https://api.github.com".into(),
            app: None,
        }
    }
}

/// A GitHub App: its id and its private key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    /// The App id (or client id): the JWT's `iss`.
    pub app_id: String,
    /// The App's private key (PEM: PKCS#1 `RSA PRIVATE KEY` as GitHub issues them, or PKCS#8).
    pub key_file: PathBuf,
}

/// Whether `upstream` is a GitHub mirror (provider `github`).
pub fn is_github(upstream: &UpstreamRecord) -> bool {
    upstream
        .provider
        .as_deref()
        .is_some_and(|p| p.eq_ignore_ascii_case("github"))
}

/// Whether `upstream` is a public-mode GitHub mirror: fetched anonymously, pushes kept here.
pub fn is_public(upstream: &UpstreamRecord) -> bool {
    is_github(upstream) && upstream.auth_type.as_deref() == Some(PUBLIC)
}

/// Why an installation token cannot be had. Messages are short, name what failed and never
/// carry a token or the key.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The App key file cannot be read or is not an RSA private key.
    #[error("GitHub App key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The App id is unusable.
    #[error("GitHub App id {0:?} is invalid")]
    AppId(String),
    /// The App JWT cannot be signed.
    #[error("signing the GitHub App JWT failed: {0}")]
    Jwt(String),
    /// The API cannot be reached.
    #[error("GitHub API {step} failed: {message}")]
    Unreachable {
        /// The call.
        step: &'static str,
        /// What went wrong (no URL user-info, no token).
        message: String,
    },
    /// The App is not installed on the repository.
    #[error("the GitHub App is not installed on {repo} (GitHub answered 404)")]
    NotInstalled {
        /// `owner/name`.
        repo: String,
    },
    /// The API answered with an error status.
    #[error("GitHub API {step} answered HTTP {status}: {message}")]
    Status {
        /// The call.
        step: &'static str,
        /// The status.
        status: u16,
        /// GitHub's `message`, if any.
        message: String,
    },
    /// The API answered something we cannot read.
    #[error("GitHub API {step} answered an unreadable body: {message}")]
    BadResponse {
        /// The call.
        step: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The mirror's record lacks its GitHub owner or name.
    #[error("the mirror's record has no GitHub owner/name")]
    NoRepo,
}

/// The claims of a GitHub App JWT.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct AppClaims {
    iat: u64,
    exp: u64,
    iss: String,
}

/// The App JWT's claims at unix time `now`: issued a minute back (clock drift), valid nine
/// minutes ahead (GitHub refuses more than ten).
fn app_claims(app_id: &str, now: u64) -> AppClaims {
    AppClaims {
        iat: now.saturating_sub(60),
        exp: now + 540,
        iss: app_id.to_owned(),
    }
}

/// When a token issued at `issued` and expiring at `expires` is replaced: [`REFRESH_MARGIN`]
/// before it expires, or halfway through a lifetime shorter than twice that.
fn refresh_at(issued: u64, expires: u64) -> u64 {
    let lifetime = expires.saturating_sub(issued);
    expires.saturating_sub(REFRESH_MARGIN.min(lifetime / 2))
}

/// Parse GitHub's `expires_at` (`YYYY-MM-DDTHH:MM:SSZ`, fractional seconds and offsets allowed,
/// as GitHub Enterprise versions differ; [`crate::time::parse_rfc3339`] takes only our own
/// strict form) into unix seconds.
fn parse_timestamp(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Split the zone off: `Z`, `+hh:mm` or `-hh:mm`.
    let (clock, offset) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (c, zone) = time.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':')?;
        (
            c,
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60),
        )
    };
    let clock = clock.split('.').next()?;
    let mut t = clock.splitn(3, ':');
    let (h, m, sec): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = crate::time::days_from_civil(year, month, day);
    let secs = days * 86_400 + h * 3600 + m * 60 + sec - offset;
    u64::try_from(secs).ok()
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    refresh_at: u64,
}

#[derive(Default)]
struct Cache {
    /// `owner/name` (lower case) → installation id, as last looked up.
    installations: HashMap<String, u64>,
    /// Installation id → its current token.
    tokens: HashMap<u64, CachedToken>,
}

/// A GitHub App that mints installation tokens.
pub struct GithubApp {
    api_url: String,
    app_id: String,
    key: jsonwebtoken::EncodingKey,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Cache>,
}

impl fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubApp")
            .field("api_url", &self.api_url)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    expires_at: String,
}

#[derive(Deserialize)]
struct ApiMessage {
    message: Option<String>,
}

impl GithubApp {
    /// The App of `settings`, with its key loaded; `api_url` is the REST API base.
    /// The API client trusts `roots` besides the system's (`--upstream-ca-file`: a GitHub
    /// Enterprise host behind an internal CA).
    pub fn load(
        api_url: &str,
        settings: &AppSettings,
        roots: &[reqwest::Certificate],
    ) -> Result<GithubApp, GithubError> {
        let key_err = |message: String| GithubError::Key {
            path: settings.key_file.clone(),
            message,
        };
        let pem = std::fs::read(&settings.key_file).map_err(|e| key_err(e.to_string()))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|_| {
            key_err(
                "not an RSA private key in PEM (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)".into(),
            )
        })?;
        GithubApp::with_key(api_url, &settings.app_id, key, roots)
    }

    fn with_key(
        api_url: &str,
        app_id: &str,
        key: jsonwebtoken::EncodingKey,
        roots: &[reqwest::Certificate],
    ) -> Result<GithubApp, GithubError> {
        let app_id = app_id.trim();
        if app_id.is_empty() || app_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(GithubError::AppId(app_id.to_owned()));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(API_TIMEOUT)
            .user_agent(format!("codestorage/{}", env!("CARGO_PKG_VERSION")));
        if !roots.is_empty() {
            builder = builder.tls_certs_merge(roots.iter().cloned());
        }
        let http = builder.build().map_err(|e| GithubError::Unreachable {
            step: "client",
            message: e.to_string(),
        })?;
        let app = GithubApp {
            api_url: api_url.trim_end_matches('/').to_owned(),
            app_id: app_id.to_owned(),
            key,
            http,
            cache: Default::default(),
        };
        // Sign once now so a key that cannot sign RS256 stops the server at start.
        app.jwt()?;
        Ok(app)
    }

    fn jwt(&self) -> Result<String, GithubError> {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(&header, &app_claims(&self.app_id, now_unix()), &self.key)
            .map_err(|e| GithubError::Jwt(e.to_string()))
    }

    /// A token for `owner/name`, from the cache while it is fresh, else minted.
    pub async fn token(&self, owner: &str, name: &str) -> Result<Secret, GithubError> {
        let repo = format!("{owner}/{name}").to_ascii_lowercase();
        // One minting at a time: concurrent syncs of one installation share the result.
        let mut cache = self.cache.lock().await;
        let now = now_unix();
        if let Some(id) = cache.installations.get(&repo)
            && let Some(t) = cache.tokens.get(id)
            && now < t.refresh_at
        {
            return Ok(t.token.clone());
        }
        let jwt = self.jwt()?;
        let id = self
            .installation(owner, name, &jwt)
            .await
            .inspect_err(|_| {
                cache.installations.remove(&repo);
            })?;
        cache.installations.insert(repo.clone(), id);
        if let Some(t) = cache.tokens.get(&id)
            && now < t.refresh_at
        {
            return Ok(t.token.clone());
        }
        let (token, expires) = self.mint(id, &jwt).await?;
        let refresh = refresh_at(now, expires);
        tracing::info!(
            repo = %repo,
            installation = id,
            expires_in = expires.saturating_sub(now),
            "GitHub installation token minted"
        );
        cache.tokens.insert(
            id,
            CachedToken {
                token: token.clone(),
                refresh_at: refresh,
            },
        );
        Ok(token)
    }

    fn request(&self, method: reqwest::Method, path: &str, jwt: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(jwt)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        step: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, Option<T>), GithubError> {
        let unreachable = |e: reqwest::Error| GithubError::Unreachable {
            step,
            message: describe(e),
        };
        let mut resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_API_RESPONSE {
                return Err(GithubError::BadResponse {
                    step,
                    message: "response too large".into(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if (200..300).contains(&status) {
            let value = serde_json::from_slice(&body).map_err(|e| GithubError::BadResponse {
                step,
                message: e.to_string(),
            })?;
            return Ok((status, Some(value)));
        }
        if status == 404 {
            return Ok((status, None));
        }
        let message = serde_json::from_slice::<ApiMessage>(&body)
            .ok()
            .and_then(|m| m.message)
            .unwrap_or_default();
        let message: String = message.chars().take(200).collect();
        Err(GithubError::Status {
            step,
            status,
            message,
        })
    }

    async fn installation(&self, owner: &str, name: &str, jwt: &str) -> Result<u64, GithubError> {
        let path = format!("/repos/{owner}/{name}/installation");
        let (_, found) = self
            .call::<Installation>(
                "installation lookup",
                self.request(reqwest::Method::GET, &path, jwt),
            )
            .await?;
        found
            .map(|i| i.id)
            .ok_or_else(|| GithubError::NotInstalled {
                repo: format!("{owner}/{name}"),
            })
    }

    async fn mint(&self, installation: u64, jwt: &str) -> Result<(Secret, u64), GithubError> {
        let step = "installation token";
        let path = format!("/app/installations/{installation}/access_tokens");
        let (_, token) = self
            .call::<AccessToken>(step, self.request(reqwest::Method::POST, &path, jwt))
            .await?;
        let token = token.ok_or(GithubError::Status {
            step,
            status: 404,
            message: format!("installation {installation} not found"),
        })?;
        let expires =
            parse_timestamp(&token.expires_at).ok_or_else(|| GithubError::BadResponse {
                step,
                message: format!("expires_at {:?} is not a timestamp", token.expires_at),
            })?;
        if token.token.is_empty() {
            return Err(GithubError::BadResponse {
                step,
                message: "empty token".into(),
            });
        }
        Ok((Secret::new(token.token), expires))
    }
}

/// A reqwest error without its URL, with its cause.
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let e = e.without_url();
    match std::error::Error::source(&e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_github_writes_them() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2016-07-11T22:14:10Z"), Some(1_468_275_250));
        assert_eq!(parse_timestamp("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(
            parse_timestamp("2024-01-20T10:30:00.123Z"),
            Some(1_705_746_600)
        );
        assert_eq!(
            parse_timestamp("2024-01-20T12:30:00+02:00"),
            Some(1_705_746_600)
        );
        for round in [0u64, 1_705_746_600, 4_102_444_799] {
            assert_eq!(parse_timestamp(&crate::time::rfc3339(round)), Some(round));
        }
        for bad in [
            "",
            "2024-13-01T00:00:00Z",
            "yesterday",
            "2024-01-01",
            "2024-01-01T25:00:00Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        // An hour-long token: five minutes early.
        assert_eq!(refresh_at(1000, 4600), 4300);
        // A short-lived token: halfway.
        assert_eq!(refresh_at(1000, 1010), 1005);
        assert_eq!(refresh_at(1000, 900), 900);
    }

    #[test]
    fn app_jwt_claims_stay_within_githubs_ten_minutes() {
        let c = app_claims("123", 10_000);
        assert_eq!(c.iat, 9_940);
        assert!(c.exp <= 10_000 + 600 && c.exp > 10_000, "{c:?}");
        assert_eq!(c.iss, "123");
    }

    #[test]
    fn modes_follow_the_record() {
        let mut u = UpstreamRecord {
            provider: Some("github".into()),
            ..Default::default()
        };
        assert!(is_github(&u) && !is_public(&u));
        u.auth_type = Some(PUBLIC.into());
        assert!(is_public(&u));
        u.provider = Some("gitlab".into());
        assert!(!is_github(&u) && !is_public(&u));
    }

    fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn the_app_jwt_is_rs256_signed_with_the_apps_key() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("generate");
        let private = pair.as_der().expect("pkcs8");
        let public = pair.public_key().as_der().expect("spki");
        let dir = tempfile::tempdir().expect("tmp");
        let key_file = dir.path().join("app.pem");
        std::fs::write(&key_file, pem("PRIVATE KEY", private.as_ref())).expect("write");
        let app = GithubApp::load(
            "https://api.github.com/",
            &AppSettings {
                app_id: "4242".into(),
                key_file,
            },
            &[],
        )
        .expect("loads a PKCS#8 key");
        assert_eq!(app.api_url, "https://api.github.com");
        let jwt = app.jwt().expect("signs");
        let key =
            jsonwebtoken::DecodingKey::from_rsa_pem(pem("PUBLIC KEY", public.as_ref()).as_bytes())
                .expect("public key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&["4242"]);
        let data = jsonwebtoken::decode::<AppClaims>(&jwt, &key, &validation).expect("verifies");
        let now = now_unix();
        assert!(
            data.claims.iat <= now - 59 && data.claims.exp <= now + 600,
            "{:?}",
            data.claims
        );
        assert!(!format!("{app:?}").contains("BEGIN"), "Debug shows no key");
    }

    #[test]
    fn a_bad_key_file_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("key.pem");
        std::fs::write(
            &path,
            "-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = GithubApp::load(
            "https://api.github.com",
            &AppSettings {
                app_id: "1".into(),
                key_file: path,
            },
            &[],
        )
        .expect_err("refused");
        assert!(matches!(err, GithubError::Key { .. }), "{err}");
        assert!(!err.to_string().contains("not a key"), "{err}");
    }
}
