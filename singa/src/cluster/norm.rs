//! What the servers of a synchronous group agree on before each step's updates: the global
//! norm of the step's gradients, which clips them (`clip_norm`) and, when it is not a finite
//! number, says that the loss-scaled gradients overflowed and the step is skipped.
//!
//! One worker sees a step's gradients together before any update (see `engine.rs`). In a
//! cluster they lie on several servers, each of which updates a slice as soon as the slice's
//! gradients are in. With `clip_norm` or loss scaling a server instead holds its summed slices
//! back and adds up its part of the squared norm of the step's averaged gradients (clamped to
//! `clip_value` first, as one worker does; a value that is not finite makes the part NaN);
//! the other servers send their parts to the lead server (the first that holds slices), which
//! adds them and sends back the verdict: skip the step, or update with the gradients times a
//! factor (`min(1, clip_norm / norm)`, over the loss scale). The numbers travel as f64 bits in
//! a `Norm` message's `version` (NaN: skip), so that the parts add up in f64 as the one-worker
//! sum does. Each worker group has an exchange of its own (Downpour's groups step
//! asynchronously): the messages name the group and the step. With loss scaling (one worker
//! group only) every server keeps its own copy of the loss scaler, which the verdicts move in
//! step with the coordinator's.
//!
//! Each of a group's `n` workers scales its loss by `scale / n`: its gradients, averaged over
//! its `1/n` of the batch, are then as large as one worker's over the whole batch, so that f16
//! rounds and overflows them as it would on one worker; the group's averaged gradient the
//! servers see is scaled by `scale / n`.

use super::TransportBox;
use crate::loss_scale::LossScaler;
use singa_core::{Addr, Error, Msg, MsgKind, Result, Tensor};

/// A server's place in the exchange.
pub(crate) enum NormRole {
    /// The lead server, and the other servers that hold slices.
    Lead(Vec<Addr>),
    /// Another server, and the lead's address.
    Follower(Addr),
}

/// What the servers do with a step's held slices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Update with each averaged gradient times this factor.
    Update(f32),
    /// Skip the step: its gradients overflowed.
    Skip,
}

impl Verdict {
    fn to_wire(self) -> f64 {
        match self {
            Verdict::Update(f) => f as f64,
            Verdict::Skip => f64::NAN,
        }
    }

    fn from_wire(x: f64) -> Verdict {
        match x.is_nan() {
            true => Verdict::Skip,
            false => Verdict::Update(x as f32),
        }
    }
}

/// One worker group's exchange of the step under way at a server.
struct Exchange {
    /// The step (set by the first slice held or part received).
    step: Option<u64>,
    /// The slices of this server summed for the step, waiting for the verdict.
    held: Vec<usize>,
    /// The squared norm so far (without a norm to clip to, the sum: only whether it is finite
    /// counts): this server's part, and at the lead the others' too.
    squares: f64,
    /// At the lead: the parts received.
    parts: usize,
    /// Where the gradients are added up on the device, only to see whether they overflowed.
    total: Option<Tensor>,
}

/// A server's part in agreeing on each step's global gradient norm, for every worker group it
/// serves (asynchronous groups, Downpour's, each have steps of their own).
pub(crate) struct GlobalNorm {
    /// `clip_norm`, if any.
    max: Option<f32>,
    /// This server's copy of the loss scaler, with loss scaling (one worker group only).
    scaler: Option<LossScaler>,
    /// The workers of a group.
    workers: usize,
    role: NormRole,
    /// The slices this server updates every step.
    slices: usize,
    /// Per worker group served.
    groups: Vec<Exchange>,
    /// Where gradients are read to the host (to clip by their norm).
    scratch: Vec<f32>,
}

impl GlobalNorm {
    /// Clipping to `max` (if any) and checking the gradients scaled by `scaler` (if any) as
    /// `role`, for a server of `slices` slices serving `groups` groups of `workers`.
    pub fn new(
        max: Option<f32>,
        scaler: Option<LossScaler>,
        role: NormRole,
        slices: usize,
        (groups, workers): (usize, usize),
    ) -> GlobalNorm {
        GlobalNorm {
            max,
            scaler,
            workers,
            role,
            slices,
            groups: (0..groups)
                .map(|_| Exchange {
                    step: None,
                    held: Vec::with_capacity(slices),
                    squares: 0.0,
                    parts: 0,
                    total: None,
                })
                .collect(),
            scratch: Vec::new(),
        }
    }

    /// How many times the true one the group's averaged gradient of the current step is (1
    /// without loss scaling).
    pub fn loss_scale(&self) -> f32 {
        self.scaler
            .as_ref()
            .map_or(1.0, |s| worker_loss_scale(s.scale(), self.workers))
    }

    /// Whether it checks loss-scaled gradients (with a scaler of its own).
    pub fn scales(&self) -> bool {
        self.scaler.is_some()
    }

    /// This server's loss scaler, to restore from a checkpoint.
    pub fn scaler_mut(&mut self) -> Option<&mut LossScaler> {
        self.scaler.as_mut()
    }

