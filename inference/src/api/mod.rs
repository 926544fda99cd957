//! HTTP routes: the classification API (`/v1/classify`), the Open Inference Protocol (`/v2`),
//! probes and metrics, as fixed in `shared/DESIGN.md`.

mod body;
pub mod error;
mod v1;
mod v2;

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use error::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP surface of the inference server.
pub fn router(state: AppState) -> Router {
    let counted = Router::new()
        .route("/v1/classify", post(v1::classify))
        .route("/v2/models/{model}/infer", post(v2::infer))
        .route_layer(middleware::from_fn_with_state(state.clone(), body::limit))
        .route_layer(middleware::from_fn_with_state(state.clone(), track));
    Router::new()
        .merge(counted)
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(v2::model_metadata))
        .route("/v2/models/{model}/ready", get(v2::model_ready))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Counts and times classification requests (`inference_requests_total{code,attempt}`, duration,
/// in-flight). The in-flight gauge is decremented by a guard, so a client that disconnects
/// mid-request does not leave it high.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let attempt = if is_retry(request.headers()) {
        crate::metrics::RETRY
    } else {
        crate::metrics::FIRST_ATTEMPT
    };
    struct InFlight<'a>(&'a prometheus::IntGauge);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let metrics = &state.metrics;
    metrics.in_flight.inc();
    let _guard = InFlight(&metrics.in_flight);
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[response.status().as_str(), attempt])
        .inc();
    metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Whether a proxy retried this request here after another pod refused it
/// (`X-Attempt-Count` above 1, set by the dispatcher on a retry). Such a request was already
/// counted as demand where it first went.
fn is_retry(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("x-attempt-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|attempt| attempt > 1)
}

/// Liveness: the process serves HTTP.
async fn live() -> &'static str {
    "ok"
}

/// Readiness: models loaded and warmed up.
async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.models().map(|_| "ready")
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn method_not_allowed(request: Request<Body>) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn not_found(request: Request<Body>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {}; see /v1/classify and /v2/models/{{model}}/infer",
            request.method(),
            request.uri().path()
        ),
    )
}
