//! Prometheus metrics. The names are part of the contract in `shared/DESIGN.md`: the HPA's
//! custom metric is derived from `inference_requests_total`, so renaming one breaks scaling.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Request latency buckets in seconds. They bracket one ResNet50 forward pass on CPU
/// (~0.1 s) and on GPU (~0.005 s), and include 0.015 (MLPerf's server-scenario bound).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Queue waits are usually shorter than a request.
const QUEUE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Powers of two up to the largest sensible `--max-batch`.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// `attempt` label of a request offered to the service for the first time: demand.
pub const FIRST_ATTEMPT: &str = "first";
/// `attempt` label of a request retried here by a proxy after another pod refused it.
pub const RETRY: &str = "retry";

/// All metrics of one server process, registered in their own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Classification requests (`/v1/classify`, `/v2/models/*/infer`) by HTTP status and
    /// attempt ([`FIRST_ATTEMPT`] or [`RETRY`]).
    pub requests: IntCounterVec,
    /// Whole-request latency.
    pub request_duration: Histogram,
    /// Time jobs wait for a batch slot.
    pub queue_duration: Histogram,
    /// Images per forward pass.
    pub batch_size: Histogram,
    /// Requests accepted and not yet answered.
    pub in_flight: IntGauge,
    /// Constant 1 per loaded model, labelled with what runs it.
    pub model_info: IntGaugeVec,
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
        let requests = IntCounterVec::new(
            Opts::new(
                "inference_requests_total",
                "Classification requests by HTTP status code, and by attempt: \"first\" for \
                 demand offered to the service (each client request once, whatever the \
                 answer), \"retry\" for a request a proxy retried here after another pod \
                 refused it (X-Attempt-Count above 1). The HPA scales on the first.",
            ),
            &["code", "attempt"],
        )
        .expect("static metric definition");
        let request_duration = histogram(
            "inference_request_duration_seconds",
            "Time from receiving a classification request to sending its response.",
            LATENCY_BUCKETS,
        );
        let queue_duration = histogram(
            "inference_queue_duration_seconds",
            "Time a request waited for a batch slot before its forward pass started.",
            QUEUE_BUCKETS,
        );
        let batch_size = histogram(
            "inference_batch_size",
            "Images per model execution.",
            BATCH_BUCKETS,
        );
        let in_flight = IntGauge::new(
            "inference_in_flight_requests",
            "Classification requests accepted and not yet answered.",
        )
        .expect("static metric definition");
        let model_info = IntGaugeVec::new(
            Opts::new(
                "inference_model_info",
                "Loaded models; the value is always 1.",
            ),
            &["model", "backend", "device"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(queue_duration.clone()),
            Box::new(batch_size.clone()),
            Box::new(in_flight.clone()),
            Box::new(model_info.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric name is registered once");
        }
        Self {
            registry,
            requests,
            request_duration,
            queue_duration,
            batch_size,
            in_flight,
            model_info,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("static metric definition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_the_contract_names() {
        let m = Metrics::new();
        m.requests.with_label_values(&["200", FIRST_ATTEMPT]).inc();
        m.request_duration.observe(0.012);
        m.queue_duration.observe(0.001);
        m.batch_size.observe(4.0);
        m.model_info
            .with_label_values(&["resnet50", "flex", "cpu"])
            .set(1);
        let text = m.render();
        for needle in [
            "inference_requests_total{attempt=\"first\",code=\"200\"} 1",
            "inference_request_duration_seconds_bucket{le=\"0.015\"} 1",
            "inference_queue_duration_seconds_count 1",
            "inference_batch_size_sum 4",
            "inference_in_flight_requests 0",
            "inference_model_info{backend=\"flex\",device=\"cpu\",model=\"resnet50\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
