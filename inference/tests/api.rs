//! The HTTP API against a real server on a local port with real (random-weight) models.

mod common;

use std::time::Duration;

use base64::Engine;
use common::TestServer;
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn jpeg() -> Vec<u8> {
    common::encode(&common::test_image(640, 480, 7), ImageFormat::Jpeg)
}

async fn post(url: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request sent")
}

/// A 4xx/5xx with a JSON `error` that mentions `needle`.
async fn assert_error(response: reqwest::Response, status: StatusCode, needle: &str) {
    assert_eq!(response.status(), status);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("application/json"),
        "error bodies are JSON"
    );
    let body: Value = response.json().await.expect("JSON body");
    let message = body["error"].as_str().expect("an `error` string");
    assert!(
        message.to_lowercase().contains(needle),
        "'{message}' should mention '{needle}'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_returns_sorted_top_k_with_labels_and_timings() {
    let server = TestServer::start(&[]).await;
    let url = format!("{}/v1/classify", server.url);
    let response = post(&url, "image/jpeg", jpeg()).await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers().get("x-request-id").cloned();
    assert!(request_id.is_some(), "a request id is generated and echoed");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["model"], "resnet50");
    let predictions = body["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 5);
    let labels =
        inference::model::spec::parse_labels(include_str!("../src/model/imagenet_classes.tsv"));
    let mut last = f64::INFINITY;
    let mut total = 0.0;
    for p in predictions {
        let id = p["class_id"].as_u64().expect("class id") as usize;
        assert_eq!(p["label"], labels[id].as_str());
        let score = p["score"].as_f64().expect("score");
        assert!(score <= last, "sorted by descending score");
        last = score;
        total += score;
    }
    assert!(
        total > 0.0 && total <= 1.0 + 1e-5,
        "softmax probabilities: {total}"
    );
    for key in ["decode", "queue", "inference", "total"] {
        assert!(body["timing_ms"][key].as_f64().expect(key) >= 0.0);
    }
    assert!(body["timing_ms"]["inference"].as_f64() > Some(0.0));

    // Same image as multipart: same answer. A supplied request id is echoed.
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(jpeg()).file_name("cat.jpg"),
    );
    let response = reqwest::Client::new()
        .post(format!("{url}?top_k=3"))
        .header("x-request-id", "abc-123")
        .multipart(form)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let multipart: Value = response.json().await.expect("JSON");
    assert_eq!(multipart["predictions"].as_array().map(Vec::len), Some(3));
    assert_eq!(multipart["predictions"][0], body["predictions"][0]);

    // The second model, chosen per request, answers with its own labels.
    let response = post(
        &format!("{url}?model={}&top_k=10", common::DEMO),
        "image/png",
        common::encode(&common::test_image(300, 200, 1), ImageFormat::Png),
    )
    .await;
    assert_eq!(response.status(), 200);
    let demo: Value = response.json().await.expect("JSON");
    assert_eq!(demo["model"], common::DEMO);
    let mut names: Vec<&str> = demo["predictions"]
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["label"].as_str().expect("label"))
        .collect();
    names.sort_unstable();
    let mut expected = common::DEMO_LABELS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let server = TestServer::start(&["--max-body-bytes", "1000000"]).await;
    let url = format!("{}/v1/classify", server.url);
    let image = jpeg();
    assert_error(
        post(&url, "image/jpeg", vec![]).await,
        StatusCode::BAD_REQUEST,
        "empty",
    )
    .await;
    assert_error(
        post(&url, "image/jpeg", image[..image.len() / 3].to_vec()).await,
        StatusCode::BAD_REQUEST,
        "decode",
    )
    .await;
    assert_error(
        post(&url, "text/plain", b"hello".to_vec()).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "content type",
    )
    .await;
    assert_error(
        post(&url, "application/octet-stream", b"just some text".to_vec()).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "format",
    )
    .await;
    let tiff = b"II*\x00\x08\x00\x00\x00rest of a TIFF file".to_vec();
    assert_error(
        post(&url, "application/octet-stream", tiff).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "format",
    )
    .await;
    assert_error(
        post(&url, "image/jpeg", vec![0xFF; 1_200_000]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "limit",
    )
    .await;
    assert_error(
        post(&format!("{url}?top_k=0"), "image/jpeg", image.clone()).await,
        StatusCode::BAD_REQUEST,
        "top_k",
    )
    .await;
    assert_error(
        post(&format!("{url}?top_k=1001"), "image/jpeg", image.clone()).await,
        StatusCode::BAD_REQUEST,
        "top_k",
    )
    .await;
    assert_error(
        post(&format!("{url}?top_k=many"), "image/jpeg", image.clone()).await,
        StatusCode::BAD_REQUEST,
        "top_k",
    )
    .await;
    assert_error(
        post(&format!("{url}?model=nope"), "image/jpeg", image.clone()).await,
        StatusCode::NOT_FOUND,
        "unknown model",
    )
    .await;
    let form = reqwest::multipart::Form::new().text("picture", "x");
    let response = reqwest::Client::new()
        .post(&url)
        .multipart(form)
        .send()
        .await
        .expect("sent");
    assert_error(response, StatusCode::BAD_REQUEST, "image").await;
    // Decompression bomb: a BMP header claiming 20000×20000 pixels.
    let mut bomb = b"BM".to_vec();
    bomb.extend_from_slice(&[0u8; 8]);
    bomb.extend_from_slice(&54u32.to_le_bytes());
    bomb.extend_from_slice(&40u32.to_le_bytes());
    bomb.extend_from_slice(&20_000u32.to_le_bytes());
    bomb.extend_from_slice(&20_000u32.to_le_bytes());
    bomb.extend_from_slice(&1u16.to_le_bytes());
    bomb.extend_from_slice(&24u16.to_le_bytes());
    bomb.extend_from_slice(&[0u8; 24]);
    assert_error(
        post(&url, "image/bmp", bomb).await,
        StatusCode::BAD_REQUEST,
        "too large",
    )
    .await;
    let missing = reqwest::get(format!("{}/v1/nothing", server.url))
        .await
        .expect("sent");
    assert_error(missing, StatusCode::NOT_FOUND, "no route").await;

    let wrong_method = reqwest::get(&url).await.expect("sent");
    assert_error(wrong_method, StatusCode::METHOD_NOT_ALLOWED, "not allowed").await;

    // Still serving, and the failures were counted by status code.
    assert_eq!(post(&url, "image/jpeg", image).await.status(), 200);
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    for line in [
        "inference_requests_total{attempt=\"first\",code=\"200\"} 1",
        "inference_requests_total{attempt=\"first\",code=\"400\"}",
        "inference_requests_total{attempt=\"first\",code=\"413\"} 1",
        "inference_requests_total{attempt=\"first\",code=\"415\"} 3",
        "inference_requests_total{attempt=\"first\",code=\"404\"} 1",
    ] {
        assert!(
            metrics.contains(line),
            "metrics should contain {line}:\n{metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_inference_protocol_v2() {
    let server = TestServer::start(&[]).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", server.url)).send();
    assert_eq!(get("/v2/health/live").await.expect("sent").status(), 200);
    assert_eq!(get("/v2/health/ready").await.expect("sent").status(), 200);
    let ready: Value = get("/v2/models/resnet50/ready")
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(ready["ready"], true);
    let meta: Value = get("/v2/models/resnet50")
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(meta["name"], "resnet50");
    assert_eq!(meta["platform"], "onnx-native", "which engine runs it");
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 3, 224, 224]));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 1000]));
    assert_error(
        get("/v2/models/nope").await.expect("sent"),
        StatusCode::NOT_FOUND,
        "unknown model",
    )
    .await;

    // BYTES: two encoded images in one request.
    let b64 = base64::engine::general_purpose::STANDARD;
    let images = [
        jpeg(),
        common::encode(&common::test_image(200, 300, 3), ImageFormat::Png),
    ];
    let request = json!({
        "id": "req-1",
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                    "data": images.iter().map(|i| b64.encode(i)).collect::<Vec<_>>()}],
    });
    let infer = format!("{}/v2/models/resnet50/infer", server.url);
    let response = client
        .post(&infer)
        .json(&request)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["model_name"], "resnet50");
    assert_eq!(body["id"], "req-1");
    assert_eq!(body["outputs"][0]["shape"], json!([2, 1000]));
    let bytes_logits: Vec<f64> =
        serde_json::from_value(body["outputs"][0]["data"].clone()).expect("floats");
    assert_eq!(bytes_logits.len(), 2000);

    // FP32: the first image preprocessed by the library gives the same logits.
    let model = inference::model::Classifier::load(
        &common::models().join("resnet50.json"),
        inference::model::DeviceChoice::Cpu,
    )
    .expect("load");
    let tensor = model.preprocess(&images[0]).expect("preprocess");
    let request = json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": tensor.data}]});
    let body: Value = client
        .post(&infer)
        .json(&request)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let fp32_logits: Vec<f64> =
        serde_json::from_value(body["outputs"][0]["data"].clone()).expect("floats");
    assert_eq!(fp32_logits.len(), 1000);
    let worst = fp32_logits
        .iter()
        .zip(&bytes_logits[..1000])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "FP32 and BYTES paths disagree by {worst}");

    let bad_shape = json!({"inputs": [{"name": "input", "shape": [1, 3, 100, 100], "datatype": "FP32", "data": [0.0]}]});
    assert_error(
        client
            .post(&infer)
            .json(&bad_shape)
            .send()
            .await
            .expect("sent"),
        StatusCode::BAD_REQUEST,
        "shape",
    )
    .await;
    let bad_type =
        json!({"inputs": [{"name": "input", "shape": [1], "datatype": "INT8", "data": [1]}]});
    assert_error(
        client
            .post(&infer)
            .json(&bad_type)
            .send()
            .await
            .expect("sent"),
        StatusCode::BAD_REQUEST,
        "datatype",
    )
    .await;
    let bad_b64 =
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]});
    assert_error(
        client
            .post(&infer)
            .json(&bad_b64)
            .send()
            .await
            .expect("sent"),
        StatusCode::BAD_REQUEST,
        "base64",
    )
    .await;
    let not_json = client
        .post(&infer)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("sent");
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    server.stop().await;
}