    /// The exchange of group `g` for `step`, which must be the one under way if any.
    fn exchange(
        &mut self,
        g: usize,
        step: u64,
        from: &dyn Fn() -> String,
    ) -> Result<&mut Exchange> {
        let n = self.groups.len();
        let x = self
            .groups
            .get_mut(g)
            .ok_or_else(|| Error::invalid(format!("{}: worker group {g}, of {n}", from())))?;
        // Messages carry a step's low 32 bits.
        match x.step {
            Some(s) if s as u32 != step as u32 => Err(Error::invalid(format!(
                "{}: step {} of worker group {g} while its step {} is under way",
                from(),
                step + 1,
                s + 1
            ))),
            _ => {
                x.step.get_or_insert(step);
                Ok(x)
            }
        }
    }

    /// Holds slice `i` of group `g`'s `step` until the verdict is known, adding the squares of
    /// its averaged gradient (`sum` clamped to `±bound`, times `grad_scale`), or without a norm
    /// to clip to, only its sum (taken on the device: it is not finite once a value is not).
    /// Returns the verdict once it is known: at the lead, when this was its last slice and
    /// every part is in.
    pub fn hold(
        &mut self,
        (i, g, step): (usize, usize, u64),
        sum: &Tensor,
        grad_scale: f32,
        bound: Option<f32>,
        transport: &mut TransportBox,
    ) -> Result<Option<Verdict>> {
        let me = transport.addr();
        let squares = match self.max {
            Some(_) => Some(self.squares(sum, grad_scale, bound)?),
            None => None,
        };
        let slices = self.slices;
        let x = self.exchange(g, step, &|| format!("{me}: a gradient of"))?;
        match squares {
            Some(s) => x.squares += s,
            None => crate::loss_scale::add_sum(sum, &mut x.total, x.held.is_empty())?,
        }
        x.held.push(i);
        if x.held.len() < slices {
            return Ok(None);
        }
        if squares.is_none() {
            // At the lead, other servers' parts may be in already.
            x.squares += crate::loss_scale::read_sum(&x.total)? as f64;
        }
        match self.role {
            NormRole::Follower(lead) => {
                let part = self.groups[g].squares;
                send(transport, lead, (g, step), part)?;
                Ok(None)
            }
            NormRole::Lead(_) => self.finish(g, transport),
        }
    }

    /// The squares of `sum` clamped to `±bound`, times `grad_scale`, read to the host.
    fn squares(&mut self, sum: &Tensor, grad_scale: f32, bound: Option<f32>) -> Result<f64> {
        let n = sum.numel();
        if self.scratch.len() < n {
            self.scratch.resize(n, 0.0);
        }
        let values = &mut self.scratch[..n];
        sum.read_into(values)?;
        let (scale, bound) = (grad_scale as f64, bound.unwrap_or(f32::INFINITY));
        Ok(values
            .iter()
            .map(|&v| match v.is_finite() {
                // As the one-worker engine clamps (on the device) and then sums.
                true => (v.clamp(-bound, bound) as f64 * scale).powi(2),
                false => f64::NAN,
            })
            .sum::<f64>())
    }

    /// Takes in a `Norm` message (group in `target`, step in `slice`): at the lead another
    /// server's part, elsewhere the verdict. Returns the group and the verdict once known.
    pub fn on_message(
        &mut self,
        msg: &Msg,
        transport: &mut TransportBox,
    ) -> Result<Option<(usize, Verdict)>> {
        let me = transport.addr();
        let value = f64::from_bits(msg.version);
        let g = msg.target as usize;
        let from = || format!("{me}: a Norm message from {}, of", msg.src);
        match &self.role {
            NormRole::Lead(others) if others.contains(&msg.src) => {
                let x = self.exchange(g, msg.slice as u64, &from)?;
                x.squares += value;
                x.parts += 1;
                Ok(self.finish(g, transport)?.map(|v| (g, v)))
            }
            NormRole::Follower(lead) if *lead == msg.src => {
                let x = self.exchange(g, msg.slice as u64, &from)?;
                if x.held.len() < self.slices {
                    return Err(Error::invalid(format!(
                        "{}: the verdict of group {g}'s step before this server's part",
                        from()
                    )));
                }
                Ok(Some((g, Verdict::from_wire(value))))
            }
            _ => Err(Error::invalid(format!(
                "{me}: a Norm message from {}, which is not a server it agrees on the norm with",
                msg.src
            ))),
        }
    }

    /// At the lead, once its slices and every part of group `g`'s step are in: the verdict,
    /// sent to the others.
    fn finish(&mut self, g: usize, transport: &mut TransportBox) -> Result<Option<Verdict>> {
        let NormRole::Lead(others) = &self.role else {
            return Ok(None);
        };
        let x = &self.groups[g];
        if x.parts < others.len() || x.held.len() < self.slices {
            return Ok(None);
        }
        // Without loss scaling a gradient that is not finite is divergence, not a step to
        // skip: it reaches the values, and the run stops on them as one worker's does.
        let verdict = match x.squares.is_finite() || self.scaler.is_none() {
            false => Verdict::Skip,
            true => {
                // As the one-worker engine computes it.
                let loss_scale = self.loss_scale();
                let norm = x.squares.sqrt() as f32 / loss_scale;
                let mut factor = 1.0 / loss_scale;
                if let Some(max) = self.max.filter(|&max| norm > max) {
                    factor *= max / norm;
                }
                Verdict::Update(factor)
            }
        };
        let step = x.step.expect("slices held");
        for &other in others {
            send(transport, other, (g, step), verdict.to_wire())?;
        }
        Ok(Some(verdict))
    }

