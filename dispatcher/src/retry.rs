//! The retry budget: retries may be at most a fixed fraction of the requests of the last few
//! seconds, at every request rate.
//!
//! Why not `tower::retry::budget::TpsBudget`, which the proxy used before: it adds a floor of
//! retries per second on top of the fraction (we had 10/s, most of the traffic of a ResNet50
//! pool doing 20 req/s, so under overload nearly every refused request was retried into the
//! same overloaded pool), and its balance cannot be read, while the budget should be visible
//! as a metric (`dispatcher_retry_budget_available`). With no floor, a pool at low traffic
//! gets few retries; that is the point: a retry is a second request, and the budget keeps the
//! extra load bounded when it hurts most.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Slots the window is divided into; the window moves on one slot at a time.
const SLOTS: usize = 10;

/// Requests and retries seen in the recent window.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    slot_length: Duration,
    started: Instant,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Index (since `started`) of the slot `slots[current % SLOTS]` counts.
    current: u64,
    /// (requests, retries) per slot.
    slots: [(u64, u64); SLOTS],
}

impl Window {
    /// Moves the window to slot `now`, clearing the slots it leaves behind.
    fn advance(&mut self, now: u64) {
        if now <= self.current {
            return;
        }
        let stale = (now - self.current).min(SLOTS as u64);
        for step in 1..=stale {
            self.slots[((self.current + step) % SLOTS as u64) as usize] = (0, 0);
        }
        self.current = now;
    }

    fn totals(&self) -> (u64, u64) {
        self.slots
            .iter()
            .fold((0, 0), |(q, r), &(sq, sr)| (q + sq, r + sr))
    }

    fn slot(&mut self) -> &mut (u64, u64) {
        &mut self.slots[(self.current % SLOTS as u64) as usize]
    }
}

impl RetryBudget {
    /// Retries allowed as `percent` % of the requests of the last `window`.
    pub fn new(percent: f64, window: Duration) -> Self {
        Self {
            ratio: (percent / 100.0).max(0.0),
            slot_length: (window / SLOTS as u32).max(Duration::from_millis(1)),
            started: Instant::now(),
            window: Mutex::default(),
        }
    }

    fn window(&self, now: Instant) -> std::sync::MutexGuard<'_, Window> {
        let slot =
            now.saturating_duration_since(self.started).as_nanos() / self.slot_length.as_nanos();
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.advance(u64::try_from(slot).unwrap_or(u64::MAX));
        window
    }

    /// Counts one client request.
    pub fn deposit(&self) {
        self.window(Instant::now()).slot().0 += 1;
    }

    /// Takes one retry from the budget; `false` when the window has no retry left.
    pub fn withdraw(&self) -> bool {
        let mut window = self.window(Instant::now());
        let (requests, retries) = window.totals();
        if (retries + 1) as f64 > self.ratio * requests as f64 {
            return false;
        }
        window.slot().1 += 1;
        true
    }

    /// Retries the window allows now.
    pub fn available(&self) -> u64 {
        let window = self.window(Instant::now());
        let (requests, retries) = window.totals();
        ((self.ratio * requests as f64).floor() as u64).saturating_sub(retries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers `requests` requests of which every one wants a retry; returns retries granted.
    fn all_want_retries(budget: &RetryBudget, requests: u64) -> u64 {
        (0..requests)
            .filter(|_| {
                budget.deposit();
                budget.withdraw()
            })
            .count() as u64
    }

    #[test]
    fn retries_stay_within_the_fraction_at_every_rate() {
        for requests in [1, 2, 4, 5, 9, 10, 20, 99, 1000, 100_000] {
            let budget = RetryBudget::new(20.0, Duration::from_secs(10));
            let granted = all_want_retries(&budget, requests);
            assert!(
                granted * 5 <= requests,
                "{granted} retries for {requests} requests"
            );
            assert_eq!(
                granted,
                requests / 5,
                "the whole fraction is usable ({requests} requests)"
            );
            assert_eq!(budget.available(), 0);
        }
        let none = RetryBudget::new(0.0, Duration::from_secs(10));
        assert_eq!(all_want_retries(&none, 1000), 0);
    }

    #[test]
    fn the_window_forgets_old_requests() {
        let budget = RetryBudget::new(50.0, Duration::from_millis(100));
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(budget.available(), 50);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(budget.available(), 0, "a quiet window earns no retries");
        assert!(!budget.withdraw());
        budget.deposit();
        budget.deposit();
        assert!(budget.withdraw());
    }
}
