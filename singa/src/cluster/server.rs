//! A server: holds slices of the parameters and runs the updater on them.

use super::{Failures, TransportBox};
use singa_core::{Addr, DeviceRef, Error, Msg, MsgKind, Result, Tensor, UpdateArgs, UpdaterBox};
use singa_layers::schedule::LrSchedule;
use std::collections::HashMap;

/// One parameter slice a server updates.
pub(crate) struct ServerSlice {
    /// The parameter and slice numbers messages name it by.
    pub key: (u32, u32),
    /// The values (in one process, a view of the group's shared replica).
    pub value: Tensor,
    /// The updater's state for these values.
    pub state: Vec<Tensor>,
    /// The parameter's learning-rate and weight-decay multipliers.
    pub lr_mult: f32,
    /// See `lr_mult`.
    pub wd_mult: f32,
}

/// A slice and the gradients received for it in the current step.
struct Pending {
    slice: ServerSlice,
    grads: Vec<Option<Tensor>>,
    received: usize,
    step: u64,
}

/// Updates its slices once every worker of the group has sent its gradient for them (the
/// synchronous frameworks), and sends the fresh values back to each worker.
pub(crate) struct Server {
    /// Its endpoint.
    pub transport: TransportBox,
    /// Where its updates run.
    pub dev: DeviceRef,
    /// The job's updater.
    pub updater: UpdaterBox,
    /// The learning rate of each step.
    pub schedule: LrSchedule,
    /// The job's weight decay.
    pub weight_decay: f32,
    /// The slices it holds.
    pub slices: Vec<ServerSlice>,
    /// The workers of the group it serves, by their index in the group.
    pub workers: Vec<Addr>,
}

impl Server {
    /// Serves until a `Stop` message; a failure is recorded in `failures` and told to the
    /// workers (who stop waiting) before the thread ends.
    pub fn run(mut self, failures: Failures) {
        let me = self.transport.addr();
        if let Err(e) = self.serve() {
            failures.record(e.context(format!("{me}")));
            for &w in &self.workers {
                let _ = self.transport.send(stop(me, w));
            }
        }
    }

    fn serve(&mut self) -> Result<()> {
        let index: HashMap<(u32, u32), usize> = self
            .slices
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key, i))
            .collect();
        let mut pending: Vec<Pending> = std::mem::take(&mut self.slices)
            .into_iter()
            .map(|slice| Pending {
                slice,
                grads: vec![None; self.workers.len()],
                received: 0,
                step: 0,
            })
            .collect();
        let me = self.transport.addr();
        loop {
            // A server waits for as long as the workers compute; they time out, not it.
            let Some(msg) = self.transport.recv(1000).into_result()?.into_option() else {
                continue;
            };
            match msg.kind {
                MsgKind::Stop => return Ok(()),
                MsgKind::Update => {
                    let update = Update {
                        dev: &self.dev,
                        updater: &mut self.updater,
                        schedule: &self.schedule,
                        weight_decay: self.weight_decay,
                        workers: &self.workers,
                        me,
                    };
                    update.receive(&index, &mut pending, msg, &mut self.transport)?;
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

/// What a server needs to apply one update.
struct Update<'a> {
    dev: &'a DeviceRef,
    updater: &'a mut UpdaterBox,
    schedule: &'a LrSchedule,
    weight_decay: f32,
    workers: &'a [Addr],
    me: Addr,
}

impl Update<'_> {
    fn receive(
        self,
        index: &HashMap<(u32, u32), usize>,
        pending: &mut [Pending],
        msg: Msg,
        transport: &mut TransportBox,
    ) -> Result<()> {
        let me = self.me;
        let key = (msg.target, msg.slice);
        let p = index.get(&key).map(|&i| &mut pending[i]).ok_or_else(|| {
            Error::invalid(format!(
                "{} sent a gradient for parameter {} slice {}, which this server does not hold",
                msg.src, key.0, key.1
            ))
        })?;
        let w = self
            .workers
            .iter()
            .position(|&a| a == msg.src)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "a gradient from {}, which is not a worker of its group",
                    msg.src
                ))
            })?;
        if p.received > 0 && msg.version != p.step {
            return Err(Error::invalid(format!(
                "parameter {} slice {}: a gradient of step {} from {} while collecting step {}",
                key.0, key.1, msg.version, msg.src, p.step
            )));
        }
        let grad = msg.payload.into_option().ok_or_else(|| {
            Error::invalid(format!("an update without a gradient from {}", msg.src))
        })?;
        if p.grads[w].replace(grad).is_some() {
            return Err(Error::invalid(format!(
                "two gradients of parameter {} slice {} from {} in step {}",
                key.0, key.1, msg.src, msg.version
            )));
        }
        p.step = msg.version;
        p.received += 1;
        if p.received < self.workers.len() {
            return Ok(());
        }
        // Every worker's gradient is in: sum them into the first one, update, reply.
        let (first, rest) = p.grads.split_at_mut(1);
        let sum = first[0].as_mut().expect("all received");
        for g in rest.iter().flatten() {
            self.dev.axpby(1.0, g, 1.0, sum)?;
        }
        let s = &mut p.slice;
        let args = UpdateArgs {
            lr: self.schedule.lr(p.step) * s.lr_mult,
            weight_decay: self.weight_decay * s.wd_mult,
            grad_scale: 1.0 / self.workers.len() as f32,
        };
        self.updater
            .update(
                p.step,
                &args,
                &mut s.value,
                sum,
                s.state.as_mut_slice().into(),
            )
            .into_result()?;
        for g in &mut p.grads {
            *g = None;
        }
        p.received = 0;
        for &w in self.workers {
            transport
                .send(Msg {
                    src: me,
                    dst: w,
                    kind: MsgKind::Update,
                    target: key.0,
                    slice: key.1,
                    version: p.step,
                    payload: Some(s.value.clone()).into(),
                })
                .into_result()?;
        }
        Ok(())
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
