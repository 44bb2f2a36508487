//! Servers: they hold slices of the parameters and run the updater on them.

use super::control::{self, Op, Outcome};
use super::norm::{GlobalNorm, Verdict};
use super::topology::COORDINATOR;
use super::TransportBox;
use singa_core::{Addr, DeviceRef, Error, Msg, MsgKind, Result, Tensor, UpdateArgs, UpdaterBox};
use singa_layers::schedule::LrSchedule;
use std::collections::HashMap;

/// The `target` of a `State` message that carries the loss scaler's state, not a slice's.
pub(crate) const LOSS_SCALER_STATE: u32 = u32::MAX;

/// One parameter slice a server updates.
pub(crate) struct ServerSlice {
    /// The parameter and slice numbers messages name it by.
    pub key: (u32, u32),
    /// The values the updater changes (the master copy).
    pub value: Tensor,
    /// The updater's state for these values.
    pub state: Vec<Tensor>,
    /// The parameter's learning-rate and weight-decay multipliers.
    pub lr_mult: f32,
    /// See `lr_mult`.
    pub wd_mult: f32,
    /// Per worker group, the group's copy of these values, which the server refreshes after
    /// each update from the group (in one process; it is `value` itself when the group uses
    /// the master copy).
    pub replicas: Vec<Tensor>,
    /// Where the gradients are summed, when not into the first worker's: for a parameter
    /// split along the features whose workers each have a gradient of their own, zero outside
    /// their rows. Summing into one of those would leave other rows in it for the next step.
    pub sum: Option<Tensor>,
}

/// The gradients of one slice received from one worker group in its current step.
struct Collecting {
    grads: Vec<Option<Tensor>>,
    received: usize,
    step: u64,
}

/// A slice and what is being collected for it.
struct Pending {
    slice: ServerSlice,
    groups: Vec<Collecting>,
    /// The last round of `Put`s that installed its values (0: none yet).
    put_round: u64,
    /// `Get`s that came before the `Put` of their round: who asked, and for which round.
    waiting: Vec<(Addr, u64)>,
}

/// What a server does, wherever it runs: on a thread of its own ([`Server`]) or on the thread
/// of the worker it sits beside. It updates a slice once every worker of a group has sent its
/// gradient for it (workers of a group are synchronous), and sends the fresh values to the
/// workers of that group. Groups are independent: each update uses one group's gradients, in
/// the order they come (asynchronous, as in Downpour).
pub(crate) struct ServerCore {
    /// Where its updates run.
    pub dev: DeviceRef,
    updater: UpdaterBox,
    schedule: LrSchedule,
    weight_decay: f32,
    /// `clip_value`: every value of a group's averaged gradient is clamped to ± this.
    clip_value: Option<f32>,
    /// With `clip_norm` or loss scaling: this server's part in agreeing on the step's global
    /// gradient norm.
    norm: Option<GlobalNorm>,
    /// The workers of each group it serves.
    groups: Vec<Vec<Addr>>,
    /// A worker's group and index in it.
    whose: HashMap<Addr, (usize, usize)>,
    index: HashMap<(u32, u32), usize>,
    pending: Vec<Pending>,
    /// Its part in synchronising the server groups (Distributed Hogwild), if any.
    sync: Option<GroupSync>,
    /// `State` messages installed since the coordinator last checked.
    states_in: usize,
    /// Copies, in this server's device memory, of what arrives in another memory (a GPU
    /// server's gradients from another process land in host memory), per slice and sender:
    /// a GPU server with many workers in other processes holds that many copies of its slices.
    staged: HashMap<((u32, u32), Addr), Option<Tensor>>,
    /// Whether it sends the fresh values to the workers after an update (not when a
    /// collective broadcasts them: see [`ServerCore::update_with_sum`]).
    replies: bool,
}

/// A server's part in synchronising the server groups: server `s` of group 0 (the leader)
/// averages slice by slice what server `s` of every other group (a follower) sends, and sends
/// the average back.
pub(crate) enum SyncRole {
    /// Server `s` of group 0, and its followers' addresses by group (1, 2, ...).
    Leader(Vec<Addr>),
    /// Server `s` of another group, and its leader's address.
    Follower(Addr),
}

/// The state of a synchronisation round.
struct GroupSync {
    role: SyncRole,
    /// Leader: per slice, what each follower sent this round.
    parts: Vec<Vec<Option<Tensor>>>,
    /// Slices whose round is not over, once the round has started here: a leader may get a
    /// follower's slices before the coordinator's signal (they travel different routes), so
    /// it counts down from 0 until the signal adds the slices.
    remaining: isize,
    /// Whether the coordinator's signal of the current round has come.
    started: bool,
    /// The step the round belongs to.
    step: u64,
}

