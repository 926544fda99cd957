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

use matmul::parallel::for_each_chunk;
use matmul::{Accumulate, Weights};

use crate::model::graph::Activation;

use super::kernels::{Map, grow};

/// Tile positions (4 × 4), each with its own matrix product.
const POSITIONS: usize = 16;
/// Transformed tiles and products of a block are kept to about this many bytes, so they stay
/// in cache between the transforms and the products.
const BLOCK_BYTES: usize = 1024 * 1024;

/// A 3×3 stride-1 convolution's filters in the Winograd domain.
#[derive(Debug)]
pub struct Winograd {
    /// One `[cin, cout]` matrix per tile position: `G g Gᵀ` for every (input, output)
    /// channel pair.
    filters: Vec<Weights>,
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
    pub activation: Option<Activation>,
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
        let filters = filters
            .chunks(cin * cout)
            .map(|position| Weights::new(position.to_vec(), cin, cout))
            .collect();
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
        for_each_chunk(out, h * w * self.cout, |image, maps| {
            for_each_chunk(maps, 2 * tile_rows * w * self.cout, |block, rows| {
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

    /// `V = Bᵀ d B` for each tile of the block, stored `[16][tile][cin]`, a whole channel
    /// vector at a time: `Bᵀ d` (16 differences or sums of two pixels), then that times `B`
    /// (16 more), each element of `V` a signed sum of four pixels.
    fn transform_input(
        &self,
        x: &Map,
        image: usize,
        first_row: usize,
        tiles_across: usize,
        scratch: &mut Scratch,
    ) {
        let cin = self.cin;
        let Scratch {
            tiles,
            input,
            half,
            zeros,
            ..
        } = scratch;
        let (tiles, zeros) = (*tiles, &zeros[..cin]);
        for tile in 0..tiles {
            let (ty, tx) = (tile / tiles_across, tile % tiles_across);
            let pixel = |i: usize, k: usize| -> &[f32] {
                let iy = (first_row + 2 * ty + i).checked_sub(self.top);
                let ix = (2 * tx + k).checked_sub(self.left);
                match iy.zip(ix) {
                    Some((iy, ix)) if iy < x.h && ix < x.w => {
                        &x.data[((image * x.h + iy) * x.w + ix) * cin..][..cin]
                    }
                    _ => zeros, // padding, or a tile overhanging the map
                }
            };
            // Bᵀ d, stored by columns: half[k][a] = (Bᵀ d)[a][k].
            for (k, column) in half.chunks_mut(4 * cin).take(4).enumerate() {
                let rows = [pixel(0, k), pixel(1, k), pixel(2, k), pixel(3, k)];
                b_t(vectors(column, cin), rows);
            }
            // (Bᵀ d) B: row a of V is Bᵀ applied to row a of Bᵀ d.
            let half = &*half;
            for a in 0..4 {
                let row = std::array::from_fn(|k| &half[(k * 4 + a) * cin..][..cin]);
                let mut positions = input.chunks_mut(tiles * cin).skip(4 * a);
                let out = std::array::from_fn(|_| {
                    let position = positions.next().expect("16 positions");
                    &mut position[tile * cin..(tile + 1) * cin]
                });
                b_t(out, row);
            }
        }
    }

    /// The 16 matrix products `M[p] = V[p] · U[p]`.
    fn multiply(&self, scratch: &mut Scratch, threads: usize) {
        let tiles = scratch.tiles;
        let products = scratch.product.chunks_mut(tiles * self.cout);
        let inputs = scratch.input.chunks(tiles * self.cin);
        for ((product, input), filter) in products.zip(inputs).zip(&self.filters) {
            filter.product(product, input, tiles, Accumulate::No, threads);
        }
    }

    /// `Y = Aᵀ M A` for each tile, a whole channel vector at a time (`Aᵀ M` as 8 sums of
    /// three products, then each output pixel as a sum of three of those), written to the
    /// block's output rows with the bias, shortcut and ReLU.
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
        let Scratch { product, half, .. } = scratch;
        for tile in 0..tiles {
            let (ty, tx) = (tile / tiles_across, tile % tiles_across);
            let m = |a: usize, j: usize| &product[((a * 4 + j) * tiles + tile) * cout..][..cout];
            // Aᵀ M, stored by columns: half[j][i] = (Aᵀ M)[i][j].
            for (j, column) in half.chunks_mut(2 * cout).take(4).enumerate() {
                let column_of_m = [m(0, j), m(1, j), m(2, j), m(3, j)];
                for (i, out) in column.chunks_mut(cout).take(2).enumerate() {
                    out.iter_mut()
                        .zip(a_t(i, column_of_m))
                        .for_each(|(o, v)| *o = v);
                }
            }
            // (Aᵀ M) A: output (i, j) is row j of Aᵀ applied to row i of Aᵀ M.
            let s = |j: usize, i: usize| &half[(j * 2 + i) * cout..][..cout];
            for i in 0..2 {
                for j in 0..2 {
                    let (oy, ox) = (2 * ty + i, 2 * tx + j);
                    if oy >= height || ox >= w {
                        continue; // the tile overhangs the map's last row or column
                    }
                    let y = a_t(j, [s(0, i), s(1, i), s(2, i), s(3, i)]);
                    store(&mut rows[(oy * w + ox) * cout..][..cout], y, finish);
                }
            }
        }
    }
}

/// The first `N` vectors of `len` values in `buffer`, as separate mutable slices.
fn vectors<const N: usize>(buffer: &mut [f32], len: usize) -> [&mut [f32]; N] {
    let mut chunks = buffer.chunks_mut(len);
    std::array::from_fn(|_| chunks.next().expect("buffer holds N vectors"))
}

/// `out = Bᵀ r` for four vectors `r`, with `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`.
fn b_t([o0, o1, o2, o3]: [&mut [f32]; 4], r: [&[f32]; 4]) {
    combine2(o0, r[0], r[2], |a, b| a - b);
    combine2(o1, r[1], r[2], |a, b| a + b);
    combine2(o2, r[2], r[1], |a, b| a - b);
    combine2(o3, r[1], r[3], |a, b| a - b);
}

/// `out = f(a, b)`, element-wise.
fn combine2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = f(*a, *b);
    }
}

/// Row `row` of `Aᵀ = [1 1 1 0; 0 1 -1 -1]` applied to four vectors, element by element:
/// `r0 + (r1 + r2)` or `r1 - (r2 + r3)`.
fn a_t<'a>(row: usize, r: [&'a [f32]; 4]) -> impl Iterator<Item = f32> + 'a {
    let (first, rest, sign) = if row == 0 {
        (r[0], [r[1], r[2]], 1.0)
    } else {
        (r[1], [r[2], r[3]], -1.0)
    };
    (first.iter().zip(rest[0]).zip(rest[1])).map(move |((a, b), c)| a + sign * (b + c))
}

