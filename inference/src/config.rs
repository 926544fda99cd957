//! Command-line interface. Every flag can also be set with an `INFERENCE_*` environment
//! variable, which is how the Kubernetes manifests configure the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::spec::{Interpolation, Normalization, Resize};
use crate::model::{DeviceChoice, Precision, Target};

/// ResNet50 (and other ONNX image classifiers) served with burn.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "INFERENCE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (`/v1/classify`, `/v2/...`, `/metrics`).
    Serve(ServeArgs),
    /// Classify image files and print the top classes.
    Classify(ClassifyArgs),
    /// Measure latency and throughput of the model alone at several batch sizes.
    Bench(BenchArgs),
    /// Check an ONNX classifier and write the model description the server loads.
    Import(ImportArgs),
    /// Measure top-1/top-5 accuracy on a labelled dataset (locally or through a server).
    Eval(EvalArgs),
}

/// Where `make model` puts models, and where `--model` looks by default.
pub const DEFAULT_MODELS: &str = "models";

/// Where the model comes from and what runs it; shared by every subcommand that loads one.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A model description (`*.json`, written by `inference import`), a folder of them, or the
    /// name of a model in `./models`.
    #[arg(long, env = "INFERENCE_MODEL", default_value = DEFAULT_MODELS)]
    pub model: PathBuf,
    /// Where the model runs: `cpu` (our native kernels over the weights burn loads; the
    /// fastest CPU path), `flex` (burn's own CPU operations, for comparison), or a GPU when
    /// built with `--features wgpu|cuda`.
    #[arg(long, env = "INFERENCE_DEVICE", value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Float precision of weights and activations. `f16` halves memory traffic on a GPU; it
    /// runs on burn's operations (`--device flex|wgpu|cuda`), the native CPU kernels are f32.
    #[arg(long, env = "INFERENCE_PRECISION", value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl ModelArgs {
    /// Where and how precisely the model runs.
    pub fn target(&self) -> Target {
        Target {
            device: self.device,
            precision: self.precision,
        }
    }
}

/// `inference serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "INFERENCE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Model used when a request names none (`?model=`). With one model loaded, that one.
    #[arg(long, env = "INFERENCE_DEFAULT_MODEL", default_value = "resnet50")]
    pub default_model: String,
    /// Most images per forward pass.
    #[arg(long, env = "INFERENCE_MAX_BATCH", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_batch: u16,
    /// Longest a request waits for others to fill its batch, in milliseconds.
    #[arg(long, env = "INFERENCE_MAX_DELAY_MS", default_value_t = 5)]
    pub max_delay_ms: u64,
    /// Requests allowed to wait for the model; beyond this the server answers 503.
    #[arg(long, env = "INFERENCE_QUEUE_CAPACITY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,
    /// A request not answered after this many milliseconds gets 504.
    #[arg(long, env = "INFERENCE_REQUEST_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "INFERENCE_MAX_BODY_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// On SIGTERM, how long to wait for in-flight requests before exiting anyway, in seconds.
    #[arg(long, env = "INFERENCE_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,
}

impl ServeArgs {
    /// Batching settings derived from the flags.
    pub fn batch_config(&self) -> crate::batcher::BatchConfig {
        crate::batcher::BatchConfig {
            max_batch: usize::from(self.max_batch),
            max_delay: Duration::from_millis(self.max_delay_ms),
            queue_capacity: self.queue_capacity as usize,
        }
    }

    /// Per-request limits derived from the flags.
    pub fn limits(&self) -> crate::state::Limits {
        crate::state::Limits {
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }
}

/// `inference classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Image files (JPEG, PNG, WebP, GIF, BMP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which model of the folder to use (by name); default: the first.
    #[arg(long)]
    pub name: Option<String>,
    /// Classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `inference bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which model of the folder to use (by name); default: the first.
    #[arg(long)]
    pub name: Option<String>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    /// Timed forward passes per batch size.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,
    /// Untimed forward passes first.
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also time each kernel of the native engine over the timed passes and print, per
    /// batch size, where a pass spends its time (milliseconds per pass, kernel by kernel in
    /// the order they run; the pass times then include the timing's own small cost). Compare
    /// with `inference/scripts/bench_ort.py --profile`.
    #[arg(long)]
    pub profile: bool,
}

