//! Vectors for the engine's own loops: `wide`'s `f32x8` (one AVX instruction per operation
//! where the build targets AVX, as it does: `.cargo/config.toml`), and on CPUs that have
//! AVX-512 sixteen-lane vectors through `pulp`, chosen at run time ([`Widest`]).
//!
//! Most loops here are plain Rust the compiler vectorises. These are where it did not do well:
//! - the direct convolutions' register blocks: given arrays of eight sums per pixel, it mixed
//!   lanes of different pixels and shuffled them back, a third of the kernel's instructions;
//! - the sigmoid in SiLU and Sigmoid epilogues: `1 / (1 + e⁻ˣ)` compiled to a vector
//!   division, which takes several cycles per vector on current x86 cores and held the
//!   whole epilogue up (EfficientNet-B0 spends a fifth of its time there). The approximate
//!   reciprocal instruction plus one Newton step gives the same quotient within 3e-7
//!   relative, which safe scalar Rust cannot express.
//!
//! Why AVX-512 at run time rather than in the build: the binaries target x86-64-v3 so that
//! they run on every current x86 server, and on the Intel Xeons that have AVX-512 (two
//! 512-bit multiply-add units per core) ONNX Runtime's kernels use it, doing twice our work
//! per instruction. `pulp` (the crate `gemm` dispatches with) checks the CPU once and
//! compiles a loop for AVX-512 inside a function that only runs where it is present; its
//! token ([`pulp::x86::V4`]) can only be made there, so the sixteen-lane loops cannot run
//! anywhere else, and this crate stays free of `unsafe`.

use std::sync::LazyLock;

use matmul::multiply_add;
pub use wide::f32x8;

use crate::model::graph::EXP_PARTS;

/// A vector width the direct loops run at, as a value that performs the operations: lanes
/// of one (the channels left over), eight (AVX) or sixteen (AVX-512, made only where the CPU
/// has it). Every method is `#[inline(always)]`, so that the loops using them are compiled
/// for the instruction set of the function they are inlined into ([`Widest::run`]).
pub trait Lanes: Copy {
    /// The vector.
    type V: Copy;
    /// Values per vector.
    const N: usize;
    fn zero(self) -> Self::V;
    /// `value` in every lane.
    fn splat(self, value: f32) -> Self::V;
    /// The first `N` values of `values`.
    fn load(self, values: &[f32]) -> Self::V;
    /// Into the first `N` values of `values`.
    fn store(self, v: Self::V, values: &mut [f32]);
    /// `a · k + acc`.
    fn mul_add(self, a: Self::V, k: Self::V, acc: Self::V) -> Self::V;
}

/// One value at a time.
#[derive(Clone, Copy, Debug)]
pub struct One;

/// Eight values in an AVX register.
#[derive(Clone, Copy, Debug)]
pub struct Eight;

/// Sixteen values in an AVX-512 register; holds the proof that the CPU has AVX-512.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct Sixteen(pulp::x86::V4);

impl Lanes for One {
    type V = f32;
    const N: usize = 1;
    #[inline(always)]
    fn zero(self) -> f32 {
        0.0
    }
    #[inline(always)]
    fn splat(self, value: f32) -> f32 {
        value
    }
    #[inline(always)]
    fn load(self, values: &[f32]) -> f32 {
        values[0]
    }
    #[inline(always)]
    fn store(self, v: f32, values: &mut [f32]) {
        values[0] = v;
    }
    #[inline(always)]
    fn mul_add(self, a: f32, k: f32, acc: f32) -> f32 {
        multiply_add(a, k, acc)
    }
}

