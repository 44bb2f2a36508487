//! MPI between the processes of a job (feature `mpi`): one rank per OS process, started by
//! `mpirun`, on one machine or several.
//!
//! Each process has a router thread (SINGA's stub) that owns MPI: it initialises MPI, makes
//! every MPI call, and finalises it, so the rest of singa never touches MPI (and MPI needs
//! only `MPI_THREAD_FUNNELED`). The endpoints of the process reach each other through their
//! queues, as in one process; a message for another rank goes to the router, which writes its
//! header into a buffer kept per receiver, kind, target and slice (no allocation once warm)
//! and starts non-blocking sends: the header, then the payload straight from the tensor's
//! host memory, whole to a rank of the same node, in pieces to one on another node (see
//! [`PIECE`]). Between sends it probes for headers from other ranks, decodes them (see
//! `codec.rs`), starts non-blocking receives of each payload straight into the tensor it will
//! be delivered in, and delivers each rank's messages in the order they came once their
//! payloads are in. A router never blocks in MPI, so two routers sending large messages to
//! each other cannot deadlock, and a large payload coming in does not hold up the messages
//! going out meanwhile (between machines, both directions of the link carry data at once).
//! When there is nothing to do it yields, then sleeps for short spells: MPI cannot wake a
//! thread, and OpenMPI's blocking calls would keep a core busy. It asks the scheduler for short slices, so that it runs as soon as
//! it wakes even while a worker computes on its core.

use crate::channel::{deliver, queue, Counters, Inbox};
use crate::codec::{self, Payloads};
use crate::fabric::{Endpoints, Fabric, Placement, ReceiveTargets, Traffic};
use crate::process::{process_endpoints, process_of, stub_addr};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use singa_core::{Addr, DeviceRef, Error, Msg, MsgKind, Result};
use std::collections::HashMap;
use std::io::Write;
use std::os::raw::{c_int, c_void};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The tag of every message's header (MPI keeps messages of one tag between two ranks in
/// order).
const TAG: c_int = 7;

/// The tag of every payload: a rank's payloads come in the order of its headers.
const PAYLOAD_TAG: c_int = 8;

/// The largest piece of a payload between nodes, in bytes. A message larger than the
/// transport's eager limit (OpenMPI's TCP: 64 KiB) waits for the receiver's go-ahead, which
/// travels behind whatever the receiver is sending on the same connection: two nodes sending
/// large payloads to each other would take turns on the link instead of using both directions
/// at once (measured: half the throughput; docs/PERFORMANCE.md). Pieces under the eager limit
/// (with room for MPI's own header) go at once. Within a node (shared memory, single-copy)
/// whole payloads are faster.
const PIECE: usize = 60 * 1024;

/// The pieces of a payload of `n` bytes to or from a rank on another node (`apart`), or of
/// one on the same node (whole, unless longer than an MPI count can say): (offset, length)
/// of each.
fn pieces(n: usize, apart: bool) -> impl Iterator<Item = (usize, usize)> {
    const MAX_COUNT: usize = i32::MAX as usize;
    let piece = if apart { PIECE } else { n.clamp(1, MAX_COUNT) };
    (0..n).step_by(piece).map(move |at| (at, piece.min(n - at)))
}

/// Whether an MPI launcher (`mpirun`, `mpiexec`, `srun`) started this process: the variables
/// OpenMPI, MPICH and PMIx set for each rank.
pub fn launched() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// The MPI library's name and version (`Open MPI v4.1.4`), read without initialising MPI
/// (MPI allows it before `MPI_Init`).
pub fn library_version() -> String {
    match mpi::environment::library_version() {
        // "Open MPI v4.1.4, package: ...": the name and version.
        Ok(text) => text
            .split([',', '\n'])
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(e) => format!("(version unreadable: {e})"),
    }
}

/// What the MPI thread is asked to do.
enum Request {
    /// Every rank's bytes, in rank order (a collective: every rank must ask).
    AllGather(Vec<u8>, flume::Sender<Vec<Vec<u8>>>),
    /// Route messages until told to stop.
    Route(Box<Router>),
}

