//! What the e2e crate's tests share.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The repository's root.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Every object of `kubectl kustomize DIR` (relative to the root), as JSON.
pub fn render(dir: &str) -> Vec<Value> {
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/{dir}")])
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "{dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("YAML object"))
        .collect()
}

/// Name of the model [`demo_model`] makes.
pub const DEMO_MODEL: &str = "demo";

/// A 10-class ResNet18-shaped model with random weights in `dir`, imported with the real code.
pub fn demo_model(dir: &std::path::Path) {
    use clap::Parser;
    let onnx = dir.join(format!("{DEMO_MODEL}.onnx"));
    let script = format!("{ROOT}/inference/scripts/make_resnet_onnx.py");
    let made = Command::new("python3")
        .args([&script, "--arch", "resnet18", "--classes", "10", "--out"])
        .arg(&onnx)
        .status()
        .expect("python3 (make deps)");
    assert!(made.success(), "make_resnet_onnx.py failed");
    let labels = dir.join("labels.txt");
    let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
    std::fs::write(&labels, names).expect("labels");
    let argv = ["inference", "import", "--labels"]
        .map(str::to_string)
        .into_iter()
        .chain([labels.display().to_string(), onnx.display().to_string()]);
    let inference::config::Command::Import(args) = inference::config::Cli::parse_from(argv).command
    else {
        unreachable!("argv starts with import")
    };
    inference::commands::import(&args).expect("import");
}

/// A server of ours running in this process on a free port, until [`Server::stop`].
pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// `inference serve --model MODELS EXTRA…`, once ready.
    pub async fn inference(models: &std::path::Path, extra: &[&str]) -> Self {
        use clap::Parser;
        let models = models.display().to_string();
        let argv = ["inference", "serve", "--model", &models]
            .into_iter()
            .chain(extra.iter().copied());
        let inference::config::Command::Serve(args) =
            inference::config::Cli::parse_from(argv).command
        else {
            unreachable!("argv starts with serve")
        };
        Self::start(|listener, stopped| {
            tokio::spawn(inference::server::serve_on(listener, args, stopped))
        })
        .await
    }

    /// `dispatcher --upstreams UPSTREAMS EXTRA…` in front of `upstreams`, once ready.
    pub async fn dispatcher(upstreams: &[&Server], extra: &[&str]) -> Self {
        use clap::Parser;
        let list: Vec<&str> = upstreams
            .iter()
            .map(|u| u.url.trim_start_matches("http://"))
            .collect();
        let list = list.join(",");
        let argv = ["dispatcher", "--upstreams", &list]
            .into_iter()
            .chain(extra.iter().copied());
        let config = dispatcher::config::Config::parse_from(argv);
        Self::start(|listener, stopped| {
            tokio::spawn(dispatcher::server::serve_on(listener, config, stopped))
        })
        .await
    }

    async fn start(
        serve: impl FnOnce(
            tokio::net::TcpListener,
            std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        ) -> tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = serve(
            listener,
            Box::pin(async {
                let _ = stopped.await;
            }),
        );
        for _ in 0..600 {
            if request(&url, "GET", "/readyz", b"").await.0 == 200 {
                return Self { url, stop, task };
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{url} never became ready");
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("task").expect("clean shutdown");
    }
}

/// One HTTP/1.1 request on a new connection: (status, body); status 0 when the connection
/// failed.
pub async fn request(url: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return (0, String::new());
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut answer = Vec::new();
    let exchanged = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.read_to_end(&mut answer).await
    };
    if exchanged.await.is_err() {
        return (0, String::new());
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The sum of every sample of `name` in a Prometheus exposition whose labels contain all of
/// `labels` (`key="value"` strings).
pub fn sum_of(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            series == &name
                || series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter(|(series, _)| labels.iter().all(|l| series.contains(l)))
        .map(|(_, value)| value.parse::<f64>().expect("a number"))
        .sum()
}