impl Lanes for Eight {
    type V = f32x8;
    const N: usize = 8;
    #[inline(always)]
    fn zero(self) -> f32x8 {
        f32x8::ZERO
    }
    #[inline(always)]
    fn splat(self, value: f32) -> f32x8 {
        f32x8::splat(value)
    }
    #[inline(always)]
    fn load(self, values: &[f32]) -> f32x8 {
        f32x8::new(*values.first_chunk().expect("eight values"))
    }
    #[inline(always)]
    fn store(self, v: f32x8, values: &mut [f32]) {
        *values.first_chunk_mut().expect("room for eight") = v.to_array();
    }
    #[inline(always)]
    fn mul_add(self, a: f32x8, k: f32x8, acc: f32x8) -> f32x8 {
        a.mul_add(k, acc)
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for Sixteen {
    type V = pulp::f32x16;
    const N: usize = 16;
    #[inline(always)]
    fn zero(self) -> pulp::f32x16 {
        self.splat(0.0)
    }
    #[inline(always)]
    fn splat(self, value: f32) -> pulp::f32x16 {
        pulp::Simd::splat_f32s(self.0, value)
    }
    #[inline(always)]
    fn load(self, values: &[f32]) -> pulp::f32x16 {
        let values: [f32; 16] = *values.first_chunk().expect("sixteen values");
        pulp::cast(values)
    }
    #[inline(always)]
    fn store(self, v: pulp::f32x16, values: &mut [f32]) {
        *values.first_chunk_mut::<16>().expect("room for sixteen") = pulp::cast(v);
    }
    #[inline(always)]
    fn mul_add(self, a: pulp::f32x16, k: pulp::f32x16, acc: pulp::f32x16) -> pulp::f32x16 {
        pulp::Simd::mul_add_f32s(self.0, a, k, acc)
    }
}

/// Work written once for any [`Lanes`] and run at the widest width the CPU has. `run` must
/// be `#[inline(always)]`, and so must everything it calls down to its loops: only code
/// inlined into [`Widest::run`]'s AVX-512 function is compiled for AVX-512.
pub trait Work {
    type Output;
    fn run<L: Lanes>(self, lanes: L) -> Self::Output;
}

/// The widest vectors the direct loops use on this CPU.
#[derive(Clone, Copy, Debug)]
pub enum Widest {
    Eight,
    #[cfg(target_arch = "x86_64")]
    Sixteen(pulp::x86::V4),
}

/// What this CPU has, checked once.
static DETECTED: LazyLock<Widest> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V4::try_new() {
        return Widest::Sixteen(simd);
    }
    Widest::Eight
});

impl Widest {
    /// The widest this CPU has.
    pub fn detect() -> Self {
        *DETECTED
    }

    /// Runs `work` with these vectors, compiled for AVX-512 when they are sixteen wide.
    #[inline(always)]
    pub fn run<W: Work>(self, work: W) -> W::Output {
        match self {
            Widest::Eight => work.run(Eight),
            #[cfg(target_arch = "x86_64")]
            Widest::Sixteen(simd) => pulp::Simd::vectorize(simd, AtSixteen(work, Sixteen(simd))),
        }
    }
}

/// `work` as `pulp` runs it inside its AVX-512 function.
#[cfg(target_arch = "x86_64")]
struct AtSixteen<W>(W, Sixteen);

#[cfg(target_arch = "x86_64")]
impl<W: Work> pulp::WithSimd for AtSixteen<W> {
    type Output = W::Output;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> W::Output {
        self.0.run(self.1)
    }
}

/// `1 / d` within 3e-7 relative for normal `d`: the hardware's 12-bit estimate refined by
/// one Newton step `r + r·(1 − d·r)`.
#[inline(always)]
fn reciprocal(d: f32x8) -> f32x8 {
    let r = d.recip();
    r.mul_add(d.mul_neg_add(r, f32x8::ONE), r)
}

