//! 3×3 stride-1 convolutions by Winograd's minimal filtering, F(2×2, 3×3).
//!
//! Each 2×2 block of outputs is computed from a 4×4 input tile with 16 multiplications per
//! channel pair instead of 36: the tile and the filter are transformed (`Bᵀ d B`, `G g Gᵀ`),
//! multiplied element-wise — over all channels that is 16 matrix products, one per tile
//! position — and transformed back (`Aᵀ m A`). 2.25× fewer multiplications for the layers that
//! hold a third to a half of ResNet's arithmetic. F(2×2, 3×3)'s transforms use only 0, ±1 and
//! ±½, so its rounding error stays within a few ulps of direct convolution (the larger F(4×4)
//! tiles would save more but lose about two decimal digits).

use std::cell::Cell;

use matmul::{Accumulate, Shape};
use rayon::prelude::*;

use super::kernels::Map;

/// Tile positions (4 × 4), each with its own matrix product.
const POSITIONS: usize = 16;
/// Transformed tiles and products of a block are kept to about this many bytes, so they stay
/// in cache between the transforms and the products.
const BLOCK_BYTES: usize = 1024 * 1024;

/// A 3×3 stride-1 convolution's filters in the Winograd domain.
#[derive(Debug)]
pub struct Winograd {
    /// `[16][cin][cout]`: `G g Gᵀ` for every (input, output) channel pair.
    filters: Vec<f32>,
    cin: usize,
    cout: usize,
    /// Padding before the first row and column.
    top: usize,
    left: usize,
}

/// How a convolution's result is finished: bias, then the shortcut already in the output
/// buffer, then ReLU.
#[derive(Clone, Copy, Debug)]
pub struct Finish<'a> {
    pub bias: &'a [f32],
    pub accumulate: Accumulate,
    pub relu: bool,
}

