//! How the workers of a group that compute gradients together (in one process, see
//! [`super::build::SharedGrad`]) tell each other that their backward pass of a step is done:
//! through memory they share, not through the transport, whose message kinds stay those of
//! any engine.

use singa_core::park::Waiter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Per worker of the group: how many steps' backward passes it has done (the step after the
/// last one done, counted from the run's first step), and the thread waiting for the others.
struct Group {
    done: Vec<AtomicU64>,
    waiters: Vec<Waiter>,
}

/// One worker's place in its group's latch.
#[derive(Clone)]
pub(crate) struct BackwardLatch {
    group: Arc<Group>,
    member: usize,
}

impl BackwardLatch {
    /// The latches of a group of `workers`, one per member in order.
    pub fn group(workers: usize) -> Vec<BackwardLatch> {
        let group = Arc::new(Group {
            done: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            waiters: (0..workers).map(|_| Waiter::default()).collect(),
        });
        (0..workers)
            .map(|member| BackwardLatch {
                group: Arc::clone(&group),
                member,
            })
            .collect()
    }

    /// Says that this worker's backward pass of `step` is done (its layers' inputs and output
    /// gradients of that step may now be read), and wakes the others.
    pub fn arrive(&self, step: u64) {
        self.group.done[self.member].store(step + 1, Ordering::Release);
        for (m, w) in self.group.waiters.iter().enumerate() {
            if m != self.member {
                w.wake();
            }
        }
    }

    /// How many workers of the group (this one included) have not yet done their backward
    /// pass of `step`. A
    /// worker runs at most one step ahead of the others (it needs their rows of the step's
    /// gradients first), so counting up is enough.
    pub fn missing(&self, step: u64) -> usize {
        self.group
            .done
            .iter()
            .filter(|d| d.load(Ordering::Acquire) <= step)
            .count()
    }

    /// What this worker waits on: woken when another arrives.
    pub fn waiter(&self) -> &Waiter {
        &self.group.waiters[self.member]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_worker_waits_until_every_other_is_done_with_the_step() {
        let latches = BackwardLatch::group(3);
        latches[0].arrive(5);
        assert_eq!(latches[0].missing(5), 2);
        let others: Vec<_> = latches[1..].to_vec();
        let t = std::thread::spawn(move || {
            for l in others {
                std::thread::sleep(Duration::from_millis(5));
                l.arrive(5);
            }
        });
        let me = &latches[0];
        let got = me
            .waiter()
            .wait_for(Some(Instant::now() + Duration::from_secs(10)), || {
                (me.missing(5) == 0).then_some(())
            });
        t.join().unwrap();
        assert_eq!(got, Some(()));
        assert_eq!(me.missing(6), 3, "the next step counts afresh");
    }
}
