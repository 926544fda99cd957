//! Channels-last (NHWC) kernels for the native CPU engine.
//!
//! With channels last, a 1×1 convolution is one matrix product over the feature map as it
//! lies in memory, and a k×k convolution's patch rows are runs of whole pixels copied from the
//! input. Patches are gathered one block of output pixels at a time into a per-thread buffer
//! that stays in cache, and each block's product gets its bias, residual and ReLU while it is
//! still there: no layout conversions, no full-size im2col matrix, no extra passes.

use std::cell::Cell;
use std::ops::Range;

use matmul::parallel::for_each_chunk;
use matmul::{Accumulate, Weights, Windows};

use super::buffers::{Buffer, spare};
use super::direct::Direct;
use super::lanes::{self, f32x8};
use super::winograd::{Finish, Winograd};
use crate::model::graph::Activation;

/// A batch of feature maps, channels last: `[n, y, x, c]` lives at `((n·h + y)·w + x)·c + c`.
#[derive(Clone, Debug, PartialEq)]
pub struct Map {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Buffer,
}

/// A batch of feature vectors `[n, f]`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Vectors {
    pub n: usize,
    pub f: usize,
    pub data: Vec<f32>,
}

impl Map {
    /// Reorders an `[N, C, H, W]` batch (burn's and ONNX's layout) to channels last.
    pub fn from_nchw(data: &[f32], [n, c, h, w]: [usize; 4]) -> Self {
        let mut out = spare(data.len());
        for_each_chunk(&mut out, h * w * c, |index, image| {
            let planes = &data[index * c * h * w..][..c * h * w];
            for (ch, plane) in planes.chunks(h * w).enumerate() {
                for (pixel, &value) in plane.iter().enumerate() {
                    image[pixel * c + ch] = value;
                }
            }
        });
        Self {
            n,
            h,
            w,
            c,
            data: out,
        }
    }

    /// The maps as vectors in ONNX's `Flatten` order (channel-major, `[n, c·h·w]`).
    pub fn flatten(self) -> Vectors {
        let (n, f) = (self.n, self.c * self.h * self.w);
        if self.h * self.w == 1 {
            // After global pooling (the usual case) both orders coincide.
            return Vectors {
                n,
                f,
                data: self.data.into_vec(),
            };
        }
        let pixels = self.h * self.w;
        let mut data = vec![0.0; self.data.len()];
        for (out, image) in data.chunks_mut(f).zip(self.data.chunks(f)) {
            for (pixel, values) in image.chunks(self.c).enumerate() {
                for (ch, &value) in values.iter().enumerate() {
                    out[ch * pixels + pixel] = value;
                }
            }
        }
        Vectors { n, f, data }
    }

    fn same_shape(&self, other: &Map) -> bool {
        (self.n, self.h, self.w, self.c) == (other.n, other.h, other.w, other.c)
    }

    pub(super) fn describe(&self) -> String {
        format!("[{}, {}, {}, {}] (NCHW)", self.n, self.c, self.h, self.w)
    }
}

/// Where a convolution or pooling window goes: sizes, strides, padding `(begin, end)` and
/// dilation per spatial axis (height, then width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [(usize, usize); 2],
    pub dilation: [usize; 2],
    /// Round the output size up (pooling's `ceil_mode`), keeping every window's start inside
    /// the input or its leading padding, as ONNX and PyTorch do.
    pub ceil: bool,
}

impl Window {
    /// Output height and width for an input of `h × w`.
    pub fn output(&self, h: usize, w: usize) -> Result<(usize, usize), String> {
        Ok((self.output_along(0, h)?, self.output_along(1, w)?))
    }

    fn output_along(&self, axis: usize, size: usize) -> Result<usize, String> {
        let span = self.reach(axis);
        let (begin, end) = self.padding[axis];
        let padded = size + begin + end;
        if padded < span {
            return Err(format!(
                "a {}-wide window does not fit an input of size {size} padded by {begin}+{end}",
                span
            ));
        }
        let stride = self.stride[axis];
        let mut out = if self.ceil {
            (padded - span).div_ceil(stride) + 1
        } else {
            (padded - span) / stride + 1
        };
        if self.ceil && (out - 1) * stride >= size + begin {
            out -= 1;
        }
        Ok(out)
    }

    /// Size and stride, `3x3/2` (and dilation, `3x3/1 d2`), as a profile names a window.
    pub(super) fn describe(&self) -> String {
        let [kh, kw] = self.kernel;
        let stride = if self.stride[0] == self.stride[1] {
            self.stride[0].to_string()
        } else {
            format!("{}x{}", self.stride[0], self.stride[1])
        };
        let dilation = match self.dilation {
            [1, 1] => String::new(),
            [dy, dx] if dy == dx => format!(" d{dy}"),
            [dy, dx] => format!(" d{dy}x{dx}"),
        };
        format!("{kh}x{kw}/{stride}{dilation}")
    }

    /// How many input positions one window spans along `axis`, first tap to last.
    pub(super) fn reach(&self, axis: usize) -> usize {
        (self.kernel[axis] - 1) * self.dilation[axis] + 1
    }