impl Winograd {
    /// Takes ONNX/burn weights `[cout, cin, 3, 3]` and the padding before rows and columns.
    pub fn new(weight: &[f32], cout: usize, cin: usize, top: usize, left: usize) -> Self {
        const G: [[f32; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut filters = vec![0.0; POSITIONS * cin * cout];
        for (co, filter) in weight.chunks(cin * 9).enumerate() {
            for (ci, g) in filter.chunks(9).enumerate() {
                for (a, ga) in G.iter().enumerate() {
                    for (b, gb) in G.iter().enumerate() {
                        let mut sum = 0.0;
                        for k in 0..3 {
                            for l in 0..3 {
                                sum += ga[k] * g[k * 3 + l] * gb[l];
                            }
                        }
                        filters[((a * 4 + b) * cin + ci) * cout + co] = sum;
                    }
                }
            }
        }
        Self {
            filters,
            cin,
            cout,
            top,
            left,
        }
    }

    /// Writes the `[n, h, w, cout]` convolution of `x` into `out` (which holds the shortcut
    /// when `finish.accumulate` says so).
    pub fn run(&self, x: &Map, (h, w): (usize, usize), out: &mut [f32], finish: Finish<'_>) {
        let tiles_across = w.div_ceil(2);
        let per_tile = POSITIONS * (self.cin + self.cout) * size_of::<f32>();
        let tile_rows = (BLOCK_BYTES / per_tile / tiles_across).clamp(1, h.div_ceil(2));
        let blocks = x.n * h.div_ceil(2).div_ceil(tile_rows);
        let threads = if blocks == 1 {
            rayon::current_num_threads()
        } else {
            1
        };
        // One image per chunk, then blocks of whole tile rows (2 output rows each, the last
        // block of an odd-height map 1 row short): every block owns a contiguous run of `out`.
        out.par_chunks_mut(h * w * self.cout)
            .enumerate()
            .for_each(|(image, maps)| {
                maps.par_chunks_mut(2 * tile_rows * w * self.cout)
                    .enumerate()
                    .for_each(|(block, rows)| {
                        let first_row = block * 2 * tile_rows;
                        let output_rows = rows.len() / (w * self.cout);
                        let tiles = output_rows.div_ceil(2) * tiles_across;
                        // Taken, not borrowed: a product on several threads may run another
                        // block on this one while it waits, which then gets a fresh buffer.
                        let mut scratch = SCRATCH.take();
                        scratch.prepare(tiles, self.cin, self.cout);
                        self.transform_input(x, image, first_row, tiles_across, &mut scratch);
                        self.multiply(&mut scratch, threads);
                        self.transform_output(&mut scratch, rows, w, tiles_across, finish);
                        SCRATCH.set(scratch);
                    });
            });
    }

    /// `V = Bᵀ d B` for each tile of the block, stored `[16][tile][cin]`. Every element of
    /// `V` is a signed sum of four input pixels, done a whole channel vector at a time.
    fn transform_input(
        &self,
        x: &Map,
        image: usize,
        first_row: usize,
        tiles_across: usize,
        scratch: &mut Scratch,
    ) {
        let cin = self.cin;
        let tiles = scratch.tiles;
        for tile in 0..tiles {
            let (ty, tx) = (tile / tiles_across, tile % tiles_across);
            let pixel = |i: usize, k: usize| -> Option<&[f32]> {
                let iy = (first_row + 2 * ty + i).checked_sub(self.top)?;
                let ix = (2 * tx + k).checked_sub(self.left)?;
                (iy < x.h && ix < x.w).then(|| {
                    let at = ((image * x.h + iy) * x.w + ix) * cin;
                    &x.data[at..at + cin]
                })
            };
            let d: [[Option<&[f32]>; 4]; 4] =
                std::array::from_fn(|i| std::array::from_fn(|k| pixel(i, k)));
            for (a, rows) in B_T.iter().enumerate() {
                for (j, columns) in B_T.iter().enumerate() {
                    let out = &mut scratch.input[((a * 4 + j) * tiles + tile) * cin..][..cin];
                    out.fill(0.0);
                    for &(i, row_sign) in rows {
                        for &(k, column_sign) in columns {
                            if let Some(values) = d[i][k] {
                                axpy(out, row_sign * column_sign, values);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The 16 matrix products `M[p] = V[p] · U[p]`.
    fn multiply(&self, scratch: &mut Scratch, threads: usize) {
        let tiles = scratch.tiles;
        let shape = Shape {
            m: tiles,
            k: self.cin,
            n: self.cout,
        };
        let products = scratch.product.chunks_mut(tiles * self.cout);
        let inputs = scratch.input.chunks(tiles * self.cin);
        let filters = self.filters.chunks(self.cin * self.cout);
        for ((product, input), filter) in products.zip(inputs).zip(filters) {
            matmul::matmul(product, input, filter, shape, Accumulate::No, threads);
        }
    }

    /// `Y = Aᵀ M A` for each tile, a channel vector at a time, written to the block's output
    /// rows with the bias, shortcut and ReLU.
    fn transform_output(
        &self,
        scratch: &mut Scratch,
        rows: &mut [f32],
        w: usize,
        tiles_across: usize,
        finish: Finish<'_>,
    ) {
        let cout = self.cout;
        let tiles = scratch.tiles;
        let height = rows.len() / (w * cout);
        let Scratch { product, sums, .. } = scratch;
        let (sums, y) = sums.split_at_mut(8 * cout);
        let y = &mut y[..cout];
        for tile in 0..tiles {
            let (ty, tx) = (tile / tiles_across, tile % tiles_across);
            // S = Aᵀ M: 2 × 4 channel vectors.
            for (i, rows_a) in A_T.iter().enumerate() {
                for j in 0..4 {
                    let out = &mut sums[(i * 4 + j) * cout..][..cout];
                    out.fill(0.0);
                    for &(a, sign) in rows_a {
                        axpy(
                            out,
                            sign,
                            &product[((a * 4 + j) * tiles + tile) * cout..][..cout],
                        );
                    }
                }
            }
            // Y = S A, one output pixel at a time.
            for i in 0..2 {
                for (jj, columns) in A_T.iter().enumerate() {
                    let (oy, ox) = (2 * ty + i, 2 * tx + jj);
                    if oy >= height || ox >= w {
                        continue; // the tile overhangs the map's last row or column
                    }
                    y.fill(0.0);
                    for &(j, sign) in columns {
                        axpy(y, sign, &sums[(i * 4 + j) * cout..][..cout]);
                    }
                    store(&mut rows[(oy * w + ox) * cout..][..cout], y, finish);
                }
            }
        }
    }
}

/// Non-zero entries (column, sign) of each row of `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`.
const B_T: [[(usize, f32); 2]; 4] = [
    [(0, 1.0), (2, -1.0)],
    [(1, 1.0), (2, 1.0)],
    [(1, -1.0), (2, 1.0)],
    [(1, 1.0), (3, -1.0)],
];

/// Non-zero entries (column, sign) of each row of `Aᵀ = [1 1 1 0; 0 1 -1 -1]`.
const A_T: [[(usize, f32); 3]; 2] = [
    [(0, 1.0), (1, 1.0), (2, 1.0)],
    [(1, 1.0), (2, -1.0), (3, -1.0)],
];

/// `out += a · x`, element-wise.
fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// One output pixel: `y + bias (+ shortcut already there)`, then ReLU.
fn store(pixel: &mut [f32], y: &[f32], finish: Finish<'_>) {
    let values = pixel.iter_mut().zip(y).zip(finish.bias);
    match (finish.accumulate, finish.relu) {
        (Accumulate::No, false) => values.for_each(|((o, y), b)| *o = y + b),
        (Accumulate::No, true) => values.for_each(|((o, y), b)| *o = (y + b).max(0.0)),
        (Accumulate::Yes, false) => values.for_each(|((o, y), b)| *o += y + b),
        (Accumulate::Yes, true) => values.for_each(|((o, y), b)| *o = (*o + y + b).max(0.0)),
    }
}

/// One block's transformed tiles, products and output sums: per thread, reused by every
/// block it runs (grown when needed, never shrunk nor cleared: each step overwrites what it
/// reads, so a layer after a smaller one pays no zeroing).
#[derive(Default)]
struct Scratch {
    tiles: usize,
    /// `[16][tiles][cin]`.
    input: Vec<f32>,
    /// `[16][tiles][cout]`.
    product: Vec<f32>,
    /// `Aᵀ M` (8 channel vectors) and one output pixel.
    sums: Vec<f32>,
}

impl Scratch {
    fn prepare(&mut self, tiles: usize, cin: usize, cout: usize) {
        self.tiles = tiles;
        grow(&mut self.input, POSITIONS * tiles * cin);
        grow(&mut self.product, POSITIONS * tiles * cout);
        grow(&mut self.sums, 9 * cout);
    }
}

/// Makes `buffer` hold at least `len` values.
fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}
