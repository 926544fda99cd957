//! What the HPA scales on counts demand once: a request the dispatcher retries on a second
//! inference pod after the first refused it (503, queue full) is counted by both pods in
//! `inference_requests_total`, but as `attempt="first"` only by the first, and the default
//! adapter rule reads only those.

mod common;

use common::{Server, demo_model, request, sum_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_requests_are_not_counted_twice_as_demand() {
    let dir = tempfile::tempdir().expect("tempdir");
    demo_model(dir.path());
    // One pod that refuses nearly everything sent at once, one with room.
    let tiny = [
        "--max-batch",
        "1",
        "--queue-capacity",
        "1",
        "--max-delay-ms",
        "0",
    ];
    let small = Server::inference(dir.path(), &tiny).await;
    let big = Server::inference(dir.path(), &[]).await;
    let every_refusal_retried = ["--balance", "round-robin", "--retry-budget-percent", "100"];
    let dispatcher = Server::dispatcher(&[&small, &big], &every_refusal_retried).await;

    let zeros = vec!["0"; 3 * 224 * 224].join(",");
    let body = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,3,224,224],"datatype":"FP32","data":[{zeros}]}}]}}"#
    );
    let body = std::sync::Arc::new(body.into_bytes());
    let clients = 8;
    let per_client = 6;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (url, body) = (dispatcher.url.clone(), body.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..per_client {
                    statuses.push(
                        request(&url, "POST", "/v2/models/demo/infer", &body)
                            .await
                            .0,
                    );
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.expect("client"));
    }
    let sent = f64::from(clients * per_client);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let scrape = |server: &Server| {
        let url = server.url.clone();
        async move { request(&url, "GET", "/metrics", b"").await.1 }
    };
    let retries = sum_of(&scrape(&dispatcher).await, "dispatcher_retries_total", &[]);
    let pods = [scrape(&small).await, scrape(&big).await];
    let counted = |labels: &[&str]| -> f64 {
        pods.iter()
            .map(|m| sum_of(m, "inference_requests_total", labels))
            .sum()
    };
    assert!(
        retries > 0.0,
        "the small pod refused nothing; no retry to count"
    );
    assert_eq!(
        counted(&[]),
        sent + retries,
        "every attempt is a request served or refused"
    );
    assert_eq!(
        counted(&["attempt=\"first\""]),
        sent,
        "demand: each client request once"
    );
    assert_eq!(counted(&["attempt=\"retry\""]), retries);
    dispatcher.stop().await;
    small.stop().await;
    big.stop().await;
}
