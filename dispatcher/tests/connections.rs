//! An upstream's keep-alive connections against a real local HTTP server that counts the
//! connections it accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dispatcher::connections::{Connections, SendError};
use http::{Request, header};
use http_body_util::{BodyExt, Full};
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

fn request(address: &str) -> Request<Full<Bytes>> {
    Request::post("/v1/classify")
        .header(header::HOST, address)
        .body(Full::new(Bytes::from_static(b"image")))
        .expect("request")
}

async fn send(connections: &Arc<Connections>, address: &str) -> Result<Bytes, SendError> {
    let response = connections
        .send(address, Duration::from_secs(1), request(address))
        .await?;
    assert_eq!(response.status(), 200);
    Ok(response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes())
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
        matches!(error, SendError::Http(_) | SendError::Closed),
        "{error}"
    );
}
