//! Choosing an upstream. Each upstream keeps its outstanding request count, a peak-EWMA latency
//! estimate (linkerd's load metric: it jumps up to any slower observation at once and decays
//! back slowly, so a backend that stalls is avoided immediately) and its failure state for
//! passive ejection (Envoy's outlier detection: N consecutive failures eject it for a backoff
//! that doubles on each repeat).
//!
//! We implement the choice ourselves rather than through `tower::balance`, because the
//! balancer must also skip ejected upstreams, exclude the upstream a retry comes from, and
//! expose per-upstream state to metrics; all three cut across tower's `Discover` abstraction.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderValue;
use http::uri::Authority;
use rand::Rng;

use crate::config::{BalanceConfig, Policy};
use crate::connections::Connections;

/// Longest ejection, however often an upstream fails.
const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Longest time an upstream is taken to refuse work after a 503, whatever its `Retry-After`.
const MAX_REFUSING: Duration = Duration::from_secs(10);

/// One upstream and what we know about it.
#[derive(Debug)]
pub struct Upstream {
    /// `host:port`.
    pub address: String,
    /// The address as a header value (`Host` towards it, `X-Upstream` towards the client),
    /// built once; `None` when it is not a valid URI authority (`host:port`), and requests to
    /// it then fail with a clear error.
    pub header: Option<HeaderValue>,
    /// Its idle keep-alive connections.
    pub connections: Arc<Connections>,
    outstanding: AtomicUsize,
    /// End of the current ejection, in nanoseconds since [`EPOCH`] (0: not ejected). Atomic so
    /// picking an upstream reads it without taking the health lock.
    ejected_until: AtomicU64,
    /// End of the time it is taken to be refusing work after a 503 (same clock).
    rejecting_until: AtomicU64,
    health: Mutex<Health>,
}

/// Reference point for [`Upstream::ejected_until`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Health {
    /// Peak-EWMA latency, seconds.
    ewma: f64,
    updated: Instant,
    consecutive_failures: u32,
    ejections: u32,
}

/// What happened to one forwarded request, for the balancer's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (any status below 500).
    Success,
    /// Connection error, timeout or 5xx: counts towards ejection.
    Failure,
    /// 503, the upstream's back-pressure: it refuses work for about this long (its
    /// `Retry-After`). Neither a failure (an overloaded fleet would eject itself) nor a latency
    /// sample (a fast refusal would make the busiest upstream look the fastest).
    Rejected(Duration),
}

/// Marks a request as outstanding on an upstream until dropped.
#[derive(Debug)]
pub struct InFlight {
    upstream: Arc<Upstream>,
    started: Instant,
}

impl InFlight {
    /// The upstream this request went to.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }
}

impl InFlight {
    /// Counts a request as outstanding on `upstream` from `now` (until dropped).
    fn start(upstream: &Arc<Upstream>, now: Instant) -> Self {
        upstream.outstanding.fetch_add(1, Ordering::Relaxed);
        Self {
            upstream: upstream.clone(),
            started: now,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    fn new(address: String, default_rtt: Duration) -> Self {
        Self {
            header: address
                .parse::<Authority>()
                .ok()
                .and_then(|_| HeaderValue::from_str(&address).ok()),
            connections: Arc::default(),
            address,
            outstanding: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            rejecting_until: AtomicU64::new(0),
            health: Mutex::new(Health {
                ewma: default_rtt.as_secs_f64(),
                updated: Instant::now(),
                consecutive_failures: 0,
                ejections: 0,
            }),
        }
    }

    /// Requests sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A panic while holding this lock cannot leave the numbers inconsistent in a way
        // that matters more than losing the balancer, so poisoning is ignored.
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > nanos_since_epoch(now)
    }

    fn is_rejecting(&self, now: Instant) -> bool {
        self.rejecting_until.load(Ordering::Relaxed) > nanos_since_epoch(now)
    }

    /// Peak-EWMA latency (seconds) decayed to `now`, times the requests it would queue behind.
    fn cost(&self, now: Instant, decay: Duration) -> f64 {
        let health = self.health();
        let elapsed = now.saturating_duration_since(health.updated).as_secs_f64();
        // With no new observations the estimate decays towards zero, so an upstream that was
        // slow a while ago gets probed again.
        let ewma = health.ewma * (-elapsed / decay.as_secs_f64()).exp();
        ewma * (self.outstanding() as f64 + 1.0)
    }
}

/// The set of upstreams and the policy that picks among them.
#[derive(Debug)]
pub struct Balancer {
    config: BalanceConfig,
    upstreams: ArcSwap<Vec<Arc<Upstream>>>,
    next: AtomicUsize,
    ejections_total: AtomicU32,
}

impl Balancer {
    /// An empty balancer; [`Balancer::set_upstreams`] fills it.
    pub fn new(config: BalanceConfig) -> Self {
        Self {
            config,
            upstreams: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            ejections_total: AtomicU32::new(0),
        }
    }

