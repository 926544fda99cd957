//! An ONNX image-classifier graph turned into burn operations at load time.
//!
//! burn's ONNX importer (`burn-onnx`) generates Rust code from a model file, which would make
//! the model a build input: a fresh clone could not compile without the 100 MB ResNet50 file,
//! and every new model would need a rebuild. We use the same importer front end (`onnx-ir`,
//! which parses the file, infers types and lifts constants) and instantiate burn tensor
//! operations from its typed nodes when the server starts. Weights are read from the ONNX file
//! at start-up; nothing about a particular model is compiled in.
//!
//! On the CPU those steps are then compiled for our native kernels ([`super::cpu`]) unless
//! `--device flex` asks for burn's operations; on a GPU burn's operations run them.
//!
//! The supported operator set covers convolutional classifiers (ResNet, VGG, MobileNet-style
//! graphs): convolution, batch normalisation, pooling, element-wise activations and
//! arithmetic, flatten/reshape, linear layers and softmax. Anything else is refused at load
//! time with the operator and node named, never at request time.

use std::path::Path;

use rayon::iter::{IntoParallelIterator, ParallelIterator};

use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::module::{adaptive_avg_pool2d, avg_pool2d, conv2d, linear, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, FloatDType, Tensor, TensorData};

use super::cpu::Plan;
use onnx_ir::node::padding::{AutoPad, PaddingConfig2d};
use onnx_ir::{ArgType, Argument, Node, OnnxGraphBuilder};

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
    /// `image_size` is the side of the (square) input images the model is fed: every layer's
    /// map size follows from it, and with it each convolution's fastest algorithm.
    Native { image_size: usize },
    /// burn's own operations on every device (the engine before the native kernels; kept for
    /// comparison and as an escape hatch), computing in `dtype` (weights are cast at load,
    /// inputs and outputs at each call).
    Burn { dtype: FloatDType },
}

/// A tensor flowing between operations. Classifier graphs only carry feature maps
/// (`[N, C, H, W]`) and, after flattening, feature vectors (`[N, F]`).
#[derive(Clone, Debug)]
enum Value {
    Map(Tensor<4>),
    Vector(Tensor<2>),
}

/// One operation with its weights already on the device.
#[derive(Debug)]
pub(super) enum Op {
    Conv {
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: ConvOptions<2>,
        /// The same weights as two views over halves of the output channels, for running a
        /// single image on two threads (see [`split_convolutions`]).
        halves: Option<Box<[ConvPart; 2]>>,
    },
    /// Inference-time batch norm reduced to a per-channel affine map, `[1, C, 1, 1]` each.
    Affine {
        scale: Tensor<4>,
        shift: Tensor<4>,
    },
    Relu,
    Sigmoid,
    Clip {
        min: f32,
        max: f32,
    },
    MaxPool(MaxPoolOptions<2>),
    AvgPool(AvgPoolOptions<2>),
    GlobalAvgPool,
    Add,
    Mul,
    Flatten,
    /// Weight laid out `[in, out]`, as burn's `linear` expects.
    Linear {
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    },
    Softmax,
    Identity,
}

/// Convolution weights and bias for a range of output channels.
type ConvPart = (Tensor<4>, Option<Tensor<1>>);

/// One node of the graph as a burn operation, reading and writing numbered slots.
#[derive(Debug)]
pub(super) struct Step {
    pub(super) name: String,
    pub(super) op: Op,
    pub(super) inputs: Vec<usize>,
    pub(super) output: usize,
}

/// A step's place in the data flow: the slots it reads and the one it writes.
pub(super) trait Wired {
    fn inputs(&self) -> &[usize];
    fn output(&self) -> usize;
}

impl Wired for Step {
    fn inputs(&self) -> &[usize] {
        &self.inputs
    }
    fn output(&self) -> usize {
        self.output
    }
}

/// How many steps read each slot, the graph's output counting as one more reader: a value
/// read once can be folded into the step that reads it.
pub(super) fn readers<S: Wired>(steps: &[S], slots: usize, graph_output: usize) -> Vec<usize> {
    let mut readers = vec![0usize; slots];
    readers[graph_output] += 1;
    for step in steps {
        for &slot in step.inputs() {
            readers[slot] += 1;
        }
    }
    readers
}

