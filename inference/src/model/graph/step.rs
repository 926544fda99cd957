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
