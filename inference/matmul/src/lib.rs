//! `dst (+)= lhs · weights` for row-major `f32` matrices, checked, for the inference crate's
//! CPU kernels, which forbid `unsafe`.
//!
//! Where the CPU has AVX-512, every product runs register-blocked loops in its intrinsics
//! (`wide`) over weights laid out once, when a model is loaded ([`Weights`]). Elsewhere the
//! weights stay row-major: short inner dimensions and 1–4 rows go through loops in safe Rust
//! ([`small`], `few_rows`), the rest through the `gemm` crate (what burn's CPU backend
//! multiplies with), whose entry point takes raw pointers and strides. Every slice is checked
//! against the shapes before any pointer is used.
//!
//! Its products and the kernels' loops share the threads through [`parallel`], whose waiting
//! thread spins instead of sleeping (and which needs `unsafe` to lend its stack to the pool).

pub mod parallel;
mod small;
#[cfg(target_arch = "x86_64")]
mod wide;

pub use small::multiply_add;

/// Shapes of `dst[m × n] (+)= lhs[m × k] · rhs[k × n]`, all row-major and contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Rows of `lhs` and `dst`.
    pub m: usize,
    /// Columns of `lhs`, rows of `rhs`.
    pub k: usize,
    /// Columns of `rhs` and `dst`.
    pub n: usize,
}

/// Whether the product replaces `dst` or is added to what it holds (a residual connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    /// `dst = lhs · rhs`; `dst`'s previous contents are never read.
    No,
    /// `dst = dst + lhs · rhs`.
    Yes,
}

/// A `k × n` weight matrix, laid out once for every product it takes part in: in
/// [`wide`]'s panels where the CPU has AVX-512, else row-major for the AVX2 loops and `gemm`.
pub struct Weights {
    k: usize,
    n: usize,
    layout: Layout,
}

enum Layout {
    /// Row-major, as given.
    Rows(Vec<f32>),
    #[cfg(target_arch = "x86_64")]
    Panels(wide::Panels),
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layout = match self.layout {
            Layout::Rows(_) => "rows",
            #[cfg(target_arch = "x86_64")]
            Layout::Panels(_) => "panels",
        };
        write!(f, "Weights({}×{}, {layout})", self.k, self.n)
    }
}

impl Weights {
    /// `values`, a row-major `k × n` matrix (`rhs` of the products).
    ///
    /// # Panics
    /// When `values` does not hold `k · n` values: a caller bug.
    pub fn new(values: Vec<f32>, k: usize, n: usize) -> Self {
        assert_eq!(values.len(), k * n, "weights of {k}×{n}");
        #[cfg(target_arch = "x86_64")]
        if let Some(panels) = wide::Panels::new(&values, k, n, k) {
            return Self {
                k,
                n,
                layout: Layout::Panels(panels),
            };
        }
        Self::row_major(values, k, n)
    }