impl ServerCore {
    /// A server of `slices` for the worker groups `groups`.
    pub fn new(
        dev: DeviceRef,
        updater: UpdaterBox,
        schedule: LrSchedule,
        weight_decay: f32,
        slices: Vec<ServerSlice>,
        groups: Vec<Vec<Addr>>,
    ) -> ServerCore {
        let index = slices.iter().enumerate().map(|(i, s)| (s.key, i)).collect();
        let pending = slices
            .into_iter()
            .map(|slice| Pending {
                slice,
                put_round: 0,
                waiting: Vec::with_capacity(groups.iter().map(Vec::len).sum()),
                groups: groups
                    .iter()
                    .map(|g| Collecting {
                        grads: vec![None; g.len()],
                        received: 0,
                        step: 0,
                    })
                    .collect(),
            })
            .collect();
        let whose = groups
            .iter()
            .enumerate()
            .flat_map(|(g, ws)| ws.iter().enumerate().map(move |(i, &a)| (a, (g, i))))
            .collect();
        ServerCore {
            dev,
            updater,
            schedule,
            weight_decay,
            clip_value: None,
            norm: None,
            groups,
            whose,
            index,
            pending,
            sync: None,
            states_in: 0,
            staged: HashMap::new(),
            replies: true,
        }
    }

    /// Leaves the fresh values to a collective's broadcast: an update sends nothing.
    pub fn without_replies(mut self) -> Self {
        self.replies = false;
        self
    }

    /// Clamps every value of each averaged gradient to `±clip` before the update (the job's
    /// `clip_value`), as one worker does.
    pub fn with_clip_value(mut self, clip: Option<f32>) -> Self {
        self.clip_value = clip;
        self
    }

    /// Takes part in agreeing on the global gradient norm of every step (the job's
    /// `clip_norm`, loss scaling).
    pub fn with_global_norm(mut self, norm: Option<GlobalNorm>) -> Self {
        self.norm = norm;
        self
    }

    /// Makes this server take part in synchronising the server groups as `role`.
    pub fn with_sync(mut self, role: SyncRole) -> Self {
        let followers = match &role {
            SyncRole::Leader(f) => f.len(),
            SyncRole::Follower(_) => 0,
        };
        self.sync = Some(GroupSync {
            role,
            parts: self.pending.iter().map(|_| vec![None; followers]).collect(),
            remaining: 0,
            started: false,
            step: 0,
        });
        self
    }

    /// Handles a `Sync` message; `Ok(true)` when this server's part of the round is over.
    ///
    /// A round starts with an empty `Sync` from the coordinator. A follower then sends each
    /// of its slices to its leader and installs the averages that come back; the leader
    /// averages each slice once every follower's has come (in group order, so that the
    /// result does not depend on arrival order) and sends the average back.
    pub fn on_sync(&mut self, msg: Msg, transport: &mut TransportBox) -> Result<bool> {
        let done = self.sync_message(msg, transport)?;
        if done {
            if let Some(sync) = &mut self.sync {
                sync.started = false;
            }
        }
        Ok(done)
    }

