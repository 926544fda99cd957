//! Products with a short inner dimension, in safe Rust: the 1×1 convolutions around depthwise
//! ones (MobileNet, EfficientNet, RegNet), `k` = 16 to a few hundred.
//!
//! `gemm` packs `rhs` into its own layout on every call, which pays off when each packed
//! value is used by many rows; a 1×1 convolution over a 7×7 map at batch 1 has 49 rows, and
//! packing took as long as the product (docs/PERFORMANCE.md). Here `rhs` is read where it
//! lies: for a block of [`ROWS`] rows and [`COLUMNS`] columns the sums stay in registers
//! (8 AVX registers) while `k` steps each load one row piece of `rhs` and broadcast one value
//! per row of `lhs`. A CPU with AVX-512 runs [`wide`](crate::wide)'s loops instead.

use crate::{Accumulate, Shape};

/// Rows of `lhs` per register block.
const ROWS: usize = 4;
/// Columns of `rhs` per register block (two AVX registers per row).
const COLUMNS: usize = 16;
/// Rows per task at least: enough work to be worth a task, few enough for both threads to
/// share a 7×7 map (49 rows).
pub(crate) const TASK_ROWS: usize = 4 * ROWS;

/// Whether `shape` goes faster here than through `gemm` (on CPUs without AVX-512, where
/// these loops run): a short inner dimension, or a thin output. Measured on this project's
/// shapes by `time_small_products_and_gemm` (run it with `--ignored`): 2.6–3× faster at
/// k = 16–24, even at k ≤ 64 with 256 columns, up to 1.5× at k = 144–240 with 24–40 columns;
/// slower from k = 128 with 512 columns or k = 256 with 64 (a Zen 4 host).
pub(crate) fn pays(Shape { k, n, .. }: Shape) -> bool {
    k <= 64 || (n <= 48 && k <= 256)
}

/// `dst (+)= lhs · rhs`, rows split between the current rayon pool's threads (`threads` = 1:
/// the calling thread only). Slices are exactly `m·n`, `m·k` and `k·n` long.
pub(crate) fn product(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    Shape { m, k, n }: Shape,
    accumulate: Accumulate,
    threads: usize,
) {
    // Within a task, column blocks outside, row blocks inside: a block of `rhs` (k × 16)
    // stays in the L1 cache while every row of the task goes by.
    let task = |(dst, lhs): (&mut [f32], &[f32])| {
        let mut j = 0;
        while j < n {
            j += match n - j {
                COLUMNS.. => columns::<COLUMNS>(dst, lhs, rhs, k, n, j, accumulate),
                8.. => columns::<8>(dst, lhs, rhs, k, n, j, accumulate),
                _ => columns::<1>(dst, lhs, rhs, k, n, j, accumulate),
            };
        }
    };
    let rows = m
        .div_ceil(threads.max(1))
        .next_multiple_of(ROWS)
        .max(TASK_ROWS);
    if threads <= 1 || rows >= m {
        task((dst, lhs));
    } else {
        crate::parallel::for_each_chunk(dst, rows * n, |index, dst| {
            let lhs = &lhs[index * rows * k..][..dst.len() / n * k];
            task((dst, lhs));
        });
    }
}

/// Columns `j..j + C` of every row of `dst`, [`ROWS`] rows at a time. Returns `C`.
#[inline(always)]
fn columns<const C: usize>(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    k: usize,
    n: usize,
    j: usize,
    accumulate: Accumulate,
) -> usize {
    for (dst, lhs) in dst.chunks_mut(ROWS * n).zip(lhs.chunks(ROWS * k)) {
        match dst.len() / n {
            ROWS => block::<ROWS, C>(dst, lhs, rhs, k, n, j, accumulate),
            3 => block::<3, C>(dst, lhs, rhs, k, n, j, accumulate),
            2 => block::<2, C>(dst, lhs, rhs, k, n, j, accumulate),
            _ => block::<1, C>(dst, lhs, rhs, k, n, j, accumulate),
        }
    }
    C
}

/// Columns `j..j + C` of `R` rows, summed in registers over the whole inner dimension.
#[inline(always)]
fn block<const R: usize, const C: usize>(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    k: usize,
    n: usize,
    j: usize,
    accumulate: Accumulate,
) {
    let mut acc = [[0.0f32; C]; R];
    if accumulate == Accumulate::Yes {
        for (r, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(&dst[r * n + j..][..C]);
        }
    }
    let lhs: [&[f32]; R] = std::array::from_fn(|r| &lhs[r * k..][..k]);
    for (p, row) in rhs.chunks_exact(n).enumerate().take(k) {
        let w = &row[j..j + C];
        for (acc, lhs) in acc.iter_mut().zip(&lhs) {
            let a = lhs[p];
            for i in 0..C {
                acc[i] = multiply_add(a, w[i], acc[i]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        dst[r * n + j..][..C].copy_from_slice(acc);
    }
}

/// `a · b + c`: one fused instruction where the build targets FMA (x86-64-v3), two
/// otherwise (`mul_add` without hardware FMA is a slow library call). Also what the inference
/// crate's direct convolutions sum with.
#[inline(always)]
pub fn multiply_add(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}
