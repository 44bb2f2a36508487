//! The CPU device's threads: a rayon pool of its own, used only where work is big enough.

use rayon::{ThreadPool, ThreadPoolBuilder};
use singa_core::{Error, Result};
use std::sync::Arc;

/// A fixed number of threads (the caller's plus `n - 1` pool workers).
#[derive(Clone)]
pub struct Threads {
    n: usize,
    pool: Option<Arc<ThreadPool>>,
}

impl Threads {
    /// `n` threads; one means everything runs on the caller's thread.
    pub fn new(n: usize) -> Result<Threads> {
        let n = n.max(1);
        let pool = if n > 1 {
            let pool = ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("singa-cpu-{i}"))
                .build()
                .map_err(|e| Error::device("cpu", format!("cannot start {n} threads: {e}")))?;
            Some(Arc::new(pool))
        } else {
            None
        };
        Ok(Threads { n, pool })
    }

    /// The number of threads.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Runs `f` on the pool: directly when already on one of its threads, else by handing it
    /// over and waiting. Running a whole training loop inside `install` makes every parallel
    /// operation start without a hand-over.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) if pool.current_thread_index().is_none() => pool.install(f),
            _ => f(),
        }
    }

    /// Calls `f(start, end)` on disjoint ranges covering `0..len`, in parallel when `len` is at
    /// least two `grain`s. Range boundaries are multiples of 16 elements (a cache line of f32).
    pub fn for_ranges(&self, len: usize, grain: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let parts = (len / grain.max(1)).clamp(1, self.n);
        if parts == 1 {
            f(0, len);
            return;
        }
        let chunk = len.div_ceil(parts).next_multiple_of(16);
        self.install(|| split(0, parts, chunk, len, f));
    }
}

fn split(first: usize, count: usize, chunk: usize, len: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    if count == 1 {
        let start = (first * chunk).min(len);
        let end = ((first + 1) * chunk).min(len);
        if start < end {
            f(start, end);
        }
        return;
    }
    let half = count / 2;
    rayon::join(
        || split(first, half, chunk, len, f),
        || split(first + half, count - half, chunk, len, f),
    );
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
}