/// Runs steps in order over slots, shared by both engines.
#[derive(Debug)]
pub(super) struct Schedule {
    input_slot: usize,
    output_slot: usize,
    slots: usize,
    /// For each slot, the index of the last step that reads it; the value is moved out then,
    /// so intermediate feature maps are freed as early as possible (and, on the native
    /// engine, may be overwritten in place).
    last_use: Vec<usize>,
}

impl Schedule {
    pub(super) fn new<S: Wired>(
        steps: &[S],
        input_slot: usize,
        output_slot: usize,
        slots: usize,
    ) -> Self {
        let mut last_use = vec![usize::MAX; slots];
        for (index, step) in steps.iter().enumerate() {
            for &slot in step.inputs() {
                last_use[slot] = index;
            }
        }
        Self {
            input_slot,
            output_slot,
            slots,
            last_use,
        }
    }

    /// Feeds `input` through `steps`, calling `run` with each step's operands.
    pub(super) fn run<S: Wired, V: Clone>(
        &self,
        steps: &[S],
        input: V,
        mut run: impl FnMut(&S, Vec<V>) -> Result<V, GraphError>,
    ) -> Result<V, GraphError> {
        let mut slots: Vec<Option<V>> = vec![None; self.slots];
        slots[self.input_slot] = Some(input);
        for (index, step) in steps.iter().enumerate() {
            let args: Vec<V> = step
                .inputs()
                .iter()
                .map(|&slot| {
                    let value = if self.last_use[slot] == index {
                        slots[slot].take()
                    } else {
                        slots[slot].clone()
                    };
                    value.expect("graph builder orders steps so every input is computed first")
                })
                .collect();
            slots[step.output()] = Some(run(step, args)?);
        }
        slots[self.output_slot]
            .take()
            .ok_or_else(|| GraphError::Shape("the output was never computed".into()))
    }
}

/// A model graph ready to run on one device.
#[derive(Debug)]
pub struct Network {
    engine: Engine,
    input_name: String,
    output_name: String,
    ends_with_softmax: bool,
}

