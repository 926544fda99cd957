//! When each request should be sent: a piecewise-linear target rate (constant, k6-style
//! stages, steps, spikes) and an arrival process (evenly spaced or Poisson). Pure, so the send
//! times are table-tested.
//!
//! The k-th send (k = 0, 1, …) happens when the expected request count `N(t) = ∫ rate` reaches
//! `k` (uniform arrivals) or reaches the k-th point of a unit-rate Poisson process (Poisson
//! arrivals: time-rescaling turns it into a Poisson process with the varying rate).

use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// A stretch of the run whose rate changes linearly from `from` to `to` requests/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    /// Length of the stretch.
    pub duration: Duration,
    /// Rate at its start.
    pub from: f64,
    /// Rate at its end.
    pub to: f64,
}

impl Segment {
    fn seconds(&self) -> f64 {
        self.duration.as_secs_f64()
    }

    /// Expected requests in the whole segment.
    fn count(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.seconds()
    }

    /// Time into the segment at which `m` requests are expected (`0 ≤ m ≤ count`).
    fn time_of(&self, m: f64) -> f64 {
        let (a, d) = (self.from, self.seconds());
        let slope = (self.to - self.from) / d;
        if slope.abs() < 1e-12 {
            return m / a;
        }
        // slope/2 τ² + a τ − m = 0
        let disc = (a * a + 2.0 * slope * m).max(0.0);
        ((disc.sqrt() - a) / slope).clamp(0.0, d)
    }
}

/// The whole rate profile of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Consecutive segments.
    pub segments: Vec<Segment>,
}

impl Profile {
    /// A constant rate for a duration.
    pub fn constant(rate: f64, duration: Duration) -> Self {
        Self {
            segments: vec![Segment {
                duration,
                from: rate,
                to: rate,
            }],
        }
    }

    /// k6-style stages: each ramps linearly from the previous target (0 at first) to its own.
    pub fn stages(stages: &[(Duration, f64)]) -> Self {
        let mut from = 0.0;
        let segments = stages
            .iter()
            .map(|&(duration, to)| {
                let s = Segment { duration, from, to };
                from = to;
                s
            })
            .collect();
        Self { segments }
    }

    /// Total length.
    pub fn duration(&self) -> Duration {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// Target rate at `t` (requests/s); 0 after the end.
    pub fn rate_at(&self, t: Duration) -> f64 {
        let mut start = Duration::ZERO;
        for s in &self.segments {
            if t < start + s.duration {
                let x = (t - start).as_secs_f64() / s.seconds();
                return s.from + (s.to - s.from) * x;
            }
            start += s.duration;
        }
        0.0
    }

    /// Expected number of requests over the whole run.
    pub fn expected_requests(&self) -> f64 {
        self.segments.iter().map(Segment::count).sum()
    }

    /// Send times from the start of the run.
    pub fn send_times(&self, arrivals: Arrivals) -> SendTimes<'_> {
        let rng = match arrivals {
            Arrivals::Uniform => None,
            Arrivals::Poisson { seed } => Some(StdRng::seed_from_u64(seed)),
        };
        let mut times = SendTimes {
            profile: self,
            rng,
            target: 0.0,
            segment: 0,
            segment_start: 0.0,
            counted: 0.0,
        };
        if times.rng.is_some() {
            times.target = times.exponential();
        }
        times
    }
}

/// How sends are spread around the target rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrivals {
    /// Evenly spaced (a metronome at the current rate).
    Uniform,
    /// Independent arrivals (exponential gaps), like real users; MLPerf's server scenario.
    Poisson {
        /// Seed, so a run can be repeated exactly.
        seed: u64,
    },
}

/// Iterator over send times (see [`Profile::send_times`]).
#[derive(Debug)]
pub struct SendTimes<'a> {
    profile: &'a Profile,
    rng: Option<StdRng>,
    /// Expected count at which the next send happens.
    target: f64,
    segment: usize,
    /// Start of the current segment, seconds.
    segment_start: f64,
    /// Expected count before the current segment.
    counted: f64,
}

impl SendTimes<'_> {
    fn exponential(&mut self) -> f64 {
        let rng = self.rng.as_mut().expect("only called for Poisson arrivals");
        // 1 - U is in (0, 1], so the logarithm is finite.
        -(1.0 - rng.random::<f64>()).ln()
    }
}

