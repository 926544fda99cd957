//! An ONNX image-classifier graph turned into operations at load time.
//!
//! burn's ONNX importer (`burn-onnx`) generates Rust code from a model file, which would make
//! the model a build input: a fresh clone could not compile without the 100 MB ResNet50 file,
//! and every new model would need a rebuild. We use the same importer front end (`onnx-ir`,
//! which parses the file, infers types and lifts constants) and instantiate operations from
//! its typed nodes when the server starts. Nothing about a particular model is compiled in.
//!
//! Where things happen, in the order a file goes through them:
//! - `rewrite`: the protobuf itself, before onnx-ir reads it: shape arithmetic evaluated
//!   for the input size, exporter idioms (Pad before Conv, ReduceMean as pooling, Reshape as
//!   flatten, ConvNeXt's channels-last blocks channels-first) rewritten, external weights
//!   read in.
//! - `import`: each onnx-ir node translated into a step (where an ONNX operator is supported).
//! - `passes`: steps rewritten for speed whatever runs them (SiLU and GELU joined into one
//!   activation, a LayerNorm between two Transposes into one over the channels, batch norms
//!   and per-channel products folded into convolutions, convolutions split for two
//!   threads).
//! - the engines: our native CPU kernels ([`super::cpu`], the default on the CPU) or burn's
//!   operations (`burn_ops`: GPUs, `--device flex`, graphs the native kernels do not cover).
//!
//! The supported operator set covers convolutional classifiers (ResNet, VGG, MobileNet-style
//! graphs, ConvNeXt): convolution, batch and layer normalisation, pooling, element-wise
//! activations and arithmetic, flatten/reshape, linear layers and softmax. Anything else is refused at load
//! time with the operator and node named, never at request time.

mod burn_ops;
mod import;
mod passes;
mod rewrite;
mod schedule;
mod step;

use std::path::Path;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use onnx_ir::OnnxGraphBuilder;

use super::cpu::Plan;
use burn_ops::BurnGraph;
use import::{Builder, Imported};
pub use rewrite::Rewrites;
pub(crate) use schedule::{Schedule, Wired, readers};
pub(crate) use step::{Activation, EXP_PARTS, Normalized, Op, Step};

/// Why a model file could not be turned into a runnable network.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The ONNX file could not be read or parsed.
    #[error("cannot parse ONNX model {path}: {message}")]
    Parse { path: String, message: String },
    /// The graph uses an operator or an attribute combination we do not implement.
    #[error("node '{node}' ({op}) is not supported: {reason}")]
    Unsupported {
        node: String,
        op: String,
        reason: String,
    },
    /// The graph is not a single-input, single-output image classifier.
    #[error("model graph is not a single-input, single-output network: {0}")]
    Shape(String),
    /// A tensor had a rank the operator cannot work on.
    #[error("node '{node}' received a rank-{rank} tensor, expected rank {expected}")]
    Rank {
        node: String,
        rank: usize,
        expected: usize,
    },
    /// An operation could not run on the values it received (shapes that do not fit).
    #[error("node '{node}' cannot run: {reason}")]
    Run { node: String, reason: String },
    /// The backend failed while reading the result back.
    #[error("reading the model output failed: {0}")]
    Output(String),
}

/// Who runs the operations when the device is the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Our channels-last kernels with fused convolutions ([`super::cpu`]), falling back to
    /// burn's operations for a graph they do not cover. The fast path, and the default.
    Native,
    /// burn's own operations on every device (the engine before the native kernels; kept for
    /// comparison and as an escape hatch), computing in `dtype` (weights are cast at load,
    /// inputs and outputs at each call).
    Burn { dtype: FloatDType },
}

/// A model graph ready to run on one device.
#[derive(Debug)]
pub struct Network {
    engine: Engine,
    input_name: String,
    output_name: String,
    ends_with_softmax: bool,
    rewrites: Rewrites,
    /// Why the native kernels do not run this graph, when they were asked to and do not.
    not_native: Option<String>,
}

/// The names the ONNX file gives its graph input and output. burn's front end renames node
/// outputs (`gemm1_out1` for what the file calls `logits`), and clients of the Open Inference
/// Protocol ask for tensors by the file's names.
fn declared_names(model: &onnx_ir::ModelProto) -> Result<(String, String), String> {
    let graph = &model.graph;
    // Files from older exporters list the weights among the inputs too.
    let input = graph
        .input
        .iter()
        .map(|i| &i.name)
        .find(|name| !graph.initializer.iter().any(|w| &w.name == *name));
    match (input, graph.output.as_slice()) {
        (Some(input), [output]) => Ok((input.clone(), output.name.clone())),
        _ => Err("expected one graph input (besides weights) and one output".into()),
    }
}

/// What executes the graph.
#[derive(Debug)]
enum Engine {
    /// Our CPU kernels.
    Native(Plan),
    /// burn operations on the device.
    Burn(BurnGraph),
}