    /// Weights that patch rows of `run`-value runs will be multiplied by, read in place from
    /// a convolution's input ([`Weights::product_windows`]): `run` is the kernel's width
    /// times its input channels, `k` a whole number of runs. `None` where they cannot be read
    /// that way (no AVX-512, or runs too long for a block of the loops): the caller gathers
    /// its patch rows then, for [`Weights::new`]'s weights.
    ///
    /// # Panics
    /// When `values` does not hold `k · n` values: a caller bug.
    pub fn for_windows(values: &[f32], k: usize, n: usize, run: usize) -> Option<Self> {
        assert_eq!(values.len(), k * n, "weights of {k}×{n}");
        #[cfg(target_arch = "x86_64")]
        return wide::Panels::new(values, k, n, run)
            .filter(|panels| run > 0 && panels.takes(run))
            .map(|panels| Self {
                k,
                n,
                layout: Layout::Panels(panels),
            });
        // Only `wide` reads rows in place.
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = run;
            return None;
        }
    }

    /// Kept row-major whatever the CPU: the loops CPUs without AVX-512 run, which tests
    /// pick to check them on one that has it.
    fn row_major(values: Vec<f32>, k: usize, n: usize) -> Self {
        Self {
            k,
            n,
            layout: Layout::Rows(values),
        }
    }

    /// Rows (`k`): the inner dimension of the products.
    pub fn inputs(&self) -> usize {
        self.k
    }

    /// Columns (`n`).
    pub fn outputs(&self) -> usize {
        self.n
    }

    /// `dst (+)= lhs · self` for `m` rows, shared by up to `threads` tasks of the current
    /// rayon pool (1 = the calling thread only): `dst` is `m × n`, `lhs` `m × k`.
    ///
    /// # Panics
    /// When a slice is shorter than its shape says: a caller bug, caught before any memory
    /// is touched rather than turned into an out-of-bounds write.
    pub fn product(
        &self,
        dst: &mut [f32],
        lhs: &[f32],
        m: usize,
        accumulate: Accumulate,
        threads: usize,
    ) {
        let shape = Shape {
            m,
            k: self.k,
            n: self.n,
        };
        let Shape { m, k, n } = shape;
        assert!(
            dst.len() >= m * n && lhs.len() >= m * k,
            "matmul {shape:?}: dst {}, lhs {} values",
            dst.len(),
            lhs.len(),
        );
        if m == 0 || n == 0 {
            return;
        }
        let (dst, lhs) = (&mut dst[..m * n], &lhs[..m * k]);
        if k == 0 {
            if accumulate == Accumulate::No {
                dst.fill(0.0);
            }
            return;
        }
        match &self.layout {
            Layout::Rows(rhs) => by_rows(dst, lhs, rhs, shape, accumulate, threads),
            #[cfg(target_arch = "x86_64")]
            Layout::Panels(panels) => by_panels(dst, lhs, panels, shape, accumulate, threads),
        }
    }

    /// `dst (+)= rows · self` on the calling thread, for the patch rows `windows` describes
    /// in `source` (a convolution's input), read where they lie: `dst` is `windows.rows × n`.
    ///
    /// Why in place: a 7×7 RGB stem's patch rows are 147 values gathered from 7 runs of 21,
    /// and gathering them took two fifths of SqueezeNet's stem on one thread.
    ///
    /// # Panics
    /// When the weights were not laid out by [`Weights::for_windows`] for these runs, or
    /// `source` or `dst` are too short: caller bugs.
    pub fn product_windows(
        &self,
        dst: &mut [f32],
        source: &[f32],
        windows: Windows,
        accumulate: Accumulate,
    ) {
        let Windows {
            rows,
            stride,
            run,
            gap,
        } = windows;
        let n = self.n;
        assert!(
            dst.len() >= rows * n,
            "windows {windows:?}: dst {} values for {n} columns",
            dst.len()
        );
        match &self.layout {
            #[cfg(target_arch = "x86_64")]
            Layout::Panels(panels) if run > 0 && panels.takes(run) => {
                if rows == 0 || n == 0 {
                    return;
                }
                let lhs = wide::Lhs {
                    values: source,
                    stride,
                    run,
                    gap,
                };
                // SAFETY: `dst` holds at least `rows·n` values, uniquely borrowed for the
                // call; `product` checks the runs against `source`.
                unsafe {
                    wide::product(
                        dst.as_mut_ptr(),
                        lhs,
                        panels,
                        rows,
                        0..panels.count(),
                        accumulate,
                    )
                };
            }
            _ => panic!("windows {windows:?}: {self:?} were not laid out for runs of {run}"),
        }
    }
}

/// Where the patch rows of a convolution lie in its input, for [`Weights::product_windows`]:
/// `rows` rows (output pixels), row `r` being the runs `s` of `run` values starting at
/// `r · stride + s · gap`, as many runs as the weights' `k` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Rows (output pixels along a line).
    pub rows: usize,
    /// Values from one row's start to the next's (the stride times the input channels).
    pub stride: usize,
    /// Values per run (the kernel's width times the input channels).
    pub run: usize,
    /// Values from one run's start to the next's (an input line).
    pub gap: usize,
}

