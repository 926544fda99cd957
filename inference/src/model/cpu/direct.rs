//! Convolutions computed directly, output pixel by output pixel: depthwise and grouped ones,
//! and dense ones over very few input channels (the 3-channel stems of MobileNet and
//! EfficientNet).
//!
//! These do too little work per weight for a matrix product to pay: a depthwise 5×5 has 25
//! multiply-adds per output value, a 3-channel 3×3 stem 27, and gathering patch rows for them
//! costs about as much as the product. Here [`PIXELS`] adjacent output pixels are computed
//! together, their channels in blocks of 16 (two AVX registers each, eight sums in all): the
//! sums stay in registers while every tap of the window is added in, each weight is loaded
//! once for all the pixels, and the sums are independent, so the additions overlap instead of
//! waiting on each other (one pixel and 8 channels at a time, each sum is a chain of 9 to 25
//! dependent additions: the depthwise layers of MobileNetV2 ran 1.5–2.4× slower that way,
//! docs/PERFORMANCE.md).
//!
//! Depthwise groups inside the input with the usual windows (3×3 and 5×5, stride 1 or 2) go
//! through a copy of the loop with the kernel width and stride as constants: it unrolls into
//! straight multiply-adds from one address per kernel row. The general loop, with every
//! offset computed at run time, spent more instructions on its bookkeeping (and on values
//! spilled to the stack) than on the sums: MobileNetV3's 16-channel 112×112 layer took twice
//! as long. Software prefetching, which had helped the general loop at batch 8, slowed the
//! unrolled one, and is gone.

use matmul::Accumulate;
use matmul::parallel::for_each_chunk;
use std::cell::Cell;

use super::kernels::{Map, Window, grow};
use super::lanes::{Eight, Lanes, One, Widest, Work};

