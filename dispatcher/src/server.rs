//! Start-up and shutdown: wire discovery, balancer, proxy and HTTP server together.

use std::collections::BTreeSet;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::Admission;
use crate::api::{AppState, Service};
use crate::balancer::Balancer;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// The async runtime the server runs on: `workers` threads, or one per usable CPU.
pub fn runtime(workers: Option<NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut runtime = match workers {
        // One thread, like one nginx worker: the event loop, the accept loop and every
        // connection on it, with no scheduler hand-offs between threads.
        Some(one) if one.get() == 1 => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.worker_threads(workers.get());
            runtime
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().build()
}

/// Runs the dispatcher until SIGTERM/SIGINT, then drains in-flight requests.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let grace = Duration::from_secs(config.shutdown_grace_s);
    serve_on(listener, config, shutdown_signal(grace)).await
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting and lets every open
/// connection finish the requests it has in flight.
pub async fn serve_on(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let balancer = Arc::new(Balancer::new(config.balance_config()));
    start_discovery(&config, &balancer, &metrics).await?;
    let proxy = Proxy::new(
        balancer.clone(),
        metrics.clone(),
        Duration::from_millis(config.request_timeout_ms),
        Duration::from_millis(config.connect_timeout_ms),
        config.retry_budget_percent,
    );
    let service = Service::new(AppState {
        proxy: Arc::new(proxy),
        admission: Arc::new(Admission::new(
            config.max_in_flight as usize,
            config.queue_capacity as usize,
            Duration::from_millis(config.queue_timeout_ms),
        )),
        balancer,
        metrics,
        max_body_bytes: config.max_body_bytes,
        client_timeout: Duration::from_millis(config.client_timeout_ms),
    });
    tracing::info!(address = %listener.local_addr()?, policy = ?config.balance, "dispatcher listening");

    // Each connection task holds a receiver: the value changes to `true` at shutdown, and the
    // sender's `closed()` resolves once every connection has finished.
    let (draining, drained) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (service, draining) = (service.clone(), drained.clone());
        tokio::spawn(async move { service.serve(stream, draining).await });
    }
    drop(listener);
    draining.send_replace(true);
    drop(drained);
    draining.closed().await;
    Ok(())
}

async fn start_discovery(
    config: &Config,
    balancer: &Arc<Balancer>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    if let Some(service) = &config.service {
        let client = kube::Client::try_default()
            .await
            .context("cannot reach the Kubernetes API (use --upstreams outside a cluster)")?;
        tracing::info!(%service, namespace = %config.namespace, "watching EndpointSlices");
        tokio::spawn(crate::discovery::watch_endpoint_slices(
            client,
            config.namespace.clone(),
            service.clone(),
            config.port_name.clone(),
            balancer.clone(),
            metrics.clone(),
        ));
    } else {
        let upstreams: BTreeSet<String> = config
            .upstreams
            .iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        anyhow::ensure!(!upstreams.is_empty(), "--upstreams is empty");
        for u in &upstreams {
            anyhow::ensure!(
                u.rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
                "upstream '{u}' is not host:port"
            );
        }
        balancer.set_upstreams(&upstreams);
        metrics.set_upstreams(balancer);
    }
    Ok(())
}

/// SIGTERM or SIGINT; then a grace period after which the process exits regardless.
async fn shutdown_signal(grace: Duration) {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "shutting down: finishing in-flight requests"
    );
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        tracing::warn!("in-flight requests did not finish within the grace period; exiting");
        std::process::exit(1);
    });
}
