//! A depthwise convolution run together with the 1×1 convolutions around it: a MobileNet or
//! EfficientNet block's expansion before it and its projection after it, a few lines at a
//! time per thread.
//!
//! The expansion's output and the depthwise output are the largest maps of such a block
//! (MobileNetV2's second block at batch 8: 112×112×96, 38 MB), and run one after the other
//! each was written out to memory by one kernel and read back by the next. Chained, each
//! thread takes a run of output lines of one image and goes down it a block at a time: it
//! expands the input lines the block's depthwise windows need (keeping the lines the next
//! block shares, so only a run's first block computes its halo), convolves them depthwise
//! into a buffer that stays in its cache, and multiplies that by the projection straight into
//! the output. Neither intermediate map is ever written out. Maps too small to give each
//! thread a few blocks run the convolutions one after the other.

use std::cell::Cell;
use std::ops::Range;

use matmul::Accumulate;
use matmul::parallel::for_each_chunk;

use super::buffers::{recycle, spare};
use super::direct::{Direct, Layout};
use super::kernels::{Conv, MIN_ROWS, Map, grow};

/// A depthwise convolution with the 1×1 expansion whose output only it reads, the 1×1
/// projection that alone reads its output, or both. Built by [`Chain::new`], which checks
/// that the three fit together.
#[derive(Debug)]
pub struct Chain {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Option<Conv>,
}

/// What a chain's last convolution adds in, when it has a shortcut.
#[derive(Debug)]
pub enum Shortcut {
    /// A map of its own, which the sums are then written over.
    Owned(Map),
    /// The chain's own input (a MobileNet or EfficientNet block that keeps its shape): each
    /// block of output lines starts from a copy of the same input lines, which the block has
    /// just read and are still in cache. Copying the whole input first (it is still needed
    /// as the input) cost a pass over memory of its own (docs/PERFORMANCE.md).
    Input,
}

impl Shortcut {
    /// The shortcut as a map of its own: `x` copied if it is the input.
    pub(super) fn into_map(self, x: &Map) -> Map {
        match self {
            Shortcut::Owned(map) => map,
            Shortcut::Input => x.clone(),
        }
    }
}

/// A chain's intermediate values per thread (expanded input lines and depthwise output
/// lines of a block) are kept to about this many bytes, so that they stay in the core's L2
/// cache from one convolution to the next.
const CHAIN_BYTES: usize = 256 * 1024;

