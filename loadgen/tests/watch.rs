//! `--watch deployment/NAME` through the real kube-rs client against a stand-in API server
//! (the only part of the system that cannot run here), reached through a real kubeconfig.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::routing::{get, post};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_the_watched_deployment_land_in_the_series_and_plot() {
    // The "HPA" adds a replica on every read after the first two. The kubeconfig's current
    // context points elsewhere: `--context` must pick the stand-in, as `kubectl --context` would.
    let reads = Arc::new(AtomicU32::new(0));
    let api = Router::new().route(
        "/apis/apps/v1/namespaces/imageclassifier/deployments/inference",
        get(move || {
            let n = reads.fetch_add(1, Ordering::Relaxed);
            async move {
                axum::Json(json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "inference", "namespace": "imageclassifier"},
                    "spec": {"selector": {}, "template": {}},
                    "status": {"replicas": 1 + n.saturating_sub(2), "readyReplicas": 1 + n.saturating_sub(2)},
                }))
            }
        }),
    );
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let api_url = format!("http://{}", api_listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(api_listener, api).await });

    let target = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target_url = format!("http://{}/v1/classify", target.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(
            target,
            Router::new().route("/v1/classify", post(|| async { "{}" })),
        )
        .await
    });

    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {api_url}\n\
             - name: elsewhere\n  cluster:\n    server: http://127.0.0.1:1\n\
             users:\n- name: fake\n  user:\n    token: test\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             - name: elsewhere\n  context:\n    cluster: elsewhere\n    user: fake\n\
             current-context: elsewhere\n"
        ),
    )
    .expect("write kubeconfig");
    let out = dir.path().join("run.json");
    let plot = dir.path().join("run.svg");
    let output = tokio::task::spawn_blocking({
        let (out, plot, kubeconfig, target_url) = (
            out.clone(),
            plot.clone(),
            kubeconfig.clone(),
            target_url.clone(),
        );
        move || {
            Command::new(env!("CARGO_BIN_EXE_loadgen"))
                .env("KUBECONFIG", &kubeconfig)
                .args([
                    "--target",
                    &target_url,
                    "--rate",
                    "20",
                    "--duration",
                    "4s",
                    "--quiet",
                ])
                .args([
                    "--watch",
                    "deployment/inference",
                    "--namespace",
                    "imageclassifier",
                    "--context",
                    "fake",
                ])
                .arg("--out")
                .arg(&out)
                .arg("--plot")
                .arg(&plot)
                .output()
                .expect("run loadgen")
        }
    })
    .await
    .expect("join");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("json")).expect("valid");
    let replicas: Vec<u64> = report["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|r| r["replicas"].as_u64())
        .collect();
    assert!(
        replicas.len() >= 3,
        "a replica count for most seconds: {replicas:?}"
    );
    assert!(
        replicas.windows(2).all(|w| w[0] <= w[1]) && replicas.last() > replicas.first(),
        "rising: {replicas:?}"
    );
    assert!(
        std::fs::read_to_string(&plot)
            .expect("svg")
            .contains("Ready replicas")
    );

    let watch = |deployment: &str, context: &str| {
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .env("KUBECONFIG", &kubeconfig)
            .args(["--target", &target_url, "--rate", "1", "--duration", "1s"])
            .args(["--watch", deployment, "--context", context])
            .output()
            .expect("run")
    };
    let missing = watch("deployment/other", "fake");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("cannot read deployment/other"), "{stderr}");
    let no_context = watch("deployment/inference", "nope");
    assert!(!no_context.status.success());
    let stderr = String::from_utf8_lossy(&no_context.stderr);
    assert!(stderr.contains("--context nope"), "{stderr}");
}
