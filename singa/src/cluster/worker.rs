//! A worker's side of the parameter traffic, and the threads that run workers beside the
//! coordinating one, commanded through the control plane.

use super::build::{SharedGrad, Sharing};
use super::control::{self, Command, Op, Outcome};
use super::latch::BackwardLatch;
use super::server::ServerCore;
use super::slices::Slice;
use super::TransportBox;
use crate::algorithm::{GradientSink, TrainOneBatch};
use crate::net::NeuralNet;
use crate::params::ParamStore;
use singa_comm::Collective;
use singa_core::{Addr, DeviceRef, Error, Msg, MsgKind, Result, Tensor};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One slice of a parameter as a worker sees it.
struct LinkSlice {
    index: u32,
    /// The server that holds it, and that server's index in its group.
    server: Addr,
    owner: usize,
    /// The worker's gradient of these values (a view).
    grad: Tensor,
    /// The worker's copy of these values (a view).
    value: Tensor,
}

/// With ranks apart: a gradient the worker computes in blocks of rows, one slice at a time,
/// the slices that servers on other ranks hold first, each sent as soon as its rows are done.
/// The first layer's weight gradient, the largest and the last of the backward pass, would
/// otherwise leave only when all of it is computed; this way its transfer to the other ranks
/// overlaps the rest of the product. Its layer agreed to leave the gradient out of `backward`
/// ([`NeuralNet::share_param_grad`]).
pub(crate) struct RowBlocks {
    /// The parameter (its index in the store).
    param: usize,
    /// The layer that computes its gradient, and the parameter's position among the layer's.
    layer: usize,
    position: usize,
    /// In sending order, per slice: the runs of rows to compute first (their first row and a
    /// view of them in the gradient; none when rows computed for other slices cover it), then
    /// the slice (its index among the parameter's) to send.
    order: Vec<(Vec<(usize, Tensor)>, usize)>,
}

impl RowBlocks {
    /// The blocks of the gradient `grad` of parameter `param` (the `position`-th of layer
    /// `layer`) cut into `slices`, those for which `first` holds sent first. A row shared by
    /// two slices is computed once, before the first of them is sent, and never written after.
    pub fn new(
        param: usize,
        (layer, position): (usize, usize),
        grad: &Tensor,
        slices: &[Slice],
        first: impl Fn(&Slice) -> bool,
    ) -> Result<RowBlocks> {
        let rows = grad.shape().dim(0).max(1);
        let row_len = grad.numel() / rows;
        let mut computed = vec![false; rows];
        let (early, late): (Vec<usize>, Vec<usize>) =
            (0..slices.len()).partition(|&i| first(&slices[i]));
        let mut order = Vec::with_capacity(slices.len());
        for i in early.into_iter().chain(late) {
            let sl = &slices[i];
            let (a, b) = (sl.offset / row_len, (sl.offset + sl.len).div_ceil(row_len));
            let mut runs = Vec::new();
            let mut r = a;
            while r < b {
                if computed[r] {
                    r += 1;
                    continue;
                }
                let end = (r..b).find(|&e| computed[e]).unwrap_or(b);
                computed[r..end].fill(true);
                runs.push((r, grad.narrow(r, end - r)?));
                r = end;
            }
            order.push((runs, i));
        }
        Ok(RowBlocks {
            param,
            layer,
            position,
            order,
        })
    }
}

