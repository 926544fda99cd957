//! The `dispatcher` binary as deployed: flags, and SIGTERM under load.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;

const BIN: &str = env!("CARGO_BIN_EXE_dispatcher");

#[test]
fn an_upstream_source_is_required_and_bad_addresses_are_named() {
    let out = Command::new(BIN).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--upstreams") && stderr.contains("--service"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--upstreams", "nohost"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'nohost' is not host:port"));

    let out = Command::new(BIN)
        .args(["--upstreams", "127.0.0.1:1", "--workers", "0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--workers"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_accepted_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("addr").to_string();
    let app = Router::new().route(
        "/v1/classify",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "ok"
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        // One worker thread: the drain must not depend on a second thread being free.
        .args([
            "--listen",
            &listen,
            "--upstreams",
            &upstream,
            "--workers",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dispatcher");
    let url = format!("http://{listen}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client
        .get(format!("{url}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dispatcher never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests: Vec<_> = (0..10)
        .map(|_| tokio::spawn(client.post(format!("{url}/v1/classify")).body("img").send()))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    for r in requests {
        let response = r
            .await
            .expect("task")
            .expect("accepted requests are answered");
        assert_eq!(response.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "dispatcher did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}
