//! Aggregation of request results: one HDR histogram for the run and one per second (keyed by
//! the *intended* send second, so a stall shows up where the requests were due).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Outcome;

/// Latencies above this (1 hour, in µs) are clamped; a run never waits that long.
const MAX_MICROS: u64 = 3_600_000_000;

/// One finished (or dropped) request.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Intended send time from the start of the run.
    pub intended: Duration,
    /// From the intended send time (open loop) or the actual one (closed loop) to the end.
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// Sent more than [`LATE_AFTER`] after its intended time (no free connection).
    pub late: bool,
}

/// A send that starts later than this after its intended time counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct Second {
    sent: u64,
    ok: u64,
    /// 2xx responses that *arrived* in this second (the achieved throughput).
    completed: u64,
    errors: u64,
    latency: Histogram<u64>,
}

/// Everything measured so far.
#[derive(Debug)]
pub struct Stats {
    latency: Histogram<u64>,
    seconds: Vec<Second>,
    /// Keyed by outcome, not by its label: this runs once per request at tens of thousands
    /// per second, and building a label string each time cost ~10 % of peak throughput.
    statuses: BTreeMap<Outcome, u64>,
    late: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// One row of the per-second series.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SecondRow {
    /// Second of the run (by intended send time).
    pub second: u64,
    /// Requests due in this second.
    pub sent: u64,
    /// Of those, 2xx responses.
    pub ok: u64,
    /// Of those, failures (non-2xx, timeouts, connection errors, dropped).
    pub errors: u64,
    /// 2xx responses that arrived during this second: the achieved rate.
    pub completed: u64,
    /// Median latency, ms (successes and failures alike).
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid")
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            latency: histogram(),
            seconds: Vec::new(),
            statuses: BTreeMap::new(),
            late: 0,
        }
    }

    /// Adds one result.
    pub fn record(&mut self, sample: Sample) {
        let micros = (sample.latency.as_micros() as u64).clamp(1, MAX_MICROS);
        self.latency.saturating_record(micros);
        let index = sample.intended.as_secs() as usize;
        let done = (sample.intended + sample.latency).as_secs() as usize;
        while self.seconds.len() <= index.max(done) {
            self.seconds.push(Second {
                sent: 0,
                ok: 0,
                completed: 0,
                errors: 0,
                latency: histogram(),
            });
        }
        if sample.outcome.is_success() {
            self.seconds[done].completed += 1;
        }
        let second = &mut self.seconds[index];
        second.sent += 1;
        second.latency.saturating_record(micros);
        if sample.outcome.is_success() {
            second.ok += 1;
        } else {
            second.errors += 1;
        }
        *self.statuses.entry(sample.outcome).or_default() += 1;
        self.late += u64::from(sample.late);
    }

    /// Requests recorded.
    pub fn total(&self) -> u64 {
        self.latency.len()
    }

    /// 2xx responses.
    pub fn ok(&self) -> u64 {
        self.seconds.iter().map(|s| s.ok).sum()
    }

    /// Everything that was not a 2xx.
    pub fn errors(&self) -> u64 {
        self.total() - self.ok()
    }

    /// Sends that could not start on time.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Requests never sent.
    pub fn dropped(&self) -> u64 {
        self.statuses.get(&Outcome::Dropped).copied().unwrap_or(0)
    }

    /// Count per status code / failure kind.
    pub fn statuses(&self) -> BTreeMap<String, u64> {
        self.statuses.iter().map(|(o, n)| (o.label(), *n)).collect()
    }

    /// Percentiles over the whole run.
    pub fn percentiles(&self) -> Percentiles {
        let h = &self.latency;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    /// The per-second series.
    pub fn series(&self) -> Vec<SecondRow> {
        (0..self.seconds.len()).map(|i| self.row(i)).collect()
    }

    /// The most recent complete-ish second, for the progress line (computed alone: this runs
    /// four times a second during the run).
    pub fn recent(&self, now: Duration) -> Option<SecondRow> {
        let index = now.as_secs().checked_sub(1)? as usize;
        (index < self.seconds.len()).then(|| self.row(index))
    }

    fn row(&self, index: usize) -> SecondRow {
        let s = &self.seconds[index];
        let quantile = |q| {
            if s.latency.is_empty() {
                0.0
            } else {
                ms(s.latency.value_at_quantile(q))
            }
        };
        SecondRow {
            second: index as u64,
            sent: s.sent,
            ok: s.ok,
            errors: s.errors,
            completed: s.completed,
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, latency_ms: u64, outcome: Outcome) -> Sample {
        Sample {
            intended: Duration::from_millis(at_ms),
            latency: Duration::from_millis(latency_ms),
            outcome,
            late: false,
        }
    }

    #[test]
    fn results_are_bucketed_by_intended_second() {
        let mut s = Stats::new();
        for i in 0..100 {
            s.record(sample(i * 10, 10 + i % 10, Outcome::Status(200)));
        }
        s.record(sample(1500, 2000, Outcome::Status(503)));
        s.record(sample(1600, 30_000, Outcome::Timeout));
        assert_eq!((s.total(), s.ok(), s.errors()), (102, 100, 2));
        let series = s.series();
        // The timeout due at 1.6 s ends at 31.6 s, so the series runs to second 31.
        assert_eq!(series.len(), 32);
        assert_eq!(series[31].sent, 0);
        // Responses to requests due just before 1 s arrive after it: achieved counts them there.
        assert_eq!(series[0].completed + series[1].completed, 100);
        assert!(series[1].completed > 0);
        assert_eq!(
            (series[0].sent, series[0].ok, series[0].errors),
            (100, 100, 0)
        );
        assert_eq!((series[1].sent, series[1].ok, series[1].errors), (2, 0, 2));
        assert!(
            (series[0].p50_ms - 14.0).abs() < 0.1,
            "{}",
            series[0].p50_ms
        );
        assert_eq!(s.statuses()["503"], 1);
        assert_eq!(s.statuses()["timeout"], 1);
        let p = s.percentiles();
        assert!(p.p50 >= 14.0 && p.p50 <= 15.1 && p.max >= 29_990.0, "{p:?}");
    }
}
