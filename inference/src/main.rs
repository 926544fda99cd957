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
