//! The CPU device's threads: a fork-join pool where part `t` of every operation always runs on
//! thread `t`, and idle threads spin briefly before they sleep.
//!
//! A training step is a chain of a few dozen operations of 10-300 µs each. Two properties
//! decide how well such a chain scales, and a general work-stealing pool (rayon) has neither:
//!
//! - *Fixed assignment.* The weight rows a thread reads in the forward pass are the rows it
//!   updates after the backward pass (see `gemm.rs`); with work stealing, whichever thread
//!   happens to be free takes a part, and megabytes of weights move between cores every step.
//! - *Fast hand-over.* A worker that found no work for a few microseconds goes to sleep in rayon,
//!   and waking it takes tens of microseconds; here a worker spins for a while (yielding to other
//!   threads, such as the data loader), so the next operation starts at once.
//!
//! Measured on the MNIST MLP at 2 threads: see docs/PERFORMANCE.md.

use singa_core::{Error, Result};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker stays awake (spinning, then yielding) before it sleeps.
const STAY_AWAKE: Duration = Duration::from_millis(2);
/// Busy-wait iterations before an idle worker starts yielding its core.
const SPINS_BEFORE_YIELD: u32 = 4000;

thread_local! {
    /// Set on pool workers: an operation started there runs serially instead of nesting.
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// One worker's mailbox, on its own cache lines.
#[repr(align(128))]
struct Slot {
    /// The number of jobs posted to this worker.
    posted: AtomicU64,
    /// The number of jobs it has finished.
    finished: AtomicU64,
    /// The address of the job (`&&(dyn Fn(usize) + Sync)` on the poster's stack).
    job: AtomicUsize,
    sleeping: AtomicBool,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    thread: OnceLock<Thread>,
}

struct Shared {
    slots: Vec<Arc<Slot>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// One poster at a time; another thread that wants the pool runs its work serially.
    poster: Mutex<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for s in &self.slots {
            s.shutdown.store(true, Ordering::SeqCst);
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
        for h in self
            .handles
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default()
        {
            let _ = h.join();
        }
    }
}

/// A fixed number of threads: the caller's plus `n - 1` workers.
#[derive(Clone)]
pub struct Threads {
    n: usize,
    shared: Option<Arc<Shared>>,
}

fn worker(index: usize, slot: Arc<Slot>) {
    IN_WORKER.with(|w| w.set(true));
    let mut seen = 0u64;
    loop {
        // Wait for a job: spin, then yield, then sleep.
        let (mut spins, mut since) = (0u32, Instant::now());
        loop {
            if slot.shutdown.load(Ordering::Acquire) {
                return;
            }
            let posted = slot.posted.load(Ordering::Acquire);
            if posted != seen {
                seen = posted;
                break;
            }
            spins = spins.saturating_add(1);
            if spins < SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
            } else if since.elapsed() < STAY_AWAKE {
                std::thread::yield_now();
            } else {
                slot.sleeping.store(true, Ordering::SeqCst);
                if slot.posted.load(Ordering::SeqCst) == seen
                    && !slot.shutdown.load(Ordering::SeqCst)
                {
                    std::thread::park();
                }
                slot.sleeping.store(false, Ordering::SeqCst);
                (spins, since) = (0, Instant::now());
            }
        }
        // SAFETY: the poster keeps the job alive until `finished` reaches `seen`.
        let job = unsafe { &*(slot.job.load(Ordering::Acquire) as *const &(dyn Fn(usize) + Sync)) };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index))).is_err() {
            slot.panicked.store(true, Ordering::Release);
        }
        slot.finished.store(seen, Ordering::Release);
    }
}

impl Threads {
    /// `n` threads; one means everything runs on the caller's thread.
    pub fn new(n: usize) -> Result<Threads> {
        let n = n.max(1);
        if n == 1 {
            return Ok(Threads { n, shared: None });
        }
        let slots: Vec<Arc<Slot>> = (1..n)
            .map(|_| {
                Arc::new(Slot {
                    posted: AtomicU64::new(0),
                    finished: AtomicU64::new(0),
                    job: AtomicUsize::new(0),
                    sleeping: AtomicBool::new(false),
                    panicked: AtomicBool::new(false),
                    shutdown: AtomicBool::new(false),
                    thread: OnceLock::new(),
                })
            })
            .collect();
        // Built first, so that if a spawn fails, dropping it stops the threads already started.
        let shared = Arc::new(Shared {
            slots,
            handles: Mutex::new(Vec::new()),
            poster: Mutex::new(()),
        });
        for (i, slot) in shared.slots.iter().enumerate() {
            let s = slot.clone();
            let h = std::thread::Builder::new()
                .name(format!("singa-cpu-{}", i + 1))
                .spawn(move || worker(i + 1, s))
                .map_err(|e| Error::device("cpu", format!("cannot start {n} threads: {e}")))?;
            let _ = slot.thread.set(h.thread().clone());
            shared
                .handles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(h);
        }
        Ok(Threads {
            n,
            shared: Some(shared),
        })
    }

