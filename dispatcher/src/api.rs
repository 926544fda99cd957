//! HTTP surface: the proxied inference API (`/v1/*`, `/v2/*`), probes and metrics, served
//! over HTTP/1.1 connections read and written here ([`crate::wire`] parses the heads).
//!
//! Proxied requests go straight from the connection to the forwarding code, and the upstream's
//! answer straight back: its head lines are copied, its body streamed. Everything else
//! (probes, metrics, unknown paths) goes through an ordinary axum router, whose answers are
//! small and written in one piece.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::admission::Admission;
use crate::balancer::Balancer;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::proxy::{Forwarded, Outgoing, Proxy};
use crate::wire::{self, Chunked, Framing, RequestHead, WireError, push_header, push_length};

/// Bytes read from a client at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Longest time the rest of a refused request is read and dropped before closing (nginx's
/// `lingering_time` is 30 s; an image upload on any real link is done well within this).
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest quiet from the client during that linger (nginx's `lingering_timeout`: 5 s).
const LINGER_QUIET: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// Longest silence from a client in the middle of a request.
    pub client_timeout: std::time::Duration,
}

/// What every client connection runs; cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    state: AppState,
    routes: Router,
}

/// A client connection and the bytes read from it that no request has used yet (the start
/// of a pipelined next request, say).
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    /// Longest wait for more bytes in the middle of a request.
    stall: std::time::Duration,
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{}", ProxyError::TooLarge(*.0))]
    TooLarge(usize),
    #[error("the client sent nothing for {0:?} in the middle of a request")]
    Stalled(std::time::Duration),
    #[error("the client went away mid-request: {0}")]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// The answer to a request that could not be read, if the client is still there to get it.
    fn refusal(self) -> Option<Response> {
        let status = match &self {
            Self::Io(_) => return None,
            Self::TooLarge(limit) => return Some(ProxyError::TooLarge(*limit).into_response()),
            Self::Wire(WireError::HeadTooLarge) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Wire(_) => StatusCode::BAD_REQUEST,
            Self::Stalled(_) => StatusCode::REQUEST_TIMEOUT,
        };
        let body = axum::Json(serde_json::json!({ "error": self.to_string() }));
        Some((status, body).into_response())
    }
}