    /// The input positions (of `size` along `axis`) that the windows of output positions
    /// `outputs` read, padding left out.
    pub(super) fn input_span(
        &self,
        axis: usize,
        outputs: Range<usize>,
        size: usize,
    ) -> Range<usize> {
        let first = self.start(axis, outputs.start).max(0) as usize;
        let end = self.start(axis, outputs.end - 1) + self.reach(axis) as isize;
        first..(end.clamp(0, size as isize) as usize).max(first)
    }

    /// The input coordinate under the first tap for output position `out` along `axis`
    /// (negative inside the leading padding).
    fn start(&self, axis: usize, out: usize) -> isize {
        (out * self.stride[axis]) as isize - self.padding[axis].0 as isize
    }

    /// For output position `out` along `axis` of an undilated window, the taps that fall
    /// inside the input (of `size`): computed, not searched, as the gather does this for every
    /// kernel row of every output pixel.
    fn inside(&self, axis: usize, out: usize, size: usize) -> Run {
        let kernel = self.kernel[axis] as isize;
        let start = self.start(axis, out);
        let first_tap = (-start).clamp(0, kernel);
        let end_tap = (size as isize - start).clamp(first_tap, kernel);
        let count = (end_tap - first_tap) as usize;
        Run {
            first_tap: first_tap as usize,
            // A window wholly in the padding copies nothing, from anywhere.
            first_input: if count == 0 {
                0
            } else {
                (start + first_tap) as usize
            },
            count,
        }
    }

    /// For output position `out` along `axis`, the input coordinate under each kernel tap, or
    /// `None` where the tap falls on padding.
    pub(super) fn taps(
        &self,
        axis: usize,
        out: usize,
        size: usize,
    ) -> impl Iterator<Item = Option<usize>> {
        let start = self.start(axis, out);
        let dilation = self.dilation[axis] as isize;
        (0..self.kernel[axis] as isize).map(move |tap| {
            let at = start + tap * dilation;
            (0..size as isize).contains(&at).then_some(at as usize)
        })
    }
}

/// The taps of an undilated window row that fall inside the input: `count` of them from tap
/// `first_tap`, over input positions from `first_input` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first_tap: usize,
    first_input: usize,
    count: usize,
}

/// What runs on a convolution's output block while it is still in cache.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Epilogue {
    /// Add a map of the output's shape (a ResNet shortcut) before the activation.
    pub residual: bool,
    /// Applied last (ReLU, ReLU6, HardSwish, SiLU…).
    pub activation: Option<Activation>,
}

/// `f(value + bias)` over rows of `bias.len()` values, with the activation chosen once per
/// block (not per value), so each loop is compiled for its own function.
pub fn finish_rows(block: &mut [f32], bias: &[f32], activation: Option<Activation>) {
    /// [`vector_rows`] with `f` applied lane by lane (left to itself, the compiler
    /// vectorised rows 32 wide and ran 16-channel rows four at a time).
    fn rows(block: &mut [f32], bias: &[f32], f: impl Fn(f32) -> f32 + Copy) {
        vector_rows(block, bias, |v| f32x8::new(v.to_array().map(f)), f);
    }
    /// Eight values at a time through `f`, the rest of each row through `scalar`.
    fn vector_rows(
        block: &mut [f32],
        bias: &[f32],
        f: impl Fn(f32x8) -> f32x8,
        scalar: impl Fn(f32) -> f32,
    ) {
        let (bias8, bias_rest) = bias.as_chunks::<8>();
        for row in block.chunks_mut(bias.len()) {
            let (row8, row_rest) = row.as_chunks_mut::<8>();
            for (values, b) in row8.iter_mut().zip(bias8) {
                *values = f(f32x8::new(*values) + f32x8::new(*b)).to_array();
            }
            for (value, b) in row_rest.iter_mut().zip(bias_rest) {
                *value = scalar(*value + b);
            }
        }
    }
    // Each activation written out in vectors (left to the compiler, HardSwish's clamp
    // compiled to shuffles and spills), the error functions vectorised by the compiler.
    let zero = f32x8::ZERO;
    match activation {
        None => vector_rows(block, bias, |v| v, |v| v),
        Some(Activation::Relu) => vector_rows(block, bias, |v| v.fast_max(zero), |v| v.max(0.0)),
        Some(Activation::Clip { min, max }) => {
            let (low, high) = (f32x8::splat(min), f32x8::splat(max));
            vector_rows(
                block,
                bias,
                |v| v.fast_max(low).fast_min(high),
                |v| v.clamp(min, max),
            );
        }
        Some(Activation::HardSwish) => {
            let scalar = |v| Activation::HardSwish.apply(v);
            vector_rows(block, bias, lanes::hard_swish, scalar);
        }
        Some(hard @ Activation::HardSigmoid { alpha, beta }) => {
            let (alpha8, beta8) = (f32x8::splat(alpha), f32x8::splat(beta));
            vector_rows(
                block,
                bias,
                |v| lanes::unit(alpha8 * v + beta8),
                |v| hard.apply(v),
            );
        }
        Some(Activation::Scale { factor, offset }) => {
            let (factor8, offset8) = (f32x8::splat(factor), f32x8::splat(offset));
            vector_rows(
                block,
                bias,
                |v| factor8 * v + offset8,
                |v| Activation::Scale { factor, offset }.apply(v),
            );
        }
        Some(Activation::Silu) => {
            vector_rows(block, bias, lanes::silu, |v| Activation::Silu.apply(v));
        }
        Some(Activation::Sigmoid) => {
            vector_rows(block, bias, lanes::sigmoid, |v| {
                Activation::Sigmoid.apply(v)
            });
        }
        Some(Activation::Erf) => rows(block, bias, |v| Activation::Erf.apply(v)),
        Some(Activation::Gelu) => rows(block, bias, |v| Activation::Gelu.apply(v)),
    }
}

