//! The end-of-run report: a table on stdout, JSON, CSV.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::stats::{Percentiles, SecondRow, Stats};

/// What a run measured; serialised as `--out`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `open-loop` or `closed-loop`.
    pub mode: String,
    /// Whether latencies are measured from the intended send time.
    pub coordinated_omission_free: bool,
    /// Target URL.
    pub target: String,
    /// Wall time of the run, seconds.
    pub duration_s: f64,
    /// Requests recorded (including dropped ones).
    pub requests: u64,
    /// 2xx responses.
    pub ok: u64,
    /// Everything else.
    pub errors: u64,
    /// Sends that started late (no free connection).
    pub late: u64,
    /// Sends that never happened.
    pub dropped: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// 2xx responses per second of wall time.
    pub throughput: f64,
    /// Counts by status code or failure kind.
    pub statuses: BTreeMap<String, u64>,
    /// Latency, milliseconds.
    pub latency_ms: Percentiles,
    /// Per-second series.
    pub series: Vec<Row>,
}

/// One second of the series, with the offered rate and replica count when known.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    /// Measured values.
    #[serde(flatten)]
    pub measured: SecondRow,
    /// Target rate (open loop) in this second.
    pub offered: Option<f64>,
    /// Ready replicas of the watched Deployment.
    pub replicas: Option<u32>,
}

impl Report {
    /// Assembles the report from the statistics and the side series.
    pub fn new(
        stats: &Stats,
        mode: &str,
        co_free: bool,
        target: String,
        duration_s: f64,
        offered: impl Fn(u64) -> Option<f64>,
        replicas: impl Fn(u64) -> Option<u32>,
    ) -> Self {
        let requests = stats.total();
        let errors = stats.errors();
        Self {
            mode: mode.to_string(),
            coordinated_omission_free: co_free,
            target,
            duration_s,
            requests,
            ok: stats.ok(),
            errors,
            late: stats.late(),
            dropped: stats.dropped(),
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            throughput: if duration_s > 0.0 {
                stats.ok() as f64 / duration_s
            } else {
                0.0
            },
            statuses: stats.statuses(),
            latency_ms: stats.percentiles(),
            series: stats
                .series()
                .into_iter()
                .map(|measured| Row {
                    offered: offered(measured.second),
                    replicas: replicas(measured.second),
                    measured,
                })
                .collect(),
        }
    }

    /// The human summary.
    pub fn print(&self) {
        println!();
        println!("{} against {}", self.mode, self.target);
        if !self.coordinated_omission_free {
            println!(
                "  (closed loop: each worker waits for its previous response, so latencies do not include queueing a real client would see)"
            );
        }
        println!("  duration     {:>10.1} s", self.duration_s);
        println!(
            "  requests     {:>10}   ok {}   errors {}   late {}   dropped {}",
            self.requests, self.ok, self.errors, self.late, self.dropped
        );
        println!(
            "  throughput   {:>10.1} ok/s   error rate {:.2} %",
            self.throughput,
            self.error_rate * 100.0
        );
        let l = &self.latency_ms;
        println!(
            "  latency ms   p50 {:.1}   p90 {:.1}   p99 {:.1}   p99.9 {:.1}   max {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("  by status    {}", statuses.join(", "));
    }

    /// Writes the whole report as JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Writes the series as CSV.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let mut w = csv::Writer::from_path(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        w.write_record([
            "second", "offered", "sent", "ok", "errors", "achieved", "p50_ms", "p99_ms", "replicas",
        ])?;
        for r in &self.series {
            let opt = |v: Option<String>| v.unwrap_or_default();
            w.write_record([
                r.measured.second.to_string(),
                opt(r.offered.map(|o| format!("{o:.3}"))),
                r.measured.sent.to_string(),
                r.measured.ok.to_string(),
                r.measured.errors.to_string(),
                r.measured.completed.to_string(),
                format!("{:.3}", r.measured.p50_ms),
                format!("{:.3}", r.measured.p99_ms),
                opt(r.replicas.map(|n| n.to_string())),
            ])?;
        }
        w.flush()?;
        Ok(())
    }
}
