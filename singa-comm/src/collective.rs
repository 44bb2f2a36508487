//! Collectives: sums and broadcasts of tensors among a fixed set of members, each member one
//! data-parallel worker, every member calling the same operations in the same order.
//!
//! AllReduce's servers sum gradients and send values back as messages; between GPUs NCCL does
//! the same work as collectives that never leave the GPUs' memory (`singa-cuda`'s
//! `Communicator`). The runtime sees both behind [`Collective`], so the code that issues them
//! is checked on any machine through [`ThreadCollective`], the members of one OS process
//! meeting in shared memory (the emulated processes of the tests), whose sums add the members'
//! tensors in member order, as a server adds its workers' gradients.

use singa_core::{Error, Result, Tensor};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One member's end of a collective group. Every member calls the same operations, with
/// tensors of the same lengths, in the same order; each call returns once this member's part
/// is done (the tensor may still be in use by a device queue that orders it before anything
/// queued after, as NCCL's sums are).
pub trait Collective: Send {
    /// This member's number, from 0.
    fn member(&self) -> usize;

    /// How many members the group has.
    fn members(&self) -> usize;

    /// On member `root`, `t` becomes the sum of every member's `t`; the other members' are
    /// left as they are.
    fn reduce_sum(&mut self, t: &mut Tensor, root: usize) -> Result<()>;

    /// Every member's `t` becomes member `root`'s.
    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()>;

    /// Whether the members meet through bytes that member 0 makes
    /// ([`Collective::invitation`]) and the runtime carries to every member's
    /// [`Collective::join`] before the first operation (NCCL's unique id).
    fn needs_invitation(&self) -> bool {
        false
    }

    /// Member 0's invitation to the others.
    fn invitation(&mut self) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    /// Joins the group with member 0's invitation (member 0 too).
    fn join(&mut self, invitation: &[u8]) -> Result<()> {
        let _ = invitation;
        Ok(())
    }

    /// Gives up on the group because this member's worker stopped: the other members' current
    /// and later operations fail instead of waiting for it (NCCL: `ncclCommAbort`).
    fn abort(&mut self) {}
}

/// What an operation is, as every member must ask for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    ReduceSum,
    Broadcast,
}

/// The operation under way, and the members' tensors for it.
struct Round {
    /// Operations completed since the group was made.
    done: u64,
    /// What the first member to arrive asked for: the operation, its root and length.
    op: Option<(Op, usize, usize)>,
    /// Each member's tensor, once it has arrived.
    posted: Vec<Option<Tensor>>,
    arrived: usize,
    /// Why the group can no longer work (a member left or timed out, asked for something
    /// else, or the root failed: then the operation never completes, and its other members
    /// fail too).
    broken: Option<String>,
    /// Host space for the root's sums and copies (grown once to the longest tensor).
    sum: Vec<f32>,
    part: Vec<f32>,
}

struct Shared {
    round: Mutex<Round>,
    changed: Condvar,
    /// The group's number in this process, its invitation.
    number: u64,
}

/// A member of a group whose members are threads of one OS process: the root reads every
/// member's tensor and writes the result, while the others wait. Sums are taken in f32 in
/// member order (`((t₀ + t₁) + t₂) + …`), the order in which a server adds its workers'
/// gradients, so a run through it equals one through the servers value for value. A member
/// waits at most `timeout` for the others, and a member that is dropped (its worker stopped)
/// makes the others' calls fail, naming it, rather than wait. Like NCCL's, its members join
/// with member 0's invitation before their first operation (the group's number), so that the
/// tests check the runtime carries it.
pub struct ThreadCollective {
    member: usize,
    members: usize,
    /// Whether it has joined with member 0's invitation.
    joined: bool,
    /// Operations this member has taken part in.
    calls: u64,
    timeout: Duration,
    shared: Arc<Shared>,
}