/// A 2-D convolution with its weights laid out for the method that runs it.
#[derive(Debug)]
pub struct Conv {
    method: Method,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
    window: Window,
    pub epilogue: Epilogue,
}

/// Patch rows gathered per block are kept to about this many bytes, so that a block's patches
/// stay in the core's L2 cache while the product reads them.
const PATCH_BYTES: usize = 512 * 1024;
/// Fewer rows per block than this and each block re-reads the whole weight matrix for too
/// little work (late ResNet layers have 9 MiB of weights and 49 pixels per image).
pub(super) const MIN_ROWS: usize = 48;
/// More rows than this gives no better product and fewer blocks to share between threads.
const MAX_ROWS: usize = 256;

/// Dense convolutions over at most this many input channels (an RGB stem) whose patch rows
/// hold at most [`DIRECT_MAX_PATCH`] values are computed directly: their patch rows are too
/// short for a matrix product to pay for gathering them.
const DIRECT_MAX_CIN: usize = 4;
/// A 3×3 stem's patch rows (27 values) are too short for a product to pay; a 7×7 stem's (147:
/// ResNet, SqueezeNet 1.0) are long enough, and go as [`Method::Windows`] where the CPU can
/// read them in place. Measured on the Intel host, one thread, the fastest of 30 (docs/PERFORMANCE.md): 7×7/2 3→96 at batch 1 4.4 ms by patches against 6.3
/// directly, at batch 4 17.3 against 25.4; 3→64 2.9 against 3.4; a 3×3/2 3→16 stem 0.35 ms
/// directly against 0.66 by patches.
const DIRECT_MAX_PATCH: usize = 64;

/// Which way a convolution is computed, chosen once at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Patch rows times the weights: any window.
    Patches,
    /// Winograd F(2×2, 3×3): 3×3, stride 1, no dilation.
    Winograd,
}

/// Below this many output pixels per image, Winograd's 2×2 tiles overhang a small map (7×7
/// needs 4×4 tiles, 31 % wasted) and its filters (16/9 the size) are read for too few tiles:
/// measured slower on ResNet50's 7×7 layers, 1.2–2× faster on its 14×14 to 56×56 ones
/// (docs/PERFORMANCE.md).
const WINOGRAD_MIN_PIXELS: usize = 14 * 14;

impl Algorithm {
    /// The faster algorithm for `window` producing `output` (height, width) maps, when known.
    pub fn choose(window: &Window, output: Option<(usize, usize)>) -> Self {
        let large = output.is_none_or(|(h, w)| h * w >= WINOGRAD_MIN_PIXELS);
        if Self::winograd_fits(window) && large {
            Self::Winograd
        } else {
            Self::Patches
        }
    }

    fn winograd_fits(window: &Window) -> bool {
        window.kernel == [3, 3] && window.stride == [1, 1] && window.dilation == [1, 1]
    }
}

/// How a convolution is computed, with its weights laid out for that.
#[derive(Debug)]
enum Method {
    /// Gathered patch rows times the `[kh·kw·cin, cout]` weights, rows in (ky, kx, ci) order
    /// (the order of a gathered patch row).
    Patches(Weights),
    /// Dense convolutions over a few input channels (an RGB stem) too wide to compute
    /// directly: patch rows read in place from the input, times the weights laid out for
    /// their runs (one kernel row each).
    Windows(Weights),
    /// 3×3, stride 1, no dilation: Winograd F(2×2, 3×3).
    Winograd(Winograd),
    /// Grouped and depthwise convolutions, and dense ones over a few input channels:
    /// computed directly (see [`direct`](super::direct)).
    Direct(Direct),
}

