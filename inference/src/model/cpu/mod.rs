//! The native CPU engine: the graph burn's ONNX front end loaded, run with our own
//! channels-last kernels instead of burn-flex's operations.
//!
//! burn-flex runs each ONNX operation on its own: every k×k convolution converts its input
//! NCHW → NHWC and builds a full im2col matrix, and bias, ReLU and residual adds are separate
//! passes over freshly zeroed feature maps. Profiled on ResNet50 that plumbing took about half
//! the time outside the matrix products (docs/PERFORMANCE.md). Here feature maps stay channels
//! last from input to output, a convolution's bias, shortcut add and ReLU are fused into its
//! epilogue at load time, and patch rows are gathered per cache-sized block (see [`kernels`]).
//! The matrix products are the same `gemm` crate burn-flex uses.
//!
//! This is what we would propose upstream as a burn-flex inference path: layout planning
//! across operations and epilogue fusion for convolutions.

mod buffers;
mod chain;
mod direct;
mod kernels;
mod lanes;
pub mod profile;
mod winograd;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use matmul::Weights;

use super::graph::{Activation, GraphError, Normalized, Op, Schedule, Step, Wired, readers};
use chain::{Chain, Shortcut};
use kernels::{Algorithm, Conv, Epilogue, Map, PoolKind, Vectors, Window};

/// A graph compiled to native kernels, with fused convolutions.
#[derive(Debug)]
pub struct Plan {
    steps: Vec<Kernel>,
    schedule: Schedule,
    /// Whether a batch runs as one part per thread (see [`slice_images`]).
    parts_per_thread: bool,
}

/// One native operation and where its operands live.
#[derive(Debug)]
struct Kernel {
    name: String,
    op: NativeOp,
    inputs: Vec<usize>,
    output: usize,
}

#[derive(Debug)]
enum NativeOp {
    /// Inputs: the map, then (with a residual epilogue) the shortcut to add.
    Conv(Box<Conv>),
    /// A depthwise convolution with the 1×1 convolutions around it, run a block of lines at
    /// a time ([`chain`]). Inputs: the first convolution's input, then (when the last one
    /// adds a shortcut) the shortcut.
    Chain(Box<Chain>),
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    Activation(Activation),
    /// LayerNorm over each pixel's channels.
    ChannelNorm {
        scale: Vec<f32>,
        shift: Vec<f32>,
        epsilon: f32,
    },
    Pool(Window, PoolKind),
    GlobalAvgPool,
    Add,
    Mul,
    Concat,
    Flatten,
    Linear {
        /// `[inputs, outputs]`.
        weight: Weights,
        bias: Vec<f32>,
    },
    Softmax,
    Identity,
}

/// A value between kernels. Shared (`Arc`) so a map read by two steps — a block's input,
/// which is both the next convolution's input and the shortcut — is not copied: the last
/// reader gets it without a copy and may overwrite it in place.
#[derive(Clone, Debug)]
enum Value {
    Map(Arc<Map>),
    Vector(Arc<Vectors>),
}

impl Wired for Kernel {
    fn inputs(&self) -> &[usize] {
        &self.inputs
    }
    fn output(&self) -> usize {
        self.output
    }
}

impl Plan {
    /// Compiles burn steps (batch norms already folded into convolutions) for input images
    /// of `image_size` × `image_size`, or says which step the native kernels do not cover,
    /// so the caller can keep burn's operations.
    pub fn compile(
        steps: &[Step],
        input_slot: usize,
        output_slot: usize,
        slots: usize,
        image_size: usize,
    ) -> Result<Self, String> {
        // Each slot's map size for that input, so every convolution gets the algorithm that
        // is fastest at its size (other sizes still run correctly, perhaps a little slower).
        let mut sizes = vec![None; slots];
        sizes[input_slot] = Some((image_size, image_size));
        let kernels = steps
            .iter()
            .map(|step| translate(step, &mut sizes))
            .collect::<Result<Vec<_>, _>>()?;
        let kernels = chain(fuse(kernels, slots, output_slot), slots, output_slot);
        let schedule = Schedule::new(&kernels, input_slot, output_slot, slots);
        let weights: usize = steps.iter().map(weight_values).sum();
        Ok(Self {
            steps: kernels,
            schedule,
            parts_per_thread: weights * size_of::<f32>() <= PARTS_MAX_WEIGHT_BYTES,
        })
    }