/// A convolution's weights as the direct loops read them: `[tap][group][cin per group][cout
/// per group]`, so that a tap's weights for a block of output channels are contiguous.
#[derive(Debug)]
pub struct Direct {
    weight: Vec<f32>,
    groups: usize,
    /// Input and output channels per group.
    cig: usize,
    cog: usize,
    /// The vectors the loops run with: sixteen lanes where the CPU has AVX-512.
    widest: Widest,
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
            widest: Widest::detect(),
        }
    }

    /// The same loops with `widest` vectors at most (tests run both widths on one CPU).
    #[cfg(test)]
    pub(super) fn with_widest(self, widest: Widest) -> Self {
        Self { widest, ..self }
    }

    /// Convolves `x` into `data` (`(h, w)` output maps), one output line per task; `finish`
    /// gets each finished line (bias and activation while it is in cache). With
    /// `Accumulate::Yes`, `data` holds the shortcut the sums start from.
    ///
    /// Output pixels go in groups of [`PIXELS`]; kernel rows on the padding are left out. A
    /// group whose windows lie inside the input reads the input lines where they are. At an
    /// edge, a depthwise group skips the taps on the padding; a grouped one first copies the
    /// columns it reads into a scratch buffer with the padding written out as zeros, so that
    /// the same loop computes it.
    pub fn run(
        &self,
        x: &Map,
        window: &Window,
        (h, w): (usize, usize),
        data: &mut [f32],
        accumulate: Accumulate,
        finish: impl Fn(&mut [f32]) + Sync,
    ) {
        let layout = Layout::new(window, x.w, x.c, w);
        let from_output = accumulate == Accumulate::Yes;
        for_each_chunk(data, w * self.groups * self.cog, |line, out| {
            let rows = layout.rows(window, x, line / h, line % h);
            self.line(&layout, &rows, out, from_output, &finish);
        });
    }

    /// Whether each output channel is its input channel convolved alone.
    pub fn is_depthwise(&self) -> bool {
        self.cig == 1 && self.cog == 1
    }

    /// `depthwise`, `grouped (g groups)` or `direct`, as a profile names the method.
    pub fn describe(&self) -> String {
        match self.groups {
            _ if self.is_depthwise() => "depthwise".into(),
            1 => "direct".into(),
            groups => format!("grouped ({groups} groups)"),
        }
    }

    /// One output line from the input lines under its windows (`rows`, from
    /// [`Layout::rows_over`]); `finish` and `from_output` as for [`Self::run`].
    pub(super) fn line(
        &self,
        layout: &Layout,
        rows: &Rows,
        out: &mut [f32],
        from_output: bool,
        finish: impl Fn(&mut [f32]),
    ) {
        self.widest.run(Line {
            direct: self,
            layout,
            rows,
            out: &mut *out,
            from_output,
        });
        finish(out);
    }

    /// One output line of a grouped (or dense) convolution, [`PIXELS`] at a time.
    #[inline(always)]
    fn grouped_line<L: Lanes>(
        &self,
        lanes: L,
        (layout, rows, out_line, from_output): (&Layout, &Rows, &mut [f32], bool),
    ) {
        let cout = self.groups * self.cog;
        let w = out_line.len() / cout;
        let mut buffer = LINES.take();
        for ox in (0..w).step_by(PIXELS) {
            let edge;
            let span = if layout.inside(ox) {
                layout.span(rows, ox * layout.stride - layout.before)
            } else {
                edge = layout.copy_edge(rows, ox, &mut buffer);
                layout.span(&edge, 0)
            };
            // The last group may have fewer pixels: its columns come from an edge copy,
            // zeros past the line, and only its own pixels are stored.
            let end = (ox + PIXELS).min(w);
            self.pixels(
                lanes,
                &mut out_line[ox * cout..end * cout],
                &span,
                from_output,
            );
        }
        LINES.set(buffer);
    }

    /// One output line of a depthwise convolution, [`PIXELS`] pixels at a time, each group's
    /// channels two vectors at a time (then one, then 8, then one at a time): eight
    /// independent sums in registers. Groups at the edges, or short at the line's end, check
    /// their taps; the others go through [`Self::depthwise_inside`] where it has their window.
    #[inline(always)]
    fn depthwise_line<L: Lanes>(
        &self,
        lanes: L,
        (layout, rows, out, from_output): (&Layout, &Rows, &mut [f32], bool),
    ) {
        let c = layout.c;
        let w = out.len() / c;
        for ox in (0..w).step_by(PIXELS) {
            let count = PIXELS.min(w - ox);
            let edge = count < PIXELS || !layout.inside(ox);
            let mut at = 0;
            while at < c {
                let pixels = Pixels { ox, at, count };
                let args = (layout, rows, &mut *out, pixels, from_output);
                let left = c - at;
                at += if left >= 2 * L::N {
                    self.depthwise_block::<L, 2>(lanes, args, edge)
                } else if left >= L::N {
                    self.depthwise_block::<L, 1>(lanes, args, edge)
                } else if left >= Eight::N {
                    self.depthwise_block::<Eight, 1>(Eight, args, edge)
                } else {
                    self.depthwise_block::<One, 1>(One, args, edge)
                };
            }
        }
    }

    /// [`Self::depthwise_pixels`] with or without the checks for the edges, or
    /// [`Self::depthwise_inside`] for a group inside the input when it has the window.
    #[inline(always)]
    fn depthwise_block<L: Lanes, const B: usize>(
        &self,
        lanes: L,
        group: Group,
        edge: bool,
    ) -> usize {
        let layout = group.0;
        match (edge, layout.kw, layout.stride, layout.dilation) {
            (true, ..) => self.depthwise_pixels::<L, B, true>(lanes, group),
            (false, 3, 1, 1) => self.depthwise_inside::<L, B, 3, 1>(lanes, group),
            (false, 3, 2, 1) => self.depthwise_inside::<L, B, 3, 2>(lanes, group),
            (false, 5, 1, 1) => self.depthwise_inside::<L, B, 5, 1>(lanes, group),
            (false, 5, 2, 1) => self.depthwise_inside::<L, B, 5, 2>(lanes, group),
            (false, ..) => self.depthwise_pixels::<L, B, false>(lanes, group),
        }
    }

    /// [`Self::depthwise_pixels`] for a group inside the input, with the kernel width `KW`
    /// and stride `S` known to the compiler (dilation 1): every address is a constant
    /// multiple of the channel count from one per kernel row, each input column is loaded
    /// once for all the taps that read it, and the loops unroll into straight code.
    #[inline(always)]
    fn depthwise_inside<L: Lanes, const B: usize, const KW: usize, const S: usize>(
        &self,
        lanes: L,
        (layout, rows, out, Pixels { ox, at, .. }, from_output): Group,
    ) -> usize {
        let c = layout.c;
        let out = &mut out[ox * c + at..][..(PIXELS - 1) * c + B * L::N];
        let mut acc = start_sums::<L, B>(lanes, out, c, PIXELS, from_output);
        let start = (ox * S - layout.before) * c + at;
        let columns = (PIXELS - 1) * S + KW;
        for &(ky, line) in rows {
            let line = &line[start..][..(columns - 1) * c + B * L::N];
            let taps = &self.weight[ky * KW * c + at..][..(KW - 1) * c + B * L::N];
            for kx in 0..KW {
                let k: [L::V; B] = std::array::from_fn(|b| lanes.load(&taps[kx * c + b * L::N..]));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let x = &line[(p * S + kx) * c..];
                    for (b, acc) in acc.iter_mut().enumerate() {
                        *acc = lanes.mul_add(lanes.load(&x[b * L::N..]), k[b], *acc);
                    }
                }
            }
        }
        store_sums(lanes, &acc, out, c, PIXELS);
        B * L::N
    }

    /// `B` blocks of channels of up to [`PIXELS`] adjacent output pixels: their sums are
    /// independent, so the additions overlap instead of waiting on each other, and each
    /// weight is loaded once for all of them. With `EDGE`, taps on the padding (or past the
    /// line, for pixels beyond `count`) are skipped; without, every window lies inside.
    #[inline(always)]
    fn depthwise_pixels<L: Lanes, const B: usize, const EDGE: bool>(
        &self,
        lanes: L,
        (layout, rows, out, Pixels { ox, at, count }, from_output): Group,
    ) -> usize {
        let (c, kw) = (layout.c, layout.kw);
        let width = layout.line / c;
        let out = &mut out[ox * c + at..];
        let mut acc = start_sums::<L, B>(lanes, out, c, count, from_output);
        // Input column of pixel `p`'s tap `kx`, plus `before` (never negative).
        let column = |p: usize, kx: usize| (ox + p) * layout.stride + kx * layout.dilation;
        for &(ky, line) in rows {
            for kx in 0..kw {
                let tap = &self.weight[(ky * kw + kx) * c + at..];
                let k: [L::V; B] = std::array::from_fn(|b| lanes.load(&tap[b * L::N..]));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let ix = column(p, kx).wrapping_sub(layout.before);
                    if EDGE && ix >= width {
                        continue;
                    }
                    let x = &line[ix * c + at..];
                    for (b, acc) in acc.iter_mut().enumerate() {
                        *acc = lanes.mul_add(lanes.load(&x[b * L::N..]), k[b], *acc);
                    }
                }
            }
        }
        store_sums(lanes, &acc, out, c, count);
        B * L::N
    }

    /// Up to [`PIXELS`] adjacent output pixels, as many as `out` holds.
    #[inline(always)]
    fn pixels<L: Lanes>(&self, lanes: L, out: &mut [f32], span: &Span, from_output: bool) {
        for g in 0..self.groups {
            let mut at = 0;
            while at < self.cog {
                let args = (&mut *out, g, at, span, from_output);
                let left = self.cog - at;
                at += if left >= 2 * L::N {
                    self.grouped_span::<L, 2>(lanes, args)
                } else if left >= L::N {
                    self.grouped_span::<L, 1>(lanes, args)
                } else if left >= Eight::N {
                    self.grouped_span::<Eight, 1>(Eight, args)
                } else {
                    self.grouped_span::<One, 1>(One, args)
                };
            }
        }
    }

    /// Grouped, `B` blocks of output channels from `at` on of group `g` for up to
    /// [`PIXELS`] output pixels, as many as `out` holds (the span reads [`PIXELS`]; see
    /// [`Self::depthwise_pixels`]). Returns how many channels.
    #[inline(always)]
    fn grouped_span<L: Lanes, const B: usize>(
        &self,
        lanes: L,
        (out, g, at, span, from_output): (&mut [f32], usize, usize, &Span, bool),
    ) -> usize {
        let (cig, cog) = (self.cig, self.cog);
        let (cin, cout) = (cig * self.groups, cog * self.groups);
        let count = out.len() / cout;
        let out = &mut out[g * cog + at..];
        let mut acc = start_sums::<L, B>(lanes, out, cout, count, from_output);
        // A dense convolution without dilation reads a kernel row's taps from adjacent
        // columns, and its weights for them lie one after the other too: one run of
        // `kw · cin` values per kernel row instead of `kw` runs of `cin` (the 3-channel stems
        // spent most of their time between runs of 3).
        let (runs, taps) = if self.groups == 1 && span.dilation == 1 {
            (1, span.kw)
        } else {
            (span.kw, 1)
        };
        for &(ky, line) in span.rows {
            for kx in (0..runs).map(|run| run * taps) {
                let tap = ky * span.kw + kx;
                let weights = &self.weight[(tap * cin + g * cig) * cog..][..taps * cig * cog];
                let inputs: [&[f32]; PIXELS] = std::array::from_fn(|p| {
                    &line[span.column(p, kx) * cin + g * cig..][..taps * cig]
                });
                for (ci, row) in weights.chunks_exact(cog).enumerate() {
                    let k: [L::V; B] = std::array::from_fn(|b| lanes.load(&row[at + b * L::N..]));
                    for (acc, input) in acc.iter_mut().zip(&inputs) {
                        let v = lanes.splat(input[ci]);
                        for (acc, k) in acc.iter_mut().zip(k) {
                            *acc = lanes.mul_add(v, k, *acc);
                        }
                    }
                }
            }
        }
        store_sums(lanes, &acc, out, cout, count);
        B * L::N
    }
}

