//! Wiring: rules, Prometheus, discovery, object source, guard, and the HTTPS listener with
//! graceful shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::{self, AppState, openapi::OpenApi};
use crate::auth::authn::{
    AUTH_CONFIGMAP, DEFAULT_EXTRA_PREFIXES, DEFAULT_GROUP_HEADERS, DEFAULT_USERNAME_HEADERS,
    RequestHeaderAuth, TokenReviewer,
};
use crate::auth::authz::Authorizer;
use crate::auth::tls::{PeerCertificates, ServingCert, server_config};
use crate::auth::{self, Guard};
use crate::config::{Authn, Authz, Config, ObjectsFrom};
use crate::metrics::Metrics;
use crate::objects::{KubeObjects, Objects};
use crate::prom::Prometheus;
use crate::provider::Provider;
use crate::registry::{Registry, RegistryConfig, unix_now};
use crate::rules::Rules;

/// Binds `--listen` and serves until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    serve_on(listener, config, shutdown_signal()).await
}

/// Serves on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve_on(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let rules = Rules::load(&config.config)?;
    metrics.reloads.with_label_values(&["success"]).inc();
    metrics.last_reload_success.set(unix_now());
    let prometheus = Prometheus::new(
        &config.prometheus_url,
        config.prometheus_timeout,
        metrics.clone(),
    )?;
    let registry = Arc::new(Registry::new(
        rules,
        prometheus.clone(),
        RegistryConfig {
            max_age: config.metrics_max_age,
            drop_after: config.metrics_drop_after,
            lookup_interval: config.lookup_interval,
        },
        metrics.clone(),
    ));
    let kube = kube_client(&config).await?;
    let objects = match (config.objects_from, &kube) {
        (ObjectsFrom::Kubernetes, Some(client)) => Objects::Kubernetes(KubeObjects::new(
            client.clone(),
            config.objects_sync_timeout,
        )),
        _ => Objects::Prometheus,
    };
    let guard = build_guard(&config, kube.as_ref(), &metrics).await?;

    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(discover_forever(
        registry.clone(),
        config.metrics_relist_interval,
        ready.clone(),
    ));
    tokio::spawn(reload_rules_forever(
        config.config.clone(),
        config.config_poll_interval,
        registry.clone(),
        metrics.clone(),
    ));

    let state = AppState {
        provider: Arc::new(Provider::new(registry, objects, prometheus)),
        metrics,
        ready,
        openapi: Arc::new(OpenApi::new()),
    };
    let app = api::router(state, |routes| match &guard {
        Some(guard) => routes.route_layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            auth::guard,
        )),
        None => routes,
    });
    let serving = match (&config.tls_cert_file, &config.tls_private_key_file) {
        (Some(cert), Some(key)) => ServingCert::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => ServingCert::SelfSigned(config.self_signed_names.clone()),
    };
    let tls = server_config(&serving, config.authn == Authn::Requestheader)?;
    tracing::info!(
        listen = %listener.local_addr()?,
        prometheus = %config.prometheus_url,
        rules = %config.config.display(),
        objects_from = ?config.objects_from,
        authn = ?config.authn,
        authz = ?if config.authn == Authn::None { Authz::None } else { config.authz },
        "metrics adapter serving HTTPS"
    );
    serve_tls(listener, tls, app, shutdown, config.shutdown_grace).await;
    Ok(())
}

/// A client for the API server, when some feature needs one.
async fn kube_client(config: &Config) -> anyhow::Result<Option<kube::Client>> {
    let needed = config.objects_from == ObjectsFrom::Kubernetes
        || (config.authn == Authn::Requestheader
            && (config.authz == Authz::Kubernetes
                || config.requestheader_client_ca_file.is_none()));
    if !needed {
        return Ok(None);
    }
    let client = kube::Client::try_default().await.context(
        "cannot reach the Kubernetes API (needed by --objects-from=kubernetes, --authz=kubernetes, \
         or --authn=requestheader without --requestheader-client-ca-file); for a local run use \
         --objects-from=prometheus --authn=none",
    )?;
    Ok(Some(client))
}

