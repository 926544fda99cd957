//! The HTTP API: `custom.metrics.k8s.io` (v1beta1 and v1beta2), discovery, OpenAPI, health and
//! self-metrics.

pub mod discovery;
pub mod error;
pub mod openapi;
pub mod paths;
pub mod types;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::Metrics;
use crate::provider::{MetricRequest, Provider};
use crate::selector::Selector;
use discovery::Format;
pub use error::ApiError;
use openapi::{Document, OpenApi};
use paths::{GROUP, Route};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Answers metric requests.
    pub provider: Arc<Provider>,
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// Set once the first series discovery has run (successfully or not), so discovery
    /// answers reflect Prometheus rather than an empty start.
    pub ready: Arc<AtomicBool>,
    /// The OpenAPI documents.
    pub openapi: Arc<OpenApi>,
}

/// The API routes; `guard` wraps everything except the health endpoints (authentication and
/// authorization go there).
pub fn router(state: AppState, guard: impl Fn(Router<AppState>) -> Router<AppState>) -> Router {
    let api = Router::new()
        .route("/apis", get(apis))
        .route(&format!("/apis/{GROUP}"), get(group))
        .route(&format!("/apis/{GROUP}/"), get(group))
        .route(&format!("/apis/{GROUP}/{{*rest}}"), get(custom_metrics))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3))
        .route("/openapi/v3/{*rest}", get(openapi_v3_version))
        .route("/version", get(version))
        .route("/metrics", get(self_metrics));
    let health = Router::new()
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/readyz", get(readyz));
    guard(api)
        .merge(health)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let verb = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .with_label_values(&[verb.as_str(), response.status().as_str()])
        .inc();
    state
        .metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /apis`, in the format the `Accept` header asks for (see [`discovery`]).
async fn apis(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (body, content_type) = match discovery::negotiate(accept) {
        Some(Format::Legacy) => (
            serde_json::to_value(types::api_group_list()),
            "application/json".to_owned(),
        ),
        Some(Format::Aggregated(version)) => {
            let snapshot = state.provider.registry.snapshot();
            (
                serde_json::to_value(discovery::group_discovery_list(version, &snapshot)),
                version.content_type(),
            )
        }
        None => {
            return Err(ApiError::NotAcceptable(format!(
                "only application/json is served here, as the legacy APIGroupList or as \
                 apidiscovery.k8s.io v2/v2beta1 APIGroupDiscoveryList; Accept was {:?}",
                accept.unwrap_or_default()
            )));
        }
    };
    let document = Document::new(&body.map_err(|e| ApiError::Internal(e.to_string()))?);
    let mut response = document_response(&document, &content_type, &headers);
    // Caches must key the answer on Accept, as kube-apiserver's discovery handler says.
    response
        .headers_mut()
        .insert(header::VARY, header::HeaderValue::from_static("Accept"));
    Ok(response)
}

async fn group() -> Json<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroup> {
    Json(types::api_group())
}

async fn custom_metrics(
    State(state): State<AppState>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let rest = uri
        .path()
        .strip_prefix(&format!("/apis/{GROUP}/"))
        .unwrap_or_default();
    match paths::parse(rest)? {
        Route::Discovery(version) => {
            let snapshot = state.provider.registry.snapshot();
            Ok(Json(types::resource_list(version, &snapshot)).into_response())
        }
        Route::Metric(version, path) => {
            if path.metric == types::PLACEHOLDER_METRIC {
                return Err(ApiError::NotFound(
                    "no metric has been discovered yet: check that Prometheus has series \
                     matching the rules' seriesQuery (the adapter logs each discovery)"
                        .into(),
                ));
            }
            let (label_selector, metric_selector) = selectors(query.as_deref())?;
            let request = MetricRequest {
                resource: path.resource,
                namespace: path.namespace,
                name: path.name,
                metric: path.metric,
                label_selector,
                metric_selector,
            };
            let values = state.provider.get(&request).await?;
            let body = types::metric_value_list(
                version,
                &request.metric,
                &request.metric_selector,
                values,
            );
            Ok(Json(body).into_response())
        }
    }
}

/// `labelSelector` and `metricLabelSelector`; other list options are accepted and ignored.
fn selectors(query: Option<&str>) -> Result<(Selector, Selector), ApiError> {
    let mut label_selector = Selector::default();
    let mut metric_selector = Selector::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let parse = |value: &str| {
            value
                .parse::<Selector>()
                .map_err(|e| ApiError::BadRequest(format!("{key}: {e}")))
        };
        match key.as_ref() {
            "labelSelector" => label_selector = parse(&value)?,
            "metricLabelSelector" => metric_selector = parse(&value)?,
            _ => {}
        }
    }
    Ok((label_selector, metric_selector))
}

/// A document with its ETag, or 304 when the client's `If-None-Match` names it.
fn document_response(doc: &Document, content_type: &str, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == doc.etag));
    let etag = [(header::ETAG, doc.etag.clone())];
    if fresh {
        return (StatusCode::NOT_MODIFIED, etag).into_response();
    }
    (
        etag,
        [(header::CONTENT_TYPE, content_type.to_owned())],
        doc.body.clone(),
    )
        .into_response()
}

async fn openapi_v2(State(state): State<AppState>, headers: HeaderMap) -> Response {
    document_response(&state.openapi.v2, "application/json", &headers)
}

async fn openapi_v3(State(state): State<AppState>, headers: HeaderMap) -> Response {
    document_response(&state.openapi.v3_index, "application/json", &headers)
}

async fn openapi_v3_version(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wanted = uri.path().trim_start_matches("/openapi/v3/");
    state
        .openapi
        .v3_versions
        .iter()
        .find(|(version, _)| wanted == format!("apis/{GROUP}/{}", version.as_str()))
        .map(|(_, doc)| document_response(doc, "application/json", &headers))
        .ok_or_else(|| {
            ApiError::NotFound("the server could not find the requested resource".into())
        })
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "major": "",
        "minor": "",
        "gitVersion": concat!("metrics-adapter-v", env!("CARGO_PKG_VERSION")),
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
}

async fn self_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn ok() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first series discovery has not finished",
        )
            .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("the server could not find the requested resource".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed(
        "the server does not allow this method on the requested resource (only GET is served)"
            .into(),
    )
}