    /// The number of threads.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Runs `f(0)`, `f(1)`, … `f(parts - 1)`, part `t` on thread `t` (part 0 on the caller),
    /// and returns when all are done. Serial when the pool is busy with another caller or when
    /// called from inside a part.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let parts = parts.min(self.n);
        let serial = || (0..parts).for_each(f);
        let Some(shared) = &self.shared else {
            return serial();
        };
        if parts <= 1 || IN_WORKER.with(|w| w.get()) {
            return serial();
        }
        // A part that panicked poisons the lock; the pool itself is still fine.
        let _poster = match shared.poster.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return serial(),
        };
        let job: &(dyn Fn(usize) + Sync) = f;
        let address = &job as *const &(dyn Fn(usize) + Sync) as usize;
        let slots = &shared.slots[..parts - 1];
        for s in slots {
            s.job.store(address, Ordering::Release);
            s.posted.fetch_add(1, Ordering::SeqCst);
            if s.sleeping.load(Ordering::SeqCst) {
                if let Some(t) = s.thread.get() {
                    t.unpark();
                }
            }
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        // Wait for the workers even if part 0 panicked: they use `job`, which lives here.
        for s in slots {
            let target = s.posted.load(Ordering::Relaxed);
            let mut spins = 0u32;
            while s.finished.load(Ordering::Acquire) != target {
                spins = spins.saturating_add(1);
                if spins < SPINS_BEFORE_YIELD {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if slots
            .iter()
            .any(|s| s.panicked.swap(false, Ordering::AcqRel))
        {
            panic!("a part of a parallel operation panicked on a singa-cpu worker thread");
        }
    }

    /// Calls `f(start, end)` on disjoint ranges covering `0..len`, in parallel when `len` is at
    /// least two `grain`s. Range boundaries are multiples of 16 elements (a cache line of f32).
    pub fn for_ranges(&self, len: usize, grain: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let parts = (len / grain.max(1)).clamp(1, self.n);
        self.for_blocks(len, parts, 16, f);
    }

    /// Calls `f(start, end)` on `parts` (at most the thread count) disjoint ranges covering
    /// `0..len`, range `t` on thread `t`; boundaries are multiples of `align`.
    pub fn for_blocks(
        &self,
        len: usize,
        parts: usize,
        align: usize,
        f: &(dyn Fn(usize, usize) + Sync),
    ) {
        let parts = parts.clamp(1, self.n);
        if parts == 1 || len == 0 {
            f(0, len);
            return;
        }
        let chunk = len.div_ceil(parts).next_multiple_of(align.max(1));
        self.run(parts, &|t| {
            let (start, end) = ((t * chunk).min(len), ((t + 1) * chunk).min(len));
            if start < end {
                f(start, end);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn ranges_cover_everything_once() {
        for n in [1, 2, 3, 4] {
            let t = Threads::new(n).unwrap();
            for len in [0, 1, 15, 16, 17, 1000, 4097] {
                let seen = Mutex::new(vec![0u8; len]);
                t.for_ranges(len, 8, &|s, e| {
                    let mut v = seen.lock().unwrap();
                    for x in &mut v[s..e] {
                        *x += 1;
                    }
                });
                assert!(
                    seen.into_inner().unwrap().iter().all(|&c| c == 1),
                    "n={n} len={len}"
                );
            }
        }
    }

    #[test]
    fn parts_run_on_fixed_threads() {
        let t = Threads::new(3).unwrap();
        let names = Mutex::new(vec![String::new(); 3]);
        for _ in 0..50 {
            t.run(3, &|i| {
                let name = std::thread::current()
                    .name()
                    .unwrap_or("caller")
                    .to_string();
                let mut n = names.lock().unwrap();
                assert!(n[i].is_empty() || n[i] == name, "part {i} moved threads");
                n[i] = name;
            });
        }
        assert_eq!(
            names.into_inner().unwrap()[1..],
            ["singa-cpu-1", "singa-cpu-2"]
        );
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let t = Threads::new(2).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.run(2, &|i| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        // Still parallel afterwards: part 1 runs on the worker, not serially on the caller.
        let names = Mutex::new(Vec::new());
        t.run(2, &|_| {
            names
                .lock()
                .unwrap()
                .push(std::thread::current().name().map(str::to_string));
        });
        let names = names.into_inner().unwrap();
        assert_eq!(names.len(), 2);
        assert!(
            names.contains(&Some("singa-cpu-1".to_string())),
            "{names:?}"
        );
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let t = Threads::new(2).unwrap();
        std::thread::sleep(STAY_AWAKE * 3);
        let hits = AtomicUsize::new(0);
        t.run(2, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
