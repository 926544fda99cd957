//! The graph as numbered steps: what each operation is and where its operands live.

use burn::tensor::Tensor;
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};

use super::schedule::Wired;

/// One operation with its weights already on the device.
#[derive(Debug)]
pub(crate) enum Op {
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
    /// An element-wise activation.
    Activation(Activation),
    MaxPool(MaxPoolOptions<2>),
    AvgPool(AvgPoolOptions<2>),
    GlobalAvgPool,
    Add,
    Mul,
    /// Feature maps joined along the channels (DenseNet's blocks, SqueezeNet's fire modules).
    Concat,
    Flatten,
    /// Weight laid out `[in, out]`, as burn's `linear` expects.
    Linear {
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    },
    Softmax,
    Identity,
}

/// The element-wise activations of current CNN families, each one function of one value, so
/// that both engines apply them alike and the native one can fuse them into a convolution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Activation {
    Relu,
    Sigmoid,
    /// ReLU6 and other clamps.
    Clip {
        min: f32,
        max: f32,
    },
    /// `max(0, min(1, alpha·x + beta))`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x · HardSigmoid(x)` with alpha 1/6, beta 1/2 (MobileNetV3).
    HardSwish,
    /// `x · sigmoid(x)` (SiLU, Swish: EfficientNet, RegNetY's SE-free parts): exporters write
    /// it as Sigmoid and Mul, joined by a pass.
    Silu,
}

impl Activation {
    /// The activation of one value.
    pub(crate) fn apply(self, x: f32) -> f32 {
        match self {
            Self::Relu => x.max(0.0),
            Self::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Self::Clip { min, max } => x.clamp(min, max),
            Self::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Self::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Self::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

/// Convolution weights and bias for a range of output channels.
pub(crate) type ConvPart = (Tensor<4>, Option<Tensor<1>>);

/// One node of the graph as a burn operation, reading and writing numbered slots.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) op: Op,
    pub(crate) inputs: Vec<usize>,
    pub(crate) output: usize,
}

impl Wired for Step {
    fn inputs(&self) -> &[usize] {
        &self.inputs
    }
    fn output(&self) -> usize {
        self.output
    }
}
