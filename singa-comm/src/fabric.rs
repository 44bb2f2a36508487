//! A job's endpoints, by rank: the one way the runtime gets its transports.
//!
//! The runtime says which addresses live in which rank (process) of the job, a
//! [`Placement`]; a [`Fabric`] connects them and hands each rank its endpoints. Whatever the
//! engine under it, an endpoint is a [`ChannelEndpoint`]: it reaches the endpoints of its own
//! rank through their queues, and every other one through its rank's router, which copies the
//! payload on the way. The engines:
//! - [`LocalFabric`] with one rank: threads of one process and their queues;
//! - [`LocalFabric`] with several ranks: processes emulated inside this one, a router thread
//!   each, the wire between routers a queue (what tests and `--dry-run` use);
//! - `MpiFabric` (feature `mpi`): one rank per OS process, the wire between routers MPI.

use crate::channel::{ChannelEndpoint, ChannelNetwork};
use crate::collective::{Collective, ThreadCollective};
use crate::process::ProcessNetwork;
use singa_core::{Addr, Error, MsgKind, Result, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which addresses live in which rank: `placement[r]` are rank `r`'s.
pub type Placement = [Vec<Addr>];

/// Whether messages of `kind` belong to the control plane (commands, reports, updater state)
/// rather than to training (parameters, bridges). They are counted apart, and their payloads
/// are not copied into reused buffers.
pub fn is_control(kind: MsgKind) -> bool {
    matches!(kind, MsgKind::Control | MsgKind::Report | MsgKind::State)
}

/// Messages and payload bytes that crossed between ranks: training traffic and the control
/// plane apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Parameter and bridge messages.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Commands, reports and updater state.
    pub control_messages: u64,
    /// Their payload bytes.
    pub control_bytes: u64,
}

impl std::ops::Add for Traffic {
    type Output = Traffic;
    fn add(self, o: Traffic) -> Traffic {
        Traffic {
            messages: self.messages + o.messages,
            bytes: self.bytes + o.bytes,
            control_messages: self.control_messages + o.control_messages,
            control_bytes: self.control_bytes + o.control_bytes,
        }
    }
}

/// One rank's endpoints, by address.
pub struct Endpoints {
    rank: usize,
    by_addr: HashMap<Addr, ChannelEndpoint>,
    /// Where the engine receives payloads of given keys, when it can (MPI).
    targets: Option<ReceiveTargets>,
}

/// The key of a payload: sender, receiver, kind, target and slice.
pub(crate) type PayloadKey = (Addr, Addr, MsgKind, u32, u32);

/// Tensors that payloads of given keys are received straight into (see
/// [`Endpoints::receive_into`]), shared with the engine's router.
pub(crate) type ReceiveTargets = Arc<Mutex<HashMap<PayloadKey, Tensor>>>;

impl Endpoints {
    pub(crate) fn new(rank: usize, addrs: &[Addr], ends: Vec<ChannelEndpoint>) -> Endpoints {
        Endpoints {
            rank,
            by_addr: addrs.iter().copied().zip(ends).collect(),
            targets: None,
        }
    }

    /// The same, with payloads received into the tensors [`Endpoints::receive_into`] names.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn with_targets(self, targets: ReceiveTargets) -> Endpoints {
        Endpoints {
            targets: Some(targets),
            ..self
        }
    }

    /// Asks the engine to receive the payloads of the messages of `kind` from `src` to `dst`
    /// about `target` and `slice` straight into `into` (a host tensor of their shape and
    /// dtype), so that the receiver finds them in place: a worker's parameter slice for the
    /// fresh values a server in another process sends it. The engine writes `into` on its own
    /// thread whenever such a message arrives, past the tensors' access checks: the protocol
    /// must guarantee that nothing reads or writes those elements while one can be in flight
    /// (for fresh values: the server needs this worker's gradient of the slice first, and the
    /// worker waits for the values before it uses the slice again). Returns whether the engine
    /// takes such requests (MPI does; engines that pass tensors or copy them through buffers of
    /// their own ignore them); a payload whose shape, dtype or device differ from `into`'s is
    /// received into the engine's own buffer as before.
    pub fn receive_into(
        &mut self,
        (src, dst): (Addr, Addr),
        kind: MsgKind,
        (target, slice): (u32, u32),
        into: Tensor,
    ) -> bool {
        let Some(targets) = &self.targets else {
            return false;
        };
        targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((src, dst, kind, target, slice), into);
        true
    }

    /// Takes the endpoint of `addr`.
    pub fn take(&mut self, addr: Addr) -> Result<ChannelEndpoint> {
        self.by_addr.remove(&addr).ok_or_else(|| {
            Error::invalid(format!(
                "rank {} has no endpoint {addr} (or it was taken already)",
                self.rank
            ))
        })
    }

    /// The rank these endpoints belong to.
    pub fn rank(&self) -> usize {
        self.rank
    }
}

/// [`Fabric::engine`] of the threads of one process.
pub const THREADS: &str = "threads";

/// [`Fabric::engine`] of ranks emulated as processes inside one.
pub const EMULATED_PROCESSES: &str = "processes emulated in this one";

/// [`Fabric::engine`] of ranks in processes of their own, over MPI.
pub const MPI: &str = "MPI";

/// The engine that connects a job's endpoints, seen by the runtime.
pub trait Fabric: Send + Sync {
    /// What carries messages between ranks, for logs ("threads", "MPI", ...).
    fn engine(&self) -> &'static str;