/// The sums of a group of [`PIXELS`] pixels, `B` vectors of channels each: zeros, or with
/// `from_output` the values of the first `count` pixels in `out`, `stride` values apart.
#[inline(always)]
fn start_sums<L: Lanes, const B: usize>(
    lanes: L,
    out: &[f32],
    stride: usize,
    count: usize,
    from_output: bool,
) -> [[L::V; B]; PIXELS] {
    let mut sums = [[lanes.zero(); B]; PIXELS];
    if from_output {
        for (p, sums) in sums.iter_mut().enumerate().take(count) {
            for (b, sum) in sums.iter_mut().enumerate() {
                *sum = lanes.load(&out[p * stride + b * L::N..]);
            }
        }
    }
    sums
}

/// Stores the sums of the first `count` pixels of a group into `out`, `stride` values apart.
#[inline(always)]
fn store_sums<L: Lanes, const B: usize>(
    lanes: L,
    sums: &[[L::V; B]; PIXELS],
    out: &mut [f32],
    stride: usize,
    count: usize,
) {
    for (p, sums) in sums.iter().enumerate().take(count) {
        for (b, sum) in sums.iter().enumerate() {
            lanes.store(*sum, &mut out[p * stride + b * L::N..]);
        }
    }
}

/// One output line of [`Direct::line`], as work for [`Widest::run`].
struct Line<'a> {
    direct: &'a Direct,
    layout: &'a Layout,
    rows: &'a Rows<'a>,
    out: &'a mut [f32],
    from_output: bool,
}

