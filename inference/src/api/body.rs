//! Request bodies: the size limit, and refusing an oversized upload so that the client can
//! read the refusal.
//!
//! A server that answers 413 and closes while the client is still sending makes the kernel
//! reset the connection (unread input on close), and a client that writes its whole body
//! before reading anything (Python's `http.client`, so `urllib` and `requests`) then sees
//! `BrokenPipeError` instead of the answer. nginx avoids that with a lingering close: it keeps
//! reading and discarding for a while after answering. hyper has no lingering close, so here
//! an oversized body is read and dropped (bounded in time, never held in memory) before the
//! 413 goes out with `Connection: close`. A client that sent `Expect: 100-continue` has not
//! sent its body yet and gets the 413 at once.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use super::error::ApiError;
use crate::state::AppState;

/// Longest time spent reading and dropping the rest of a refused body (nginx's
/// `lingering_time` is 30 s; an image upload on any real link is done well within this).
const DISCARD_FOR: Duration = Duration::from_secs(10);
/// Longest quiet from the client while the rest of a refused body is dropped (nginx's
/// `lingering_timeout` is 5 s).
const DISCARD_QUIET: Duration = Duration::from_secs(2);

/// Middleware: buffers the request body up to `--max-body-bytes` for the handlers, or
/// answers 413 after dropping what the client still sends.
pub(super) async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.limits.max_body_bytes;
    let (parts, mut body) = request.into_parts();
    if declared_length(&parts.headers).is_some_and(|length| length > limit as u64) {
        if !expects_continue(&parts.headers) {
            discard(body).await;
        }
        return too_large(limit);
    }
    let mut buffered = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The client went away mid-body; nobody reads this answer.
            return ApiError::bad_request("the request body ended early").into_response();
        };
        if let Ok(data) = frame.into_data() {
            if buffered.len() + data.len() > limit {
                discard(body).await;
                return too_large(limit);
            }
            buffered.extend_from_slice(&data);
        }
    }
    let body = Body::from(Bytes::from(buffered));
    next.run(Request::from_parts(parts, body)).await
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and drops the rest of `body`, for at most [`DISCARD_FOR`].
async fn discard(mut body: Body) {
    let drain = async {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DISCARD_QUIET, body.frame()).await {}
    };
    let _ = tokio::time::timeout(DISCARD_FOR, drain).await;
}

/// 413, closing the connection (whatever is left of the body is not read).
fn too_large(limit: usize) -> Response {
    let mut response = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the {limit}-byte limit (--max-body-bytes)"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
