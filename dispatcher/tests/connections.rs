//! An upstream's keep-alive connections against a real local HTTP server that counts the
//! connections it accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dispatcher::connections::{Connections, SendError};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A server answering `ok`; `close` makes it close each connection after one answer, as an
/// upstream with a short keep-alive timeout would. Returns its address and accept count.
async fn server(close: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let _ = http1::Builder::new()
                    .keep_alive(!close)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, accepted)
}

fn request(address: &str) -> Vec<u8> {
    format!("POST /v1/classify HTTP/1.1\r\nhost: {address}\r\ncontent-length: 5\r\n\r\nimage")
        .into_bytes()
}

/// Sends one request and relays the answer's body (`unchunk` as for an HTTP/1.0 client).
async fn exchange(
    connections: &Arc<Connections>,
    address: &str,
    unchunk: bool,
) -> Result<Vec<u8>, SendError> {
    let answer = connections
        .send(address, Duration::from_secs(1), &request(address), false)
        .await?;
    assert_eq!(answer.head().status, 200);
    let mut body = Vec::new();
    answer
        .relay(&mut body, Vec::new(), unchunk)
        .await
        .expect("relayed");
    Ok(body)
}

async fn send(connections: &Arc<Connections>, address: &str) -> Result<Bytes, SendError> {
    exchange(connections, address, false).await.map(Bytes::from)
}

/// A raw upstream that reads one request per turn and writes `answers` in order on each
/// connection it accepts (closing it after the last one).
fn scripted(answers: &'static [&'static str]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            for answer in answers {
                let mut request = [0u8; 4096];
                if stream.read(&mut request).unwrap_or(0) == 0 {
                    break;
                }
                let _ = stream.write_all(answer.as_bytes());
            }
        }
    });
    address
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (address, accepted) = server(false).await;
    let connections = Arc::new(Connections::default());
    for _ in 0..20 {
        assert_eq!(send(&connections, &address).await.expect("send"), "ok");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
    assert_eq!(connections.idle(), 1);
}

#[tokio::test]
async fn concurrent_requests_open_connections_that_are_then_reused() {
    let (address, accepted) = server(false).await;
    let connections = Arc::new(Connections::default());
    for _ in 0..3 {
        let rounds: Vec<_> = (0..8)
            .map(|_| {
                let (connections, address) = (connections.clone(), address.clone());
                tokio::spawn(async move { send(&connections, &address).await.expect("send") })
            })
            .collect();
        for round in rounds {
            round.await.expect("join");
        }
    }
    let opened = accepted.load(Ordering::Relaxed);
    assert!(
        (1..=8).contains(&opened),
        "{opened} connections for 24 requests at most 8 at a time"
    );
    assert_eq!(connections.idle(), opened);
}

#[tokio::test]
async fn connections_the_upstream_closed_are_replaced_without_failing_requests() {
    let (address, accepted) = server(true).await;
    let connections = Arc::new(Connections::default());
    for _ in 0..10 {
        assert_eq!(send(&connections, &address).await.expect("send"), "ok");
        // Let the closed connection be noticed, or not: either way the request must succeed.
        tokio::task::yield_now().await;
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 10);
}

#[tokio::test]
async fn unreachable_upstreams_are_connect_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let connections = Arc::new(Connections::default());
    let error = send(&connections, &address).await.expect_err("refused");
    assert!(matches!(error, SendError::Connect(_)), "{error}");
    assert!(error.to_string().starts_with("cannot connect"), "{error}");
}

#[tokio::test]
async fn a_connection_closed_silently_while_idle_is_not_used_again() {
    // A raw upstream that answers one request per connection and closes it without saying so
    // (no `Connection: close`), as a pod does when it restarts or times an idle connection out.
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    let connections = Arc::new(Connections::default());
    for _ in 0..5 {
        let sent = tokio::time::timeout(Duration::from_secs(5), send(&connections, &address));
        assert_eq!(sent.await.expect("no hang").expect("send"), "ok");
        // Let the close arrive while the connection sits idle.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_connection_reset_before_the_request_is_an_error_not_a_hang() {
    // The upstream's listener closes with our connection still in its accept backlog (a pod
    // killed mid-load): the handshake succeeded, then the kernel resets it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let closing = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(listener);
    });
    let connections = Arc::new(Connections::default());
    let sent = tokio::time::timeout(Duration::from_secs(5), send(&connections, &address));
    let error = sent
        .await
        .expect("an answer, not a hang")
        .expect_err("reset");
    closing.join().expect("join");
    assert!(
        matches!(error, SendError::Io(_) | SendError::Closed),
        "{error}"
    );
}

#[tokio::test]
async fn chunked_answers_pass_through_or_are_decoded_and_the_connection_is_reused() {
    const CHUNKED: &str = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                           3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
    let address = scripted(&[CHUNKED, CHUNKED]);
    let connections = Arc::new(Connections::default());
    let raw = exchange(&connections, &address, false)
        .await
        .expect("first");
    assert_eq!(raw, b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n");
    assert_eq!(connections.idle(), 1, "read to its end, so reusable");
    let decoded = exchange(&connections, &address, true)
        .await
        .expect("second");
    assert_eq!(decoded, b"abcde");
}

#[tokio::test]
async fn answers_without_length_end_with_the_connection_and_are_not_reused() {
    let address = scripted(&["HTTP/1.1 200 OK\r\n\r\nall of it"]);
    let connections = Arc::new(Connections::default());
    let body = exchange(&connections, &address, false).await.expect("send");
    assert_eq!(body, b"all of it");
    assert_eq!(connections.idle(), 0);
}

#[tokio::test]
async fn a_body_cut_short_is_a_relay_error_and_malformed_answers_are_invalid() {
    let short = scripted(&["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"]);
    let connections = Arc::new(Connections::default());
    let answer = connections
        .send(&short, Duration::from_secs(1), &request(&short), false)
        .await
        .expect("head");
    let mut body = Vec::new();
    let error = answer
        .relay(&mut body, Vec::new(), false)
        .await
        .expect_err("cut short");
    assert!(
        error.to_string().contains("closed before the end"),
        "{error}"
    );
    assert_eq!((body.as_slice(), connections.idle()), (&b"abc"[..], 0));

    let garbage = scripted(&["SMTP ready\r\n\r\n"]);
    let error = Arc::new(Connections::default())
        .send(&garbage, Duration::from_secs(1), &request(&garbage), false)
        .await
        .expect_err("not HTTP");
    assert!(matches!(error, SendError::Invalid(_)), "{error}");
}
