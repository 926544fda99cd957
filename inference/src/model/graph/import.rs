//! onnx-ir nodes translated into steps: where each ONNX operator is imported.

use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use onnx_ir::node::padding::{AutoPad, PaddingConfig2d};
use onnx_ir::{ArgType, Argument, Node};

use super::GraphError;
use super::step::{Activation, Normalized, Op, Step};

/// The graph as steps over numbered slots, as imported (before any pass).
pub(super) struct Imported {
    pub(super) steps: Vec<Step>,
    pub(super) input_slot: usize,
    pub(super) output_slot: usize,
    pub(super) slots: usize,
    /// Whether the graph already turns logits into probabilities.
    pub(super) ends_with_softmax: bool,
}

/// Walks the onnx-ir nodes in topological order and assigns each tensor name a slot.
pub(super) struct Builder {
    device: Device,
    /// Float type the weights are uploaded in.
    dtype: FloatDType,
    names: Vec<String>,
    steps: Vec<Step>,
}

impl Builder {
    pub(super) fn new(device: Device, dtype: FloatDType) -> Self {
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

    pub(super) fn build(
        mut self,
        inputs: &[Argument],
        outputs: &[Argument],
        nodes: &[Node],
    ) -> Result<Imported, GraphError> {
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
        Ok(Imported {
            steps: self.steps,
            input_slot,
            output_slot,
            slots: self.names.len(),
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
            Node::Relu(_) => (Op::Activation(Activation::Relu), first()),
            Node::Sigmoid(_) => (Op::Activation(Activation::Sigmoid), first()),
            Node::HardSigmoid(hard) => (
                Op::Activation(Activation::HardSigmoid {
                    alpha: hard.config.alpha as f32,
                    beta: hard.config.beta as f32,
                }),
                first(),
            ),
            Node::HardSwish(_) => (Op::Activation(Activation::HardSwish), first()),
            Node::Concat(concat) => {
                if concat.config.axis != 1 {
                    return Err(unsupported(
                        node,
                        "concatenation along an axis other than 1",
                    ));
                }
                let inputs = node.inputs();
                if inputs.iter().any(|a| a.value().is_some()) {
                    return Err(unsupported(node, "concatenation with a constant operand"));
                }
                (Op::Concat, inputs.iter().collect())
            }
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
                (Op::Activation(Activation::Clip { min, max }), first())
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
            Node::Add(_) => self.arithmetic(node, Arithmetic::Add)?,
            Node::Sub(_) => self.arithmetic(node, Arithmetic::Sub)?,
            Node::Mul(_) => self.arithmetic(node, Arithmetic::Mul)?,
            Node::Div(_) => self.arithmetic(node, Arithmetic::Div)?,
            Node::Erf(_) => (Op::Activation(Activation::Erf), first()),
            Node::Transpose(transpose) => {
                let perm: Vec<usize> = transpose
                    .config
                    .perm
                    .iter()
                    .map(|&p| usize::try_from(p).unwrap_or(usize::MAX))
                    .collect();
                let perm: [usize; 4] = perm
                    .try_into()
                    .ok()
                    .filter(|p: &[usize; 4]| {
                        let mut sorted = *p;
                        sorted.sort_unstable();
                        sorted == [0, 1, 2, 3]
                    })
                    .ok_or_else(|| unsupported(node, "transpose of other than a feature map"))?;
                (Op::Permute(perm), first())
            }
            Node::LayerNormalization(norm) => {
                let rank = inputs[0].ty.rank();
                let last = norm.config.axis == -1 || norm.config.axis == rank as i64 - 1;
                if !last {
                    return Err(unsupported(
                        node,
                        "layer normalisation over more than the last axis",
                    ));
                }
                (
                    Op::LayerNorm {
                        scale: self.constant::<1>(node, 1)?,
                        shift: self.optional_constant::<1>(node, 2)?,
                        epsilon: norm.config.epsilon,
                        over: Normalized::LastAxis,
                    },
                    first(),
                )
            }
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
                     Clip, HardSigmoid, HardSwish, Erf, MaxPool, AveragePool, GlobalAveragePool, \
                     ReduceMean over H and W, Pad before Conv, Add, Sub, Mul, Div, Concat, \
                     Flatten, Reshape, Gemm, MatMul+Add, LayerNormalization, Transpose, Softmax, \
                     Identity, Dropout; shape arithmetic that is constant for the input size)",
                ));
            }
        };
        Ok(op)
    }

    /// `a op b`: two computed maps (Add, Mul), or a computed one and a constant, either a
    /// single value (an element-wise [`Activation::Scale`], which the native engine fuses
    /// into the convolution before it) or one per channel (an [`Op::Affine`], which
    /// `passes::fold_batch_norms` folds into it).
    fn arithmetic<'n>(
        &self,
        node: &'n Node,
        kind: Arithmetic,
    ) -> Result<(Op, Vec<&'n Argument>), GraphError> {
        let inputs = node.inputs();
        let [a, b] = inputs else {
            return Err(unsupported(node, "expects two operands"));
        };
        let (computed, constant, constant_first) = match (a.value(), b.value()) {
            (None, None) => {
                let op = match kind {
                    Arithmetic::Add => Op::Add,
                    Arithmetic::Mul => Op::Mul,
                    Arithmetic::Sub | Arithmetic::Div => {
                        return Err(unsupported(node, "subtraction or division of two maps"));
                    }
                };
                return Ok((op, vec![a, b]));
            }
            (None, Some(c)) => (a, c, false),
            (Some(c), None) => (b, c, true),
            (Some(_), Some(_)) => return Err(unsupported(node, "two constant operands")),
        };
        let shape = constant.shape().to_vec();
        let values = constant
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| unsupported(node, format!("constant operand: {e:?}")))?;
        let pairs = values
            .iter()
            .map(|&c| kind.as_scale(c, constant_first))
            .collect::<Option<Vec<(f32, f32)>>>()
            .ok_or_else(|| unsupported(node, "division by a computed map"))?;
        if let [(factor, offset)] = pairs[..] {
            return Ok((
                Op::Activation(Activation::Scale { factor, offset }),
                vec![computed],
            ));
        }
        let channels = pairs.len();
        let per_channel = matches!(shape.as_slice(), [c, 1, 1] | [1, c, 1, 1] if *c == channels);
        if !per_channel {
            return Err(unsupported(
                node,
                format!(
                    "constant operand of shape {shape:?}: only a single value or one per channel"
                ),
            ));
        }
        let tensor = |values: Vec<f32>| {
            Tensor::<4>::from_data(TensorData::new(values, [1, channels, 1, 1]), &self.device)
                .cast(self.dtype)
        };
        let (scale, shift) = pairs.into_iter().unzip();
        Ok((
            Op::Affine {
                scale: tensor(scale),
                shift: tensor(shift),
            },
            vec![computed],
        ))
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

/// The four arithmetic operators, which take a constant operand.
#[derive(Clone, Copy)]
enum Arithmetic {
    Add,
    Sub,
    Mul,
    Div,
}

impl Arithmetic {
    /// `x op c` (or `c op x` when `constant_first`) as `factor · x + offset`; `None` for
    /// `c / x`, which is not affine.
    fn as_scale(self, c: f32, constant_first: bool) -> Option<(f32, f32)> {
        Some(match (self, constant_first) {
            (Self::Add, _) => (1.0, c),
            (Self::Sub, false) => (1.0, -c),
            (Self::Sub, true) => (-1.0, c),
            (Self::Mul, _) => (c, 0.0),
            (Self::Div, false) => (1.0 / c, 0.0),
            (Self::Div, true) => return None,
        })
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