    /// The ranks of the job.
    fn ranks(&self) -> usize;

    /// The ranks whose endpoints this OS process can take: all of them in one process, its
    /// own under MPI.
    fn local_ranks(&self) -> std::ops::Range<usize>;

    /// The endpoints of rank `rank` (once; later calls are errors).
    fn take_rank(&self, rank: usize) -> Result<Endpoints>;

    /// What crossed between ranks so far (sent by this OS process's ranks).
    fn traffic(&self) -> Traffic;

    /// Rank `rank`'s member of a group of every rank (see [`Collective`]), each member waiting
    /// at most `timeout` for the others; once per rank. An error where this fabric carries no
    /// collectives (between real processes they come from the devices: NCCL between GPUs).
    fn collective(&self, rank: usize, timeout: Duration) -> Result<Box<dyn Collective>> {
        let _ = (rank, timeout);
        Err(Error::invalid(format!(
            "{} carries no collectives between its ranks: they come from the devices (NCCL \
             between CUDA GPUs); set [cluster] collective = false to sum through the servers' \
             messages",
            self.engine()
        )))
    }
}

/// Every rank of a job inside this OS process: one rank's endpoints talk through their
/// queues; several ranks are emulated processes, each with a router thread (see
/// [`ProcessNetwork`]).
pub struct LocalFabric {
    ranks: Mutex<Vec<Option<Endpoints>>>,
    count: usize,
    /// The routers, when there are several ranks (dropped last).
    routers: Option<ProcessNetwork>,
    /// The members of the ranks' collective group not yet taken (made on first ask).
    collectives: Mutex<Option<Vec<Option<ThreadCollective>>>>,
}

impl LocalFabric {
    /// Connects the addresses of `placement`.
    pub fn connect(placement: &Placement) -> Result<LocalFabric> {
        let (routers, ends) = match placement {
            [one] => (None, vec![ChannelNetwork::connect(one)?]),
            _ => {
                let (net, ends) = ProcessNetwork::connect(placement)?;
                (Some(net), ends)
            }
        };
        let ranks = placement
            .iter()
            .zip(ends)
            .enumerate()
            .map(|(r, (addrs, ends))| Some(Endpoints::new(r, addrs, ends)))
            .collect();
        Ok(LocalFabric {
            ranks: Mutex::new(ranks),
            count: placement.len(),
            routers,
            collectives: Mutex::new(None),
        })
    }
}

impl Fabric for LocalFabric {
    fn engine(&self) -> &'static str {
        match self.count {
            1 => THREADS,
            _ => EMULATED_PROCESSES,
        }
    }

    fn ranks(&self) -> usize {
        self.count
    }

    fn local_ranks(&self) -> std::ops::Range<usize> {
        0..self.count
    }

    fn take_rank(&self, rank: usize) -> Result<Endpoints> {
        let mut ranks = self.ranks.lock().unwrap_or_else(|p| p.into_inner());
        ranks
            .get_mut(rank)
            .and_then(Option::take)
            .ok_or_else(|| Error::invalid(format!("rank {rank}'s endpoints were taken already")))
    }

    fn traffic(&self) -> Traffic {
        self.routers
            .as_ref()
            .map_or_else(Traffic::default, ProcessNetwork::traffic)
    }

    /// A member of a group whose members meet in this process's memory.
    fn collective(&self, rank: usize, timeout: Duration) -> Result<Box<dyn Collective>> {
        let mut members = self.collectives.lock().unwrap_or_else(|p| p.into_inner());
        let members = members.get_or_insert_with(|| {
            ThreadCollective::group(self.count, timeout)
                .into_iter()
                .map(Some)
                .collect()
        });
        let member = members
            .get_mut(rank)
            .and_then(Option::take)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "rank {rank}'s collective member was taken already (or the job has {} ranks)",
                    self.count
                ))
            })?;
        Ok(Box::new(member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use singa_core::{Msg, Role, Transport};

    fn addr(role: Role, id: u32) -> Addr {
        Addr { group: 0, id, role }
    }

    fn ping(src: Addr, dst: Addr, kind: MsgKind) -> Msg {
        Msg {
            src,
            dst,
            kind,
            target: 0,
            slice: 0,
            version: 0,
            payload: None.into(),
        }
    }

    #[test]
    fn ranks_are_taken_once_and_count_what_crosses_by_plane() {
        let w = addr(Role::Worker, 0);
        let c = addr(Role::Control, 0);
        let s = addr(Role::Server, 0);
        let fabric = LocalFabric::connect(&[vec![w, c], vec![s]]).unwrap();
        assert_eq!((fabric.ranks(), fabric.local_ranks()), (2, 0..2));
        let mut r0 = fabric.take_rank(0).unwrap();
        assert!(fabric.take_rank(0).is_err());
        let mut r1 = fabric.take_rank(1).unwrap();
        assert!(r1.take(w).is_err(), "w lives in rank 0");
        let mut server = r1.take(s).unwrap();
        r0.take(w)
            .unwrap()
            .send(ping(w, s, MsgKind::Update))
            .into_result()
            .unwrap();
        r0.take(c)
            .unwrap()
            .send(ping(c, s, MsgKind::Control))
            .into_result()
            .unwrap();
        for _ in 0..2 {
            assert!(server.recv(5000).into_result().unwrap().is_some());
        }
        let t = fabric.traffic();
        assert_eq!((t.messages, t.control_messages), (1, 1));
    }
}