    /// Replaces the upstream set. Upstreams that stay keep their latency and failure state;
    /// removed ones receive no new requests (their in-flight requests finish normally).
    pub fn set_upstreams(&self, addresses: &BTreeSet<String>) {
        let current = self.snapshot();
        let next: Vec<Arc<Upstream>> = addresses
            .iter()
            .map(|address| {
                current
                    .iter()
                    .find(|u| &u.address == address)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Upstream::new(address.clone(), self.config.default_rtt))
                    })
            })
            .collect();
        self.upstreams.store(Arc::new(next));
    }

    /// The current upstreams.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.upstreams.load_full()
    }

    /// (ready, ejected) counts.
    pub fn counts(&self) -> (usize, usize) {
        let now = Instant::now();
        let all = self.snapshot();
        let ejected = all.iter().filter(|u| u.is_ejected(now)).count();
        (all.len() - ejected, ejected)
    }

    /// Chooses an upstream, never `exclude` when another exists. Ejected upstreams are skipped
    /// unless every candidate is ejected (then all are used: some capacity beats none).
    pub fn pick(&self, exclude: Option<&str>) -> Option<InFlight> {
        let now = Instant::now();
        let all = self.upstreams.load();
        let chosen = match self.choose_fast(&all, exclude, now) {
            Some(chosen) => chosen,
            None => {
                let not_excluded: Vec<&Arc<Upstream>> = all
                    .iter()
                    .filter(|u| Some(u.address.as_str()) != exclude)
                    .collect();
                let pool = if not_excluded.is_empty() {
                    all.iter().collect()
                } else {
                    not_excluded
                };
                let healthy: Vec<&Arc<Upstream>> = pool
                    .iter()
                    .copied()
                    .filter(|u| !u.is_ejected(now))
                    .collect();
                let candidates = if healthy.is_empty() { pool } else { healthy };
                self.choose(&candidates, now)?
            }
        };
        Some(InFlight::start(chosen, now))
    }

    /// An upstream for a request another upstream refused with 503: never `exclude`, and only
    /// one that is neither ejected nor refusing work itself. `None` when there is none: the
    /// retry would only add load to a pool that is overloaded.
    pub fn pick_accepting(&self, exclude: &str) -> Option<InFlight> {
        let now = Instant::now();
        let all = self.upstreams.load();
        let accepting: Vec<&Arc<Upstream>> = all
            .iter()
            .filter(|u| u.address != exclude && !u.is_ejected(now) && !u.is_rejecting(now))
            .collect();
        let chosen = self.choose(&accepting, now)?;
        Some(InFlight::start(chosen, now))
    }

    /// The common case without building candidate lists: one upstream, or P2C / round robin
    /// landing on usable (not excluded, not ejected) upstreams. `None` sends the caller to the
    /// general path.
    fn choose_fast<'a>(
        &self,
        all: &'a [Arc<Upstream>],
        exclude: Option<&str>,
        now: Instant,
    ) -> Option<&'a Arc<Upstream>> {
        let usable = |u: &Arc<Upstream>| Some(u.address.as_str()) != exclude && !u.is_ejected(now);
        match (all, self.config.policy) {
            ([], _) => None,
            ([only], _) => usable(only).then_some(only),
            (_, Policy::P2cEwma) => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..all.len());
                let mut b = rng.random_range(0..all.len() - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (&all[a], &all[b]);
                (usable(a) && usable(b)).then(|| self.cheaper(a, b, now))
            }
            (_, Policy::RoundRobin) => {
                let next = &all[self.next.fetch_add(1, Ordering::Relaxed) % all.len()];
                usable(next).then_some(next)
            }
            (_, Policy::LeastOutstanding) => None,
        }
    }

    fn cheaper<'a>(
        &self,
        a: &'a Arc<Upstream>,
        b: &'a Arc<Upstream>,
        now: Instant,
    ) -> &'a Arc<Upstream> {
        let decay = self.config.decay;
        if a.cost(now, decay) <= b.cost(now, decay) {
            a
        } else {
            b
        }
    }

    fn choose<'a>(
        &self,
        candidates: &[&'a Arc<Upstream>],
        now: Instant,
    ) -> Option<&'a Arc<Upstream>> {
        match candidates.len() {
            0 => return None,
            1 => return Some(candidates[0]),
            _ => {}
        }
        match self.config.policy {
            Policy::RoundRobin => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
                Some(candidates[i])
            }
            Policy::LeastOutstanding => {
                // Random start so ties do not always go to the first upstream.
                let start = rand::rng().random_range(0..candidates.len());
                (0..candidates.len())
                    .map(|i| candidates[(start + i) % candidates.len()])
                    .min_by_key(|u| u.outstanding())
            }
            Policy::P2cEwma => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..candidates.len());
                let mut b = rng.random_range(0..candidates.len() - 1);
                if b >= a {
                    b += 1;
                }
                Some(self.cheaper(candidates[a], candidates[b], now))
            }
        }
    }

    /// Records how a request ended: updates the latency estimate and the ejection state.
    /// Returns true when this failure ejected the upstream.
    pub fn record(&self, request: &InFlight, outcome: Outcome) -> bool {
        let now = Instant::now();
        match outcome {
            Outcome::Rejected(refusing) => {
                request.upstream.rejecting_until.store(
                    nanos_since_epoch(now + refusing.min(MAX_REFUSING)),
                    Ordering::Relaxed,
                );
                false
            }
            Outcome::Success => {
                let mut health = self.observe(request, now);
                health.consecutive_failures = 0;
                health.ejections = 0;
                false
            }
            Outcome::Failure => {
                let mut health = self.observe(request, now);
                health.consecutive_failures += 1;
                if health.consecutive_failures < self.config.eject_after {
                    return false;
                }
                let backoff = self
                    .config
                    .eject_base
                    .saturating_mul(1 << health.ejections.min(16));
                request.upstream.ejected_until.store(
                    nanos_since_epoch(now + backoff.min(MAX_EJECTION)).max(1),
                    Ordering::Relaxed,
                );
                health.ejections += 1;
                health.consecutive_failures = 0;
                self.ejections_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(upstream = %request.upstream.address, ?backoff, "upstream ejected after consecutive failures");
                true
            }
        }
    }

    /// Folds the request's latency into its upstream's peak-EWMA; returns the health, locked.
    fn observe<'a>(
        &self,
        request: &'a InFlight,
        now: Instant,
    ) -> std::sync::MutexGuard<'a, Health> {
        let rtt = now.duration_since(request.started).as_secs_f64();
        let mut health = request.upstream.health();
        let elapsed = now.saturating_duration_since(health.updated).as_secs_f64();
        let decayed = health.ewma * (-elapsed / self.config.decay.as_secs_f64()).exp();
        // Peak: a slower observation replaces the estimate at once; faster ones blend in.
        health.ewma = if rtt > decayed {
            rtt
        } else {
            let w = (-elapsed / self.config.decay.as_secs_f64()).exp();
            decayed * w + rtt * (1.0 - w)
        };
        health.updated = now;
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(policy: Policy) -> BalanceConfig {
        BalanceConfig {
            policy,
            eject_after: 3,
            eject_base: Duration::from_millis(200),
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }

    fn balancer(policy: Policy, n: usize) -> Balancer {
        let b = Balancer::new(config(policy));
        b.set_upstreams(&(0..n).map(|i| format!("10.0.0.{i}:8080")).collect());
        b
    }

    #[test]
    fn round_robin_visits_every_upstream_in_turn() {
        let b = balancer(Policy::RoundRobin, 3);
        let picks: Vec<String> = (0..6)
            .map(|_| b.pick(None).expect("upstream").upstream().address.clone())
            .collect();
        assert_eq!(picks[..3], picks[3..]);
        assert_eq!(picks[..3].iter().collect::<BTreeSet<_>>().len(), 3);
    }

    #[test]
    fn least_outstanding_avoids_busy_upstreams() {
        let b = balancer(Policy::LeastOutstanding, 3);
        let held: Vec<InFlight> = (0..2).map(|_| b.pick(None).expect("upstream")).collect();
        let busy: BTreeSet<_> = held.iter().map(|h| h.upstream().address.clone()).collect();
        assert_eq!(
            busy.len(),
            2,
            "two picks go to two different idle upstreams"
        );
        let third = b.pick(None).expect("upstream");
        assert!(!busy.contains(&third.upstream().address));
    }

    #[test]
    fn p2c_ewma_prefers_the_fast_upstream() {
        let b = balancer(Policy::P2cEwma, 2);
        // Teach the balancer that upstream 0 is slow: one 1 s observation (peak).
        let slow = loop {
            let r = b.pick(None).expect("upstream");
            if r.upstream().address.ends_with(".0:8080") {
                break r;
            }
        };
        b.upstream_health_for_test(&slow, Duration::from_secs(1));
        drop(slow);
        let to_fast = (0..200)
            .filter(|_| {
                b.pick(None)
                    .expect("upstream")
                    .upstream()
                    .address
                    .ends_with(".1:8080")
            })
            .count();
        assert_eq!(to_fast, 200, "with two upstreams, p2c always compares both");
    }

    #[test]
    fn consecutive_failures_eject_and_backoff_readmits() {
        let b = balancer(Policy::RoundRobin, 2);
        let bad = "10.0.0.0:8080";
        let mut ejected = false;
        while !ejected {
            let r = b.pick(None).expect("upstream");
            if r.upstream().address == bad {
                ejected = b.record(&r, Outcome::Failure);
            }
        }
        assert_eq!(b.counts(), (1, 1));
        for _ in 0..10 {
            assert_ne!(b.pick(None).expect("upstream").upstream().address, bad);
        }
        // Excluding the only healthy one falls back to the ejected one rather than nothing.
        assert_eq!(
            b.pick(Some("10.0.0.1:8080"))
                .expect("upstream")
                .upstream()
                .address,
            bad
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(b.counts(), (2, 0), "re-admitted after the backoff");
    }

    #[test]
    fn upstream_state_survives_updates_and_removal_stops_new_picks() {
        let b = balancer(Policy::RoundRobin, 2);
        let held = b.pick(None).expect("upstream");
        let kept = held.upstream().address.clone();
        b.set_upstreams(
            &[kept.clone(), "10.0.0.9:8080".to_string()]
                .into_iter()
                .collect(),
        );
        let same = b
            .snapshot()
            .iter()
            .find(|u| u.address == kept)
            .cloned()
            .expect("kept");
        assert_eq!(same.outstanding(), 1, "state carried over");
        b.set_upstreams(&BTreeSet::new());
        assert!(b.pick(None).is_none());
        drop(held);
        assert_eq!(same.outstanding(), 0);
    }

    impl Balancer {
        fn upstream_health_for_test(&self, request: &InFlight, rtt: Duration) {
            let mut h = request.upstream.health();
            h.ewma = rtt.as_secs_f64();
            h.updated = Instant::now();
        }
    }
}
