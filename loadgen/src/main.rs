//! `loadgen`: parse options, run, exit non-zero on failure or when `--max-error-rate` is passed.

use clap::Parser;
use loadgen::Opts;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let limit = opts.max_error_rate;
    match loadgen::run(opts).await {
        Ok(report) => match limit {
            Some(limit) if report.error_rate > limit => {
                eprintln!(
                    "error rate {:.2} % is above --max-error-rate {:.2} %",
                    report.error_rate * 100.0,
                    limit * 100.0
                );
                std::process::ExitCode::from(2)
            }
            _ => std::process::ExitCode::SUCCESS,
        },
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