/// The product on AVX-512: rows split between the tasks where there are more rows than
/// columns, else the column panels, so that no two tasks read the same weights.
///
/// Why columns for few rows: for the few rows of a late convolution at batch 1 (49 output
/// pixels, megabytes of weights) or a classifier (one row), a task per block of rows would
/// each stream all the weights, the product running at the speed of memory; over half the
/// columns each, both threads read half.
#[cfg(target_arch = "x86_64")]
fn by_panels(
    dst: &mut [f32],
    lhs: &[f32],
    panels: &wide::Panels,
    Shape { m, k, n }: Shape,
    accumulate: Accumulate,
    threads: usize,
) {
    let count = panels.count();
    let by_rows = m >= n && m >= 2 * small::TASK_ROWS;
    let tasks = if by_rows {
        threads.clamp(1, m / small::TASK_ROWS)
    } else {
        threads.clamp(1, count)
    };
    if tasks <= 1 {
        // SAFETY: `dst` is exactly `m·n` values, uniquely borrowed for the call.
        unsafe {
            wide::product(
                dst.as_mut_ptr(),
                dense(lhs, k),
                panels,
                m,
                0..count,
                accumulate,
            )
        };
    } else if by_rows {
        let rows = m.div_ceil(tasks);
        parallel::for_each_chunk(dst, rows * n, |task, dst| {
            let m = dst.len() / n;
            let lhs = dense(&lhs[task * rows * k..][..m * k], k);
            // SAFETY: each task's `dst` is its own `m·n` values, uniquely borrowed.
            unsafe { wide::product(dst.as_mut_ptr(), lhs, panels, m, 0..count, accumulate) };
        });
    } else {
        let dst = Columns(dst.as_mut_ptr());
        let part = count.div_ceil(tasks);
        parallel::for_each(count.div_ceil(part), |task| {
            let first = task * part;
            let chosen = first..(first + part).min(count);
            // SAFETY: `dst` holds `m·n` values, uniquely borrowed by this function until every
            // task has finished (`for_each` returns only then); the tasks' panel ranges are
            // disjoint, so no two write the same columns, and none reads another's.
            unsafe { wide::product(dst.at(0), dense(lhs, k), panels, m, chosen, accumulate) };
        });
    }
}

/// A row-major `lhs` of `k` columns, for [`wide::product`]: one run per row.
#[cfg(target_arch = "x86_64")]
fn dense(values: &[f32], k: usize) -> wide::Lhs<'_> {
    wide::Lhs {
        values,
        stride: k,
        run: k,
        gap: 0,
    }
}

/// The product on CPUs without AVX-512 (and in tests): a few rows by streaming `rhs`, short
/// inner dimensions by the AVX2 loops, the rest by `gemm` with columns shared by the tasks.
///
/// Why columns, not `gemm`'s own threading: for the few rows of a late convolution at batch 1
/// (49 output pixels, megabytes of weights), `gemm` with two threads ran no faster than with one
/// (~100 GFLOP/s either way, docs/PERFORMANCE.md), while two single-threaded products over half
/// the columns each ran at that rate each. Each task reads all of `lhs` and its own columns of
/// `rhs`, and writes its own columns of `dst`.
fn by_rows(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    shape: Shape,
    accumulate: Accumulate,
    threads: usize,
) {
    if shape.m <= FEW_ROWS {
        few_rows(dst, lhs, rhs, shape, accumulate, threads);
    } else if small::pays(shape) {
        small::product(dst, lhs, rhs, shape, accumulate, threads);
    } else {
        by_gemm(
            dst,
            lhs,
            rhs,
            shape,
            accumulate,
            column_width(shape.n, threads),
        );
    }
}

