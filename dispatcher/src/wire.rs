//! HTTP/1.1 on the wire, as the proxy sees it: request and response heads (parsed by
//! `httparse`), how a body is framed, chunked decoding, and which headers stay on one hop.
//!
//! Why not hyper: a proxy only needs to read a head, copy most of its lines and move the body
//! along. hyper turns every head into a `HeaderMap`, every body into a channel, and its client
//! into a dispatch task with its own queue; on the proxy path that bookkeeping cost more CPU
//! per request than the network (docs/PERFORMANCE.md). Here a head is parsed in place and its
//! end-to-end lines are copied into the next hop's head as they are.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Longest request or response head accepted (request line or status line plus headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in one head. The parser's slots for them are left uninitialised (4 KiB
/// that would otherwise be zeroed for every head).
const MAX_HEADERS: usize = 128;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the framing
/// headers, which each hop writes for itself, `Host`, which the proxy sets per upstream,
/// `Expect`, which the dispatcher answers itself, and [`ATTEMPT`], which it sets per attempt.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "expect",
    ATTEMPT,
];

/// Which attempt at a client request this is (`2` for the first retry); absent on a first
/// attempt. Envoy's `x-envoy-attempt-count` has the same meaning. The inference server
/// counts a request as demand only on its first attempt, so retries do not inflate the
/// metric the HPA scales on.
pub const ATTEMPT: &str = "x-attempt-count";

/// A message that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not HTTP/1.x, or a broken line.
    #[error("malformed HTTP/1.1 message head: {0}")]
    Malformed(String),
    /// Over [`MAX_HEAD_BYTES`].
    #[error("the message head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// A Content-Length that is not one number.
    #[error("invalid Content-Length")]
    BadLength,
    /// Both Content-Length and Transfer-Encoding (the classic request-smuggling ambiguity).
    #[error("both Content-Length and Transfer-Encoding are set")]
    AmbiguousLength,
    /// A transfer coding other than `chunked` (alone).
    #[error("unsupported Transfer-Encoding (only chunked is supported)")]
    UnsupportedEncoding,
    /// A broken chunked body.
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    /// No `Host` in an HTTP/1.1 request, more than one, or one that is not `host[:port]`
    /// (RFC 9112 §3.2: the server MUST answer 400).
    #[error("{0}")]
    BadHost(&'static str),
}

impl From<httparse::Error> for WireError {
    fn from(error: httparse::Error) -> Self {
        match error {
            httparse::Error::TooManyHeaders => Self::HeadTooLarge,
            other => Self::Malformed(other.to_string()),
        }
    }
}

/// How a body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// What a head says about its message, besides the lines passed on.
#[derive(Debug)]
struct Fields {
    length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    request_id: Option<Range<usize>>,
    /// How many `Host` lines there were, and whether the last one read is a valid value.
    hosts: usize,
    host_valid: bool,
    /// [`ATTEMPT`], when it is a number.
    attempt: Option<u32>,
    /// `Retry-After` in seconds (the HTTP-date form is not read).
    retry_after: Option<u64>,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the head, including the blank line.
    pub len: usize,
    /// The method, e.g. `POST`.
    pub method: http::Method,
    /// Origin-form target (`/path?query`).
    pub target: String,
    /// `true` for HTTP/1.1, `false` for HTTP/1.0.
    pub http11: bool,
    /// How the body is delimited ([`Framing::UntilClose`] never occurs in requests).
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
    /// The client's `X-Request-Id`, if it sent one.
    pub request_id: Option<String>,
    /// Which attempt this is, when the client is itself a proxy that retried ([`ATTEMPT`]);
    /// 1 otherwise.
    pub attempt: u32,
    /// The end-to-end header lines (`name: value\r\n`), for the upstream.
    pub forwarded: Vec<u8>,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes of the head, including the blank line.
    pub len: usize,
    /// The status code.
    pub status: http::StatusCode,
    /// How the body is delimited.
    pub framing: Framing,
    /// Content-Length as declared (also on HEAD and 304 answers, which carry no body).
    pub declared_length: Option<u64>,
    /// The connection can carry another request after this response.
    pub reusable: bool,
    /// The upstream set `X-Request-Id` itself.
    pub has_request_id: bool,
    /// `Retry-After`, when given in seconds.
    pub retry_after: Option<std::time::Duration>,
    /// The end-to-end header lines (`name: value\r\n`), for the client.
    pub forwarded: Vec<u8>,
}

