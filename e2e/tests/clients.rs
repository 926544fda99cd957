//! The inference server and the dispatcher in front of it, checked with the Python clients
//! people use (`e2e/python_clients.py`: urllib, requests, tritonclient), not our own.

use std::process::Command;

mod common;

use common::{DEMO_MODEL, ROOT, Server, demo_model};

/// Body limit of both servers, room for one image as JSON floats (about 3 MB).
const LIMIT: &str = "8000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_read_refusals_and_speak_the_open_inference_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    demo_model(dir.path());
    let limit = ["--max-body-bytes", LIMIT];
    let inference = Server::inference(dir.path(), &limit).await;
    let dispatcher = Server::dispatcher(&[&inference], &limit).await;

    let argv = [
        format!("{ROOT}/e2e/python_clients.py"),
        "--url".into(),
        inference.url.clone(),
        "--url".into(),
        dispatcher.url.clone(),
        "--model".into(),
        DEMO_MODEL.into(),
        "--limit".into(),
        LIMIT.into(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(argv)
            .output()
            .expect("python3")
    })
    .await
    .expect("task");
    dispatcher.stop().await;
    inference.stop().await;
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