thread_local! {
    /// Each thread's gathered patch rows, reused by every convolution it runs (grown when
    /// needed, never shrunk: every block overwrites the rows it uses).
    static PATCHES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Makes a scratch `buffer` hold at least `len` values; never shrinks it, so a layer after a
/// smaller one pays no zeroing (every user overwrites the part it reads).
pub fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

impl Conv {
    /// Takes weights in ONNX/burn layout `[cout, cin / groups, kh, kw]`. `algorithm` Winograd
    /// applies only to ungrouped 3×3 stride-1 undilated windows over more than
    /// [`DIRECT_MAX_CIN`] channels; any other such window is computed by patches; grouped
    /// ones, and dense ones over up to [`DIRECT_MAX_CIN`] channels with patch rows of up to
    /// [`DIRECT_MAX_PATCH`] values, directly.
    pub fn new(
        weight: &[f32],
        [cout, cin_per_group, kh, kw]: [usize; 4],
        groups: usize,
        bias: Option<&[f32]>,
        window: Window,
        algorithm: Algorithm,
    ) -> Self {
        let cin = cin_per_group * groups;
        let method = match algorithm {
            _ if groups > 1
                || (cin_per_group <= DIRECT_MAX_CIN
                    && kh * kw * cin_per_group <= DIRECT_MAX_PATCH) =>
            {
                Method::Direct(Direct::new(weight, [cout, cin_per_group, kh, kw], groups))
            }
            Algorithm::Winograd if Algorithm::winograd_fits(&window) => {
                let [(top, _), (left, _)] = window.padding;
                Method::Winograd(Winograd::new(weight, cout, cin, top, left))
            }
            _ => {
                let packed = pack_for_patches(weight, [cout, cin, kh, kw]);
                let (k, run) = (kh * kw * cin, kw * cin);
                let in_place = cin <= DIRECT_MAX_CIN && window.dilation == [1, 1];
                match in_place.then(|| Weights::for_windows(&packed, k, cout, run)) {
                    Some(Some(weights)) => Method::Windows(weights),
                    _ => Method::Patches(Weights::new(packed, k, cout)),
                }
            }
        };
        Self {
            method,
            bias: bias.map_or_else(|| vec![0.0; cout], <[f32]>::to_vec),
            cin,
            cout,
            window,
            epilogue: Epilogue::default(),
        }
    }

    /// Window, channels, method and epilogue, as a profile names the kernel:
    /// `conv 3x3/2 depthwise 72->72 +relu`.
    pub(super) fn describe(&self) -> String {
        let method = match &self.method {
            Method::Patches(_) if self.is_pointwise() => "matmul".to_string(),
            Method::Patches(_) => "patches".to_string(),
            Method::Windows(_) => "windows".to_string(),
            Method::Winograd(_) => "winograd".to_string(),
            Method::Direct(direct) => direct.describe(),
        };
        let mut text = format!(
            "conv {} {method} {}->{}",
            self.window.describe(),
            self.cin,
            self.cout
        );
        if self.epilogue.residual {
            text.push_str(" +add");
        }
        if let Some(activation) = self.epilogue.activation {
            text.push_str(&format!(" +{activation:?}"));
        }
        text
    }

    /// Where the kernel goes over the input.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Convolves `x`; with a residual epilogue, `residual` (the output's shape) is added in.
    pub fn run(&self, x: &Map, residual: Option<Map>) -> Result<Map, String> {
        self.check_input(x)?;
        let (h, w) = self.window.output(x.h, x.w)?;
        let (mut data, accumulate) = self.output(x.n, (h, w), residual)?;
        match &self.method {
            Method::Patches(weight) => self.by_patches(x, (h, w), weight, &mut data, accumulate),
            Method::Windows(weight) => self.by_windows(x, (h, w), weight, &mut data, accumulate),
            Method::Winograd(winograd) => {
                let finish = Finish {
                    bias: &self.bias,
                    accumulate,
                    activation: self.epilogue.activation,
                };
                winograd.run(x, (h, w), &mut data, finish);
            }
            Method::Direct(direct) => {
                let finish = |line: &mut [f32]| self.finish(line);
                direct.run(x, &self.window, (h, w), &mut data, accumulate, finish);
            }
        }
        Ok(Map {
            n: x.n,
            h,
            w,
            c: self.cout,
            data,
        })
    }

    pub(super) fn check_input(&self, x: &Map) -> Result<(), String> {
        if x.c == self.cin {
            return Ok(());
        }
        Err(format!(
            "input {} has {} channels, the weights expect {}",
            x.describe(),
            x.c,
            self.cin
        ))
    }

    /// The buffer `n` output maps of `(h, w)` are written to: a spare one, or with a residual
    /// epilogue the shortcut itself, which the sums then start from.
    pub(super) fn output(
        &self,
        n: usize,
        (h, w): (usize, usize),
        residual: Option<Map>,
    ) -> Result<(Buffer, Accumulate), String> {
        match (self.epilogue.residual, residual) {
            (false, None) => Ok((spare(n * h * w * self.cout), Accumulate::No)),
            (true, Some(r)) if (r.n, r.h, r.w, r.c) == (n, h, w, self.cout) => {
                Ok((r.data, Accumulate::Yes))
            }
            (true, Some(r)) => Err(format!(
                "residual {} does not match the output [{n}, {}, {h}, {w}]",
                r.describe(),
                self.cout
            )),
            // The plan passes a shortcut exactly when it fused an add into this kernel.
            (fused, _) => Err(format!(
                "a shortcut was {} but the convolution {} one",
                if fused { "missing" } else { "given" },
                if fused { "adds" } else { "has no use for" }
            )),
        }
    }

    /// Input and output channels.
    pub(super) fn channels(&self) -> (usize, usize) {
        (self.cin, self.cout)
    }

    /// The `[cin, cout]` weights of a 1×1 convolution computed as one matrix product over
    /// the input map (stride 1, no padding): `None` for any other.
    pub(super) fn pointwise_weight(&self) -> Option<&Weights> {
        match &self.method {
            Method::Patches(weight) if self.is_pointwise() => Some(weight),
            _ => None,
        }
    }

    /// The same convolution, its direct loops (if any) run with `widest` vectors at most.
    #[cfg(test)]
    pub(super) fn with_widest(self, widest: super::lanes::Widest) -> Self {
        let method = match self.method {
            Method::Direct(direct) => Method::Direct(direct.with_widest(widest)),
            other => other,
        };
        Self { method, ..self }
    }

    /// The direct loops of a depthwise convolution: `None` for any other.
    pub(super) fn depthwise(&self) -> Option<&Direct> {
        match &self.method {
            Method::Direct(direct) if direct.is_depthwise() => Some(direct),
            _ => None,
        }
    }

    /// Patch rows gathered one block of output pixels at a time, times the weights.
    fn by_patches(
        &self,
        x: &Map,
        (h, w): (usize, usize),
        weight: &Weights,
        data: &mut [f32],
        accumulate: Accumulate,
    ) {
        let k = self.patch_len();
        let threads = rayon::current_num_threads();
        // One block of output rows from `first` on: patches gathered, times the weights, then
        // bias and ReLU, each step shared by `threads` (the product by columns, the others by
        // rows).
        let block = |first: usize, dst: &mut [f32], threads: usize| {
            let count = dst.len() / self.cout;
            // Rows per task when the gather and the epilogue are shared.
            let part = count.div_ceil(threads).max(1);
            if self.is_pointwise() {
                let lhs = &x.data[first * k..(first + count) * k];
                weight.product(dst, lhs, count, accumulate, threads);
            } else {
                // Taken, not borrowed: a product on several threads may run another
                // block on this one while it waits, which then gets a fresh buffer.
                let mut buffer = PATCHES.take();
                grow(&mut buffer, count * k);
                let patches = &mut buffer[..count * k];
                for_each_chunk(patches, part * k, |i, rows| {
                    self.gather(x, (h, w), first + i * part, rows)
                });
                weight.product(dst, patches, count, accumulate, threads);
                PATCHES.set(buffer);
            }
            for_each_chunk(dst, part * self.cout, |_, rows| self.finish(rows));
        };
        match Tiles::new(data.len() / self.cout, k, self.cout, threads) {
            Tiles::Rows(rows) => for_each_chunk(data, rows * self.cout, |index, dst| {
                block(index * rows, dst, 1)
            }),
            Tiles::Shared => block(0, data, threads),
        }
    }

    /// Each output line's patch rows read in place from the input (see
    /// [`Weights::product_windows`]), from a copy with the padding written out when the window
    /// has any, then bias and activation; lines shared by the threads.
    fn by_windows(
        &self,
        x: &Map,
        (h, w): (usize, usize),
        weight: &Weights,
        data: &mut [f32],
        accumulate: Accumulate,
    ) {
        let cin = self.cin;
        let ([_, kw], [sy, sx]) = (self.window.kernel, self.window.stride);
        let [(top, bottom), (left, right)] = self.window.padding;
        let (ph, pw) = (x.h + top + bottom, x.w + left + right);
        let padded;
        let input = if (top, bottom, left, right) == (0, 0, 0, 0) {
            &x.data[..]
        } else {
            padded = pad(x, [(top, bottom), (left, right)]);
            &padded[..]
        };
        let windows = Windows {
            rows: w,
            stride: sx * cin,
            run: kw * cin,
            gap: pw * cin,
        };
        for_each_chunk(data, w * self.cout, |line, out| {
            let (image, oy) = (line / h, line % h);
            let first = (image * ph + oy * sy) * pw * cin;
            weight.product_windows(out, &input[first..], windows, accumulate);
            self.finish(out);
        });
    }

    /// Values in one patch row: every kernel tap's input channels.
    fn patch_len(&self) -> usize {
        self.window.kernel[0] * self.window.kernel[1] * self.cin
    }

    /// 1×1, stride 1, no padding: the input rows are the patch rows.
    fn is_pointwise(&self) -> bool {
        let window = &self.window;
        window.kernel == [1, 1] && window.stride == [1, 1] && window.padding == [(0, 0); 2]
    }

    /// Fills `patches` with one row per output pixel from `first` on: for each kernel tap in
    /// (ky, kx) order, the `cin` input channels under it, or zeros on padding.
    fn gather(&self, x: &Map, (h, w): (usize, usize), first: usize, patches: &mut [f32]) {
        let cin = self.cin;
        let [_, kw] = self.window.kernel;
        let contiguous = self.window.dilation[1] == 1;
        for (offset, row) in patches.chunks_mut(self.patch_len()).enumerate() {
            let pixel = first + offset;
            let (image, oy, ox) = (pixel / (h * w), pixel / w % h, pixel % w);
            let base = image * x.h;
            for (ky, iy) in self.window.taps(0, oy, x.h).enumerate() {
                let taps = &mut row[ky * kw * cin..(ky + 1) * kw * cin];
                let Some(iy) = iy else {
                    taps.fill(0.0);
                    continue;
                };
                let line = &x.data[(base + iy) * x.w * cin..(base + iy + 1) * x.w * cin];
                if contiguous {
                    copy_run(taps, line, self.window.inside(1, ox, x.w), cin);
                } else {
                    let columns = self.window.taps(1, ox, x.w);
                    for (tap, ix) in taps.chunks_mut(cin).zip(columns) {
                        match ix {
                            Some(ix) => tap.copy_from_slice(&line[ix * cin..(ix + 1) * cin]),
                            None => tap.fill(0.0),
                        }
                    }
                }
            }
        }
    }

    /// Bias and activation over a block of finished output rows.
    pub(super) fn finish(&self, block: &mut [f32]) {
        finish_rows(block, &self.bias, self.epilogue.activation);
    }
}

/// Maps of one shape but their channels joined along the channels, in order.
pub fn concat(maps: &[&Map]) -> Result<Map, String> {
    let first = maps.first().ok_or("nothing to join")?;
    if let Some(other) = maps
        .iter()
        .find(|m| (m.n, m.h, m.w) != (first.n, first.h, first.w))
    {
        return Err(format!(
            "cannot join {} and {} along the channels",
            first.describe(),
            other.describe()
        ));
    }
    let c: usize = maps.iter().map(|m| m.c).sum();
    let pixels = first.n * first.h * first.w;
    let mut data = spare(pixels * c);
    for_each_chunk(&mut data, c, |pixel, out| {
        let mut at = 0;
        for map in maps {
            out[at..at + map.c].copy_from_slice(&map.data[pixel * map.c..(pixel + 1) * map.c]);
            at += map.c;
        }
    });
    Ok(Map {
        n: first.n,
        h: first.h,
        w: first.w,
        c,
        data,
    })
}

/// `x` with `padding` (before and after its lines, before and after each line) written out
/// as zeros.
fn pad(x: &Map, [(top, bottom), (left, right)]: [(usize, usize); 2]) -> Vec<f32> {
    let (ph, pw) = (x.h + top + bottom, x.w + left + right);
    let line = x.w * x.c;
    let mut padded = vec![0.0; x.n * ph * pw * x.c];
    for (index, from) in x.data.chunks_exact(line).enumerate() {
        let (image, y) = (index / x.h, index % x.h);
        let at = ((image * ph + top + y) * pw + left) * x.c;
        padded[at..at + line].copy_from_slice(from);
    }
    padded
}

/// `[cout, cin, kh, kw]` weights as the `[kh·kw·cin, cout]` matrix patch rows multiply.
fn pack_for_patches(weight: &[f32], [cout, cin, kh, kw]: [usize; 4]) -> Vec<f32> {
    let taps = kh * kw;
    let mut packed = vec![0.0; weight.len()];
    for (co, filter) in weight.chunks(cin * taps).enumerate() {
        for (ci, kernel) in filter.chunks(taps).enumerate() {
            for (tap, &value) in kernel.iter().enumerate() {
                packed[(tap * cin + ci) * cout + co] = value;
            }
        }
    }
    packed
}

/// Copies the taps of one kernel row when they are adjacent input pixels (no dilation): the
/// taps inside the input (`run`) are one contiguous run of the input line, padding on either
/// side.
fn copy_run(taps: &mut [f32], line: &[f32], run: Run, cin: usize) {
    let (before, rest) = taps.split_at_mut(run.first_tap * cin);
    let (inside, after) = rest.split_at_mut(run.count * cin);
    before.fill(0.0);
    inside.copy_from_slice(&line[run.first_input * cin..][..run.count * cin]);
    after.fill(0.0);
}

/// How a convolution's output rows are shared by the threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tiles {
    /// Blocks of this many rows, each thread taking whole blocks (gather, product, epilogue).
    Rows(usize),
    /// One block for all the rows, each step of it split between the threads (the product by
    /// output columns): a map too small to give every thread blocks of its own, as the late
    /// layers at batch 1 (49 pixels), or one with fewer pixels than output channels.
    Shared,
}

