//! HTTP surface: the proxied inference API (`/v1/*`, `/v2/*`), probes and metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::admission::Admission;
use crate::balancer::Balancer;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/{*path}", any(forward))
        .route("/v2", any(forward))
        .route("/v2/{*path}", any(forward))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // No per-request tracing span: at tens of thousands of requests per second it cost
        // throughput and tail latency; failures are logged where they happen.
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

async fn forward(State(state): State<AppState>, request: Request) -> Response {
    struct InFlight<'a>(&'a prometheus::IntGauge);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let metrics = &state.metrics;
    metrics.in_flight.inc();
    let _in_flight = InFlight(&metrics.in_flight);
    let started = Instant::now();
    let response = match admit_and_forward(&state, request).await {
        Ok(response) => response,
        Err(error) => {
            if let ProxyError::Overloaded(reason) = &error {
                metrics.rejected.with_label_values(&[reason]).inc();
            } else if matches!(error, ProxyError::NoUpstream) {
                metrics.rejected.with_label_values(&["no_upstream"]).inc();
            }
            error.into_response()
        }
    };
    metrics.count_request(response.status());
    metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn admit_and_forward(state: &AppState, request: Request) -> Result<Response, ProxyError> {
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
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ProxyError::TooLarge(limit)
        } else {
            ProxyError::BadRequest(format!("could not read the request body: {e}"))
        }
    })?;
    state.proxy.forward(parts, body).await
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
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

async fn not_found(request: Request<Body>) -> Response {
    let body = serde_json::json!({
        "error": format!("no route for {} {}; the dispatcher forwards /v1/* and /v2/*", request.method(), request.uri().path())
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}