/// `eˣ` as the scalar form in `graph::step` computes it ([`EXP_PARTS`]), eight at a time.
#[inline(always)]
fn exp(x: f32x8) -> f32x8 {
    let parts = &EXP_PARTS;
    let x = x
        .fast_max(f32x8::splat(parts.low))
        .fast_min(f32x8::splat(parts.high));
    let round = f32x8::splat(parts.round);
    let shifted = x.mul_add(f32x8::splat(std::f32::consts::LOG2_E), round);
    let n = shifted - round;
    let r = n.mul_neg_add(f32x8::splat(parts.ln2[0]), x);
    let r = n.mul_neg_add(f32x8::splat(parts.ln2[1]), r);
    let p = (parts.taylor.iter().skip(1)).fold(f32x8::splat(parts.taylor[0]), |p, &c| {
        p.mul_add(r, f32x8::splat(c))
    });
    let exponent = (shifted.to_bits() - round.to_bits() + wide::u32x8::splat(127)) << 23;
    p * f32x8::from_bits(exponent)
}

/// `1 / (1 + e⁻ˣ)`, eight at a time.
#[inline(always)]
pub fn sigmoid(x: f32x8) -> f32x8 {
    reciprocal(f32x8::ONE + exp(-x))
}

/// `x` clamped to `[0, 1]` (HardSigmoid's last step).
#[inline(always)]
pub fn unit(x: f32x8) -> f32x8 {
    x.fast_max(f32x8::ZERO).fast_min(f32x8::ONE)
}

/// HardSwish, `x · clamp(x / 6 + ½, 0, 1)`, eight at a time, as `Activation::apply`
/// computes it.
#[inline(always)]
pub fn hard_swish(x: f32x8) -> f32x8 {
    x * unit(x * f32x8::splat(1.0 / 6.0) + f32x8::splat(0.5))
}

/// `x · sigmoid(x)`, eight at a time.
#[inline(always)]
pub fn silu(x: f32x8) -> f32x8 {
    x * sigmoid(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error of `f` against `reference` over −80 to 80 (dense around 0): beyond
    /// that, e⁻⁸⁷ and smaller fall out of f32's normal range.
    fn worst_error(f: fn(f32x8) -> f32x8, reference: fn(f64) -> f64) -> (f64, f32) {
        let xs: Vec<f32> = (-4000..=4000)
            .map(|i| (i as f32 / 4000.0).powi(3) * 80.0)
            .collect();
        let mut worst = (0.0, 0.0);
        for chunk in xs.chunks_exact(8) {
            let x = f32x8::new(chunk.try_into().expect("eight"));
            for (&x, &y) in chunk.iter().zip(f(x).as_array()) {
                let expected = reference(f64::from(x));
                let error = (f64::from(y) - expected).abs() / expected.abs().max(1e-30);
                if error > worst.0 {
                    worst = (error, x);
                }
            }
        }
        worst
    }

    #[test]
    fn sigmoid_and_silu_match_the_formula_within_5e7_relative() {
        let (error, at) = worst_error(sigmoid, |x| 1.0 / (1.0 + (-x).exp()));
        assert!(error < 5e-7, "sigmoid: relative error {error:e} at {at}");
        let (error, at) = worst_error(silu, |x| x / (1.0 + (-x).exp()));
        assert!(error < 5e-7, "silu: relative error {error:e} at {at}");
    }

    #[test]
    fn far_out_sigmoid_saturates_without_infinities() {
        let x = f32x8::new([-1e30, -200.0, -100.0, -88.5, 88.5, 100.0, 200.0, 1e30]);
        let s = sigmoid(x).to_array();
        assert!(s[..4].iter().all(|&v| (0.0..1e-37).contains(&v)), "{s:?}");
        // Within an ulp of 1 (the refined reciprocal of 1 is 1 − 2⁻²⁴).
        assert!(
            s[4..].iter().all(|&v| (1.0 - v).abs() <= f32::EPSILON),
            "{s:?}"
        );
        let y = silu(x).to_array();
        assert!(
            y[..4].iter().all(|&v| v.is_finite() && v.abs() < 1e-30),
            "{y:?}"
        );
        for (&y, x) in y[4..].iter().zip([88.5, 100.0, 200.0, 1e30]) {
            assert!((y / x - 1.0).abs() <= f32::EPSILON, "silu({x}) = {y}");
        }
    }
}
