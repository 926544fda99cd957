//! Eight-lane vectors for the engine's own loops, as `wide`'s `f32x8` (one AVX instruction
//! per operation where the build targets AVX, as it does: `.cargo/config.toml`).
//!
//! Most loops here are plain Rust the compiler vectorises. These are where it did not do well:
//! - the direct convolutions' register blocks: given arrays of eight sums per pixel, it mixed
//!   lanes of different pixels and shuffled them back, a third of the kernel's instructions;
//! - the sigmoid in SiLU and Sigmoid epilogues: `1 / (1 + e⁻ˣ)` compiled to a vector
//!   division, which takes several cycles per vector on current x86 cores and held the
//!   whole epilogue up (EfficientNet-B0 spends a fifth of its time there). The approximate
//!   reciprocal instruction plus one Newton step gives the same quotient within 3e-7
//!   relative, which safe scalar Rust cannot express.

use matmul::multiply_add;
pub use wide::f32x8;

use crate::model::graph::EXP_PARTS;

/// Values computed together: eight in an AVX register, or one (the channels left over).
pub trait Lanes: Copy {
    const N: usize;
    fn zero() -> Self;
    /// `value` in every lane.
    fn splat(value: f32) -> Self;
    /// The first `N` values of `values`.
    fn load(values: &[f32]) -> Self;
    fn store(self, values: &mut [f32]);
    /// `self · k + acc`.
    fn mul_add(self, k: Self, acc: Self) -> Self;
}

impl Lanes for f32x8 {
    const N: usize = 8;
    #[inline(always)]
    fn zero() -> Self {
        f32x8::ZERO
    }
    #[inline(always)]
    fn splat(value: f32) -> Self {
        f32x8::splat(value)
    }
    #[inline(always)]
    fn load(values: &[f32]) -> Self {
        f32x8::new(*values.first_chunk().expect("eight values"))
    }
    #[inline(always)]
    fn store(self, values: &mut [f32]) {
        *values.first_chunk_mut().expect("room for eight") = self.to_array();
    }
    #[inline(always)]
    fn mul_add(self, k: Self, acc: Self) -> Self {
        f32x8::mul_add(self, k, acc)
    }
}

impl Lanes for f32 {
    const N: usize = 1;
    #[inline(always)]
    fn zero() -> Self {
        0.0
    }
    #[inline(always)]
    fn splat(value: f32) -> Self {
        value
    }
    #[inline(always)]
    fn load(values: &[f32]) -> Self {
        values[0]
    }
    #[inline(always)]
    fn store(self, values: &mut [f32]) {
        values[0] = self;
    }
    #[inline(always)]
    fn mul_add(self, k: Self, acc: Self) -> Self {
        multiply_add(self, k, acc)
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
