//! The adapter against a real Prometheus scraping a local exporter, read with real kubectl.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    Adapter, Exporter, NAMESPACE, PODS, Prometheus, get_json, insecure_client, kubectl_get_raw,
    wait_for, write_kubeconfig,
};
use serde_json::Value;

const LATE_RULE: &str = r#"
  - seriesQuery: '{__name__=~"^late_.*_total$",namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {matches: "^(.*)_total$", as: "${1}_per_second"}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[30s])) by (<<.GroupBy>>)'
"#;

fn write_rules(dir: &Path, extra: &str) -> String {
    let path = dir.join("rules.yaml");
    let text = include_str!("../rules.yaml").to_owned() + extra;
    std::fs::write(&path, text).expect("write rules");
    path.display().to_string()
}

async fn start_adapter(
    prometheus: &Prometheus,
    rules: &str,
    dir: &Path,
    extra: &[&str],
) -> Adapter {
    let url = prometheus.url();
    let mut args = vec![
        "--prometheus-url",
        url.as_str(),
        "--config",
        rules,
        "--objects-from",
        "prometheus",
        "--authn",
        "none",
        "--prometheus-timeout",
        "2s",
    ];
    args.extend_from_slice(extra);
    Adapter::start(&args, &[], dir).await
}

const V2: &str = "/apis/custom.metrics.k8s.io/v1beta2";
const V1: &str = "/apis/custom.metrics.k8s.io/v1beta1";

fn milli(quantity: &str) -> i64 {
    if let Some(m) = quantity.strip_suffix('m') {
        m.parse().expect("milli")
    } else if let Some(k) = quantity.strip_suffix('k') {
        k.parse::<i64>().expect("kilo") * 1_000_000
    } else {
        quantity.parse::<i64>().expect("integer") * 1000
    }
}