/// Parses a request head at the start of `buf`; `None` until it is complete.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, WireError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = request.parse_with_uninit_headers(buf, &mut headers)?;
    let Some(len) = complete(parsed, buf.len())? else {
        return Ok(None);
    };
    let method = request.method.unwrap_or_default();
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| WireError::Malformed(format!("invalid method {method:?}")))?;
    let target = origin_form(request.path.unwrap_or_default())?;
    let http11 = request.version == Some(1);
    let mut forwarded = Vec::with_capacity(len);
    let fields = copy_headers(request.headers, &mut forwarded)?;
    if fields.length.is_some() && fields.chunked {
        return Err(WireError::AmbiguousLength);
    }
    check_host(&fields, http11)?;
    let framing = match fields.length {
        _ if fields.chunked => Framing::Chunked,
        Some(0) | None => Framing::Empty,
        Some(n) => Framing::Length(n),
    };
    let request_id = fields
        .request_id
        .and_then(|r| std::str::from_utf8(&forwarded[r]).ok().map(str::to_owned));
    Ok(Some(RequestHead {
        len,
        method,
        target,
        http11,
        framing,
        keep_alive: if http11 {
            !fields.close
        } else {
            fields.keep_alive
        },
        expect_continue: fields.expect_continue,
        request_id,
        attempt: fields.attempt.unwrap_or(1).max(1),
        forwarded,
    }))
}

/// Parses a response head at the start of `buf` (the answer to a `HEAD` request when
/// `to_head`); `None` until it is complete.
pub fn parse_response(buf: &[u8], to_head: bool) -> Result<Option<ResponseHead>, WireError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    )?;
    let Some(len) = complete(parsed, buf.len())? else {
        return Ok(None);
    };
    let status = http::StatusCode::from_u16(response.code.unwrap_or_default())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let http11 = response.version == Some(1);
    let mut forwarded = Vec::with_capacity(len);
    let fields = copy_headers(response.headers, &mut forwarded)?;
    let bodiless = to_head
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    let framing = match fields.length {
        _ if bodiless => Framing::Empty,
        // Transfer-Encoding wins over Content-Length in a response (RFC 9112 §6.3).
        _ if fields.chunked => Framing::Chunked,
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    };
    let keeps_open = if http11 {
        !fields.close
    } else {
        fields.keep_alive
    };
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        declared_length: fields.length,
        reusable: keeps_open && framing != Framing::UntilClose,
        has_request_id: fields.request_id.is_some(),
        retry_after: fields.retry_after.map(std::time::Duration::from_secs),
        forwarded,
    }))
}

/// RFC 9112 §3.2: exactly one valid `Host` in HTTP/1.1 (at most one in HTTP/1.0, which
/// predates it). nginx answers the same cases with 400.
fn check_host(fields: &Fields, http11: bool) -> Result<(), WireError> {
    match fields.hosts {
        0 if http11 => Err(WireError::BadHost(
            "missing Host header (required in HTTP/1.1)",
        )),
        0 => Ok(()),
        1 if fields.host_valid => Ok(()),
        1 => Err(WireError::BadHost(
            "invalid Host header (expected host or host:port)",
        )),
        _ => Err(WireError::BadHost("more than one Host header")),
    }
}

/// `uri-host [":" port]` without user information, as a `Host` value must be.
fn valid_host(value: &[u8]) -> bool {
    !value.is_empty()
        && !value.contains(&b'@')
        && std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| a.host().len() == a.as_str().len() || a.port_u16().is_some())
}

