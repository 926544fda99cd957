//! `inference serve`: listen at once (so liveness probes pass while a large model loads),
//! load and warm up the models, then become ready; on SIGTERM/SIGINT stop accepting and
//! finish in-flight requests.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::batcher::BatchHandle;
use crate::config::ServeArgs;
use crate::metrics::Metrics;
use crate::model::{Classifier, find_specs};
use crate::state::{AppState, ModelEntry, Models};

/// Runs the server until SIGTERM/SIGINT and the drain that follows.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let grace = Duration::from_secs(args.shutdown_grace_s);
    serve_on(listener, args, shutdown_signal(grace)).await
}

/// Serves on `listener` until `shutdown` resolves, then finishes in-flight requests. The
/// server answers (liveness, 503 on readiness) while the models load; a model that fails to
/// load ends the server with that error.
pub async fn serve_on(
    listener: TcpListener,
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening; loading models");
    let state = AppState::new(Arc::new(Metrics::new()), args.limits());
    let app = crate::api::router(state.clone());
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .into_future();
    let loading = load_models(args, state);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.context("server failed"),
        loaded = loading => loaded?,
    }
    tracing::info!("models loaded and warmed up; ready");
    server.await.context("server failed")
}

/// Loads every model description, starts a batcher per model and publishes them.
pub async fn load_models(args: ServeArgs, state: AppState) -> anyhow::Result<()> {
    let batch = args.batch_config();
    let metrics = state.metrics.clone();
    let models = tokio::task::spawn_blocking(move || -> anyhow::Result<Models> {
        let mut entries = Vec::new();
        for spec in find_specs(&args.model.model)? {
            let started = std::time::Instant::now();
            let classifier = Classifier::load(&spec, args.model.target())
                .with_context(|| format!("loading {}", spec.display()))?;
            tracing::info!(
                model = classifier.name(),
                device = %args.model.device,
                precision = %args.model.precision,
                backend = classifier.backend(),
                seconds = started.elapsed().as_secs_f64(),
                "model loaded"
            );
            let classifier = Arc::new(classifier);
            let batcher = BatchHandle::spawn(classifier.clone(), batch, metrics.clone());
            entries.push(ModelEntry {
                classifier,
                batcher,
            });
        }
        Models::new(entries, &args.default_model).map_err(anyhow::Error::msg)
    })
    .await??;
    state.set_models(models);
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. After the signal axum stops accepting and waits for
/// in-flight requests; if they take longer than `grace` the process exits anyway, so a
/// stuck request cannot hold a terminating pod forever.
async fn shutdown_signal(grace: Duration) {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
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
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
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
