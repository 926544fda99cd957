//! Feature-map buffers kept between layers and between forward passes.
//!
//! Every layer writes a fresh map, and a network with many map sizes (MobileNetV3: a dozen)
//! asks the allocator for megabytes per layer. Freed, that memory goes back to mimalloc, which
//! returns it to the system after a short delay; the next pass then pays a page fault and the
//! clearing of a fresh (huge) page for it: 10 % of MobileNetV3-Small's time at batch 1 went
//! to `clear_page_erms` before this pool (docs/PERFORMANCE.md). Here a map's buffer, once no
//! step reads it, goes back to one process-wide pool, and the next output takes the smallest
//! buffer that is large enough. After the first pass every output finds one: no allocation,
//! no page clearing, and no zeroing, since every kernel writes its whole output before
//! reading it.
//!
//! One pool for the process, not one per thread: a pass runs on whichever worker thread the
//! pool hands it, and per-thread pools would each have to warm up (and hold) their own set.

use std::sync::Mutex;

/// Buffers kept in the pool: a pass needs a handful at a time (a block's input, its
/// shortcut, the output being written, the maps a concatenation joins); more in the pool
/// cover the different sizes of a network's stages without growing one.
const KEPT: usize = 16;

/// A bounded set of spare buffers whose values are stale.
#[derive(Debug, Default)]
pub struct Pool {
    spares: Mutex<Vec<Vec<f32>>>,
}

/// The pool the engine's kernels take their outputs from.
pub static POOL: Pool = Pool::new();

impl Pool {
    pub const fn new() -> Self {
        Self {
            spares: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of `len` values for an output that is written in full before it is read: the
    /// smallest spare one that holds `len` (its values are stale), else a new one. A spare too
    /// small is not grown: growing copies its stale values to new memory for nothing.
    pub fn take(&self, len: usize) -> Vec<f32> {
        let reused = self.with_spares(|spares| {
            let best = (spares.iter().enumerate())
                .filter(|(_, s)| s.capacity() >= len)
                .min_by_key(|(_, s)| s.capacity())
                .map(|(at, _)| at)?;
            Some(spares.swap_remove(best))
        });
        let mut data = reused.unwrap_or_default();
        data.resize(len, 0.0);
        data
    }

    /// Keeps `data` for a later [`take`](Self::take), dropping the smallest spare when the
    /// pool is full (small buffers are the cheap ones to allocate again).
    pub fn give(&self, data: Vec<f32>) {
        if data.capacity() == 0 {
            return;
        }
        self.with_spares(|spares| {
            spares.push(data);
            if spares.len() > KEPT {
                let smallest = (spares.iter().enumerate())
                    .min_by_key(|(_, s)| s.capacity())
                    .map(|(at, _)| at);
                if let Some(at) = smallest {
                    spares.swap_remove(at);
                }
            }
        });
    }

    fn with_spares<T>(&self, f: impl FnOnce(&mut Vec<Vec<f32>>) -> T) -> T {
        // A panic while the lock was held cannot leave a buffer half-moved: keep going.
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut spares)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.with_spares(|s| s.len())
    }
}

/// A buffer from the engine's pool (see [`Pool::take`]).
pub fn spare(len: usize) -> Vec<f32> {
    POOL.take(len)
}

/// Gives a buffer no step reads any more back to the engine's pool.
pub fn recycle(data: Vec<f32>) {
    POOL.give(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_buffer_that_fits_is_handed_out_with_the_length_asked() {
        let pool = Pool::new();
        let (small, large) = (vec![1.0; 100], vec![2.0; 1000]);
        let (small_at, large_at) = (small.as_ptr(), large.as_ptr());
        pool.give(large);
        pool.give(small);
        let fitting = pool.take(80);
        assert_eq!((fitting.len(), fitting.as_ptr()), (80, small_at));
        assert_eq!(fitting, vec![1.0; 80], "values are stale, not cleared");
        let too_large = pool.take(1500);
        assert_eq!(
            too_large,
            vec![0.0; 1500],
            "none fits: a new, zeroed buffer"
        );
        assert_eq!(pool.len(), 1, "the one too small stays in the pool");
        let last = pool.take(1000);
        assert_eq!(last.as_ptr(), large_at);
        assert_eq!(pool.take(10), vec![0.0; 10], "none left: a new buffer");
    }

    #[test]
    fn the_pool_stays_bounded_and_keeps_the_largest() {
        let pool = Pool::new();
        for len in 1..=KEPT + 5 {
            pool.give(Vec::with_capacity(len * 10));
        }
        assert_eq!(pool.len(), KEPT);
        let smallest_kept = pool.with_spares(|s| s.iter().map(Vec::capacity).min());
        assert_eq!(smallest_kept, Some(60), "the five smallest were dropped");
        pool.give(Vec::new());
        assert_eq!(pool.len(), KEPT, "an empty buffer is not worth keeping");
    }
}
