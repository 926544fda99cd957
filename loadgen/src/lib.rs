//! loadgen: open-loop load with rate profiles, latency measured from each request's intended
//! send time (no coordinated omission), a per-second series, JSON/CSV output and plots.
//! `main.rs` parses [`Opts`] and calls [`run`].

#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod payload;
pub mod plot;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod watch;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

pub use cli::{Mode, Opts};
use client::{Client, Connection, Connections, Outcome};
use payload::Payloads;
use report::Report;
use schedule::{Arrivals, Profile};
use stats::{LATE_AFTER, Sample, Stats};

/// Runs the load described by `opts`, prints the summary, writes the requested files, and
/// returns the report (the binary turns `--max-error-rate` into its exit code).
pub async fn run(opts: Opts) -> anyhow::Result<Report> {
    if let Some(plot) = &opts.plot {
        plot::check_format(plot)?;
    }
    let payloads = Arc::new(match &opts.images {
        Some(dir) => Payloads::from_dir(dir, opts.shuffle.then_some(opts.seed))?,
        None => Payloads::synthetic(opts.synthetic.0, opts.synthetic.1)?,
    });
    check_reachable(&opts.target).await?;
    let client = Client::new(
        &opts.target,
        opts.headers.clone(),
        opts.timeout,
        !opts.no_keepalive,
    );
    let started = Instant::now();
    let watch = match &opts.watch {
        Some(name) => {
            Some(watch::start(name, &opts.namespace, opts.context.as_deref(), started).await?)
        }
        None => None,
    };

    let mode = opts.mode();
    let total = match &mode {
        Mode::OpenLoop(profile) => profile.duration(),
        Mode::ClosedLoop { duration, .. } => *duration,
    };
    let progress = progress_bar(total, opts.quiet);
    let (samples, received) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect(received, progress.clone(), started));
    match &mode {
        Mode::OpenLoop(profile) => {
            let arrivals = if opts.poisson {
                Arrivals::Poisson { seed: opts.seed }
            } else {
                Arrivals::Uniform
            };
            open_loop(
                profile,
                arrivals,
                &client,
                &payloads,
                opts.connections,
                opts.timeout,
                samples,
            )
            .await;
        }
        Mode::ClosedLoop {
            concurrency,
            duration,
        } => {
            closed_loop(*concurrency, *duration, &client, &payloads, samples).await;
        }
    }
    // The run ends when the last response arrives; aggregating the backlog of samples
    // afterwards is not part of it.
    let elapsed = started.elapsed().as_secs_f64();
    let stats = collector.await.context("collecting results")?;
    progress.finish_and_clear();
    if let Some((_, task)) = &watch {
        task.abort();
    }

    let (label, co_free) = match &mode {
        Mode::OpenLoop(_) => ("open-loop", true),
        Mode::ClosedLoop { .. } => ("closed-loop", false),
    };
    let profile = match &mode {
        Mode::OpenLoop(p) => Some(p.clone()),
        Mode::ClosedLoop { .. } => None,
    };
    let offered = |second: u64| profile.as_ref().map(|p| mean_rate(p, second));
    let replicas = |second: u64| watch.as_ref().and_then(|(r, _)| r.at(second));
    let report = Report::new(
        &stats,
        label,
        co_free,
        opts.target.to_string(),
        elapsed,
        offered,
        replicas,
    );
    report.print();
    if let Some(path) = &opts.out {
        report.write_json(path)?;
    }
    if let Some(path) = &opts.csv {
        report.write_csv(path)?;
    }
    if let Some(path) = &opts.plot {
        plot::write(&report, path)?;
    }
    Ok(report)
}

/// Target rate averaged over one second.
fn mean_rate(profile: &Profile, second: u64) -> f64 {
    let steps = 10;
    (0..steps)
        .map(|i| {
            profile.rate_at(Duration::from_secs_f64(
                second as f64 + (i as f64 + 0.5) / steps as f64,
            ))
        })
        .sum::<f64>()
        / steps as f64
}

/// Fails fast, with the address, when nothing listens at the target.
async fn check_reachable(target: &http::Uri) -> anyhow::Result<()> {
    let host = target.host().context("target has no host")?;
    let port = target.port_u16().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("cannot connect to {host}:{port}: timed out after 5 s"))?
    .with_context(|| format!("cannot connect to {host}:{port} (is the server running?)"))?;
    Ok(())
}

