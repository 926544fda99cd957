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

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers kept in the pool: a pass needs a handful at a time (a block's input, its
/// shortcut, the output being written, the maps a concatenation joins); more in the pool
/// cover the different sizes of a network's stages.
const KEPT: usize = 16;

/// A feature map's values: the first `len` of an allocation that keeps the longest length it
/// has had. A buffer handed out for a smaller map and then for a larger one again needs no
/// zeros written over the difference (safe Rust cannot lengthen a `Vec` over stale values):
/// with plain `Vec`s that zeroing was 70 MB per pass of MobileNetV2 at batch 8, 13 % of it.
#[derive(Debug, Default)]
pub struct Buffer {
    values: Vec<f32>,
    len: usize,
}

impl Buffer {
    /// The values as a `Vec` of exactly the map's length.
    pub fn into_vec(mut self) -> Vec<f32> {
        self.values.truncate(self.len);
        self.values
    }
}

impl From<Vec<f32>> for Buffer {
    fn from(values: Vec<f32>) -> Self {
        let len = values.len();
        Self { values, len }
    }
}

impl Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.values[..self.len]
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values[..self.len]
    }
}

/// A copy in a buffer from the pool: a map still read by another step is copied before a
/// kernel writes over it (a shortcut, an activation or batch norm in place), and a fresh
/// allocation per pass cost a page fault and a cleared page per 2 MiB (in MobileNetV3-Large
/// at batch 8, a quarter of the samples of a `perf` profile were `clear_page_erms` under such
/// copies before).
impl Clone for Buffer {
    fn clone(&self) -> Self {
        self.copy_from(&POOL)
    }
}

impl Buffer {
    /// A copy of these values in a buffer taken from `pool`.
    fn copy_from(&self, pool: &Pool) -> Self {
        let mut copy = pool.take(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl PartialEq for Buffer {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// A bounded set of spare allocations whose values are stale.
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
    /// shortest spare one that holds `len` (its values are stale), else a new, zeroed one.
    pub fn take(&self, len: usize) -> Buffer {
        let reused = self.with_spares(|spares| {
            let best = (spares.iter().enumerate())
                .filter(|(_, s)| s.len() >= len)
                .min_by_key(|(_, s)| s.len())
                .map(|(at, _)| at)?;
            Some(spares.swap_remove(best))
        });
        Buffer {
            values: reused.unwrap_or_else(|| vec![0.0; len]),
            len,
        }
    }

    /// Keeps `buffer`'s allocation for a later [`take`](Self::take), dropping the shortest
    /// spare when the pool is full (short ones are the cheap ones to allocate again).
    pub fn give(&self, buffer: Buffer) {
        if buffer.values.is_empty() {
            return;
        }
        self.with_spares(|spares| {
            spares.push(buffer.values);
            if spares.len() > KEPT {
                let shortest = (spares.iter().enumerate())
                    .min_by_key(|(_, s)| s.len())
                    .map(|(at, _)| at);
                if let Some(at) = shortest {
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
pub fn spare(len: usize) -> Buffer {
    POOL.take(len)
}

/// Gives a buffer no step reads any more back to the engine's pool.
pub fn recycle(buffer: impl Into<Buffer>) {
    POOL.give(buffer.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_buffer_that_fits_is_handed_out_without_writing_to_it() {
        let pool = Pool::new();
        let (short, long) = (vec![1.0; 100], vec![2.0; 1000]);
        let (short_at, long_at) = (short.as_ptr(), long.as_ptr());
        pool.give(long.into());
        pool.give(short.into());
        let fitting = pool.take(80);
        assert_eq!((fitting.len(), fitting.as_ptr()), (80, short_at));
        assert_eq!(*fitting, [1.0; 80], "values are stale, not cleared");
        let too_long = pool.take(1500);
        assert_eq!(*too_long, [0.0; 1500], "none fits: a new, zeroed buffer");
        assert_eq!(pool.len(), 1, "the one too short stays in the pool");
        let long = pool.take(10);
        assert_eq!((long.len(), long.as_ptr()), (10, long_at));
        pool.give(long);
        let again = pool.take(1000);
        assert_eq!(
            *again, [2.0; 1000],
            "its full length is back, nothing written"
        );
        assert_eq!(again.into_vec().len(), 1000);
        assert_eq!(*pool.take(10), [0.0; 10], "none left: a new buffer");
    }

    #[test]
    fn the_pool_stays_bounded_and_keeps_the_longest() {
        let pool = Pool::new();
        for len in 1..=KEPT + 5 {
            pool.give(vec![0.0; len * 10].into());
        }
        assert_eq!(pool.len(), KEPT);
        let shortest_kept = pool.with_spares(|s| s.iter().map(Vec::len).min());
        assert_eq!(shortest_kept, Some(60), "the five shortest were dropped");
        pool.give(Buffer::default());
        assert_eq!(pool.len(), KEPT, "an empty buffer is not worth keeping");
    }

    #[test]
    fn a_buffer_compares_and_clones_by_its_values_only() {
        let pool = Pool::new();
        pool.give(vec![7.0; 50].into());
        let mut taken = pool.take(3);
        taken.copy_from_slice(&[1.0, 2.0, 3.0]);
        assert_eq!(taken, Buffer::from(vec![1.0, 2.0, 3.0]));
        assert_eq!(taken.clone().into_vec(), [1.0, 2.0, 3.0]);
    }

    #[test]
    fn a_copy_is_written_into_a_spare_buffer() {
        let pool = Pool::new();
        let spare = vec![9.0; 1000];
        let spare_at = spare.as_ptr();
        pool.give(spare.into());
        let original = Buffer::from(vec![1.0, 2.0, 3.0]);
        let copy = original.copy_from(&pool);
        assert_eq!(copy, original);
        assert_eq!(copy.as_ptr(), spare_at, "no new allocation");
        assert_eq!(pool.len(), 0);
    }
}