impl Tiles {
    /// Blocks for `rows` output pixels of patch rows `k` long, times `k × n` weights.
    ///
    /// Why fewer pixels than outputs are shared: each block's product reads (and `gemm`
    /// packs) the whole weight matrix, so blocks by rows cost `k · n` per block while the
    /// product split by columns reads the `k · rows` patches once per thread. SqueezeNet's
    /// classifier (169 pixels, 512 → 1000) took 1.8 ms at batch 1 as two blocks of rows,
    /// both packing its 2 MB of weights, against 0.9 ms in ONNX Runtime.
    fn new(rows: usize, k: usize, n: usize, threads: usize) -> Self {
        if rows < threads * MIN_ROWS || (threads > 1 && rows < n) {
            return Self::Shared;
        }
        let target = (PATCH_BYTES / (k * size_of::<f32>())).clamp(MIN_ROWS, MAX_ROWS);
        // A multiple of the thread count, so no thread idles through the last round.
        let blocks = rows.div_ceil(target).next_multiple_of(threads);
        Self::Rows(rows.div_ceil(blocks))
    }
}

/// Max or average pooling over windows of a map.
pub fn pool(x: &Map, window: &Window, kind: PoolKind) -> Result<Map, String> {
    let (h, w) = window.output(x.h, x.w)?;
    let c = x.c;
    let mut data = spare(x.n * h * w * c);
    for_each_chunk(&mut data, w * c, |line, out| {
        let (image, oy) = (line / h, line % h);
        for (ox, cell) in out.chunks_mut(c).enumerate() {
            cell.fill(match kind {
                PoolKind::Max => f32::NEG_INFINITY,
                PoolKind::Average { .. } => 0.0,
            });
            let mut count = 0usize;
            for iy in window.taps(0, oy, x.h).flatten() {
                for ix in window.taps(1, ox, x.w).flatten() {
                    let at = ((image * x.h + iy) * x.w + ix) * c;
                    let pixel = &x.data[at..at + c];
                    match kind {
                        PoolKind::Max => {
                            cell.iter_mut().zip(pixel).for_each(|(o, v)| *o = o.max(*v))
                        }
                        PoolKind::Average { .. } => {
                            cell.iter_mut().zip(pixel).for_each(|(o, v)| *o += v)
                        }
                    }
                    count += 1;
                }
            }
            if let PoolKind::Average { count_padding } = kind {
                let divisor = if count_padding {
                    window.kernel[0] * window.kernel[1]
                } else {
                    count.max(1)
                };
                let scale = 1.0 / divisor as f32;
                cell.iter_mut().for_each(|o| *o *= scale);
            }
        }
    });
    Ok(Map {
        n: x.n,
        h,
        w,
        c,
        data,
    })
}

