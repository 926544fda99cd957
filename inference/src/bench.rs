//! `inference bench`: forward-pass latency and throughput of the model alone (no HTTP, no
//! decoding), at several batch sizes, on the chosen device. Rerunnable by anyone to compare
//! backends or model-layer optimisations; the HTTP-level capacity is measured with loadgen.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::commands::load_model;
use crate::config::BenchArgs;
use crate::model::{InputImage, profile};

/// Timings of one batch size.
#[derive(Debug, Serialize)]
pub struct BenchRow {
    /// Images per forward pass.
    pub batch: usize,
    /// Median forward-pass time, milliseconds.
    pub median_ms: f64,
    /// 99th percentile (nearest rank), milliseconds.
    pub p99_ms: f64,
    /// Fastest pass, milliseconds.
    pub min_ms: f64,
    /// Images per second at the median.
    pub images_per_s: f64,
    /// With `--profile`: each native kernel's time per pass, in the order they run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelRow>,
}

/// One kernel's share of a pass (`--profile`).
#[derive(Debug, Serialize)]
pub struct KernelRow {
    /// The ONNX node(s) it runs.
    pub name: String,
    /// What runs, e.g. `conv 3x3/2 depthwise 72->72 +Relu`.
    pub what: String,
    /// Output shape, NCHW.
    pub output: String,
    /// Milliseconds per pass (mean over the timed passes), summed over the parts of a batch
    /// that run at once on different threads.
    pub ms: f64,
}

/// Runs the benchmark and prints a table (or JSON).
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let model = load_model(&args.model, args.name.as_deref())?;
    anyhow::ensure!(
        !args.profile || model.backend() == "native",
        "--profile times the native engine's kernels, and model '{}' runs on burn's {} \
         operations",
        model.name(),
        model.backend()
    );
    let size = model.spec().preprocess.input_size;
    let mut rows = Vec::new();
    for &batch in &args.batch_sizes {
        anyhow::ensure!(batch >= 1, "batch sizes must be at least 1");
        let images: Vec<InputImage> = (0..batch).map(|i| pseudo_image(size, i)).collect();
        for _ in 0..args.warmup {
            model.infer(&images)?;
        }
        let mut times = Vec::with_capacity(args.iterations as usize);
        profile::enable(args.profile);
        for _ in 0..args.iterations {
            let started = Instant::now();
            model.infer(&images)?;
            times.push(started.elapsed());
        }
        profile::enable(false);
        let mut row = summarise(batch, &mut times);
        row.kernels = per_pass(profile::take(), args.iterations);
        rows.push(row);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": model.name(),
                "device": model.device_choice(),
                "backend": model.backend(),
                "precision": model.precision(),
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "results": rows,
            }))?
        );
    } else {
        println!(
            "model {} on {} ({}, {})",
            model.name(),
            model.device_choice(),
            model.backend(),
            model.precision()
        );
        println!(
            "{:>6} {:>11} {:>11} {:>11} {:>10}",
            "batch", "median ms", "p99 ms", "min ms", "images/s"
        );
        for r in &rows {
            println!(
                "{:>6} {:>11.1} {:>11.1} {:>11.1} {:>10.1}",
                r.batch, r.median_ms, r.p99_ms, r.min_ms, r.images_per_s
            );
        }
        for r in rows.iter().filter(|r| !r.kernels.is_empty()) {
            print_kernels(r);
        }
    }
    Ok(())
}

/// The kernels' times as milliseconds per pass.
fn per_pass(times: Vec<profile::KernelTime>, passes: u32) -> Vec<KernelRow> {
    times
        .into_iter()
        .map(|t| KernelRow {
            ms: t.total.as_secs_f64() * 1e3 / f64::from(passes),
            name: t.name,
            what: t.what,
            output: t.output,
        })
        .collect()
}

fn print_kernels(row: &BenchRow) {
    let total: f64 = row.kernels.iter().map(|k| k.ms).sum();
    println!(
        "\nbatch {}: {:.2} ms of kernel time per pass in {} kernels (mean; the median pass \
         took {:.2}; a batch runs as one part per thread at once, so kernel times of several \
         images add up to more than the pass)",
        row.batch,
        total,
        row.kernels.len(),
        row.median_ms
    );
    println!(
        "{:>8} {:>6}  {:<28} {:<24} what",
        "ms", "%", "node", "output"
    );
    for k in &row.kernels {
        println!(
            "{:>8.3} {:>6.1}  {:<28} {:<24} {}",
            k.ms,
            100.0 * k.ms / total.max(f64::MIN_POSITIVE),
            k.name,
            k.output,
            k.what
        );
    }
}

fn summarise(batch: usize, times: &mut [Duration]) -> BenchRow {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = ms(times[times.len() / 2]);
    let p99_rank = ((times.len() as f64) * 0.99).ceil() as usize;
    BenchRow {
        batch,
        median_ms: median,
        p99_ms: ms(times[p99_rank.clamp(1, times.len()) - 1]),
        min_ms: ms(times[0]),
        images_per_s: batch as f64 / (median / 1e3),
        kernels: Vec::new(),
    }
}

/// Deterministic, varied input in the normalised range (the speed of a CNN does not depend on
/// pixel values, but constant inputs could flatter a backend that special-cases them).
fn pseudo_image(size: u32, seed: usize) -> InputImage {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ seed as u64;
    let data = (0..3 * (size * size) as usize)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 4000) as f32 / 1000.0 - 2.0
        })
        .collect();
    InputImage { size, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_uses_median_and_nearest_rank_p99() {
        let mut times: Vec<Duration> = (1..=10).map(|i| Duration::from_millis(i * 10)).collect();
        let row = summarise(4, &mut times);
        assert_eq!(row.median_ms, 60.0);
        assert_eq!(row.p99_ms, 100.0);
        assert_eq!(row.min_ms, 10.0);
        assert!((row.images_per_s - 4.0 / 0.06).abs() < 1e-9);
    }
}
