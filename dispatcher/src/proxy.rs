//! Forwarding one request: pick an upstream, send over one of its keep-alive connections, retry
//! once elsewhere when the first upstream could not take it, and hand the answer back for the
//! body to be streamed to the client.
//!
//! Retries are bounded twice, so that an overloaded pool is not handed more work than its
//! clients send: by the retry budget ([`RetryBudget`], a fraction of recent requests; a request
//! that reached no upstream, its connection refused or timed out, did no work anywhere and is
//! retried without spending it), and, for a 503 (the inference server's "queue full"), by sending it only to an upstream that is
//! not refusing work itself; when every other upstream refused recently, the 503 goes back to
//! the client with its `Retry-After`.
//!
//! Request bodies are buffered (bounded by `--max-body-bytes`) because a retry must resend
//! them; images are small. Response bodies are streamed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::balancer::{Balancer, InFlight, Outcome, Upstream};
use crate::connections::{Answer, SendError};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::retry::RetryBudget;
use crate::wire::{ATTEMPT, push_header, push_length};

/// How long an upstream that answered 503 without `Retry-After` is taken to refuse work.
const DEFAULT_REFUSING: Duration = Duration::from_secs(1);

/// A client request as it goes to any upstream: everything but the `Host` line.
#[derive(Debug)]
pub struct Outgoing {
    /// The method.
    pub method: Method,
    /// Origin-form target (`/path?query`).
    pub target: String,
    /// End-to-end header lines (`name: value\r\n`), `X-Request-Id` included.
    pub headers: Vec<u8>,
    /// The whole body.
    pub body: Bytes,
    /// Which attempt the first one is (above 1 when the client is a proxy that retried).
    pub attempt: u32,
}

impl Outgoing {
    /// The request's bytes for the upstream whose `Host` value is `host`, as attempt
    /// `attempt`: one buffer, so a small request is one write.
    fn encode(&self, host: &[u8], attempt: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.headers.len() + self.body.len());
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        push_header(&mut out, b"host", host);
        out.extend_from_slice(&self.headers);
        if attempt > 1 {
            push_header(
                &mut out,
                ATTEMPT.as_bytes(),
                itoa::Buffer::new().format(attempt).as_bytes(),
            );
        }
        let expects_body = matches!(self.method, Method::POST | Method::PUT | Method::PATCH);
        if expects_body || !self.body.is_empty() {
            push_length(&mut out, self.body.len() as u64);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// An upstream's answer and who gave it.
#[derive(Debug)]
pub struct Forwarded {
    /// The response head, with the body still to relay.
    pub answer: Answer,
    /// The upstream that answered.
    pub upstream: Arc<Upstream>,
}

/// Shared forwarding machinery.
#[derive(Debug)]
pub struct Proxy {
    connect_timeout: Duration,
    balancer: Arc<Balancer>,
    metrics: Arc<Metrics>,
    budget: RetryBudget,
    timeout: Duration,
}

/// How one attempt ended.
enum Attempt {
    /// A response to hand to the client.
    Answered(Answer),
    /// Worth trying another upstream (connection refused/reset, or 503 back-pressure).
    Retryable(Retry),
}

enum Retry {
    Overloaded(Answer),
    /// The request may have reached the upstream (the connection failed after it was sent).
    Failed(String),
    /// The request never reached the upstream: the connection could not be opened.
    Unreached(String),
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
            budget: RetryBudget::new(f64::from(retry_percent), Duration::from_secs(10)),
            timeout,
        }
    }

    /// Retries the budget allows now.
    pub fn retry_budget_available(&self) -> u64 {
        self.budget.available()
    }

