//! Keep-alive HTTP/1.1 connections to one upstream, used by the task that serves the client.
//!
//! A request takes an idle connection (or opens one), is written in one piece, and the
//! response head is read on the same task; [`Answer::relay`] then moves the body to the client
//! and puts the connection back on the idle stack once the body has been read to its end. If
//! the client goes away earlier the connection is closed, since the rest of that response is
//! still on the wire.
//!
//! Why not hyper-util's pooled client: it runs every connection on a task of its own, so each
//! proxied request hops between tasks (and often between worker threads) three times, and
//! hyper's client side turns every response head into a `HeaderMap` and every body into a
//! channel. Here the upstream owns its connections: nothing to look up, no extra tasks, and
//! the response head's lines are passed on as they arrived (docs/PERFORMANCE.md).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{self, Chunked, Framing, ResponseHead, WireError};

/// Most idle connections kept per upstream; a connection finished beyond that is closed.
const MAX_IDLE: usize = 512;
/// Bytes read from an upstream at a time.
const READ_CHUNK: usize = 16 * 1024;

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
    /// connection when an idle connection had been closed under us).
    #[error("the upstream closed the connection without answering")]
    Closed,
    /// The connection failed while the request was written or the answer read.
    #[error("connection failed: {0}")]
    Io(#[source] std::io::Error),
    /// The upstream's answer is not valid HTTP/1.1.
    #[error("invalid response: {0}")]
    Invalid(#[source] WireError),
}

/// Why relaying a response body stopped early. Either way the client connection cannot carry
/// another request: part of a response is missing.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading the body from the upstream failed or it closed early.
    #[error("upstream body failed: {0}")]
    Upstream(String),
    /// Writing to the client failed (it went away).
    #[error("client write failed: {0}")]
    Client(#[source] std::io::Error),
}

/// One HTTP/1.1 connection and the bytes read from it that no response has used yet.
struct Connection {
    stream: TcpStream,
    buf: BytesMut,
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
        Ok(Self {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        })
    }

    /// An idle connection is usable when nothing is waiting on it: not the end of the stream
    /// (the upstream closed it) and not stray bytes.
    fn still_idle(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Reads more bytes into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        self.buf.reserve(READ_CHUNK);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }
}

/// How one exchange failed.
enum Failure {
    /// Nothing came back before the connection ended: on an idle connection, the upstream
    /// had closed it (or was closing it) as the request went out.
    Unanswered,
    /// Anything else.
    Failed(SendError),
}

/// An upstream's response head, with the connection its body is still to be read from.
pub struct Answer {
    head: ResponseHead,
    connection: Connection,
    home: Arc<Connections>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").field("head", &self.head).finish()
    }
}

impl Connections {
    /// Sends `request` (a complete HTTP/1.1 request, head and body) to `address` on an idle
    /// connection, or a new one when none is usable, and returns the response head. A request
    /// an idle connection left unanswered (the upstream closed it as the request went out) is
    /// sent again on a new connection, as hyper-util's client and nginx do.
    pub async fn send(
        self: &Arc<Self>,
        address: &str,
        connect_timeout: Duration,
        request: &[u8],
        to_head: bool,
    ) -> Result<Answer, SendError> {
        if let Some(mut connection) = self.take_idle() {
            match exchange(&mut connection, request, to_head).await {
                Ok(head) => return Ok(self.answer(head, connection)),
                Err(Failure::Failed(error)) => return Err(error),
                Err(Failure::Unanswered) => {}
            }
        }
        let mut connection = Connection::open(address, connect_timeout).await?;
        match exchange(&mut connection, request, to_head).await {
            Ok(head) => Ok(self.answer(head, connection)),
            Err(Failure::Failed(error)) => Err(error),
            Err(Failure::Unanswered) => Err(SendError::Closed),
        }
    }

    /// Idle connections (for tests and debugging).
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn answer(self: &Arc<Self>, head: ResponseHead, connection: Connection) -> Answer {
        Answer {
            head,
            connection,
            home: Arc::clone(self),
        }
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.lock();
        while let Some(connection) = idle.pop() {
            if connection.still_idle() {
                return Some(connection);
            }
        }
        None
    }

    /// Back on the idle stack.
    fn put_back(&self, connection: Connection) {
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

/// Writes `request` and reads up to the end of the (final, non-1xx) response head.
async fn exchange(
    connection: &mut Connection,
    request: &[u8],
    to_head: bool,
) -> Result<ResponseHead, Failure> {
    if connection.stream.write_all(request).await.is_err() {
        return Err(Failure::Unanswered);
    }
    let mut received = false;
    loop {
        match wire::parse_response(&connection.buf, to_head) {
            Ok(Some(head)) => {
                connection.buf.advance(head.len);
                // Interim answers (100 Continue and the like) precede the real one.
                if !head.status.is_informational() {
                    return Ok(head);
                }
                continue;
            }
            Ok(None) => {}
            Err(error) => return Err(Failure::Failed(SendError::Invalid(error))),
        }
        match connection.fill().await {
            Ok(true) => received = true,
            Ok(false) | Err(_) if !received => return Err(Failure::Unanswered),
            Ok(false) => {
                return Err(Failure::Failed(SendError::Io(
                    std::io::ErrorKind::UnexpectedEof.into(),
                )));
            }
            Err(error) => return Err(Failure::Failed(SendError::Io(error))),
        }
    }
}

impl Answer {
    /// The response head as the upstream sent it.
    pub fn head(&self) -> &ResponseHead {
        &self.head
    }

    /// Writes `out` (the response head for the client) followed by the body to `client`:
    /// as received, or with chunked framing removed when `unchunk` (for HTTP/1.0 clients,
    /// whose connection then ends the body). Small answers go out in one write. The upstream
    /// connection goes back to the idle stack when the body was read to its end.
    pub async fn relay<W: AsyncWrite + Unpin>(
        mut self,
        client: &mut W,
        mut out: Vec<u8>,
        unchunk: bool,
    ) -> Result<(), RelayError> {
        let upstream = |e: std::io::Error| RelayError::Upstream(e.to_string());
        let connection = &mut self.connection;
        let mut chunks = Chunked::default();
        let mut left = match self.head.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        loop {
            let finished = match self.head.framing {
                Framing::Empty => true,
                Framing::Length(_) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(connection.buf.len());
                    out.extend_from_slice(&connection.buf[..take]);
                    connection.buf.advance(take);
                    left -= take as u64;
                    left == 0
                }
                Framing::Chunked => {
                    let buf = &connection.buf;
                    let used = chunks
                        .feed(buf, |data| {
                            if unchunk {
                                out.extend_from_slice(data);
                            }
                        })
                        .map_err(|e| RelayError::Upstream(e.to_string()))?;
                    if !unchunk {
                        out.extend_from_slice(&buf[..used]);
                    }
                    connection.buf.advance(used);
                    chunks.is_done()
                }
                Framing::UntilClose => {
                    out.extend_from_slice(&connection.buf);
                    connection.buf.clear();
                    false
                }
            };
            if !out.is_empty() {
                client.write_all(&out).await.map_err(RelayError::Client)?;
                out.clear();
            }
            if finished {
                break;
            }
            if !connection.fill().await.map_err(upstream)? {
                if self.head.framing == Framing::UntilClose {
                    return Ok(());
                }
                return Err(RelayError::Upstream(
                    "closed before the end of the body".into(),
                ));
            }
        }
        // Bytes beyond the response mean the upstream does not frame its answers as it says.
        if self.head.reusable && self.connection.buf.is_empty() {
            self.home.put_back(self.connection);
        }
        Ok(())
    }
}