/// A worker's end of the parameter traffic: sends the gradient slices of each parameter to
/// their servers as soon as the layer that computes them is done (so communication overlaps
/// the rest of the backward pass), then waits for the fresh values and installs them.
pub(crate) struct WorkerLink {
    transport: TransportBox,
    /// Per parameter of the store: its slices (none for parameters no server updates).
    slices: Vec<Vec<LinkSlice>>,
    /// Parameters whose gradients are complete once a layer's backward is done.
    ready_after: Vec<Vec<usize>>,
    /// Fresh slices to receive per step.
    expected: usize,
    timeout: Duration,
    /// The other workers of the group, told when this one fails so that they stop waiting.
    colleagues: Vec<Addr>,
    /// Fresh slices still to receive in this step.
    missing: usize,
    /// The server that runs on this worker's thread (AllReduce), if any.
    server: Option<ServerCore>,
    /// The gradients this worker computes blocks of rows of, with the rest of its group.
    shared: Vec<SharedGrad>,
    /// Per parameter of the store: its index in `shared`, if it is there.
    shared_index: Vec<Option<usize>>,
    /// The gradients computed and sent in blocks of rows (ranks apart).
    row_blocks: Vec<RowBlocks>,
    /// Per parameter of the store: its index in `row_blocks`, if it is there.
    row_index: Vec<Option<usize>>,
    /// Where the workers sharing gradients say their backward pass is done (none when this
    /// worker shares none).
    latch: Option<BackwardLatch>,
    /// Whether a colleague or server said it stopped: this worker's failure is then a
    /// consequence, not a cause.
    saw_stop: bool,
    /// Whether the servers skipped the current step (its loss-scaled gradients overflowed).
    skipped: bool,
    /// This worker's member of the group that sums the gradients and broadcasts the fresh
    /// values in place of messages (`[cluster] collective`), if any.
    collective: Option<Box<dyn Collective>>,
    /// Whether this worker's member has joined its group (see [`WorkerLink::join_collective`]).
    joined: bool,
}

/// The `target` of the `Put` that carries worker 0's invitation to a collective group to the
/// other workers (not a parameter's).
const INVITATION: u32 = u32::MAX;