/// One output pixel: `y + bias (+ shortcut already there)`, then the activation.
fn store(pixel: &mut [f32], y: impl Iterator<Item = f32>, finish: Finish<'_>) {
    let values = pixel.iter_mut().zip(y).zip(finish.bias);
    match (finish.accumulate, finish.activation) {
        (Accumulate::No, None) => values.for_each(|((o, y), b)| *o = y + b),
        (Accumulate::No, Some(Activation::Relu)) => {
            values.for_each(|((o, y), b)| *o = (y + b).max(0.0))
        }
        (Accumulate::Yes, None) => values.for_each(|((o, y), b)| *o += y + b),
        (Accumulate::Yes, Some(Activation::Relu)) => {
            values.for_each(|((o, y), b)| *o = (*o + y + b).max(0.0))
        }
        (Accumulate::No, Some(a)) => values.for_each(|((o, y), b)| *o = a.apply(y + b)),
        (Accumulate::Yes, Some(a)) => values.for_each(|((o, y), b)| *o = a.apply(*o + y + b)),
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
    /// Half a transform of one tile: `Bᵀ d` (16 `cin` vectors) or `Aᵀ M` (8 `cout` ones).
    half: Vec<f32>,
    /// `cin` zeros: the pixels of the padding.
    zeros: Vec<f32>,
}

impl Scratch {
    fn prepare(&mut self, tiles: usize, cin: usize, cout: usize) {
        self.tiles = tiles;
        grow(&mut self.input, POSITIONS * tiles * cin);
        grow(&mut self.product, POSITIONS * tiles * cout);
        grow(&mut self.half, POSITIONS * cin.max(cout));
        grow(&mut self.zeros, cin);
    }
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}
