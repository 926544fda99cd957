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
        })),
    )
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

    // The upstream's own back-pressure (503) is retried elsewhere, and passed through when
    // every upstream is full.
    let full = upstream("full", Duration::ZERO, StatusCode::SERVICE_UNAVAILABLE).await;
    let fine = upstream("fine", Duration::ZERO, StatusCode::OK).await;
    let d = Dispatcher::start(&[&full, &fine], &["--balance", "round-robin"]).await;
    let results = load(&d.url, 20, 1).await;
    assert!(
        results.iter().all(|(s, u)| *s == 200 && *u == fine.address),
        "{results:?}"
    );
    d.stop().await;
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