impl WorkerLink {
    /// The link of a worker whose parameters are `store`, sliced as `slices` over `servers`,
    /// computing the gradients of `sharing` with the other workers of `group`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        transport: TransportBox,
        store: &ParamStore,
        slices: &[Vec<Slice>],
        servers: &[Addr],
        ready_after: Vec<Vec<usize>>,
        timeout: Duration,
        group: &[Addr],
        sharing: Sharing,
    ) -> Result<WorkerLink> {
        let shared = sharing.grads;
        let me = transport.addr();
        let colleagues = group.iter().copied().filter(|&a| a != me).collect();
        let mut shared_index = vec![None; store.entries().len()];
        for (i, s) in shared.iter().enumerate() {
            shared_index[s.param] = Some(i);
        }
        let mut expected = 0;
        let slices = store
            .entries()
            .iter()
            .zip(slices)
            .zip(&shared_index)
            .map(|((e, ss), sh)| {
                let n = e.value.numel();
                // What the servers read: the group's gradient when it is shared.
                let grad = sh.map_or(&e.grads[0], |i| &shared[i].whole);
                let flat_grad = grad.reshape([n])?;
                let flat_value = e.value.reshape([n])?;
                ss.iter()
                    .map(|s| {
                        expected += 1;
                        Ok(LinkSlice {
                            index: s.index,
                            server: servers[s.server],
                            owner: s.server,
                            grad: flat_grad.narrow(s.offset, s.len)?,
                            value: flat_value.narrow(s.offset, s.len)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(WorkerLink {
            transport,
            slices,
            ready_after,
            expected,
            timeout,
            colleagues,
            missing: 0,
            server: None,
            shared,
            shared_index,
            row_blocks: Vec::new(),
            row_index: Vec::new(),
            latch: sharing.latch,
            saw_stop: false,
            skipped: false,
            collective: None,
            joined: false,
        })
    }

    /// Sums each gradient with the other workers' through `member` (at the worker beside the
    /// slice's server, which updates it) and takes the fresh values from its broadcasts,
    /// instead of messages to the servers. Member `i` is worker `i` of the group, beside
    /// server `i`.
    pub fn with_collective(mut self, member: Box<dyn Collective>) -> Self {
        self.collective = Some(member);
        self
    }

    /// Computes and sends the gradients of `blocks` in blocks of rows (see [`RowBlocks`]).
    pub fn with_row_blocks(mut self, blocks: Vec<RowBlocks>, params: usize) -> Self {
        self.row_index = vec![None; params];
        for (i, b) in blocks.iter().enumerate() {
            self.row_index[b.param] = Some(i);
        }
        self.row_blocks = blocks;
        self
    }

    /// Whether a colleague or server said it stopped (see [`Outcome::Interrupted`]).
    pub fn saw_stop(&self) -> bool {
        self.saw_stop
    }

    /// Runs `server` on this worker's thread: it receives gradients at this worker's address.
    pub fn with_server(mut self, server: ServerCore) -> Self {
        self.server = Some(server);
        self
    }

    /// Tells the other workers of the group that this one has stopped.
    pub fn tell_stopped(&mut self) {
        if let Some(c) = &mut self.collective {
            // Members waiting in a collective read no messages.
            c.abort();
        }
        let me = self.transport.addr();
        for &w in &self.colleagues {
            let _ = self.transport.send(super::server::stop(me, w));
        }
    }

    /// This worker's address.
    pub fn addr(&self) -> Addr {
        self.transport.addr()
    }

    /// Whether the servers skipped the last step this worker trained: its gradients, scaled
    /// by the loss scale, overflowed somewhere (see [`crate::cluster::norm`]).
    pub fn skipped(&self) -> bool {
        self.skipped
    }

    /// Runs one training step of `net`: TrainOneBatch with the gradients going to the
    /// servers, then the fresh values coming back.
    pub fn train_step(
        &mut self,
        net: &mut NeuralNet,
        store: &mut ParamStore,
        algorithm: &mut dyn TrainOneBatch,
        step: u64,
    ) -> Result<()> {
        // With a collective every slice is fresh once its gradient has been sent.
        self.missing = match self.collective {
            Some(_) => 0,
            None => self.expected,
        };
        self.skipped = false;
        let mut sink = SendGradients {
            link: self,
            store,
            step,
        };
        algorithm
            .train_one_batch(net, step, &mut sink)
            .map_err(|e| crate::finite::explain(e, store))?;
        if self.latch.is_some() {
            self.finish_shared_grads(net, store, step)?;
        }
        self.await_params(step)
    }

    /// Once every colleague's backward pass is done, adds their batches' parts to this
    /// worker's rows of the shared gradients (and its own, unless that is in since its
    /// layers' backward), and sends them.
    fn finish_shared_grads(
        &mut self,
        net: &mut NeuralNet,
        store: &mut ParamStore,
        step: u64,
    ) -> Result<()> {
        self.await_group_backward(step)?;
        for i in 0..self.shared.len() {
            self.shared[i].after_group_backward(net)?;
            let param = self.shared[i].param;
            self.send_gradients(store, param, step)?;
        }
        Ok(())
    }

    /// Says that this worker's backward pass of `step` is done and waits until the others of
    /// its group say so too, serving what arrives meanwhile.
    fn await_group_backward(&mut self, step: u64) -> Result<()> {
        let me = self.transport.addr();
        let Some(latch) = self.latch.clone() else {
            return Ok(());
        };
        latch.arrive(step);
        let deadline = Instant::now() + self.timeout;
        loop {
            let transport = &mut self.transport;
            // Both the latch and the transport wake this thread: it waits on either.
            let got = latch.waiter().wait_for(Some(deadline), || {
                if latch.missing(step) == 0 {
                    return Some(Ok(None));
                }
                match transport.recv(0).into_result() {
                    Ok(msg) => msg.into_option().map(|m| Ok(Some(m))),
                    Err(e) => Some(Err(e)),
                }
            });
            let msg = match got {
                Some(got) => got?,
                None => {
                    return Err(Error::invalid(format!(
                        "{me}: waited {} s in step {} for the backward pass of {} of the other {} workers of its group (raise cluster.timeout if that takes longer)",
                        self.timeout.as_secs(),
                        step + 1,
                        latch.missing(step),
                        self.colleagues.len()
                    )))
                }
            };
            let Some(msg) = msg else {
                return Ok(());
            };
            if msg.kind == MsgKind::Stop {
                self.saw_stop = true;
                let during = format!(
                    "this worker waited for its group's backward passes of step {}",
                    step + 1
                );
                return Err(interrupted(me, &msg, &during));
            }
            self.handle(msg, step)?;
        }
    }

    fn send_gradients(&mut self, store: &mut ParamStore, param: usize, step: u64) -> Result<()> {
        let e = &mut store.entries_mut()[param];
        if e.grads.len() > 1 {
            // A shared parameter: its users' gradients add up.
            let dev = e.value.device().clone();
            let (first, rest) = e.grads.split_at_mut(1);
            for g in rest.iter() {
                dev.axpby(1.0, g, 1.0, &mut first[0])?;
            }
        }
        if self.collective.is_some() {
            return self.reduce_and_broadcast(param, step);
        }
        for i in 0..self.slices[param].len() {
            self.send_slice(param, i, step)?;
        }
        self.drain(step)
    }

    /// Parameter `param`'s slices through the collective: each slice's gradients summed at
    /// the worker beside its server, which updates the slice with the sum, then the fresh
    /// values broadcast from there to every worker.
    fn reduce_and_broadcast(&mut self, param: usize, step: u64) -> Result<()> {
        if !self.joined {
            self.join_collective(step)?;
        }
        let me = self.transport.addr();
        let collective = self.collective.as_mut().expect("checked by the caller");
        let member = collective.member();
        for s in self.slices[param].iter_mut() {
            collective.reduce_sum(&mut s.grad, s.owner)?;
            if s.owner != member {
                continue;
            }
            let server = self.server.as_mut().ok_or_else(|| {
                Error::invalid(format!(
                    "{me}: collective member {member} holds no server to update parameter {param} slice {}",
                    s.index
                ))
            })?;
            let key = (param as u32, s.index);
            let fresh = server
                .update_with_sum(key, step, s.grad.clone(), &mut self.transport)
                .map_err(|e| e.context(format!("{me} (its server)")))?;
            if !fresh.same_view(&s.value) {
                s.value.copy_from(&fresh)?;
            }
        }
        for s in self.slices[param].iter_mut() {
            collective.broadcast(&mut s.value, s.owner)?;
        }
        Ok(())
    }

    /// Sends this worker's gradient of slice `i` of parameter `param` to its server.
    fn send_slice(&mut self, param: usize, i: usize, step: u64) -> Result<()> {
        let s = &self.slices[param][i];
        self.transport
            .send(Msg {
                src: self.transport.addr(),
                dst: s.server,
                kind: MsgKind::Update,
                target: param as u32,
                slice: s.index,
                version: step,
                payload: Some(s.grad.clone()).into(),
            })
            .into_result()
    }

    /// Joins the collective group before its first operation, where its members meet through
    /// an invitation (see [`Collective::needs_invitation`]): worker 0 sends its member's to
    /// the other workers as a `Put`, and they wait for it.
    fn join_collective(&mut self, step: u64) -> Result<()> {
        let me = self.transport.addr();
        let member = self.collective.as_mut().expect("checked by the caller");
        if !member.needs_invitation() {
            self.joined = true;
            return Ok(());
        }
        let invitation = match member.member() {
            0 => {
                let bytes = member.invitation()?;
                // In host memory, whatever the worker's device: bytes for the transport.
                let host = crate::device::create(&crate::config::DeviceConfig::cpu(1), None)?;
                let payload = Tensor::from_slice(&host, &bytes, [bytes.len()])?;
                for &w in &self.colleagues {
                    self.transport
                        .send(Msg {
                            src: me,
                            dst: w,
                            kind: MsgKind::Put,
                            target: INVITATION,
                            slice: 0,
                            version: step,
                            payload: Some(payload.clone()).into(),
                        })
                        .into_result()?;
                }
                bytes
            }
            _ => self.await_invitation()?,
        };
        let member = self.collective.as_mut().expect("checked by the caller");
        member
            .join(&invitation)
            .map_err(|e| e.context(format!("{me} joining its collective group")))?;
        self.joined = true;
        Ok(())
    }

    /// Worker 0's invitation to the collective group, once it comes.
    fn await_invitation(&mut self) -> Result<Vec<u8>> {
        let me = self.transport.addr();
        let deadline = Instant::now() + self.timeout;
        let Some(msg) = self.recv_until(deadline)? else {
            return Err(Error::invalid(format!(
                "{me}: waited {} s for worker 0's invitation to the collective group (raise cluster.timeout if starting takes longer)",
                self.timeout.as_secs()
            )));
        };
        if msg.kind == MsgKind::Put && msg.target == INVITATION {
            if let Some(bytes) = msg.payload.into_option() {
                return bytes.to_vec::<u8>();
            }
            return Err(Error::invalid(format!("{me}: an empty invitation")));
        }
        self.saw_stop |= msg.kind == MsgKind::Stop;
        Err(interrupted(
            me,
            &msg,
            "this worker waited for its invitation to the collective group",
        ))
    }

    /// Computes the gradient of `row_blocks[b]` block by block, sending each slice as soon as
    /// its rows are done.
    fn send_in_row_blocks(&mut self, net: &mut NeuralNet, b: usize, step: u64) -> Result<()> {
        let (param, layer, position) = {
            let rb = &self.row_blocks[b];
            (rb.param, rb.layer, rb.position)
        };
        for k in 0..self.row_blocks[b].order.len() {
            let (runs, slice) = &mut self.row_blocks[b].order[k];
            for (start, rows) in runs.iter_mut() {
                net.param_grad_rows(layer, position, *start, None, false, rows)?;
            }
            let slice = *slice;
            self.send_slice(param, slice, step)?;
        }
        self.drain(step)
    }

    /// Sends this worker's values of every slice to the server that holds it in each server
    /// group of `groups` (their servers' addresses), as round `round` of `Put`s.
    pub fn put_all(&mut self, round: u64, groups: &[Vec<Addr>]) -> Result<()> {
        let me = self.transport.addr();
        for (param, slices) in self.slices.iter().enumerate() {
            for s in slices {
                for servers in groups {
                    self.transport
                        .send(Msg {
                            src: me,
                            dst: servers[s.owner],
                            kind: MsgKind::Put,
                            target: param as u32,
                            slice: s.index,
                            version: round,
                            payload: Some(s.value.clone()).into(),
                        })
                        .into_result()?;
                }
            }
        }
        Ok(())
    }

    /// Asks the servers for the values of every slice as of round `round` of `Put`s (`Get`),
    /// and installs them as they come.
    pub fn get_all(&mut self, round: u64) -> Result<()> {
        let me = self.transport.addr();
        for (param, slices) in self.slices.iter().enumerate() {
            for s in slices {
                self.transport
                    .send(Msg {
                        src: me,
                        dst: s.server,
                        kind: MsgKind::Get,
                        target: param as u32,
                        slice: s.index,
                        version: round,
                        payload: None.into(),
                    })
                    .into_result()?;
            }
        }
        let deadline = Instant::now() + self.timeout;
        let mut missing = self.expected;
        while missing > 0 {
            let Some(msg) = self.recv_until(deadline)? else {
                return Err(Error::invalid(format!(
                    "{me}: waited {} s for the values of {missing} parameter slices from the servers (raise cluster.timeout if that takes longer)",
                    self.timeout.as_secs()
                )));
            };
            match msg.kind {
                MsgKind::Updated if msg.version == round => {
                    self.install(msg)?;
                    missing -= 1;
                }
                // The server beside this worker answers its part of the round.
                MsgKind::Put | MsgKind::Get if self.server.is_some() => self.serve(msg)?,
                _ => {
                    self.saw_stop |= msg.kind == MsgKind::Stop;
                    return Err(interrupted(me, &msg, "this worker waited for values"));
                }
            }
        }
        Ok(())
    }

    /// Hands a message for the server beside this worker to it.
    fn serve(&mut self, msg: Msg) -> Result<()> {
        let me = self.transport.addr();
        let server = self.server.as_mut().ok_or_else(|| {
            Error::invalid(format!(
                "{me}: a {:?} message from {} for a server, but none runs beside this worker",
                msg.kind, msg.src
            ))
        })?;
        match msg.kind {
            MsgKind::Update => server.receive(msg, &mut self.transport),
            MsgKind::Put => server.on_put(msg, &mut self.transport),
            MsgKind::Get => server.on_get(msg, &mut self.transport),
            MsgKind::State => server.on_state(msg),
            MsgKind::Norm => server.on_norm(msg, &mut self.transport),
            other => Err(Error::invalid(format!(
                "{me}: a {other:?} message from {} for its server",
                msg.src
            ))),
        }
        .map_err(|e| e.context(format!("{me} (its server)")))
    }

    /// The server beside this worker sends its updater state to the coordinator.
    pub fn state_out(&mut self) -> Result<()> {
        match &self.server {
            Some(server) => server.state_out(&mut self.transport),
            None => Ok(()),
        }
    }

    /// The server beside this worker takes in the updater state the coordinator sent it:
    /// serves messages until all of it has come.
    pub fn state_in(&mut self) -> Result<()> {
        let me = self.transport.addr();
        let Some(server) = &self.server else {
            return Ok(());
        };
        let mut missing = server.state_tensors();
        let deadline = Instant::now() + self.timeout;
        while missing > 0 {
            let Some(msg) = self.recv_until(deadline)? else {
                return Err(Error::invalid(format!(
                    "{me}: waited {} s for {missing} updater state tensors from the coordinator",
                    self.timeout.as_secs()
                )));
            };
            match msg.kind {
                MsgKind::State => {
                    self.serve(msg)?;
                    missing -= 1;
                }
                _ => {
                    self.saw_stop |= msg.kind == MsgKind::Stop;
                    return Err(interrupted(
                        me,
                        &msg,
                        "this worker's server took in its state",
                    ));
                }
            }
        }
        self.server.as_mut().map(ServerCore::take_states_in);
        Ok(())
    }

    /// The next message, or `None` once `deadline` has passed.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<Msg>> {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = self.transport.recv(left.as_millis() as u64).into_result()?;
        Ok(msg.into_option())
    }

    /// Copies the values an `Updated` message carries into this worker's copy of the slice.
    fn install(&mut self, msg: Msg) -> Result<()> {
        let me = self.transport.addr();
        let fresh = msg.payload.into_option().ok_or_else(|| {
            Error::invalid(format!(
                "{me}: fresh values without values from {}",
                msg.src
            ))
        })?;
        let slice = self
            .slices
            .get_mut(msg.target as usize)
            .and_then(|s| s.get_mut(msg.slice as usize))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{me}: {} sent parameter {} slice {}, which does not exist",
                    msg.src, msg.target, msg.slice
                ))
            })?;
        // Nothing to copy when the values are already in place: in one process the group's
        // workers and servers share them, the server beside this worker updates them in place,
        // and the MPI router receives the other servers' straight into them (see
        // `build_rank`). A payload anywhere else in the same memory is copied all the same.
        if !fresh.same_view(&slice.value) {
            slice.value.copy_from(&fresh)?;
        }
        Ok(())
    }

    /// Receives the fresh values of every slice updated in `step` (serving the gradients that
    /// arrive for the server beside this worker, if it has one).
    fn await_params(&mut self, step: u64) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        while self.missing > 0 {
            let Some(msg) = self.recv_until(deadline)? else {
                return Err(self.timeout_error(step, self.missing));
            };
            self.handle(msg, step)?;
        }
        Ok(())
    }

    /// Handles the messages already waiting, without blocking: while the backward pass goes
    /// on, the server beside this worker updates the slices whose gradients are all in.
    fn drain(&mut self, step: u64) -> Result<()> {
        while let Some(msg) = self.transport.recv(0).into_result()?.into_option() {
            self.handle(msg, step)?;
        }
        Ok(())
    }

    fn handle(&mut self, msg: Msg, step: u64) -> Result<()> {
        let me = self.transport.addr();
        match msg.kind {
            MsgKind::Updated if msg.version == step => {
                // Without values: the servers skipped the step, the values stand.
                match msg.payload.is_none() {
                    true => self.skipped = true,
                    false => self.install(msg)?,
                }
                self.missing -= 1;
                Ok(())
            }
            MsgKind::Update | MsgKind::Norm if self.server.is_some() => self.serve(msg),
            MsgKind::Stop => {
                self.saw_stop = true;
                Err(Error::invalid(format!(
                    "{me}: {} stopped while this worker waited for step {} values",
                    msg.src,
                    step + 1
                )))
            }
            _ => Err(Error::invalid(format!(
                "{me}: unexpected {:?} message from {} (step {}) in step {}",
                msg.kind,
                msg.src,
                msg.version + 1,
                step + 1
            ))),
        }
    }

    /// Takes part in a round of synchronising the server groups (after the step `step`): runs
    /// the server beside this worker, if it synchronises, until its part is over.
    pub fn sync(&mut self, step: u64) -> Result<()> {
        let me = self.transport.addr();
        if !self.server.as_ref().is_some_and(ServerCore::syncs) {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let Some(msg) = self.recv_until(deadline)? else {
                return Err(Error::invalid(format!(
                    "{me}: waited {} s for the server groups to synchronise after step {} (the server beside this worker has not finished)",
                    self.timeout.as_secs(),
                    step + 1,
                )));
            };
            match msg.kind {
                MsgKind::Sync => {
                    let server = self.server.as_mut().expect("checked");
                    if server
                        .on_sync(msg, &mut self.transport)
                        .map_err(|e| e.context(format!("{me} (its server)")))?
                    {
                        return Ok(());
                    }
                }
                _ => {
                    self.saw_stop |= msg.kind == MsgKind::Stop;
                    return Err(interrupted(me, &msg, "the server groups synchronised"));
                }
            }
        }
    }

    fn timeout_error(&self, step: u64, missing: usize) -> Error {
        let mut servers: Vec<String> = self
            .slices
            .iter()
            .flatten()
            .map(|s| s.server.to_string())
            .collect();
        servers.sort();
        servers.dedup();
        Error::invalid(format!(
            "{}: waited {} s for {missing} fresh parameter slices of step {} from {} (raise cluster.timeout if a step takes longer)",
            self.transport.addr(),
            self.timeout.as_secs(),
            step + 1,
            servers.join(", ")
        ))
    }
}

