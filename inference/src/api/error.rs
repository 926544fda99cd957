//! Every failure a client can see, as an HTTP status and a JSON body `{"error": "..."}`
//! whose message says what to do about it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::batcher::BatchError;
use crate::model::PreprocessError;

/// An error answer. Built from the domain errors below; never a panic, never HTML.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds a client should wait before retrying (429/503 only).
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with a status and a message for the client.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 500 for failures that are ours, not the client's (a panicked task, a missing output).
    /// The detail goes to the log; the client gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error while processing the request; see the server log",
        )
    }

    /// 404 for an unknown model name.
    pub fn unknown_model(name: &str, known: &[&str]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("unknown model '{name}'; available: {}", known.join(", ")),
        )
    }

    /// 503 while models are still loading; Kubernetes keeps such a pod out of the Service.
    pub fn not_ready() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is still loading; retry shortly",
            )
        }
    }

    /// The HTTP status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<PreprocessError> for ApiError {
    fn from(e: PreprocessError) -> Self {
        let status = match e {
            PreprocessError::UnknownFormat => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PreprocessError::Empty
            | PreprocessError::Corrupt { .. }
            | PreprocessError::TooLarge(_) => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.to_string())
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::QueueFull(_) => Self {
                retry_after: Some(1),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            },
            BatchError::DeadlineExceeded => Self::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
            BatchError::WorkerGone => Self {
                retry_after: Some(1),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            },
            BatchError::Model(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}
