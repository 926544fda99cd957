//! Image classifiers: an ONNX graph loaded by burn (run by our native CPU kernels or by burn's
//! operations), plus the description that says how to feed it and how to name its outputs. Everything above this module works with [`Classifier`] and
//! never assumes ResNet50's input size, normalisation or label set.

mod cpu;
pub mod graph;
pub mod preprocess;
pub mod spec;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::{Device, FloatDType};
use sha2::{Digest, Sha256};

pub use cpu::profile;
pub use graph::{GraphError, Kernels, Network};
pub use preprocess::{InputImage, PreprocessError};
pub use spec::{ModelSpec, Preprocess, SpecError};

/// Where the model runs, chosen at start-up (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The CPU, with our native channels-last kernels (fused convolutions, both cores at any
    /// batch size) over the weights burn loads; burn's `flex` operations for a graph they do
    /// not cover. Always available, and the fastest CPU path.
    #[default]
    Cpu,
    /// The CPU with burn's own `flex` operations throughout: the engine before the native
    /// kernels, for comparison and as an escape hatch.
    Flex,
    /// Any GPU through wgpu (Vulkan/Metal/DX12). Needs the `wgpu` cargo feature.
    Wgpu,
    /// NVIDIA GPU through CUDA. Needs the `cuda` cargo feature.
    Cuda,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

impl DeviceChoice {
    /// The burn backend that holds the weights (and runs the operations unless our native
    /// kernels do).
    pub fn burn_backend(self) -> &'static str {
        match self {
            Self::Cpu | Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    /// Opens the device, or explains which cargo feature the binary was built without.
    pub fn open(self) -> Result<Device, ModelError> {
        match self {
            Self::Cpu | Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns, reason = "reachable when a GPU feature is off")]
            other => Err(ModelError::DeviceNotBuilt(other)),
        }
    }
}

/// Float precision of the weights and activations (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats: exact parity with ONNX Runtime. Every device.
    #[default]
    F32,
    /// 16-bit floats: half the memory traffic, for GPUs; logits move by ~3 % of their spread.
    /// burn's operations only (`--device flex|wgpu|cuda`).
    F16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        })
    }
}

/// Where and how precisely a model runs (`--device`, `--precision`). A bare [`DeviceChoice`]
/// converts to it at f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Target {
    pub device: DeviceChoice,
    pub precision: Precision,
}

impl From<DeviceChoice> for Target {
    fn from(device: DeviceChoice) -> Self {
        Self {
            device,
            precision: Precision::F32,
        }
    }
}

impl Target {
    /// Who runs the operations: our native kernels for `cpu` at f32, burn's otherwise.
    fn kernels(self) -> Result<Kernels, ModelError> {
        match (self.device, self.precision) {
            (DeviceChoice::Cpu, Precision::F32) => Ok(Kernels::Native),
            (DeviceChoice::Cpu, Precision::F16) => Err(ModelError::Precision(self.precision)),
            (_, Precision::F32) => Ok(Kernels::Burn {
                dtype: FloatDType::F32,
            }),
            (_, Precision::F16) => Ok(Kernels::Burn {
                dtype: FloatDType::F16,
            }),
        }
    }
}

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The description file is wrong.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The ONNX graph cannot be run.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The ONNX file is not the one the description pins.
    #[error("{path} has sha256 {actual}, but the model description expects {expected}")]
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },
    /// The label list does not match the number of outputs.
    #[error("model '{model}' has {outputs} outputs but {labels} labels")]
    Labels {
        model: String,
        outputs: usize,
        labels: usize,
    },
    /// No model description found where `--model` points.
    #[error("no model found at {0}: run `make model` (or `make model OFFLINE=1`) first")]
    NotFound(String),
    /// The native CPU kernels only compute in f32.
    #[error(
        "--precision {0} runs on burn's operations: use --device flex (CPU), wgpu or cuda, \
         or --precision f32 with --device cpu"
    )]
    Precision(Precision),
    /// The binary lacks the backend.
    #[error("device '{0}' is not built into this binary: rebuild with `--features {0}`")]
    DeviceNotBuilt(DeviceChoice),
    /// An input does not have the shape the model expects.
    #[error("input has {actual} values, the model expects 3×{size}×{size} = {expected}")]
    InputSize {
        size: u32,
        expected: usize,
        actual: usize,
    },
}

/// A loaded classifier: graph, preprocessing and labels.
#[derive(Debug)]
pub struct Classifier {
    spec: ModelSpec,
    labels: Vec<String>,
    network: Network,
    target: Target,
}

/// One class and its score.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// Index in the model's output.
    pub class_id: usize,
    /// Human-readable class name.
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

impl Classifier {
    /// Loads the model a description names and checks it end to end with one inference
    /// (which also warms the backend up, so the first request is not slow).
    pub fn load(spec_path: &Path, target: impl Into<Target>) -> Result<Self, ModelError> {
        let (spec, dir) = ModelSpec::read(spec_path)?;
        let onnx = dir.join(&spec.onnx);
        if let Some(expected) = &spec.sha256 {
            verify_sha256(&onnx, expected)?;
        }
        let labels = spec.load_labels(&dir)?;
        Self::from_parts(spec, &onnx, labels, target)
    }

