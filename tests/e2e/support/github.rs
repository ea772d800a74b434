//! A fake GitHub REST API for the GitHub App mode: only the two endpoints codestorage calls,
//! with GitHub's documented request and response shapes, on `127.0.0.1:0`.
//!
//! - `GET /repos/{owner}/{repo}/installation` → `200 {"id", "account", "app_id", …}`, or
//!   `404 {"message": "Not Found", …}` for a repository the App is not installed on;
//! - `POST /app/installations/{id}/access_tokens` → `201 {"token": "ghs_…", "expires_at":
//!   "YYYY-MM-DDTHH:MM:SSZ", "permissions", "repository_selection"}`.
//!
//! Both require `Authorization: Bearer <App JWT>`: RS256, verified with the App's public key,
//! `iss` = the App id, `iat` not in the future, `exp` after `iat` and at most ten minutes
//! ahead — else `401 {"message": "A JSON web token could not be decoded"}` and the reason is
//! kept in [`FakeGithub::rejections`]. `Accept: application/vnd.github+json`,
//! `X-GitHub-Api-Version: 2022-11-28` and a `User-Agent` are required as GitHub documents
//! (400/403 otherwise).
//!
//! Tokens expire after the installation's lifetime; [`FakeGithub::token_check`] gives the
//! upstream git server a Basic-auth check that accepts `x-access-token:<token>` while the token
//! is unexpired — as github.com does. The App key is an RSA key generated per run
//! ([`AppKey`]) and written as PKCS#1 `BEGIN RSA PRIVATE KEY`, the form GitHub issues.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::scratch_dir;

/// An RSA key pair for a GitHub App, as PEM files in a scratch dir.
pub struct AppKey {
    dir: tempfile::TempDir,
    /// PKCS#1 `-----BEGIN RSA PRIVATE KEY-----` (what GitHub hands out).
    pub pkcs1_file: PathBuf,
    /// PKCS#8 `-----BEGIN PRIVATE KEY-----`.
    pub pkcs8_file: PathBuf,
    /// SPKI `-----BEGIN PUBLIC KEY-----`.
    pub public_pem: String,
}

