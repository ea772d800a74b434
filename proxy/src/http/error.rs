//! The one mapping from failures to HTTP statuses and bodies: JSON `{"error": …}` for REST,
//! plain text for git endpoints (git prints it as `remote: …`). Client mistakes are logged at
//! debug; internal details go to the log, never into a response.

use http::{Response, StatusCode, header};

use super::body::{Body, full};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The message shown to the client.
    pub message: String,
    /// Seconds to send as `Retry-After` (429).
    pub retry_after: Option<u64>,
}

/// The challenge sent with 401s, so git's credential helpers fire.
const CHALLENGE: &str = "Basic realm=\"codestorage\"";

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429: over the request rate; retry after `seconds`.
    pub fn too_many_requests(seconds: u64) -> Self {
        ApiError {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("request rate limit exceeded; retry after {seconds} s"),
            )
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no usable token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: a valid token that does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500 with a generic message; `detail` goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
    }

    fn builder(&self) -> http::response::Builder {
        let mut b = Response::builder().status(self.status);
        if let Some(secs) = self.retry_after {
            b = b.header(header::RETRY_AFTER, secs.to_string());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            b.header(header::WWW_AUTHENTICATE, CHALLENGE)
        } else {
            b
        }
    }

    /// As a JSON response (REST).
    pub fn json(&self) -> Response<Body> {
        if self.status.is_client_error() {
            tracing::debug!(status = %self.status, error = %self.message, "client error");
        }
        let body = serde_json::json!({ "error": self.message }).to_string();
        self.builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(body))
            .unwrap_or_else(|_| Response::new(full("internal server error")))
    }

    /// As a plain-text response (git endpoints).
    pub fn text(&self) -> Response<Body> {
        if self.status.is_client_error() {
            tracing::debug!(status = %self.status, error = %self.message, "client error");
        }
        self.builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(full(format!("{}\n", self.message)))
            .unwrap_or_else(|_| Response::new(full("internal server error")))
    }
}