/// `inference import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The ONNX classifier (input `[N, 3, S, S]`, output `[N, classes]`).
    pub onnx: PathBuf,
    /// Model name in URLs and metrics; default: the file name without extension.
    #[arg(long)]
    pub name: Option<String>,
    /// `imagenet` (built-in ImageNet-1k names) or a label file, one label per line.
    #[arg(long, default_value = "imagenet")]
    pub labels: String,
    /// Side of the square network input.
    #[arg(long, default_value_t = 224)]
    pub input_size: u32,
    /// The shorter side is resized to this before the centre crop (with `--resize
    /// shorter-then-crop`).
    #[arg(long, default_value_t = 256)]
    pub resize_shorter: u32,
    /// How the image is brought to the input size: resize the shorter side then centre-crop
    /// (torchvision's evaluation transform), or squash the whole image to the input size.
    #[arg(long, value_enum, default_value_t = Resize::ShorterThenCrop)]
    pub resize: Resize,
    /// The resampling filter the model was trained with (EfficientNets: bicubic).
    #[arg(long, value_enum, default_value_t = Interpolation::Bilinear)]
    pub interpolation: Interpolation,
    /// Per-channel mean (RGB, in [0, 1] units): `0.485,0.456,0.406` or `0.485 0.456 0.406`.
    #[arg(long, value_delimiter = ',', num_args = 1..=3, default_values_t = [0.485, 0.456, 0.406])]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (RGB), written as --mean is.
    #[arg(long, value_delimiter = ',', num_args = 1..=3, default_values_t = [0.229, 0.224, 0.225])]
    pub std: Vec<f32>,
    /// A named normalisation instead of --mean/--std: imagenet (the default values), inception
    /// ((x − 0.5) / 0.5) or tflite ((x·255 − 127.5) / 128).
    #[arg(long, value_enum, conflicts_with_all = ["mean", "std"])]
    pub normalize: Option<Normalization>,
    /// Backend used to check that the model runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// A folder of photos with known classes (`expected.tsv`: `file<TAB>class|class|…`); the
    /// import fails, writing nothing, unless each photo's top `--verify-top` holds one of its
    /// classes: proof that the weights are trained ones. `inference/photos` has two for
    /// ImageNet models (`make model` uses it).
    #[arg(long, value_name = "DIR")]
    pub verify_with: Option<PathBuf>,
    /// How many of the best classes `--verify-with` looks at.
    #[arg(long, default_value_t = 5, requires = "verify_with", value_parser = clap::value_parser!(u16).range(1..))]
    pub verify_top: u16,
}

/// `inference eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// An ImageFolder tree (`DIR/<class>/<image>`) or a `file,label` CSV/TSV (label: class name,
    /// label id such as an ImageNet synset, or class index).
    #[arg(long)]
    pub dataset: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which model of the folder to evaluate (by name); default: the first.
    #[arg(long)]
    pub name: Option<String>,
    /// Dataset class → model class, one `dataset class<TAB>model label, id or index` per line,
    /// for datasets whose class names differ from the model's labels.
    #[arg(long)]
    pub class_map: Option<PathBuf>,
    /// Classify through a running server (inference or dispatcher) instead of loading the model
    /// here, e.g. `http://localhost:8080`; `--model` then only supplies the label list.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The k of top-k accuracy.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Most images per forward pass (local evaluation).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch_size: u16,
    /// Images being read or classified at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Print the report as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    fn import(args: &[&str]) -> super::ImportArgs {
        let argv = ["inference", "import", "m.onnx"].iter().chain(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Import(args) => args,
            _ => unreachable!("import"),
        }
    }

    #[test]
    fn channel_values_parse_with_commas_or_spaces() {
        let commas = import(&["--mean", "0.5,0.25,0.125", "--std", "1,2,3"]);
        let spaces = import(&["--mean", "0.5", "0.25", "0.125", "--std", "1", "2", "3"]);
        for args in [commas, spaces] {
            assert_eq!(args.mean, [0.5, 0.25, 0.125]);
            assert_eq!(args.std, [1.0, 2.0, 3.0]);
        }
        assert_eq!(import(&[]).mean, [0.485, 0.456, 0.406]);
    }
}
