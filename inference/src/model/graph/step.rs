//! The graph as numbered steps: what each operation is and where its operands live.

use burn::tensor::Tensor;
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};

use super::schedule::Wired;
use matmul::multiply_add;

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
    /// Axes of a feature map reordered, as ONNX's Transpose. Only ever between a map and a
    /// [`Normalized::LastAxis`] LayerNorm, which [`join_channel_norms`] turns into one over
    /// the channels.
    ///
    /// [`join_channel_norms`]: super::passes::join_channel_norms
    Permute([usize; 4]),
    /// LayerNorm: `(x − mean) / sqrt(var + epsilon) · scale + shift`, mean and (biased)
    /// variance taken over `over`; `scale` and `shift` hold one value per normalised channel.
    LayerNorm {
        scale: Tensor<1>,
        shift: Option<Tensor<1>>,
        epsilon: f64,
        over: Normalized,
    },
}

/// The axis a LayerNorm normalises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Normalized {
    /// The last axis, as ONNX's LayerNormalization has it (of a map transposed channels-last).
    LastAxis,
    /// The channels of each pixel of a `[N, C, H, W]` map (ConvNeXt's LayerNorm, joined).
    Channels,
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
    /// `factor · x + offset`: arithmetic with a single constant (`x / √2`, `x + 1`).
    Scale {
        factor: f32,
        offset: f32,
    },
    /// The error function (exporters write GELU with it).
    Erf,
    /// `x · Φ(x) = ½ · x · (1 + erf(x / √2))`, GELU without approximation (ConvNeXt):
    /// exporters write it as five operations, joined by a pass.
    Gelu,
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
            // ONNX's alpha of 1/6 as a product, as the operator defines it (a division
            // is several times slower in vectors).
            Self::HardSwish => x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
            Self::Silu => x / (1.0 + exp(-x)),
            Self::Scale { factor, offset } => factor * x + offset,
            Self::Erf => erf(x),
            Self::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        }
    }
}

/// `eᵡ` within 1e-6 relative (a few ulp), as plain arithmetic the compiler can vectorise
/// (libm's `expf` is a call per value: profiled at 16 % of EfficientNet-B0's time in SiLU):
/// `eᵡ = 2ⁿ · eʳ` with `n = round(x / ln 2)`, `r = x − n·ln 2` (ln 2 in two parts, so `r` is
/// exact), and `eʳ`, `|r| ≤ ½ ln 2`, by its degree-6 Taylor polynomial.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let parts = &EXP_PARTS;
    // Beyond these e^x is 0 or overflows; the bounds keep the exponent bits in range.
    let x = x.clamp(parts.low, parts.high);
    // Adding 1.5·2²³ rounds to the nearest integer, which then lies in the low bits of the
    // sum: no libm call, no float-to-int conversion.
    let shifted = multiply_add(x, std::f32::consts::LOG2_E, parts.round);
    let n = shifted - parts.round;
    let r = multiply_add(-n, parts.ln2[1], multiply_add(-n, parts.ln2[0], x));
    // Horner's rule in fused multiply-adds: half the instructions and half the latency of
    // separate products and sums (Rust never fuses them by itself).
    let p = (parts.taylor.iter().skip(1)).fold(parts.taylor[0], |p, &c| multiply_add(p, r, c));
    // 2ⁿ: the biased exponent n + 127 in the exponent field.
    let exponent = shifted
        .to_bits()
        .wrapping_sub(parts.round.to_bits())
        .wrapping_add(127)
        << 23;
    p * f32::from_bits(exponent)
}

/// The constants of [`exp`], which the native engine's eight-lane form of it shares.
#[derive(Debug)]
pub(crate) struct ExpParts {
    /// The input's bounds.
    pub low: f32,
    pub high: f32,
    /// 1.5·2²³, which rounds a sum to an integer.
    pub round: f32,
    /// ln 2 in two parts whose sum is exact to 2⁻³⁶.
    pub ln2: [f32; 2],
    /// eʳ's Taylor coefficients, highest degree first.
    pub taylor: [f32; 7],
}

pub(crate) const EXP_PARTS: ExpParts = ExpParts {
    low: -87.0,
    high: 88.0,
    round: 12_582_912.0,
    ln2: [0.693_145_75, 1.428_606_8e-6],
    taylor: [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ],
};

/// `erf(x)` within 5e-7 absolute (1.5e-7 from the formula, the rest f32 rounding), as
/// arithmetic the compiler can vectorise (Rust's standard library has no `erf` for `f32`):
/// Abramowitz & Stegun 7.1.26,
/// `erf(x) = 1 − (a₁t + a₂t² + a₃t³ + a₄t⁴ + a₅t⁵) · e^(−x²)` with `t = 1 / (1 + p·|x|)`,
/// odd in `x`.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let magnitude = x.abs();
    let t = 1.0 / (1.0 + P * magnitude);
    let polynomial = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let value = 1.0 - polynomial * exp(-magnitude * magnitude);
    value.copysign(x)
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

    #[test]
    fn erf_is_within_5e7_of_its_values_and_odd() {
        // erf to ten places (Abramowitz & Stegun, table 7.1).
        let table = [
            (0.0, 0.0),
            (0.1, 0.112_462_916_0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (1.5, 0.966_105_146_5),
            (2.0, 0.995_322_265_0),
            (3.0, 0.999_977_909_5),
            (6.0, 1.0),
        ];
        for (x, expected) in table {
            for (x, expected) in [(x, expected), (-x, -expected)] {
                let ours = f64::from(super::erf(x as f32));
                assert!(
                    (ours - expected).abs() < 5e-7,
                    "erf({x}) = {ours}, not {expected}"
                );
            }
        }
    }

    #[test]
    fn gelu_is_half_x_times_one_plus_erf() {
        use super::Activation;
        // x · Φ(x) to nine places.
        let table: [(f32, f64); 4] = [
            (-3.0, -0.004_049_694),
            (-1.0, -0.158_655_254),
            (0.5, 0.345_731_231),
            (2.0, 1.954_499_736),
        ];
        for (x, expected) in table {
            let ours = f64::from(Activation::Gelu.apply(x));
            assert!(
                (ours - expected).abs() < 1e-6,
                "gelu({x}) = {ours}, not {expected}"
            );
        }
    }
}