/// What `me` says of `msg`, which came while `during`: its sender stopped, or it was not
/// expected then.
fn interrupted(me: Addr, msg: &Msg, during: &str) -> Error {
    match msg.kind {
        MsgKind::Stop => Error::invalid(format!("{me}: {} stopped while {during}", msg.src)),
        other => Error::invalid(format!(
            "{me}: unexpected {other:?} message from {} while {during}",
            msg.src
        )),
    }
}

/// The gradient sink of a distributed worker.
struct SendGradients<'a> {
    link: &'a mut WorkerLink,
    store: &'a mut ParamStore,
    step: u64,
}

impl GradientSink for SendGradients<'_> {
    fn layer_done(&mut self, net: &mut NeuralNet, layer: usize) -> Result<()> {
        for i in 0..self.link.ready_after[layer].len() {
            let p = self.link.ready_after[layer][i];
            let rows = self.link.row_index.get(p).copied().flatten();
            match (self.link.shared_index[p], rows) {
                // The rest, and the sending, once every backward pass is done.
                (Some(s), _) => self.link.shared[s].after_own_backward(net)?,
                (None, Some(b)) => self.link.send_in_row_blocks(net, b, self.step)?,
                (None, None) => self.link.send_gradients(self.store, p, self.step)?,
            }
        }
        Ok(())
    }
}

