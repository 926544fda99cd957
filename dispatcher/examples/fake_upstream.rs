//! A stand-in inference pod for dispatcher benchmarks: answers every request with a small JSON
//! body after a fixed delay, optionally much slower during a time window (the "one backend
//! stalls" experiment).
//!
//! cargo run --release -p dispatcher --example fake_upstream -- --listen 127.0.0.1:19101 --delay-ms 10

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::any;
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Normal answer delay, milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Delay during the slow window, milliseconds.
    #[arg(long, default_value_t = 0)]
    slow_delay_ms: u64,
    /// Start of the slow window, seconds after start-up.
    #[arg(long, default_value_t = 0)]
    slow_from_s: u64,
    /// Length of the slow window, seconds (0: never slow).
    #[arg(long, default_value_t = 0)]
    slow_for_s: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let slow_window = Duration::from_secs(args.slow_from_s)
        ..Duration::from_secs(args.slow_from_s + args.slow_for_s);
    let handler = move || {
        let delay = if slow_window.contains(&started.elapsed()) {
            args.slow_delay_ms
        } else {
            args.delay_ms
        };
        async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            r#"{"model":"fake","predictions":[]}"#
        }
    };
    let app = Router::new().fallback(any(handler));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
