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
    /// The activation of one value (inlined, so that a loop over values with a known
    /// activation compiles to that function alone).
    #[inline(always)]
    pub(crate) fn apply(self, x: f32) -> f32 {
        match self {
            Self::Relu => x.max(0.0),
            Self::Sigmoid => 1.0 / (1.0 + exp(-x)),
            Self::Clip { min, max } => x.clamp(min, max),
            Self::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Self::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Self::Silu => x / (1.0 + exp(-x)),
        }
    }
}

/// `eᵡ` within 1e-6 relative (a few ulp), as plain arithmetic the compiler can vectorise
/// (libm's `expf` is a call per value: profiled at 16 % of EfficientNet-B0's time in SiLU):
/// `eᵡ = 2ⁿ · eʳ` with `n = round(x / ln 2)`, `r = x − n·ln 2` (ln 2 in two parts, so `r` is
/// exact), and `eʳ`, `|r| ≤ ½ ln 2`, by its degree-6 Taylor polynomial.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Beyond these e^x is 0 or overflows; the bounds keep the exponent bits in range.
    let x = x.clamp(-87.0, 88.0);
    // Adding 1.5·2²³ rounds to the nearest integer, which then lies in the low bits of the
    // sum: no libm call, no float-to-int conversion.
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ⁿ: the biased exponent n + 127 in the exponent field.
    let exponent = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127)
        << 23;
    p * f32::from_bits(exponent)
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

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_1e6_of_libm_and_saturates_cleanly() {
        // Past ±80 the values (below 2e-35, above 5e34) matter to no activation.
        let mut x = -80.0f32;
        while x < 80.0 {
            let (ours, libm) = (super::exp(x), x.exp());
            let error = ((ours - libm) / libm.max(f32::MIN_POSITIVE)).abs();
            assert!(error < 1e-6, "exp({x}) = {ours}, libm {libm}");
            x += 0.0137;
        }
        assert!(super::exp(-1000.0) >= 0.0 && super::exp(-1000.0) < 1e-37);
        assert!(super::exp(1000.0).is_finite());
    }
}
