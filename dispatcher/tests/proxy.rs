//! The dispatcher in front of real local HTTP upstreams (small axum servers on free ports).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::Parser;
use serde_json::{Value, json};

/// A fake inference pod: answers after `delay`, echoing what it saw.
struct Upstream {
    address: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct UpstreamState {
    name: String,
    delay: Duration,
    hits: Arc<AtomicUsize>,
    status: StatusCode,
}

async fn classify(
    State(s): State<UpstreamState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    s.hits.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(s.delay).await;
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    (
        s.status,
        axum::Json(json!({
            "upstream": s.name,
            "bytes": body.len(),
            "request_id": header("x-request-id"),
            "keep_alive": header("keep-alive"),
            "attempt": header("x-attempt-count"),
        })),
    )
}

/// A body of unknown length, which hyper sends chunked.
async fn stream() -> axum::body::Body {
    let parts = ["hello ", "world"].map(|p| Ok::<_, std::convert::Infallible>(p.to_string()));
    axum::body::Body::from_stream(futures::stream::iter(parts))
}

async fn upstream(name: &str, delay: Duration, status: StatusCode) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let state = UpstreamState {
        name: name.to_string(),
        delay,
        hits: hits.clone(),
        status,
    };
    let app = Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/stream", axum::routing::get(stream))
        .with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Upstream {
        address,
        hits,
        task,
    }
}

