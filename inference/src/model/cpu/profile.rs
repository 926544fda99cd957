//! Where a pass of the native engine spends its time, kernel by kernel: `inference bench
//! --profile` (ONNX Runtime's side of the same file, node by node: `bench_ort.py --profile`).
//!
//! Off unless switched on, and then a kernel costs one relaxed load of a flag. When on, each
//! kernel's wall time is added up under its name. A batch runs as one part per thread, all
//! at once, each part's kernels one after another (`Plan::forward`): at batch 1 the kernels'
//! times add up to the pass, less what the scheduling between them costs; at batch 8 on two
//! threads to about twice the pass, each kernel timed while the other part runs beside it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One kernel's time over the passes since the last [`take`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The ONNX node (a fused kernel: the node of its first operation; a chain: both, `+`).
    pub name: String,
    /// What runs, e.g. `conv 3x3/2 depthwise 72->72 +relu`.
    pub what: String,
    /// The output's shape, `[n, c, h, w]` or `[n, features]`.
    pub output: String,
    pub total: Duration,
    /// Runs (one per part of a pass: see `Plan::forward`).
    pub calls: u64,
}

static ON: AtomicBool = AtomicBool::new(false);

/// Times by kernel name, with the order each was first seen (the execution order).
static TIMES: LazyLock<Mutex<HashMap<String, (usize, KernelTime)>>> = LazyLock::new(Mutex::default);

/// Starts (or stops) timing every native kernel of every pass in this process.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// The times recorded since the last call, in execution order; clears them.
pub fn take() -> Vec<KernelTime> {
    let mut times: Vec<(usize, KernelTime)> = lock().drain().map(|(_, entry)| entry).collect();
    times.sort_by_key(|(order, _)| *order);
    times.into_iter().map(|(_, time)| time).collect()
}

/// Runs `kernel`, adding its time under `name` when profiling is on. `describe` (what runs,
/// and the output's shape) is asked once per name.
pub(super) fn time<T>(
    name: &str,
    kernel: impl FnOnce() -> T,
    describe: impl FnOnce(&T) -> (String, String),
) -> T {
    if !ON.load(Ordering::Relaxed) {
        return kernel();
    }
    let started = Instant::now();
    let value = kernel();
    let elapsed = started.elapsed();
    let mut times = lock();
    match times.get_mut(name) {
        Some((_, time)) => {
            time.total += elapsed;
            time.calls += 1;
        }
        None => {
            let (what, output) = describe(&value);
            let order = times.len();
            let time = KernelTime {
                name: name.to_owned(),
                what,
                output,
                total: elapsed,
                calls: 1,
            };
            times.insert(name.to_owned(), (order, time));
        }
    }
    value
}

/// The table, also after a panic elsewhere poisoned it (the times are only ever added to).
fn lock() -> MutexGuard<'static, HashMap<String, (usize, KernelTime)>> {
    TIMES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