async fn build_guard(
    config: &Config,
    kube: Option<&kube::Client>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<Guard>>> {
    if config.authn == Authn::None {
        tracing::warn!(
            "!!! --authn=none: EVERY CALLER IS TRUSTED. This is for local runs only; never \
             register this adapter with a cluster in this mode. !!!"
        );
        return Ok(None);
    }
    let from_configmap = config.requestheader_client_ca_file.is_none();
    let request_header = match &config.requestheader_client_ca_file {
        Some(path) => {
            let ca =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let defaults = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect();
            RequestHeaderAuth::new(
                &ca,
                config.requestheader_allowed_names.clone(),
                defaults(DEFAULT_USERNAME_HEADERS),
                defaults(DEFAULT_GROUP_HEADERS),
                defaults(DEFAULT_EXTRA_PREFIXES),
            )?
        }
        None => {
            let client = kube.context("request-header authentication needs the API server")?;
            load_request_header(client).await?
        }
    };
    tracing::info!(settings = ?request_header, "front-proxy authentication configured");
    let guard = Arc::new(Guard {
        request_header: ArcSwapOption::from_pointee(request_header),
        tokens: kube.map(|client| TokenReviewer::new(client.clone())),
        authorizer: match (config.authz, kube) {
            (Authz::Kubernetes, Some(client)) => Some(Authorizer::new(client.clone())),
            _ => None,
        },
        metrics: metrics.clone(),
    });
    if let (true, Some(client)) = (from_configmap, kube) {
        spawn_request_header_refresh(client.clone(), guard.clone());
    }
    Ok(Some(guard))
}

async fn load_request_header(client: &kube::Client) -> anyhow::Result<RequestHeaderAuth> {
    let (namespace, name) = AUTH_CONFIGMAP;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    let map = api.get(name).await.with_context(|| {
        format!(
            "cannot read ConfigMap {namespace}/{name} (the RoleBinding to \
             extension-apiserver-authentication-reader is missing?)"
        )
    })?;
    RequestHeaderAuth::from_configmap(&map.data.unwrap_or_default())
}

/// Re-reads the ConfigMap every minute so CA rotation needs no restart.
fn spawn_request_header_refresh(client: kube::Client, guard: Arc<Guard>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            match load_request_header(&client).await {
                Ok(settings) => guard.request_header.store(Some(Arc::new(settings))),
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "keeping the previous front-proxy settings"
                    );
                }
            }
        }
    });
}

async fn discover_forever(registry: Arc<Registry>, every: Duration, ready: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        match registry.relist().await {
            Ok(report) if first => {
                tracing::info!(
                    series = report.series,
                    metrics = report.metrics,
                    "first series discovery done"
                );
            }
            Ok(report) => {
                tracing::debug!(
                    series = report.series,
                    metrics = report.metrics,
                    "series discovery done"
                );
            }
            Err(error) => tracing::warn!(%error, "series discovery failed; will retry"),
        }
        first = false;
        ready.store(true, Ordering::Release);
    }
}

async fn reload_rules_forever(
    path: PathBuf,
    every: Duration,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(every).await;
        // A missing file is a ConfigMap update in progress (symlink swap); wait for it.
        let Ok(now) = std::fs::read(&path) else {
            continue;
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now.clone());
        match std::str::from_utf8(&now)
            .map_err(|e| e.to_string())
            .and_then(|text| Rules::parse(text).map_err(|e| e.to_string()))
        {
            Ok(rules) => {
                registry.set_rules(rules).await;
                metrics.reloads.with_label_values(&["success"]).inc();
                metrics.last_reload_success.set(unix_now());
                tracing::info!(path = %path.display(), "rules reloaded");
                if let Err(error) = registry.relist().await {
                    tracing::warn!(%error, "discovery after reload failed; will retry");
                }
            }
            Err(error) => {
                metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(path = %path.display(), %error, "new rules refused; still serving the previous rules");
            }
        }
    }
}

async fn serve_tls(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let peer = PeerCertificates(Arc::new(chain));
            let service = app.map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(peer.clone());
                request
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the grace period");
    }
}

async fn shutdown_signal() {
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
}