thread_local! {
    /// Each thread's expanded input lines and depthwise output lines of its current block.
    static EXPANDED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static MIDDLE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

impl Chain {
    /// Whether `expand` (if any), `depthwise` and `project` (if any) can run as one chain: a
    /// depthwise convolution, 1×1 convolutions computed as matrix products, channels that
    /// match, a shortcut only on the last of them, and at least one 1×1 convolution.
    pub fn fits(expand: Option<&Conv>, depthwise: &Conv, project: Option<&Conv>) -> bool {
        let (mid, _) = depthwise.channels();
        depthwise.depthwise().is_some()
            && (expand.is_some() || project.is_some())
            && expand.is_none_or(|e| {
                e.pointwise_weight().is_some() && !e.epilogue.residual && e.channels().1 == mid
            })
            && project.is_none_or(|p| p.pointwise_weight().is_some() && p.channels().0 == mid)
            && (project.is_none() || !depthwise.epilogue.residual)
    }

    /// The chain of `expand`, `depthwise` and `project`, if they [fit](Self::fits).
    pub fn new(expand: Option<Conv>, depthwise: Conv, project: Option<Conv>) -> Option<Self> {
        Self::fits(expand.as_ref(), &depthwise, project.as_ref()).then_some(Self {
            expand,
            depthwise,
            project,
        })
    }

    /// Whether `project` can follow this chain: it has no projection yet, and they fit.
    pub fn accepts_project(&self, project: &Conv) -> bool {
        self.project.is_none() && Self::fits(self.expand.as_ref(), &self.depthwise, Some(project))
    }

    /// This chain followed by `project`, if it [accepts](Self::accepts_project) it.
    pub fn with_project(self, project: Conv) -> Option<Self> {
        match self.project {
            None => Self::new(self.expand, self.depthwise, Some(project)),
            Some(_) => None,
        }
    }

    /// What runs, for a profile: the convolutions' descriptions joined by `then`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = (self.expand.iter())
            .chain([&self.depthwise])
            .chain(&self.project)
            .map(Conv::describe)
            .collect();
        parts.join(" then ")
    }

    /// The last convolution's output for input `x`, with `shortcut` added when that
    /// convolution has one.
    pub fn run(&self, x: &Map, shortcut: Option<Shortcut>) -> Result<Map, String> {
        self.first().check_input(x)?;
        let (h, w) = self.depthwise.window().output(x.h, x.w)?;
        let (mid, _) = self.depthwise.channels();
        let last = self.last();
        let (_, cout) = last.channels();
        let threads = rayon::current_num_threads();
        let Some(blocks) = Blocks::new(self, (x.n, x.w), (h, w), threads) else {
            return self.run_apart(x, shortcut.map(|s| s.into_map(x)));
        };
        let (mut data, accumulate, copied) = match shortcut {
            Some(Shortcut::Input) if last.epilogue.residual && (x.h, x.w, x.c) == (h, w, cout) => {
                (spare(x.n * h * w * cout), Accumulate::Yes, Some(x))
            }
            // Anything else as a map of its own, which `output` checks.
            shortcut => {
                let (data, accumulate) =
                    last.output(x.n, (h, w), shortcut.map(|s| s.into_map(x)))?;
                (data, accumulate, None)
            }
        };
        let direct = self.depthwise.depthwise().expect("checked by Chain::new");
        let layout = Layout::new(self.depthwise.window(), x.w, mid, w);
        let run = Run {
            chain: self,
            x,
            direct,
            layout: &layout,
            size: (h, w),
            accumulate,
            copied,
        };
        for_each_chunk(&mut data, h * w * cout, |image, maps| {
            for_each_chunk(maps, blocks.run_lines * w * cout, |part, dst| {
                run.lines(image, part * blocks.run_lines, dst, blocks.lines);
            });
        });
        Ok(Map {
            n: x.n,
            h,
            w,
            c: cout,
            data,
        })
    }

    fn first(&self) -> &Conv {
        self.expand.as_ref().unwrap_or(&self.depthwise)
    }

    fn last(&self) -> &Conv {
        self.project.as_ref().unwrap_or(&self.depthwise)
    }

    /// The convolutions one after the other, each over the whole map.
    fn run_apart(&self, x: &Map, residual: Option<Map>) -> Result<Map, String> {
        let expanded = self.expand.as_ref().map(|e| e.run(x, None)).transpose()?;
        let input = expanded.as_ref().unwrap_or(x);
        let out = match &self.project {
            Some(project) => {
                let middle = self.depthwise.run(input, None)?;
                let out = project.run(&middle, residual);
                recycle(middle.data);
                out
            }
            None => self.depthwise.run(input, residual),
        };
        if let Some(expanded) = expanded {
            recycle(expanded.data);
        }
        out
    }
}

/// How a chain's output lines are shared out: runs of `run_lines` lines of one image per
/// task, each computed `lines` lines at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Blocks {
    pub lines: usize,
    pub run_lines: usize,
}

impl Blocks {
    /// For `n` input maps `in_width` wide and outputs of `(h, w)`: blocks of lines whose
    /// intermediate values fit [`CHAIN_BYTES`] (and that hold at least [`MIN_ROWS`] pixels for
    /// the projection), runs long enough for every thread to get two, so that each run's
    /// first block, which also expands the lines above it, is a small part of the run. `None`
    /// when the maps are too small for that.
    pub fn new(
        chain: &Chain,
        (n, in_width): (usize, usize),
        (h, w): (usize, usize),
        threads: usize,
    ) -> Option<Self> {
        let (mid, _) = chain.depthwise.channels();
        let stride = chain.depthwise.window().stride[0];
        let expanded = if chain.expand.is_some() {
            stride * in_width * mid
        } else {
            0
        };
        let middle = if chain.project.is_some() { w * mid } else { 0 };
        let fit = (CHAIN_BYTES / size_of::<f32>() / (expanded + middle).max(1)).max(1);
        let lines = fit.max(MIN_ROWS.div_ceil(w.max(1))).min(h.max(1));
        if n * h < 2 * threads * lines {
            return None;
        }
        // Runs per image: whole images when there are enough of them for every thread to get
        // two, else each image cut into that many runs, whole blocks each.
        let runs = (2 * threads).div_ceil(n).min(h / lines).max(1);
        let run_lines = h.div_ceil(runs).next_multiple_of(lines).min(h);
        Some(Self { lines, run_lines })
    }
}

