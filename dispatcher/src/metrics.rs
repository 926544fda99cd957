//! Prometheus metrics with the names fixed in `shared/DESIGN.md`. The `upstream` label is
//! bounded by the number of inference pods; label values of removed upstreams are deleted.

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::balancer::Balancer;

/// Request latency buckets in seconds, aligned with the inference server's.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// All dispatcher metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Client requests by status code.
    pub requests: IntCounterVec,
    /// Client request latency.
    pub request_duration: Histogram,
    /// Client requests being handled (queued or forwarded).
    pub in_flight: IntGauge,
    /// Forwarded attempts by upstream and status (`error` for no response).
    pub upstream_requests: IntCounterVec,
    /// Attempts outstanding per upstream.
    pub upstream_in_flight: IntGaugeVec,
    /// Upstreams by state (`ready`, `ejected`).
    pub upstreams: IntGaugeVec,
    /// Second attempts made on another upstream.
    pub retries: IntCounter,
    /// Retries wanted and not made, by reason (`budget`, `no_upstream`).
    pub retries_denied: IntCounterVec,
    /// Retries the budget allows now (set when metrics are rendered).
    pub retry_budget_available: IntGauge,
    /// Requests refused without forwarding, by reason.
    pub rejected: IntCounterVec,
    known: Mutex<BTreeSet<String>>,
    /// `requests` children by status code, resolved once: `with_label_values` hashes the
    /// label and takes a lock on every call.
    by_code: Box<[std::sync::OnceLock<IntCounter>]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts one client request answered with `status`.
    pub fn count_request(&self, status: http::StatusCode) {
        match self.by_code.get(usize::from(status.as_u16())) {
            Some(cell) => cell
                .get_or_init(|| self.requests.with_label_values(&[status.as_str()]))
                .inc(),
            None => self.requests.with_label_values(&[status.as_str()]).inc(),
        }
    }

    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let requests = counter_vec(
            "dispatcher_requests_total",
            "Client requests by HTTP status code.",
            &["code"],
        );
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "dispatcher_request_duration_seconds",
                "Client request latency, including queueing and retries.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("static metric");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("registered once");
        let in_flight = IntGauge::new(
            "dispatcher_in_flight_requests",
            "Client requests being handled.",
        )
        .expect("static metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("registered once");
        let upstream_requests = counter_vec(
            "dispatcher_upstream_requests_total",
            "Attempts forwarded to each upstream, by status code (\"error\" when no response came).",
            &["upstream", "code"],
        );
        let upstream_in_flight = gauge_vec(
            "dispatcher_upstream_in_flight",
            "Attempts outstanding per upstream.",
            &["upstream"],
        );
        let upstreams = gauge_vec(
            "dispatcher_upstreams",
            "Known upstreams by state.",
            &["state"],
        );
        let retries = IntCounter::new(
            "dispatcher_retries_total",
            "Requests retried on another upstream.",
        )
        .expect("static metric");
        registry
            .register(Box::new(retries.clone()))
            .expect("registered once");
        let retries_denied = counter_vec(
            "dispatcher_retries_denied_total",
            "Retries wanted and not made: \"budget\" (the retry budget is spent), \"no_upstream\" \
             (no other upstream can take it: none left, ejected, or itself refusing with 503).",
            &["reason"],
        );
        let retry_budget_available = IntGauge::new(
            "dispatcher_retry_budget_available",
            "Retries the budget allows now (--retry-budget-percent of the last 10 s of requests, \
             less the retries made).",
        )
        .expect("static metric");
        registry
            .register(Box::new(retry_budget_available.clone()))
            .expect("registered once");
        let rejected = counter_vec(
            "dispatcher_rejected_total",
            "Requests refused without forwarding, by reason.",
            &["reason"],
        );
        Self {
            registry,
            requests,
            request_duration,
            in_flight,
            upstream_requests,
            upstream_in_flight,
            upstreams,
            retries,
            retries_denied,
            retry_budget_available,
            rejected,
            known: Mutex::new(BTreeSet::new()),
            by_code: (0..600).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// Refreshes the upstream gauges and forgets label values of removed upstreams.
    pub fn set_upstreams(&self, balancer: &Balancer) {
        let (ready, ejected) = balancer.counts();
        self.upstreams
            .with_label_values(&["ready"])
            .set(ready as i64);
        self.upstreams
            .with_label_values(&["ejected"])
            .set(ejected as i64);
        let current: BTreeSet<String> = balancer
            .snapshot()
            .iter()
            .map(|u| u.address.clone())
            .collect();
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in known.difference(&current) {
            let _ = self.upstream_in_flight.remove_label_values(&[gone]);
            for code in self.codes_of(gone) {
                let _ = self.upstream_requests.remove_label_values(&[gone, &code]);
            }
        }
        *known = current;
    }

    fn codes_of(&self, upstream: &str) -> Vec<String> {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "dispatcher_upstream_requests_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "upstream" && l.value() == upstream)
            })
            .flat_map(|m| {
                m.get_label()
                    .iter()
                    .filter(|l| l.name() == "code")
                    .map(|l| l.value().to_string())
            })
            .collect()
    }

    /// Prometheus text exposition; the upstream gauges are refreshed first.
    pub fn render(&self, balancer: &Balancer) -> String {
        self.set_upstreams(balancer);
        for upstream in balancer.snapshot().iter() {
            self.upstream_in_flight
                .with_label_values(&[&upstream.address])
                .set(upstream.outstanding() as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