    /// Runs a batch `[N, C, H, W]`; returns the output values and the number per image.
    pub fn forward(
        &self,
        input: &[f32],
        [n, c, h, w]: [usize; 4],
    ) -> Result<(Vec<f32>, usize), GraphError> {
        // The whole pass runs on one of the pool's threads, so that each layer's parallel
        // loop forks from inside the pool. Called from outside it, every loop was handed to
        // the pool and waited for through a lock: 64 000 context switches in 300 passes of
        // MobileNetV3-Small at batch 1 (6 800 this way), 4.9 → 3.4 ms per pass.
        with_threads_awake(|| self.forward_in_pool(input, [n, c, h, w]))
    }

    /// The batch in parts of [`slice_images`] run at the same time, each part's layers one
    /// after another; for a network of many weights, in slices of [`SLICE_IMAGES`] one after
    /// another, each layer shared by the threads.
    fn forward_in_pool(
        &self,
        input: &[f32],
        [n, c, h, w]: [usize; 4],
    ) -> Result<(Vec<f32>, usize), GraphError> {
        let run = |images: &[f32]| {
            let count = images.len() / (c * h * w);
            self.forward_slice(images, [count, c, h, w])
        };
        let parts: Vec<_> = if self.parts_per_thread {
            let slice = slice_images(n, rayon::current_num_threads());
            let parts: Vec<&[f32]> = input.chunks(slice * c * h * w).collect();
            matmul::parallel::map(parts.len(), |part| run(parts[part]))
        } else {
            input.chunks(SLICE_IMAGES * c * h * w).map(run).collect()
        };
        let mut values = Vec::new();
        let mut outputs = 0;
        for part in parts {
            let (part_values, per_image) = part?;
            values.extend_from_slice(&part_values);
            outputs = per_image;
        }
        debug_assert_eq!(values.len(), n * outputs);
        Ok((values, outputs))
    }

    fn forward_slice(
        &self,
        input: &[f32],
        dims: [usize; 4],
    ) -> Result<(Vec<f32>, usize), GraphError> {
        let input = Value::Map(Arc::new(Map::from_nchw(input, dims)));
        let output = self.schedule.run(&self.steps, input, |kernel, args| {
            profile::time(
                &kernel.name,
                || kernel.run(args),
                |out| kernel.describe(out),
            )
        })?;
        let vectors = match output {
            Value::Vector(v) => Arc::unwrap_or_clone(v),
            Value::Map(m) => Arc::unwrap_or_clone(m).flatten(),
        };
        Ok((vectors.data, vectors.f))
    }
}

/// Runs `work` on one of the pool's threads while the others [`keep_busy`] until it returns
/// (or panics).
fn with_threads_awake<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(|_| keep_busy(&done));
        }
        let _finished = Finished(&done);
        work()
    })
}

/// Keeps a worker thread looking for the pass's tasks until `done`, instead of letting it
/// fall asleep between layers.
///
/// Why: a rayon worker that finds no task spins for a few dozen rounds and then sleeps, and
/// at batch 1 most layers take 10–300 µs with a serial stretch in between (a squeeze-and-
/// excitation block's tiny layers, the hand-over from one layer to the next), so the second
/// thread was asleep when most layers forked. Woken, it started a few µs later on a core
/// whose caches had gone cold in the meantime: the first layer of MobileNetV3-Large ran no
/// faster on two threads than on one. ONNX Runtime's threads spin between operators the same
/// way. The spinning ends with the pass (and lets the OS run other threads now and then, see
/// [`matmul::parallel::wait_until`]).
fn keep_busy(done: &AtomicBool) {
    matmul::parallel::wait_until(|| done.load(Ordering::Acquire));
}

