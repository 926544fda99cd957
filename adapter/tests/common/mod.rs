//! Test harness: a small exporter, a real Prometheus scraping it, the `metrics-adapter` binary,
//! and real `kubectl` pointed straight at the adapter.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use serde_json::Value;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Per-pod series the exporter serves: (pod, tier, requests per second, in-flight gauge).
pub const PODS: &[(&str, &str, f64, f64)] = &[
    ("inference-a", "gold", 4.0, 3.0),
    ("inference-b", "silver", 10.0, 7.0),
    ("inference-c.x", "silver", 2.0, 5.0),
];

/// The namespace every exported series is in.
pub const NAMESPACE: &str = "imageclassifier";

/// One exported pod: name, tier label, requests per second, in-flight gauge.
pub type Pod = (String, String, f64, f64);

/// An exporter whose counters grow at fixed rates ([`PODS`] by default); `late` adds a series
/// that did not exist at start.
pub struct Exporter {
    pub address: String,
    pub late: Arc<AtomicBool>,
}

impl Exporter {
    pub async fn start() -> Self {
        let pods = PODS
            .iter()
            .map(|(pod, tier, rate, in_flight)| {
                ((*pod).to_owned(), (*tier).to_owned(), *rate, *in_flight)
            })
            .collect();
        Self::with_pods(pods).await
    }

    /// An exporter for these pods.
    pub async fn with_pods(pods: Vec<Pod>) -> Self {
        let started = Instant::now();
        let late = Arc::new(AtomicBool::new(false));
        let show_late = late.clone();
        let pods = Arc::new(pods);
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let elapsed = started.elapsed().as_secs_f64();
                let late = show_late.load(Ordering::Relaxed);
                let pods = pods.clone();
                async move { exposition(&pods, elapsed, late) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind exporter");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { address, late }
    }
}

fn exposition(pods: &[Pod], elapsed: f64, late: bool) -> String {
    let mut text = String::from("# TYPE inference_requests_total counter\n");
    for (pod, tier, rate, _) in pods {
        text += &format!(
            "inference_requests_total{{namespace=\"{NAMESPACE}\",pod=\"{pod}\",app=\"inference\",tier=\"{tier}\",code=\"200\",attempt=\"first\"}} {}\n",
            (rate * elapsed).floor()
        );
        // Retries a dispatcher made to this pod: served here, but not new demand, so the
        // default rule leaves them out (ten times the demand, to make a mistake obvious).
        text += &format!(
            "inference_requests_total{{namespace=\"{NAMESPACE}\",pod=\"{pod}\",app=\"inference\",tier=\"{tier}\",code=\"200\",attempt=\"retry\"}} {}\n",
            (10.0 * rate * elapsed).floor()
        );
    }
    text += "# TYPE inference_in_flight_requests gauge\n";
    for (pod, tier, _, in_flight) in pods {
        text += &format!(
            "inference_in_flight_requests{{namespace=\"{NAMESPACE}\",pod=\"{pod}\",app=\"inference\",tier=\"{tier}\"}} {in_flight}\n"
        );
    }
    text += "# TYPE dispatcher_requests_total counter\n";
    text += &format!(
        "dispatcher_requests_total{{namespace=\"{NAMESPACE}\",pod=\"dispatcher-0\",app=\"dispatcher\",code=\"200\"}} {}\n",
        (16.0 * elapsed).floor()
    );
    if late {
        text += "# TYPE late_jobs_total counter\n";
        text += &format!(
            "late_jobs_total{{namespace=\"{NAMESPACE}\",pod=\"inference-a\"}} {}\n",
            (elapsed * 1.0).floor()
        );
    }
    text
}

/// A real Prometheus (the Debian package's binary) scraping the exporter every second.
pub struct Prometheus {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Prometheus {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn start(exporter: &Exporter, dir: &Path) -> Self {
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n- job_name: exporter\n  honor_labels: true\n  static_configs:\n  - targets: ['{}']\n",
            exporter.address
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let mut prometheus = Self {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        prometheus.restart().await;
        prometheus
    }

