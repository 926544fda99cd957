//! Errors as Kubernetes `Status` objects, which is what the HPA's client, kubectl and the
//! aggregator decode. Details of internal failures go to the log, not to the caller.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status};

use crate::objects::ObjectsError;
use crate::prom::PromError;
use crate::provider::ProviderError;

use super::paths::PathError;

/// An API error, mapped to an HTTP status and a `Status` reason.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `BadRequest`.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `Unauthorized`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `Forbidden`.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `NotFound`.
    #[error("{0}")]
    NotFound(String),
    /// 405 `MethodNotAllowed`.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 406 `NotAcceptable`.
    #[error("{0}")]
    NotAcceptable(String),
    /// 500 `InternalError`.
    #[error("{0}")]
    Internal(String),
    /// 503 `ServiceUnavailable`.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            Self::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "NotAcceptable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        }
    }

    /// The `Status` body.
    pub fn status(&self) -> Status {
        let (code, reason) = self.parts();
        Status {
            code: Some(i32::from(code.as_u16())),
            message: Some(self.to_string()),
            metadata: ListMeta::default(),
            reason: Some(reason.to_owned()),
            status: Some("Failure".to_owned()),
            details: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, _) = self.parts();
        let body = serde_json::to_vec(&self.status()).expect("Status serialises");
        let mut response = (code, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

impl From<PathError> for ApiError {
    fn from(error: PathError) -> Self {
        match error {
            PathError::NotFound(message) => Self::NotFound(message),
            PathError::BadRequest(message) => Self::BadRequest(message),
        }
    }
}

impl From<PromError> for ApiError {
    fn from(error: PromError) -> Self {
        tracing::warn!(%error, "Prometheus call failed");
        match error {
            PromError::Unreachable(_) => Self::Unavailable(
                "unable to fetch metrics: Prometheus did not answer (details in the adapter's log)"
                    .into(),
            ),
            PromError::Refused(_) | PromError::NotAVector(_) => Self::Internal(
                "Internal error occurred: unable to fetch metrics (Prometheus refused the rule's \
                 query; details in the adapter's log)"
                    .into(),
            ),
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(error: ProviderError) -> Self {
        match error {
            ProviderError::NotFound(message) => Self::NotFound(message),
            ProviderError::BadRequest(message) => Self::BadRequest(message),
            ProviderError::Prometheus(error) => error.into(),
            ProviderError::Objects(error @ ObjectsError::NotReady { .. }) => {
                tracing::warn!(%error, "cannot list objects");
                Self::Unavailable(format!("unable to list matching resources: {error}"))
            }
        }
    }
}