    fn sync_message(&mut self, msg: Msg, transport: &mut TransportBox) -> Result<bool> {
        let me = transport.addr();
        let sync = self.sync.as_mut().ok_or_else(|| {
            Error::invalid(format!(
                "{me}: a Sync message from {}, but this server does not synchronise",
                msg.src
            ))
        })?;
        let Some(values) = msg.payload.into_option() else {
            // The coordinator starts a round.
            sync.step = msg.version;
            sync.started = true;
            sync.remaining += self.pending.len() as isize;
            if let SyncRole::Follower(leader) = sync.role {
                for p in &self.pending {
                    transport
                        .send(Msg {
                            src: me,
                            dst: leader,
                            kind: MsgKind::Sync,
                            target: p.slice.key.0,
                            slice: p.slice.key.1,
                            version: sync.step,
                            payload: Some(p.slice.value.clone()).into(),
                        })
                        .into_result()?;
                }
            }
            return Ok(sync.remaining == 0);
        };
        let step = msg.version;
        let key = (msg.target, msg.slice);
        let i = *self.index.get(&key).ok_or_else(|| {
            Error::invalid(format!(
                "{me}: {} synchronised parameter {} slice {}, which this server does not hold",
                msg.src, key.0, key.1
            ))
        })?;
        match &sync.role {
            SyncRole::Follower(_) => {
                // The average, from the leader.
                let value = &mut self.pending[i].slice.value;
                if !values.shares_storage(value) {
                    value.copy_from(&values)?;
                }
                sync.remaining -= 1;
            }
            SyncRole::Leader(followers) => {
                let from = followers
                    .iter()
                    .position(|&f| f == msg.src)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "{me}: a Sync message from {}, which is not a follower",
                            msg.src
                        ))
                    })?;
                let parts = &mut sync.parts[i];
                if parts[from].is_some() {
                    return Err(Error::invalid(format!(
                        "{me}: two Sync messages from {} for parameter {} slice {}",
                        msg.src, key.0, key.1
                    )));
                }
                parts[from] = Some(usable(&self.dev, &mut self.staged, values, key, msg.src)?);
                if parts.iter().all(Option::is_some) {
                    let value = &mut self.pending[i].slice.value;
                    for part in parts.iter_mut() {
                        let part = part.take().expect("all arrived");
                        self.dev.axpby(1.0, &part, 1.0, value)?;
                    }
                    let n = (followers.len() + 1) as f32;
                    self.dev.affine(&value.clone(), value, 1.0 / n, 0.0)?;
                    for &f in followers {
                        transport
                            .send(Msg {
                                src: me,
                                dst: f,
                                kind: MsgKind::Sync,
                                target: key.0,
                                slice: key.1,
                                version: step,
                                payload: Some(value.clone()).into(),
                            })
                            .into_result()?;
                    }
                    sync.remaining -= 1;
                }
            }
        }
        Ok(sync.started && sync.remaining == 0)
    }

    /// Handles a `Put`: installs the values it carries as this slice's, for the round its
    /// version names, and answers the `Get`s of that round that came before it.
    pub fn on_put(&mut self, msg: Msg, transport: &mut TransportBox) -> Result<()> {
        let i = self.slice_index(&msg, transport.addr(), "sent values of")?;
        let values = msg
            .payload
            .into_option()
            .ok_or_else(|| Error::invalid(format!("a Put without values from {}", msg.src)))?;
        let p = &mut self.pending[i];
        if !values.shares_storage(&p.slice.value) {
            p.slice.value.copy_from(&values)?;
        }
        p.put_round = p.put_round.max(msg.version);
        let done = p.put_round;
        let mut k = 0;
        while k < p.waiting.len() {
            if p.waiting[k].1 <= done {
                let (who, round) = p.waiting.swap_remove(k);
                transport
                    .send(values_msg(transport.addr(), who, &p.slice, round))
                    .into_result()?;
            } else {
                k += 1;
            }
        }
        Ok(())
    }

    /// Handles a `Get`: sends the slice's values to whoever asked, once the `Put` of the round
    /// its version names has come.
    pub fn on_get(&mut self, msg: Msg, transport: &mut TransportBox) -> Result<()> {
        let i = self.slice_index(&msg, transport.addr(), "asked for")?;
        let p = &mut self.pending[i];
        if p.put_round >= msg.version {
            transport
                .send(values_msg(transport.addr(), msg.src, &p.slice, msg.version))
                .into_result()
        } else {
            p.waiting.push((msg.src, msg.version));
            Ok(())
        }
    }

    fn slice_index(&self, msg: &Msg, me: Addr, what: &str) -> Result<usize> {
        self.index
            .get(&(msg.target, msg.slice))
            .copied()
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{me}: {} {what} parameter {} slice {}, which this server does not hold",
                    msg.src, msg.target, msg.slice
                ))
            })
    }

    /// Whether this server takes part in synchronising the server groups.
    pub fn syncs(&self) -> bool {
        self.sync.is_some()
    }

    /// Sends the updater state of each of its slices to the coordinator: a `State` message per
    /// slice and state tensor (`version` the tensor's index).
    pub fn state_out(&self, transport: &mut TransportBox) -> Result<()> {
        let me = transport.addr();
        for p in &self.pending {
            for (i, t) in p.slice.state.iter().enumerate() {
                transport
                    .send(Msg {
                        src: me,
                        dst: COORDINATOR,
                        kind: MsgKind::State,
                        target: p.slice.key.0,
                        slice: p.slice.key.1,
                        version: i as u64,
                        payload: Some(t.clone()).into(),
                    })
                    .into_result()?;
            }
        }
        Ok(())
    }

    /// The `State` messages that make up this server's whole updater state.
    pub fn state_tensors(&self) -> usize {
        let scaler = self.norm.as_ref().is_some_and(GlobalNorm::scales) as usize;
        self.pending
            .iter()
            .map(|p| p.slice.state.len())
            .sum::<usize>()
            + scaler
    }

    /// Installs the updater state a `State` message carries (or the loss scaler's).
    pub fn on_state(&mut self, msg: Msg) -> Result<()> {
        let me = msg.dst;
        if msg.target == LOSS_SCALER_STATE {
            return self.on_scaler_state(msg);
        }
        let i = self.slice_index(&msg, me, "sent the updater state of")?;
        let values = msg.payload.into_option().ok_or_else(|| {
            Error::invalid(format!("{me}: a State without values from {}", msg.src))
        })?;
        let state = &mut self.pending[i].slice.state;
        let n = state.len();
        let dst = state.get_mut(msg.version as usize).ok_or_else(|| {
            Error::invalid(format!(
                "{me}: {} sent updater state {} of parameter {} slice {}, which has {n}",
                msg.src, msg.version, msg.target, msg.slice
            ))
        })?;
        if !values.shares_storage(dst) {
            dst.copy_from(&values)?;
        }
        self.states_in += 1;
        Ok(())
    }

    /// Installs the loss scaler's state a `State` message carries.
    fn on_scaler_state(&mut self, msg: Msg) -> Result<()> {
        let me = msg.dst;
        let scaler = self.norm.as_mut().and_then(GlobalNorm::scaler_mut);
        let scaler = scaler.ok_or_else(|| {
            Error::invalid(format!(
                "{me}: {} sent a loss scaler's state, but this server scales no loss",
                msg.src
            ))
        })?;
        let values = msg.payload.into_option().ok_or_else(|| {
            Error::invalid(format!("{me}: a State without values from {}", msg.src))
        })?;
        scaler.restore(&values.to_vec::<f32>()?)?;
        self.states_in += 1;
        Ok(())
    }

    /// Whether every state tensor came since the last call (answering `StateIn`), which
    /// starts the count again.
    pub fn take_states_in(&mut self) -> bool {
        let all = self.states_in == self.state_tensors();
        self.states_in = 0;
        all
    }

    /// Every worker it serves.
    pub fn workers(&self) -> impl Iterator<Item = Addr> + '_ {
        self.groups.iter().flatten().copied()
    }

    /// Takes in an `Update` (a worker's gradient of a slice); once every worker of the group
    /// has sent its own, sums them, runs the updater and sends `Updated` with the fresh values
    /// to the workers of the group.
    pub fn receive(&mut self, msg: Msg, transport: &mut TransportBox) -> Result<()> {
        let key = (msg.target, msg.slice);
        let i = *self.index.get(&key).ok_or_else(|| {
            Error::invalid(format!(
                "{} sent a gradient for parameter {} slice {}, which this server does not hold",
                msg.src, key.0, key.1
            ))
        })?;
        let p = &mut self.pending[i];
        let &(g, w) = self.whose.get(&msg.src).ok_or_else(|| {
            Error::invalid(format!(
                "a gradient from {}, which is not a worker this server serves",
                msg.src
            ))
        })?;
        let c = &mut p.groups[g];
        if c.received > 0 && msg.version != c.step {
            return Err(Error::invalid(format!(
                "parameter {} slice {}: a gradient of step {} from {} while collecting step {}",
                key.0, key.1, msg.version, msg.src, c.step
            )));
        }
        let grad = msg.payload.into_option().ok_or_else(|| {
            Error::invalid(format!("an update without a gradient from {}", msg.src))
        })?;
        if c.grads[w].is_some() {
            return Err(Error::invalid(format!(
                "two gradients of parameter {} slice {} from {} in step {}",
                key.0, key.1, msg.src, msg.version
            )));
        }
        c.grads[w] = Some(usable(&self.dev, &mut self.staged, grad, key, msg.src)?);
        c.step = msg.version;
        c.received += 1;
        let workers = &self.groups[g];
        if c.received < workers.len() {
            return Ok(());
        }
        // Every worker's gradient is in: sum them, update, reply.
        let s = &mut p.slice;
        let (first, rest) = c.grads.split_at_mut(1);
        let first = first[0].as_mut().expect("all received");
        if let Some(sum) = &mut s.sum {
            self.dev.copy(first, sum)?;
            *first = sum.clone();
        }
        // The sum goes into the first gradient. Workers that wrote disjoint blocks of one
        // gradient (a parameter split along the features, in one process) sent the very same
        // slice k times: it is the sum already.
        for grad in rest.iter().flatten() {
            if !grad.same_view(first) {
                self.dev.axpby(1.0, grad, 1.0, first)?;
            }
        }
        let sum = first;
        let grad_scale = 1.0 / workers.len() as f32;
        match &mut self.norm {
            // The update waits for the step's verdict.
            Some(norm) => {
                let bound = clip_bound(self.clip_value, norm.loss_scale(), grad_scale);
                let at = (i, g, c.step);
                if let Some(verdict) = norm.hold(at, sum, grad_scale, bound, transport)? {
                    self.conclude_held(g, verdict, transport)?;
                }
                Ok(())
            }
            None => self.clamp_and_update(i, g, transport),
        }
    }

    /// Updates slice `key` in `step` with `sum`, every worker's gradient of it added up (by a
    /// collective, in worker order, as [`ServerCore::receive`] adds them), clamped to
    /// `clip_value` first; returns the fresh values. The job has no global norm to agree on
    /// (refused with a collective).
    pub fn update_with_sum(
        &mut self,
        key: (u32, u32),
        step: u64,
        sum: Tensor,
        transport: &mut TransportBox,
    ) -> Result<Tensor> {
        let i = *self.index.get(&key).ok_or_else(|| {
            Error::invalid(format!(
                "a summed gradient of parameter {} slice {}, which this server does not hold",
                key.0, key.1
            ))
        })?;
        if self.norm.is_some() || self.groups.len() != 1 || self.replies {
            return Err(Error::invalid(
                "only a server without replies, one worker group and no global norm to agree \
                 on updates from a collective's sums",
            ));
        }
        let c = &mut self.pending[i].groups[0];
        c.step = step;
        c.received = self.groups[0].len();
        c.grads[0] = Some(sum);
        self.clamp_and_update(i, 0, transport)?;
        Ok(self.pending[i].slice.replicas[0].clone())
    }

    /// Without a global norm to agree on: clamps the sum of group `g`'s gradients of slice `i`
    /// (in its first gradient) to `clip_value` of their average, and updates the slice.
    fn clamp_and_update(&mut self, i: usize, g: usize, transport: &mut TransportBox) -> Result<()> {
        let grad_scale = 1.0 / self.groups[g].len() as f32;
        if let Some(bound) = clip_bound(self.clip_value, 1.0, grad_scale) {
            let sum = self.pending[i].groups[g].grads[0].as_mut();
            let sum = sum.expect("all received");
            self.dev.clamp(&sum.clone(), sum, -bound, bound)?;
        }
        self.update(i, g, 1.0, transport)
    }

    /// Handles a `Norm` message (a part of the step's squared gradient norm at the lead
    /// server, the verdict at the others): updates or skips the held slices once the verdict
    /// is known.
    pub fn on_norm(&mut self, msg: Msg, transport: &mut TransportBox) -> Result<()> {
        let me = transport.addr();
        let norm = self.norm.as_mut().ok_or_else(|| {
            Error::invalid(format!(
                "{me}: a Norm message from {}, but this server does not agree on norms",
                msg.src
            ))
        })?;
        if let Some((g, verdict)) = norm.on_message(&msg, transport)? {
            self.conclude_held(g, verdict, transport)?;
        }
        Ok(())
    }

    /// Updates every slice held for group `g`'s global norm as `verdict` says (clamped to
    /// `clip_value` first), or skips them all.
    fn conclude_held(
        &mut self,
        g: usize,
        verdict: Verdict,
        transport: &mut TransportBox,
    ) -> Result<()> {
        let Some(norm) = &mut self.norm else {
            return Ok(());
        };
        let loss_scale = norm.loss_scale();
        let held = norm.take_held(g, verdict);
        for &i in &held {
            match verdict {
                Verdict::Skip => self.skip(i, g, transport)?,
                Verdict::Update(factor) => {
                    let grad_scale = 1.0 / self.groups[g].len() as f32;
                    if let Some(bound) = clip_bound(self.clip_value, loss_scale, grad_scale) {
                        let sum = self.pending[i].groups[g].grads[0].as_mut();
                        let sum = sum.expect("all received");
                        self.dev.clamp(&sum.clone(), sum, -bound, bound)?;
                    }
                    self.update(i, g, factor, transport)?;
                }
            }
        }
        if let Some(norm) = &mut self.norm {
            norm.give_back(g, held);
        }
        Ok(())
    }

    /// Leaves slice `i` as it is after a step of group `g` whose gradients overflowed: the
    /// group's workers get an `Updated` without values.
    fn skip(&mut self, i: usize, g: usize, transport: &mut TransportBox) -> Result<()> {
        let p = &mut self.pending[i];
        let c = &mut p.groups[g];
        for grad in &mut c.grads {
            *grad = None;
        }
        c.received = 0;
        send_updated(transport, &self.groups[g], p.slice.key, c.step, None)
    }

    /// Runs the updater on slice `i` with the sum of group `g`'s gradients (times `scale`),
    /// and sends the fresh values to the group's workers.
    fn update(
        &mut self,
        i: usize,
        g: usize,
        scale: f32,
        transport: &mut TransportBox,
    ) -> Result<()> {
        let p = &mut self.pending[i];
        let (s, c, workers) = (&mut p.slice, &mut p.groups[g], &self.groups[g]);
        let key = s.key;
        let sum = c.grads[0].as_mut().expect("all received");
        let args = UpdateArgs {
            lr: self.schedule.lr(c.step) * s.lr_mult,
            weight_decay: self.weight_decay * s.wd_mult,
            grad_scale: scale / workers.len() as f32,
        };
        self.updater
            .update(
                c.step,
                &args,
                &mut s.value,
                sum,
                s.state.as_mut_slice().into(),
            )
            .into_result()?;
        for grad in &mut c.grads {
            *grad = None;
        }
        c.received = 0;
        let replica = &mut s.replicas[g];
        if !replica.shares_storage(&s.value) {
            self.dev.copy(&s.value, replica)?;
        }
        if !self.replies {
            return Ok(());
        }
        send_updated(transport, workers, key, c.step, Some(replica.clone()))
    }
}