/// Which reduction [`pool`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    /// `count_padding`: divide by the window size even where it overlaps padding.
    Average {
        count_padding: bool,
    },
}

/// LayerNorm over each pixel's channels, in place (ConvNeXt): the channels of a pixel lie
/// side by side in a channels-last map, so each pixel is normalised where it lies, and the
/// pixels are shared between the cores in runs of about 16 KiB.
pub fn channel_norm(x: &mut Map, scale: &[f32], shift: &[f32], epsilon: f32) -> Result<(), String> {
    let c = x.c;
    if scale.len() != c || shift.len() != c {
        return Err(format!(
            "{c} channels, the normalisation has {}",
            scale.len()
        ));
    }
    let per_task = (4096 / c).max(1) * c;
    for_each_chunk(&mut x.data, per_task, |_, pixels| {
        for pixel in pixels.chunks_mut(c) {
            let mean = pixel.iter().sum::<f32>() / c as f32;
            let variance = pixel.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
            let inverse = 1.0 / (variance + epsilon).sqrt();
            for ((v, s), t) in pixel.iter_mut().zip(scale).zip(shift) {
                *v = (*v - mean) * inverse * s + t;
            }
        }
    });
    Ok(())
}

/// Mean over all pixels of each map: `[n, 1, 1, c]`.
pub fn global_average(x: &Map) -> Map {
    let pixels = x.h * x.w;
    let mut data = vec![0.0; x.n * x.c];
    for (out, image) in data.chunks_mut(x.c).zip(x.data.chunks(pixels * x.c)) {
        for pixel in image.chunks(x.c) {
            out.iter_mut().zip(pixel).for_each(|(o, v)| *o += v);
        }
        out.iter_mut().for_each(|o| *o /= pixels as f32);
    }
    Map {
        n: x.n,
        h: 1,
        w: 1,
        c: x.c,
        data: data.into(),
    }
}