impl Work for Line<'_> {
    type Output = ();
    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let args = (self.layout, self.rows, self.out, self.from_output);
        if self.direct.is_depthwise() {
            self.direct.depthwise_line(lanes, args);
        } else {
            self.direct.grouped_line(lanes, args);
        }
    }
}

thread_local! {
    /// Each thread's padded copies of the input lines its current output line reads.
    static LINES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// What a depthwise block computes: a group of pixels of an output line (`out`) from the
/// input `rows` under it, its sums started from `out` or not.
type Group<'a, 'o> = (&'a Layout, &'a Rows<'a>, &'o mut [f32], Pixels, bool);

/// Up to [`PIXELS`] adjacent output pixels from column `ox` on, channels from `at` on.
#[derive(Clone, Copy)]
struct Pixels {
    ox: usize,
    at: usize,
    count: usize,
}

/// How the pixel groups of an output line read the input.
pub(super) struct Layout {
    /// Input values per line, and per edge group's padded copy of a line.
    line: usize,
    group_line: usize,
    /// Channels per input pixel.
    c: usize,
    /// Zero columns before the input's first column.
    before: usize,
    /// Output columns `first..end` have their windows inside the input.
    first: usize,
    end: usize,
    stride: usize,
    dilation: usize,
    kw: usize,
}

impl Layout {
    /// For inputs `width` pixels of `channels` wide and output lines of `outputs` pixels.
    pub(super) fn new(window: &Window, width: usize, channels: usize, outputs: usize) -> Self {
        let [stride, dilation, kw] = [window.stride[1], window.dilation[1], window.kernel[1]];
        let before = window.padding[1].0;
        let reach = window.reach(1);
        let first = before.div_ceil(stride).min(outputs);
        // The last window inside ends at `ox·stride − before + reach − 1 ≤ width − 1`.
        let end = (width + before)
            .checked_sub(reach)
            .map_or(0, |room| (room / stride + 1).min(outputs));
        Self {
            line: width * channels,
            group_line: ((PIXELS - 1) * stride + reach) * channels,
            c: channels,
            before,
            first,
            end: end.max(first),
            stride,
            dilation,
            kw,
        }
    }

    /// The (kernel row, input line) pairs of output line `oy` of `image`, kernel rows on
    /// padding left out.
    fn rows<'a>(&self, window: &Window, x: &'a Map, image: usize, oy: usize) -> Rows<'a> {
        self.rows_over(window, x.h, oy, |iy| {
            &x.data[(image * x.h + iy) * self.line..][..self.line]
        })
    }

    /// The (kernel row, input line) pairs of output line `oy` of maps `height` lines high
    /// whose line `iy` is `line(iy)`, kernel rows on padding left out.
    pub(super) fn rows_over<'a>(
        &self,
        window: &Window,
        height: usize,
        oy: usize,
        line: impl Fn(usize) -> &'a [f32],
    ) -> Rows<'a> {
        (window.taps(0, oy, height).enumerate())
            .filter_map(|(ky, iy)| iy.map(|iy| (ky, line(iy))))
            .collect()
    }

    /// Whether the group of pixels from output column `ox` on lies inside the input.
    fn inside(&self, ox: usize) -> bool {
        ox >= self.first && ox + PIXELS <= self.end
    }

    /// The columns the group from output column `ox` on reads, copied from `rows` into
    /// `buffer` with zeros where they fall on padding.
    fn copy_edge<'a>(&self, rows: &Rows, ox: usize, buffer: &'a mut Vec<f32>) -> Rows<'a> {
        grow(buffer, rows.len() * self.group_line);
        // Input column `from + j` goes to column `j`.
        let from = (ox * self.stride) as isize - self.before as isize;
        let width = (self.line / self.c) as isize;
        let columns = (self.group_line / self.c) as isize;
        let first = (-from).clamp(0, columns) as usize;
        let end = (width - from).clamp(first as isize, columns) as usize;
        let (first, end) = (first * self.c, end * self.c);
        for (padded, (_, line)) in buffer.chunks_exact_mut(self.group_line).zip(rows) {
            let start = (from.max(0) as usize) * self.c;
            padded[..first].fill(0.0);
            padded[first..end].copy_from_slice(&line[start..start + end - first]);
            padded[end..].fill(0.0);
        }
        let copies = buffer.chunks_exact(self.group_line);
        rows.iter()
            .zip(copies)
            .map(|(&(ky, _), line)| (ky, line))
            .collect()
    }

    /// The taps of a pixel group over `rows`, its first window from column `start` on.
    fn span<'a>(&self, rows: &'a Rows<'a>, start: usize) -> Span<'a> {
        Span {
            rows,
            start,
            stride: self.stride,
            dilation: self.dilation,
            kw: self.kw,
        }
    }
}

/// (kernel row, input line) pairs.
pub(super) type Rows<'a> = Vec<(usize, &'a [f32])>;

/// Output pixels computed together by the span kernels.
const PIXELS: usize = 4;

/// The taps of [`PIXELS`] adjacent output pixels.
struct Span<'a> {
    /// (kernel row, input line or edge copy) pairs.
    rows: &'a [(usize, &'a [f32])],
    /// The line's column under the first pixel's first tap.
    start: usize,
    stride: usize,
    dilation: usize,
    kw: usize,
}

impl Span<'_> {
    /// The line's column under tap `kx` of pixel `p`.
    #[inline(always)]
    fn column(&self, p: usize, kx: usize) -> usize {
        self.start + p * self.stride + kx * self.dilation
    }
}
