//! Command-line flags; each can also be set by an `ADAPTER_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// custom.metrics.k8s.io API server for the HorizontalPodAutoscaler, backed by Prometheus.
///
/// Serves the metrics the rules file describes (prometheus-adapter's rule format) over HTTPS to
/// the kube-apiserver aggregation layer. See docs/ADAPTER.md.
#[derive(Debug, Clone, Parser)]
#[command(name = "metrics-adapter", version)]
pub struct Config {
    /// Address to serve HTTPS on.
    #[arg(long, env = "ADAPTER_LISTEN", default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,

    /// Prometheus base URL.
    #[arg(
        long,
        env = "ADAPTER_PROMETHEUS_URL",
        default_value = "http://prometheus:9090"
    )]
    pub prometheus_url: String,

    /// Give up on a Prometheus call after this long.
    #[arg(long, env = "ADAPTER_PROMETHEUS_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub prometheus_timeout: Duration,

    /// The rules file (prometheus-adapter format); reloaded when it changes.
    #[arg(
        long,
        env = "ADAPTER_CONFIG",
        default_value = "/etc/metrics-adapter/rules.yaml"
    )]
    pub config: PathBuf,

    /// How often to check the rules file for changes.
    #[arg(long, env = "ADAPTER_CONFIG_POLL_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub config_poll_interval: Duration,

    /// Where object names and labels come from.
    #[arg(long, env = "ADAPTER_OBJECTS_FROM", value_enum, default_value_t = ObjectsFrom::Kubernetes)]
    pub objects_from: ObjectsFrom,

    /// How long a request waits for a new object watch cache to fill.
    #[arg(long, env = "ADAPTER_OBJECTS_SYNC_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub objects_sync_timeout: Duration,

    /// How often series are rediscovered in the background.
    #[arg(long, env = "ADAPTER_METRICS_RELIST_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub metrics_relist_interval: Duration,

    /// How far back a series counts as present during discovery.
    #[arg(long, env = "ADAPTER_METRICS_MAX_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub metrics_max_age: Duration,

    /// Drop a metric after it is missing from this many successful discoveries in a row.
    #[arg(long, env = "ADAPTER_METRICS_DROP_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub metrics_drop_after: u32,

    /// Least time between two discoveries triggered by requests for unknown metrics.
    #[arg(long, env = "ADAPTER_LOOKUP_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lookup_interval: Duration,

    /// How callers are authenticated. `none` is for local use only.
    #[arg(long, env = "ADAPTER_AUTHN", value_enum, default_value_t = Authn::Requestheader)]
    pub authn: Authn,

    /// How authenticated callers are authorized: SubjectAccessReview, or allow all (`none`).
    #[arg(long, env = "ADAPTER_AUTHZ", value_enum, default_value_t = Authz::Kubernetes)]
    pub authz: Authz,

    /// CA bundle that signs the aggregator's front-proxy certificate. Default: read from
    /// ConfigMap kube-system/extension-apiserver-authentication.
    #[arg(long, env = "ADAPTER_REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,

    /// Common names allowed for the front-proxy certificate (empty: any name signed by the CA).
    /// Used with --requestheader-client-ca-file.
    #[arg(
        long,
        env = "ADAPTER_REQUESTHEADER_ALLOWED_NAMES",
        value_delimiter = ','
    )]
    pub requestheader_allowed_names: Vec<String>,

    /// Serving certificate (PEM). Without it a self-signed certificate is made at start.
    #[arg(long, env = "ADAPTER_TLS_CERT_FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key of the serving certificate (PEM).
    #[arg(long, env = "ADAPTER_TLS_PRIVATE_KEY_FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,

    /// Names the self-signed certificate is made for.
    #[arg(
        long,
        env = "ADAPTER_SELF_SIGNED_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,metrics-adapter,metrics-adapter.imageclassifier,metrics-adapter.imageclassifier.svc"
    )]
    pub self_signed_names: Vec<String>,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "ADAPTER_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "ADAPTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--objects-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjectsFrom {
    /// Watch caches of the API server's objects (in a cluster).
    Kubernetes,
    /// The labels on the Prometheus series (no API server needed).
    Prometheus,
}

/// `--authn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Authn {
    /// Front-proxy client certificate + X-Remote-* headers, or a bearer token (TokenReview).
    Requestheader,
    /// Everyone is anonymous and allowed. Local use only.
    None,
}

/// `--authz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Authz {
    /// SubjectAccessReview against the API server.
    Kubernetes,
    /// Allow every authenticated caller.
    None,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}
