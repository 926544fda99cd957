//! Forwarding one request: pick an upstream, send over one of its keep-alive connections, retry
//! once elsewhere when the first upstream could not take it, and stream the response back.
//!
//! Request bodies are buffered (bounded by `--max-body-bytes`) because a retry must resend
//! them; images are small. Response bodies are streamed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tower::retry::budget::{Budget, TpsBudget};

use crate::balancer::{Balancer, InFlight, Outcome, Upstream};
use crate::connections::Relayed;
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
    connect_timeout: Duration,
    balancer: Arc<Balancer>,
    metrics: Arc<Metrics>,
    budget: TpsBudget,
    timeout: Duration,
}

/// How one attempt ended.
enum Attempt {
    /// A response to hand to the client.
    Answered(Response<Relayed>),
    /// Worth trying another upstream (connection refused/reset, or 503 back-pressure).
    Retryable(Retry),
}

enum Retry {
    Overloaded(Response<Relayed>),
    Failed(String),
}

impl Proxy {
    /// `retry_percent` caps retries as a share of requests.
    pub fn new(
        balancer: Arc<Balancer>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        connect_timeout: Duration,
        retry_percent: f32,
    ) -> Self {
        Self {
            connect_timeout,
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
    ) -> Result<Response<Relayed>, ProxyError> {
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
        let sent = tokio::time::timeout_at(
            deadline,
            upstream
                .connections
                .send(address, self.connect_timeout, request),
        )
        .await;
        let result = match sent {
            Err(_) => {
                self.balancer.record(&in_flight, Outcome::Failure);
                self.count(address, "timeout");
                return Err(ProxyError::Timeout(address.to_owned()));
            }
            Ok(Err(error)) => {
                self.balancer.record(&in_flight, Outcome::Failure);
                self.count(address, "error");
                Attempt::Retryable(Retry::Failed(error.to_string()))
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

/// The request as sent to `upstream`: same method, path, query and end-to-end headers, in
/// origin form (`/path?query`) with `Host` set to the upstream, from a header value built once
/// per upstream.
fn upstream_request(
    parts: &http::request::Parts,
    upstream: &Upstream,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    let host = upstream.header.clone().ok_or_else(|| {
        ProxyError::BadRequest(format!(
            "cannot forward to {}: not a host:port",
            upstream.address
        ))
    })?;
    let uri = match parts.uri.path_and_query() {
        // Already origin form, as clients send it: reuse it as is.
        Some(_) if parts.uri.authority().is_none() => parts.uri.clone(),
        Some(path) => Uri::from(path.clone()),
        None => Uri::from_static("/"),
    };
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.clone_from(&parts.headers);
    strip_hop_by_hop(headers);
    headers.insert(header::HOST, host);
    Ok(request)
}

/// Removes hop-by-hop headers, including those `Connection` names. Most requests carry none,
/// so one pass over the names decides whether there is anything to remove.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let is_hop_by_hop = |name: &HeaderName| HOP_BY_HOP.contains(&name.as_str());
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

fn finish(response: Response<Relayed>, upstream: &Upstream) -> Response<Relayed> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(value) = &upstream.header {
        parts.headers.insert(X_UPSTREAM, value.clone());
    }
    Response::from_parts(parts, body)
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
        let mut out = h.clone();
        strip_hop_by_hop(&mut out);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key("content-type") && out.contains_key("x-request-id"));
        // Only a header that `Connection` names, with no hop-by-hop header of its own: kept.
        let mut plain = HeaderMap::new();
        plain.insert("x-secret", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut plain);
        assert!(plain.contains_key("x-secret"));
    }
}