    /// Starts (again) on the same port and storage.
    pub async fn restart(&mut self) {
        let binary = which_prometheus();
        let log = std::fs::File::create(self.dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                self.dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (apt-get install prometheus)");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let ready = format!("{}/-/ready", self.url());
        wait_for("Prometheus ready", Duration::from_secs(30), || {
            let client = client.clone();
            let ready = ready.clone();
            async move {
                client
                    .get(&ready)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An instant query, straight to Prometheus: `(labels, timestamp, value)` per sample.
    pub async fn query(&self, promql: &str) -> Vec<(Value, f64, f64)> {
        let response: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("query Prometheus")
            .json()
            .await
            .expect("JSON");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|sample| {
                let ts = sample["value"][0].as_f64().expect("timestamp");
                let value: f64 = sample["value"][1]
                    .as_str()
                    .expect("value")
                    .parse()
                    .expect("number");
                (sample["metric"].clone(), ts, value)
            })
            .collect()
    }

    /// Waits until the 30 s rates are within 10 % of the exporter's nominal rates (rate()
    /// divides by the whole range, so this takes about 30 s after the first scrape).
    pub async fn wait_for_steady_rates(&self) {
        wait_for("steady rates", Duration::from_secs(60), || async {
            let samples = self
                .query("rate(inference_requests_total{attempt=\"first\"}[30s])")
                .await;
            samples.len() == PODS.len()
                && samples.iter().all(|(labels, _, value)| {
                    PODS.iter()
                        .find(|p| labels["pod"] == p.0)
                        .is_some_and(|p| (value - p.2).abs() <= p.2 * 0.1)
                })
        })
        .await;
    }

    /// Waits until every pod has enough samples for a 30 s rate.
    pub async fn wait_for_rates(&self) {
        self.wait_for_series(PODS.len()).await;
    }

    /// Waits until `pods` pods have enough samples for a 30 s rate.
    pub async fn wait_for_series(&self, pods: usize) {
        wait_for("rates in Prometheus", Duration::from_secs(30), || async {
            self.query("rate(inference_requests_total{attempt=\"first\"}[30s])")
                .await
                .len()
                == pods
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which_prometheus() -> PathBuf {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("prometheus"))
}

/// The `metrics-adapter` binary, running until dropped (then sent SIGTERM).
pub struct Adapter {
    pub port: u16,
    child: Child,
    pub log: PathBuf,
}

impl Adapter {
    /// Starts the binary with `args` (plus `--listen`) and waits for `/healthz`.
    pub async fn start(args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Self {
        let port = free_port();
        let log = log_dir.join(format!("adapter-{port}.log"));
        // Integration tests get the binary from cargo; the benchmark passes ADAPTER_BIN.
        let binary = std::env::var("ADAPTER_BIN")
            .ok()
            .or(option_env!("CARGO_BIN_EXE_metrics-adapter").map(str::to_owned))
            .expect("ADAPTER_BIN: path of the metrics-adapter binary");
        let child = Command::new(binary)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,adapter=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start metrics-adapter");
        let adapter = Self { port, child, log };
        let client = insecure_client();
        let health = adapter.url("/healthz");
        wait_for("adapter /healthz", Duration::from_secs(20), || {
            let client = client.clone();
            let health = health.clone();
            async move {
                client
                    .get(&health)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        adapter
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (for reading its memory use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("adapter exits")
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that accepts the adapter's self-signed certificate.
pub fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// GET, returning status and JSON body.
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{url}: {status} non-JSON body ({content_type}): {text}"));
    (status, body)
}

/// Polls `check` every 200 ms until it holds, panicking after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A kubeconfig (`DIR/kubeconfig`) for the kube-rs client inside the adapter, pointing at a
/// stand-in API server at `api_url` (plain HTTP, a fixed token).
pub fn write_kubeconfig(dir: &Path, api_url: &str) -> PathBuf {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {api_url}\n\
             users:\n- name: adapter\n  user:\n    token: adapter-sa\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: adapter\n\
             current-context: fake\n"
        ),
    )
    .expect("kubeconfig");
    kubeconfig
}

/// Runs real kubectl against the adapter through a kubeconfig that points straight at it.
pub fn kubectl_get_raw(adapter: &Adapter, dir: &Path, path: &str) -> (bool, String, String) {
    let kubeconfig = dir.join(format!("kubeconfig-{}", adapter.port));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: adapter\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: local\n  user:\n    token: not-checked-with-authn-none\ncontexts:\n- name: adapter\n  context:\n    cluster: adapter\n    user: local\n\
             current-context: adapter\n",
            adapter.port
        ),
    )
    .expect("kubeconfig");
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", path])
        .output()
        .expect("run kubectl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
