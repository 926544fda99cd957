//! Keep-alive HTTP/1.1 connections to one upstream, driven by the task that uses them.
//!
//! A request takes an idle connection (or opens one), and the task handling the client's
//! request polls the connection's I/O itself, first for the response head and then, through
//! [`Relayed`], while the response body streams to the client. When the body has been read to
//! its end the connection goes back to the idle stack; if the client goes away earlier it is
//! closed, since the rest of that response is still on the wire.
//!
//! Why not hyper-util's pooled client: it runs every connection on a task of its own, so each
//! proxied request hops between tasks (and often between worker threads) three times, and it
//! looks connections up by authority under one lock and spawns a task per request to return
//! them. On the proxy path that bookkeeping, not the network, was the dispatcher's cost per
//! request (docs/PERFORMANCE.md). Here the upstream owns its connections: nothing to look up,
//! no extra tasks, and they close when the upstream leaves the set.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Most idle connections kept per upstream; a connection finished beyond that is closed.
const MAX_IDLE: usize = 512;

/// The idle connections to one upstream.
#[derive(Default)]
pub struct Connections {
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("idle", &self.idle())
            .finish()
    }
}

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The TCP connection could not be opened.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TCP connection did not open within the connect timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The upstream closed the connection without answering (after one retry on a new
    /// connection when the request had not been written yet).
    #[error("the upstream closed the connection without answering")]
    Closed,
    /// The HTTP exchange failed (connection reset, closed early, malformed response…).
    #[error("{}", describe(.0))]
    Http(#[source] hyper::Error),
}

/// hyper's errors name their cause only in `source()`; fold it into the message clients see.
fn describe(error: &hyper::Error) -> String {
    std::error::Error::source(error).map_or_else(|| error.to_string(), |s| format!("{error}: {s}"))
}

type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One HTTP/1.1 connection: the handle requests are sent through, and the future that does
/// its I/O, which whoever holds the connection polls.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Driver>>,
    ended: bool,
}

impl Connection {
    /// Opens a connection to `address`.
    async fn open(address: &str, timeout: Duration) -> Result<Self, SendError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| SendError::ConnectTimeout(timeout))?
            .map_err(SendError::Connect)?;
        // Requests and answers are single small writes; do not hold them back (Nagle).
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        // Flattened writes, as on the server side (server.rs): cheaper for small messages.
        let (sender, driver) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        Ok(Self {
            sender,
            driver: Box::pin(driver),
            ended: false,
        })
    }

    /// Does whatever I/O is ready (writing the request, reading the response) and registers
    /// `cx` for more.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if self.ended {
            return;
        }
        if let Poll::Ready(result) = self.driver.as_mut().poll(cx) {
            self.ended = true;
            if let Err(error) = result {
                tracing::debug!(%error, "upstream connection ended");
            }
        }
    }

    /// Waits until a request can be sent; false when the connection has closed instead.
    /// (A request handed to a connection whose I/O has ended would wait forever.)
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            self.drive(cx);
            if self.ended {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|result| result.is_ok())
        })
        .await
    }
}

impl Connections {
    /// Sends `request` to `address` on an idle connection, or a new one when none is usable,
    /// and returns the response with a body that keeps the connection going until it is read.
    /// A request an idle connection turned down before writing it (the upstream had just
    /// closed it) is sent again on a new connection, as hyper-util's client does.
    pub async fn send(
        self: &Arc<Self>,
        address: &str,
        connect_timeout: Duration,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Relayed>, SendError> {
        let (mut connection, reused) = match self.take_ready().await {
            Some(connection) => (connection, true),
            None => (Connection::open(address, connect_timeout).await?, false),
        };
        let response = match exchange(&mut connection, request).await {
            Err(Failure::Unsent(request)) if reused => {
                connection = Connection::open(address, connect_timeout).await?;
                exchange(&mut connection, *request).await
            }
            other => other,
        }
        .map_err(|failure| match failure {
            Failure::Unsent(_) | Failure::Dropped => SendError::Closed,
            Failure::Failed(error) => SendError::Http(error),
        })?;
        let home = Arc::clone(self);
        Ok(response.map(|body| Relayed {
            body,
            lease: Some((connection, home)),
        }))
    }

    /// Idle connections (for tests and debugging).
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// The most recently used idle connection that is still open.
    async fn take_ready(&self) -> Option<Connection> {
        loop {
            let mut connection = self.lock().pop()?;
            if connection.ready().await {
                return Some(connection);
            }
        }
    }

    /// Back on the idle stack, unless it has closed.
    fn put_back(&self, connection: Connection) {
        if connection.ended {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Connection>> {
        // The vector stays valid whatever panicked while it was held.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How one exchange failed.
enum Failure {
    /// The connection closed before the request was written; here it is, to send elsewhere.
    Unsent(Box<Request<Full<Bytes>>>),
    /// Sent (perhaps partly) and then failed.
    Failed(hyper::Error),
    /// The connection ended without a word about the request.
    Dropped,
}

/// Sends on `connection`, driving its I/O until the response head has arrived.
async fn exchange(
    connection: &mut Connection,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, Failure> {
    if !connection.ready().await {
        return Err(Failure::Unsent(Box::new(request)));
    }
    let mut pending = std::pin::pin!(connection.sender.try_send_request(request));
    let outcome = poll_fn(|cx| {
        connection.drive(cx);
        match pending.as_mut().poll(cx) {
            // Nothing is left to answer it.
            Poll::Pending if connection.ended => Poll::Ready(None),
            polled => polled.map(Some),
        }
    })
    .await;
    match outcome {
        Some(Ok(response)) => Ok(response),
        Some(Err(mut error)) => Err(match error.take_message() {
            Some(request) => Failure::Unsent(Box::new(request)),
            None => Failure::Failed(error.into_error()),
        }),
        None => Err(Failure::Dropped),
    }
}

/// A response body from an upstream that also drives the upstream connection while it is
/// read, and returns the connection to its upstream's idle stack once read to the end.
pub struct Relayed {
    body: Incoming,
    lease: Option<(Connection, Arc<Connections>)>,
}

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayed").field("body", &self.body).finish()
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some((connection, _)) = &mut this.lease {
            connection.drive(cx);
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        // A body not read to its end leaves bytes on the connection: close it instead.
        if let Some((connection, home)) = self.lease.take()
            && self.body.is_end_stream()
        {
            home.put_back(connection);
        }
    }
}
