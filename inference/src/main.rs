//! `inference`: parse the command line, set up logging, run the subcommand.

use clap::Parser;
use inference::config::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

// Every forward pass allocates and frees tens of MiB of feature maps. With glibc's malloc about
// 3 % of a batch went to page faults and page clearing; mimalloc keeps freed blocks for reuse:
// about 4 % faster per batch on the CPU engine (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    if let Err(missing) = cpu_has_what_this_build_uses() {
        eprintln!(
            "error: this build of inference uses {missing} (x86-64-v3, set in .cargo/config.toml), \
             which this CPU lacks; build it for this CPU with RUSTFLAGS=\"-C target-cpu=native\""
        );
        return std::process::ExitCode::FAILURE;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Decoding and resizing run on tokio's blocking threads, which are CPU-bound: more of them
    // than cores adds no throughput, and each one that ever ran keeps its allocator heap (at 32
    // concurrent requests, 512 allowed by default, the server grew to 650 MiB; see
    // docs/PERFORMANCE.md). Requests beyond the cap wait for a thread, as they would for a core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(2 * cores)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,onnx_ir=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match inference::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The instruction sets this binary was compiled to use (`.cargo/config.toml`) that the CPU
/// does not have: a clear error at start instead of an illegal instruction mid-request.
fn cpu_has_what_this_build_uses() -> Result<(), &'static str> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !std::arch::is_x86_feature_detected!("avx2") {
        return Err("AVX2");
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "fma"))]
    if !std::arch::is_x86_feature_detected!("fma") {
        return Err("FMA");
    }
    Ok(())
}
