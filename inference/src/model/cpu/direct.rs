//! Convolutions computed directly, output pixel by output pixel: depthwise and grouped ones,
//! and dense ones over very few input channels (the 3-channel stems of MobileNet and
//! EfficientNet).
//!
//! These do too little work per weight for a matrix product to pay: a depthwise 5×5 has 25
//! multiply-adds per output value, a 3-channel 3×3 stem 27, and gathering patch rows for them
//! costs about as much as the product. Here [`PIXELS`] adjacent output pixels are computed
//! together, their channels in blocks of [`BLOCK`]: the sums stay in registers while every
//! tap of the window is added in, each weight is loaded once for all the pixels, and the
//! pixels' sums are independent, so the additions overlap instead of waiting on each other
//! (one pixel at a time, each sum is a chain of 9 to 25 dependent additions).

use matmul::Accumulate;
use rayon::prelude::*;

use std::cell::Cell;

use super::kernels::{Map, Window, grow};

/// Output channels summed together: two AVX (four SSE) registers of accumulators, with
/// narrower blocks for the remainder.
const BLOCK: usize = 16;

/// A convolution's weights as the direct loops read them: `[tap][group][cin per group][cout
/// per group]`, so that a tap's weights for a block of output channels are contiguous.
#[derive(Debug)]
pub struct Direct {
    weight: Vec<f32>,
    groups: usize,
    /// Input and output channels per group.
    cig: usize,
    cog: usize,
}

impl Direct {
    /// Takes weights in ONNX/burn layout `[cout, cin / groups, kh, kw]`.
    pub fn new(weight: &[f32], [cout, cig, kh, kw]: [usize; 4], groups: usize) -> Self {
        let (taps, cog) = (kh * kw, cout / groups);
        let cin = cig * groups;
        let mut packed = vec![0.0; weight.len()];
        for (co, filter) in weight.chunks(cig * taps).enumerate() {
            let (g, o) = (co / cog, co % cog);
            for (ci, kernel) in filter.chunks(taps).enumerate() {
                for (tap, &value) in kernel.iter().enumerate() {
                    packed[tap * cin * cog + (g * cig + ci) * cog + o] = value;
                }
            }
        }
        Self {
            weight: packed,
            groups,
            cig,
            cog,
        }
    }

    /// Convolves `x` into `data` (`(h, w)` output maps), one output line per task; `finish`
    /// gets each finished line (bias and activation while it is in cache). With
    /// `Accumulate::Yes`, `data` holds the shortcut the sums start from.
    ///
    /// Each task first copies the input lines under its kernel rows into a scratch buffer
    /// with the horizontal padding written out as zeros (kernel rows on padding are
    /// skipped), so that every output pixel, at the edges too, is computed by the same
    /// [`PIXELS`]-wide loop.
    pub fn run(
        &self,
        x: &Map,
        window: &Window,
        (h, w): (usize, usize),
        data: &mut [f32],
        accumulate: Accumulate,
        finish: impl Fn(&mut [f32]) + Sync,
    ) {
        let cout = self.groups * self.cog;
        let layout = Layout::new(window, x, w);
        data.par_chunks_mut(w * cout)
            .enumerate()
            .for_each(|(line, out_line)| {
                let (image, oy) = (line / h, line % h);
                if accumulate == Accumulate::No {
                    out_line.fill(0.0);
                }
                let mut buffer = LINES.take();
                let rows = layout.copy_rows(window, x, image, oy, &mut buffer);
                let full = w - w % PIXELS;
                for ox in (0..full).step_by(PIXELS) {
                    let out = &mut out_line[ox * cout..(ox + PIXELS) * cout];
                    self.pixels(out, &layout.span(&rows, ox));
                }
                if full < w {
                    // The last pixels, computed as a full group in scratch (the padded lines
                    // are long enough) and copied out.
                    let mut tail = vec![0.0; PIXELS * cout];
                    tail[..(w - full) * cout].copy_from_slice(&out_line[full * cout..]);
                    self.pixels(&mut tail, &layout.span(&rows, full));
                    out_line[full * cout..].copy_from_slice(&tail[..(w - full) * cout]);
                }
                drop(rows);
                LINES.set(buffer);
                finish(out_line);
            });
    }

    /// [`PIXELS`] adjacent output pixels.
    #[inline(always)]
    fn pixels(&self, out: &mut [f32], span: &Span) {
        let cout = out.len() / PIXELS;
        let mut at = 0;
        if self.cig == 1 && self.cog == 1 {
            while at < cout {
                at += match cout - at {
                    BLOCK.. => self.depthwise_span::<BLOCK>(out, at, span),
                    4.. => self.depthwise_span::<4>(out, at, span),
                    _ => self.depthwise_span::<1>(out, at, span),
                };
            }
            return;
        }
        for g in 0..self.groups {
            at = 0;
            while at < self.cog {
                at += match self.cog - at {
                    BLOCK.. => self.grouped_span::<BLOCK>(out, g, at, span),
                    8.. => self.grouped_span::<8>(out, g, at, span),
                    4.. => self.grouped_span::<4>(out, g, at, span),
                    _ => self.grouped_span::<1>(out, g, at, span),
                };
            }
        }
    }