/// The names the ONNX file gives its graph input and output. burn's front end renames node
/// outputs (`gemm1_out1` for what the file calls `logits`), and clients of the Open Inference
/// Protocol ask for tensors by the file's names. Tensor data is not copied (`Bytes` fields).
fn declared_names(path: &Path) -> Result<(String, String), GraphError> {
    let parse_error = |message: String| GraphError::Parse {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| parse_error(e.to_string()))?;
    let model = <onnx_ir::ModelProto as onnx_ir::Message>::parse_from_tokio_bytes(
        &bytes::Bytes::from(bytes),
    )
    .map_err(|e| parse_error(e.to_string()))?;
    let graph = &model.graph;
    // Files from older exporters list the weights among the inputs too.
    let input = graph
        .input
        .iter()
        .map(|i| &i.name)
        .find(|name| !graph.initializer.iter().any(|w| &w.name == *name));
    match (input, graph.output.as_slice()) {
        (Some(input), [output]) => Ok((input.clone(), output.name.clone())),
        _ => Err(parse_error(
            "expected one graph input (besides weights) and one output".into(),
        )),
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

/// The graph as burn operations.
#[derive(Debug)]
struct BurnGraph {
    steps: Vec<Step>,
    schedule: Schedule,
    /// Threads a batch is split across (1 on a GPU, which parallelises by itself).
    threads: usize,
    device: Device,
    /// What the operations compute in; inputs are cast to it, outputs back to f32.
    dtype: FloatDType,
}

impl Network {
    /// Parses `path` with burn's ONNX front end and uploads its weights to `device`; on the
    /// CPU, `kernels` says whether our native kernels or burn's operations run it.
    pub fn load(path: &Path, device: &Device, kernels: Kernels) -> Result<Self, GraphError> {
        let graph = OnnxGraphBuilder::new()
            .parse_file(path)
            .map_err(|e| GraphError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let dtype = match kernels {
            Kernels::Native { .. } => FloatDType::F32,
            Kernels::Burn { dtype } => dtype,
        };
        let mut network = Builder::new(device.clone(), dtype).build(
            &graph.inputs,
            &graph.outputs,
            &graph.nodes,
            kernels,
        )?;
        (network.input_name, network.output_name) = declared_names(path)?;
        Ok(network)
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

impl BurnGraph {
    /// Runs the graph on a batch `[N, C, H, W]` and returns the `[N, classes]` output.
    fn forward(&self, input: Tensor<4>) -> Result<Tensor<2>, GraphError> {
        let [n, ..] = input.dims();
        let parts = self.threads.min(n);
        if parts < 2 {
            return self.forward_whole(input);
        }
        // The batch in `parts` slices, each run through the whole graph on its own thread:
        // burn's CPU operations fork and join per layer and keep the cores only partly busy
        // (1.35× on two cores at batch 8); whole slices per thread keep both busy and their
        // feature maps in cache (14–23 % faster at batches 2–32, docs/PERFORMANCE.md).
        let size = n.div_ceil(parts);
        let outputs = (0..n)
            .step_by(size)
            .map(|start| input.clone().narrow(0, start, size.min(n - start)))
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|slice| self.forward_whole(slice))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(outputs, 0))
    }

    /// The graph on the whole of `input`, step by step.
    fn forward_whole(&self, input: Tensor<4>) -> Result<Tensor<2>, GraphError> {
        let output = self
            .schedule
            .run(&self.steps, Value::Map(input), |step, args| step.run(args))?;
        match output {
            Value::Vector(out) => Ok(out),
            Value::Map(out) => {
                // Some exports end with a [N, C, 1, 1] map instead of flattening.
                let [n, c, h, w] = out.dims();
                Ok(out.reshape([n, c * h * w]))
            }
        }
    }
}

impl Step {
    fn run(&self, mut args: Vec<Value>) -> Result<Value, GraphError> {
        let first = args.swap_remove(0);
        let value = match &self.op {
            Op::Conv {
                weight,
                bias,
                options,
                halves,
            } => {
                let input = self.map(first)?;
                Value::Map(match halves {
                    Some(halves) if input.dims()[0] == 1 => {
                        let run = |(weight, bias): &ConvPart| {
                            conv2d(input.clone(), weight.clone(), bias.clone(), options.clone())
                        };
                        let (a, b) = rayon::join(|| run(&halves[0]), || run(&halves[1]));
                        Tensor::cat(vec![a, b], 1)
                    }
                    _ => conv2d(input, weight.clone(), bias.clone(), options.clone()),
                })
            }
            Op::Affine { scale, shift } => {
                Value::Map(self.map(first)?.mul(scale.clone()).add(shift.clone()))
            }
            Op::Relu => first.apply(relu, relu),
            Op::Sigmoid => first.apply(sigmoid, sigmoid),
            Op::Clip { min, max } => first.apply(|t| t.clamp(*min, *max), |t| t.clamp(*min, *max)),
            Op::MaxPool(options) => Value::Map(max_pool2d(self.map(first)?, options.clone())),
            Op::AvgPool(options) => Value::Map(avg_pool2d(self.map(first)?, options.clone())),
            Op::GlobalAvgPool => Value::Map(adaptive_avg_pool2d(self.map(first)?, [1, 1])),
            Op::Add | Op::Mul => {
                let second = args.pop().ok_or_else(|| GraphError::Unsupported {
                    node: self.name.clone(),
                    op: "Add/Mul".into(),
                    reason: "needs two operands".into(),
                })?;
                let add = matches!(self.op, Op::Add);
                match (first, second) {
                    (Value::Map(a), Value::Map(b)) => Value::Map(if add { a + b } else { a * b }),
                    (Value::Vector(a), Value::Vector(b)) => {
                        Value::Vector(if add { a + b } else { a * b })
                    }
                    _ => {
                        return Err(GraphError::Unsupported {
                            node: self.name.clone(),
                            op: "Add/Mul".into(),
                            reason: "operands of different rank".into(),
                        });
                    }
                }
            }
            Op::Flatten => match first {
                Value::Map(t) => {
                    let [n, c, h, w] = t.dims();
                    Value::Vector(t.reshape([n, c * h * w]))
                }
                vector => vector,
            },
            Op::Linear { weight, bias } => {
                Value::Vector(linear(self.vector(first)?, weight.clone(), bias.clone()))
            }
            Op::Softmax => Value::Vector(softmax(self.vector(first)?, 1)),
            Op::Identity => first,
        };
        Ok(value)
    }

    fn map(&self, value: Value) -> Result<Tensor<4>, GraphError> {
        match value {
            Value::Map(t) => Ok(t),
            Value::Vector(_) => Err(self.rank_error(2, 4)),
        }
    }

    fn vector(&self, value: Value) -> Result<Tensor<2>, GraphError> {
        match value {
            Value::Vector(t) => Ok(t),
            Value::Map(_) => Err(self.rank_error(4, 2)),
        }
    }

    fn rank_error(&self, rank: usize, expected: usize) -> GraphError {
        GraphError::Rank {
            node: self.name.clone(),
            rank,
            expected,
        }
    }
}

impl Value {
    fn apply(
        self,
        on_map: impl Fn(Tensor<4>) -> Tensor<4>,
        on_vec: impl Fn(Tensor<2>) -> Tensor<2>,
    ) -> Value {
        match self {
            Value::Map(t) => Value::Map(on_map(t)),
            Value::Vector(t) => Value::Vector(on_vec(t)),
        }
    }
}

/// Walks the onnx-ir nodes in topological order and assigns each tensor name a slot.
struct Builder {
    device: Device,
    /// Float type the weights are uploaded in.
    dtype: FloatDType,
    names: Vec<String>,
    steps: Vec<Step>,
}

impl Builder {
    fn new(device: Device, dtype: FloatDType) -> Self {
        Self {
            device,
            dtype,
            names: Vec::new(),
            steps: Vec::new(),
        }
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(found) = self.names.iter().position(|n| n == name) {
            return found;
        }
        self.names.push(name.to_string());
        self.names.len() - 1
    }

    fn existing_slot(&self, node: &Node, name: &str) -> Result<usize, GraphError> {
        self.names.iter().position(|n| n == name).ok_or_else(|| {
            unsupported(
                node,
                format!("input '{name}' is neither computed nor a constant"),
            )
        })
    }

    fn build(
        mut self,
        inputs: &[Argument],
        outputs: &[Argument],
        nodes: &[Node],
        kernels: Kernels,
    ) -> Result<Network, GraphError> {
        let [input] = inputs else {
            return Err(GraphError::Shape(format!("{} inputs", inputs.len())));
        };
        let [output] = outputs else {
            return Err(GraphError::Shape(format!("{} outputs", outputs.len())));
        };
        if input.ty.rank() != 4 {
            return Err(GraphError::Shape(format!(
                "input '{}' has rank {}, expected an image batch [N, C, H, W]",
                input.name,
                input.ty.rank()
            )));
        }
        let input_slot = self.slot(&input.name);
        let mut last_op = None;
        for node in nodes {
            if let Node::Constant(_) = node {
                continue; // constants are read through the consuming node's arguments
            }
            let (op, dynamic) = self.op(node)?;
            last_op = Some(node.node_type());
            let inputs = dynamic
                .iter()
                .map(|arg| self.existing_slot(node, &arg.name))
                .collect::<Result<Vec<_>, _>>()?;
            let [out] = node.outputs() else {
                return Err(unsupported(node, "more than one output"));
            };
            let output = self.slot(&out.name);
            self.steps.push(Step {
                name: node.name().to_string(),
                op,
                inputs,
                output,
            });
        }
        let output_slot = self
            .names
            .iter()
            .position(|n| *n == output.name)
            .ok_or_else(|| {
                GraphError::Shape(format!("output '{}' is never computed", output.name))
            })?;
        let steps = std::mem::take(&mut self.steps);
        let steps = fold_batch_norms(steps, self.names.len(), output_slot);
        let slots = self.names.len();
        let cpu = self.device == Device::flex();
        let native = match kernels {
            Kernels::Native { image_size } if cpu => {
                Plan::compile(&steps, input_slot, output_slot, slots, image_size)
                    .inspect_err(|why| {
                        tracing::warn!(
                            "native CPU kernels do not cover this graph ({why}); \
                             running burn's operations"
                        );
                    })
                    .ok()
            }
            _ => None,
        };
        let engine = match native {
            Some(plan) => Engine::Native(plan),
            None => {
                let mut steps = steps;
                // On the CPU, use every core: a batch is split across threads
                // (`BurnGraph::forward`), and a single image's convolutions across output
                // channels.
                let threads = if cpu { rayon::current_num_threads() } else { 1 };
                if threads > 1 {
                    split_convolutions(&mut steps);
                }
                let schedule = Schedule::new(&steps, input_slot, output_slot, slots);
                Engine::Burn(BurnGraph {
                    steps,
                    schedule,
                    threads,
                    device: self.device,
                    dtype: self.dtype,
                })
            }
        };
        Ok(Network {
            engine,
            input_name: input.name.clone(),
            output_name: output.name.clone(),
            ends_with_softmax: last_op == Some(onnx_ir::NodeType::Softmax),
        })
    }

    /// Translates one node; returns the operation and the inputs computed at run time.
    fn op<'n>(&self, node: &'n Node) -> Result<(Op, Vec<&'n Argument>), GraphError> {
        let inputs = node.inputs();
        let first = || vec![&inputs[0]];
        let op = match node {
            Node::Conv2d(conv) => {
                let c = &conv.config;
                let weight = self.constant::<4>(node, 1)?;
                let bias = self.optional_constant::<1>(node, 2)?;
                let options = ConvOptions::new_with_padding(
                    c.stride,
                    padding_pairs(node, &c.padding, &c.auto_pad)?,
                    c.dilation,
                    c.groups,
                );
                (
                    Op::Conv {
                        weight,
                        bias,
                        options,
                        halves: None,
                    },
                    first(),
                )
            }
            Node::BatchNormalization(bn) => {
                let epsilon = match &bn.config {
                    onnx_ir::node::batch_norm::BatchNormConfig::Static(c) => c.epsilon,
                    onnx_ir::node::batch_norm::BatchNormConfig::Runtime(c) => c.epsilon,
                };
                let (scale, shift) = self.batch_norm_affine(node, epsilon)?;
                (Op::Affine { scale, shift }, first())
            }
            Node::Relu(_) => (Op::Relu, first()),
            Node::Sigmoid(_) => (Op::Sigmoid, first()),
            Node::Clip(clip) => {
                let bound =
                    |input: &Option<onnx_ir::node::clip::ClipInput>, default: f32| match input {
                        None => Ok(default),
                        Some(onnx_ir::node::clip::ClipInput::Static(v)) => Ok(*v as f32),
                        Some(onnx_ir::node::clip::ClipInput::Runtime(_)) => {
                            Err(unsupported(node, "clip bounds computed at run time"))
                        }
                    };
                let min = bound(&clip.config.min, f32::MIN)?;
                let max = bound(&clip.config.max, f32::MAX)?;
                (Op::Clip { min, max }, first())
            }
            Node::MaxPool2d(pool) => {
                let c = &pool.config;
                let options = MaxPoolOptions::new(c.kernel_size)
                    .with_stride(c.strides)
                    .with_padding_pairs(padding_pairs(node, &c.padding, &c.auto_pad)?)
                    .with_dilation(c.dilation)
                    .with_ceil_mode(c.ceil_mode);
                (Op::MaxPool(options), first())
            }
            Node::AveragePool2d(pool) => {
                let c = &pool.config;
                if c.dilation != [1, 1] {
                    return Err(unsupported(node, "dilated average pooling"));
                }
                let options = AvgPoolOptions::new(c.kernel_size)
                    .with_stride(c.strides)
                    .with_padding_pairs(padding_pairs(node, &c.padding, &c.auto_pad)?)
                    .with_count_include_pad(c.count_include_pad)
                    .with_ceil_mode(c.ceil_mode);
                (Op::AvgPool(options), first())
            }
            Node::GlobalAveragePool(_) => (Op::GlobalAvgPool, first()),
            Node::Add(_) => (Op::Add, self.two_dynamic(node)?),
            Node::Mul(_) => (Op::Mul, self.two_dynamic(node)?),
            Node::Flatten(flatten) => {
                if flatten.config.axis != 1 {
                    return Err(unsupported(node, "flatten on an axis other than 1"));
                }
                (Op::Flatten, first())
            }
            Node::Reshape(reshape) => match &reshape.config.shape {
                onnx_ir::node::reshape::ReshapeInput::Static(shape)
                    if shape.len() == 2 && shape[1] == -1 || shape == &[0, -1] =>
                {
                    (Op::Flatten, first())
                }
                _ => {
                    return Err(unsupported(
                        node,
                        "reshape other than flattening to [N, -1]",
                    ));
                }
            },
            Node::Linear(lin) => {
                let weight = self.constant::<2>(node, 1)?;
                // burn's linear wants [in, out]; Gemm-style weights are [out, in].
                let weight = if lin.config.transpose_weight {
                    weight.transpose()
                } else {
                    weight
                };
                let bias = self.optional_constant::<1>(node, 2)?;
                (Op::Linear { weight, bias }, first())
            }
            Node::Gemm(gemm) => {
                let c = &gemm.config;
                if c.trans_a != 0 {
                    return Err(unsupported(node, "Gemm with transA=1"));
                }
                let weight = self.constant::<2>(node, 1)?;
                let weight = if c.trans_b != 0 {
                    weight.transpose()
                } else {
                    weight
                };
                let bias = self.optional_constant::<1>(node, 2)?;
                (
                    Op::Linear {
                        weight: weight.mul_scalar(c.alpha),
                        bias: bias.map(|b| b.mul_scalar(c.beta)),
                    },
                    first(),
                )
            }
            Node::Softmax(s) => {
                if s.config.axis != 1 {
                    return Err(unsupported(node, "softmax over an axis other than 1"));
                }
                (Op::Softmax, first())
            }
            Node::Identity(_) | Node::Dropout(_) => (Op::Identity, first()),
            other => {
                return Err(unsupported(
                    other,
                    "operator outside the supported set (Conv, BatchNormalization, Relu, Sigmoid, \
                     Clip, MaxPool, AveragePool, GlobalAveragePool, Add, Mul, Flatten, Reshape, \
                     Gemm, MatMul+Add, Softmax, Identity, Dropout)",
                ));
            }
        };
        Ok(op)
    }

    fn two_dynamic<'n>(&self, node: &'n Node) -> Result<Vec<&'n Argument>, GraphError> {
        let inputs = node.inputs();
        if inputs.len() != 2 || inputs.iter().any(|a| a.value().is_some()) {
            return Err(unsupported(node, "element-wise op with a constant operand"));
        }
        Ok(inputs.iter().collect())
    }

    fn tensor_data(&self, node: &Node, index: usize) -> Result<Option<TensorData>, GraphError> {
        let Some(arg) = node.inputs().get(index) else {
            return Ok(None);
        };
        if matches!(arg.ty, ArgType::Tensor(_)) && arg.is_optional() {
            return Ok(None);
        }
        match arg.value() {
            Some(data) => Ok(Some(data.convert::<f32>())),
            None if arg.is_optional() => Ok(None),
            None => Err(unsupported(
                node,
                format!("input {index} ('{}') must be a constant weight", arg.name),
            )),
        }
    }

    fn constant<const D: usize>(&self, node: &Node, index: usize) -> Result<Tensor<D>, GraphError> {
        let data = self
            .tensor_data(node, index)?
            .ok_or_else(|| unsupported(node, format!("missing weight input {index}")))?;
        if data.shape().len() != D {
            return Err(unsupported(
                node,
                format!(
                    "weight input {index} has rank {}, expected {D}",
                    data.shape().len()
                ),
            ));
        }
        Ok(Tensor::<D>::from_data(data, &self.device).cast(self.dtype))
    }

    fn optional_constant<const D: usize>(
        &self,
        node: &Node,
        index: usize,
    ) -> Result<Option<Tensor<D>>, GraphError> {
        match self.tensor_data(node, index)? {
            Some(_) => self.constant::<D>(node, index).map(Some),
            None => Ok(None),
        }
    }

    /// `y = (x - mean) / sqrt(var + eps) * gamma + beta` folded into `y = x * scale + shift`.
    fn batch_norm_affine(
        &self,
        node: &Node,
        epsilon: f64,
    ) -> Result<(Tensor<4>, Tensor<4>), GraphError> {
        let vector = |index| -> Result<Vec<f32>, GraphError> {
            let data = self
                .tensor_data(node, index)?
                .ok_or_else(|| unsupported(node, format!("missing input {index}")))?;
            data.try_into_vec::<f32>()
                .map_err(|e| unsupported(node, format!("input {index}: {e:?}")))
        };
        let (gamma, beta, mean, var) = (vector(1)?, vector(2)?, vector(3)?, vector(4)?);
        let channels = gamma.len();
        if [beta.len(), mean.len(), var.len()]
            .iter()
            .any(|&l| l != channels)
        {
            return Err(unsupported(
                node,
                "batch norm parameters of different lengths",
            ));
        }
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| (f64::from(*g) / (f64::from(*v) + epsilon).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = beta
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        let to_tensor = |values: Vec<f32>| {
            Tensor::<4>::from_data(TensorData::new(values, [1, channels, 1, 1]), &self.device)
                .cast(self.dtype)
        };
        Ok((to_tensor(scale), to_tensor(shift)))
    }
}

/// Folds each batch norm that directly follows the only consumer of a convolution into that
/// convolution's weights and bias: `(x * w + b) * s + t = x * (w * s) + (b * s + t)`, per output
/// channel. Exact up to f32 rounding, and it removes a full read and write of every feature map
/// per folded layer (53 of them in ResNet50) — what ONNX Runtime does at graph optimisation.
fn fold_batch_norms(steps: Vec<Step>, slots: usize, graph_output: usize) -> Vec<Step> {
    let uses = readers(&steps, slots, graph_output);
    let mut folded: Vec<Step> = Vec::with_capacity(steps.len());
    for step in steps {
        if let (Op::Affine { scale, shift }, [input]) = (&step.op, step.inputs.as_slice())
            && uses[*input] == 1
            && let Some(previous) = folded.last_mut()
            && previous.output == *input
            && let Op::Conv { weight, bias, .. } = &mut previous.op
        {
            let channels = weight.dims()[0];
            let scale = scale.clone().reshape([channels]);
            let shift = shift.clone().reshape([channels]);
            let old_bias = bias.take().unwrap_or_else(|| shift.zeros_like());
            *weight = weight
                .clone()
                .mul(scale.clone().reshape([channels, 1, 1, 1]));
            *bias = Some(old_bias.mul(scale).add(shift));
            previous.output = step.output;
            continue;
        }
        folded.push(step);
    }
    folded
}

/// Gives every ungrouped convolution with at least `MIN_SPLIT_CHANNELS` outputs two views over
/// halves of its output channels. burn's CPU convolution spreads a batch over the cores but
/// runs a single image on one, so for a batch of one [`Step::run`] computes the halves on two
/// threads and concatenates them: 10–20 % faster at batch 1 on two cores (docs/PERFORMANCE.md).
/// Larger batches keep the whole convolution, which is faster there. The views share the
/// weights' storage, so this costs no memory.
fn split_convolutions(steps: &mut [Step]) {
    const MIN_SPLIT_CHANNELS: usize = 64;
    for step in steps {
        let Op::Conv {
            weight,
            bias,
            options,
            halves,
        } = &mut step.op
        else {
            continue;
        };
        let [out, ..] = weight.dims();
        if options.groups != 1 || out < MIN_SPLIT_CHANNELS {
            continue;
        }
        let half = |range: std::ops::Range<usize>| {
            let part = weight.clone().slice([range.clone()]);
            (part, bias.as_ref().map(|b| b.clone().slice([range])))
        };
        *halves = Some(Box::new([half(0..out / 2), half(out / 2..out)]));
    }
}

/// Explicit `(begin, end)` padding per spatial axis. `SAME_*` auto-padding depends on the input
/// size, which a dynamic-size graph does not fix, so it is refused at load time.
fn padding_pairs(
    node: &Node,
    padding: &PaddingConfig2d,
    auto_pad: &AutoPad,
) -> Result<[(usize, usize); 2], GraphError> {
    if !matches!(auto_pad, AutoPad::NotSet | AutoPad::Valid) {
        return Err(unsupported(node, "auto_pad SAME_UPPER/SAME_LOWER"));
    }
    Ok(match *padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
    })
}

fn unsupported(node: &Node, reason: impl Into<String>) -> GraphError {
    GraphError::Unsupported {
        node: node.name().to_string(),
        op: node.node_type().to_string(),
        reason: reason.into(),
    }
}