impl Client {
    /// Reads more bytes; `false` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        self.buf.reserve(READ_CHUNK);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// The next request head; `None` when the client closed the connection, or when the
    /// dispatcher drains while the connection is idle between requests.
    async fn next_head(
        &mut self,
        draining: &mut watch::Receiver<bool>,
    ) -> Result<Option<RequestHead>, ReadError> {
        loop {
            if let Some(head) = wire::parse_request(&self.buf)? {
                self.buf.advance(head.len);
                return Ok(Some(head));
            }
            let more = if self.buf.is_empty() {
                if *draining.borrow() {
                    return Ok(None);
                }
                tokio::select! {
                    more = self.fill() => more.map_err(ReadError::from),
                    // The only change is to `true` (or the sender going away): drain either way.
                    _ = draining.changed() => return Ok(None),
                }
            } else {
                // Part of a head: the client owes the rest.
                self.fill_within_stall().await
            };
            if !more? {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes in the middle of a request; `false` at the end of the stream.
    async fn fill_within_stall(&mut self) -> Result<bool, ReadError> {
        let stall = self.stall;
        match tokio::time::timeout(stall, self.fill()).await {
            Ok(read) => Ok(read?),
            Err(_) => Err(ReadError::Stalled(stall)),
        }
    }

    /// The whole body of `head`'s request, at most `limit` bytes.
    async fn body(&mut self, head: &RequestHead, limit: usize) -> Result<Bytes, ReadError> {
        let declared = match head.framing {
            Framing::Empty | Framing::UntilClose => return Ok(Bytes::new()),
            Framing::Length(length) => Some(
                usize::try_from(length)
                    .ok()
                    .filter(|&n| n <= limit)
                    .ok_or(ReadError::TooLarge(limit))?,
            ),
            Framing::Chunked => None,
        };
        // Checked against the limit first: refused, a waiting client never sends its body.
        if head.expect_continue && self.buf.is_empty() {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let Some(length) = declared else {
            return self.chunked_body(limit).await;
        };
        while self.buf.len() < length {
            self.fill_or_eof().await?;
        }
        Ok(self.buf.split_to(length).freeze())
    }

    async fn chunked_body(&mut self, limit: usize) -> Result<Bytes, ReadError> {
        let mut chunks = Chunked::default();
        let mut body = Vec::new();
        loop {
            let used = chunks.feed(&self.buf, |data| body.extend_from_slice(data))?;
            self.buf.advance(used);
            if body.len() > limit {
                return Err(ReadError::TooLarge(limit));
            }
            if chunks.is_done() {
                return Ok(body.into());
            }
            self.fill_or_eof().await?;
        }
    }

    /// Reads more bytes in the middle of a request; the end of the stream is an error.
    async fn fill_or_eof(&mut self) -> Result<(), ReadError> {
        if self.fill_within_stall().await? {
            Ok(())
        } else {
            Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
        }
    }

    /// Answers with an error and closes the connection. What the client still sends (the
    /// rest of a refused body) is read and dropped first, for at most [`LINGER`], however
    /// large it is (nginx's lingering close): closing a socket with unread input resets it,
    /// and a client that writes its whole body before reading (Python's `http.client`, so
    /// `urllib` and `requests`) then gets a broken pipe instead of the answer.
    async fn refuse(&mut self, response: Response, request_id: Option<&str>) {
        if write_local(&mut self.stream, response, request_id, false, false)
            .await
            .is_err()
        {
            return;
        }
        let _ = self.stream.shutdown().await;
        let linger = async {
            loop {
                self.buf.clear();
                match tokio::time::timeout(LINGER_QUIET, self.fill()).await {
                    Ok(Ok(true)) => {}
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, linger).await;
    }
}

impl Service {
    /// The service over `state`.
    pub fn new(state: AppState) -> Self {
        Self {
            routes: routes(state.clone()),
            state,
        }
    }

    /// Serves one client connection: reads a request, answers it, and goes on while the
    /// client keeps the connection open (HTTP/1.1 keep-alive and pipelining). When `draining`
    /// turns true, an idle connection closes at once and a busy one after its answer.
    pub async fn serve(&self, stream: TcpStream, mut draining: watch::Receiver<bool>) {
        // Answers are single small writes; do not hold them back (Nagle).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let mut client = Client {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            stall: self.state.client_timeout,
        };
        let refusal = loop {
            let head = match client.next_head(&mut draining).await {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(error) => match error.refusal() {
                    Some(refusal) => break (refusal, None),
                    None => return,
                },
            };
            match self.answer(&mut client, head, &draining).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(refusal) => break refusal,
            }
        };
        client.refuse(refusal.0, refusal.1.as_deref()).await;
    }

    /// Answers one request; `false` when the connection must close afterwards, and a
    /// refusal (with the request's id) when the request cannot be read to its end.
    async fn answer(
        &self,
        client: &mut Client,
        head: RequestHead,
        draining: &watch::Receiver<bool>,
    ) -> Result<bool, (Response, Option<String>)> {
        // Every request carries an `X-Request-Id` (the client's, or a new one) to the upstream
        // and back to the client.
        let (request_id, generated) = match &head.request_id {
            Some(id) => (id.clone(), false),
            None => (uuid::Uuid::new_v4().hyphenated().to_string(), true),
        };
        let path = head.target.split('?').next().unwrap_or_default();
        let proxied = path.starts_with("/v1/") || path == "/v2" || path.starts_with("/v2/");
        let started = Instant::now();
        let body = match client.body(&head, self.state.max_body_bytes).await {
            Ok(body) => body,
            Err(error) => {
                // The rest of the request may still be on the wire: answer, then close.
                let Some(refusal) = error.refusal() else {
                    tracing::debug!("client connection ended mid-request");
                    return Ok(false);
                };
                if proxied {
                    self.count(refusal.status(), started);
                }
                return Err((refusal, Some(request_id)));
            }
        };
        let keep_alive = head.keep_alive && !*draining.borrow();
        if !proxied {
            // HEAD is answered as GET without the body, so the length is the GET's.
            let to_head = head.method == http::Method::HEAD;
            let method = if to_head {
                http::Method::GET
            } else {
                head.method.clone()
            };
            let request = http::Request::builder()
                .method(method)
                .uri(head.target.as_str())
                .body(Body::from(body));
            let response = match request {
                Ok(request) => self
                    .routes
                    .clone()
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {}),
                Err(error) => ProxyError::BadRequest(error.to_string()).into_response(),
            };
            let written = write_local(
                &mut client.stream,
                response,
                Some(&request_id),
                keep_alive,
                to_head,
            );
            return Ok(written.await.is_ok() && keep_alive);
        }
        let mut headers = head.forwarded;
        if generated {
            push_header(&mut headers, b"x-request-id", request_id.as_bytes());
        }
        let outgoing = Outgoing {
            method: head.method,
            target: head.target,
            headers,
            body,
            attempt: head.attempt,
        };
        let forwarded = self.forward(
            client,
            &outgoing,
            &request_id,
            head.http11,
            keep_alive,
            started,
        );
        Ok(forwarded.await)
    }

    /// The proxied path: admission, forwarding, relaying the answer, and the request's
    /// metrics; `false` when the connection must close afterwards.
    async fn forward(
        &self,
        client: &mut Client,
        request: &Outgoing,
        request_id: &str,
        http11: bool,
        mut keep_alive: bool,
        started: Instant,
    ) -> bool {
        struct InFlight<'a>(&'a prometheus::IntGauge);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let metrics = &self.state.metrics;
        metrics.in_flight.inc();
        let _in_flight = InFlight(&metrics.in_flight);
        let forwarded = async {
            let _slot = self.state.admission.admit().await?;
            self.state.proxy.forward(request).await
        }
        .await;
        let Forwarded { answer, upstream } = match forwarded {
            Ok(forwarded) => forwarded,
            Err(error) => {
                if let ProxyError::Overloaded(reason) = &error {
                    metrics.rejected.with_label_values(&[reason]).inc();
                } else if matches!(error, ProxyError::NoUpstream) {
                    metrics.rejected.with_label_values(&["no_upstream"]).inc();
                }
                self.count(error.status(), started);
                return write_local(
                    &mut client.stream,
                    error.into_response(),
                    Some(request_id),
                    keep_alive,
                    false,
                )
                .await
                .is_ok()
                    && keep_alive;
            }
        };
        let head = answer.head();
        let status = head.status;
        let mut out = Vec::with_capacity(256 + head.forwarded.len());
        status_line(&mut out, status);
        out.extend_from_slice(&head.forwarded);
        if let Some(name) = &upstream.header {
            push_header(&mut out, b"x-upstream", name.as_bytes());
        }
        if !head.has_request_id {
            push_header(&mut out, b"x-request-id", request_id.as_bytes());
        }
        let mut unchunk = false;
        match head.framing {
            Framing::Length(_) | Framing::Empty => {
                if let Some(length) = head.declared_length.filter(|_| has_length(status)) {
                    push_length(&mut out, length);
                }
            }
            Framing::Chunked if http11 => push_header(&mut out, b"transfer-encoding", b"chunked"),
            // HTTP/1.0 knows no chunks: the end of the connection ends the body.
            Framing::Chunked => (unchunk, keep_alive) = (true, false),
            Framing::UntilClose => keep_alive = false,
        }
        if !keep_alive {
            push_header(&mut out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        let relayed = answer.relay(&mut client.stream, out, unchunk).await;
        self.count(status, started);
        match relayed {
            Ok(()) => keep_alive,
            Err(error) => {
                tracing::debug!(%error, "response relay ended early");
                false
            }
        }
    }

    /// Counts one proxied request and its latency.
    fn count(&self, status: StatusCode, started: Instant) {
        let metrics = &self.state.metrics;
        metrics.count_request(status);
        metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
    }
}

/// `HTTP/1.1 200 OK\r\n`.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Whether a response with `status` may carry Content-Length (RFC 9110 §8.6).
fn has_length(status: StatusCode) -> bool {
    !status.is_informational() && status != StatusCode::NO_CONTENT
}

/// Writes a response made here (probes, metrics, errors) in one piece.
async fn write_local(
    stream: &mut TcpStream,
    response: Response,
    request_id: Option<&str>,
    keep_alive: bool,
    to_head: bool,
) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "could not render a response body");
            Bytes::new()
        });
    let mut out = Vec::with_capacity(256 + body.len());
    status_line(&mut out, parts.status);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH
            && name != header::CONNECTION
            && name != header::TRANSFER_ENCODING
        {
            push_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    push_header(
        &mut out,
        b"date",
        httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
    );
    if let Some(id) = request_id {
        push_header(&mut out, b"x-request-id", id.as_bytes());
    }
    push_length(&mut out, body.len() as u64);
    if !keep_alive {
        push_header(&mut out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !to_head {
        out.extend_from_slice(&body);
    }
    stream.write_all(&out).await
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

async fn ready(State(state): State<AppState>) -> Response {
    if state.balancer.snapshot().is_empty() {
        return ProxyError::NoUpstream.into_response();
    }
    "ready".into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let available = state.proxy.retry_budget_available();
    state
        .metrics
        .retry_budget_available
        .set(i64::try_from(available).unwrap_or(i64::MAX));
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
