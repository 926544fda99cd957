//! `dst (+)= lhs · rhs` for row-major `f32` matrices, checked, on top of the `gemm` crate.
//!
//! `gemm` is what burn's CPU backend multiplies with; its entry point takes raw pointers and
//! strides. The inference crate forbids `unsafe`, so its CPU kernels call this one function,
//! which checks every slice against the shapes before handing pointers to `gemm`.

/// Shapes of `dst[m × n] (+)= lhs[m × k] · rhs[k × n]`, all row-major and contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
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

/// Computes `dst (+)= lhs · rhs` on up to `threads` threads of the current rayon pool
/// (1 = the calling thread only).
///
/// # Panics
/// When a slice is shorter than its shape says: a caller bug, caught before any memory is
/// touched rather than turned into an out-of-bounds write.
pub fn matmul(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    shape: Shape,
    accumulate: Accumulate,
    threads: usize,
) {
    let Shape { m, k, n } = shape;
    assert!(
        dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n,
        "matmul {shape:?}: dst {}, lhs {}, rhs {} values",
        dst.len(),
        lhs.len(),
        rhs.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if accumulate == Accumulate::No {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above proves `dst` holds m·n values, `lhs` m·k and `rhs` k·n, and the
    // strides below describe exactly those row-major layouts (row stride = columns, column
    // stride 1), so `gemm` reads and writes only inside the three slices. `dst` is a unique
    // borrow and cannot alias the shared `lhs`/`rhs` borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate == Accumulate::Yes,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
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
        for (m, k, n) in [(1, 1, 1), (7, 13, 5), (49, 300, 33), (130, 64, 17)] {
            let shape = Shape { m, k, n };
            let (lhs, rhs) = (values(m * k, 1), values(k * n, 2));
            let expected = naive(&lhs, &rhs, shape);
            for threads in [1, 2] {
                let mut dst = vec![f32::NAN; m * n];
                matmul(&mut dst, &lhs, &rhs, shape, Accumulate::No, threads);
                for (got, want) in dst.iter().zip(&expected) {
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{shape:?}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn accumulate_adds_to_what_dst_holds() {
        let shape = Shape { m: 3, k: 4, n: 2 };
        let (lhs, rhs) = (values(12, 3), values(8, 4));
        let mut dst = vec![10.0; 6];
        matmul(&mut dst, &lhs, &rhs, shape, Accumulate::Yes, 1);
        for (got, want) in dst.iter().zip(naive(&lhs, &rhs, shape)) {
            assert!((got - (want + 10.0)).abs() < 1e-4);
        }
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros() {
        let mut dst = vec![5.0; 4];
        matmul(
            &mut dst,
            &[],
            &[],
            Shape { m: 2, k: 0, n: 2 },
            Accumulate::No,
            1,
        );
        assert_eq!(dst, [0.0; 4]);
    }

    #[test]
    #[should_panic(expected = "matmul")]
    fn a_short_slice_is_refused_before_any_write() {
        let mut dst = vec![0.0; 3];
        matmul(
            &mut dst,
            &[1.0; 4],
            &[1.0; 4],
            Shape { m: 2, k: 2, n: 2 },
            Accumulate::No,
            1,
        );
    }
}
