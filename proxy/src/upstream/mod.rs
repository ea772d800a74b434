//! The async HTTP client for talking to upstreams' smart-HTTP endpoints during a forwarded push:
//! the receive-pack advertisement (capabilities, and an early check that the upstream is there
//! and lets us in) and the streamed `git-receive-pack` POST.
//!
//! Bodies pass through untouched (no transparent decompression); reads time out when the
//! upstream stays silent, a transfer as such is never capped. Credentials never reach a log or
//! an error message. TLS trusts the system roots plus `--upstream-ca-file`; the standard proxy
//! variables (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`) apply (reqwest reads them).

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

pub use credential::{
    CredentialError, CredentialSource, UpstreamCredential, UpstreamTarget, forwards_pushes,
};

/// Why talking to the upstream failed, in words a pusher can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection, or it broke.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream refused our credentials (401/403).
    #[error("upstream refused the credentials (HTTP {0})")]
    Auth(u16),
    /// Any other non-success status.
    #[error("upstream answered HTTP {0}")]
    Status(u16),
}

impl UpstreamError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            return UpstreamError::Timeout;
        }
        // The URL may carry userinfo: describe the failure without it.
        let e = e.without_url();
        let mut msg = e.to_string();
        if let Some(src) = std::error::Error::source(&e) {
            msg = format!("{msg}: {src}");
        }
        UpstreamError::Unreachable(msg)
    }

    fn from_status(code: reqwest::StatusCode) -> Self {
        match code.as_u16() {
            401 | 403 => UpstreamError::Auth(code.as_u16()),
            c => UpstreamError::Status(c),
        }
    }
}

/// A client for upstream git endpoints.
#[derive(Clone)]
pub struct UpstreamClient {
    http: reqwest::Client,
}

/// The user agent sent upstream: forges route smart HTTP by a `git/` agent.
fn user_agent() -> String {
    format!("git/2.47.0 ({})", crate::protocol::upload_pack::agent())
}

/// `req` with the target's credential, if it has one.
fn authorized(req: reqwest::RequestBuilder, target: &UpstreamTarget) -> reqwest::RequestBuilder {
    match &target.credential {
        Some(c) => req.basic_auth(&c.username, Some(c.password.expose())),
        None => req,
    }
}

fn endpoint(url: &str, tail: &str) -> String {
    format!("{}/{tail}", url.trim_end_matches('/'))
}

impl UpstreamClient {
    /// A client with an idle-read timeout of `idle`.
    pub fn new(idle: Duration) -> Result<Self, UpstreamError> {
        Self::with_roots(idle, &[])
    }

    /// A client with an idle-read timeout of `idle` that trusts `roots` besides the system's.
    pub fn with_roots(
        idle: Duration,
        roots: &[reqwest::Certificate],
    ) -> Result<Self, UpstreamError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(idle)
            .user_agent(user_agent());
        if !roots.is_empty() {
            builder = builder.tls_certs_merge(roots.iter().cloned());
        }
        let http = builder
            .build()
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        Ok(UpstreamClient { http })
    }

    /// `GET …/info/refs?service=git-upload-pack`, asked after a sync failed with a throttling
    /// status (gix keeps the response headers to itself): `Some(Retry-After)` while the
    /// upstream still answers 429 or 503 (`Some(None)` without the header), `None` otherwise.
    pub async fn throttle_probe(&self, target: &UpstreamTarget) -> Option<Option<String>> {
        let resp = authorized(
            self.http
                .get(endpoint(&target.url, "info/refs?service=git-upload-pack"))
                .header("Git-Protocol", "version=2")
                .timeout(Duration::from_secs(30)),
            target,
        )
        .send()
        .await
        .ok()?;
        if !matches!(resp.status().as_u16(), 429 | 503) {
            return None;
        }
        Some(
            resp.headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        )
    }

    /// `GET …/info/refs?service=git-receive-pack`: the upstream's advertisement.
    pub async fn receive_pack_advertisement(
        &self,
        target: &UpstreamTarget,
    ) -> Result<Bytes, UpstreamError> {
        let resp = authorized(
            self.http
                .get(endpoint(&target.url, "info/refs?service=git-receive-pack")),
            target,
        )
        .send()
        .await
        .map_err(UpstreamError::from_reqwest)?;
        if !resp.status().is_success() {
            return Err(UpstreamError::from_status(resp.status()));
        }
        resp.bytes().await.map_err(UpstreamError::from_reqwest)
    }

    /// `POST …/git-receive-pack` with a streamed body; the response once its status is known.
    pub async fn receive_pack<S>(
        &self,
        target: &UpstreamTarget,
        body: S,
    ) -> Result<reqwest::Response, UpstreamError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let resp = authorized(
            self.http.post(endpoint(&target.url, "git-receive-pack")),
            target,
        )
        .header("Content-Type", "application/x-git-receive-pack-request")
        .header("Accept", "application/x-git-receive-pack-result")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .map_err(UpstreamError::from_reqwest)?;
        if !resp.status().is_success() {
            return Err(UpstreamError::from_status(resp.status()));
        }
        Ok(resp)
    }
}

pub mod credential;
pub mod github;
pub mod push;