fn complete(status: httparse::Status<usize>, buffered: usize) -> Result<Option<usize>, WireError> {
    match status {
        httparse::Status::Complete(len) if len > MAX_HEAD_BYTES => Err(WireError::HeadTooLarge),
        httparse::Status::Complete(len) => Ok(Some(len)),
        httparse::Status::Partial if buffered > MAX_HEAD_BYTES => Err(WireError::HeadTooLarge),
        httparse::Status::Partial => Ok(None),
    }
}

/// `/path?query` from an origin-form or absolute-form request target.
fn origin_form(target: &str) -> Result<String, WireError> {
    if target.starts_with('/') {
        return Ok(target.to_owned());
    }
    let uri: http::Uri = target
        .parse()
        .map_err(|_| WireError::Malformed(format!("invalid request target {target:?}")))?;
    match uri.path_and_query() {
        Some(path) if uri.authority().is_some() => Ok(path.as_str().to_owned()),
        _ => Err(WireError::Malformed(format!(
            "unsupported request target {target:?}"
        ))),
    }
}

/// Appends the end-to-end lines of `headers` to `out` and reads the ones that matter here.
fn copy_headers(headers: &[httparse::Header], out: &mut Vec<u8>) -> Result<Fields, WireError> {
    let mut fields = Fields {
        length: None,
        chunked: false,
        close: false,
        keep_alive: false,
        expect_continue: false,
        request_id: None,
        hosts: 0,
        host_valid: false,
        attempt: None,
        retry_after: None,
    };
    // Headers that `Connection` names are hop-by-hop too; most messages name none.
    let mut named: Vec<&[u8]> = Vec::new();
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in tokens(header.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    fields.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    fields.keep_alive = true;
                } else {
                    named.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let length = parse_length(header.value)?;
            if fields.length.is_some_and(|l| l != length) {
                return Err(WireError::BadLength);
            }
            fields.length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let mut codings = tokens(header.value);
            let only_chunked = codings
                .next()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
                && codings.next().is_none();
            if !only_chunked || fields.chunked {
                return Err(WireError::UnsupportedEncoding);
            }
            fields.chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            fields.expect_continue = header.value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("host") {
            fields.hosts += 1;
            fields.host_valid = valid_host(header.value);
        } else if name.eq_ignore_ascii_case(ATTEMPT) {
            fields.attempt = number(header.value);
        } else if name.eq_ignore_ascii_case("retry-after") {
            fields.retry_after = number(header.value);
        }
    }
    for header in headers {
        let name = header.name;
        if NOT_FORWARDED.iter().any(|n| name.eq_ignore_ascii_case(n))
            || named
                .iter()
                .any(|n| name.as_bytes().eq_ignore_ascii_case(n))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("x-request-id") {
            let start = out.len() + name.len() + 2;
            fields.request_id = Some(start..start + header.value.len());
        }
        push_header(out, name.as_bytes(), header.value);
    }
    Ok(fields)
}

/// Appends `name: value\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `content-length: {length}\r\n`.
pub fn push_length(out: &mut Vec<u8>, length: u64) {
    push_header(
        out,
        b"content-length",
        itoa::Buffer::new().format(length).as_bytes(),
    );
}

/// The comma-separated, trimmed, non-empty tokens of a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A header value that is a decimal number.
fn number<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

fn parse_length(value: &[u8]) -> Result<u64, WireError> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(WireError::BadLength);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(WireError::BadLength)
}

