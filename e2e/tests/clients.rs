//! The inference server and the dispatcher in front of it, checked with the Python clients
//! people use (`e2e/python_clients.py`: urllib, requests, tritonclient), not our own.

use std::path::Path;
use std::process::Command;

use clap::Parser;
use tokio::net::TcpListener;

mod common;

/// Body limit of both servers, room for one image as JSON floats (about 3 MB).
const LIMIT: &str = "8000000";
const MODEL: &str = "demo";

/// A 10-class ResNet18-shaped model with random weights, imported with the real code.
fn model(dir: &Path) {
    let onnx = dir.join(format!("{MODEL}.onnx"));
    let script = format!("{}/inference/scripts/make_resnet_onnx.py", common::ROOT);
    let made = Command::new("python3")
        .args([&script, "--arch", "resnet18", "--classes", "10", "--out"])
        .arg(&onnx)
        .status()
        .expect("python3 (make deps)");
    assert!(made.success(), "make_resnet_onnx.py failed");
    let labels = dir.join("labels.txt");
    std::fs::write(
        &labels,
        (0..10).map(|i| format!("class{i}\n")).collect::<String>(),
    )
    .expect("labels");
    let argv = ["inference", "import", "--labels"].map(str::to_string);
    let argv = argv
        .into_iter()
        .chain([labels.display().to_string(), onnx.display().to_string()]);
    let inference::config::Command::Import(args) = inference::config::Cli::parse_from(argv).command
    else {
        unreachable!("argv starts with import")
    };
    inference::commands::import(&args).expect("import");
}

async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    (listener, url)
}

/// Polls `GET /readyz` until it answers 200.
async fn wait_ready(url: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    for _ in 0..600 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(address).await {
            let probe = b"GET /readyz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
            let mut answer = Vec::new();
            if stream.write_all(probe).await.is_ok()
                && stream.read_to_end(&mut answer).await.is_ok()
                && answer.starts_with(b"HTTP/1.1 200")
            {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{url} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_read_refusals_and_speak_the_open_inference_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    model(dir.path());
    let models = dir.path().display().to_string();

    let (inference_listener, inference_url) = listener().await;
    let argv = [
        "inference",
        "serve",
        "--model",
        &models,
        "--max-body-bytes",
        LIMIT,
    ];
    let inference::config::Command::Serve(args) = inference::config::Cli::parse_from(argv).command
    else {
        unreachable!("argv starts with serve")
    };
    let (stop_inference, stopped) = tokio::sync::oneshot::channel::<()>();
    let inference = tokio::spawn(inference::server::serve_on(
        inference_listener,
        args,
        async {
            let _ = stopped.await;
        },
    ));
    wait_ready(&inference_url).await;

    let (dispatcher_listener, dispatcher_url) = listener().await;
    let upstream = inference_url.trim_start_matches("http://");
    let config = dispatcher::config::Config::parse_from([
        "dispatcher",
        "--upstreams",
        upstream,
        "--max-body-bytes",
        LIMIT,
    ]);
    let (stop_dispatcher, stopped) = tokio::sync::oneshot::channel::<()>();
    let dispatcher = tokio::spawn(dispatcher::server::serve_on(
        dispatcher_listener,
        config,
        async {
            let _ = stopped.await;
        },
    ));
    wait_ready(&dispatcher_url).await;

    let script = format!("{}/e2e/python_clients.py", common::ROOT);
    let argv = [
        script.as_str(),
        "--url",
        &inference_url,
        "--url",
        &dispatcher_url,
        "--model",
        MODEL,
        "--limit",
        LIMIT,
    ]
    .map(str::to_string);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(argv)
            .output()
            .expect("python3")
    })
    .await
    .expect("task");
    let _ = stop_dispatcher.send(());
    let _ = stop_inference.send(());
    dispatcher.await.expect("task").expect("dispatcher");
    inference.await.expect("task").expect("inference");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
