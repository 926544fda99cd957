//! Sending one request and classifying how it ended.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::payload::Payload;

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// A complete response with this status.
    Status(u16),
    /// No complete response within the timeout.
    Timeout,
    /// No connection, or the connection broke.
    ConnectionError,
    /// Never sent: no free connection before its deadline (open loop only).
    Dropped,
}

impl Outcome {
    /// 2xx.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Status(s) if (200..300).contains(&s))
    }

    /// Key in the by-status table.
    pub fn label(self) -> String {
        match self {
            Self::Status(s) => s.to_string(),
            Self::Timeout => "timeout".into(),
            Self::ConnectionError => "connection error".into(),
            Self::Dropped => "dropped".into(),
        }
    }
}

/// Sends requests to one target. Each request runs on a [`Connection`] that the caller owns
/// for the duration of the request (a closed-loop worker keeps one; the open loop takes one
/// from [`Connections`]). Dedicated HTTP/1.1 connections avoid the lock a shared pool takes on
/// every checkout, which cost ~10 % of peak throughput.
#[derive(Clone, Debug)]
pub struct Client {
    address: String,
    /// Parsed once: parsing the URI and building the header map per request showed up at
    /// tens of thousands of requests per second.
    path: Uri,
    headers: HeaderMap,
    timeout: Duration,
    keepalive: bool,
}

/// One HTTP/1.1 connection, opened on first use and reopened after an error.
#[derive(Debug, Default)]
pub struct Connection {
    sender: Option<SendRequest<Full<Bytes>>>,
    /// The request timeout, re-armed for each request instead of registering a new timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A fixed set of connections; taking one waits while all are in use.
#[derive(Debug)]
pub struct Connections {
    idle: std::sync::Mutex<Vec<Connection>>,
    available: Semaphore,
}

impl Connections {
    /// `n` connections (opened lazily).
    pub fn new(n: usize) -> Self {
        Self {
            idle: std::sync::Mutex::new((0..n).map(|_| Connection::default()).collect()),
            available: Semaphore::new(n),
        }
    }

    /// Waits for a free connection.
    pub async fn take(&self) -> Connection {
        let permit = self
            .available
            .acquire()
            .await
            .expect("the semaphore is never closed");
        permit.forget();
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .expect("a permit guarantees an idle connection")
    }

    /// Returns a connection.
    pub fn give_back(&self, connection: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(connection);
        self.available.add_permits(1);
    }

    /// Waits until every connection is back (all requests finished).
    pub async fn drain(&self, n: usize) {
        let all = self
            .available
            .acquire_many(u32::try_from(n).unwrap_or(u32::MAX))
            .await
            .expect("the semaphore is never closed");
        drop(all);
    }
}

impl Client {
    /// A client for `target` (an `http://` URL with a host).
    pub fn new(
        target: &Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
        keepalive: bool,
    ) -> Self {
        let host = target.host().unwrap_or("localhost");
        let port = target.port_u16().unwrap_or(80);
        let authority = target
            .authority()
            .map_or_else(|| format!("{host}:{port}"), |a| a.to_string());
        let path = target
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        let mut fixed = HeaderMap::with_capacity(headers.len() + 3);
        fixed.insert(
            header::HOST,
            HeaderValue::from_str(&authority).unwrap_or(HeaderValue::from_static("localhost")),
        );
        for (name, value) in headers {
            fixed.insert(name, value);
        }
        if !keepalive {
            fixed.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Self {
            address: format!(
                "{}:{port}",
                host.trim_start_matches('[').trim_end_matches(']')
            ),
            path,
            headers: fixed,
            timeout,
            keepalive,
        }
    }

    /// POSTs `payload` on `connection` and reads the whole response.
    pub async fn send(&self, connection: &mut Connection, payload: Payload) -> Outcome {
        let mut request = Request::new(Full::new(payload.body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.path.clone();
        let headers = request.headers_mut();
        *headers = self.headers.clone();
        headers
            .entry(header::CONTENT_TYPE)
            .or_insert(HeaderValue::from_static(payload.content_type));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut timer = connection
            .timer
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().reset(deadline);
        let exchange = async {
            let sender = self.ready(connection).await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|_| Outcome::ConnectionError)?;
            let status = response.status().as_u16();
            response
                .into_body()
                .collect()
                .await
                .map_err(|_| Outcome::ConnectionError)?;
            Ok::<_, Outcome>(Outcome::Status(status))
        };
        let outcome = tokio::select! {
            biased;
            result = exchange => match result {
                Ok(outcome) | Err(outcome) => outcome,
            },
            () = timer.as_mut() => Outcome::Timeout,
        };
        connection.timer = Some(timer);
        if !matches!(outcome, Outcome::Status(_)) || !self.keepalive {
            connection.sender = None; // broken or closed: open a fresh one next time
        }
        outcome
    }

    /// The connection's sender, (re)connecting when needed.
    async fn ready<'c>(
        &self,
        connection: &'c mut Connection,
    ) -> Result<&'c mut SendRequest<Full<Bytes>>, Outcome> {
        let usable = match connection.sender.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            let stream = TcpStream::connect(&self.address)
                .await
                .map_err(|_| Outcome::ConnectionError)?;
            let _ = stream.set_nodelay(true);
            let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| Outcome::ConnectionError)?;
            tokio::spawn(async move {
                let _ = driver.await;
            });
            connection.sender = Some(sender);
        }
        connection.sender.as_mut().ok_or(Outcome::ConnectionError)
    }
}
