//! A stand-in inference pod for dispatcher benchmarks: answers every request with a small JSON
//! body after a fixed delay, optionally much slower during a time window (the "one backend
//! stalls" experiment), and optionally with a fixed capacity: `--workers` requests served at
//! once, `--queue` more waiting, and anything beyond refused at once with 503 and
//! `Retry-After: 1`, as the inference server's batch queue does (the overload experiment).
//!
//! cargo run --release -p dispatcher --example fake_upstream -- --listen 127.0.0.1:19101 --delay-ms 10

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use clap::Parser;
use tokio::sync::Semaphore;

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
    /// Requests served at once (0: no limit); capacity is workers / delay.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Requests waiting for a worker before the next is refused with 503.
    #[arg(long, default_value_t = 0)]
    queue: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let slow_window = Duration::from_secs(args.slow_from_s)
        ..Duration::from_secs(args.slow_from_s + args.slow_for_s);
    let workers = Arc::new(Semaphore::new(if args.workers == 0 {
        Semaphore::MAX_PERMITS
    } else {
        args.workers
    }));
    let admitted = Arc::new(AtomicUsize::new(0));
    let room = if args.workers == 0 {
        usize::MAX
    } else {
        args.workers + args.queue
    };
    let handler = move || {
        let delay = if slow_window.contains(&started.elapsed()) {
            args.slow_delay_ms
        } else {
            args.delay_ms
        };
        let (workers, admitted) = (workers.clone(), admitted.clone());
        async move {
            if admitted.fetch_add(1, Ordering::AcqRel) >= room {
                admitted.fetch_sub(1, Ordering::AcqRel);
                return refuse();
            }
            let permit = workers.acquire().await;
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            drop(permit);
            admitted.fetch_sub(1, Ordering::AcqRel);
            r#"{"model":"fake","predictions":[]}"#.into_response()
        }
    };
    let app = Router::new().fallback(any(handler));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The inference server's answer when its queue is full.
fn refuse() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        r#"{"error":"the request queue is full; retry shortly"}"#,
    )
        .into_response()
}