/// Sets its flag when dropped: when the pass returns, or unwinds from a panic, so that the
/// [`keep_busy`] threads stop and the scope can end.
struct Finished<'a>(&'a AtomicBool);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Larger batches run through the graph in slices of at most this many images. Feature maps
/// grow with the batch (ResNet50's first maps are 3.2 MB per image) and fall out of cache;
/// fresh blocks over 32 MiB also cost a page fault per 4 KiB with glibc's allocator. At 8
/// images the throughput is as good as at any size, also with spare buffers and mimalloc
/// (slices of 4 to 32 compared, docs/PERFORMANCE.md).
const SLICE_IMAGES: usize = 8;

/// Images per part when a batch of `n` is shared by `threads`: one part per thread (at most
/// [`SLICE_IMAGES`]), all run at once, each part's layers one after another. For networks of
/// up to [`PARTS_MAX_WEIGHT_BYTES`].
///
/// Why the batch, not only each layer, is shared: a layer shared by the threads ends with
/// them waiting for each other, and a MobileNet pass has 60 such layers of a millisecond or
/// less, so two threads ran a batch of 8 only 1.2× faster than one (ONNX Runtime: 1.5×).
/// With a part per thread they run apart; a layer's own tasks still go to whichever thread is
/// idle, so a short part does not leave a core unused. MobileNetV2/V3 and EfficientNet-Lite0
/// at batch 8: 15–20 % more images per second, SqueezeNet and DenseNet121 more too
/// (docs/PERFORMANCE.md).
fn slice_images(n: usize, threads: usize) -> usize {
    n.div_ceil(threads.max(1)).clamp(1, SLICE_IMAGES)
}

/// Networks with more weights than this run a batch's layers one after another, shared by the
/// threads, instead of a part per thread: parts at once each read every weight, and VGG11's
/// 507 MB (fully connected layers of 411 MB, read at memory speed) ran slower in parts
/// (batch 8 median 546–645 ms against 498–527), ResNet50's 98 MB the same either way, while
/// DenseNet121's 32 MB and smaller networks gained (docs/PERFORMANCE.md).
const PARTS_MAX_WEIGHT_BYTES: usize = 64 << 20;

/// How many weight values a step multiplies by.
fn weight_values(step: &Step) -> usize {
    match &step.op {
        Op::Conv { weight, .. } => weight.shape().num_elements(),
        Op::Linear { weight, .. } => weight.shape().num_elements(),
        _ => 0,
    }
}

impl Kernel {
    fn run(&self, args: Vec<Value>) -> Result<Value, GraphError> {
        let mut args = args.into_iter();
        let first = args.next().ok_or_else(|| self.error("no input"))?;
        let second = args.next();
        let value = match &self.op {
            NativeOp::Conv(conv) => {
                self.convolve(first, second, |x, s| conv.run(x, s.map(|s| s.into_map(x))))?
            }
            NativeOp::Chain(chain) => self.convolve(first, second, |x, r| chain.run(x, r))?,
            NativeOp::Affine { scale, shift } => {
                let mut x = Arc::unwrap_or_clone(self.map(first)?);
                if x.c != scale.len() {
                    return Err(self.error(format!(
                        "{} channels, batch norm has {}",
                        x.c,
                        scale.len()
                    )));
                }
                for pixel in x.data.chunks_mut(scale.len()) {
                    for ((v, s), t) in pixel.iter_mut().zip(scale).zip(shift) {
                        *v = *v * s + t;
                    }
                }
                Value::Map(Arc::new(x))
            }
            NativeOp::Activation(activation) => first.activate(*activation),
            NativeOp::ChannelNorm {
                scale,
                shift,
                epsilon,
            } => {
                let mut x = Arc::unwrap_or_clone(self.map(first)?);
                kernels::channel_norm(&mut x, scale, shift, *epsilon).map_err(|e| self.error(e))?;
                Value::Map(Arc::new(x))
            }
            NativeOp::Pool(window, kind) => {
                let x = self.map(first)?;
                let out = kernels::pool(&x, window, *kind).map_err(|e| self.error(e))?;
                release(x);
                Value::Map(Arc::new(out))
            }
            NativeOp::GlobalAvgPool => {
                let x = self.map(first)?;
                let out = kernels::global_average(&x);
                release(x);
                Value::Map(Arc::new(out))
            }
            NativeOp::Add => {
                let second = second.ok_or_else(|| self.error("needs two operands"))?;
                self.combine(first, second, |a, b| a + b)?
            }
            NativeOp::Mul => {
                let second = second.ok_or_else(|| self.error("needs two operands"))?;
                self.combine(first, second, |a, b| a * b)?
            }
            NativeOp::Concat => {
                let maps = std::iter::once(first)
                    .chain(second)
                    .chain(args)
                    .map(|v| self.map(v))
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<&Map> = maps.iter().map(|m| &**m).collect();
                let out = kernels::concat(&refs).map_err(|e| self.error(e))?;
                maps.into_iter().for_each(release);
                Value::Map(Arc::new(out))
            }
            NativeOp::Flatten => match first {
                Value::Map(m) => Value::Vector(Arc::new(Arc::unwrap_or_clone(m).flatten())),
                vector => vector,
            },
            NativeOp::Linear { weight, bias } => {
                let x = self.vector(first)?;
                Value::Vector(Arc::new(
                    kernels::linear(&x, weight, bias).map_err(|e| self.error(e))?,
                ))
            }
            NativeOp::Softmax => {
                let mut x = Arc::unwrap_or_clone(self.vector(first)?);
                kernels::softmax(&mut x);
                Value::Vector(Arc::new(x))
            }
            NativeOp::Identity => first,
        };
        Ok(value)
    }