/// Element-wise `a op b` into `a`: equal shapes, or `b` one value per channel (`[n, 1, 1, c]`,
/// as squeeze-and-excitation blocks multiply).
pub fn combine(a: &mut Map, b: &Map, op: impl Fn(f32, f32) -> f32 + Sync) -> Result<(), String> {
    // Values per task: per-element tasks would cost more than the work.
    const CHUNK: usize = 1 << 14;
    if a.same_shape(b) {
        for_each_chunk(&mut a.data, CHUNK, |index, x| {
            let y = &b.data[index * CHUNK..];
            x.iter_mut().zip(y).for_each(|(x, y)| *x = op(*x, *y))
        });
        return Ok(());
    }
    if (b.n, b.h, b.w, b.c) == (a.n, 1, 1, a.c) {
        // One line of pixels per task, so that a single image is shared by the threads too.
        let (h, c) = (a.h, a.c);
        for_each_chunk(&mut a.data, a.w * c, |line, pixels| {
            let scale = &b.data[line / h * c..][..c];
            for pixel in pixels.chunks_exact_mut(c) {
                pixel
                    .iter_mut()
                    .zip(scale)
                    .for_each(|(x, y)| *x = op(*x, *y));
            }
        });
        return Ok(());
    }
    Err(format!(
        "cannot combine {} with {}",
        a.describe(),
        b.describe()
    ))
}