struct Dispatcher {
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Dispatcher {
    async fn start(upstreams: &[&Upstream], extra: &[&str]) -> Self {
        let list = upstreams
            .iter()
            .map(|u| u.address.clone())
            .collect::<Vec<_>>()
            .join(",");
        let mut argv = vec!["dispatcher", "--upstreams", &list];
        argv.extend_from_slice(extra);
        let config = dispatcher::config::Config::parse_from(argv);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(dispatcher::server::serve_on(listener, config, async {
            let _ = signal.await;
        }));
        Self {
            url,
            shutdown: Some(shutdown),
            handle,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        (&mut self.handle)
            .await
            .expect("task")
            .expect("clean shutdown");
    }
}

/// Sends `n` requests with `concurrency` at a time; returns (status, upstream header) pairs.
async fn load(url: &str, n: usize, concurrency: usize) -> Vec<(u16, String)> {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url) = (client.clone(), next.clone(), format!("{url}/v1/classify"));
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = client
                    .post(&url)
                    .body(vec![7u8; 1000])
                    .send()
                    .await
                    .expect("dispatcher answers");
                let status = r.status().as_u16();
                let upstream = r
                    .headers()
                    .get("x-upstream")
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(String::new, str::to_string);
                let upstream = if status == 200 {
                    upstream
                } else {
                    // For a failure, what the dispatcher said, so a failed assertion shows it.
                    format!("{upstream} {}", r.text().await.unwrap_or_default())
                };
                out.push((status, upstream));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all
}

/// POSTs once and returns the JSON `error` message, checking the status.
async fn error_of(url: &str, status: u16) -> String {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/classify"))
        .body("x")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.expect("JSON");
    body["error"]
        .as_str()
        .expect("an error message")
        .to_string()
}

/// The dispatcher's `/metrics` text.
async fn metrics_of(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .expect("sent")
        .text()
        .await
        .expect("text")
}

fn shares(results: &[(u16, String)]) -> HashMap<String, f64> {
    let mut counts: HashMap<String, f64> = HashMap::new();
    for (_, upstream) in results {
        *counts.entry(upstream.clone()).or_default() += 1.0;
    }
    counts.values_mut().for_each(|c| *c /= results.len() as f64);
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_headers_and_spreads_equal_load_evenly() {
    let ups = [
        upstream("a", Duration::from_millis(5), StatusCode::OK).await,
        upstream("b", Duration::from_millis(5), StatusCode::OK).await,
        upstream("c", Duration::from_millis(5), StatusCode::OK).await,
    ];
    let d = Dispatcher::start(&ups.iter().collect::<Vec<_>>(), &[]).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/classify?top_k=3", d.url))
        .header("x-request-id", "req-42")
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .body(vec![1u8; 12345])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let upstream = response.headers()["x-upstream"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(ups.iter().any(|u| u.address == upstream));
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["bytes"], 12345, "body forwarded intact");
    assert_eq!(
        body["request_id"], "req-42",
        "request id propagated upstream"
    );
    assert_eq!(
        body["keep_alive"],
        Value::Null,
        "hop-by-hop header stripped"
    );

    let results = load(&d.url, 300, 9).await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    for (upstream, share) in shares(&results) {
        assert!(
            share > 0.2 && share < 0.47,
            "{upstream} got {share:.2} of equal load"
        );
    }
    d.stop().await;
}

async fn slow_share(policy: &str) -> f64 {
    let slow = upstream("slow", Duration::from_millis(120), StatusCode::OK).await;
    let fast1 = upstream("fast1", Duration::from_millis(5), StatusCode::OK).await;
    let fast2 = upstream("fast2", Duration::from_millis(5), StatusCode::OK).await;
    let d = Dispatcher::start(&[&slow, &fast1, &fast2], &["--balance", policy]).await;
    let results = load(&d.url, 240, 6).await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    let share = shares(&results).get(&slow.address).copied().unwrap_or(0.0);
    d.stop().await;
    share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_less_traffic_under_peak_ewma_than_round_robin() {
    let rr = slow_share("round-robin").await;
    let ewma = slow_share("p2c-ewma").await;
    println!("slow upstream share: round robin {rr:.3}, p2c-ewma {ewma:.3}");
    assert!(rr > 0.3, "round robin is blind to latency: {rr}");
    assert!(
        ewma < 0.12,
        "peak-EWMA steers away from the slow upstream: {ewma}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_load_costs_no_client_request() {
    let victim = upstream("victim", Duration::from_millis(20), StatusCode::OK).await;
    let a = upstream("a", Duration::from_millis(20), StatusCode::OK).await;
    let b = upstream("b", Duration::from_millis(20), StatusCode::OK).await;
    let d = Dispatcher::start(&[&victim, &a, &b], &["--balance", "round-robin"]).await;
    let url = d.url.clone();
    let running = tokio::spawn(async move { load(&url, 400, 8).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.task.abort(); // connections reset, listener closed
    let results = running.await.expect("load");
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "every request was retried on a live upstream: {failed:?}"
    );
    let after_kill = victim.hits.load(Ordering::Relaxed);
    assert!(after_kill > 0, "the victim served traffic before it died");
    let metrics = metrics_of(&d.url).await;
    assert!(metrics.contains("dispatcher_retries_total"), "{metrics}");
    assert!(
        metrics.contains("dispatcher_upstreams{state=\"ejected\"} 1"),
        "victim ejected:\n{metrics}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_and_missing_upstreams_get_clear_json_errors() {
    // No live upstream at all: 502 with a JSON error naming it.
    let dead = upstream("dead", Duration::ZERO, StatusCode::OK).await;
    let dead_address = dead.address.clone();
    dead.task.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let d = Dispatcher::start(&[&dead], &[]).await;
    let error = error_of(&d.url, 502).await;
    assert!(error.contains(&dead_address), "{error}");
    let missing = reqwest::get(format!("{}/elsewhere", d.url))
        .await
        .expect("sent");
    assert_eq!(missing.status(), 404);
    d.stop().await;

    // One slot, no queue: concurrent requests beyond it get 503 + Retry-After.
    let slow = upstream("slow", Duration::from_millis(300), StatusCode::OK).await;
    let d = Dispatcher::start(&[&slow], &["--max-in-flight", "1", "--queue-capacity", "0"]).await;
    let results = load(&d.url, 4, 4).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused = results.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!((ok, refused), (1, 3), "{results:?}");
    let metrics = metrics_of(&d.url).await;
    assert!(
        metrics.contains("dispatcher_rejected_total{reason=\"queue_full\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dispatcher_requests_total{code=\"503\"} 3"),
        "{metrics}"
    );
    d.stop().await;

    // An upstream slower than the request timeout: 504, not retried, JSON error.
    let stuck = upstream("stuck", Duration::from_millis(800), StatusCode::OK).await;
    let d = Dispatcher::start(&[&stuck], &["--request-timeout-ms", "100"]).await;
    let error = error_of(&d.url, 504).await;
    assert!(error.contains("timeout"), "{error}");
    assert_eq!(
        stuck.hits.load(Ordering::Relaxed),
        1,
        "a timed-out request is not retried"
    );
    d.stop().await;

    // The upstream's own back-pressure (503) is retried elsewhere, within the budget.
    let full = upstream("full", Duration::ZERO, StatusCode::SERVICE_UNAVAILABLE).await;
    let fine = upstream("fine", Duration::ZERO, StatusCode::OK).await;
    let all_retried = ["--balance", "round-robin", "--retry-budget-percent", "100"];
    let d = Dispatcher::start(&[&full, &fine], &all_retried).await;
    let results = load(&d.url, 20, 1).await;
    assert!(
        results.iter().all(|(s, u)| *s == 200 && *u == fine.address),
        "{results:?}"
    );
    // A retry says which attempt it is (so the upstream does not count it as new demand);
    // a client that is itself a retrying proxy has its count carried on.
    for (sent, expected) in [
        (None, [None, Some("2")]),
        (Some("3"), [Some("3"), Some("4")]),
    ] {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut request = reqwest::Client::new()
                .post(format!("{}/v1/classify", d.url))
                .body("x");
            if let Some(attempt) = sent {
                request = request.header("x-attempt-count", attempt);
            }
            let body: Value = request
                .send()
                .await
                .expect("sent")
                .json()
                .await
                .expect("JSON");
            seen.push(body["attempt"].as_str().map(str::to_string));
        }
        seen.sort();
        assert_eq!(
            seen,
            expected.map(|e| e.map(str::to_string)),
            "sent {sent:?}"
        );
    }
    d.stop().await;
    // With the default budget (20 %), at most a fifth of the requests are retried.
    let d = Dispatcher::start(&[&full, &fine], &["--balance", "round-robin"]).await;
    let results = load(&d.url, 50, 1).await;
    let metrics = metrics_of(&d.url).await;
    let retries = counter(&metrics, "dispatcher_retries_total");
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert!(
        (5.0..=10.0).contains(&retries),
        "{retries} retries\n{metrics}"
    );
    assert_eq!(ok as f64, 25.0 + retries, "{results:?}");
    assert!(
        counter(
            &metrics,
            "dispatcher_retries_denied_total{reason=\"budget\"}"
        ) >= 15.0,
        "{metrics}"
    );
    d.stop().await;
    // When the other upstream is refusing too, the 503 goes back at once: no retry into a
    // pool that is overloaded.
    let full_too = upstream("full", Duration::ZERO, StatusCode::SERVICE_UNAVAILABLE).await;
    let d = Dispatcher::start(&[&full, &full_too], &all_retried).await;
    let results = load(&d.url, 20, 1).await;
    assert!(results.iter().all(|(s, _)| *s == 503), "{results:?}");
    let metrics = metrics_of(&d.url).await;
    assert!(
        counter(&metrics, "dispatcher_retries_total") <= 1.0,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "dispatcher_retries_denied_total{reason=\"no_upstream\"}"
        ) >= 19.0,
        "{metrics}"
    );
    d.stop().await;
}

/// The value of the sample `series` (name and labels as exposed) in `metrics`; 0 when absent.
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_shutdown_are_finished() {
    let slow = upstream("slow", Duration::from_millis(500), StatusCode::OK).await;
    let d = Dispatcher::start(&[&slow], &[]).await;
    let url = d.url.clone();
    let running = tokio::spawn(async move { load(&url, 6, 6).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    d.stop().await; // graceful: waits for the six in-flight requests
    let results = running.await.expect("load");
    assert_eq!(results.len(), 6);
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
}

/// Writes `request` on a new connection and reads until the dispatcher closes it.
async fn raw(url: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the dispatcher closes the connection")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn pipelined_requests_with_chunked_and_fixed_bodies_are_answered_in_order() {
    let a = upstream("a", Duration::ZERO, StatusCode::OK).await;
    let d = Dispatcher::start(&[&a], &[]).await;
    let answer = raw(
        &d.url,
        b"POST /v1/classify HTTP/1.1\r\nHost: d\r\nX-Request-Id: one\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n2\r\n!!\r\n0\r\n\r\n\
          POST /v1/classify HTTP/1.1\r\nHost: d\r\nX-Request-Id: two\r\nContent-Length: 3\r\n\
          Connection: close\r\n\r\nabc",
    )
    .await;
    let answers: Vec<&str> = answer.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 2, "{answer}");
    assert!(answers[0].contains(r#""bytes":7"#) && answers[0].contains(r#""request_id":"one""#));
    assert!(answers[1].contains(r#""bytes":3"#) && answers[1].contains(r#""request_id":"two""#));
    assert!(!answers[0].contains("connection: close") && answers[1].contains("connection: close"));
    assert!(answers[0].contains("x-upstream: 127.0.0.1:"), "{answer}");
    d.stop().await;
}

#[tokio::test]
async fn a_client_expecting_100_continue_gets_it_before_sending_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = upstream("a", Duration::ZERO, StatusCode::OK).await;
    let d = Dispatcher::start(&[&a], &[]).await;
    let mut stream = tokio::net::TcpStream::connect(d.url.trim_start_matches("http://"))
        .await
        .expect("connect");
    let head = "POST /v1/classify HTTP/1.1\r\nHost: d\r\nContent-Length: 4\r\n\
                Expect: 100-continue\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
        .await
        .expect("an interim answer, not a wait for the body")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"jpeg").await.expect("body");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("answer");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.contains(r#""bytes":4"#),
        "{answer}"
    );
    d.stop().await;
}

#[tokio::test]
async fn chunked_answers_stay_chunked_for_http11_and_are_decoded_for_http10() {
    let a = upstream("a", Duration::ZERO, StatusCode::OK).await;
    let d = Dispatcher::start(&[&a], &[]).await;
    let modern = raw(
        &d.url,
        b"GET /v1/stream HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        modern.contains("transfer-encoding: chunked\r\n"),
        "{modern}"
    );
    assert!(
        modern.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
        "{modern}"
    );
    let old = raw(&d.url, b"GET /v1/stream HTTP/1.0\r\n\r\n").await;
    assert!(
        !old.contains("transfer-encoding") && old.contains("connection: close\r\n"),
        "{old}"
    );
    assert!(old.ends_with("\r\n\r\nhello world"), "{old}");
    d.stop().await;
}

#[tokio::test]
async fn unreadable_and_oversized_requests_get_json_errors_and_local_routes_answer() {
    let a = upstream("a", Duration::ZERO, StatusCode::OK).await;
    let d = Dispatcher::start(&[&a], &["--max-body-bytes", "100"]).await;
    let status_and_error = |answer: String| {
        let status = answer.get(9..12).unwrap_or_default().to_string();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let error = serde_json::from_str::<Value>(body)
            .map(|v| v["error"].as_str().unwrap_or_default().to_string());
        (
            status,
            error.unwrap_or_else(|_| format!("not JSON: {answer}")),
        )
    };
    let (status, error) = status_and_error(raw(&d.url, b"NOT HTTP AT ALL\r\n\r\n").await);
    assert_eq!(status, "400");
    assert!(error.contains("malformed"), "{error}");

    let mut huge = b"GET /v1/classify HTTP/1.1\r\nHost: d\r\nX-Big: ".to_vec();
    huge.resize(70 * 1024, b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    let (status, error) = status_and_error(raw(&d.url, &huge).await);
    assert_eq!(status, "431");
    assert!(error.contains("larger than 65536 bytes"), "{error}");

    // The whole body is sent while the answer is refused: the client gets the answer. (The
    // linger that keeps a reset from destroying it matters on real networks; on loopback
    // the answer usually wins that race anyway.)
    let mut big =
        b"POST /v1/classify HTTP/1.1\r\nHost: d\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    big.resize(big.len() + 1_000_000, b'x');
    let (status, error) = status_and_error(raw(&d.url, &big).await);
    assert_eq!(
        (status.as_str(), error.as_str()),
        (
            "413",
            "request body is larger than the 100-byte limit (--max-body-bytes)"
        )
    );

    let chunked =
        b"POST /v1/classify HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    let (status, error) = status_and_error(raw(&d.url, chunked).await);
    assert_eq!(status, "400");
    assert!(error.contains("chunk"), "{error}");
    assert_eq!(
        a.hits.load(Ordering::Relaxed),
        0,
        "nothing unreadable was forwarded"
    );

    let probe = raw(
        &d.url,
        b"GET /healthz HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        probe.starts_with("HTTP/1.1 200 OK\r\n") && probe.ends_with("\r\n\r\nok"),
        "{probe}"
    );
    assert!(
        probe.contains("\r\ndate: ") && probe.contains("\r\ncontent-length: 2\r\n"),
        "{probe}"
    );
    let head = raw(
        &d.url,
        b"HEAD /healthz HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        head.contains("\r\ncontent-length: 2\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    let (status, error) = status_and_error(raw(&d.url, b"GET /nope HTTP/1.0\r\n\r\n").await);
    assert_eq!(status, "404");
    assert!(error.contains("no route for GET /nope"), "{error}");
    d.stop().await;
}

#[tokio::test]
async fn clients_stalling_mid_request_get_408_and_idle_connections_stay_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = upstream("a", Duration::ZERO, StatusCode::OK).await;
    let d = Dispatcher::start(&[&a], &["--client-timeout-ms", "300"]).await;
    let address = d.url.trim_start_matches("http://").to_string();
    for partial in [
        &b"POST /v1/classify HTTP/1.1\r\nHost: d\r\nContent-Le"[..],
        b"POST /v1/classify HTTP/1.1\r\nHost: d\r\nContent-Length: 10\r\n\r\nabc",
    ] {
        let answer = raw(&d.url, partial).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains("sent nothing for 300ms"), "{answer}");
    }
    // Quiet between requests is not a stall.
    let mut idle = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(700)).await;
    idle.write_all(
        b"POST /v1/classify HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await
    .expect("write after idling");
    let mut answer = String::new();
    idle.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert_eq!(
        a.hits.load(Ordering::Relaxed),
        1,
        "only the complete request was forwarded"
    );
    d.stop().await;
}

/// RFC 9112 framings that nginx refuses, each on its own connection: every one gets a 4xx
/// and the connection closed, and none reaches an upstream (request smuggling starts where
/// a proxy and its upstream disagree about where a request ends, or whom it is for).
#[tokio::test]
async fn requests_with_bad_hosts_or_ambiguous_framing_are_refused_and_never_forwarded() {
    let a = upstream("a", Duration::ZERO, StatusCode::OK).await;
    let d = Dispatcher::start(&[&a], &[]).await;
    let post = "POST /v1/classify HTTP/1.1\r\n";
    let mut oversized = format!("{post}Host: d\r\nX-Big: ");
    oversized.push_str(&"a".repeat(70 * 1024));
    oversized.push_str("\r\n\r\n");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no Host",
            format!("{post}Content-Length: 2\r\n\r\nhi"),
            "400",
        ),
        (
            "two Hosts",
            format!("{post}Host: d\r\nHost: evil\r\nContent-Length: 2\r\n\r\nhi"),
            "400",
        ),
        (
            "invalid Host",
            format!("{post}Host: a b\r\nContent-Length: 2\r\n\r\nhi"),
            "400",
        ),
        (
            "CL + TE",
            format!(
                "{post}Host: d\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            "400",
        ),
        (
            "TE + CL",
            format!(
                "{post}Host: d\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"
            ),
            "400",
        ),
        (
            "obfuscated TE",
            format!("{post}Host: d\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
            "400",
        ),
        (
            "TE twice",
            format!(
                "{post}Host: d\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            "400",
        ),
        (
            "unknown coding",
            format!("{post}Host: d\r\nTransfer-Encoding: gzip\r\n\r\n"),
            "400",
        ),
        (
            "two lengths",
            format!("{post}Host: d\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi"),
            "400",
        ),
        (
            "signed length",
            format!("{post}Host: d\r\nContent-Length: -2\r\n\r\nhi"),
            "400",
        ),
        (
            "bad chunk size",
            format!("{post}Host: d\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"),
            "400",
        ),
        (
            "obs-fold",
            format!("{post}Host: d\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nhi"),
            "400",
        ),
        (
            "NUL",
            format!("{post}Host: d\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nhi"),
            "400",
        ),
        (
            "space in a name",
            format!("{post}Host: d\r\nContent-Length : 2\r\n\r\nhi"),
            "400",
        ),
        ("oversized head", oversized, "431"),
    ];
    for (case, request, status) in &cases {
        let answer = raw(&d.url, request.as_bytes()).await;
        assert_eq!(answer.get(9..12), Some(*status), "{case}: {answer}");
        assert!(answer.contains("connection: close\r\n"), "{case}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let error: Value = serde_json::from_str(body).expect("a JSON error body");
        assert!(error["error"].is_string(), "{case}: {answer}");
    }
    assert_eq!(a.hits.load(Ordering::Relaxed), 0, "nothing was forwarded");
    let http10 = raw(
        &d.url,
        b"POST /v1/classify HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert!(
        http10.starts_with("HTTP/1.1 200 OK"),
        "HTTP/1.0 may omit Host: {http10}"
    );
    d.stop().await;
}

/// A pod that is gone (connection refused) is retried elsewhere whatever the budget: the
/// request reached no pod, so its retry adds no load. At 20 sequential requests the 20 %
/// budget would allow 4 retries; round robin sends at least 10 to the dead pod (ejection off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_pod_that_is_gone_are_retried_outside_the_budget() {
    let dead = upstream("dead", Duration::ZERO, StatusCode::OK).await;
    dead.task.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fine = upstream("fine", Duration::ZERO, StatusCode::OK).await;
    let no_ejection = ["--balance", "round-robin", "--eject-after", "1000"];
    let d = Dispatcher::start(&[&dead, &fine], &no_ejection).await;
    let results = load(&d.url, 20, 1).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let metrics = metrics_of(&d.url).await;
    let retries = counter(&metrics, "dispatcher_retries_total");
    assert!(
        retries >= 10.0,
        "{retries} retries, more than the budget's 4\n{metrics}"
    );
    d.stop().await;
}
