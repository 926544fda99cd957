//! Shared fixtures: locally generated models (random weights, made with the `onnx` Python
//! package), reference computations, encoded test images and a running server.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use image::{ImageFormat, RgbImage};
use inference::model::InputImage;

/// Labels of the small second model; ten classes so tests can check model-specific labels.
pub const DEMO_LABELS: [&str; 10] = [
    "red", "orange", "yellow", "green", "cyan", "blue", "violet", "magenta", "white", "black",
];

/// Name of the small second model (ResNet18-shaped, 10 classes).
pub const DEMO: &str = "resnet18-demo";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Runs `python3 args…`, panicking with its output when it fails.
pub fn python(args: &[&str]) {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 is installed (make deps)");
    assert!(
        out.status.success(),
        "python3 {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A folder with `resnet50.{onnx,json}` (1000 ImageNet classes) and
/// `resnet18-demo.{onnx,json,labels.txt}` (10 classes), imported with the real `import` code.
/// Made once per test binary.
pub fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(concat!("models-", env!("CARGO_CRATE_NAME")));
        std::fs::create_dir_all(&dir).expect("create fixture folder");
        let generator = scripts().join("make_resnet_onnx.py");
        let generator = generator.to_str().expect("UTF-8 path");
        let r50 = dir.join("resnet50.onnx");
        python(&[
            generator,
            "--arch",
            "resnet50",
            "--seed",
            "1",
            "--out",
            r50.to_str().expect("UTF-8"),
        ]);
        let r18 = dir.join(format!("{DEMO}.onnx"));
        python(&[
            generator,
            "--arch",
            "resnet18",
            "--classes",
            "10",
            "--seed",
            "2",
            "--out",
            r18.to_str().expect("UTF-8"),
        ]);
        let labels = dir.join("demo-labels.txt");
        std::fs::write(&labels, DEMO_LABELS.join("\n")).expect("write labels");
        import(&[r50.to_str().expect("UTF-8")]);
        import(&[
            r18.to_str().expect("UTF-8"),
            "--labels",
            labels.to_str().expect("UTF-8"),
        ]);
        dir
    })
}

/// Runs the built `inference import` command.
pub fn import(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_inference"))
        .arg("import")
        .args(args)
        .output()
        .expect("run inference import");
    assert!(
        out.status.success(),
        "import {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A deterministic, textured RGB image (so resizing has something to get wrong).
pub fn test_image(width: u32, height: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let v = x.wrapping_mul(7 + seed)
            ^ y.wrapping_mul(13)
            ^ (x * y + seed).wrapping_mul(2_654_435_761) >> 24;
        image::Rgb([
            (v & 0xff) as u8,
            ((x + 3 * seed) & 0xff) as u8,
            ((y * 2 + seed) & 0xff) as u8,
        ])
    })
}

/// `image` encoded in `format`.
pub fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode test image");
    out.into_inner()
}

/// Raw little-endian f32 file helpers for exchanging tensors with the Python reference.
pub fn write_f32(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write f32 file");
}

/// Reads a raw little-endian f32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("read f32 file")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Path of the Python reference script.
pub fn reference_script() -> String {
    scripts()
        .join("reference.py")
        .to_str()
        .expect("UTF-8")
        .to_string()
}

/// An in-process server on a free local port, with the fixture models.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Starts `inference serve` with `extra` flags and waits until `/readyz` says ready.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with_models(models(), extra).await
    }

    /// Like [`TestServer::start`], serving the models in `models` instead of the fixtures.
    pub async fn start_with_models(models: &Path, extra: &[&str]) -> Self {
        use clap::Parser;
        let models = models.to_str().expect("UTF-8").to_string();
        let mut argv = vec!["inference", "serve", "--model", &models];
        argv.extend_from_slice(extra);
        let inference::config::Command::Serve(args) =
            inference::config::Cli::parse_from(argv).command
        else {
            unreachable!("argv starts with serve")
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(inference::server::serve_on(listener, args, async {
            let _ = signal.await;
        }));
        wait_ready(&url).await;
        Self {
            url,
            shutdown: Some(shutdown),
            handle,
        }
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        (&mut self.handle)
            .await
            .expect("server task")
            .expect("server result");
    }
}

/// Polls `{url}/readyz` until it answers 200 (model loaded and warmed up), for up to 60 s.
pub async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    loop {
        let ready = client.get(format!("{url}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "server at {url} never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Largest accepted |Δlogit|, relative to the spread of the reference logits. burn and ORT sum
/// the same products in different orders (and ORT folds batch norm into the convolutions), so
/// f32 rounding differs by ~1e-6 relative per layer; across ResNet50's 50 layers that was
/// measured at ~3e-6 of the logit std. 1e-3 leaves a wide margin, yet any wrong operator,
/// padding or weight layout moves logits by a sizeable fraction of their std.
pub const LOGIT_BOUND: f32 = 1e-3;

pub fn std_dev(values: &[f32]) -> f32 {
    let mean = values.iter().sum::<f32>() / values.len() as f32;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32).sqrt()
}

/// The largest `|a − b|` over two equally long rows of values.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "rows of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

pub fn top5(row: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order.truncate(5);
    order
}

/// Random inputs in the normalised range, with a per-image bias so images differ clearly.
pub fn inputs(n: usize, size: u32) -> Vec<InputImage> {
    let mut state = 42u64;
    (0..n)
        .map(|i| InputImage {
            size,
            data: (0..3 * (size * size) as usize)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    ((state >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0 + i as f32 * 0.3
                })
                .collect(),
        })
        .collect()
}

/// ONNX Runtime's output for `batch` on the same file, flattened row-major.
pub fn onnx_runtime_logits(onnx: &std::path::Path, batch: &[InputImage]) -> Vec<f32> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let input = tmp.path().join("input.f32");
    let output = tmp.path().join("output.f32");
    let flat: Vec<f32> = batch.iter().flat_map(|i| i.data.iter().copied()).collect();
    write_f32(&input, &flat);
    python(&[
        &reference_script(),
        "logits",
        onnx.to_str().expect("UTF-8"),
        input.to_str().expect("UTF-8"),
        &batch.len().to_string(),
        &batch[0].size.to_string(),
        output.to_str().expect("UTF-8"),
    ]);
    read_f32(&output)
}
