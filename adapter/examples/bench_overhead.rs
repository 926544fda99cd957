//! Benchmark: what the adapter adds on top of Prometheus when the HPA asks for a pods metric
//! over 100 pods, and how much memory it holds.
//!
//! Starts an exporter with 100 pods, a real Prometheus (Debian package) scraping it every
//! second, and the release `metrics-adapter`; then alternates the HPA's request to the adapter
//! with the same PromQL sent straight to Prometheus, over keep-alive connections.
//!
//! Run with `make bench-adapter` (builds the release binary and passes `ADAPTER_BIN`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Adapter, Exporter, NAMESPACE, Prometheus, get_json, insecure_client};

const PODS: usize = 100;
const ROUNDS: usize = 1000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("dir");
    let pods = (0..PODS)
        .map(|i| {
            (
                format!("inference-{i:03}"),
                "gold".to_owned(),
                1.0 + i as f64 / 10.0,
                (i % 7) as f64,
            )
        })
        .collect();
    let exporter = Exporter::with_pods(pods).await;
    let prometheus = Prometheus::start(&exporter, dir.path()).await;
    prometheus.wait_for_series(PODS).await;
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, include_str!("../rules.yaml")).expect("rules");
    let url = prometheus.url();
    let adapter = Adapter::start(
        &[
            "--prometheus-url",
            &url,
            "--config",
            rules.to_str().expect("utf-8"),
            "--objects-from",
            "prometheus",
            "--authn",
            "none",
        ],
        &[("RUST_LOG", "warn")],
        dir.path(),
    )
    .await;
    let client = insecure_client();
    let adapter_url = adapter.url(&format!(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/%2A/inference_requests_per_second"
    ));
    // The PromQL the adapter renders for that request (objects from Prometheus).
    let promql = format!(
        "sum(rate(inference_requests_total{{namespace=\"{NAMESPACE}\",pod!=\"\",attempt=\"first\"}}[30s])) by (pod)"
    );
    let direct_url = format!("{url}/api/v1/query");
    let (status, list) = get_json(&client, &adapter_url).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["items"].as_array().expect("items").len(),
        PODS,
        "one value per pod"
    );

    let mut through_adapter = Vec::with_capacity(ROUNDS);
    let mut direct = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let body = client
            .get(&adapter_url)
            .send()
            .await
            .expect("adapter")
            .bytes()
            .await
            .expect("body");
        through_adapter.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(body.len() > 1000);
        let started = Instant::now();
        let body = client
            .post(&direct_url)
            .form(&[("query", promql.as_str()), ("timeout", "10000ms")])
            .send()
            .await
            .expect("prometheus")
            .bytes()
            .await
            .expect("body");
        direct.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(body.len() > 1000);
    }
    through_adapter.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    let pid = adapter.pid();
    println!("pods metric over {PODS} pods, {ROUNDS} requests each, sequential, keep-alive");
    println!("| | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: |");
    println!(
        "| adapter (HTTPS, whole answer) | {:.2} | {:.2} |",
        percentile(&through_adapter, 50.0),
        percentile(&through_adapter, 99.0)
    );
    println!(
        "| Prometheus alone (same PromQL, HTTP) | {:.2} | {:.2} |",
        percentile(&direct, 50.0),
        percentile(&direct, 99.0)
    );
    println!(
        "| adapter overhead (difference) | {:.2} | {:.2} |",
        percentile(&through_adapter, 50.0) - percentile(&direct, 50.0),
        percentile(&through_adapter, 99.0) - percentile(&direct, 99.0)
    );
    println!(
        "adapter RSS: {} KiB now, {} KiB peak (VmHWM)",
        rss_kib(pid, "VmRSS:"),
        rss_kib(pid, "VmHWM:")
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