    /// Depthwise, channels `at..at + N` of [`PIXELS`] output pixels: their sums are
    /// independent, so the additions overlap instead of waiting on each other, and each
    /// weight is loaded once for all of them. Returns `N`.
    #[inline(always)]
    fn depthwise_span<const N: usize>(&self, out: &mut [f32], at: usize, span: &Span) -> usize {
        let c = out.len() / PIXELS;
        let mut acc = [[0.0f32; N]; PIXELS];
        for (p, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(&out[p * c + at..][..N]);
        }
        for &(ky, line) in span.rows {
            for kx in 0..span.kw {
                let k = &self.weight[(ky * span.kw + kx) * c + at..][..N];
                for (p, acc) in acc.iter_mut().enumerate() {
                    let x = &line[span.column(p, kx) * c + at..][..N];
                    for i in 0..N {
                        acc[i] = multiply_add(x[i], k[i], acc[i]);
                    }
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            out[p * c + at..][..N].copy_from_slice(acc);
        }
        N
    }

    /// Grouped, output channels `at..at + N` of group `g` for [`PIXELS`] output pixels (see
    /// [`Self::depthwise_span`]). Returns `N`.
    #[inline(always)]
    fn grouped_span<const N: usize>(
        &self,
        out: &mut [f32],
        g: usize,
        at: usize,
        span: &Span,
    ) -> usize {
        let (cig, cog) = (self.cig, self.cog);
        let (cin, cout) = (cig * self.groups, cog * self.groups);
        let mut acc = [[0.0f32; N]; PIXELS];
        for (p, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(&out[p * cout + g * cog + at..][..N]);
        }
        for &(ky, line) in span.rows {
            for kx in 0..span.kw {
                let tap = ky * span.kw + kx;
                let weights = &self.weight[(tap * cin + g * cig) * cog..][..cig * cog];
                let inputs: [&[f32]; PIXELS] =
                    std::array::from_fn(|p| &line[span.column(p, kx) * cin + g * cig..][..cig]);
                for (ci, row) in weights.chunks_exact(cog).enumerate() {
                    let k = &row[at..at + N];
                    for (acc, input) in acc.iter_mut().zip(&inputs) {
                        let v = input[ci];
                        for i in 0..N {
                            acc[i] = multiply_add(v, k[i], acc[i]);
                        }
                    }
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            out[p * cout + g * cog + at..][..N].copy_from_slice(acc);
        }
        N
    }
}

thread_local! {
    /// Each thread's padded copies of the input lines its current output line reads.
    static LINES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Where a convolution's padded input lines lie in a task's scratch buffer.
struct Layout {
    /// Input values per padded line: every column the output line's pixel groups read,
    /// from the first window's start (in the left padding) on.
    line: usize,
    /// Zero columns before the input's first column.
    before: usize,
    stride: usize,
    dilation: usize,
    kw: usize,
}

impl Layout {
    fn new(window: &Window, x: &Map, outputs: usize) -> Self {
        let [stride, dilation, kw] = [window.stride[1], window.dilation[1], window.kernel[1]];
        // The pixel groups cover `outputs` rounded up to whole groups.
        let columns = (outputs.next_multiple_of(PIXELS) - 1) * stride + (kw - 1) * dilation + 1;
        Self {
            line: columns * x.c,
            before: window.padding[1].0,
            stride,
            dilation,
            kw,
        }
    }

    /// Copies the input lines under output line `oy`'s kernel rows into `buffer`, padded;
    /// returns each (kernel row, padded line) pair.
    fn copy_rows<'a>(
        &self,
        window: &Window,
        x: &Map,
        image: usize,
        oy: usize,
        buffer: &'a mut Vec<f32>,
    ) -> Vec<(usize, &'a [f32])> {
        let taps: Vec<(usize, usize)> = (window.taps(0, oy, x.h).enumerate())
            .filter_map(|(ky, iy)| iy.map(|iy| (ky, iy)))
            .collect();
        grow(buffer, taps.len() * self.line);
        let c = x.c;
        let before = (self.before * c).min(self.line);
        let inside = (x.w * c).min(self.line - before);
        for (padded, &(_, iy)) in buffer.chunks_exact_mut(self.line).zip(&taps) {
            let input = &x.data[((image * x.h + iy) * x.w) * c..][..inside];
            padded[..before].fill(0.0);
            padded[before..before + inside].copy_from_slice(input);
            padded[before + inside..].fill(0.0);
        }
        let lines = buffer.chunks_exact(self.line);
        taps.iter()
            .zip(lines)
            .map(|(&(ky, _), line)| (ky, line))
            .collect()
    }

    /// The taps of the pixel group from output column `ox` on.
    fn span<'a>(&self, rows: &'a [(usize, &'a [f32])], ox: usize) -> Span<'a> {
        Span {
            rows,
            start: ox * self.stride,
            stride: self.stride,
            dilation: self.dilation,
            kw: self.kw,
        }
    }
}

/// Output pixels computed together by the span kernels.
const PIXELS: usize = 4;

/// The taps of [`PIXELS`] adjacent output pixels.
struct Span<'a> {
    /// (kernel row, padded input line) pairs.
    rows: &'a [(usize, &'a [f32])],
    /// The padded line's column under the first pixel's first tap.
    start: usize,
    stride: usize,
    dilation: usize,
    kw: usize,
}

impl Span<'_> {
    /// The padded line's column under tap `kx` of pixel `p`.
    #[inline(always)]
    fn column(&self, p: usize, kx: usize) -> usize {
        self.start + p * self.stride + kx * self.dilation
    }
}

/// `a · b + c`: one fused instruction where the target has FMA (a build for x86-64-v3), two
/// otherwise (`mul_add` without hardware FMA is a slow library call).
#[inline(always)]
fn multiply_add(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}
