//! Endpoints spread over several processes, each process with a router (SINGA's stub).
//!
//! An endpoint reaches the endpoints of its own process directly, as in a
//! [`ChannelNetwork`](crate::ChannelNetwork), and every other one through its process's router:
//! the sender copies the payload into a buffer of the wire (what serialising it would do), its
//! router hands the message to the router of the receiver's process, and that router delivers
//! it. Nothing a message carries across is shared with the sender afterwards (the receiver
//! reads the wire buffer, which the sender only writes again for its next message of that
//! kind: see `wire.rs` for why that is safe).
//!
//! Here the processes are emulated inside one OS process and the wire between routers is a
//! channel. A transport between real processes (MPI) replaces that wire, and the parameter
//! and bridge traffic of workers and servers needs no change for it: they already copy what
//! they receive from another process.

use crate::channel::{deliver, queue, ChannelEndpoint, Counters, Inbox, Route};
use crate::fabric::Traffic;
use singa_core::{Addr, Error, Msg, MsgKind, Result, Role};
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The routers of a set of processes, each on a thread of its own. Dropping it stops them.
pub struct ProcessNetwork {
    routers: Vec<(Addr, Inbox, Option<JoinHandle<()>>)>,
    crossed: Arc<Counters>,
}

/// The address of the router of process `process`.
pub fn stub_addr(process: usize) -> Addr {
    Addr {
        group: process as u32,
        id: 0,
        role: Role::Stub,
    }
}

/// The process of every address of `placement` (`placement[p]`: the addresses of process
/// `p`); refuses an address twice, and routers' addresses (the network makes those).
pub(crate) fn process_of(placement: &[Vec<Addr>]) -> Result<HashMap<Addr, usize>> {
    let mut process_of = HashMap::new();
    for (p, addrs) in placement.iter().enumerate() {
        for &a in addrs {
            if a.role == Role::Stub {
                return Err(Error::invalid(format!(
                    "{a} names a router, which the network makes itself"
                )));
            }
            if process_of.insert(a, p).is_some() {
                return Err(Error::invalid(format!("two endpoints are both {a}")));
            }
        }
    }
    Ok(process_of)
}

/// The endpoints of process `p`'s addresses `mine`: they reach each other directly and every
/// other address of `process_of` through `router` (their process's router), copying payloads
/// into wire buffers when `copy` (the router does not serialise them). Returns the endpoints,
/// and the queues of `mine` for the router to deliver into.
pub(crate) fn process_endpoints(
    p: usize,
    mine: &[Addr],
    process_of: &HashMap<Addr, usize>,
    (router, copy): (&Inbox, bool),
    sent: &Arc<Counters>,
) -> (Vec<ChannelEndpoint>, HashMap<Addr, Inbox>) {
    let queues: Vec<(Addr, Inbox, flume::Receiver<Msg>)> = mine
        .iter()
        .map(|&a| {
            let (inbox, rx) = queue(a);
            (a, inbox, rx)
        })
        .collect();
    let local: HashMap<Addr, Inbox> = queues.iter().map(|(a, i, _)| (*a, i.clone())).collect();
    let routes: HashMap<Addr, Route> = process_of
        .iter()
        .map(|(&a, &q)| match q == p {
            true => (a, Route::Direct(local[&a].clone())),
            false => (a, Route::Router(router.clone(), copy)),
        })
        .collect();
    let routes = Arc::new(routes);
    let endpoints = queues
        .into_iter()
        .map(|(a, inbox, rx)| ChannelEndpoint::new(a, rx, inbox.1, &routes, sent))
        .collect();
    (endpoints, local)
}

