//! Command-line interface; every flag is also a `DISPATCHER_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};

/// The access point: forwards `/v1/*` and `/v2/*` to inference pods, balancing the load.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
#[command(group(ArgGroup::new("source").required(true).args(["upstreams", "service"])))]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "DISPATCHER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Fixed upstreams `host:port,…` (no cluster needed).
    #[arg(long, env = "DISPATCHER_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    /// Kubernetes Service whose EndpointSlices list the upstreams.
    #[arg(long, env = "DISPATCHER_SERVICE")]
    pub service: Option<String>,
    /// Namespace of `--service`.
    #[arg(long, env = "DISPATCHER_NAMESPACE", default_value = "imageclassifier")]
    pub namespace: String,
    /// Port name to use from the EndpointSlices (first port if absent).
    #[arg(long, env = "DISPATCHER_PORT_NAME", default_value = "http")]
    pub port_name: String,
    /// How to choose an upstream.
    #[arg(long, env = "DISPATCHER_BALANCE", value_enum, default_value_t = Policy::P2cEwma)]
    pub balance: Policy,
    /// Whole-request timeout (until the upstream's response headers), milliseconds; then 504.
    #[arg(long, env = "DISPATCHER_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// TCP connect timeout to an upstream, milliseconds.
    #[arg(long, env = "DISPATCHER_CONNECT_TIMEOUT_MS", default_value_t = 1_000)]
    pub connect_timeout_ms: u64,
    /// Requests forwarded at once; more wait in the queue.
    #[arg(long, env = "DISPATCHER_MAX_IN_FLIGHT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Requests allowed to wait for a slot; beyond this the answer is 503.
    #[arg(long, env = "DISPATCHER_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: u32,
    /// Longest wait for a slot, milliseconds; then 503.
    #[arg(long, env = "DISPATCHER_QUEUE_TIMEOUT_MS", default_value_t = 10_000)]
    pub queue_timeout_ms: u64,
    /// Retries allowed as a percentage of recent requests (Envoy/linkerd use ~20 %).
    #[arg(long, env = "DISPATCHER_RETRY_BUDGET_PERCENT", default_value_t = 20.0)]
    pub retry_budget_percent: f32,
    /// Consecutive failures (connection errors, timeouts, 5xx) that eject an upstream.
    #[arg(long, env = "DISPATCHER_EJECT_AFTER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after: u32,
    /// First ejection length, milliseconds; doubles on each repeated ejection (max 5 min).
    #[arg(long, env = "DISPATCHER_EJECT_BASE_MS", default_value_t = 5_000)]
    pub eject_base_ms: u64,
    /// Peak-EWMA decay time, milliseconds (linkerd: 10 s).
    #[arg(long, env = "DISPATCHER_EWMA_DECAY_MS", default_value_t = 10_000)]
    pub ewma_decay_ms: u64,
    /// Latency assumed for an upstream before its first response, milliseconds.
    #[arg(long, env = "DISPATCHER_DEFAULT_RTT_MS", default_value_t = 30)]
    pub default_rtt_ms: u64,
    /// Largest accepted request body, bytes (bodies are buffered so they can be retried).
    #[arg(long, env = "DISPATCHER_MAX_BODY_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// A client that sends nothing for this long in the middle of a request (its head or
    /// body) is answered 408 and disconnected, milliseconds. Idle keep-alive connections
    /// between requests are not timed out.
    #[arg(long, env = "DISPATCHER_CLIENT_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_timeout_ms: u64,
    /// On SIGTERM, how long to wait for in-flight requests, seconds.
    #[arg(long, env = "DISPATCHER_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,
    /// Threads that serve requests (default: the CPUs this process may use, cgroup quota
    /// included). `1` runs everything on one event loop, like one nginx worker. On a machine
    /// shared with other busy processes, fewer threads than cores gives a shorter latency
    /// tail (docs/PERFORMANCE.md).
    #[arg(long, env = "DISPATCHER_WORKERS")]
    pub workers: Option<std::num::NonZeroUsize>,
    /// Log format.
    #[arg(long, env = "DISPATCHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Balancing policy (`--balance`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Power of two random choices, comparing peak-EWMA latency × (outstanding + 1).
    P2cEwma,
    /// The upstream with the fewest outstanding requests.
    LeastOutstanding,
    /// Each upstream in turn.
    RoundRobin,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Balancer tuning derived from the flags.
#[derive(Clone, Copy, Debug)]
pub struct BalanceConfig {
    /// Policy.
    pub policy: Policy,
    /// Consecutive failures before ejection.
    pub eject_after: u32,
    /// First ejection length.
    pub eject_base: Duration,
    /// Peak-EWMA decay.
    pub decay: Duration,
    /// Initial latency estimate.
    pub default_rtt: Duration,
}

impl Config {
    /// Balancer settings.
    pub fn balance_config(&self) -> BalanceConfig {
        BalanceConfig {
            policy: self.balance,
            eject_after: self.eject_after,
            eject_base: Duration::from_millis(self.eject_base_ms),
            decay: Duration::from_millis(self.ewma_decay_ms.max(1)),
            default_rtt: Duration::from_millis(self.default_rtt_ms),
        }
    }
}