impl AppKey {
    /// A fresh 2048-bit key.
    pub fn generate() -> AppKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("generate an RSA key");
        let pkcs8 = pair.as_der().expect("PKCS#8 DER of the key");
        let pkcs1 = pkcs1_of_pkcs8(pkcs8.as_ref()).expect("PKCS#1 inside the PKCS#8 DER");
        let public = pair.public_key().as_der().expect("SPKI DER of the key");
        let dir = scratch_dir("github-app-key");
        let pkcs1_file = dir.path().join("app.pkcs1.pem");
        let pkcs8_file = dir.path().join("app.pkcs8.pem");
        std::fs::write(&pkcs1_file, pem("RSA PRIVATE KEY", &pkcs1)).expect("write PKCS#1 key");
        std::fs::write(&pkcs8_file, pem("PRIVATE KEY", pkcs8.as_ref())).expect("write PKCS#8");
        AppKey {
            dir,
            pkcs1_file,
            pkcs8_file,
            public_pem: pem("PUBLIC KEY", public.as_ref()),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One DER TLV at the start of `buf`: (tag, contents, rest).
fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *buf.first()?;
    let first = *buf.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        let bytes = buf.get(2..2 + n)?;
        (
            bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize),
            2 + n,
        )
    };
    let contents = buf.get(header..header + len)?;
    Some((tag, contents, &buf[header + len..]))
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`: SEQUENCE { version INTEGER,
/// algorithm SEQUENCE, privateKey OCTET STRING, … }.
fn pkcs1_of_pkcs8(der: &[u8]) -> Option<Vec<u8>> {
    let (0x30, info, _) = tlv(der)? else {
        return None;
    };
    let (0x02, _, rest) = tlv(info)? else {
        return None;
    };
    let (0x30, _, rest) = tlv(rest)? else {
        return None;
    };
    let (0x04, key, _) = tlv(rest)? else {
        return None;
    };
    Some(key.to_vec())
}

/// Unix seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `YYYY-MM-DDTHH:MM:SSZ` of unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A token the fake handed out.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub installation: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

struct Installation {
    id: u64,
    /// How long its tokens live.
    lifetime: Duration,
}

#[derive(Default)]
struct State {
    /// `owner/repo` (lower case) → installation.
    installations: HashMap<String, Installation>,
    minted: Vec<Minted>,
    /// Why requests were refused (bad JWTs, missing headers).
    rejections: Vec<String>,
    /// `METHOD path` of every request.
    log: Vec<String>,
}

/// The fake API server.
pub struct FakeGithub {
    addr: SocketAddr,
    /// The CA of its https certificate (`None`: plain http).
    ca_file: Option<std::path::PathBuf>,
    _tls_dir: Option<tempfile::TempDir>,
    app_id: String,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeGithub {
    /// Starts the API for App `app_id` whose public key is `public_pem`.
    pub fn start(app_id: &str, public_pem: &str) -> FakeGithub {
        FakeGithub::start_with(app_id, public_pem, false)
    }

    /// [`FakeGithub::start`], serving https with a certificate from its own CA (a GitHub
    /// Enterprise host behind an internal CA): see [`FakeGithub::ca_file`].
    pub fn start_tls(app_id: &str, public_pem: &str) -> FakeGithub {
        FakeGithub::start_with(app_id, public_pem, true)
    }

    fn start_with(app_id: &str, public_pem: &str, tls: bool) -> FakeGithub {
        let tls_dir = tls.then(|| tempfile::tempdir().expect("a directory for the API's CA"));
        let tls = tls_dir
            .as_ref()
            .map(|dir| super::upstream::tls_setup(dir.path()));
        let acceptor = tls.as_ref().map(|(acceptor, _)| acceptor.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-github")
            .enable_all()
            .build()
            .expect("build the fake GitHub's runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the fake GitHub API");
        let addr = listener.local_addr().expect("fake GitHub address");
        let state = Arc::new(Mutex::new(State::default()));
        let ctx = Arc::new(Ctx {
            app_id: app_id.to_owned(),
            key: jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes())
                .expect("the App's public key"),
            state: state.clone(),
        });
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let ctx = ctx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(ctx.handle(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        FakeGithub {
            addr,
            ca_file: tls.map(|(_, ca)| ca),
            _tls_dir: tls_dir,
            app_id: app_id.to_owned(),
            state,
            runtime: Some(runtime),
        }
    }

    /// `http(s)://127.0.0.1:<port>`: what `--github-api-url` gets.
    pub fn api_url(&self) -> String {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM file of the CA behind its https certificate (started with `start_tls`).
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Install the App on `owner/repo` as installation `id`, whose tokens live `lifetime`.
    pub fn install(&self, full_name: &str, id: u64, lifetime: Duration) {
        self.lock().installations.insert(
            full_name.to_ascii_lowercase(),
            Installation { id, lifetime },
        );
    }

    /// Uninstall the App from `owner/repo`: its installation lookups are 404 from now on.
    pub fn uninstall(&self, full_name: &str) {
        self.lock()
            .installations
            .remove(&full_name.to_ascii_lowercase());
    }

    /// Every token handed out so far, oldest first.
    pub fn minted(&self) -> Vec<Minted> {
        self.lock().minted.clone()
    }

    /// Tokens handed out for installation `id`.
    pub fn minted_for(&self, id: u64) -> Vec<Minted> {
        self.minted()
            .into_iter()
            .filter(|m| m.installation == id)
            .collect()
    }

    /// Why requests were refused so far.
    pub fn rejections(&self) -> Vec<String> {
        self.lock().rejections.clone()
    }

    /// `METHOD path` of every request so far.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// A Basic-auth check for the upstream git server: `x-access-token` with a token this fake
    /// handed out and that has not expired. Every credential offered is appended to `seen`.
    pub fn token_check(
        &self,
        seen: Arc<Mutex<Vec<(String, String)>>>,
    ) -> codestorage_tests::cgi::BasicAuthCheck {
        let state = self.state.clone();
        Arc::new(move |user: &str, password: &str| {
            seen.lock()
                .expect("seen lock")
                .push((user.to_owned(), password.to_owned()));
            let now = unix_now();
            user == "x-access-token"
                && state
                    .lock()
                    .expect("fake GitHub lock")
                    .minted
                    .iter()
                    .any(|m| m.token == password && now < m.expires_at)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake GitHub lock")
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if std::thread::panicking() {
            let s = self.lock();
            eprintln!(
                "--- fake GitHub API: requests ---\n{}\n--- rejections ---\n{}",
                s.log.join("\n"),
                s.rejections.join("\n")
            );
        }
    }
}

struct Ctx {
    app_id: String,
    key: jsonwebtoken::DecodingKey,
    state: Arc<Mutex<State>>,
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

const DOCS: &str = "https://docs.github.com/rest";

impl Ctx {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let _ = body.collect().await;
        let line = format!("{} {}", parts.method, parts.uri.path());
        self.state.lock().expect("lock").log.push(line.clone());
        if let Err((status, why)) = self.check(&parts.headers) {
            self.state
                .lock()
                .expect("lock")
                .rejections
                .push(format!("{line}: {why}"));
            let message = if status == 401 {
                "A JSON web token could not be decoded".to_owned()
            } else {
                why
            };
            return reply(
                status,
                json!({ "message": message, "documentation_url": DOCS, "status": status.to_string() }),
            );
        }
        let segments: Vec<&str> = parts.uri.path().trim_matches('/').split('/').collect();
        match (parts.method.as_str(), segments.as_slice()) {
            ("GET", ["repos", owner, repo, "installation"]) => self.installation(owner, repo),
            ("POST", ["app", "installations", id, "access_tokens"]) => self.access_token(id),
            _ => reply(
                404,
                json!({ "message": "Not Found", "documentation_url": DOCS, "status": "404" }),
            ),
        }
    }

    /// The headers GitHub documents, and a valid App JWT.
    fn check(&self, headers: &http::HeaderMap) -> Result<(), (u16, String)> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if get("user-agent").is_none_or(str::is_empty) {
            return Err((403, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header".into()));
        }
        if get("accept") != Some("application/vnd.github+json") {
            return Err((
                400,
                format!(
                    "Accept must be application/vnd.github+json, got {:?}",
                    get("accept")
                ),
            ));
        }
        if get("x-github-api-version") != Some("2022-11-28") {
            return Err((
                400,
                format!(
                    "unsupported X-GitHub-Api-Version {:?}",
                    get("x-github-api-version")
                ),
            ));
        }
        let jwt = get("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or((401, "no Bearer token".to_owned()))?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Value>(jwt, &self.key, &validation)
            .map_err(|e| (401, format!("JWT rejected: {e}")))?;
        let claims = data.claims;
        let iss = match &claims["iss"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err((401, format!("iss {other}"))),
        };
        if iss != self.app_id {
            return Err((401, format!("iss {iss} is not App {}", self.app_id)));
        }
        let (iat, exp) = (
            claims["iat"].as_u64().ok_or((401, "iat".to_owned()))?,
            claims["exp"].as_u64().ok_or((401, "exp".to_owned()))?,
        );
        let now = unix_now();
        if iat > now + 5 {
            return Err((401, format!("iat {iat} is in the future (now {now})")));
        }
        if exp <= iat || exp > now + 600 + 5 {
            return Err((
                401,
                format!(
                    "exp {exp} must be after iat {iat} and at most 10 minutes ahead (now {now})"
                ),
            ));
        }
        Ok(())
    }

    fn installation(&self, owner: &str, repo: &str) -> Response<Full<Bytes>> {
        let key = format!("{owner}/{repo}").to_ascii_lowercase();
        let state = self.state.lock().expect("lock");
        match state.installations.get(&key) {
            Some(i) => reply(
                200,
                json!({
                    "id": i.id,
                    "account": { "login": owner, "id": 1, "type": "Organization" },
                    "app_id": self.app_id.parse::<u64>().unwrap_or(0),
                    "app_slug": "codestorage-e2e",
                    "target_id": 1,
                    "target_type": "Organization",
                    "permissions": { "contents": "write", "metadata": "read" },
                    "events": ["push", "create", "delete"],
                    "repository_selection": "selected",
                    "access_tokens_url": format!("/app/installations/{}/access_tokens", i.id),
                    "repositories_url": "/installation/repositories",
                    "created_at": "2024-01-01T00:00:00Z",
                    "updated_at": "2024-01-01T00:00:00Z",
                }),
            ),
            None => reply(
                404,
                json!({
                    "message": "Not Found",
                    "documentation_url": "https://docs.github.com/rest/apps/apps#get-a-repository-installation-for-the-authenticated-app",
                    "status": "404",
                }),
            ),
        }
    }

    fn access_token(&self, id: &str) -> Response<Full<Bytes>> {
        let mut state = self.state.lock().expect("lock");
        let Some(lifetime) = id.parse::<u64>().ok().and_then(|id| {
            state
                .installations
                .values()
                .find(|i| i.id == id)
                .map(|i| i.lifetime)
        }) else {
            return reply(
                404,
                json!({ "message": "Not Found", "documentation_url": DOCS, "status": "404" }),
            );
        };
        let installation = id.parse::<u64>().unwrap_or_default();
        let n = state.minted.len();
        let token = format!("ghs_{:016x}{n:04}", rand_u64() ^ (installation << 20));
        let expires_at = unix_now() + lifetime.as_secs();
        state.minted.push(Minted {
            token: token.clone(),
            installation,
            expires_at,
        });
        reply(
            201,
            json!({
                "token": token,
                "expires_at": rfc3339(expires_at),
                "permissions": { "contents": "write", "metadata": "read" },
                "repository_selection": "selected",
            }),
        )
    }
}

/// A random number (from the system's randomness) for token text.
fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).expect("randomness");
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkcs1_key_is_what_openssl_would_call_an_rsa_private_key() {
        let key = AppKey::generate();
        let text = std::fs::read_to_string(&key.pkcs1_file).expect("read");
        assert!(
            text.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
            "{text}"
        );
        let der = base64::engine::general_purpose::STANDARD
            .decode(
                text.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .expect("base64");
        // RSAPrivateKey ::= SEQUENCE { version 0, modulus, publicExponent, … }
        let (tag, body, _) = tlv(&der).expect("tlv");
        assert_eq!(tag, 0x30);
        let (tag, version, _) = tlv(body).expect("version");
        assert_eq!((tag, version), (0x02, &[0u8][..]));
        assert!(jsonwebtoken::EncodingKey::from_rsa_pem(text.as_bytes()).is_ok());
    }

    #[test]
    fn timestamps_are_formatted_as_github_does() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_468_275_250), "2016-07-11T22:14:10Z");
    }
}
