//! The products on CPUs with AVX-512 (checked once at run time; the build targets
//! x86-64-v3), over weights laid out once in panels ([`Panels`]).
//!
//! Why by hand: the register blocks of [`small`](crate::small) are arrays the compiler
//! vectorises, and compiled for AVX-512 the same code ran ten times slower (LLVM made poor
//! code of it); with `std::arch` each sum is one named register. Sixteen-lane multiply-adds do
//! twice the work of AVX2's per instruction, and the Xeons that have them run two per cycle.
//! And `gemm`, the alternative, packs the weights again on every call.
//!
//! A register block is up to 24 sums: rows by one to four vectors of columns (64), enough
//! independent multiply-adds to cover their latency on both units, while each step of the
//! inner dimension loads the block's vectors of `rhs` and broadcasts one value per row of
//! `lhs` (see [`rows`]). The `dst` columns past its right edge are masked off, so every width
//! runs the same loops. On one core of the Ice Lake host (fastest of 200 runs,
//! `time_small_products_and_gemm`) this runs the 1×1-convolution and patch shapes of the
//! model families at 100–160 GFLOP/s, as fast as `gemm` within the host's noise or faster, up to
//! 1.6× on a few rows with many columns (40×4608×512).

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
};
use std::ops::Range;
use std::sync::LazyLock;

use crate::Accumulate;

/// Vectors of sixteen columns per register block at most (64 columns).
const VECTORS: usize = 4;
/// Steps of the inner dimension per pass over `dst`: a panel of `rhs` (this many rows of up
/// to [`VECTORS`] vectors, 32 KiB) stays in the L1 cache while the row blocks go by.
const INNER: usize = 128;

/// Whether this CPU has AVX-512F, checked once.
static AVAILABLE: LazyLock<bool> = LazyLock::new(|| is_x86_feature_detected!("avx512f"));

/// Whether [`Panels`] can be made and multiplied by here.
pub(crate) fn available() -> bool {
    *AVAILABLE
}

/// A `k × n` right-hand side laid out for [`product`], once: for each step of [`INNER`] rows,
/// each column panel (see [`panels`]) as one contiguous block of those rows, zeros past
/// column `n`.
///
/// Why a copy: read in place, a panel's rows lie a row of `rhs` apart, 1 or 2 KiB for 256 or
/// 512 columns, so they fall into a few sets of the L1 cache and evict each other. Copied,
/// they are one block the size of the cache. Copied once, when the weights are loaded: made
/// on every call, the copy cost 5–10 % of a network's time, as much as the product for the
/// few rows of a late layer at batch 1.
#[derive(Debug)]
pub(crate) struct Panels {
    k: usize,
    n: usize,
    /// Steps of the inner dimension per block: [`INNER`], or the most whole runs of a window
    /// row that fit in it (see [`Lhs`]).
    chunk: usize,
    /// The blocks: rows `first..first + steps` of panel `(j, vectors)` start at
    /// `first · width + steps · j`, `width` being `n` rounded up to whole vectors.
    values: Vec<f32>,
}

impl Panels {
    /// `rhs` (`k × n`, row-major) in panels, or `None` where the CPU lacks AVX-512. With
    /// `run` under [`INNER`] (a window row of a convolution read in place, see [`Lhs`]), each
    /// block holds whole runs.
    pub(crate) fn new(rhs: &[f32], k: usize, n: usize, run: usize) -> Option<Self> {
        if !available() {
            return None;
        }
        assert_eq!(rhs.len(), k * n, "panels of a {k}×{n} matrix");
        let chunk = match run {
            1..INNER if k.is_multiple_of(run) => INNER / run * run,
            _ => INNER,
        };
        let width = width(n);
        let mut values = vec![0.0; k * width];
        for first in (0..k).step_by(chunk) {
            let steps = chunk.min(k - first);
            for (j, vectors) in panels(n) {
                let stride = vectors * 16;
                let used = stride.min(n - j);
                let block = &mut values[first * width + steps * j..][..steps * stride];
                let source = rhs[first * n..].chunks(n);
                for (to, from) in block.chunks_exact_mut(stride).zip(source) {
                    to[..used].copy_from_slice(&from[j..j + used]);
                }
            }
        }
        Some(Self {
            k,
            n,
            chunk,
            values,
        })
    }

    /// Whether [`product`] can read `lhs` rows of runs `run` long: whole rows, or runs that
    /// the blocks hold whole.
    pub(crate) fn takes(&self, run: usize) -> bool {
        run == self.k || (run > 0 && self.k.is_multiple_of(run) && self.chunk.is_multiple_of(run))
    }

    /// How many column panels there are (what [`product`] may be given a range of).
    pub(crate) fn count(&self) -> usize {
        panels(self.n).count()
    }
}

/// Where the rows of `lhs` lie in `values`: row `r` is `k / run` runs of `run` values, run `s`
/// starting at `r · stride + s · gap`. A matrix is one run per row (`run` = `stride` = `k`);
/// the patch rows of a convolution read in place from its input are one run per kernel row
/// (`run` = kernel width × channels, `gap` = an input line, `stride` = the stride × channels).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lhs<'a> {
    pub values: &'a [f32],
    pub stride: usize,
    pub run: usize,
    pub gap: usize,
}