impl ProcessNetwork {
    /// Connects the endpoints of `placement[p]`, the addresses that live in process `p`: one
    /// endpoint per address, by process, in the order given. Any endpoint can send to any
    /// other; addresses must be distinct.
    pub fn connect(placement: &[Vec<Addr>]) -> Result<(ProcessNetwork, Vec<Vec<ChannelEndpoint>>)> {
        let process_of = Arc::new(process_of(placement)?);
        let stubs: Vec<(Inbox, flume::Receiver<Msg>)> =
            (0..placement.len()).map(|p| queue(stub_addr(p))).collect();
        let stub_inboxes: Arc<Vec<Inbox>> = Arc::new(stubs.iter().map(|s| s.0.clone()).collect());
        let sent = Arc::new(Counters::default());
        let crossed = Arc::new(Counters::default());
        // Routers join the network as they start, so that a failure stops those started.
        let mut net = ProcessNetwork {
            routers: Vec::new(),
            crossed: Arc::clone(&crossed),
        };
        let mut endpoints = Vec::new();
        for (p, ((stub_inbox, stub_rx), mine)) in stubs.into_iter().zip(placement).enumerate() {
            let (ends, local) = process_endpoints(p, mine, &process_of, (&stub_inbox, true), &sent);
            endpoints.push(ends);
            let router = Router {
                addr: stub_addr(p),
                inbox: stub_rx,
                waiter: stub_inbox.1.clone(),
                local,
                stubs: Arc::clone(&stub_inboxes),
                process_of: Arc::clone(&process_of),
                crossed: Arc::clone(&crossed),
            };
            let addr = router.addr;
            let thread = std::thread::Builder::new()
                .name(format!("singa-stub-{p}"))
                .spawn(move || router.run())
                .map_err(|e| {
                    Error::invalid(format!("cannot start the router of process {p}: {e}"))
                })?;
            net.routers.push((addr, stub_inbox, Some(thread)));
        }
        Ok((net, endpoints))
    }

    /// Messages and payload bytes that went from one process to another so far.
    pub fn traffic(&self) -> Traffic {
        self.crossed.read()
    }
}