    /// Builds a classifier from a spec whose ONNX file is at `onnx`.
    pub fn from_parts(
        spec: ModelSpec,
        onnx: &Path,
        labels: Vec<String>,
        target: impl Into<Target>,
    ) -> Result<Self, ModelError> {
        let target = target.into();
        let kernels = target.kernels()?;
        let device = target.device.open()?;
        let image_size = spec.preprocess.input_size as usize;
        let network = Network::load(onnx, &device, kernels, image_size)?;
        let classifier = Self {
            spec,
            labels,
            network,
            target,
        };
        let size = classifier.spec.preprocess.input_size;
        let blank = InputImage {
            size,
            data: vec![0.0; 3 * (size * size) as usize],
        };
        let outputs = classifier.infer(&[blank])?.pop().map_or(0, |row| row.len());
        if outputs != classifier.labels.len() {
            return Err(ModelError::Labels {
                model: classifier.spec.name.clone(),
                outputs,
                labels: classifier.labels.len(),
            });
        }
        Ok(classifier)
    }

    /// The model's name in URLs and metrics.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The description it was loaded from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Class names, indexed by output position.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The graph (input/output names for the Open Inference Protocol).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The device the model runs on.
    pub fn device_choice(&self) -> DeviceChoice {
        self.target.device
    }

    /// The float precision it computes in.
    pub fn precision(&self) -> Precision {
        self.target.precision
    }

    /// What runs the operations (`inference_model_info{backend}`): `native` for our CPU
    /// kernels, otherwise burn's backend (`flex`, `wgpu`, `cuda`).
    pub fn backend(&self) -> &'static str {
        if self.network.is_native() {
            "native"
        } else {
            self.target.device.burn_backend()
        }
    }

    /// Decodes and normalises one encoded image for this model.
    pub fn preprocess(&self, bytes: &[u8]) -> Result<InputImage, PreprocessError> {
        preprocess::preprocess(bytes, &self.spec.preprocess)
    }

    /// Runs one forward pass over a batch and returns one output row per image.
    pub fn infer(&self, batch: &[InputImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        let size = self.spec.preprocess.input_size;
        let per_image = 3 * (size * size) as usize;
        let mut flat = Vec::with_capacity(per_image * batch.len());
        for image in batch {
            if image.data.len() != per_image {
                return Err(ModelError::InputSize {
                    size,
                    expected: per_image,
                    actual: image.data.len(),
                });
            }
            flat.extend_from_slice(&image.data);
        }
        let s = size as usize;
        let (values, outputs) = self.network.run(flat, [batch.len(), 3, s, s])?;
        Ok(values.chunks(outputs.max(1)).map(<[f32]>::to_vec).collect())
    }

    /// Turns one output row into the `top_k` most likely classes, scores as probabilities.
    pub fn top_k(&self, row: &[f32], k: usize) -> Vec<Prediction> {
        let probabilities = if self.network.ends_with_softmax() {
            row.to_vec()
        } else {
            softmax(row)
        };
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        order
            .into_iter()
            .take(k)
            .map(|class_id| Prediction {
                class_id,
                label: self.labels[class_id].clone(),
                score: probabilities[class_id],
            })
            .collect()
    }
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, SpecError> {
    let mut file = std::fs::File::open(path).map_err(|error| SpecError::Io {
        path: path.display().to_string(),
        error,
    })?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|error| SpecError::Io {
        path: path.display().to_string(),
        error,
    })?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn verify_sha256(path: &Path, expected: &str) -> Result<(), ModelError> {
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::Checksum {
            path: path.display().to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// The description files `--model` points at: a description file, or every `*.json` in a
/// folder (sorted by name, so the order is stable).
pub fn find_specs(path: &Path) -> Result<Vec<PathBuf>, ModelError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries =
        std::fs::read_dir(path).map_err(|_| ModelError::NotFound(path.display().to_string()))?;
    let mut specs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    specs.sort();
    if specs.is_empty() {
        return Err(ModelError::NotFound(path.display().to_string()));
    }
    Ok(specs)
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, 2.0, 12.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.999);
        assert!(p[1] > p[2] && p[2] > p[0]);
        // Large logits must not overflow to NaN.
        let big = softmax(&[1000.0, 999.0]);
        assert!((big[0] - 0.731_058_6).abs() < 1e-5, "{big:?}");
    }

    #[test]
    fn missing_gpu_feature_is_explained() {
        #[cfg(not(feature = "cuda"))]
        {
            let err = DeviceChoice::Cuda.open().expect_err("cuda is not built in");
            assert!(err.to_string().contains("--features cuda"), "{err}");
        }
        assert!(DeviceChoice::Cpu.open().is_ok());
    }

    #[test]
    fn empty_model_folder_says_how_to_make_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = find_specs(dir.path()).expect_err("no specs");
        assert!(err.to_string().contains("make model"), "{err}");
    }
}