/// name → milli-value of a MetricValueList.
fn values(list: &Value) -> Vec<(String, i64)> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["describedObject"]["name"]
                    .as_str()
                    .expect("name")
                    .to_owned(),
                milli(item["value"].as_str().expect("value")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_what_prometheus_computes() {
    let dir = tempfile::tempdir().expect("dir");
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(&exporter, dir.path()).await;
    prometheus.wait_for_rates().await;
    let rules = write_rules(dir.path(), LATE_RULE);
    // A long relist interval: a metric appearing later can only be found at request time.
    let mut adapter = start_adapter(
        &prometheus,
        &rules,
        dir.path(),
        &["--metrics-relist-interval", "1h", "--lookup-interval", "1s"],
    )
    .await;
    let client = insecure_client();
    wait_for("readiness", Duration::from_secs(10), || async {
        client
            .get(adapter.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    // Discovery, both versions, through kubectl.
    for version in [V2, V1] {
        let (ok, stdout, stderr) = kubectl_get_raw(&adapter, dir.path(), version);
        assert!(ok, "kubectl get --raw {version}: {stderr}");
        let list: Value = serde_json::from_str(&stdout).expect("JSON");
        assert_eq!(list["kind"], "APIResourceList");
        let names: Vec<(&str, bool)> = list["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().expect("name"),
                    r["namespaced"].as_bool().expect("bool"),
                )
            })
            .collect();
        for expected in [
            ("pods/inference_requests_per_second", true),
            ("pods/inference_in_flight_requests", true),
            ("namespaces/inference_requests_per_second", false),
            ("services/dispatcher_requests_per_second", true),
        ] {
            assert!(
                names.contains(&expected),
                "{expected:?} missing from {names:?}"
            );
        }
        assert!(
            !names.iter().any(|(n, _)| n.contains("late_jobs")),
            "{names:?}"
        );
    }

    // The HPA's request, through kubectl: values as Prometheus computes them.
    let path = format!("{V2}/namespaces/{NAMESPACE}/pods/*/inference_in_flight_requests");
    let (ok, stdout, stderr) = kubectl_get_raw(&adapter, dir.path(), &path);
    assert!(ok, "{stderr}");
    let list: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(list["kind"], "MetricValueList");
    assert_eq!(list["apiVersion"], "custom.metrics.k8s.io/v1beta2");
    let mut expected: Vec<(String, i64)> = PODS
        .iter()
        .map(|(pod, _, _, in_flight)| ((*pod).to_owned(), (in_flight * 1000.0) as i64))
        .collect();
    expected.sort();
    assert_eq!(values(&list), expected);
    let item = &list["items"][0];
    assert_eq!(item["describedObject"]["kind"], "Pod");
    assert_eq!(item["describedObject"]["apiVersion"], "v1");
    assert_eq!(item["describedObject"]["namespace"], NAMESPACE);
    assert_eq!(item["metric"]["name"], "inference_in_flight_requests");
    assert_eq!(item["metric"]["selector"], Value::Null);
    assert_eq!(item["windowSeconds"], 30);
    assert_eq!(item["value"], "3");

    // Rates: the adapter's answer against the same PromQL sent straight to Prometheus.
    prometheus.wait_for_steady_rates().await;
    let direct = prometheus
        .query(&format!(
            "sum(rate(inference_requests_total{{namespace=\"{NAMESPACE}\",pod!=\"\",attempt=\"first\"}}[30s])) by (pod)"
        ))
        .await;
    let path = format!("{V2}/namespaces/{NAMESPACE}/pods/%2A/inference_requests_per_second");
    let (status, list) = get_json(&client, &adapter.url(&path)).await;
    assert_eq!(status, 200, "{list}");
    let served = values(&list);
    assert_eq!(served.len(), PODS.len(), "{list}");
    for (pod, value) in &served {
        let (_, _, reference) = direct
            .iter()
            .find(|(labels, _, _)| labels["pod"] == pod.as_str())
            .expect("pod in direct answer");
        let reference_milli = (reference * 1000.0) as i64;
        // Both evaluate "now", a few milliseconds apart; a scrape landing in between moves a
        // 30 s rate by up to one increment over the window: allow 10 %.
        let tolerance = reference_milli / 10 + 1;
        assert!(
            (value - reference_milli).abs() <= tolerance,
            "{pod}: served {value}m, Prometheus {reference_milli}m"
        );
        let nominal = PODS.iter().find(|p| p.0 == pod).expect("pod").2 * 1000.0;
        assert!(
            (*value as f64 - nominal).abs() <= nominal * 0.15,
            "{pod}: {value}m vs nominal {nominal}m"
        );
    }
    let sample_time = list["items"][0]["timestamp"].as_str().expect("timestamp");
    let now = jiff::Timestamp::now();
    let stamped: jiff::Timestamp = sample_time.parse().expect("RFC 3339");
    assert!(
        (now - stamped).get_seconds().abs() <= 5,
        "timestamp {sample_time} is not the sample time"
    );

    // labelSelector is applied to the series labels (objects from Prometheus).
    let (status, list) = get_json(
        &client,
        &adapter.url(&format!("{path}?labelSelector=tier%3Dsilver")),
    )
    .await;
    assert_eq!(status, 200);
    let names: Vec<String> = values(&list).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["inference-b", "inference-c.x"]);
    // metricLabelSelector narrows the series; an unmatched one gives an empty list.
    let (status, list) = get_json(
        &client,
        &adapter.url(&format!("{path}?metricLabelSelector=code%3D500")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["items"], Value::Array(vec![]));

    // A single pod (its name has a regex metacharacter, which must not match other pods).
    let (status, list) = get_json(
        &client,
        &adapter.url(&format!(
            "{V2}/namespaces/{NAMESPACE}/pods/inference-c.x/inference_in_flight_requests"
        )),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(values(&list), [("inference-c.x".to_owned(), 5000)]);

    // The namespace itself (R3), in v1beta1 field names.
    let (status, list) = get_json(
        &client,
        &adapter.url(&format!(
            "{V1}/namespaces/{NAMESPACE}/metrics/inference_in_flight_requests"
        )),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["describedObject"]["kind"], "Namespace");
    assert_eq!(
        list["items"][0]["metricName"],
        "inference_in_flight_requests"
    );
    assert_eq!(list["items"][0]["window"], 30);
    assert_eq!(list["items"][0]["value"], "15");

    // The dispatcher's rate as an object metric on its Service.
    let (status, list) = get_json(
        &client,
        &adapter.url(&format!(
            "{V2}/namespaces/{NAMESPACE}/services/dispatcher/dispatcher_requests_per_second"
        )),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["describedObject"]["kind"], "Service");
    assert!(
        (milli(list["items"][0]["value"].as_str().expect("value")) - 16_000).abs() < 2_500,
        "{list}"
    );

    // Errors are Status objects.
    let cases = [
        (
            format!("{V2}/namespaces/{NAMESPACE}/pods/*/no_such_metric"),
            404,
            "NotFound",
            "could not find the metric no_such_metric for pods",
        ),
        (
            format!("{V2}/namespaces/{NAMESPACE}/pods/nobody/inference_in_flight_requests"),
            404,
            "NotFound",
            "for pods nobody",
        ),
        (
            format!("{path}?labelSelector=tier%20in%20(gold"),
            400,
            "BadRequest",
            "missing ')'",
        ),
        (
            format!("{path}?metricLabelSelector=code%3E2"),
            400,
            "BadRequest",
            "cannot be applied",
        ),
        (
            format!("{V2}/namespaces/{NAMESPACE}/pods/bar"),
            404,
            "NotFound",
            "could not find the requested resource",
        ),
        (
            "/apis/custom.metrics.k8s.io/v9".to_owned(),
            404,
            "NotFound",
            "could not find",
        ),
    ];
    for (path, code, reason, message) in cases {
        let (status, body) = get_json(&client, &adapter.url(&path)).await;
        assert_eq!(status, code, "{path}: {body}");
        assert_eq!(body["kind"], "Status", "{path}");
        assert_eq!(body["reason"], reason, "{path}");
        assert!(
            body["message"].as_str().expect("message").contains(message),
            "{path}: {body}"
        );
    }
    let (ok, _, stderr) = kubectl_get_raw(
        &adapter,
        dir.path(),
        &format!("{V2}/namespaces/{NAMESPACE}/pods/*/no_such_metric"),
    );
    assert!(!ok);
    assert!(
        stderr.contains("could not find the metric no_such_metric"),
        "{stderr}"
    );

    // A metric that appears after start is served on the first request, not after a relist.
    exporter
        .late
        .store(true, std::sync::atomic::Ordering::Relaxed);
    wait_for("late series scraped", Duration::from_secs(15), || async {
        prometheus.query("rate(late_jobs_total[30s])").await.len() == 1
    })
    .await;
    // Unknown names are looked up at most once per --lookup-interval (the 404s above were).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = format!("{V2}/namespaces/{NAMESPACE}/pods/*/late_jobs_per_second");
    let (status, list) = get_json(&client, &adapter.url(&late)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(values(&list)[0].0, "inference-a");

    // OpenAPI documents with ETags.
    for doc in [
        "/openapi/v2",
        "/openapi/v3",
        "/openapi/v3/apis/custom.metrics.k8s.io/v1beta2",
    ] {
        let response = client.get(adapter.url(doc)).send().await.expect("request");
        assert_eq!(response.status(), 200, "{doc}");
        let etag = response.headers()["etag"].clone();
        let body: Value = response.json().await.expect("JSON");
        assert!(
            body.get("swagger").is_some()
                || body.get("openapi").is_some()
                || body.get("paths").is_some(),
            "{doc}"
        );
        let again = client
            .get(adapter.url(doc))
            .header("if-none-match", etag)
            .send()
            .await
            .expect("request");
        assert_eq!(again.status(), 304, "{doc}");
    }

    // Self-metrics.
    let metrics = client
        .get(adapter.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "metrics_adapter_requests_total{code=\"200\",verb=\"GET\"}",
        "metrics_adapter_request_duration_seconds_bucket",
        "metrics_adapter_prometheus_query_duration_seconds_bucket{call=\"query\"",
        "metrics_adapter_discovered_metrics",
        "metrics_adapter_prometheus_errors_total 0",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    let status = adapter.terminate();
    assert!(
        status.success(),
        "exit {status:?} after SIGTERM:\n{}",
        adapter.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_outage_is_a_503_and_discovery_is_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let exporter = Exporter::start().await;
    let mut prometheus = Prometheus::start(&exporter, dir.path()).await;
    prometheus.wait_for_rates().await;
    let rules = write_rules(dir.path(), "");
    let adapter = start_adapter(
        &prometheus,
        &rules,
        dir.path(),
        &["--metrics-relist-interval", "1s", "--lookup-interval", "0s"],
    )
    .await;
    let client = insecure_client();
    let path = adapter.url(&format!(
        "{V2}/namespaces/{NAMESPACE}/pods/*/inference_in_flight_requests"
    ));
    wait_for("first answer", Duration::from_secs(10), || async {
        get_json(&client, &path).await.0 == 200
    })
    .await;

    prometheus.stop();
    let (status, body) = get_json(&client, &path).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "ServiceUnavailable");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("unable to fetch metrics"),
        "{body}"
    );
    // Failed relists keep what was discovered: the APIService stays Available and kubectl quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, list) = get_json(&client, &adapter.url(V2)).await;
    assert_eq!(status, 200);
    assert!(
        list["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| r["name"] == "pods/inference_in_flight_requests"),
        "{list}"
    );
    // An unknown metric while Prometheus is down: it cannot be looked up, so 503, not 404.
    let (status, body) = get_json(
        &client,
        &adapter.url(&format!("{V2}/namespaces/{NAMESPACE}/pods/*/unknown")),
    )
    .await;
    assert_eq!(status, 503, "{body}");

    prometheus.restart().await;
    wait_for("recovery", Duration::from_secs(20), || async {
        get_json(&client, &path).await.0 == 200
    })
    .await;
    let (_, list) = get_json(&client, &path).await;
    assert_eq!(list["items"].as_array().expect("items").len(), PODS.len());
    let metrics = client
        .get(adapter.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        !metrics.contains("metrics_adapter_prometheus_errors_total 0"),
        "errors were not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_without_restart_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let exporter = Exporter::start().await;
    exporter
        .late
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let prometheus = Prometheus::start(&exporter, dir.path()).await;
    prometheus.wait_for_rates().await;
    let rules = write_rules(dir.path(), "");
    let adapter = start_adapter(
        &prometheus,
        &rules,
        dir.path(),
        &["--config-poll-interval", "200ms"],
    )
    .await;
    let client = insecure_client();
    let listed = |list: &Value, name: &str| {
        list["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| r["name"] == name)
    };
    let (_, list) = get_json(&client, &adapter.url(V2)).await;
    assert!(!listed(&list, "pods/late_jobs_per_second"));

    write_rules(dir.path(), LATE_RULE);
    wait_for("reloaded rules", Duration::from_secs(10), || async {
        listed(
            &get_json(&client, &adapter.url(V2)).await.1,
            "pods/late_jobs_per_second",
        )
    })
    .await;

    // A broken file is refused; the rules in use keep serving.
    std::fs::write(
        dir.path().join("rules.yaml"),
        "rules:\n- seriesQuery: 'x{'\n  metricsQuery: y\n",
    )
    .expect("write");
    wait_for("reload error counted", Duration::from_secs(10), || async {
        let metrics = client
            .get(adapter.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        metrics.contains("metrics_adapter_rules_reloads_total{result=\"error\"} 1")
    })
    .await;
    let (status, list) = get_json(
        &client,
        &adapter.url(&format!(
            "{V2}/namespaces/{NAMESPACE}/pods/*/late_jobs_per_second"
        )),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert!(
        adapter.logs().contains("new rules refused"),
        "{}",
        adapter.logs()
    );
}

/// A stand-in API server listing three pods (metadata only, as the watch cache asks), whose
/// watch stays open with no events.
async fn fake_pod_api() -> String {
    use axum::extract::RawQuery;
    use axum::routing::get;
    let pods = [
        ("inference-a", "inference"),
        ("inference-b", "inference"),
        ("inference-c.x", "other"),
    ];
    let list = serde_json::json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "100"},
        "items": pods.iter().map(|(name, app)| serde_json::json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": "100", "labels": {"app": app}}
        })).collect::<Vec<_>>()
    });
    let app = axum::Router::new().route(
        "/api/v1/pods",
        get(move |RawQuery(query): RawQuery| {
            let list = list.clone();
            async move {
                if query.unwrap_or_default().contains("watch=true") {
                    let never = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
                    axum::body::Body::from_stream(never).into_response()
                } else {
                    axum::Json(list).into_response()
                }
            }
        }),
    );
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selectors_resolve_through_the_object_watch_cache() {
    let dir = tempfile::tempdir().expect("dir");
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(&exporter, dir.path()).await;
    prometheus.wait_for_rates().await;
    let rules = write_rules(dir.path(), "");
    let api = fake_pod_api().await;
    let kubeconfig = write_kubeconfig(dir.path(), &api);
    let url = prometheus.url();
    let adapter = Adapter::start(
        &[
            "--prometheus-url",
            &url,
            "--config",
            &rules,
            "--objects-from",
            "kubernetes",
            "--authn",
            "none",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8"))],
        dir.path(),
    )
    .await;
    let client = insecure_client();
    let path = format!("{V2}/namespaces/{NAMESPACE}/pods/*/inference_in_flight_requests");
    // Pod labels come from the API server (the series have no `app=other`).
    let (status, list) = get_json(
        &client,
        &adapter.url(&format!("{path}?labelSelector=app%3Dinference")),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        values(&list),
        [
            ("inference-a".to_owned(), 3000),
            ("inference-b".to_owned(), 7000)
        ]
    );
    let (_, list) = get_json(
        &client,
        &adapter.url(&format!("{path}?labelSelector=app%3Dother")),
    )
    .await;
    assert_eq!(values(&list), [("inference-c.x".to_owned(), 5000)]);
    // No pod matches: an empty list (the HPA reports "no metrics returned").
    let (status, list) = get_json(
        &client,
        &adapter.url(&format!("{path}?labelSelector=app%3Dnone")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["items"], Value::Array(vec![]));
    assert!(
        adapter.logs().contains("started object watch cache"),
        "{}",
        adapter.logs()
    );
}