impl ThreadCollective {
    /// The `members` members of a new group, member `i` at index `i`.
    pub fn group(members: usize, timeout: Duration) -> Vec<ThreadCollective> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static GROUPS: AtomicU64 = AtomicU64::new(1);
        let shared = Arc::new(Shared {
            number: GROUPS.fetch_add(1, Ordering::Relaxed),
            round: Mutex::new(Round {
                done: 0,
                op: None,
                posted: vec![None; members],
                arrived: 0,
                broken: None,
                sum: Vec::new(),
                part: Vec::new(),
            }),
            changed: Condvar::new(),
        });
        (0..members)
            .map(|member| ThreadCollective {
                member,
                members,
                joined: false,
                calls: 0,
                timeout,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        self.shared.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes part in operation `op` rooted at `root` with `t`.
    fn run(&mut self, op: Op, t: &Tensor, root: usize) -> Result<()> {
        let me = self.member;
        // Said only in errors (a warm step allocates nothing).
        let what = || format!("{op:?} of {} values rooted at member {root}", t.numel());
        if !self.joined {
            return Err(Error::invalid(format!(
                "collective member {me}: a {} before it joined the group with member 0's invitation",
                what()
            )));
        }
        if root >= self.members {
            return Err(Error::invalid(format!(
                "collective member {me}: a {}, but the group has {} members",
                what(),
                self.members
            )));
        }
        let call = self.calls;
        self.calls += 1;
        let deadline = Instant::now() + self.timeout;
        let mut round = self.lock();
        if let Some(why) = &round.broken {
            return Err(Error::invalid(format!("collective member {me}: {why}")));
        }
        let asked = (op, root, t.numel());
        match round.op {
            None => round.op = Some(asked),
            Some(first) if first != asked => {
                let why = format!(
                    "member {me} asked for a {} where another asked for a {:?} of {} values rooted at member {}",
                    what(),
                    first.0,
                    first.2,
                    first.1
                );
                round.broken = Some(why.clone());
                self.shared.changed.notify_all();
                return Err(Error::invalid(format!("collective: {why}")));
            }
            Some(_) => {}
        }
        round.posted[me] = Some(t.clone());
        round.arrived += 1;
        self.shared.changed.notify_all();
        let ready = |r: &Round| match me == root {
            true => r.arrived == r.posted.len(),
            false => r.done > call,
        };
        while !ready(&round) {
            if let Some(why) = &round.broken {
                return Err(Error::invalid(format!("collective member {me}: {why}")));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<usize> = (0..self.members)
                    .filter(|&m| round.posted[m].is_none())
                    .collect();
                let why = format!(
                    "member {me} waited {} s in a {} for members {missing:?} (raise cluster.timeout if a step takes longer)",
                    self.timeout.as_secs(),
                    what()
                );
                // The others must not go on with this member's tensor, nor wait as long.
                round.broken = Some(why.clone());
                self.shared.changed.notify_all();
                return Err(Error::invalid(format!("collective: {why}")));
            }
            round = self
                .shared
                .changed
                .wait_timeout(round, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if me == root {
            let outcome = carry_out(&mut round, op, root);
            for p in round.posted.iter_mut() {
                *p = None;
            }
            round.arrived = 0;
            round.op = None;
            match &outcome {
                Ok(()) => round.done += 1,
                Err(e) => round.broken = Some(format!("the root failed: {e}")),
            }
            self.shared.changed.notify_all();
            return outcome;
        }
        Ok(())
    }
}

/// The root's work once every member's tensor is in.
fn carry_out(round: &mut Round, op: Op, root: usize) -> Result<()> {
    let Round {
        posted, sum, part, ..
    } = round;
    let n = posted[root].as_ref().map_or(0, Tensor::numel);
    if sum.len() < n {
        sum.resize(n, 0.0);
        part.resize(n, 0.0);
    }
    let (sum, part) = (&mut sum[..n], &mut part[..n]);
    let tensors = posted
        .iter()
        .map(|p| p.as_ref().expect("every member arrived"));
    match op {
        Op::ReduceSum => {
            for (i, t) in tensors.enumerate() {
                if i == 0 {
                    t.read_into(sum)?;
                    continue;
                }
                t.read_into(part)?;
                for (s, x) in sum.iter_mut().zip(part.iter()) {
                    *s += x;
                }
            }
            let mut out = posted[root].clone().expect("the root arrived");
            out.write_from(sum)
        }
        Op::Broadcast => {
            posted[root]
                .as_ref()
                .expect("the root arrived")
                .read_into(sum)?;
            for (i, t) in posted.iter().enumerate() {
                if i != root {
                    let mut t = t.clone().expect("every member arrived");
                    t.write_from(sum)?;
                }
            }
            Ok(())
        }
    }
}

impl Collective for ThreadCollective {
    fn member(&self) -> usize {
        self.member
    }

    fn members(&self) -> usize {
        self.members
    }

    fn reduce_sum(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.run(Op::ReduceSum, t, root)
    }

    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.run(Op::Broadcast, t, root)
    }

    fn needs_invitation(&self) -> bool {
        true
    }

    fn invitation(&mut self) -> Result<Vec<u8>> {
        Ok(self.shared.number.to_le_bytes().to_vec())
    }

    fn abort(&mut self) {
        self.leave();
    }

    fn join(&mut self, invitation: &[u8]) -> Result<()> {
        let number = self.shared.number;
        if invitation != number.to_le_bytes() {
            return Err(Error::invalid(format!(
                "collective member {}: an invitation ({invitation:?}) that is not its group's ({:?})",
                self.member,
                number.to_le_bytes()
            )));
        }
        self.joined = true;
        Ok(())
    }
}

impl ThreadCollective {
    /// Breaks the group, saying this member left.
    fn leave(&mut self) {
        let member = self.member;
        let mut round = self.lock();
        if round.broken.is_none() {
            round.broken = Some(format!(
                "member {member} left the group (its worker stopped)"
            ));
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for ThreadCollective {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use singa_core::{DType, DeviceRef};

    fn dev() -> DeviceRef {
        DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap())
    }

    /// `c`, joined with its group's invitation.
    fn joined(c: &mut ThreadCollective) {
        let invitation = c.shared.number.to_le_bytes();
        c.join(&invitation).unwrap();
    }

    /// Runs `body(member, its collective)` on a thread per member; their results in order.
    fn on_threads<T: Send + 'static>(
        members: usize,
        body: impl Fn(usize, ThreadCollective) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let body = Arc::new(body);
        let threads: Vec<_> = ThreadCollective::group(members, Duration::from_secs(10))
            .into_iter()
            .enumerate()
            .map(|(m, mut c)| {
                let body = Arc::clone(&body);
                joined(&mut c);
                std::thread::spawn(move || body(m, c))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn sums_in_member_order_at_the_root_and_broadcasts_from_it() {
        // Values whose sum depends on the order of the additions.
        let values = [1e8f32, 1.0, -1e8, 0.5];
        let out = on_threads(4, move |m, mut c| {
            let dev = dev();
            let mut t = Tensor::from_slice(&dev, &[values[m], m as f32, 2.0], [3]).unwrap();
            c.reduce_sum(&mut t, 2).unwrap();
            let reduced = t.to_vec::<f32>().unwrap();
            c.broadcast(&mut t, 2).unwrap();
            (reduced, t.to_vec::<f32>().unwrap())
        });
        let in_order = ((values[0] + values[1]) + values[2]) + values[3];
        let sum = vec![in_order, 6.0, 8.0];
        for (m, (reduced, broadcast)) in out.iter().enumerate() {
            match m {
                2 => assert_eq!(reduced, &sum),
                _ => assert_eq!(reduced, &vec![values[m], m as f32, 2.0], "member {m}"),
            }
            assert_eq!(broadcast, &sum, "member {m}");
        }
    }

    #[test]
    fn many_operations_in_a_row_keep_their_order() {
        let out = on_threads(3, |m, mut c| {
            let dev = dev();
            let mut t = Tensor::zeros(&dev, [5], DType::F32).unwrap();
            for step in 0..200 {
                t.write_from(&[(m + step) as f32; 5]).unwrap();
                let root = step % 3;
                c.reduce_sum(&mut t, root).unwrap();
                c.broadcast(&mut t, root).unwrap();
                assert_eq!(t.to_vec::<f32>().unwrap(), vec![(3 * step + 3) as f32; 5]);
            }
            true
        });
        assert!(out.into_iter().all(|ok| ok));
    }

    #[test]
    fn a_member_that_leaves_or_asks_for_something_else_fails_the_others() {
        let out = on_threads(2, |m, mut c| {
            let dev = dev();
            let mut t = Tensor::zeros(&dev, [4], DType::F32).unwrap();
            match m {
                0 => c.reduce_sum(&mut t, 0).map_err(|e| e.to_string()),
                _ => {
                    drop(c);
                    Ok(())
                }
            }
        });
        let e = out[0].as_ref().unwrap_err();
        assert!(e.contains("member 1 left the group"), "{e}");

        let out = on_threads(2, |m, mut c| {
            let dev = dev();
            let mut t = Tensor::zeros(&dev, [4 + m], DType::F32).unwrap();
            c.reduce_sum(&mut t, 0).map_err(|e| e.to_string())
        });
        for e in &out {
            let e = e.as_ref().unwrap_err();
            assert!(
                e.contains("ReduceSum of 5 values") || e.contains("asked for"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_aborted_member_fails_the_others_at_once() {
        let out = on_threads(3, |m, mut c| {
            let dev = dev();
            let mut t = Tensor::zeros(&dev, [4], DType::F32).unwrap();
            if m == 2 {
                c.abort();
                return Ok(());
            }
            let started = Instant::now();
            let e = c.reduce_sum(&mut t, 0).map_err(|e| e.to_string());
            assert!(started.elapsed() < Duration::from_secs(5));
            e
        });
        for e in &out[..2] {
            let e = e.as_ref().unwrap_err();
            assert!(e.contains("member 2 left the group"), "{e}");
        }
    }

    #[test]
    fn waits_at_most_the_timeout_naming_who_is_missing() {
        let mut group = ThreadCollective::group(3, Duration::from_millis(50));
        let dev = dev();
        let mut t = Tensor::zeros(&dev, [2], DType::F32).unwrap();
        let e = group[0].reduce_sum(&mut t, 0).unwrap_err().to_string();
        assert!(e.contains("before it joined the group"), "{e}");
        let mut other = ThreadCollective::group(1, Duration::from_millis(50));
        let wrong = other[0].invitation().unwrap();
        let e = group[0].join(&wrong).unwrap_err().to_string();
        assert!(e.contains("not its group's"), "{e}");
        let invitation = group[0].invitation().unwrap();
        group[0].join(&invitation).unwrap();
        let mut t = Tensor::zeros(&dev, [2], DType::F32).unwrap();
        let e = group[0].reduce_sum(&mut t, 0).unwrap_err().to_string();
        assert!(e.contains("for members [1, 2]"), "{e}");
        // The group is broken for the others too: they do not wait out their own timeouts.
        let invitation = group[1].invitation().unwrap();
        group[1].join(&invitation).unwrap();
        let e = group[1].broadcast(&mut t, 0).unwrap_err().to_string();
        assert!(e.contains("member 0 waited"), "{e}");
    }
}