/// Sends `Updated` for slice `key` of `step` to `workers`: with the fresh `values`, or without
/// any when the step was skipped.
fn send_updated(
    transport: &mut TransportBox,
    workers: &[Addr],
    key: (u32, u32),
    step: u64,
    values: Option<Tensor>,
) -> Result<()> {
    let me = transport.addr();
    for &w in workers {
        transport
            .send(Msg {
                src: me,
                dst: w,
                kind: MsgKind::Updated,
                target: key.0,
                slice: key.1,
                version: step,
                payload: values.clone().into(),
            })
            .into_result()?;
    }
    Ok(())
}

/// The bounds (±) that clamp a group's summed gradient so that its true average is clamped to
/// `±clip_value`: the sum is `loss_scale / grad_scale` times the average.
fn clip_bound(clip_value: Option<f32>, loss_scale: f32, grad_scale: f32) -> Option<f32> {
    clip_value.map(|c| c * loss_scale / grad_scale)
}

/// A server on a thread of its own (Sandblaster's separate servers).
pub(crate) struct Server {
    /// Its endpoint.
    pub transport: TransportBox,
    /// Its slices.
    pub core: ServerCore,
}

impl Server {
    /// Serves until told to stop. A failure is reported to the coordinator and told to the
    /// workers (who stop waiting) before the thread ends; the result says whether it failed.
    pub fn run(mut self) -> bool {
        let me = self.transport.addr();
        let outcome = singa_core::catch_panic("the server", || self.serve());
        if let Err(e) = &outcome {
            let e = e.clone().context(format!("{me}"));
            let outcome = Outcome::Failed(e.to_string());
            if let Ok(r) = control::report(me, Op::Stop, 0, &outcome, &self.core.dev) {
                let _ = self.transport.send(r);
            }
            let workers: Vec<Addr> = self.core.workers().collect();
            for w in workers {
                let _ = self.transport.send(stop(me, w));
            }
        }
        outcome.is_err()
    }