/// `x · weight + bias` for a `[inputs, outputs]` weight.
pub fn linear(x: &Vectors, weight: &Weights, bias: &[f32]) -> Result<Vectors, String> {
    if x.f != weight.inputs() {
        return Err(format!(
            "input has {} features, the weights expect {}",
            x.f,
            weight.inputs()
        ));
    }
    let outputs = weight.outputs();
    let mut data = vec![0.0; x.n * outputs];
    let threads = rayon::current_num_threads();
    weight.product(&mut data, &x.data, x.n, Accumulate::No, threads);
    for row in data.chunks_mut(outputs) {
        row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
    }
    Ok(Vectors {
        n: x.n,
        f: outputs,
        data,
    })
}

/// Softmax over each row (the model layer's numerically stable one).
pub fn softmax(x: &mut Vectors) {
    for row in x.data.chunks_mut(x.f.max(1)) {
        let probabilities = crate::model::softmax(row);
        row.copy_from_slice(&probabilities);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_maps_are_shared_and_larger_ones_split_evenly_by_rows() {
        // ResNet50's last layers at batch 1: 49 pixels, too few for a block per thread.
        assert_eq!(Tiles::new(49, 4608, 512, 2), Tiles::Shared);
        // The same layers at batch 8: patch rows of 18 KiB, so blocks of the fewest rows
        // allowed, in a number both threads finish together.
        assert_eq!(Tiles::new(392, 4608, 256, 2), Tiles::Rows(40));
        // Fewer pixels than output channels (SqueezeNet's classifier): shared by columns, on
        // one thread one block per 256 rows still.
        assert_eq!(Tiles::new(169, 512, 1000, 2), Tiles::Shared);
        assert_eq!(Tiles::new(169, 512, 1000, 1), Tiles::Rows(169));
        // 1×1 on 56×56 at batch 1: 256-row blocks, 13 rounded up to 14.
        assert_eq!(Tiles::new(3136, 64, 256, 2), Tiles::Rows(224));
        assert_eq!(Tiles::new(3136, 64, 256, 1), Tiles::Rows(242));
    }

    #[test]
    fn the_input_span_of_a_run_of_outputs_covers_what_their_taps_read() {
        for (kernel, stride, padding, dilation) in [
            (3, 1, (1, 1), 1),
            (5, 2, (2, 2), 1),
            (3, 2, (0, 1), 1),
            (3, 1, (2, 2), 2),
        ] {
            let window = Window {
                kernel: [kernel; 2],
                stride: [stride; 2],
                padding: [padding; 2],
                dilation: [dilation; 2],
                ceil: false,
            };
            for size in 1..12 {
                let Ok((outputs, _)) = window.output(size, size) else {
                    continue;
                };
                for first in 0..outputs {
                    for end in first + 1..=outputs {
                        let read: Vec<usize> = (first..end)
                            .flat_map(|out| window.taps(0, out, size).flatten())
                            .collect();
                        let span = window.input_span(0, first..end, size);
                        let what = format!("{window:?} size {size} outputs {first}..{end}");
                        match (read.iter().min(), read.iter().max()) {
                            // Exactly the lines read; with dilation, perhaps also lines in
                            // the gaps between taps at either end (never past the input).
                            (Some(&lo), Some(&hi)) if dilation == 1 => {
                                assert_eq!(span, lo..hi + 1, "{what}");
                            }
                            (Some(&lo), Some(&hi)) => {
                                assert!(span.contains(&lo) && span.contains(&hi), "{what}");
                                assert!(span.end <= size, "{what}");
                            }
                            _ => assert!(span.is_empty(), "{what}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn computed_runs_agree_with_the_taps_one_by_one() {
        for (kernel, stride, padding) in [
            (7, 2, (3, 3)),
            (3, 1, (1, 1)),
            (3, 2, (0, 1)),
            (2, 1, (2, 0)),
        ] {
            let window = Window {
                kernel: [kernel; 2],
                stride: [stride; 2],
                padding: [padding; 2],
                dilation: [1, 1],
                ceil: false,
            };
            for size in 1..12 {
                let Ok((_, outputs)) = window.output(size, size) else {
                    continue;
                };
                for out in 0..outputs + 3 {
                    let taps: Vec<Option<usize>> = window.taps(1, out, size).collect();
                    let inside: Vec<(usize, usize)> = (taps.iter().enumerate())
                        .filter_map(|(tap, ix)| ix.map(|ix| (tap, ix)))
                        .collect();
                    let run = window.inside(1, out, size);
                    assert_eq!(run.count, inside.len(), "{window:?} size {size} out {out}");
                    if let Some(&(tap, ix)) = inside.first() {
                        assert_eq!((run.first_tap, run.first_input), (tap, ix));
                    }
                }
            }
        }
    }
}