/// MPI, initialised on a thread of its own. Dropping it (or the fabric it became) finalises
/// MPI once every rank has come to the same point.
pub struct Mpi {
    rank: usize,
    size: usize,
    /// This process's node (MPI's processor name: the host name; or `SINGA_MPI_NODE`).
    node: String,
    requests: Option<flume::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Mpi {
    /// Initialises MPI on a new thread; an error if it cannot (MPI already initialised, or the
    /// launcher's environment is broken).
    pub fn init() -> Result<Mpi> {
        let (requests, inbox) = flume::unbounded();
        let (ready_tx, ready) = flume::bounded(1);
        let thread = std::thread::Builder::new()
            .name("singa-mpi".into())
            .spawn(move || mpi_main(inbox, ready_tx))
            .map_err(|e| Error::invalid(format!("cannot start the MPI thread: {e}")))?;
        let mut mpi = Mpi {
            rank: 0,
            size: 1,
            node: String::new(),
            requests: Some(requests),
            thread: Some(thread),
        };
        let (rank, size, node) = ready
            .recv()
            .map_err(|_| Error::invalid("the MPI thread stopped while starting MPI"))??;
        (mpi.rank, mpi.size, mpi.node) = (rank, size, node);
        Ok(mpi)
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    fn ask(&self, request: Request) -> Result<()> {
        self.requests
            .as_ref()
            .and_then(|r| r.send(request).ok())
            .ok_or_else(|| Error::invalid("the MPI thread has stopped"))
    }

    /// Every rank's `mine`, in rank order. Every rank must call it (it is an MPI collective):
    /// the ranks compare their jobs this way before they build anything.
    pub fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (tx, rx) = flume::bounded(1);
        self.ask(Request::AllGather(mine.to_vec(), tx))?;
        rx.recv()
            .map_err(|_| Error::invalid("the MPI thread stopped during an all-gather"))
    }

    /// Connects the endpoints of `placement` (`placement[r]`: rank `r`'s addresses; there must
    /// be one entry per rank) and starts routing. Payloads from other ranks arrive in tensors
    /// on `host`. When the fabric is dropped, its router waits at most `linger` for the other
    /// ranks to be done too.
    pub fn connect(
        self,
        placement: &Placement,
        host: DeviceRef,
        linger: Duration,
    ) -> Result<MpiFabric> {
        if placement.len() != self.size {
            return Err(Error::invalid(format!(
                "the job places its workers and servers on {} processes, but mpirun started {} (run mpirun -np {})",
                placement.len(),
                self.size,
                placement.len()
            )));
        }
        let rank_of = process_of(placement)?;
        // Payloads to and from ranks on other nodes go in pieces (see `PIECE`).
        let nodes = self.all_gather(self.node.as_bytes())?;
        let apart = nodes.iter().map(|n| *n != nodes[self.rank]).collect();
        let me = self.rank;
        let (router_inbox, outbound) = queue(stub_addr(me));
        let sent = Arc::new(Counters::default());
        let crossed = Arc::new(Counters::default());
        // The router serialises what it sends: the payload is read then, and its sender leaves it
        // alone until the receiver is done with it (see `wire.rs`), so no copy before.
        let (ends, local) =
            process_endpoints(me, &placement[me], &rank_of, (&router_inbox, false), &sent);
        let targets = ReceiveTargets::default();
        let router = Router {
            addr: stub_addr(me),
            outbound,
            local,
            rank_of,
            payloads: Payloads::new(host, targets.clone()),
            crossed: Arc::clone(&crossed),
            slots: HashMap::new(),
            in_flight: Vec::new(),
            received: Vec::new(),
            // Room for more pieces (128 MiB of them) and messages than a step of the
            // benchmarks has in flight, so that a busier step than the first ones does not grow
            // the queues (a larger one grows them once, then they keep their capacity).
            arriving: (0..self.size)
                .map(|_| Inbound {
                    messages: std::collections::VecDeque::with_capacity(256),
                    requests: std::collections::VecDeque::with_capacity(4096),
                })
                .collect(),
            apart,
            linger,
        };
        self.ask(Request::Route(Box::new(router)))?;
        Ok(MpiFabric {
            rank: me,
            size: self.size,
            endpoints: Mutex::new(Some(
                Endpoints::new(me, &placement[me], ends).with_targets(targets),
            )),
            router: router_inbox,
            crossed,
            mpi: Some(self),
        })
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        // The thread finalises MPI once its queue closes.
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The MPI thread: initialises MPI, serves requests until the queue closes, finalises.
fn mpi_main(
    requests: flume::Receiver<Request>,
    ready: flume::Sender<Result<(usize, usize, String)>>,
) {
    let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
    else {
        let _ = ready.send(Err(Error::invalid(
            "MPI could not be initialised (was it initialised already?)",
        )));
        return;
    };
    let world = universe.world();
    // `SINGA_MPI_NODE` names the node instead (tests give ranks of one machine different
    // nodes, so that their payloads go in pieces).
    let node = std::env::var("SINGA_MPI_NODE")
        .ok()
        .or_else(|| mpi::environment::processor_name().ok())
        .unwrap_or_default();
    let _ = ready.send(Ok((world.rank() as usize, world.size() as usize, node)));
    while let Ok(request) = requests.recv() {
        match request {
            Request::AllGather(mine, reply) => {
                let _ = reply.send(all_gather(&world, &mine));
            }
            Request::Route(mut router) => router.run(&world),
        }
    }
    // Dropping the universe finalises MPI.
    drop(universe);
}

/// Every rank's bytes: their lengths first, then the bytes padded to the longest.
fn all_gather(world: &SimpleCommunicator, mine: &[u8]) -> Vec<Vec<u8>> {
    let n = world.size() as usize;
    let mut lens = vec![0u64; n];
    world.all_gather_into(&(mine.len() as u64), &mut lens[..]);
    let longest = lens.iter().copied().max().unwrap_or(0) as usize;
    let mut padded = mine.to_vec();
    padded.resize(longest, 0);
    let mut all = vec![0u8; longest * n];
    world.all_gather_into(&padded[..], &mut all[..]);
    all.chunks(longest.max(1))
        .zip(&lens)
        .map(|(c, &l)| c[..l as usize].to_vec())
        .chain(std::iter::repeat_with(Vec::new))
        .take(n)
        .collect()
}

/// One message's worth of sending: its header buffer, the payload it sends from, and the
/// sends in flight.
struct Slot {
    header: [u8; codec::MAX_HEADER],
    /// The payload being sent, kept alive until its send is done.
    payload: Option<singa_core::Tensor>,
    /// Where a payload outside host memory is copied first.
    staging: Vec<u8>,
    /// The header's and the payload's sends (completed ones are `MPI_REQUEST_NULL`; empty
    /// when none is in flight).
    requests: Requests,
}

/// Requests of MPI operations in flight.
#[derive(Default)]
struct Requests(Vec<ffi::MPI_Request>);

// SAFETY: requests are made, tested and completed on the MPI thread only; the router that
// holds them is built elsewhere (with none yet) and moved there before it runs.
unsafe impl Send for Requests {}

impl std::ops::Deref for Requests {
    type Target = Vec<ffi::MPI_Request>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Requests {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A message from another rank whose header is in: delivered once the receives of its
/// payload's pieces (the first `pieces` of its rank's [`Inbound::requests`]) are done.
struct Arriving {
    msg: Msg,
    pieces: usize,
}

/// What is coming from one rank: its messages whose headers came, in order, and the receives
/// of their payloads' pieces, in the same order. Both queues keep their capacity, so a warm
/// step allocates nothing.
struct Inbound {
    messages: std::collections::VecDeque<Arriving>,
    requests: std::collections::VecDeque<ffi::MPI_Request>,
}

// SAFETY: as for `Requests`.
unsafe impl Send for Inbound {}

/// The key of a send buffer: the message's receiver, kind, target and slice (see
/// [`slot_key`]).
type SlotKey = (Addr, MsgKind, u32, u32);

/// The send buffer of `msg`: one per receiver, kind, target and slice for a message with a
/// payload; a message without one (a command, a part of a norm) may carry a number in its
/// `slice` (a step, a loss scale), so those share one buffer per receiver, kind and target,
/// rather than making a buffer for every number.
fn slot_key(msg: &Msg) -> SlotKey {
    let slice = match msg.payload.is_some() {
        true => msg.slice,
        false => 0,
    };
    (msg.dst, msg.kind, msg.target, slice)
}

/// This rank's router.
struct Router {
    addr: Addr,
    /// Messages from this rank's endpoints for other ranks.
    outbound: flume::Receiver<Msg>,
    /// This rank's endpoints.
    local: HashMap<Addr, Inbox>,
    rank_of: HashMap<Addr, usize>,
    payloads: Payloads,
    crossed: Arc<Counters>,
    slots: HashMap<SlotKey, Slot>,
    /// Slots whose send is in flight.
    in_flight: Vec<SlotKey>,
    /// Where a message's header from another rank is received.
    received: Vec<u8>,
    /// Per rank, its messages whose headers came, until they are delivered.
    arriving: Vec<Inbound>,
    /// Per rank, whether it is on another node (its payloads go in pieces).
    apart: Vec<bool>,
    /// How long to wait for the other ranks at the end.
    linger: Duration,
}

impl Router {
    /// Routes until a `Stop` addressed to the router comes, then finishes its sends and waits
    /// (receiving and dropping what still comes) until every rank has stopped routing.
    fn run(&mut self, world: &SimpleCommunicator) {
        ask_for_short_slices();
        let mut idle_since = Instant::now();
        loop {
            let mut busy = false;
            while let Ok(msg) = self.outbound.try_recv() {
                busy = true;
                if msg.dst == self.addr {
                    if msg.kind == MsgKind::Stop {
                        return self.finish(world);
                    }
                    continue;
                }
                self.send(world, msg);
            }
            busy |= self.test_sends();
            while self.receive(world) {
                busy = true;
            }
            busy |= self.deliver_arrived();
            if busy {
                idle_since = Instant::now();
            } else {
                pause(idle_since);
            }
        }
    }

    /// Starts sending `msg` to its rank: its header from its slot's buffer, its payload from
    /// the tensor (once the slot's last sends are done). A message that cannot be encoded is
    /// dropped, said on standard error.
    fn send(&mut self, world: &SimpleCommunicator, msg: Msg) {
        let Some(&rank) = self.rank_of.get(&msg.dst) else {
            return;
        };
        let key = slot_key(&msg);
        self.wait_for_slot(world, key);
        let slot = self.slots.entry(key).or_insert_with(|| Slot {
            header: [0; codec::MAX_HEADER],
            payload: None,
            staging: Vec::new(),
            requests: Requests::default(),
        });
        let sent = codec::encode_header(&msg, &mut slot.header).and_then(|len| {
            let payload = msg.payload.as_ref().into_option().cloned();
            let body = match &payload {
                // SAFETY: the sender leaves a payload alone until its receiver is done with
                // it (see `wire.rs`), which is after this send; the slot keeps it alive.
                Some(t) => Some(match unsafe { t.host_bytes() } {
                    Some(bytes) => bytes,
                    None => {
                        let n = t.numel() * t.dtype().size();
                        slot.staging.resize(n, 0);
                        t.read_bytes(&mut slot.staging)?;
                        (slot.staging.as_mut_ptr(), n)
                    }
                }),
                None => None,
            };
            Ok((len, body, payload))
        });
        let (len, body, payload) = match sent {
            Ok(x) => x,
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "singa: {}: cannot send {:?} to {}: {e}",
                    self.addr,
                    msg.kind,
                    msg.dst
                );
                return;
            }
        };
        self.crossed.add(&msg);
        let isend = |ptr: *const u8, n: usize, tag: c_int| {
            let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
            // SAFETY: the bytes stay allocated and untouched until the request completes: the
            // slot's header and staging are only written again after `wait_for_slot`, the
            // payload is kept in the slot, and no slot is dropped before `finish` has
            // completed every request.
            unsafe {
                ffi::MPI_Isend(
                    ptr as *const c_void,
                    n as c_int,
                    ffi::RSMPI_UINT8_T,
                    rank as c_int,
                    tag,
                    world.as_raw(),
                    &mut request,
                );
            }
            request
        };
        slot.requests.clear();
        slot.requests.push(isend(slot.header.as_ptr(), len, TAG));
        if let Some((ptr, n)) = body {
            for (at, len) in pieces(n, self.apart[rank]) {
                // SAFETY: `at + len <= n`, inside the payload.
                slot.requests
                    .push(isend(unsafe { ptr.add(at) }, len, PAYLOAD_TAG));
            }
        }
        slot.payload = payload;
        self.in_flight.push(key);
    }

    /// Waits until the sends from slot `key` (if any) are done, receiving meanwhile.
    fn wait_for_slot(&mut self, world: &SimpleCommunicator, key: SlotKey) {
        while self.slots.get(&key).is_some_and(|s| !s.requests.is_empty()) {
            self.test_sends();
            self.receive(world);
            self.deliver_arrived();
        }
    }

    /// Completes the sends that are done; true if any was.
    fn test_sends(&mut self) -> bool {
        let mut any = false;
        let mut i = 0;
        while i < self.in_flight.len() {
            let slot = self
                .slots
                .get_mut(&self.in_flight[i])
                .expect("a slot in flight");
            if all_done(&mut slot.requests) {
                slot.requests.clear();
                any = true;
            }
            if slot.requests.is_empty() {
                slot.payload = None;
                self.in_flight.swap_remove(i);
            } else {
                i += 1;
            }
        }
        any
    }

    /// Delivers, for each rank, its messages whose payloads are in, in the order they came;
    /// true if any was.
    fn deliver_arrived(&mut self) -> bool {
        let mut any = false;
        for inbound in &mut self.arriving {
            while let Some(front) = inbound.messages.front() {
                let pieces = front.pieces;
                let (first, _) = inbound.requests.as_mut_slices();
                // The pieces' receives, contiguous (made so when they straddle the ring's end).
                let done = if first.len() >= pieces {
                    all_done(&mut first[..pieces])
                } else {
                    all_done(&mut inbound.requests.make_contiguous()[..pieces])
                };
                if !done {
                    break;
                }
                inbound.requests.drain(..pieces);
                let arrived = inbound.messages.pop_front().expect("a front");
                // A message for an endpoint that has stopped is dropped: its sender learns of
                // the stop from the job.
                if let Some(inbox) = self.local.get(&arrived.msg.dst) {
                    deliver(inbox, arrived.msg);
                }
                any = true;
            }
        }
        any
    }

    /// Receives one message's header from another rank, if one has come, and starts the
    /// receive of its payload straight into the tensor it is delivered in (delivered by
    /// [`Router::deliver_arrived`]).
    fn receive(&mut self, world: &SimpleCommunicator) -> bool {
        let Some((message, status)) = world.any_process().immediate_matched_probe_with_tag(TAG)
        else {
            return false;
        };
        let n = status.count(u8::equivalent_datatype()) as usize;
        let from = status.source_rank();
        if self.received.len() < n {
            self.received.resize(n, 0);
        }
        message.matched_receive_into(&mut self.received[..n]);
        let msg = codec::decode_header(&self.received[..n], &mut self.payloads);
        let payload = match &msg {
            Ok(m) => m.payload.as_ref().into_option().cloned(),
            Err(_) => None,
        };
        let inbound = &mut self.arriving[from as usize];
        let mut pieces_of = 0;
        if let Some(t) = payload {
            // SAFETY: a payload tensor of the router's own, whose last message's receiver is
            // done with it (see `wire.rs`) before a message with the same key comes; or the
            // receiver's own for this key (`Endpoints::receive_into`), whose protocol keeps
            // every other use of those elements out of the time such a message can be in
            // flight. The message (holding the tensor) is kept until the receives are done.
            let (ptr, len) = unsafe { t.host_bytes() }.expect("payloads are made in host memory");
            for (at, n) in pieces(len, self.apart[from as usize]) {
                let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
                // SAFETY: as above, `at + n <= len`; payloads from one rank match these
                // receives in the order they are started, the order the sender sent its
                // headers and pieces in (MPI does not reorder messages of one sender and tag).
                unsafe {
                    ffi::MPI_Irecv(
                        ptr.add(at) as *mut c_void,
                        n as c_int,
                        ffi::RSMPI_UINT8_T,
                        from as c_int,
                        PAYLOAD_TAG,
                        world.as_raw(),
                        &mut request,
                    );
                }
                inbound.requests.push_back(request);
                pieces_of += 1;
            }
        }
        match msg {
            Ok(msg) => inbound.messages.push_back(Arriving {
                msg,
                pieces: pieces_of,
            }),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "singa: {}: a message from rank {from} cannot be read: {e}",
                    self.addr
                );
                // Its payload's pieces, if it has one, are taken off too: the next header's
                // payload is then the next one received. Where the header does not say how
                // long the payload is, the rank's messages can no longer be told apart.
                let Some(len) = codec::payload_len(&self.received[..n]) else {
                    let _ = writeln!(
                        std::io::stderr(),
                        "singa: {}: the payload's length is unreadable too; aborting MPI",
                        self.addr
                    );
                    world.abort(1);
                };
                for _ in pieces(len, self.apart[from as usize]) {
                    let (message, status) = world
                        .process_at_rank(from)
                        .matched_probe_with_tag(PAYLOAD_TAG);
                    let mut lost = vec![0u8; status.count(u8::equivalent_datatype()) as usize];
                    message.matched_receive_into(&mut lost[..]);
                }
            }
        }
        true
    }

    /// Finishes every send, then waits for every rank to come here, receiving (and dropping)
    /// what still arrives so that no rank's send waits on this one, and for every receive
    /// started meanwhile (MPI may be writing into its tensor). A rank that does not come
    /// within `linger` is given up on: MPI is aborted, which ends every rank.
    fn finish(&mut self, world: &SimpleCommunicator) {
        while !self.in_flight.is_empty() || self.arriving.iter().any(|i| !i.messages.is_empty()) {
            self.test_sends();
            self.receive(world);
            self.deliver_arrived();
        }
        // The barrier until every rank has come (then `None`).
        let mut barrier = Some(world.immediate_barrier());
        let deadline = Instant::now() + self.linger;
        let mut idle_since = Instant::now();
        loop {
            if let Some(b) = barrier.take() {
                barrier = b.test().err();
            }
            if barrier.is_none() && self.arriving.iter().all(|i| i.messages.is_empty()) {
                return;
            }
            if self.receive(world) | self.deliver_arrived() {
                idle_since = Instant::now();
            } else {
                pause(idle_since);
            }
            if Instant::now() > deadline {
                let _ = writeln!(
                    std::io::stderr(),
                    "singa: {}: the other ranks did not finish within {} s; aborting MPI",
                    self.addr,
                    self.linger.as_secs()
                );
                world.abort(1);
            }
        }
    }
}

/// Whether every request of `requests` is done (completing those that are).
fn all_done(requests: &mut [ffi::MPI_Request]) -> bool {
    if requests.is_empty() {
        return true;
    }
    let mut done: c_int = 0;
    // SAFETY: requests started by this router (or already completed: null).
    unsafe {
        ffi::MPI_Testall(
            requests.len() as c_int,
            requests.as_mut_ptr(),
            &mut done,
            ffi::RSMPI_STATUSES_IGNORE,
        )
    };
    done != 0
}

/// Waits a little when there was nothing to do since `idle_since`: yields the core for the
/// first 50 µs, then sleeps 50 µs at a time.
fn pause(idle_since: Instant) {
    if idle_since.elapsed() < Duration::from_micros(50) {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// A job's ranks over MPI: this process holds one rank's endpoints.
pub struct MpiFabric {
    rank: usize,
    size: usize,
    endpoints: Mutex<Option<Endpoints>>,
    router: Inbox,
    crossed: Arc<Counters>,
    mpi: Option<Mpi>,
}

impl Fabric for MpiFabric {
    fn engine(&self) -> &'static str {
        crate::fabric::MPI
    }

    fn ranks(&self) -> usize {
        self.size
    }

    fn local_ranks(&self) -> std::ops::Range<usize> {
        self.rank..self.rank + 1
    }

    fn take_rank(&self, rank: usize) -> Result<Endpoints> {
        if rank != self.rank {
            return Err(Error::invalid(format!(
                "rank {rank} lives in another process (this is rank {})",
                self.rank
            )));
        }
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::invalid(format!("rank {rank}'s endpoints were taken already")))
    }

    fn traffic(&self) -> Traffic {
        self.crossed.read()
    }
}

impl Drop for MpiFabric {
    fn drop(&mut self) {
        let me = stub_addr(self.rank);
        deliver(
            &self.router,
            Msg {
                src: me,
                dst: me,
                kind: MsgKind::Stop,
                target: 0,
                slice: 0,
                version: 0,
                payload: None.into(),
            },
        );
        // Waits for the router's end and finalises MPI.
        drop(self.mpi.take());
    }
}

/// Asks Linux for short scheduler slices on this thread (the router), so that when it wakes
/// from a pause it runs at once instead of after the slice of a worker computing on the same
/// core: a message then waits for its router for microseconds, not a millisecond. Linux 6.12
/// and later read `sched_runtime` of a normal thread as its slice; earlier kernels ignore it.
/// Nothing changes if the call is refused.
#[cfg(target_os = "linux")]
fn ask_for_short_slices() {
    /// `struct sched_attr` of `sched_setattr(2)`.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    /// The shortest slice Linux allows.
    const SLICE_NS: u64 = 100_000;
    // SAFETY: getpriority and sched_setattr on the calling thread, with a valid attribute
    // of the size given.
    unsafe {
        // The thread's nice value, kept (an unprivileged thread may not lower it).
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: libc::SCHED_OTHER as u32,
            flags: 0,
            nice,
            priority: 0,
            runtime: SLICE_NS,
            deadline: 0,
            period: 0,
        };
        libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn ask_for_short_slices() {}

#[cfg(test)]
mod tests {
    use super::*;
    use singa_core::Role;

    /// Messages without payload that carry a changing number in `slice` (a `Norm` part names
    /// its step there) reuse one send buffer; payloads keep one per slice.
    #[test]
    fn numbers_in_a_message_without_payload_make_no_new_buffer() {
        let dst = Addr {
            group: 0,
            id: 1,
            role: Role::Server,
        };
        let msg = |slice: u32, payload: Option<singa_core::Tensor>| Msg {
            src: dst,
            dst,
            kind: MsgKind::Norm,
            target: 0,
            slice,
            version: 0,
            payload: payload.into(),
        };
        assert_eq!(slot_key(&msg(7, None)), slot_key(&msg(8, None)));
        let dev = DeviceRef::new(singa_cpu::ReferenceDevice::new());
        let t = singa_core::Tensor::from_slice(&dev, &[1.0f32], [1]).unwrap();
        assert_ne!(
            slot_key(&msg(7, Some(t.clone()))),
            slot_key(&msg(8, Some(t)))
        );
    }
}