/// `dst (+)= lhs · rhs` for the columns of `rhs`'s panels `chosen` (indices into
/// [`panels`]), on the calling thread, for `m` rows of `lhs`; `dst` points at `m × n` values.
///
/// The inner dimension goes in blocks (see [`Panels`]), and for each, one panel at a time:
/// its block of `rhs` stays in the L1 cache while every row of `lhs` goes by.
///
/// # Safety
/// `dst` is valid for reads and writes of `m · n` values, and nothing else reads or writes
/// the columns of the `chosen` panels in them until this returns.
pub(crate) unsafe fn product(
    dst: *mut f32,
    lhs: Lhs<'_>,
    rhs: &Panels,
    m: usize,
    chosen: Range<usize>,
    accumulate: Accumulate,
) {
    let Panels {
        k,
        n,
        chunk,
        ref values,
    } = *rhs;
    let Lhs {
        stride, run, gap, ..
    } = lhs;
    assert!(
        rhs.takes(run),
        "wide product: runs of {run} in blocks of {chunk}"
    );
    let extent = (m.max(1) - 1) * stride + (k / run - 1) * gap + run;
    assert!(
        m == 0 || lhs.values.len() >= extent,
        "wide product: lhs holds {} values, its {m} rows reach {extent}",
        lhs.values.len()
    );
    let width = width(n);
    for first in (0..k).step_by(chunk) {
        let steps = chunk.min(k - first);
        let add = accumulate == Accumulate::Yes || first > 0;
        let block = &values[first * width..][..steps * width];
        // One run per row of the block for a matrix, whole runs otherwise (`takes`).
        let (offset, runs, run) = if run == k {
            (first, 1, steps)
        } else {
            (first / run * gap, steps / run, run)
        };
        for (j, vectors) in panels(n).take(chosen.end).skip(chosen.start) {
            let panel = &block[steps * j..][..steps * vectors * 16];
            let at = Chunk {
                lhs: &lhs.values[offset.min(lhs.values.len())..],
                stride,
                runs,
                run,
                gap,
            };
            // SAFETY: `Panels` exist only where the CPU has AVX-512F; the caller vouches for
            // `dst`, the asserts for the rows' runs within `lhs`, `j` < n, and `panel` is
            // `runs · run` rows of `vectors` vectors.
            unsafe { rows(dst, at, panel, (m, n), (j, vectors), add) };
        }
    }
}

/// One block's steps of `lhs`'s rows: `runs` runs of `run` values, `gap` apart, from row
/// starts `stride` apart.
#[derive(Clone, Copy)]
struct Chunk<'a> {
    lhs: &'a [f32],
    stride: usize,
    runs: usize,
    run: usize,
    gap: usize,
}

