//! burn's operations running the steps: GPUs, `--device flex`, and any graph the native
//! kernels do not cover.

use burn::tensor::activation::{gelu, hard_sigmoid, relu, sigmoid, silu, softmax};
use burn::tensor::module::{
    adaptive_avg_pool2d, avg_pool2d, conv2d, layer_norm, linear, max_pool2d,
};
use burn::tensor::{Device, FloatDType, Tensor};
use rayon::iter::{IntoParallelIterator, ParallelIterator};

use super::GraphError;
use super::schedule::Schedule;
use super::step::{Activation, ConvPart, Normalized, Op, Step};

/// A tensor flowing between operations. Classifier graphs only carry feature maps
/// (`[N, C, H, W]`) and, after flattening, feature vectors (`[N, F]`).
#[derive(Clone, Debug)]
enum Value {
    Map(Tensor<4>),
    Vector(Tensor<2>),
}

/// The graph as burn operations.
#[derive(Debug)]
pub(super) struct BurnGraph {
    pub(super) steps: Vec<Step>,
    pub(super) schedule: Schedule,
    /// Threads a batch is split across (1 on a GPU, which parallelises by itself).
    pub(super) threads: usize,
    pub(super) device: Device,
    /// What the operations compute in; inputs are cast to it, outputs back to f32.
    pub(super) dtype: FloatDType,
}

impl BurnGraph {
    /// Runs the graph on a batch `[N, C, H, W]` and returns the `[N, classes]` output.
    pub(super) fn forward(&self, input: Tensor<4>) -> Result<Tensor<2>, GraphError> {
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
        let first = args.remove(0);
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
            Op::Activation(activation) => {
                first.apply(|t| activate(t, *activation), |t| activate(t, *activation))
            }
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
            Op::Concat => {
                let maps = std::iter::once(first)
                    .chain(args)
                    .map(|v| self.map(v))
                    .collect::<Result<Vec<_>, _>>()?;
                Value::Map(Tensor::cat(maps, 1))
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
            Op::Permute(perm) => Value::Map(self.map(first)?.permute(*perm)),
            Op::LayerNorm {
                scale,
                shift,
                epsilon,
                over,
            } => {
                let map = match over {
                    Normalized::LastAxis => self.map(first)?,
                    Normalized::Channels => self.map(first)?.permute([0, 2, 3, 1]),
                };
                let normalized = layer_norm(map, scale.clone(), shift.clone(), *epsilon);
                Value::Map(match over {
                    Normalized::LastAxis => normalized,
                    Normalized::Channels => normalized.permute([0, 3, 1, 2]),
                })
            }
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

/// One activation as burn tensor operations.
fn activate<const D: usize>(t: Tensor<D>, activation: Activation) -> Tensor<D> {
    match activation {
        Activation::Relu => relu(t),
        Activation::Sigmoid => sigmoid(t),
        Activation::Clip { min, max } => t.clamp(min, max),
        Activation::HardSigmoid { alpha, beta } => hard_sigmoid(t, alpha.into(), beta.into()),
        Activation::HardSwish => t.clone() * hard_sigmoid(t, 1.0 / 6.0, 0.5),
        Activation::Silu => silu(t),
        Activation::Scale { factor, offset } => t.mul_scalar(factor).add_scalar(offset),
        Activation::Erf => t.erf(),
        Activation::Gelu => gelu(t),
    }
}