    /// What runs and the shape of what it made, for [`profile`].
    fn describe(&self, output: &Result<Value, GraphError>) -> (String, String) {
        let what = match &self.op {
            NativeOp::Conv(conv) => conv.describe(),
            NativeOp::Chain(chain) => chain.describe(),
            NativeOp::Affine { .. } => "batch norm".into(),
            NativeOp::Activation(activation) => format!("{activation:?}"),
            NativeOp::ChannelNorm { .. } => "layer norm over channels".into(),
            NativeOp::Pool(window, kind) => format!("{kind:?} pool {}", window.describe()),
            NativeOp::GlobalAvgPool => "global average pool".into(),
            NativeOp::Add => "add".into(),
            NativeOp::Mul => "multiply".into(),
            NativeOp::Concat => "concat".into(),
            NativeOp::Flatten => "flatten".into(),
            NativeOp::Linear { weight, .. } => format!("linear ->{}", weight.outputs()),
            NativeOp::Softmax => "softmax".into(),
            NativeOp::Identity => "identity".into(),
        };
        let output = match output {
            Ok(Value::Map(m)) => m.describe(),
            Ok(Value::Vector(v)) => format!("[{}, {}]", v.n, v.f),
            Err(_) => "(failed)".into(),
        };
        (what, output)
    }

    /// `first op second`, element by element or one value per channel. Generic over `op`
    /// so that each use compiles to its own vectorised loop: one function pointer for both
    /// made every value an indirect call (a squeeze-and-excitation product over a 14×14×240
    /// map took 0.1 ms).
    fn combine(
        &self,
        first: Value,
        second: Value,
        op: impl Fn(f32, f32) -> f32 + Copy + Sync,
    ) -> Result<Value, GraphError> {
        match (first, second) {
            (Value::Map(a), Value::Map(b)) => {
                // The per-channel operand (if any) goes second.
                let (a, b) = if a.h * a.w < b.h * b.w {
                    (b, a)
                } else {
                    (a, b)
                };
                let mut a = Arc::unwrap_or_clone(a);
                kernels::combine(&mut a, &b, op).map_err(|e| self.error(e))?;
                release(b);
                Ok(Value::Map(Arc::new(a)))
            }
            (Value::Vector(a), Value::Vector(b)) if a.data.len() == b.data.len() => {
                let mut a = Arc::unwrap_or_clone(a);
                a.data
                    .iter_mut()
                    .zip(&b.data)
                    .for_each(|(x, y)| *x = op(*x, *y));
                Ok(Value::Vector(Arc::new(a)))
            }
            _ => Err(self.error("operands of different shapes")),
        }
    }