/// A worker that runs on its own thread, commanded by the coordinator through its control
/// endpoint.
pub(crate) struct PeerWorker {
    pub net: NeuralNet,
    pub store: ParamStore,
    pub link: WorkerLink,
    pub algorithm: Box<dyn TrainOneBatch>,
    /// Its rank's bridges, told when it fails.
    pub exchanges: Arc<crate::partition::Exchanges>,
    /// Where its commands come.
    pub control: TransportBox,
    /// Where its reports' payloads are made.
    pub dev: DeviceRef,
    /// Sees every step it starts.
    pub on_step: Option<super::node::StepHook>,
}

impl PeerWorker {
    /// Serves commands until told to stop. A failure (a panic too) is reported to the
    /// coordinator and told to the other workers of the group, and ends the thread; the
    /// result says whether it failed.
    pub fn run(mut self) -> bool {
        let me = self.link.addr();
        loop {
            let msg = match self
                .control
                .recv(1000)
                .into_result()
                .map(|m| m.into_option())
            {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(_) => return true,
            };
            let cmd = match msg.kind {
                MsgKind::Control => control::decode_command(&msg),
                MsgKind::Stop => return false,
                other => Err(Error::invalid(format!(
                    "{me}: a {other:?} message from {} at its control endpoint",
                    msg.src
                ))),
            };
            let (op, arg) = cmd.as_ref().map_or((Op::Stop, 0), |c| (c.op, c.arg));
            if op == Op::Stop && cmd.is_ok() {
                return false;
            }
            let outcome = cmd
                .and_then(|cmd| singa_core::catch_panic("the worker", || self.handle(cmd)))
                .map_err(|e| e.context(me.to_string()));
            let failed = outcome.is_err();
            let outcome = match outcome {
                Ok(metrics) => Outcome::Done(metrics),
                Err(e) => {
                    let interrupted =
                        self.link.saw_stop() || self.exchanges.saw_stop(me.group, me.id);
                    self.link.tell_stopped();
                    self.exchanges.tell_stopped(me.group, me.id);
                    match interrupted {
                        true => Outcome::Interrupted(e.to_string()),
                        false => Outcome::Failed(e.to_string()),
                    }
                }
            };
            let sent = control::report(me, op, arg, &outcome, &self.dev)
                .and_then(|r| self.control.send(r).into_result());
            if sent.is_err() || failed {
                return true;
            }
        }
    }

