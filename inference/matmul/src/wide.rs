//! [`small`](crate::small)'s product in AVX-512 registers, on CPUs that have them (checked
//! once at run time; the build targets x86-64-v3).
//!
//! Why by hand: the register blocks of `small` are arrays the compiler vectorises, and
//! compiled for AVX-512 the same code ran ten times slower (LLVM made poor code of it); with
//! `std::arch` each sum is one named register. Sixteen-lane multiply-adds do twice the work
//! of AVX2's per instruction, and the Xeons that have them run two per cycle: a 1×1
//! convolution over 16–64 channels went at about 60 GFLOP/s per core through the AVX2 loops
//! while `gemm`'s AVX-512 kernel reached 150 on longer inner dimensions (docs/PERFORMANCE.md).
//!
//! A register block is [`ROWS`] rows by up to four vectors (64 columns): up to 24 sums,
//! enough independent multiply-adds to cover their latency on both units, while each step of
//! the inner dimension loads the block's vectors of `rhs` and broadcasts one value per row of
//! `lhs` (the last 16 columns or fewer: [`ROWS_ONE`] rows by one vector). The `dst` columns
//! past its right edge are masked off, so every width runs the same loops. On one core of
//! the Ice Lake host this runs 1×1-convolution shapes at 100–160 GFLOP/s, 1.3–2.5× the AVX2
//! loops and as fast as `gemm` or faster, except for inner dimensions of 500 and more
//! (`time_small_products_and_gemm`).

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
};
use std::cell::Cell;
use std::ops::Range;
use std::sync::LazyLock;

use crate::{Accumulate, Shape};

/// Rows of `lhs` per register block of two to four vectors (up to 64 columns): 12 to 24 sums.
const ROWS: usize = 6;
/// Rows per block of one vector, the last 16 columns or fewer: 12 sums again.
const ROWS_ONE: usize = 12;
/// Columns per register block at most: four vectors of sixteen.
const COLUMNS: usize = 64;
/// Steps of the inner dimension per pass over `dst`: a panel of `rhs` (this many rows of
/// [`COLUMNS`] values, 32 KiB) stays in the L1 cache while the row blocks go by.
const INNER: usize = 128;

/// Whether this CPU has AVX-512F, checked once.
static AVAILABLE: LazyLock<bool> = LazyLock::new(|| is_x86_feature_detected!("avx512f"));