fn progress_bar(total: Duration, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s  {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

/// Aggregates samples and refreshes the progress line a few times a second.
async fn collect(
    mut received: mpsc::UnboundedReceiver<Vec<Sample>>,
    progress: ProgressBar,
    started: Instant,
) -> Stats {
    let mut stats = Stats::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            batch = received.recv() => match batch {
                Some(batch) => batch.into_iter().for_each(|sample| stats.record(sample)),
                None => return stats,
            },
            _ = tick.tick() => {
                let now = started.elapsed();
                progress.set_position(now.as_secs());
                if let Some(r) = stats.recent(now) {
                    progress.set_message(format!(
                        "{} req/s  ok {}  errors {}  p50 {:.0} ms  p99 {:.0} ms  (total errors {})",
                        r.sent, r.ok, r.errors, r.p50_ms, r.p99_ms, stats.errors()
                    ));
                }
            }
        }
    }
}

/// Sends at the scheduled times. A send due while all `connections` are busy waits (and is
/// late); one that cannot start before its own timeout is dropped. Latency always counts
/// from the intended time, so waiting shows up in the percentiles.
async fn open_loop(
    profile: &Profile,
    arrivals: Arrivals,
    client: &Client,
    payloads: &Arc<Payloads>,
    connections: usize,
    timeout: Duration,
    samples: mpsc::UnboundedSender<Vec<Sample>>,
) {
    let connections_n = connections.max(1);
    let pool = Arc::new(Connections::new(connections_n));
    let start = tokio::time::Instant::now();
    for (i, offset) in profile.send_times(arrivals).enumerate() {
        let intended = start + offset;
        tokio::time::sleep_until(intended).await;
        let Ok(mut connection) = tokio::time::timeout_at(intended + timeout, pool.take()).await
        else {
            let _ = samples.send(vec![Sample {
                intended: offset,
                latency: timeout,
                outcome: Outcome::Dropped,
                late: true,
            }]);
            continue;
        };
        let late = intended.elapsed() > LATE_AFTER;
        let (client, payload, samples, pool) = (
            client.clone(),
            payloads.get(i),
            samples.clone(),
            pool.clone(),
        );
        tokio::spawn(async move {
            let outcome = client.send(&mut connection, payload).await;
            let latency = intended.elapsed();
            pool.give_back(connection);
            let _ = samples.send(vec![Sample {
                intended: offset,
                latency,
                outcome,
                late,
            }]);
        });
    }
    // Wait for the requests still in flight.
    pool.drain(connections_n).await;
}

/// Samples a closed-loop worker collects before handing them over. Handing over one sample
/// per response woke the collector tens of thousands of times a second, which cost peak
/// throughput; a batch (or whatever is pending every [`FLUSH_EVERY`], so the progress line stays
/// live) does not.
const BATCH: usize = 256;
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// `concurrency` workers, each sending its next request when the previous one is answered.
async fn closed_loop(
    concurrency: usize,
    duration: Duration,
    client: &Client,
    payloads: &Arc<Payloads>,
    samples: mpsc::UnboundedSender<Vec<Sample>>,
) {
    let start = Instant::now();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, payloads, samples, counter) = (
                client.clone(),
                payloads.clone(),
                samples.clone(),
                counter.clone(),
            );
            tokio::spawn(async move {
                let mut connection = Connection::default();
                let mut batch = Vec::with_capacity(BATCH);
                let mut flushed = start;
                let mut now = start;
                while now.duration_since(start) < duration {
                    let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let sent = now;
                    let outcome = client.send(&mut connection, payloads.get(i)).await;
                    now = Instant::now();
                    batch.push(Sample {
                        intended: sent.duration_since(start),
                        latency: now.duration_since(sent),
                        outcome,
                        late: false,
                    });
                    if batch.len() == BATCH || now.duration_since(flushed) >= FLUSH_EVERY {
                        let _ =
                            samples.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                        flushed = now;
                    }
                }
                if !batch.is_empty() {
                    let _ = samples.send(batch);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}