    /// Reports `op(arg)` done to the coordinator.
    fn done(&mut self, op: Op, arg: u64) -> Result<()> {
        let me = self.transport.addr();
        let r = control::report(me, op, arg, &Outcome::Done(Vec::new()), &self.core.dev)?;
        self.transport.send(r).into_result()
    }

    fn serve(&mut self) -> Result<()> {
        loop {
            // A server waits for as long as the workers compute; they time out, not it.
            let Some(msg) = self.transport.recv(1000).into_result()?.into_option() else {
                continue;
            };
            match msg.kind {
                MsgKind::Stop => return Ok(()),
                MsgKind::Update => self.core.receive(msg, &mut self.transport)?,
                MsgKind::Put => self.core.on_put(msg, &mut self.transport)?,
                MsgKind::Get => self.core.on_get(msg, &mut self.transport)?,
                MsgKind::State => self.core.on_state(msg)?,
                MsgKind::Norm => self.core.on_norm(msg, &mut self.transport)?,
                MsgKind::Sync => {
                    let step = msg.version;
                    if self.core.on_sync(msg, &mut self.transport)? {
                        self.done(Op::Sync, step)?;
                    }
                }
                MsgKind::Control => {
                    let cmd = control::decode_command(&msg)?;
                    match cmd.op {
                        Op::Stop => return Ok(()),
                        Op::StateOut => self.core.state_out(&mut self.transport)?,
                        Op::StateIn if !self.core.take_states_in() => {
                            return Err(Error::invalid(
                                "told to take in its updater state before all of it came",
                            ))
                        }
                        Op::StateIn => {}
                        other => {
                            return Err(Error::invalid(format!(
                                "a server cannot {other:?} (from {})",
                                msg.src
                            )))
                        }
                    }
                    self.done(cmd.op, cmd.arg)?;
                }
                other => {
                    return Err(Error::invalid(format!(
                        "unexpected {other:?} message from {}",
                        msg.src
                    )))
                }
            }
        }
    }
}

