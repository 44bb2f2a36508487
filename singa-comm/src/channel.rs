//! The in-process transport: one `flume` channel per endpoint.

use crate::fabric::{is_control, Traffic};
use crate::wire::Wire;
use singa_core::abi::{ROption, RResult};
use singa_core::park::Waiter;
use singa_core::{Addr, Error, Msg, Result, Transport};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The endpoints of a set of threads that talk to each other in one process.
pub struct ChannelNetwork;

/// Messages each endpoint's queue holds without growing.
pub const QUEUE_ROOM: usize = 256;

/// A message that only takes room in a queue.
fn placeholder(addr: Addr) -> Msg {
    Msg {
        src: addr,
        dst: addr,
        kind: singa_core::MsgKind::Stop,
        target: 0,
        slice: 0,
        version: 0,
        payload: None.into(),
    }
}

/// Messages and payload bytes sent through a network, for measurements: training traffic
/// (parameters, bridges) and the control plane (commands, reports, updater state) apart.
#[derive(Default)]
pub(crate) struct Counters {
    messages: AtomicU64,
    bytes: AtomicU64,
    control_messages: AtomicU64,
    control_bytes: AtomicU64,
}

impl Counters {
    /// Counts `msg`.
    pub(crate) fn add(&self, msg: &Msg) {
        let bytes = payload_bytes(msg);
        let (m, b) = match is_control(msg.kind) {
            false => (&self.messages, &self.bytes),
            true => (&self.control_messages, &self.control_bytes),
        };
        m.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(bytes, Ordering::Relaxed);
    }

    /// What was counted so far.
    pub(crate) fn read(&self) -> Traffic {
        Traffic {
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            control_messages: self.control_messages.load(Ordering::Relaxed),
            control_bytes: self.control_bytes.load(Ordering::Relaxed),
        }
    }
}

impl ChannelNetwork {
    /// One connected endpoint per address, in the order given. Any endpoint can send to any
    /// other; addresses must be distinct.
    pub fn connect(addrs: &[Addr]) -> Result<Vec<ChannelEndpoint>> {
        let mut routes = HashMap::with_capacity(addrs.len());
        let mut receivers = Vec::with_capacity(addrs.len());
        for &a in addrs {
            let (inbox, rx) = queue(a);
            if routes.insert(a, Route::Direct(inbox.clone())).is_some() {
                return Err(Error::invalid(format!("two endpoints are both {a}")));
            }
            receivers.push((a, rx, inbox.1));
        }
        let routes = Arc::new(routes);
        let counters = Arc::new(Counters::default());
        Ok(receivers
            .into_iter()
            .map(|(addr, rx, waiter)| ChannelEndpoint::new(addr, rx, waiter, &routes, &counters))
            .collect())
    }
}

/// How to reach an endpoint: its queue, and the thread to wake.
pub(crate) type Inbox = (flume::Sender<Msg>, Arc<Waiter>);

/// A new queue for `addr`, with room for [`QUEUE_ROOM`] messages made in advance.
pub(crate) fn queue(addr: Addr) -> (Inbox, flume::Receiver<Msg>) {
    let (tx, rx) = flume::unbounded();
    // A flume queue grows as messages pile up; fill each one to the most messages a step
    // may leave waiting, so that it never needs to grow (allocate) during training.
    for _ in 0..QUEUE_ROOM {
        let _ = tx.send(placeholder(addr));
    }
    // Popping keeps the queue's room (`drain` would take the queue away).
    while rx.try_recv().is_ok() {}
    ((tx, Arc::new(Waiter::default())), rx)
}

/// The bytes of a message's payload.
pub(crate) fn payload_bytes(msg: &Msg) -> u64 {
    match &msg.payload {
        ROption::RSome(t) => (t.numel() * t.dtype().size()) as u64,
        ROption::RNone => 0,
    }
}

/// Puts `msg` in `inbox` and wakes its thread; false if the receiver has stopped.
pub(crate) fn deliver(inbox: &Inbox, msg: Msg) -> bool {
    if inbox.0.send(msg).is_err() {
        return false;
    }
    inbox.1.wake();
    true
}

/// How an endpoint reaches an address.
#[derive(Clone)]
pub(crate) enum Route {
    /// Straight into its queue: it lives in the same process.
    Direct(Inbox),
    /// Through this process's router, which forwards to the router of the process it lives
    /// in. The payload is copied on the way (by the sender into a wire buffer when the router
    /// hands messages on as they are, `true`; by the router itself when it serialises them,
    /// `false`), as a transport between processes would.
    Router(Inbox, bool),
}

/// One endpoint of a [`ChannelNetwork`] or a [`ProcessNetwork`](crate::ProcessNetwork). Sending
/// never blocks; receiving waits at most the timeout given.
pub struct ChannelEndpoint {
    addr: Addr,
    inbox: flume::Receiver<Msg>,
    waiter: Arc<Waiter>,
    peers: Arc<HashMap<Addr, Route>>,
    counters: Arc<Counters>,
    /// Buffers for payloads copied on their way to another process.
    wire: Wire,
}

impl ChannelEndpoint {
    pub(crate) fn new(
        addr: Addr,
        inbox: flume::Receiver<Msg>,
        waiter: Arc<Waiter>,
        peers: &Arc<HashMap<Addr, Route>>,
        counters: &Arc<Counters>,
    ) -> ChannelEndpoint {
        ChannelEndpoint {
            addr,
            inbox,
            waiter,
            peers: Arc::clone(peers),
            counters: Arc::clone(counters),
            wire: Wire::default(),
        }
    }

