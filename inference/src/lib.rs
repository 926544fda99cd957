//! The inference service: ONNX image classifiers run by burn, behind an HTTP API with dynamic
//! batching and Prometheus metrics. `main.rs` only parses the command line and calls [`run`].

#![forbid(unsafe_code)]

pub mod api;
pub mod batcher;
pub mod bench;
pub mod commands;
pub mod config;
pub mod eval;
pub mod metrics;
pub mod model;
pub mod server;
pub mod state;
pub mod verify;

use config::{Cli, Command};

/// Runs one subcommand to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => server::serve(args).await,
        Command::Classify(args) => blocking(move || commands::classify(&args)).await,
        Command::Bench(args) => blocking(move || bench::bench(&args)).await,
        Command::Import(args) => blocking(move || commands::import(&args)).await,
        Command::Eval(args) => eval::eval(args).await,
    }
}

/// Model loading and forward passes are CPU-bound: keep them off the async workers.
async fn blocking(
    work: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(work).await?
}