/// The product by `gemm`, tasks of `width` columns.
fn by_gemm(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    Shape { m, k, n }: Shape,
    accumulate: Accumulate,
    width: usize,
) {
    let dst = Columns(dst.as_mut_ptr());
    let run = |first: usize| {
        let columns = width.min(n - first);
        // SAFETY: the assert above proves `dst` holds m·n values, `lhs` m·k and `rhs` k·n.
        // This product reads rows of `lhs` (m × k, row stride k), the k × `columns` block of
        // `rhs` starting at column `first` (row stride n) and writes the m × `columns` block of
        // `dst` starting at column `first` (row stride n): `first + columns <= n`, so every
        // access stays inside the slices. The blocks of `dst` that different tasks write are
        // disjoint column ranges, `dst` is uniquely borrowed until every task has finished
        // (`for_each` returns only then), and it cannot alias the shared `lhs`/`rhs` borrows.
        unsafe {
            gemm::gemm(
                m,
                columns,
                k,
                dst.at(first),
                1,
                n as isize,
                accumulate == Accumulate::Yes,
                lhs.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr().add(first),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    };
    if width >= n {
        run(0);
    } else {
        parallel::for_each(n.div_ceil(width), |task| run(task * width));
    }
}

/// At most this many rows (a fully connected layer, or a 1×1 convolution over pooled maps,
/// at batch 1 to 4) and the product streams `rhs` once, row by row, instead of going through
/// `gemm`, which packs all of `rhs` for the few rows it multiplies: the classifier of
/// MobileNetV3 at batch 1 (1024 × 1000) took 0.28 ms through `gemm`, mostly packing.
const FEW_ROWS: usize = 4;

/// Rows of `rhs` per task at least when [`few_rows`] shares them out: fewer are not worth a
/// task and a partial sum of their own.
const MIN_SPLIT: usize = 64;

/// `dst (+)= lhs · rhs` for a few rows, in safe Rust: each task takes a contiguous run of
/// `rhs`'s rows (the inner dimension) and adds each of them, times the matching value of
/// each row of `lhs`, into partial sums of its own (`m × n`, in the L1 cache), which are
/// added up at the end; a loop compilers vectorise.
///
/// Why rows of `rhs`, not columns: the weights are read once and nothing else, so the product
/// runs at the speed they stream from memory. A task over whole rows reads one contiguous
/// block, which the hardware prefetcher follows; a task over half the columns read 2 KB of
/// each 4 KB row and the prefetcher, which stops at page boundaries, lost the stream (the
/// MobileNetV3 classifiers at batch 1 ran 1.6–1.8× slower than ONNX Runtime's that way).
fn few_rows(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    Shape { k, n, .. }: Shape,
    accumulate: Accumulate,
    threads: usize,
) {
    let tasks = threads.clamp(1, (k / MIN_SPLIT).max(1));
    let part = k.div_ceil(tasks);
    let partial = |first: usize| {
        let inner = first..(first + part).min(k);
        let mut sums = vec![0.0; dst.len()];
        for (p, weights) in inner.clone().zip(rhs[inner.start * n..].chunks_exact(n)) {
            for (sums, row) in sums.chunks_exact_mut(n).zip(lhs.chunks_exact(k)) {
                let value = row[p];
                (sums.iter_mut().zip(weights)).for_each(|(s, w)| *s = multiply_add(value, *w, *s));
            }
        }
        sums
    };
    let partials: Vec<Vec<f32>> = if tasks == 1 {
        vec![partial(0)]
    } else {
        parallel::map(k.div_ceil(part), |task| partial(task * part))
    };
    if accumulate == Accumulate::No {
        dst.fill(0.0);
    }
    for sums in partials {
        dst.iter_mut().zip(&sums).for_each(|(d, s)| *d += s);
    }
}

/// Columns per task when `n` columns are shared by `threads`: whole AVX-512 vectors (16
/// floats), and no task under [`MIN_COLUMNS`] wide, where per-task overhead would eat the gain.
fn column_width(n: usize, threads: usize) -> usize {
    const VECTOR: usize = 16;
    let tasks = threads.clamp(1, n.div_ceil(MIN_COLUMNS).max(1));
    n.div_ceil(tasks).next_multiple_of(VECTOR)
}

/// Narrowest column block worth its own task.
const MIN_COLUMNS: usize = 32;

/// `dst`'s base pointer, shared by the tasks that write its disjoint column blocks.
#[derive(Clone, Copy)]
struct Columns(*mut f32);

// SAFETY: the pointer is only dereferenced by `gemm` inside `matmul`, each task within its own
// column block (see the SAFETY comment there), while `matmul` holds the unique borrow of `dst`.
unsafe impl Send for Columns {}
// SAFETY: as for `Send`: shared between tasks that write disjoint column blocks only.
unsafe impl Sync for Columns {}

impl Columns {
    /// The address of row 0, column `first`.
    fn at(self, first: usize) -> *mut f32 {
        self.0.wrapping_add(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(lhs: &[f32], rhs: &[f32], shape: Shape) -> Vec<f32> {
        let Shape { m, k, n } = shape;
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| lhs[i * k + p] * rhs[p * n + j]).sum();
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_textbook_product_for_odd_shapes_and_threads() {
        for (m, k, n) in [
            (1, 1, 1),
            (7, 13, 5),
            (49, 300, 33),
            (130, 64, 17),
            (9, 20, 150),
        ] {
            let shape = Shape { m, k, n };
            let (lhs, rhs) = (values(m * k, 1), values(k * n, 2));
            let expected = naive(&lhs, &rhs, shape);
            for (layout, threads) in LAYOUTS.into_iter().flat_map(|l| [(l, 1), (l, 2), (l, 3)]) {
                let mut dst = vec![f32::NAN; m * n];
                let weights = layout(rhs.clone(), k, n);
                weights.product(&mut dst, &lhs, m, Accumulate::No, threads);
                for (got, want) in dst.iter().zip(&expected) {
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{shape:?} {weights:?}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The weights as this CPU lays them out, and row-major whatever it is (so that a CPU
    /// with AVX-512 checks the loops of those without too).
    const LAYOUTS: [MakeWeights; 2] = [Weights::new, Weights::row_major];

    /// A constructor of [`Weights`] from row-major values, `k` and `n`.
    type MakeWeights = fn(Vec<f32>, usize, usize) -> Weights;

    /// [`check_writes_and_accumulates`]' product through weights in `layout`.
    fn through(
        layout: MakeWeights,
    ) -> impl Fn(&mut [f32], &[f32], &[f32], Shape, Accumulate, usize) {
        move |dst, lhs, rhs, Shape { m, k, n }, accumulate, threads| {
            layout(rhs.to_vec(), k, n).product(dst, lhs, m, accumulate, threads)
        }
    }

    /// `dst` against the textbook product `expected`, plus `start` (what `dst` held) when the
    /// product was accumulated.
    fn assert_product(
        dst: &[f32],
        expected: &[f32],
        (accumulate, start): (Accumulate, f32),
        what: &str,
    ) {
        let offset = if accumulate == Accumulate::Yes {
            start
        } else {
            0.0
        };
        for (got, want) in dst.iter().zip(expected) {
            let want = want + offset;
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{what} {accumulate:?}: {got} vs {want}"
            );
        }
    }

    /// `product` against the textbook product on each of `shapes`, on each of `threads`,
    /// writing over NaN and adding to 2.0; inputs from seeds `seed` and `seed + 1`.
    fn check_writes_and_accumulates(
        shapes: &[(usize, usize, usize)],
        threads: &[usize],
        seed: u32,
        product: impl Fn(&mut [f32], &[f32], &[f32], Shape, Accumulate, usize),
    ) {
        for &(m, k, n) in shapes {
            let shape = Shape { m, k, n };
            let (lhs, rhs) = (values(m * k, seed), values(k * n, seed + 1));
            let expected = naive(&lhs, &rhs, shape);
            for &threads in threads {
                for accumulate in [Accumulate::No, Accumulate::Yes] {
                    let start = if accumulate == Accumulate::Yes {
                        2.0
                    } else {
                        f32::NAN
                    };
                    let mut dst = vec![start; m * n];
                    product(&mut dst, &lhs, &rhs, shape, accumulate, threads);
                    let what = format!("{shape:?} threads {threads}");
                    assert_product(&dst, &expected, (accumulate, 2.0), &what);
                }
            }
        }
    }

    #[test]
    fn a_few_rows_match_the_textbook_product_and_accumulate() {
        let shapes = [
            (1, 576, 1024),
            (1, 7, 5),
            (3, 40, 100),
            (FEW_ROWS, 9, 64),
            (2, 1024, 1000),
            (1, 3 * MIN_SPLIT + 5, 33),
        ];
        check_writes_and_accumulates(&shapes, &[1, 2, 3], 5, through(Weights::new));
        check_writes_and_accumulates(&shapes, &[1, 2, 3], 5, through(Weights::row_major));
    }

    #[test]
    fn short_inner_dimensions_match_the_textbook_product_and_accumulate() {
        // Column counts around the register blocks (16, 32, 48, 64 and past, panels split
        // evenly: 80 as 48 + 32, 96 as 48 + 48, 1000 as 15 × 64 + 40), rows around theirs (4,
        // 6, 8, 12 and what is left), inner dimensions past one packed panel (128).
        let shapes = [
            (49, 96, 576),
            (13, 16, 72),
            (7, 3, 5),
            (30, 256, 17),
            (25, 300, 33),
            (11, 129, 50),
            (17, 40, 64),
            (6, 8, 65),
            (5, 7, 130),
            (12, 20, 16),
            (23, 5, 15),
            (27, 20, 96),
            (29, 40, 80),
            (41, 130, 144),
            (15, 33, 1000),
            (9, 17, 112),
        ];
        for layout in LAYOUTS {
            check_writes_and_accumulates(&shapes, &[1, 2], 7, through(layout));
        }
        check_writes_and_accumulates(&shapes, &[1, 2], 7, small::product);
    }

    /// Times the paths on the 1×1 convolutions of MobileNetV3 and EfficientNet (and SqueezeNet's
    /// classifier, and a block of its 7×7 stem's patch rows), on one thread and on the pool's:
    /// [`Weights`] as this CPU lays them out (laid out beforehand, as a model's are), the AVX2
    /// loops and `gemm`:
    /// `cargo test --release -p matmul -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn time_small_products_and_gemm() {
        for (m, k, n) in [
            (169, 512, 1000),
            (256, 147, 96),
            (196, 672, 112),
            (196, 112, 672),
            (49, 96, 576),
            (49, 576, 96),
            (3136, 16, 72),
            (196, 240, 40),
            (196, 40, 240),
            (784, 144, 24),
            (784, 24, 144),
            (392, 576, 96),
            (196, 480, 80),
            (196, 1024, 256),
            (3136, 64, 256),
            (3136, 256, 64),
            (784, 128, 512),
            (784, 256, 128),
        ] {
            let shape = Shape { m, k, n };
            let (lhs, rhs) = (values(m * k, 7), values(k * n, 8));
            let time = |f: &mut dyn FnMut(&mut [f32])| {
                let mut dst = vec![0.0; m * n];
                for _ in 0..20 {
                    f(&mut dst);
                }
                // The fastest of 200: on a shared host the mean mostly measures the neighbours.
                (0..200)
                    .map(|_| {
                        let started = std::time::Instant::now();
                        f(&mut dst);
                        started.elapsed().as_secs_f64() * 1e6
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            for threads in [1, rayon::current_num_threads()] {
                let weights = Weights::new(rhs.clone(), k, n);
                let wide = time(&mut |d| weights.product(d, &lhs, m, Accumulate::No, threads));
                let avx2 =
                    time(&mut |d| small::product(d, &lhs, &rhs, shape, Accumulate::No, threads));
                let width = column_width(n, threads);
                let gemm = time(&mut |d| by_gemm(d, &lhs, &rhs, shape, Accumulate::No, width));
                let rate = |us: f64| 2.0 * (m * k * n) as f64 / us / 1e3;
                eprintln!(
                    "{m:5}x{k:5}x{n:5} threads {threads}: laid out {wide:7.1} µs {:5.0} GFLOP/s, \
                     avx2 {avx2:7.1} µs {:5.0}, gemm {gemm:7.1} µs {:5.0}",
                    rate(wide),
                    rate(avx2),
                    rate(gemm)
                );
            }
        }
    }

    #[test]
    fn columns_are_shared_in_whole_vectors_and_never_too_thin() {
        assert_eq!(column_width(2048, 2), 1024);
        assert_eq!(column_width(150, 3), 64, "50 rounded up to whole vectors");
        assert_eq!(column_width(150, 1), 160);
        assert_eq!(column_width(40, 4), 32, "two tasks of at least MIN_COLUMNS");
        assert_eq!(column_width(17, 2), 32, "one task: too narrow to split");
        assert_eq!(column_width(64, 0), 64, "0 threads means the caller's only");
    }

    #[test]
    fn accumulate_adds_to_what_dst_holds() {
        let shape = Shape { m: 3, k: 4, n: 2 };
        let (lhs, rhs) = (values(12, 3), values(8, 4));
        for layout in LAYOUTS {
            let mut dst = vec![10.0; 6];
            layout(rhs.clone(), 4, 2).product(&mut dst, &lhs, 3, Accumulate::Yes, 1);
            for (got, want) in dst.iter().zip(naive(&lhs, &rhs, shape)) {
                assert!((got - (want + 10.0)).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn patch_rows_read_in_place_match_the_product_of_the_gathered_rows() {
        // (rows, stride, run, runs, gap, n): a 7×7/2 RGB stem (blocks of 6 runs, then 1), a
        // 5×5 one (one block), runs of 48 (blocks of 2 runs, then 1).
        for (rows, stride, run, runs, gap, n) in [
            (109, 6, 21, 7, 672, 96),
            (13, 3, 15, 5, 51, 10),
            (7, 16, 48, 3, 200, 40),
        ] {
            let k = run * runs;
            let source = values((rows - 1) * stride + (runs - 1) * gap + run, 11);
            let gathered: Vec<f32> = (0..rows)
                .flat_map(|r| (0..runs).map(move |s| r * stride + s * gap))
                .flat_map(|at| source[at..at + run].to_vec())
                .collect();
            let rhs = values(k * n, 12);
            let expected = naive(&gathered, &rhs, Shape { m: rows, k, n });
            let windows = Windows {
                rows,
                stride,
                run,
                gap,
            };
            let Some(weights) = Weights::for_windows(&rhs, k, n, run) else {
                // Gathered by the caller instead; only a CPU without AVX-512 says so.
                #[cfg(target_arch = "x86_64")]
                assert!(!wide::available(), "{windows:?} refused with AVX-512");
                continue;
            };
            for accumulate in [Accumulate::No, Accumulate::Yes] {
                let mut dst = vec![1.5; rows * n];
                weights.product_windows(&mut dst, &source, windows, accumulate);
                let what = format!("{windows:?} {weights:?}");
                assert_product(&dst, &expected, (accumulate, 1.5), &what);
            }
        }
    }

    #[test]
    #[should_panic(expected = "were not laid out for runs of 21")]
    fn patch_rows_are_refused_by_weights_not_laid_out_for_their_runs() {
        let windows = Windows {
            rows: 2,
            stride: 6,
            run: 21,
            gap: 60,
        };
        let weights = Weights::new(vec![0.5; 147 * 8], 147, 8);
        weights.product_windows(&mut [0.0; 16], &[1.0; 400], windows, Accumulate::No);
    }

    #[test]
    #[should_panic(expected = "weights of 2×3")]
    fn weights_of_the_wrong_size_are_refused() {
        Weights::new(vec![1.0; 5], 2, 3);
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros() {
        for layout in LAYOUTS {
            let mut dst = vec![5.0; 4];
            layout(vec![], 0, 2).product(&mut dst, &[], 2, Accumulate::No, 1);
            assert_eq!(dst, [0.0; 4]);
        }
    }

    #[test]
    #[should_panic(expected = "matmul")]
    fn a_short_slice_is_refused_before_any_write() {
        let mut dst = vec![0.0; 3];
        Weights::new(vec![1.0; 4], 2, 2).product(&mut dst, &[1.0; 4], 2, Accumulate::No, 1);
    }
}
