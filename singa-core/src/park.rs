//! Waiting for a queue without allocating: the waiting thread polls briefly, then parks, and
//! the threads that fill the queue unpark it.
//!
//! A blocking receive of `flume` allocates a waiter record every time it waits, and one of
//! `std::sync::mpsc` the first time, which can fall in the middle of training. The transports
//! and the batch loader, which depend on this crate only, wait through a [`Waiter`] instead.

use std::sync::Mutex;
use std::thread::Thread;
use std::time::{Duration, Instant};

/// The thread waiting for a queue, woken by the threads that fill it.
#[derive(Default)]
pub struct Waiter(Mutex<Option<Thread>>);

/// How long a park lasts at most when no deadline is nearer: a safety net only, since every
/// producer wakes the waiter.
const SAFETY_NET: Duration = Duration::from_millis(100);

/// How long a waiter polls before it parks. Waking a parked thread costs tens of
/// microseconds on a virtual machine (its core halts), more than the short waits of
/// synchronous workers for each other; polling yields the core between polls, so a producer
/// that shares it still runs.
const POLL_BEFORE_PARKING: Duration = Duration::from_micros(50);

impl Waiter {
    /// Wakes the waiting thread, if there is one. Call after putting something in the queue.
    pub fn wake(&self) {
        if let Some(t) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            t.unpark();
        }
    }

    /// Polls until `poll` gives a value (yielding the core between polls for the first 50 µs,
    /// parking between later ones), or until `deadline` passes
    /// (`None`: no deadline). The calling thread becomes the one [`Waiter::wake`] wakes before
    /// it polls, so a value queued after a poll unparks it (or leaves the token that makes the
    /// park return at once): no wake-up is lost.
    pub fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        mut poll: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        {
            let me = std::thread::current();
            let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if t.as_ref().map(Thread::id) != Some(me.id()) {
                *t = Some(me);
            }
        }
        let until = Instant::now() + POLL_BEFORE_PARKING;
        if let Some(v) = poll_until(deadline.map_or(until, |d| d.min(until)), &mut poll) {
            return Some(v);
        }
        loop {
            if let Some(v) = poll() {
                return Some(v);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => SAFETY_NET,
            };
            if left.is_zero() {
                return None;
            }
            std::thread::park_timeout(left.min(SAFETY_NET));
        }
    }
}

/// Polls until `until`, yielding the core between polls.
fn poll_until<T>(until: Instant, poll: &mut impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(v) = poll() {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::sync::Arc;

    #[test]
    fn a_producer_wakes_the_waiting_thread_and_a_deadline_ends_the_wait() {
        let waiter = Arc::new(Waiter::default());
        let (tx, rx) = sync_channel(4);
        let w = waiter.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..100 {
                tx.send(i).unwrap();
                w.wake();
            }
        });
        let got: Vec<i32> = (0..100)
            .map(|_| waiter.wait_for(None, || rx.try_recv().ok()).unwrap())
            .collect();
        producer.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(waiter.wait_for(Some(soon), || rx.try_recv().ok()), None);
        assert!(Instant::now() >= soon);
    }
}
