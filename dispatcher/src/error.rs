//! Errors the dispatcher itself answers with, as JSON `{"error": "..."}` in the same shape as
//! the inference server's, so clients handle one format.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A request the dispatcher could not forward or complete.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No upstream is known (none ready yet, or all pods gone).
    #[error("no inference upstream is ready; retry shortly")]
    NoUpstream,
    /// The upstream (after a retry, if allowed) could not be reached.
    #[error("upstream {upstream} failed: {reason}")]
    Upstream { upstream: String, reason: String },
    /// No response before the request timeout.
    #[error("upstream {0} did not answer before the request timeout")]
    Timeout(String),
    /// Every forwarding slot is busy and the wait queue is full or its wait ran out.
    #[error("the dispatcher is at capacity ({0}); retry shortly")]
    Overloaded(&'static str),
    /// The request cannot be forwarded as sent.
    #[error("{0}")]
    BadRequest(String),
    /// The body is over `--max-body-bytes`.
    #[error("request body is larger than the {0}-byte limit (--max-body-bytes)")]
    TooLarge(usize),
}

impl ProxyError {
    /// The HTTP status for this error (DESIGN.md: 502 no healthy upstream, 503 overloaded,
    /// 504 deadline).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoUpstream | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry = matches!(self, Self::NoUpstream | Self::Overloaded(_));
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        response
    }
}
