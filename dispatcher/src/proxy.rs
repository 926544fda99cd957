//! Forwarding one request: pick an upstream, send over a pooled keep-alive connection, retry
//! once elsewhere when the first upstream could not take it, and stream the response back.
//!
//! Request bodies are buffered (bounded by `--max-body-bytes`) because a retry must resend
//! them; images are small. Response bodies are streamed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::retry::budget::{Budget, TpsBudget};

use crate::balancer::{Balancer, InFlight, Outcome, Upstream};
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Names the upstream that answered, for debugging balance and failures.
pub const X_UPSTREAM: HeaderName = HeaderName::from_static("x-upstream");

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Shared forwarding machinery.
#[derive(Debug)]
pub struct Proxy {
    client: Client<HttpConnector, Full<Bytes>>,
    balancer: Arc<Balancer>,
    metrics: Arc<Metrics>,
    budget: TpsBudget,
    timeout: Duration,
}

/// How one attempt ended.
enum Attempt {
    /// A response to hand to the client.
    Answered(Response<hyper::body::Incoming>),
    /// Worth trying another upstream (connection refused/reset, or 503 back-pressure).
    Retryable(Retry),
}

enum Retry {
    Overloaded(Response<hyper::body::Incoming>),
    Failed(String),
}

impl Proxy {
    /// Builds the pooled client; `retry_percent` caps retries as a share of requests.
    pub fn new(
        balancer: Arc<Balancer>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        connect_timeout: Duration,
        retry_percent: f32,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self {
            client,
            balancer,
            metrics,
            // 10 s window; at least 10 retries per second even at low traffic.
            budget: TpsBudget::new(
                Duration::from_secs(10),
                10,
                (retry_percent / 100.0).clamp(0.0, 1000.0),
            ),
            timeout,
        }
    }

    /// Forwards a buffered request, retrying once on another upstream when allowed.
    pub async fn forward(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Body>, ProxyError> {
        self.budget.deposit();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let first = self.balancer.pick(None).ok_or(ProxyError::NoUpstream)?;
        let first_upstream = first.upstream().clone();
        let retry = match self.attempt(&parts, body.clone(), first, deadline).await? {
            Attempt::Answered(response) => return Ok(finish(response, &first_upstream)),
            Attempt::Retryable(retry) => retry,
        };
        let first_address = first_upstream.address.as_str();
        let another = self
            .balancer
            .pick(Some(first_address))
            .filter(|r| r.upstream().address != first_address);
        let (Some(second), true) = (another, self.budget.withdraw()) else {
            return match retry {
                Retry::Overloaded(response) => Ok(finish(response, &first_upstream)),
                Retry::Failed(reason) => Err(ProxyError::Upstream {
                    upstream: first_upstream.address.clone(),
                    reason,
                }),
            };
        };
        self.metrics.retries.inc();
        let second_upstream = second.upstream().clone();
        tracing::debug!(from = %first_address, to = %second_upstream.address, "retrying on another upstream");
        match self.attempt(&parts, body, second, deadline).await? {
            Attempt::Answered(response) | Attempt::Retryable(Retry::Overloaded(response)) => {
                Ok(finish(response, &second_upstream))
            }
            Attempt::Retryable(Retry::Failed(reason)) => Err(ProxyError::Upstream {
                upstream: second_upstream.address.clone(),
                reason,
            }),
        }
    }

    async fn attempt(
        &self,
        parts: &http::request::Parts,
        body: Bytes,
        in_flight: InFlight,
        deadline: tokio::time::Instant,
    ) -> Result<Attempt, ProxyError> {
        let upstream = in_flight.upstream().clone();
        let address = upstream.address.as_str();
        let request = upstream_request(parts, &upstream, body)?;
        let sent = tokio::time::timeout_at(deadline, self.client.request(request)).await;
        let result = match sent {
            Err(_) => {
                self.balancer.record(&in_flight, Outcome::Failure);
                self.count(address, "timeout");
                return Err(ProxyError::Timeout(address.to_owned()));
            }
            Ok(Err(error)) => {
                self.balancer.record(&in_flight, Outcome::Failure);
                self.count(address, "error");
                let reason = std::error::Error::source(&error)
                    .map_or_else(|| error.to_string(), |s| format!("{error}: {s}"));
                Attempt::Retryable(Retry::Failed(reason))
            }
            Ok(Ok(response)) => {
                let status = response.status();
                self.count(address, status.as_str());
                // 503 is the inference server's back-pressure (queue full): try another pod,
                // but do not count it towards ejection, or an overloaded fleet would eject
                // itself. Other 5xx mean the pod is broken.
                let outcome =
                    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                self.balancer.record(&in_flight, outcome);
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    Attempt::Retryable(Retry::Overloaded(response))
                } else {
                    Attempt::Answered(response)
                }
            }
        };
        Ok(result)
    }

    fn count(&self, upstream: &str, code: &str) {
        self.metrics
            .upstream_requests
            .with_label_values(&[upstream, code])
            .inc();
    }
}

/// The request as sent to `upstream`: same method, path, query and end-to-end headers. The
/// URI is assembled from parts parsed once per upstream, not formatted and re-parsed.
fn upstream_request(
    parts: &http::request::Parts,
    upstream: &Upstream,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    let authority = upstream.authority.clone().ok_or_else(|| {
        ProxyError::BadRequest(format!(
            "cannot forward to {}: not a host:port",
            upstream.address
        ))
    })?;
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(uri).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    *headers = end_to_end(&parts.headers);
    headers.remove(header::HOST); // hyper sets it from the upstream URI
    Ok(request)
}

/// Copy of `headers` without hop-by-hop headers, including those `Connection` names.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = headers.clone();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        out.remove(name);
    }
    out
}

fn finish(response: Response<hyper::body::Incoming>, upstream: &Upstream) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    parts.headers = end_to_end(&parts.headers);
    if let Some(value) = &upstream.header {
        parts.headers.insert(X_UPSTREAM, value.clone());
    }
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_are_stripped_including_connection_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("image/jpeg"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        let out = end_to_end(&h);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key("content-type") && out.contains_key("x-request-id"));
    }
}