thread_local! {
    /// Each thread's copy of the `rhs` panel it multiplies by (see [`pack`]).
    static PANEL: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Whether [`product`] can run here.
pub(crate) fn available() -> bool {
    *AVAILABLE
}

/// `dst (+)= lhs · rhs` on the calling thread, or `None` where the CPU lacks AVX-512 (the
/// caller then runs its AVX2 loops). Slices are exactly `m·n`, `m·k` and `k·n` long.
///
/// The inner dimension goes in steps of [`INNER`] and the columns in panels of [`COLUMNS`];
/// each panel of `rhs` is copied to a contiguous block first ([`pack`]) that every row of
/// `lhs` then reads from the L1 cache.
pub(crate) fn product(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    shape: Shape,
    accumulate: Accumulate,
) -> Option<()> {
    if !available() {
        return None;
    }
    let Shape { m, k, n } = shape;
    assert!(
        dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n,
        "wide product: slices do not match {m}×{k}×{n}"
    );
    let mut panel = PANEL.take();
    for first in (0..k).step_by(INNER) {
        let inner = first..(first + INNER).min(k);
        let add = accumulate == Accumulate::Yes || first > 0;
        for j in (0..n).step_by(COLUMNS) {
            pack(&mut panel, rhs, n, inner.clone(), j);
            // SAFETY: the CPU has AVX-512F (checked above); the assert proves the slices
            // hold what the shape says, `inner` lies in 0..k, `j` < n, and `pack` made
            // `panel` `inner.len()` rows of COLUMNS values.
            unsafe { rows(dst, lhs, &panel, shape, inner.clone(), j, add) };
        }
    }
    PANEL.set(panel);
    Some(())
}

/// Copies rows `inner` of `rhs` (`n` columns), columns `j..j + COLUMNS`, into `panel` as
/// contiguous rows of [`COLUMNS`] values, zeros past column `n`.
///
/// Why a copy: read in place, a panel's rows lie a row of `rhs` apart, 1 or 2 KiB for 256 or
/// 512 columns, so they fall into a few sets of the L1 cache and evict each other. Copied,
/// they are one block the size of the cache.
fn pack(panel: &mut Vec<f32>, rhs: &[f32], n: usize, inner: Range<usize>, j: usize) {
    let width = COLUMNS.min(n - j);
    panel.resize(inner.len() * COLUMNS, 0.0);
    let source = rhs[inner.start * n..].chunks(n);
    for (to, from) in panel.chunks_exact_mut(COLUMNS).zip(source) {
        to[..width].copy_from_slice(&from[j..j + width]);
        to[width..].fill(0.0);
    }
}

/// The sums over `inner` of columns `j..` (a panel) of every row of `dst`, added to what it
/// holds when `add`, a register block of rows at a time.
///
/// # Safety
/// The CPU has AVX-512F; `dst` and `lhs` hold `m·n` and `m·k` values, `inner` lies within
/// `0..k`, `j < n`, and `panel` holds `inner.len()` rows of [`COLUMNS`] values.
#[target_feature(enable = "avx512f")]
unsafe fn rows(
    dst: &mut [f32],
    lhs: &[f32],
    panel: &[f32],
    Shape { m, k, n }: Shape,
    inner: Range<usize>,
    j: usize,
    add: bool,
) {
    let masks = masks(n - j);
    let vectors = (n - j).min(COLUMNS).div_ceil(16);
    let mut i = 0;
    while i < m {
        let left = m - i;
        // SAFETY: rows i..i + R (R ≤ left) of `dst` and `lhs`, the masked columns from j (none
        // past n) and `panel`'s rows lie inside the slices; the caller vouches for AVX-512F.
        let at = unsafe {
            Block {
                dst: dst.as_mut_ptr().add(i * n + j),
                lhs: lhs.as_ptr().add(i * k + inner.start),
                panel: panel.as_ptr(),
                steps: inner.len(),
                k,
                n,
                masks,
                add,
            }
        };
        // SAFETY: as above, for the rows each block takes.
        i += unsafe {
            match (vectors, left) {
                (4, ROWS..) => at.run::<ROWS, 4>(),
                (4, _) => at.run::<1, 4>(),
                (3, ROWS..) => at.run::<ROWS, 3>(),
                (3, _) => at.run::<1, 3>(),
                (2, ROWS..) => at.run::<ROWS, 2>(),
                (2, _) => at.run::<1, 2>(),
                (_, ROWS_ONE..) => at.run::<ROWS_ONE, 1>(),
                (_, 4..) => at.run::<4, 1>(),
                (_, _) => at.run::<1, 1>(),
            }
        };
    }
}

/// The lane masks of a block's vectors when `left` columns remain from its first.
fn masks(left: usize) -> [__mmask16; COLUMNS / 16] {
    std::array::from_fn(|v| match left.saturating_sub(v * 16) {
        16.. => 0xffff,
        count => (1u16 << count) - 1,
    })
}

/// Where one register block reads and writes: rows from `dst` and `lhs`, the block's
/// vectors of columns from `dst` and the packed `panel`.
struct Block {
    dst: *mut f32,
    lhs: *const f32,
    panel: *const f32,
    /// Steps of the inner dimension summed here.
    steps: usize,
    /// Row strides of `lhs` and of `dst`.
    k: usize,
    n: usize,
    masks: [__mmask16; COLUMNS / 16],
    add: bool,
}

impl Block {
    /// `R` rows by `V` vectors of columns (the last ones masked), summed in registers over
    /// the block's steps of the inner dimension. Returns `R`.
    ///
    /// # Safety
    /// AVX-512F; `R` rows of `steps` values from `lhs` (row stride `k`), `steps` rows of the
    /// panel and `R` rows of `dst` (row stride `n`) in every lane `masks` enables are in
    /// bounds.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run<const R: usize, const V: usize>(&self) -> usize {
        let Self {
            dst,
            lhs,
            panel,
            steps,
            k,
            n,
            masks,
            add,
        } = *self;
        let mut sums = [[_mm512_setzero_ps(); V]; R];
        // Offsets below stay within the rows and masked columns the caller vouches for;
        // masked-off lanes of `dst` are neither read nor written, and the panel is COLUMNS
        // values wide.
        if add {
            for (r, sum) in sums.iter_mut().enumerate() {
                for (v, sum) in sum.iter_mut().enumerate() {
                    // SAFETY: row r < R of `dst`, lanes under masks[v] only.
                    *sum = unsafe { _mm512_maskz_loadu_ps(masks[v], dst.add(r * n + v * 16)) };
                }
            }
        }
        for p in 0..steps {
            // SAFETY: row p < steps of the panel, vector v < V ≤ COLUMNS / 16.
            let w: [__m512; V] = std::array::from_fn(|v| unsafe {
                _mm512_loadu_ps(panel.add(p * COLUMNS + v * 16))
            });
            for (r, sum) in sums.iter_mut().enumerate() {
                // SAFETY: row r < R of `lhs`, step p < steps of its block.
                let a = _mm512_set1_ps(unsafe { *lhs.add(r * k + p) });
                for (sum, w) in sum.iter_mut().zip(w) {
                    *sum = _mm512_fmadd_ps(a, w, *sum);
                }
            }
        }
        for (r, sum) in sums.iter().enumerate() {
            for (v, sum) in sum.iter().enumerate() {
                // SAFETY: row r < R of `dst`, lanes under masks[v] only.
                unsafe { _mm512_mask_storeu_ps(dst.add(r * n + v * 16), masks[v], *sum) };
            }
        }
        R
    }
}
