//! Loops shared by the threads of the current rayon pool, whose waiting thread never falls
//! asleep: every parallel loop of the native engine (its kernels and the products here) goes
//! through [`for_each`], [`for_each_chunk`] or [`map`].
//!
//! Why not rayon's own `par_iter`s: a thread that waits in rayon for a task another thread
//! took spins for ~33 rounds of `sched_yield` (tens of µs) and then sleeps on a futex. At
//! batch 1 a layer takes 10–700 µs, split in a few tasks, so the thread running the pass
//! fell asleep about ten times per SqueezeNet pass, each time waiting for the other to finish
//! its half. Woken, a sleeping vCPU must be scheduled again by the host, which on a shared
//! machine comes late when a neighbour is busy: in such a phase SqueezeNet's median pass took
//! 14.3–14.6 ms this way and 11.2–11.6 with a build of rayon patched to spin instead (ONNX
//! Runtime's threads spin the same way; docs/PERFORMANCE.md). rayon has no setting for it.
//!
//! How: a loop's tasks are claimed a few at a time from a shared counter, by the calling thread
//! and by helper jobs handed to the pool with `rayon::spawn` (one per other thread), so a
//! thread that finishes early takes what is left instead of waiting. The caller then spins,
//! running any pool job it finds (nested loops' helpers among them), until every helper has
//! returned. The helpers borrow the caller's stack through a pointer, which is sound because
//! the caller does not return (nor unwind) before they have all finished with it.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `task(0)`, …, `task(count - 1)` on the pool's threads (the calling thread among
/// them), each index once, and returns when all have. A panic in a task stops further tasks
/// from starting and is resumed here once the others have stopped.
pub fn for_each(count: usize, task: impl Fn(usize) + Sync) {
    let helpers = rayon::current_num_threads().min(count).saturating_sub(1);
    if helpers == 0 {
        (0..count).for_each(task);
        return;
    }
    let shared = Shared {
        next: AtomicUsize::new(0),
        count,
        grain: count.div_ceil((helpers + 1) * CLAIMS_PER_THREAD),
        task: &task,
        running: AtomicUsize::new(helpers),
        panic: Mutex::new(None),
    };
    let pointer = SharedPointer(std::ptr::from_ref(&shared).cast());
    for _ in 0..helpers {
        rayon::spawn(move || {
            // SAFETY: `shared` lives on the stack of the `for_each` call that spawned this
            // job, which returns only after `running` has dropped to zero, i.e. after this
            // job's last access below (the decrement itself).
            let shared = unsafe { pointer.get() };
            shared.work();
            shared.running.fetch_sub(1, Ordering::Release);
        });
    }
    shared.work();
    wait_until(|| shared.running.load(Ordering::Acquire) == 0);
    let panic = shared.panic.into_inner();
    if let Some(payload) = panic.unwrap_or_else(|poisoned| poisoned.into_inner()) {
        resume_unwind(payload);
    }
}

/// [`for_each`] over the chunks of `size` values of `data` (the last may be shorter):
/// `task(index, chunk)`.
pub fn for_each_chunk<T: Send>(data: &mut [T], size: usize, task: impl Fn(usize, &mut [T]) + Sync) {
    assert!(size > 0, "chunks of 0 values");
    let len = data.len();
    let start = Chunks(data.as_mut_ptr());
    for_each(len.div_ceil(size), |index| {
        let first = index * size;
        let count = size.min(len - first);
        // SAFETY: `data` is borrowed uniquely for this call, which returns only after every
        // task has; each index is run once and the chunks `first..first + count` of distinct
        // indices are disjoint and within `data`.
        let chunk = unsafe { std::slice::from_raw_parts_mut(start.at(first), count) };
        task(index, chunk);
    });
}

/// `task(0)`, …, `task(count - 1)` computed by [`for_each`], in index order.
pub fn map<R: Send>(count: usize, task: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut results: Vec<Option<R>> = (0..count).map(|_| None).collect();
    for_each_chunk(&mut results, 1, |index, slot| slot[0] = Some(task(index)));
    results
        .into_iter()
        .map(|result| result.expect("every task ran"))
        .collect()
}

