//! Admission control: at most `max_in_flight` requests are forwarded at once; up to
//! `queue_capacity` more wait (at most `queue_timeout`) for a slot, which absorbs bursts while
//! the HPA adds pods. Beyond that a request is refused at once with 503 + `Retry-After`
//! instead of piling up in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ProxyError;

/// The in-flight cap and its wait queue.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue_capacity: usize,
    queue_timeout: Duration,
}

/// Why admission refused a request (the `reason` label of `dispatcher_rejected_total`).
pub const QUEUE_FULL: &str = "queue_full";
/// See [`QUEUE_FULL`].
pub const QUEUE_TIMEOUT: &str = "queue_timeout";

impl Admission {
    /// `max_in_flight` slots, `queue_capacity` waiters, each waiting at most `queue_timeout`.
    pub fn new(max_in_flight: usize, queue_capacity: usize, queue_timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            waiting: AtomicUsize::new(0),
            queue_capacity,
            queue_timeout,
        }
    }

    /// Waits for a forwarding slot, or says why there is none.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ProxyError::Overloaded(QUEUE_FULL));
        }
        let waited =
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(ProxyError::Overloaded(QUEUE_TIMEOUT)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_is_bounded_and_waits_are_limited() {
        let admission = Arc::new(Admission::new(1, 1, Duration::from_millis(100)));
        let held = admission.admit().await.expect("first slot");
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit().await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let refused = admission.admit().await.expect_err("queue of one is full");
        assert!(matches!(refused, ProxyError::Overloaded(QUEUE_FULL)));
        let timed_out = waiter.await.expect("task").expect_err("slot never freed");
        assert!(matches!(timed_out, ProxyError::Overloaded(QUEUE_TIMEOUT)));
        drop(held);
        assert!(admission.admit().await.is_ok(), "slot freed");
    }
}