    /// `run` over the input map `first` and the optional shortcut `second`, the input's
    /// buffer released afterwards if no other step holds it. A shortcut that is the input
    /// itself is passed as [`Shortcut::Input`]; another is the kernel's to write over (copied
    /// if another step still reads it).
    fn convolve(
        &self,
        first: Value,
        second: Option<Value>,
        run: impl FnOnce(&Map, Option<Shortcut>) -> Result<Map, String>,
    ) -> Result<Value, GraphError> {
        let residual = second.map(|v| self.map(v)).transpose()?;
        let x = self.map(first)?;
        let shortcut = residual.map(|r| match Arc::ptr_eq(&r, &x) {
            true => Shortcut::Input,
            false => Shortcut::Owned(Arc::unwrap_or_clone(r)),
        });
        let out = run(&x, shortcut).map_err(|e| self.error(e))?;
        release(x);
        Ok(Value::Map(Arc::new(out)))
    }

    fn map(&self, value: Value) -> Result<Arc<Map>, GraphError> {
        match value {
            Value::Map(m) => Ok(m),
            Value::Vector(_) => Err(self.error("expected a feature map, got vectors")),
        }
    }

    fn vector(&self, value: Value) -> Result<Arc<Vectors>, GraphError> {
        match value {
            Value::Vector(v) => Ok(v),
            Value::Map(_) => Err(self.error("expected vectors, got a feature map")),
        }
    }

    fn error(&self, reason: impl Into<String>) -> GraphError {
        GraphError::Run {
            node: self.name.clone(),
            reason: reason.into(),
        }
    }
}

/// Hands a map's buffer to the next output once this was its last reader (see [`buffers`]).
fn release(map: Arc<Map>) {
    if let Ok(map) = Arc::try_unwrap(map) {
        buffers::recycle(map.data);
    }
}

impl Value {
    /// The activation applied to every value: the convolution epilogue's loop
    /// ([`kernels::finish_rows`], one compiled loop per kind of activation) with a zero bias.
    fn activate(self, activation: Activation) -> Value {
        let run = |data: &mut [f32], row: usize| {
            kernels::finish_rows(data, &vec![0.0; row.max(1)], Some(activation));
        };
        match self {
            Value::Map(m) => {
                let mut m = Arc::unwrap_or_clone(m);
                run(&mut m.data, m.c);
                Value::Map(Arc::new(m))
            }
            Value::Vector(v) => {
                let mut v = Arc::unwrap_or_clone(v);
                run(&mut v.data, v.f);
                Value::Vector(Arc::new(v))
            }
        }
    }
}