/// Spins until `done()`, meanwhile running the pool's pending jobs (from this thread's own
/// queue, or taken from the others'). Every 64 empty polls it lets the OS run other threads
/// (a server's own, on a 2-core machine), but it never sleeps: see the module's doc.
pub fn wait_until(done: impl Fn() -> bool) {
    let mut idle = 0u32;
    while !done() {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle = 0,
            Some(rayon::Yield::Idle) | None => {
                idle += 1;
                if idle.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

/// Claims per thread a loop's tasks are grouped into, at most: fine tasks (a pixel, a line)
/// are claimed in runs, so that the shared counter costs little, but enough runs are left for
/// a thread that falls behind (its vCPU taken away by the host) to be relieved of its share.
const CLAIMS_PER_THREAD: usize = 4;

/// One loop's state, on the stack of its [`for_each`] call.
struct Shared<'a> {
    /// The next index to claim; `count` or more once all are claimed (or a task panicked).
    next: AtomicUsize,
    count: usize,
    /// Indices claimed at a time.
    grain: usize,
    task: &'a (dyn Fn(usize) + Sync),
    /// Helper jobs that have not returned yet.
    running: AtomicUsize,
    /// The first panic of a task.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Shared<'_> {
    /// Claims and runs tasks until none is left.
    fn work(&self) {
        loop {
            let first = self.next.fetch_add(self.grain, Ordering::Relaxed);
            if first >= self.count {
                return;
            }
            let claimed = first..(first + self.grain).min(self.count);
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| claimed.for_each(self.task))) {
                self.next.store(self.count, Ordering::Relaxed);
                let mut first = self.panic.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert(payload);
            }
        }
    }
}

/// A [`Shared`] handed to helper jobs, which rayon requires to be `'static`.
#[derive(Clone, Copy)]
struct SharedPointer(*const Shared<'static>);

// SAFETY: `Shared` is only read through shared references (atomics, a mutex, and a `Sync`
// task), so it may be reached from any thread while it lives, which `for_each` guarantees.
unsafe impl Send for SharedPointer {}

impl SharedPointer {
    /// # Safety
    /// The `Shared` must still be alive (its `for_each` call not yet returned).
    unsafe fn get(&self) -> &Shared<'static> {
        // SAFETY: the caller's promise.
        unsafe { &*self.0 }
    }
}

/// The start of a slice whose disjoint chunks tasks write.
struct Chunks<T>(*mut T);

// SAFETY: only used to form disjoint chunks of a slice of `Send` values (see `for_each_chunk`).
unsafe impl<T: Send> Sync for Chunks<T> {}

impl<T> Chunks<T> {
    fn at(&self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool")
    }

    #[test]
    fn every_index_runs_once_on_any_pool() {
        for threads in [1, 2, 3] {
            for count in [0, 1, 2, 7, 100] {
                let runs: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
                pool(threads).install(|| {
                    for_each(count, |i| {
                        runs[i].fetch_add(1, Ordering::Relaxed);
                    })
                });
                assert!(
                    runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                    "{threads} threads, {count} tasks"
                );
            }
        }
    }

    #[test]
    fn chunks_cover_the_slice_and_map_keeps_order() {
        let mut data = vec![0usize; 103];
        pool(2).install(|| for_each_chunk(&mut data, 10, |i, chunk| chunk.fill(i + 1)));
        let expected: Vec<usize> = (0..103).map(|v| v / 10 + 1).collect();
        assert_eq!(data, expected);
        let squares = pool(2).install(|| map(50, |i| i * i));
        assert_eq!(squares, (0..50).map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn nested_loops_finish_and_use_both_threads() {
        let pool = pool(2);
        let sum = AtomicUsize::new(0);
        let threads: Mutex<std::collections::HashSet<_>> = Mutex::default();
        pool.install(|| {
            for_each(4, |_| {
                for_each(64, |j| {
                    threads
                        .lock()
                        .expect("not poisoned")
                        .insert(std::thread::current().id());
                    // Long enough that the other thread takes some of the inner tasks.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    sum.fetch_add(j, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4 * (0..64).sum::<usize>());
        assert_eq!(threads.into_inner().expect("not poisoned").len(), 2);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_after_the_others_stopped() {
        let pool = pool(2);
        let ran = AtomicUsize::new(0);
        let outcome = pool.install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                for_each(1000, |i| {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    if i == 5 {
                        std::panic::panic_any(i);
                    }
                    ran.fetch_add(1, Ordering::Relaxed);
                })
            }))
        });
        let payload = outcome.expect_err("the panic reaches the caller");
        assert_eq!(payload.downcast_ref::<usize>(), Some(&5));
        // Every helper had returned before the panic went on: no task runs any more.
        let ran_then = ran.load(Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(ran.load(Ordering::SeqCst), ran_then);
        assert!(ran_then < 1000);
        // The pool still works afterwards.
        assert_eq!(pool.install(|| map(3, |i| i + 1)), vec![1, 2, 3]);
    }
}