impl Network {
    /// Reads `path` for input images of `image_size` × `image_size`: rewrites what exporters
    /// leave for a fixed input size (`rewrite`), parses the result with burn's ONNX front end
    /// and uploads its weights to `device`; on the CPU, `kernels` says whether our native
    /// kernels or burn's operations run it.
    pub fn load(
        path: &Path,
        device: &Device,
        kernels: Kernels,
        image_size: usize,
    ) -> Result<Self, GraphError> {
        let parse_error = |message: String| GraphError::Parse {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| parse_error(e.to_string()))?;
        let mut model = <onnx_ir::ModelProto as onnx_ir::Message>::parse_from_tokio_bytes(
            &bytes::Bytes::from(bytes),
        )
        .map_err(|e| parse_error(e.to_string()))?;
        let (input_name, output_name) = declared_names(&model).map_err(parse_error)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let rewrites = rewrite::prepare(&mut model, dir, image_size).map_err(parse_error)?;
        let builder = OnnxGraphBuilder::new();
        let graph = if rewrites.any() {
            let bytes =
                onnx_ir::Message::write_to_bytes(&model).map_err(|e| parse_error(e.to_string()))?;
            drop(model);
            builder.parse_bytes(&bytes)
        } else {
            builder.parse_file(path)
        }
        .map_err(|e| parse_error(e.to_string()))?;
        let dtype = match kernels {
            Kernels::Native => FloatDType::F32,
            Kernels::Burn { dtype } => dtype,
        };
        let imported = Builder::new(device.clone(), dtype).build(
            &graph.inputs,
            &graph.outputs,
            &graph.nodes,
        )?;
        let ends_with_softmax = imported.ends_with_softmax;
        let (engine, not_native) = Engine::new(imported, device, dtype, kernels, image_size);
        Ok(Self {
            ends_with_softmax,
            engine,
            input_name,
            output_name,
            rewrites,
            not_native,
        })
    }

    /// Why our native CPU kernels do not run this graph although they were asked to (the
    /// step and what it needs); burn's operations run it instead, several times slower.
    pub fn not_native(&self) -> Option<&str> {
        self.not_native.as_deref()
    }

    /// What `rewrite` changed in the file before importing it.
    pub fn rewrites(&self) -> &Rewrites {
        &self.rewrites
    }

    /// Whether our native CPU kernels run the graph (rather than burn's operations).
    pub fn is_native(&self) -> bool {
        matches!(self.engine, Engine::Native(_))
    }

    /// Name of the graph input (the Open Inference Protocol reports it in model metadata).
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// Name of the graph output.
    pub fn output_name(&self) -> &str {
        &self.output_name
    }

    /// Whether the graph already turns logits into probabilities.
    pub fn ends_with_softmax(&self) -> bool {
        self.ends_with_softmax
    }

    /// Runs the graph on a batch `[N, C, H, W]` (values in that order); returns the
    /// `[N, outputs]` values and the number of outputs per image.
    pub fn run(&self, input: Vec<f32>, shape: [usize; 4]) -> Result<(Vec<f32>, usize), GraphError> {
        match &self.engine {
            Engine::Native(plan) => plan.forward(&input, shape),
            Engine::Burn(graph) => {
                let input = Tensor::<4>::from_data(TensorData::new(input, shape), &graph.device)
                    .cast(graph.dtype);
                let output = graph.forward(input)?;
                let [_, outputs] = output.dims();
                let values = output
                    .cast(FloatDType::F32)
                    .into_data()
                    .try_into_vec::<f32>()
                    .map_err(|e| GraphError::Output(format!("{e:?}")))?;
                Ok((values, outputs))
            }
        }
    }
}

impl Engine {
    /// Our native kernels when `kernels` asks for them on the CPU and they cover the graph,
    /// burn's operations otherwise (with the reason the native kernels were not used).
    fn new(
        imported: Imported,
        device: &Device,
        dtype: FloatDType,
        kernels: Kernels,
        image_size: usize,
    ) -> (Self, Option<String>) {
        let Imported {
            steps,
            input_slot,
            output_slot,
            slots,
            ..
        } = imported;
        let steps = passes::join_silu(steps, slots, output_slot);
        let steps = passes::join_gelu(steps, slots, output_slot);
        let steps = passes::join_channel_norms(steps, slots, output_slot);
        let mut steps = passes::fold_batch_norms(steps, slots, output_slot);
        let cpu = *device == Device::flex();
        let mut not_native = None;
        if kernels == Kernels::Native && cpu {
            match Plan::compile(&steps, input_slot, output_slot, slots, image_size) {
                Ok(plan) => return (Self::Native(plan), None),
                Err(why) => {
                    tracing::warn!(
                        "native CPU kernels do not cover this graph ({why}); running burn's \
                         operations"
                    );
                    not_native = Some(why);
                }
            }
        }
        // On the CPU, use every core: a batch is split across threads (`BurnGraph::forward`),
        // and a single image's convolutions across output channels.
        let threads = if cpu { rayon::current_num_threads() } else { 1 };
        if threads > 1 {
            passes::split_convolutions(&mut steps);
        }
        let schedule = Schedule::new(&steps, input_slot, output_slot, slots);
        let engine = Self::Burn(BurnGraph {
            steps,
            schedule,
            threads,
            device: device.clone(),
            dtype,
        });
        (engine, not_native)
    }
}
