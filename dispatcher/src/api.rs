//! HTTP surface: the proxied inference API (`/v1/*`, `/v2/*`), probes and metrics.
//!
//! Proxied requests go straight from the connection to [`Service::forward`], without a router
//! or middleware stack: at tens of thousands of requests per second per core, the layers a
//! request passes through are a visible share of the dispatcher's CPU (docs/PERFORMANCE.md).
//! Everything else (probes, metrics, unknown paths) goes through an ordinary axum router.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::Request;
use http_body_util::{BodyExt, Either, Limited};
use hyper::body::Incoming;
use tower::ServiceExt;

use crate::admission::Admission;
use crate::balancer::Balancer;
use crate::connections::Relayed;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A response body: streamed from an upstream, or made here.
pub type ResponseBody = Either<Relayed, Body>;

/// Handler state; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Forwarding.
    pub proxy: Arc<Proxy>,
    /// In-flight cap and queue.
    pub admission: Arc<Admission>,
    /// Upstream set (for readiness and metrics).
    pub balancer: Arc<Balancer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

/// What every client connection runs; cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    state: AppState,
    routes: Router,
}

impl Service {
    /// The service over `state`.
    pub fn new(state: AppState) -> Self {
        Self {
            routes: routes(state.clone()),
            state,
        }
    }

    /// Answers one request; errors are responses too. Every request carries an
    /// `X-Request-Id` (the client's, or a new one) to the upstream and back to the client.
    pub async fn call(
        self,
        mut request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let request_id = request_id(request.headers_mut());
        let path = request.uri().path();
        let mut response = if path.starts_with("/v1/") || path == "/v2" || path.starts_with("/v2/")
        {
            self.forward(request).await
        } else {
            self.routes.oneshot(request).await?.map(Either::Right)
        };
        response
            .headers_mut()
            .entry(REQUEST_ID)
            .or_insert(request_id);
        Ok(response)
    }

    /// The proxied path: admission, body, forwarding, and the request's metrics.
    async fn forward(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        struct InFlight<'a>(&'a prometheus::IntGauge);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let metrics = &self.state.metrics;
        metrics.in_flight.inc();
        let _in_flight = InFlight(&metrics.in_flight);
        let started = Instant::now();
        let response = match admit_and_forward(&self.state, request).await {
            Ok(response) => response.map(Either::Left),
            Err(error) => {
                if let ProxyError::Overloaded(reason) = &error {
                    metrics.rejected.with_label_values(&[reason]).inc();
                } else if matches!(error, ProxyError::NoUpstream) {
                    metrics.rejected.with_label_values(&["no_upstream"]).inc();
                }
                error.into_response().map(Either::Right)
            }
        };
        metrics.count_request(response.status());
        metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        response
    }
}

/// The request's `X-Request-Id`, set to a new UUID when the client sent none, so the upstream
/// and the client's response carry the same one.
fn request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&REQUEST_ID) {
        return id.clone();
    }
    let mut text = uuid::Uuid::encode_buffer();
    let id = HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text))
        .expect("a UUID is a valid header value");
    headers.insert(REQUEST_ID, id.clone());
    id
}

/// The routes that are not proxied.
fn routes(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn admit_and_forward(
    state: &AppState,
    request: Request<Incoming>,
) -> Result<Response<Relayed>, ProxyError> {
    let _slot = state.admission.admit().await?;
    let (parts, body) = request.into_parts();
    let limit = state.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ProxyError::TooLarge(limit));
    }
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ProxyError::TooLarge(limit));
        }
        Err(e) => {
            return Err(ProxyError::BadRequest(format!(
                "could not read the request body: {e}"
            )));
        }
    };
    state.proxy.forward(parts, body).await
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.balancer.snapshot().is_empty() {
        return ProxyError::NoUpstream.into_response();
    }
    "ready".into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&state.balancer),
    )
        .into_response()
}

async fn not_found(request: axum::extract::Request) -> Response {
    let body = serde_json::json!({
        "error": format!("no route for {} {}; the dispatcher forwards /v1/* and /v2/*", request.method(), request.uri().path())
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}
