//! The adapter's own Prometheus metrics (names fixed in `shared/DESIGN.md`), so operators can
//! see why the HPA gets no value: Prometheus errors, slow queries, rules that stopped loading,
//! how many metrics discovery found.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Latency buckets in seconds: the HPA's client times out at 30 s, the aggregator's
/// availability probe at 5 s, and a healthy answer takes a few milliseconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// All adapter metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// API requests by verb and status code.
    pub requests: IntCounterVec,
    /// API request latency.
    pub request_duration: Histogram,
    /// Prometheus call latency by kind (`query`, `series`).
    pub prometheus_duration: HistogramVec,
    /// Failed Prometheus calls (unreachable, timed out, refused query).
    pub prometheus_errors: IntCounter,
    /// Metrics (metric × resource) currently served.
    pub discovered: IntGauge,
    /// Rules-file reloads by result (`success`, `error`).
    pub reloads: IntCounterVec,
    /// Unix time of the last rules file that loaded.
    pub last_reload_success: IntGauge,
    /// Requests refused by authentication or authorization, by reason.
    pub auth_failures: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("registered once");
            c
        }
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("static metric"),
            )
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            register(
                &registry,
                Histogram::with_opts(opts).expect("static metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("static metric"))
        };
        let requests = counters(
            "metrics_adapter_requests_total",
            "API requests by verb and HTTP status code.",
            &["verb", "code"],
        );
        let request_duration = histogram(
            "metrics_adapter_request_duration_seconds",
            "Time to answer an API request.",
        );
        let prometheus_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "metrics_adapter_prometheus_query_duration_seconds",
                    "Time Prometheus took to answer, by call (query, series).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["call"],
            )
            .expect("static metric"),
        );
        let prometheus_errors = register(
            &registry,
            IntCounter::new(
                "metrics_adapter_prometheus_errors_total",
                "Prometheus calls that failed (unreachable, timed out or refused).",
            )
            .expect("static metric"),
        );
        let discovered = gauge(
            "metrics_adapter_discovered_metrics",
            "Metrics (metric name and resource) currently served.",
        );
        let reloads = counters(
            "metrics_adapter_rules_reloads_total",
            "Rules file reloads by result (success, error).",
            &["result"],
        );
        let last_reload_success = gauge(
            "metrics_adapter_rules_last_reload_success_timestamp_seconds",
            "Unix time at which the rules in use were loaded.",
        );
        let auth_failures = counters(
            "metrics_adapter_auth_failures_total",
            "Requests refused by authentication (401) or authorization (403).",
            &["reason"],
        );
        Self {
            registry,
            requests,
            request_duration,
            prometheus_duration,
            prometheus_errors,
            discovered,
            reloads,
            last_reload_success,
            auth_failures,
        }
    }

    /// The text exposition of all metrics.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