impl Iterator for SendTimes<'_> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        loop {
            let segment = self.profile.segments.get(self.segment)?;
            let in_segment = self.target - self.counted;
            if in_segment < segment.count() {
                let t = self.segment_start + segment.time_of(in_segment);
                self.target += match self.rng {
                    Some(_) => self.exponential(),
                    None => 1.0,
                };
                return Some(Duration::from_secs_f64(t));
            }
            self.counted += segment.count();
            self.segment_start += segment.seconds();
            self.segment += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(times: impl Iterator<Item = Duration>) -> Vec<f64> {
        times
            .map(|t| (t.as_secs_f64() * 1e6).round() / 1e6)
            .collect()
    }

    #[test]
    fn constant_rate_is_a_metronome() {
        let p = Profile::constant(10.0, Duration::from_secs(1));
        assert_eq!(
            secs(p.send_times(Arrivals::Uniform)),
            vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
        );
    }

    #[test]
    fn linear_ramp_follows_the_integral_of_the_rate() {
        // 0 → 10/s over 2 s: N(t) = 2.5 t², 10 requests, the k-th at sqrt(k / 2.5).
        let p = Profile::stages(&[(Duration::from_secs(2), 10.0)]);
        let times = secs(p.send_times(Arrivals::Uniform));
        let expected: Vec<f64> = (0..10)
            .map(|k| ((k as f64 / 2.5).sqrt() * 1e6).round() / 1e6)
            .collect();
        assert_eq!(times, expected);
    }

    #[test]
    fn stages_ramp_hold_and_ramp_down() {
        let p = Profile::stages(&[
            (Duration::from_secs(10), 4.0),
            (Duration::from_secs(10), 4.0),
            (Duration::from_secs(10), 0.0),
        ]);
        assert_eq!(p.expected_requests(), 20.0 + 40.0 + 20.0);
        assert_eq!(p.send_times(Arrivals::Uniform).count(), 80);
        assert_eq!(p.rate_at(Duration::from_secs(5)), 2.0);
        assert_eq!(p.rate_at(Duration::from_secs(15)), 4.0);
        assert_eq!(p.rate_at(Duration::from_secs(25)), 2.0);
        assert_eq!(p.rate_at(Duration::from_secs(31)), 0.0);
        // Within the hold, sends are 0.25 s apart.
        let hold: Vec<f64> = secs(p.send_times(Arrivals::Uniform))
            .into_iter()
            .filter(|t| (10.0..20.0).contains(t))
            .collect();
        assert_eq!(hold.len(), 40);
        assert!(hold.windows(2).all(|w| ((w[1] - w[0]) - 0.25).abs() < 1e-6));
    }

    #[test]
    fn zero_rate_segments_send_nothing_and_jumps_are_instant() {
        let p = Profile {
            segments: vec![
                Segment {
                    duration: Duration::from_secs(1),
                    from: 0.0,
                    to: 0.0,
                },
                Segment {
                    duration: Duration::from_secs(1),
                    from: 5.0,
                    to: 5.0,
                },
            ],
        };
        assert_eq!(
            secs(p.send_times(Arrivals::Uniform)),
            vec![1.0, 1.2, 1.4, 1.6, 1.8]
        );
    }

    #[test]
    fn poisson_arrivals_have_the_right_mean_and_exponential_gaps() {
        let p = Profile::constant(50.0, Duration::from_secs(200));
        let times: Vec<f64> = p
            .send_times(Arrivals::Poisson { seed: 7 })
            .map(|t| t.as_secs_f64())
            .collect();
        let n = times.len() as f64;
        // 10 000 expected; a Poisson count has sd 100, so ±400 is 4 sd.
        assert!((n - 10_000.0).abs() < 400.0, "{n}");
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!((mean - 0.02).abs() < 0.001, "mean gap {mean}");
        assert!(
            (sd / mean - 1.0).abs() < 0.05,
            "exponential gaps have cv 1, got {}",
            sd / mean
        );
        // Same seed, same run.
        let again: Vec<f64> = p
            .send_times(Arrivals::Poisson { seed: 7 })
            .take(5)
            .map(|t| t.as_secs_f64())
            .collect();
        assert_eq!(again, times[..5]);
    }
}