impl Drop for ProcessNetwork {
    fn drop(&mut self) {
        for (addr, inbox, _) in &self.routers {
            deliver(
                inbox,
                Msg {
                    src: *addr,
                    dst: *addr,
                    kind: MsgKind::Stop,
                    target: 0,
                    slice: 0,
                    version: 0,
                    payload: None.into(),
                },
            );
        }
        for (_, _, thread) in &mut self.routers {
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// One process's router.
struct Router {
    addr: Addr,
    inbox: flume::Receiver<Msg>,
    waiter: Arc<singa_core::park::Waiter>,
    /// The endpoints of its process.
    local: HashMap<Addr, Inbox>,
    /// Every process's router, by process.
    stubs: Arc<Vec<Inbox>>,
    process_of: Arc<HashMap<Addr, usize>>,
    crossed: Arc<Counters>,
}

impl Router {
    /// Forwards messages until told to stop. A message for an endpoint that has stopped is
    /// dropped: its sender learns of the stop from the job, as it would across machines.
    fn run(self) {
        loop {
            let Some(msg) = self.waiter.wait_for(None, || self.inbox.try_recv().ok()) else {
                continue;
            };
            if msg.dst == self.addr {
                if msg.kind == MsgKind::Stop {
                    return;
                }
                continue;
            }
            if let Some(inbox) = self.local.get(&msg.dst) {
                deliver(inbox, msg);
            } else if let Some(&p) = self.process_of.get(&msg.dst) {
                self.crossed.add(&msg);
                deliver(&self.stubs[p], msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use singa_core::{DeviceRef, Tensor, Transport};

    fn worker(id: u32) -> Addr {
        Addr {
            group: 0,
            id,
            role: Role::Worker,
        }
    }

    fn server(id: u32) -> Addr {
        Addr {
            group: 0,
            id,
            role: Role::Server,
        }
    }

    fn msg(src: Addr, dst: Addr, slice: u32, payload: Option<Tensor>) -> Msg {
        Msg {
            src,
            dst,
            kind: MsgKind::Update,
            target: 3,
            slice,
            version: 1,
            payload: payload.into(),
        }
    }

    fn recv(e: &mut ChannelEndpoint) -> Msg {
        e.recv(5000).into_result().unwrap().into_option().unwrap()
    }

    #[test]
    fn messages_within_a_process_share_their_payload_and_across_carry_a_copy() {
        let (net, mut ends) =
            ProcessNetwork::connect(&[vec![worker(0), server(0)], vec![worker(1)]]).unwrap();
        let mut far = ends.pop().unwrap();
        let mut near = ends.pop().unwrap();
        let mut srv = near.pop().unwrap();
        let mut w0 = near.pop().unwrap();
        let mut w1 = far.pop().unwrap();
        let dev = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
        let mut t = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0], [3]).unwrap();

        w0.send(msg(worker(0), server(0), 0, Some(t.clone())))
            .into_result()
            .unwrap();
        let m = recv(&mut srv);
        assert!(m.payload.into_option().unwrap().shares_storage(&t));
        assert_eq!(net.traffic(), Traffic::default(), "nothing crossed");

        w1.send(msg(worker(1), server(0), 0, Some(t.clone())))
            .into_result()
            .unwrap();
        // The sender may overwrite its tensor as soon as the send returns.
        dev.fill(&mut t, 9.0).unwrap();
        let m = recv(&mut srv);
        assert_eq!(m.src, worker(1));
        let p = m.payload.into_option().unwrap();
        assert!(!p.shares_storage(&t));
        assert_eq!(p.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!((net.traffic().messages, net.traffic().bytes), (1, 12));

        // Answers go back through both routers, and empty messages cross too.
        srv.send(msg(server(0), worker(1), 0, None))
            .into_result()
            .unwrap();
        assert_eq!(recv(&mut w1).src, server(0));
        assert_eq!((net.traffic().messages, net.traffic().bytes), (2, 12));
    }

    #[test]
    fn the_wire_buffer_of_a_message_is_reused() {
        let (_net, mut ends) =
            ProcessNetwork::connect(&[vec![worker(0)], vec![server(0)]]).unwrap();
        let mut srv = ends.pop().unwrap().pop().unwrap();
        let mut w = ends.pop().unwrap().pop().unwrap();
        let dev = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
        let t = Tensor::from_slice(&dev, &[1.0f32, 2.0], [2]).unwrap();
        let mut seen: Vec<Tensor> = Vec::new();
        for slice in [0, 1, 0, 1] {
            w.send(msg(worker(0), server(0), slice, Some(t.clone())))
                .into_result()
                .unwrap();
            seen.push(recv(&mut srv).payload.into_option().unwrap());
        }
        assert!(seen[0].shares_storage(&seen[2]) && seen[1].shares_storage(&seen[3]));
        assert!(!seen[0].shares_storage(&seen[1]), "one buffer per slice");
    }

    #[test]
    fn messages_between_processes_keep_their_order() {
        let (_net, mut ends) =
            ProcessNetwork::connect(&[vec![worker(0)], vec![worker(1)], vec![server(0)]]).unwrap();
        let mut srv = ends.pop().unwrap().pop().unwrap();
        let senders: Vec<_> = ends
            .into_iter()
            .map(|mut es| {
                let mut e = es.pop().unwrap();
                std::thread::spawn(move || {
                    for slice in 0..50 {
                        e.send(msg(e.addr(), server(0), slice, None))
                            .into_result()
                            .unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u32; 2];
        for _ in 0..100 {
            let m = recv(&mut srv);
            let from = m.src.id as usize;
            assert_eq!(m.slice, next[from]);
            next[from] += 1;
        }
        for s in senders {
            s.join().unwrap();
        }
    }

    #[test]
    fn an_address_twice_is_refused() {
        assert!(ProcessNetwork::connect(&[vec![worker(0)], vec![worker(0)]]).is_err());
        assert!(ProcessNetwork::connect(&[vec![stub_addr(0)]]).is_err());
    }
}