/// `n` columns rounded up to whole vectors: the panels' width together.
fn width(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// The column panels of `n` columns: `(first column, vectors)`, as even as whole vectors allow
/// and none over [`VECTORS`] wide.
///
/// Why even: a block's sums are its rows times its vectors, and fewer vectors take more rows
/// (see [`rows`]), but a block of one or two vectors does fewer multiply-adds per load. 96
/// columns as 64 + 32 ran the 32 at half the rate of the 64; as 48 + 48 both run full.
fn panels(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let vectors = n.div_ceil(16);
    let count = vectors.div_ceil(VECTORS);
    let (base, wider) = (vectors / count.max(1), vectors % count.max(1));
    (0..count).scan(0, move |j, panel| {
        let width = base + usize::from(panel < wider);
        let first = *j;
        *j += width * 16;
        Some((first, width))
    })
}

/// The sums over one block of the inner dimension (`lhs`'s runs) of the panel of `vectors`
/// vectors of columns from `j`, for every row of `dst`, added to what it holds when `add`, a register block of rows at a time.
///
/// A block holds 24 sums where it can (of the 32 registers, the rest hold the panel's vectors
/// and the broadcast value): 6 rows by 4 vectors, 8 by 3, 12 by 2; enough independent
/// multiply-adds to cover their latency on both units. One vector takes 12 rows, where each
/// step's loads (one per row) would outnumber what two load ports feed. Rows left over go
/// in blocks of 4 (or 3) and then one by one.
///
/// # Safety
/// The CPU has AVX-512F; `dst` is valid for `m·n` values (the panel's columns of them not
/// touched by anyone else meanwhile), `lhs` holds the runs of `m` rows, `j < n`, and `panel`
/// holds `runs · run` rows of `vectors` vectors.
#[target_feature(enable = "avx512f")]
unsafe fn rows(
    dst: *mut f32,
    lhs: Chunk<'_>,
    panel: &[f32],
    (m, n): (usize, usize),
    (j, vectors): (usize, usize),
    add: bool,
) {
    let masks = masks(n - j);
    let mut i = 0;
    while i < m {
        let left = m - i;
        // SAFETY: rows i..i + R (R ≤ left) of `dst` and `lhs`, the masked columns from j (none
        // past n) and `panel`'s rows lie inside the slices; the caller vouches for AVX-512F.
        let at = unsafe {
            Block {
                dst: dst.add(i * n + j),
                lhs: lhs.lhs.as_ptr().add(i * lhs.stride),
                panel: panel.as_ptr(),
                runs: lhs.runs,
                run: lhs.run,
                gap: lhs.gap,
                stride: lhs.stride,
                n,
                masks,
                add,
            }
        };
        // SAFETY: as above, for the rows each block takes.
        i += unsafe {
            match (vectors, left) {
                (4, 6..) => at.run::<6, 4>(),
                (4, 3..) => at.run::<3, 4>(),
                (4, _) => at.run::<1, 4>(),
                (3, 8..) => at.run::<8, 3>(),
                (3, 4..) => at.run::<4, 3>(),
                (3, _) => at.run::<1, 3>(),
                (2, 12..) => at.run::<12, 2>(),
                (2, 4..) => at.run::<4, 2>(),
                (2, _) => at.run::<1, 2>(),
                (_, 12..) => at.run::<12, 1>(),
                (_, 4..) => at.run::<4, 1>(),
                (_, _) => at.run::<1, 1>(),
            }
        };
    }
}

/// The lane masks of a block's vectors when `left` columns remain from its first.
fn masks(left: usize) -> [__mmask16; VECTORS] {
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
    /// The steps of the inner dimension summed here: `runs` runs of `run` values of each row
    /// of `lhs`, `gap` apart.
    runs: usize,
    run: usize,
    gap: usize,
    /// Row strides of `lhs` and of `dst`.
    stride: usize,
    n: usize,
    masks: [__mmask16; VECTORS],
    add: bool,
}

impl Block {
    /// `R` rows by `V` vectors of columns (the last ones masked), summed in registers over
    /// the block's steps of the inner dimension. Returns `R`.
    ///
    /// # Safety
    /// AVX-512F; the runs of `R` rows of `lhs` (row stride `stride`), `runs · run` rows of
    /// `V` vectors in the panel and `R` rows of `dst` (row stride `n`) in every lane `masks`
    /// enables are in bounds.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn run<const R: usize, const V: usize>(&self) -> usize {
        let Self {
            dst,
            lhs,
            panel,
            runs,
            run,
            gap,
            stride,
            n,
            masks,
            add,
        } = *self;
        let mut sums = [[_mm512_setzero_ps(); V]; R];
        // Offsets below stay within the rows and masked columns the caller vouches for;
        // masked-off lanes of `dst` are neither read nor written, and the panel is V vectors
        // wide.
        if add {
            for (r, sum) in sums.iter_mut().enumerate() {
                for (v, sum) in sum.iter_mut().enumerate() {
                    // SAFETY: row r < R of `dst`, lanes under masks[v] only.
                    *sum = unsafe { _mm512_maskz_loadu_ps(masks[v], dst.add(r * n + v * 16)) };
                }
            }
        }
        for s in 0..runs {
            // SAFETY: run s < runs of each row, and its rows of the panel.
            let (lhs, panel) = unsafe { (lhs.add(s * gap), panel.add(s * run * V * 16)) };
            for p in 0..run {
                // SAFETY: row p < run of the run's panel rows, vector v < V, its width.
                let w: [__m512; V] = std::array::from_fn(|v| unsafe {
                    _mm512_loadu_ps(panel.add(p * V * 16 + v * 16))
                });
                for (r, sum) in sums.iter_mut().enumerate() {
                    // SAFETY: row r < R of `lhs`, value p < run of its run s.
                    let a = _mm512_set1_ps(unsafe { *lhs.add(r * stride + p) });
                    for (sum, w) in sum.iter_mut().zip(w) {
                        *sum = _mm512_fmadd_ps(a, w, *sum);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_share_the_vectors_evenly_and_cover_every_column() {
        let widths = |n| panels(n).collect::<Vec<_>>();
        assert_eq!(widths(96), [(0, 3), (48, 3)]);
        assert_eq!(widths(80), [(0, 3), (48, 2)]);
        assert_eq!(widths(64), [(0, 4)]);
        assert_eq!(widths(17), [(0, 2)]);
        assert_eq!(widths(1), [(0, 1)]);
        assert_eq!(widths(0), []);
        for n in 1..600 {
            let all = widths(n);
            let (last, vectors) = *all.last().expect("at least one panel");
            assert!(last < n && last + vectors * 16 >= n, "{n}: {all:?}");
            assert!(all.iter().all(|&(_, v)| (1..=VECTORS).contains(&v)), "{n}");
            let (low, high) = all
                .iter()
                .fold((VECTORS, 0), |(l, h), &(_, v)| (l.min(v), h.max(v)));
            assert!(high - low <= 1, "{n}: {all:?}");
            assert!(
                all.windows(2).all(|p| p[1].0 == p[0].0 + p[0].1 * 16),
                "{n}: {all:?}"
            );
        }
    }
}