/// One burn step as a native kernel, with its weights copied out of burn's tensors. `sizes`
/// holds the map size (height, width) of each slot computed so far; the step's own is added.
fn translate(step: &Step, sizes: &mut [Option<(usize, usize)>]) -> Result<Kernel, String> {
    let input = step.inputs.first().and_then(|&slot| sizes[slot]);
    let values = |t: burn::tensor::TensorData| {
        t.try_to_vec::<f32>()
            .map_err(|e| format!("{}: weights are not f32: {e:?}", step.name))
    };
    let op = match &step.op {
        Op::Conv {
            weight,
            bias,
            options,
            ..
        } => {
            let dims = weight.dims();
            if dims.contains(&0) {
                return Err(format!("{}: empty convolution weights", step.name));
            }
            let bias = bias.as_ref().map(|b| values(b.to_data())).transpose()?;
            let window = Window {
                kernel: [dims[2], dims[3]],
                stride: options.stride,
                padding: options.padding,
                dilation: options.dilation,
                ceil: false,
            };
            let output = input.and_then(|(h, w)| window.output(h, w).ok());
            let algorithm = Algorithm::choose(&window, output);
            NativeOp::Conv(Box::new(Conv::new(
                &values(weight.to_data())?,
                dims,
                options.groups,
                bias.as_deref(),
                window,
                algorithm,
            )))
        }
        Op::Affine { scale, shift } => NativeOp::Affine {
            scale: values(scale.to_data())?,
            shift: values(shift.to_data())?,
        },
        Op::Activation(activation) => NativeOp::Activation(*activation),
        Op::MaxPool(o) => NativeOp::Pool(
            Window {
                kernel: o.kernel_size,
                stride: o.stride,
                padding: o.padding,
                dilation: o.dilation,
                ceil: o.ceil_mode,
            },
            PoolKind::Max,
        ),
        Op::AvgPool(o) => {
            if o.ceil_mode {
                return Err(format!("{}: average pooling with ceil_mode", step.name));
            }
            NativeOp::Pool(
                Window {
                    kernel: o.kernel_size,
                    stride: o.stride,
                    padding: o.padding,
                    dilation: [1, 1],
                    ceil: false,
                },
                PoolKind::Average {
                    count_padding: o.count_include_pad,
                },
            )
        }
        Op::GlobalAvgPool => NativeOp::GlobalAvgPool,
        Op::Add => NativeOp::Add,
        Op::Mul => NativeOp::Mul,
        Op::Concat => NativeOp::Concat,
        Op::Flatten => NativeOp::Flatten,
        Op::Linear { weight, bias } => {
            let [inputs, outputs] = weight.dims();
            NativeOp::Linear {
                weight: Weights::new(values(weight.to_data())?, inputs, outputs),
                bias: match bias {
                    Some(b) => values(b.to_data())?,
                    None => vec![0.0; outputs],
                },
            }
        }
        Op::Softmax => NativeOp::Softmax,
        Op::Identity => NativeOp::Identity,
        Op::LayerNorm {
            scale,
            shift,
            epsilon,
            over: Normalized::Channels,
        } => {
            let scale = values(scale.to_data())?;
            NativeOp::ChannelNorm {
                shift: match shift {
                    Some(s) => values(s.to_data())?,
                    None => vec![0.0; scale.len()],
                },
                scale,
                epsilon: *epsilon as f32,
            }
        }
        Op::LayerNorm {
            over: Normalized::LastAxis,
            ..
        }
        | Op::Permute(_) => {
            return Err(format!(
                "{}: transposed feature maps (only a LayerNorm over the channels between two \
                 Transposes runs natively)",
                step.name
            ));
        }
    };
    sizes[step.output] = match &op {
        NativeOp::Pool(window, _) => input.and_then(|(h, w)| window.output(h, w).ok()),
        NativeOp::Conv(conv) => input.and_then(|(h, w)| conv.window().output(h, w).ok()),
        NativeOp::GlobalAvgPool => Some((1, 1)),
        NativeOp::Flatten | NativeOp::Linear { .. } | NativeOp::Softmax => None,
        _ => input,
    };
    Ok(Kernel {
        name: step.name.clone(),
        op,
        inputs: step.inputs.clone(),
        output: step.output,
    })
}

/// What a convolution's epilogue takes over from the kernel after it.
enum Absorb {
    /// An add of this slot (the shortcut).
    Shortcut(usize),
    Activation(Activation),
}