async fn histogram_count(url: &str, name: &str) -> (f64, f64) {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    let value = |suffix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}_{suffix} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}_{suffix} missing in\n{text}"))
    };
    (value("count"), value("sum"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_together() {
    // A generous delay makes the grouping deterministic: all 8 arrive within it.
    let server = TestServer::start(&["--max-batch", "8", "--max-delay-ms", "400"]).await;
    let url = format!("{}/v1/classify?model={}", server.url, common::DEMO);
    let image = common::encode(&common::test_image(224, 224, 9), ImageFormat::Png);
    let requests = (0..8).map(|_| owned_post(url.clone(), image.clone()));
    let responses = futures_join_all(requests).await;
    for r in responses {
        assert_eq!(r.status(), 200);
    }
    let (executions, images) = histogram_count(&server.url, "inference_batch_size").await;
    assert_eq!(images, 8.0, "every image went through the model once");
    assert!(
        executions <= 3.0,
        "8 concurrent requests took {executions} forward passes"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_retry_after_and_late_requests_time_out() {
    // One request at a time, one waiting: a burst of 12 must see 503s, never hangs or 500s.
    let server = TestServer::start(&[
        "--max-batch",
        "1",
        "--max-delay-ms",
        "0",
        "--queue-capacity",
        "1",
    ])
    .await;
    let url = format!("{}/v1/classify", server.url);
    let image = common::encode(&common::test_image(224, 224, 2), ImageFormat::Png);
    let responses = futures_join_all((0..12).map(|_| owned_post(url.clone(), image.clone()))).await;
    let mut ok = 0;
    let mut refused = 0;
    for r in responses {
        match r.status() {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    r.headers().contains_key("retry-after"),
                    "503 carries Retry-After"
                );
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    server.stop().await;

    // A deadline shorter than one ResNet50 forward pass: 504 with a JSON error.
    let server = TestServer::start(&["--request-timeout-ms", "5"]).await;
    let response = post(&format!("{}/v1/classify", server.url), "image/png", image).await;
    assert_error(response, StatusCode::GATEWAY_TIMEOUT, "deadline").await;
    server.stop().await;
}

/// A PNG upload that owns its arguments, so it can run on another task.
async fn owned_post(url: String, image: Vec<u8>) -> reqwest::Response {
    post(&url, "image/png", image).await
}

/// Joins futures concurrently without pulling in the `futures` crate.
async fn futures_join_all<F: std::future::Future<Output = reqwest::Response> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<reqwest::Response> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn not_ready_until_models_are_loaded() {
    use tower::ServiceExt;
    let state = inference::state::AppState::new(
        std::sync::Arc::new(inference::metrics::Metrics::new()),
        inference::state::Limits {
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(1),
        },
    );
    let app = inference::api::router(state);
    let request = |path: &str| {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let ready = app
        .clone()
        .oneshot(request("/readyz"))
        .await
        .expect("response");
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    let live = app.oneshot(request("/healthz")).await.expect("response");
    assert_eq!(live.status(), 200);
}