    /// Forwards a buffered request, retrying once on another upstream when allowed.
    pub async fn forward(&self, request: &Outgoing) -> Result<Forwarded, ProxyError> {
        self.budget.deposit();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let first = self.balancer.pick(None).ok_or(ProxyError::NoUpstream)?;
        let first_upstream = first.upstream().clone();
        let answered = |answer, upstream: &Arc<Upstream>| Forwarded {
            answer,
            upstream: upstream.clone(),
        };
        let retry = match self
            .attempt(request, first, request.attempt, deadline)
            .await?
        {
            Attempt::Answered(answer) => return Ok(answered(answer, &first_upstream)),
            Attempt::Retryable(retry) => retry,
        };
        let give_up = |retry| match retry {
            Retry::Overloaded(answer) => Ok(answered(answer, &first_upstream)),
            Retry::Failed(reason) | Retry::Unreached(reason) => Err(ProxyError::Upstream {
                upstream: first_upstream.address.clone(),
                reason,
            }),
        };
        let first_address = first_upstream.address.as_str();
        let another = match &retry {
            Retry::Overloaded(_) => self.balancer.pick_accepting(first_address),
            Retry::Failed(_) | Retry::Unreached(_) => self
                .balancer
                .pick(Some(first_address))
                .filter(|r| r.upstream().address != first_address),
        };
        let Some(second) = another else {
            self.deny("no_upstream");
            return give_up(retry);
        };
        // A request that reached no upstream did no work anywhere: its retry adds no load,
        // so it does not spend the budget (a pod that just died must not cost requests).
        let budgeted = !matches!(retry, Retry::Unreached(_));
        if budgeted && !self.budget.withdraw() {
            self.deny("budget");
            return give_up(retry);
        }
        self.metrics.retries.inc();
        let second_upstream = second.upstream().clone();
        tracing::debug!(from = %first_address, to = %second_upstream.address, "retrying on another upstream");
        let attempt = request.attempt.saturating_add(1);
        match self.attempt(request, second, attempt, deadline).await? {
            Attempt::Answered(answer) | Attempt::Retryable(Retry::Overloaded(answer)) => {
                Ok(answered(answer, &second_upstream))
            }
            Attempt::Retryable(Retry::Failed(reason) | Retry::Unreached(reason)) => {
                Err(ProxyError::Upstream {
                    upstream: second_upstream.address.clone(),
                    reason,
                })
            }
        }
    }

    fn deny(&self, reason: &str) {
        self.metrics
            .retries_denied
            .with_label_values(&[reason])
            .inc();
    }

    async fn attempt(
        &self,
        request: &Outgoing,
        in_flight: InFlight,
        attempt: u32,
        deadline: tokio::time::Instant,
    ) -> Result<Attempt, ProxyError> {
        let upstream = in_flight.upstream().clone();
        let address = upstream.address.as_str();
        let host = upstream.header.as_ref().ok_or_else(|| {
            ProxyError::BadRequest(format!("cannot forward to {address}: not a host:port"))
        })?;
        let bytes = request.encode(host.as_bytes(), attempt);
        let to_head = request.method == Method::HEAD;
        let sent = tokio::time::timeout_at(
            deadline,
            upstream
                .connections
                .send(address, self.connect_timeout, &bytes, to_head),
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
                let reason = error.to_string();
                Attempt::Retryable(match error {
                    SendError::Connect(_) | SendError::ConnectTimeout(_) => {
                        Retry::Unreached(reason)
                    }
                    _ => Retry::Failed(reason),
                })
            }
            Ok(Ok(answer)) => {
                let head = answer.head();
                let status = head.status;
                self.count(address, status.as_str());
                // 503 is the inference server's back-pressure (queue full): another pod may
                // take it, but it is not a failure (an overloaded fleet would eject itself).
                // Other 5xx mean the pod is broken.
                let outcome = if status == StatusCode::SERVICE_UNAVAILABLE {
                    Outcome::Rejected(head.retry_after.unwrap_or(DEFAULT_REFUSING))
                } else if status.is_server_error() {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                self.balancer.record(&in_flight, outcome);
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    Attempt::Retryable(Retry::Overloaded(answer))
                } else {
                    Attempt::Answered(answer)
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