    /// Group `g`'s held slices, to update or skip as `verdict` says; the step's exchange is
    /// over, and the loss scaler takes the verdict in.
    pub fn take_held(&mut self, g: usize, verdict: Verdict) -> Vec<usize> {
        if let Some(s) = &mut self.scaler {
            // The coordinator's copy says when this is divergence.
            s.advance(verdict != Verdict::Skip);
        }
        let x = &mut self.groups[g];
        x.step = None;
        x.squares = 0.0;
        x.parts = 0;
        std::mem::take(&mut x.held)
    }

    /// Returns the list [`take_held`](Self::take_held) gave for group `g`, emptied, for its
    /// next step (so that a warm step allocates nothing).
    pub fn give_back(&mut self, g: usize, mut held: Vec<usize>) {
        held.clear();
        self.groups[g].held = held;
    }
}

/// The loss scale of each of a group's `workers` when the step's scale is `scale`.
pub(crate) fn worker_loss_scale(scale: f32, workers: usize) -> f32 {
    scale / workers as f32
}

/// Sends `value` of group `g`'s `step` to `dst` as a `Norm` message (the step's low 32 bits:
/// enough to tell it from the one before or after).
fn send(
    transport: &mut TransportBox,
    dst: Addr,
    (g, step): (usize, u64),
    value: f64,
) -> Result<()> {
    transport
        .send(Msg {
            src: transport.addr(),
            dst,
            kind: MsgKind::Norm,
            target: g as u32,
            slice: step as u32,
            version: value.to_bits(),
            payload: None.into(),
        })
        .into_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::topology::server_addr;
    use crate::config::LossScaling;
    use singa_core::DeviceRef;

    fn values(dev: &DeviceRef, v: &[f32]) -> Tensor {
        Tensor::from_slice(dev, v, [v.len()]).unwrap()
    }

    /// Two servers of two slices each with loss scaling and no norm to clip to: the follower's
    /// part (an overflow) reaches the lead before the lead's own last slice, whose sum is
    /// finite; both must still skip the step.
    #[test]
    fn an_overflow_in_another_servers_part_skips_the_step() {
        let dev = DeviceRef::new(singa_cpu::ReferenceDevice::new());
        let (lead_addr, other_addr) = (server_addr(0, 0), server_addr(0, 1));
        let mut ends = singa_comm::ChannelNetwork::connect(&[lead_addr, other_addr]).unwrap();
        let mut other = crate::cluster::boxed(ends.pop().unwrap());
        let mut lead = crate::cluster::boxed(ends.pop().unwrap());
        let scaler = || LossScaler::new(LossScaling::DYNAMIC);
        let mut at_lead =
            GlobalNorm::new(None, scaler(), NormRole::Lead(vec![other_addr]), 2, (1, 1));
        let mut at_other =
            GlobalNorm::new(None, scaler(), NormRole::Follower(lead_addr), 2, (1, 1));
        let (finite, overflow) = (
            values(&dev, &[1.0, 2.0]),
            values(&dev, &[1.0, f32::INFINITY]),
        );
        assert_eq!(
            at_lead
                .hold((0, 0, 7), &finite, 1.0, None, &mut lead)
                .unwrap(),
            None
        );
        assert_eq!(
            at_other
                .hold((0, 0, 7), &finite, 1.0, None, &mut other)
                .unwrap(),
            None
        );
        assert_eq!(
            at_other
                .hold((1, 0, 7), &overflow, 1.0, None, &mut other)
                .unwrap(),
            None
        );
        let part = lead
            .recv(1000)
            .into_result()
            .unwrap()
            .into_option()
            .unwrap();
        assert_eq!(at_lead.on_message(&part, &mut lead).unwrap(), None);
        let verdict = at_lead
            .hold((1, 0, 7), &finite, 1.0, None, &mut lead)
            .unwrap();
        assert_eq!(verdict, Some(Verdict::Skip));
        let told = other
            .recv(1000)
            .into_result()
            .unwrap()
            .into_option()
            .unwrap();
        assert_eq!(
            at_other.on_message(&told, &mut other).unwrap(),
            Some((0, Verdict::Skip))
        );
        // A part of another step is refused.
        at_lead.take_held(0, Verdict::Skip);
        at_lead
            .hold((0, 0, 8), &finite, 1.0, None, &mut lead)
            .unwrap();
        let stale = Msg {
            payload: None.into(),
            ..part
        };
        let e = at_lead
            .on_message(&stale, &mut lead)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("step 8 of worker group 0 while its step 9 is under way"),
            "{e}"
        );
    }
}