/// The values of `slice` for `dst`, in answer to its `Get` of round `round`.
fn values_msg(src: Addr, dst: Addr, slice: &ServerSlice, round: u64) -> Msg {
    Msg {
        src,
        dst,
        kind: MsgKind::Updated,
        target: slice.key.0,
        slice: slice.key.1,
        version: round,
        payload: Some(slice.value.clone()).into(),
    }
}

/// An empty `Sync`: from the coordinator, "start a round of synchronisation after `step`".
pub(crate) fn sync_signal(src: Addr, dst: Addr, step: u64) -> Msg {
    Msg {
        src,
        dst,
        kind: MsgKind::Sync,
        target: 0,
        slice: 0,
        version: step,
        payload: None.into(),
    }
}

/// The message that tells `dst` its sender has stopped.
pub(crate) fn stop(src: Addr, dst: Addr) -> Msg {
    Msg {
        src,
        dst,
        kind: MsgKind::Stop,
        target: 0,
        slice: 0,
        version: 0,
        payload: None.into(),
    }
}

/// `payload`, from `from` about slice `key`, where `dev` can use it: itself, or its copy in
/// `dev`'s memory kept in `staged` for that slice and sender (see [`Tensor::usable_on`]).
fn usable(
    dev: &DeviceRef,
    staged: &mut HashMap<((u32, u32), Addr), Option<Tensor>>,
    payload: Tensor,
    key: (u32, u32),
    from: Addr,
) -> Result<Tensor> {
    if dev.shares_memory_with(payload.device()) {
        return Ok(payload);
    }
    payload.usable_on(dev, staged.entry((key, from)).or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use singa_comm::ChannelNetwork;
    use singa_core::abi::{TD_Opaque, Transport_TO};
    use singa_core::{DType, Fields, Role};

    fn addr(role: Role, id: u32) -> Addr {
        Addr { group: 0, id, role }
    }

    fn sgd() -> UpdaterBox {
        let registry = crate::registry::Registry::builtin();
        let t = registry.updater("sgd").unwrap();
        let fields = singa_core::validate_fields(&t.fields, &Fields::new()).unwrap();
        (t.create)(&fields).into_result().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Gradients arrive in any order within a step; each slice is updated exactly once per
        /// step, with the mean of every worker's gradient, and each worker hears of it once.
        #[test]
        fn each_slice_is_updated_once_per_step_in_any_order(
            workers in 1usize..4,
            lens in proptest::collection::vec(1usize..9, 1..4),
            order_seed: u64,
        ) {
            let dev = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
            let worker_addrs: Vec<Addr> = (0..workers as u32).map(|i| addr(Role::Worker, i)).collect();
            let mut addrs = worker_addrs.clone();
            addrs.push(addr(Role::Server, 0));
            let mut ends = ChannelNetwork::connect(&addrs).unwrap();
            let mut server_end: TransportBox = Transport_TO::from_value(ends.pop().unwrap(), TD_Opaque);
            let mut worker_ends: Vec<TransportBox> = ends.into_iter().map(|e| Transport_TO::from_value(e, TD_Opaque)).collect();
            let values: Vec<Tensor> = lens.iter().map(|&n| Tensor::zeros(&dev, [n], DType::F32).unwrap()).collect();
            let slices = values.iter().enumerate().map(|(i, v)| ServerSlice {
                key: (i as u32, 0), value: v.clone(), state: Vec::new(), lr_mult: 1.0, wd_mult: 1.0,
                replicas: vec![v.clone()],
                sum: None,
            }).collect();
            let sgd = sgd();
            let schedule = LrSchedule::new("fixed", &Fields::new().with("base", 0.5)).unwrap();
            let mut core = ServerCore::new(dev.clone(), sgd, schedule, 0.0, slices, vec![worker_addrs.clone()]);
            let mut expected: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.0; n]).collect();
            let mut rng = singa_core::rng::SplitMix64::new(order_seed);
            for step in 0..3u64 {
                // Worker w's gradient of slice i: every value (w + 1) · (i + 1) · (step + 1).
                let mut msgs = Vec::new();
                for (w, &src) in worker_addrs.iter().enumerate() {
                    for (i, &n) in lens.iter().enumerate() {
                        let g = ((w + 1) * (i + 1)) as f32 * (step + 1) as f32;
                        msgs.push(Msg {
                            src, dst: addr(Role::Server, 0), kind: MsgKind::Update,
                            target: i as u32, slice: 0, version: step,
                            payload: Some(Tensor::from_slice(&dev, &vec![g; n], [n]).unwrap()).into(),
                        });
                    }
                }
                rng.shuffle(&mut msgs);
                for m in msgs {
                    core.receive(m, &mut server_end).unwrap();
                }
                for (i, e) in expected.iter_mut().enumerate() {
                    let mean = (1..=workers).map(|w| (w * (i + 1)) as f32 * (step + 1) as f32).sum::<f32>() / workers as f32;
                    for x in e.iter_mut() {
                        *x -= 0.5 * mean;
                    }
                }
                for (v, e) in values.iter().zip(&expected) {
                    let got = v.to_vec::<f32>().unwrap();
                    for (a, b) in got.iter().zip(e) {
                        prop_assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "step {step}: {got:?} vs {e:?}");
                    }
                }
                for end in &mut worker_ends {
                    let mut heard = vec![0; lens.len()];
                    while let Some(m) = end.recv(0).into_result().unwrap().into_option() {
                        prop_assert_eq!((m.kind, m.version), (MsgKind::Updated, step));
                        heard[m.target as usize] += 1;
                    }
                    prop_assert!(heard.iter().all(|&h| h == 1), "{heard:?}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// `Put`s and `Get`s in any order: a `Get` is answered once, with the values of the
        /// `Put` of its round, as soon as that `Put` is in (at once if it already is).
        #[test]
        fn a_get_is_answered_once_with_the_values_put_in_its_round(
            workers in 1usize..4,
            lens in proptest::collection::vec(1usize..6, 1..4),
            order_seed: u64,
        ) {
            let dev = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
            let worker_addrs: Vec<Addr> =
                (0..workers as u32).map(|i| addr(Role::Worker, i)).collect();
            let server = addr(Role::Server, 0);
            let mut addrs = worker_addrs.clone();
            addrs.push(server);
            let mut ends = ChannelNetwork::connect(&addrs).unwrap();
            let mut server_end: TransportBox =
                Transport_TO::from_value(ends.pop().unwrap(), TD_Opaque);
            let mut worker_ends: Vec<TransportBox> = ends
                .into_iter()
                .map(|e| Transport_TO::from_value(e, TD_Opaque))
                .collect();
            let slices = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| ServerSlice {
                    key: (i as u32, 0),
                    value: Tensor::zeros(&dev, [n], DType::F32).unwrap(),
                    state: Vec::new(),
                    lr_mult: 1.0,
                    wd_mult: 1.0,
                    replicas: Vec::new(),
                    sum: None,
                })
                .collect();
            let schedule = LrSchedule::new("fixed", &Fields::new().with("base", 0.5)).unwrap();
            let mut core =
                ServerCore::new(dev.clone(), sgd(), schedule, 0.0, slices, vec![worker_addrs.clone()]);
            let mut rng = singa_core::rng::SplitMix64::new(order_seed);
            for round in 1..=2u64 {
                // Slice i of round r holds r · 10 + i everywhere.
                let put_value = |i: usize| (round * 10 + i as u64) as f32;
                let mut msgs = Vec::new();
                for (i, &n) in lens.iter().enumerate() {
                    msgs.push(Msg {
                        src: worker_addrs[0], dst: server, kind: MsgKind::Put,
                        target: i as u32, slice: 0, version: round,
                        payload: Some(Tensor::from_slice(&dev, &vec![put_value(i); n], [n]).unwrap()).into(),
                    });
                    for &w in &worker_addrs {
                        msgs.push(Msg {
                            src: w, dst: server, kind: MsgKind::Get,
                            target: i as u32, slice: 0, version: round,
                            payload: None.into(),
                        });
                    }
                }
                rng.shuffle(&mut msgs);
                for m in msgs {
                    match m.kind {
                        MsgKind::Put => core.on_put(m, &mut server_end).unwrap(),
                        _ => core.on_get(m, &mut server_end).unwrap(),
                    }
                }
                for end in &mut worker_ends {
                    let mut heard = vec![0; lens.len()];
                    while let Some(m) = end.recv(0).into_result().unwrap().into_option() {
                        prop_assert_eq!((m.kind, m.version), (MsgKind::Updated, round));
                        let i = m.target as usize;
                        let got = m.payload.into_option().unwrap().to_vec::<f32>().unwrap();
                        prop_assert_eq!(got, vec![put_value(i); lens[i]]);
                        heard[i] += 1;
                    }
                    prop_assert!(heard.iter().all(|&h| h == 1), "{heard:?}");
                }
            }
        }
    }

    /// A server with one slice, `value`, of two workers' gradients (SGD, learning rate 0.5):
    /// the server, its endpoint, the workers and their endpoints (kept to receive).
    fn two_worker_server(
        value: &Tensor,
    ) -> (
        ServerCore,
        TransportBox,
        Vec<Addr>,
        Vec<singa_comm::ChannelEndpoint>,
    ) {
        let workers = vec![addr(Role::Worker, 0), addr(Role::Worker, 1)];
        let mut addrs = workers.clone();
        addrs.push(addr(Role::Server, 0));
        let mut ends = ChannelNetwork::connect(&addrs).unwrap();
        let server_end: TransportBox = Transport_TO::from_value(ends.pop().unwrap(), TD_Opaque);
        let slices = vec![ServerSlice {
            key: (0, 0),
            value: value.clone(),
            state: Vec::new(),
            lr_mult: 1.0,
            wd_mult: 1.0,
            replicas: vec![value.clone()],
            sum: None,
        }];
        let schedule = LrSchedule::new("fixed", &Fields::new().with("base", 0.5)).unwrap();
        let dev = value.device().clone();
        let core = ServerCore::new(dev, sgd(), schedule, 0.0, slices, vec![workers.clone()]);
        (core, server_end, workers, ends)
    }

    #[test]
    fn a_second_gradient_from_one_worker_in_a_step_is_an_error() {
        let dev = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
        let value = Tensor::zeros(&dev, [2], DType::F32).unwrap();
        let (mut core, mut server_end, workers, _ends) = two_worker_server(&value);
        let grad = |src| Msg {
            src,
            dst: addr(Role::Server, 0),
            kind: MsgKind::Update,
            target: 0,
            slice: 0,
            version: 0,
            payload: Some(Tensor::zeros(&dev, [2], DType::F32).unwrap()).into(),
        };
        core.receive(grad(workers[0]), &mut server_end).unwrap();
        let e = core.receive(grad(workers[0]), &mut server_end).unwrap_err();
        assert!(
            e.to_string()
                .contains("two gradients of parameter 0 slice 0 from worker 0.0"),
            "{e}"
        );
        let e = core
            .receive(grad(addr(Role::Worker, 7)), &mut server_end)
            .unwrap_err();
        assert!(
            e.to_string().contains("not a worker this server serves"),
            "{e}"
        );
    }

    /// A server in a GPU's memory takes gradients that arrive in host memory (from another
    /// process), each sender's copied into one tensor of its own that later steps reuse.
    #[test]
    fn gradients_in_another_memory_are_copied_into_the_servers() {
        let host = DeviceRef::new(singa_cpu::CpuDevice::new(1).unwrap());
        let gpu = DeviceRef::new(singa_cpu::ReferenceDevice::apart("test:gpu"));
        let value = Tensor::from_slice(&gpu, &[1.0f32, 1.0], [2]).unwrap();
        let (mut core, mut server_end, workers, _ends) = two_worker_server(&value);
        let grad = |src, step, g: [f32; 2]| Msg {
            src,
            dst: addr(Role::Server, 0),
            kind: MsgKind::Update,
            target: 0,
            slice: 0,
            version: step,
            payload: Some(Tensor::from_slice(&host, &g, [2]).unwrap()).into(),
        };
        core.receive(grad(workers[0], 0, [2.0, 4.0]), &mut server_end)
            .unwrap();
        core.receive(grad(workers[1], 0, [6.0, 8.0]), &mut server_end)
            .unwrap();
        // SGD on the mean gradient [4, 6] with learning rate 0.5.
        assert_eq!(value.to_vec::<f32>().unwrap(), [-1.0, -2.0]);
        core.receive(grad(workers[0], 1, [0.0, 0.0]), &mut server_end)
            .unwrap();
        core.receive(grad(workers[1], 1, [2.0, 2.0]), &mut server_end)
            .unwrap();
        assert_eq!(value.to_vec::<f32>().unwrap(), [-1.5, -2.5]);
        assert_eq!(core.staged.len(), 2, "one copy per sender, reused");
    }
}