    /// Sets this worker's fixed parameters to worker 0's `values` (a worker that holds part
    /// of the net skips those it does not have).
    fn set_fixed(&mut self, values: &[(String, Vec<f32>)]) -> Result<()> {
        for (name, v) in values {
            let Some(i) = self.store.find(name) else {
                continue;
            };
            let e = &mut self.store.entries_mut()[i];
            if e.trainable || e.value.numel() != v.len() {
                return Err(Error::invalid(format!(
                    "{name}: worker 0 sent {} values of a fixed parameter; this worker's is {} with {} values",
                    v.len(),
                    if e.trainable { "trainable" } else { "fixed" },
                    e.value.numel()
                )));
            }
            e.value.write_from(v)?;
        }
        Ok(())
    }

    fn handle(&mut self, cmd: Command) -> Result<Vec<(String, f64)>> {
        match cmd.op {
            Op::Step => {
                if let Some(hook) = &self.on_step {
                    hook(cmd.arg);
                }
                self.net.set_loss_scale(cmd.loss_scale);
                self.link.train_step(
                    &mut self.net,
                    &mut self.store,
                    &mut *self.algorithm,
                    cmd.arg,
                )?;
                Ok(Vec::new())
            }
            Op::Metrics => self.net.read_metrics(),
            Op::Sync => self.link.sync(cmd.arg).map(|_| Vec::new()),
            Op::Refresh => self.link.get_all(cmd.arg).map(|_| Vec::new()),
            Op::StateOut => self.link.state_out().map(|_| Vec::new()),
            Op::StateIn => self.link.state_in().map(|_| Vec::new()),
            Op::Restore => {
                for (layer, state) in &cmd.states {
                    self.net.restore_layer_state(layer, state)?;
                }
                Ok(Vec::new())
            }
            Op::Fixed => self.set_fixed(&cmd.values).map(|_| Vec::new()),
            Op::Stop | Op::Ready => Err(Error::invalid(format!("a worker cannot {:?}", cmd.op))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use singa_core::DType;

    proptest! {
        /// Whatever the slices' boundaries and which go first: the slices go in that order,
        /// every row of the gradient is computed exactly once, and before every slice that
        /// holds part of it is sent.
        #[test]
        fn row_blocks_compute_each_row_once_before_its_slices_leave(
            rows in 1usize..24,
            cols in 1usize..9,
            cuts in proptest::collection::vec(0.0f64..1.0, 0..5),
            firsts in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let dev = singa_core::DeviceRef::new(singa_cpu::ReferenceDevice::new());
            let grad = Tensor::zeros(&dev, [rows, cols], DType::F32).unwrap();
            let n = rows * cols;
            let mut bounds: Vec<usize> = cuts.iter().map(|c| (c * n as f64) as usize).collect();
            bounds.extend([0, n]);
            bounds.sort_unstable();
            bounds.dedup();
            let slices: Vec<Slice> = bounds
                .windows(2)
                .enumerate()
                .map(|(i, w)| Slice { param: 0, index: i as u32, offset: w[0], len: w[1] - w[0], server: i })
                .collect();
            let first = |sl: &Slice| firsts[sl.server];
            let b = RowBlocks::new(0, (0, 0), &grad, &slices, first).unwrap();
            let order: Vec<usize> = b.order.iter().map(|(_, i)| *i).collect();
            let expected: Vec<usize> = (0..slices.len())
                .filter(|&i| first(&slices[i]))
                .chain((0..slices.len()).filter(|&i| !first(&slices[i])))
                .collect();
            prop_assert_eq!(order, expected);
            let mut computed_at = vec![None; rows];
            for (k, (runs, i)) in b.order.iter().enumerate() {
                for (start, view) in runs {
                    let run = &mut computed_at[*start..start + view.shape().dim(0)];
                    prop_assert!(run.iter().all(Option::is_none), "rows from {} twice", start);
                    run.fill(Some(k));
                }
                let sl = &slices[*i];
                let held = &computed_at[sl.offset / cols..(sl.offset + sl.len).div_ceil(cols)];
                prop_assert!(held.iter().all(|at| at.is_some_and(|at| at <= k)), "slice {} not ready", i);
            }
            prop_assert!(computed_at.iter().all(Option::is_some));
        }
    }
}
