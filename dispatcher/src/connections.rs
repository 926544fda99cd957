//! Keep-alive HTTP/1.1 connections to one upstream: a stack of idle connections that a request
//! takes one from (or opens a new one), sends on, and puts back as soon as the response head
//! has arrived; hyper marks it ready again once the response body has been read.
//!
//! We keep these per upstream instead of using hyper-util's pooled client because the proxy's
//! request path is the dispatcher's whole cost: that client looks connections up by authority
//! under one lock, wraps each in pool bookkeeping and spawns a task per request to return it,
//! which profiling showed as a visible share of the CPU per request. Here the upstream owns
//! its connections, so there is nothing to look up, and they close when the upstream is
//! dropped from the set.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Most idle connections kept per upstream; a connection finished beyond that is closed.
const MAX_IDLE: usize = 512;

type Sender = SendRequest<Full<Bytes>>;

/// The idle connections to one upstream.
#[derive(Default)]
pub struct Connections {
    idle: Mutex<Vec<Sender>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("idle", &self.lock().len())
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
    /// The HTTP exchange failed (connection reset, closed early, malformed response…).
    #[error("{}", describe(.0))]
    Http(#[source] hyper::Error),
}

/// hyper's errors name their cause only in `source()`; fold it into the message clients see.
fn describe(error: &hyper::Error) -> String {
    std::error::Error::source(error).map_or_else(|| error.to_string(), |s| format!("{error}: {s}"))
}

impl Connections {
    /// Sends `request` to `address` on an idle connection, or a new one when none is ready.
    /// A request that an idle connection turned down before writing it (the upstream had just
    /// closed it) is sent again on a new connection, as hyper-util's client does.
    pub async fn send(
        &self,
        address: &str,
        connect_timeout: Duration,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, SendError> {
        let (mut sender, request) = match self.take_ready() {
            Some(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => {
                    self.put_back(sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) => (connect(address, connect_timeout).await?, unsent),
                    None => return Err(SendError::Http(error.into_error())),
                },
            },
            None => (connect(address, connect_timeout).await?, request),
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Http)?;
        self.put_back(sender);
        Ok(response)
    }

    /// Idle connections (for tests and debugging).
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// An idle connection ready for a request; ones the upstream closed are dropped on the way.
    fn take_ready(&self) -> Option<Sender> {
        let mut idle = self.lock();
        idle.retain(|sender| !sender.is_closed());
        let ready = idle.iter().rposition(Sender::is_ready)?;
        Some(idle.swap_remove(ready))
    }

    /// Returns the connection to the idle stack; hyper marks it ready once the response body
    /// has been read.
    fn put_back(&self, sender: Sender) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Sender>> {
        // The vector stays valid whatever panicked while it was held.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens a connection and drives it on its own task until either side closes it.
async fn connect(address: &str, timeout: Duration) -> Result<Sender, SendError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| SendError::ConnectTimeout(timeout))?
        .map_err(SendError::Connect)?;
    // Requests and answers are single small writes; do not hold them back (Nagle).
    stream.set_nodelay(true).map_err(SendError::Connect)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Http)?;
    let address = address.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(upstream = %address, %error, "upstream connection ended");
        }
    });
    Ok(sender)
}