/// One chained pass over a batch: what every task of it reads.
struct Run<'a> {
    chain: &'a Chain,
    x: &'a Map,
    direct: &'a Direct,
    layout: &'a Layout,
    /// Output maps' height and width.
    size: (usize, usize),
    accumulate: Accumulate,
    /// The shortcut whose lines each block copies into its output before adding to them
    /// ([`Shortcut::Input`]); `None` when the output buffer holds the shortcut already.
    copied: Option<&'a Map>,
}

impl Run<'_> {
    /// Output lines from `first` on of `image`, as many as `dst` holds, `lines` at a time.
    fn lines(&self, image: usize, first: usize, dst: &mut [f32], lines: usize) {
        let (_, w) = self.size;
        let (mid, _) = self.chain.depthwise.channels();
        let (_, cout) = self.chain.last().channels();
        let mut expanded = EXPANDED.take();
        let mut middle = MIDDLE.take();
        // The input lines `expanded` holds, expanded, from its start.
        let mut held = 0..0;
        for (block, dst) in dst.chunks_mut(lines * w * cout).enumerate() {
            let oy = first + block * lines;
            let count = dst.len() / (w * cout);
            if let Some(shortcut) = self.copied {
                let (h, _) = self.size;
                dst.copy_from_slice(&shortcut.data[(image * h + oy) * w * cout..][..dst.len()]);
            }
            if let Some(expand) = &self.chain.expand {
                let window = self.chain.depthwise.window();
                let needed = window.input_span(0, oy..oy + count, self.x.h);
                held = self.expand(expand, image, held, needed, &mut expanded);
            }
            let line = self.x.w * mid;
            let input = |iy: usize| match &self.chain.expand {
                Some(_) => &expanded[(iy - held.start) * line..][..line],
                None => &self.x.data[(image * self.x.h + iy) * line..][..line],
            };
            let depthwise = &self.chain.depthwise;
            let convolve = |oy: usize, out: &mut [f32], from_output: bool| {
                let rows = self
                    .layout
                    .rows_over(depthwise.window(), self.x.h, oy, input);
                self.direct.line(self.layout, &rows, out, from_output, |l| {
                    depthwise.finish(l)
                });
            };
            match &self.chain.project {
                Some(project) => {
                    grow(&mut middle, count * w * mid);
                    let middle = &mut middle[..count * w * mid];
                    for (i, out) in middle.chunks_mut(w * mid).enumerate() {
                        convolve(oy + i, out, false);
                    }
                    let weight = project.pointwise_weight().expect("checked by Chain::new");
                    weight.product(dst, middle, count * w, self.accumulate, 1);
                    project.finish(dst);
                }
                None => {
                    let from_output = self.accumulate == Accumulate::Yes;
                    for (i, out) in dst.chunks_mut(w * cout).enumerate() {
                        convolve(oy + i, out, from_output);
                    }
                }
            }
        }
        EXPANDED.set(expanded);
        MIDDLE.set(middle);
    }

    /// Makes `buffer` hold the expanded input lines `needed` of `image`, from its start, when
    /// it holds `held`: lines both need are moved to the front, the others expanded. Returns
    /// what it holds then.
    fn expand(
        &self,
        expand: &Conv,
        image: usize,
        held: Range<usize>,
        needed: Range<usize>,
        buffer: &mut Vec<f32>,
    ) -> Range<usize> {
        let (cin, mid) = expand.channels();
        let (out_line, in_line) = (self.x.w * mid, self.x.w * cin);
        grow(buffer, needed.len() * out_line);
        let kept = if held.contains(&needed.start) {
            let from = (needed.start - held.start) * out_line;
            buffer.copy_within(from..held.len() * out_line, 0);
            needed.start..held.end.min(needed.end)
        } else {
            needed.start..needed.start
        };
        let fresh = kept.end..needed.end;
        let dst = &mut buffer[kept.len() * out_line..needed.len() * out_line];
        let lhs =
            &self.x.data[(image * self.x.h + fresh.start) * in_line..][..fresh.len() * in_line];
        let weight = expand.pointwise_weight().expect("checked by Chain::new");
        weight.product(dst, lhs, fresh.len() * self.x.w, Accumulate::No, 1);
        expand.finish(dst);
        needed
    }
}