    /// Messages and payload bytes sent so far by all endpoints of this network (in a
    /// [`ProcessNetwork`](crate::ProcessNetwork), those within a process included).
    pub fn traffic(&self) -> Traffic {
        self.counters.read()
    }

    fn send_msg(&mut self, mut msg: Msg) -> Result<()> {
        let dst = msg.dst;
        let route = self.peers.get(&dst).ok_or_else(|| {
            Error::invalid(format!("{}: no endpoint {dst} in this network", self.addr))
        })?;
        self.counters.add(&msg);
        let inbox = match route {
            Route::Direct(inbox) => inbox,
            Route::Router(inbox, copy) => {
                if let (true, ROption::RSome(t)) = (copy, &msg.payload) {
                    let copy = self.wire.copy(&msg, t)?;
                    msg.payload = ROption::RSome(copy);
                }
                inbox
            }
        };
        if !deliver(inbox, msg) {
            return Err(Error::invalid(format!("{}: {dst} has stopped", self.addr)));
        }
        Ok(())
    }

    fn recv_msg(&self, timeout_ms: u64) -> Result<Option<Msg>> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        // Waiting parks the thread: a blocking flume receive allocates each time it waits.
        let got = self
            .waiter
            .wait_for(Some(deadline), || match self.inbox.try_recv() {
                Ok(m) => Some(Ok(m)),
                Err(flume::TryRecvError::Empty) => None,
                // Unreachable while this endpoint holds a sender to itself; said plainly anyway.
                Err(flume::TryRecvError::Disconnected) => Some(Err(Error::invalid(format!(
                    "{}: every sender has stopped",
                    self.addr
                )))),
            });
        got.transpose()
    }
}

impl Transport for ChannelEndpoint {
    fn addr(&self) -> Addr {
        self.addr
    }

    fn send(&mut self, msg: Msg) -> RResult<(), Error> {
        self.send_msg(msg).into()
    }

    fn recv(&mut self, timeout_ms: u64) -> RResult<ROption<Msg>, Error> {
        self.recv_msg(timeout_ms).map(ROption::from).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use singa_core::{DeviceRef, MsgKind, Role, Tensor};

    fn addr(role: Role, group: u32, id: u32) -> Addr {
        Addr { group, id, role }
    }

    fn msg(src: Addr, dst: Addr, target: u32, payload: Option<Tensor>) -> Msg {
        Msg {
            src,
            dst,
            kind: MsgKind::Update,
            target,
            slice: 0,
            version: 7,
            payload: payload.into(),
        }
    }

    #[test]
    fn messages_arrive_in_order_with_their_payload_unchanged() {
        let w = addr(Role::Worker, 0, 0);
        let s = addr(Role::Server, 0, 1);
        let mut ends = ChannelNetwork::connect(&[w, s]).unwrap();
        let mut server = ends.pop().unwrap();
        let mut worker = ends.pop().unwrap();
        let dev = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
        let t = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0], [3]).unwrap();
        for target in 0..5 {
            worker
                .send(msg(w, s, target, Some(t.clone())))
                .into_result()
                .unwrap();
        }
        for target in 0..5 {
            let m = server
                .recv(1000)
                .into_result()
                .unwrap()
                .into_option()
                .unwrap();
            assert_eq!((m.src, m.target, m.version), (w, target, 7));
            let p = m.payload.into_option().unwrap();
            assert!(p.shares_storage(&t), "no copy in one process");
            assert_eq!(p.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        }
        let t = worker.traffic();
        assert_eq!((t.messages, t.bytes), (5, 5 * 12));
        assert!(
            server.recv(10).into_result().unwrap().is_none(),
            "times out"
        );
    }

    #[test]
    fn unknown_and_stopped_endpoints_are_errors() {
        let a = addr(Role::Worker, 0, 0);
        let b = addr(Role::Server, 0, 0);
        let mut ends = ChannelNetwork::connect(&[a, b]).unwrap();
        drop(ends.pop());
        let mut a_end = ends.pop().unwrap();
        let e = a_end.send(msg(a, b, 0, None)).into_result().unwrap_err();
        assert!(e.to_string().contains("server 0.0 has stopped"), "{e}");
        let c = addr(Role::Stub, 3, 0);
        let e = a_end.send(msg(a, c, 0, None)).into_result().unwrap_err();
        assert!(e.to_string().contains("no endpoint stub 3.0"), "{e}");
        assert!(ChannelNetwork::connect(&[a, a]).is_err());
    }

    #[test]
    fn threads_exchange_messages() {
        let addrs: Vec<Addr> = (0..4).map(|i| addr(Role::Worker, 0, i)).collect();
        let ends = ChannelNetwork::connect(&addrs).unwrap();
        let handles: Vec<_> = ends
            .into_iter()
            .map(|mut e| {
                let addrs = addrs.clone();
                std::thread::spawn(move || {
                    let me = e.addr();
                    for &other in addrs.iter().filter(|&&o| o != me) {
                        e.send(msg(me, other, me.id, None)).into_result().unwrap();
                    }
                    let mut from: Vec<u32> = (0..3)
                        .map(|_| {
                            e.recv(5000)
                                .into_result()
                                .unwrap()
                                .into_option()
                                .unwrap()
                                .target
                        })
                        .collect();
                    from.sort();
                    from
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let expected: Vec<u32> = (0..4).filter(|&j| j != i as u32).collect();
            assert_eq!(h.join().unwrap(), expected);
        }
    }
}