/// Folds shortcut adds and activations into the convolution that produces their input:
/// `relu(conv(x) + shortcut)` becomes one kernel whose epilogue adds and clamps while the
/// output block is in cache. An add is folded into a convolution only when that
/// convolution's output has no other reader and the shortcut is computed before it (so the
/// fused kernel can run where the convolution ran).
fn fuse(kernels: Vec<Kernel>, slots: usize, graph_output: usize) -> Vec<Kernel> {
    let readers = readers(&kernels, slots, graph_output);
    // Index in `fused` of the kernel that writes each slot.
    let mut writer: Vec<Option<usize>> = vec![None; slots];
    let mut fused: Vec<Kernel> = Vec::with_capacity(kernels.len());
    for kernel in kernels {
        let target = match (&kernel.op, kernel.inputs.as_slice()) {
            (NativeOp::Add, &[a, b]) => {
                let candidates = [(a, b), (b, a)];
                // The operand written last is the one a fused kernel can absorb.
                candidates
                    .into_iter()
                    .filter(|&(conv, shortcut)| {
                        let (Some(at), earlier) = (writer[conv], writer[shortcut]) else {
                            return false;
                        };
                        readers[conv] == 1
                            && earlier.is_none_or(|e| e < at)
                            && matches!(&fused[at].op, NativeOp::Conv(c) if c.epilogue == Epilogue::default())
                    })
                    .max_by_key(|&(conv, _)| writer[conv])
                    .map(|(conv, shortcut)| (conv, Absorb::Shortcut(shortcut)))
            }
            (NativeOp::Activation(activation), &[x]) => Some((x, Absorb::Activation(*activation))),
            _ => None,
        };
        let absorbed = target.and_then(|(slot, absorb)| {
            let at = writer[slot]?;
            let NativeOp::Conv(conv) = &mut fused[at].op else {
                return None;
            };
            if readers[slot] != 1 || conv.epilogue.activation.is_some() {
                return None;
            }
            match absorb {
                Absorb::Shortcut(shortcut) => {
                    conv.epilogue.residual = true;
                    fused[at].inputs.push(shortcut);
                }
                Absorb::Activation(activation) => conv.epilogue.activation = Some(activation),
            }
            fused[at].output = kernel.output;
            Some(at)
        });
        match absorbed {
            Some(at) => writer[kernel.output] = Some(at),
            None => {
                writer[kernel.output] = Some(fused.len());
                fused.push(kernel);
            }
        }
    }
    fused
}

/// Joins each depthwise convolution with the 1×1 convolutions next to it into one
/// [`NativeOp::Chain`]: the expansion right before it whose output only it reads, and the
/// projection right after it that alone reads its output (a MobileNetV2 block's three
/// convolutions; an EfficientNet block's first two, its squeeze-and-excitation sitting
/// between the depthwise convolution and the projection).
fn chain(kernels: Vec<Kernel>, slots: usize, graph_output: usize) -> Vec<Kernel> {
    let readers = readers(&kernels, slots, graph_output);
    let mut chained: Vec<Kernel> = Vec::with_capacity(kernels.len());
    for kernel in kernels {
        let feeds = |previous: &Kernel| {
            kernel.inputs.first() == Some(&previous.output) && readers[previous.output] == 1
        };
        match chained.pop() {
            Some(previous) if feeds(&previous) && joins(&previous, &kernel) => {
                chained.push(join(previous, kernel));
            }
            previous => chained.extend(previous.into_iter().chain([kernel])),
        }
    }
    chained
}

/// Whether `first` and `second` (which alone reads `first`'s output) chain.
fn joins(first: &Kernel, second: &Kernel) -> bool {
    match (&first.op, &second.op) {
        (NativeOp::Conv(a), NativeOp::Conv(b)) => {
            Chain::fits(Some(a), b, None) || Chain::fits(None, a, Some(b))
        }
        (NativeOp::Chain(chain), NativeOp::Conv(b)) => chain.accepts_project(b),
        _ => false,
    }
}

/// `first` and `second`, which [`joins`] accepts, as one chain.
fn join(first: Kernel, second: Kernel) -> Kernel {
    let chain = match (first.op, second.op) {
        (NativeOp::Conv(a), NativeOp::Conv(b)) if a.depthwise().is_some() => {
            Chain::new(None, *a, Some(*b))
        }
        (NativeOp::Conv(a), NativeOp::Conv(b)) => Chain::new(Some(*a), *b, None),
        (NativeOp::Chain(chain), NativeOp::Conv(b)) => chain.with_project(*b),
        _ => None,
    }
    .expect("joins() checked that they fit");
    Kernel {
        name: format!("{}+{}", first.name, second.name),
        op: NativeOp::Chain(Box::new(chain)),
        inputs: (first.inputs.into_iter())
            .chain(second.inputs.into_iter().skip(1))
            .collect(),
        output: second.output,
    }
}

#[cfg(test)]
mod tests;