/// Where a chunked body decoder is (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk's size.
    #[default]
    Start,
    /// Reading the size's hex digits.
    Size {
        value: u64,
    },
    /// Skipping a chunk extension up to the end of the size line.
    Extension {
        value: u64,
    },
    SizeEnd {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// Reading trailer lines after the last chunk; `empty` while the line has no bytes yet.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Decodes a chunked body incrementally: fed whatever bytes arrived, it hands out the data and
/// says how much of the input belonged to the body, so bytes after it stay for the next message.
#[derive(Debug, Default)]
pub struct Chunked {
    state: Chunk,
}

impl Chunked {
    /// The last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Reads from `input` up to the end of the body, passing chunk data to `data`; returns how
    /// many bytes of `input` were part of the body.
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, WireError> {
        let mut at = 0;
        while at < input.len() && self.state != Chunk::Done {
            if let Chunk::Data { left } = self.state {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - at);
                data(&input[at..at + take]);
                at += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left }
                };
                continue;
            }
            self.state = step(self.state, input[at])?;
            at += 1;
        }
        Ok(at)
    }
}

/// One byte of a chunk's framing.
fn step(state: Chunk, byte: u8) -> Result<Chunk, WireError> {
    let hex = (byte as char).to_digit(16).map(u64::from);
    Ok(match (state, byte) {
        (Chunk::Start, _) => Chunk::Size {
            value: hex.ok_or(WireError::BadChunk("expected a chunk size"))?,
        },
        (Chunk::Size { value }, _) if hex.is_some() => Chunk::Size {
            value: value
                .checked_mul(16)
                .and_then(|v| v.checked_add(hex.unwrap_or_default()))
                .ok_or(WireError::BadChunk("chunk size overflows"))?,
        },
        (Chunk::Size { value }, b';' | b' ' | b'\t') => Chunk::Extension { value },
        (Chunk::Size { value }, b'\r') | (Chunk::Extension { value }, b'\r') => {
            Chunk::SizeEnd { value }
        }
        (Chunk::Extension { value }, _) => Chunk::Extension { value },
        (Chunk::SizeEnd { value: 0 }, b'\n') => Chunk::Trailer { empty: true },
        (Chunk::SizeEnd { value }, b'\n') => Chunk::Data { left: value },
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Start,
        (Chunk::Trailer { empty }, b'\r') => Chunk::TrailerLf { empty },
        (Chunk::Trailer { .. }, _) => Chunk::Trailer { empty: false },
        (Chunk::TrailerLf { empty: true }, b'\n') => Chunk::Done,
        (Chunk::TrailerLf { empty: false }, b'\n') => Chunk::Trailer { empty: true },
        _ => return Err(WireError::BadChunk("unexpected byte in chunk framing")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> RequestHead {
        parse_request(text.as_bytes())
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn request_heads_keep_end_to_end_lines_and_read_framing() {
        let text = "POST /v1/classify?top=5 HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\n\
                    Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
                    Content-Type: image/jpeg\r\nX-Request-Id: abc\r\n\r\nxyz";
        let head = request(text);
        assert_eq!(head.method, http::Method::POST);
        assert_eq!(head.target, "/v1/classify?top=5");
        assert_eq!(head.framing, Framing::Length(3));
        assert!(head.keep_alive && head.http11 && !head.expect_continue);
        assert_eq!(head.request_id.as_deref(), Some("abc"));
        assert_eq!(
            String::from_utf8(head.forwarded).expect("ok"),
            "Content-Type: image/jpeg\r\nX-Request-Id: abc\r\n"
        );
        assert_eq!(head.len, text.len() - "xyz".len());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(!request("GET / HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!request("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn absolute_targets_become_origin_form_and_odd_ones_are_refused() {
        assert_eq!(
            request("GET http://x:1/v2/models?a HTTP/1.1\r\nHost: x:1\r\n\r\n").target,
            "/v2/models?a"
        );
        assert!(parse_request(b"OPTIONS * HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn ambiguous_or_unsupported_framing_is_refused() {
        let refused: [(&[u8], WireError); 4] = [
            (
                b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                WireError::AmbiguousLength,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                WireError::UnsupportedEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                WireError::BadLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
                WireError::BadLength,
            ),
        ];
        for (head, error) in refused {
            assert_eq!(parse_request(head).expect_err("refused"), error);
        }
        assert_eq!(
            request(
                "POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
            )
            .framing,
            Framing::Chunked
        );
    }

    #[test]
    fn http11_requests_need_exactly_one_valid_host() {
        let refused = |text: &str| match parse_request(text.as_bytes()) {
            Err(WireError::BadHost(why)) => why,
            other => panic!("{text:?} gave {other:?}"),
        };
        assert!(refused("GET / HTTP/1.1\r\n\r\n").starts_with("missing Host"));
        assert!(
            refused("GET http://x/ HTTP/1.1\r\n\r\n").starts_with("missing Host"),
            "an absolute target does not replace Host"
        );
        assert!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n").starts_with("more than one")
        );
        assert!(
            refused("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n").starts_with("more than one")
        );
        for bad in ["", "a b", "a/b", "user@a", "a:port", "[::1"] {
            let text = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert!(refused(&text).starts_with("invalid Host"), "{bad:?}");
        }
        for good in [
            "d",
            "10.0.0.1:8080",
            "[::1]:80",
            "dispatcher.imageclassifier.svc",
        ] {
            request(&format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n"));
        }
        assert!(
            request("GET / HTTP/1.0\r\n\r\n").framing == Framing::Empty,
            "1.0 may omit it"
        );
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_fail() {
        assert!(
            parse_request(b"POST /v1/classify HTTP/1.1\r\nHost:")
                .expect("ok")
                .is_none()
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(
            parse_request(&huge).expect_err("refused"),
            WireError::HeadTooLarge
        );
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_request(&huge).expect_err("complete, still refused"),
            WireError::HeadTooLarge
        );
        assert!(matches!(
            parse_request(b"\x01\x02 nonsense\r\n\r\n"),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn response_framing_follows_status_method_and_headers() {
        let parse = |text: &str, head: bool| {
            parse_response(text.as_bytes(), head)
                .expect("ok")
                .expect("ok")
        };
        let plain = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Request-Id: r\r\n\r\n",
            false,
        );
        assert_eq!(
            (plain.framing, plain.reusable, plain.has_request_id),
            (Framing::Length(5), true, true)
        );
        let to_head = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(
            (to_head.framing, to_head.declared_length),
            (Framing::Empty, Some(5))
        );
        let chunked = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(chunked.framing, Framing::Chunked);
        let until_close = parse("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(
            (until_close.framing, until_close.reusable),
            (Framing::UntilClose, false)
        );
        let closing = parse(
            "HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(
            (closing.status.as_u16(), closing.framing, closing.reusable),
            (503, Framing::Empty, false)
        );
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n", false).framing,
            Framing::Empty
        );
        assert!(!parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).reusable);
    }

    fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), WireError> {
        let mut chunked = Chunked::default();
        let mut data = Vec::new();
        let mut used = 0;
        for piece in pieces {
            used += chunked.feed(piece, |d| data.extend_from_slice(d))?;
        }
        Ok((data, used, chunked.is_done()))
    }

    #[test]
    fn chunked_bodies_decode_across_any_split_and_stop_at_their_end() {
        let body = b"5\r\nhello\r\na;ext=1\r\n, world!!!\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let whole = decode(&[body]).expect("ok");
        assert_eq!(whole, (b"hello, world!!!".to_vec(), body.len() - 4, true));
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(decode(&[a, b]).expect("ok"), whole, "split at {split}");
        }
        assert_eq!(decode(&[b"0\r\n\r\n"]).expect("ok"), (Vec::new(), 5, true));
        assert_eq!(
            decode(&[b"A\r\n0123"]).expect("ok"),
            (b"0123".to_vec(), 7, false)
        );
    }

    #[test]
    fn broken_chunk_framing_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"FFFFFFFFFFFFFFFFF\r\n",
            b"5\rX",
        ] {
            assert!(
                decode(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
