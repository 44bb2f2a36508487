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
//! sum does. Only synchronous groups (one worker group) do this: every server's slices then
//! belong to the same step. Every server keeps its own copy of the loss scaler, which the
//! verdicts move in step with the coordinator's.
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

/// A server's part in agreeing on each step's global gradient norm.
pub(crate) struct GlobalNorm {
    /// `clip_norm`, if any.
    max: Option<f32>,
    /// This server's copy of the loss scaler, with loss scaling.
    scaler: Option<LossScaler>,
    /// The workers of the group.
    workers: usize,
    role: NormRole,
    /// The slices this server updates every step.
    slices: usize,
    /// `(slice, group)` of the slices summed this step, waiting for the verdict.
    held: Vec<(usize, usize)>,
    /// The squared norm so far (without a norm to clip to, the sum: only whether it is finite
    /// counts): this server's part, and at the lead the others' too.
    squares: f64,
    /// At the lead: the parts received this step.
    parts: usize,
    /// Where gradients are read to the host (to clip by their norm).
    scratch: Vec<f32>,
    /// Where they are added up on the device instead, only to see whether they overflowed.
    total: Option<Tensor>,
}

impl GlobalNorm {
    /// Clipping to `max` (if any) and checking the gradients scaled by `scaler` (if any) as
    /// `role`, for a server of `slices` slices serving a group of `workers`.
    pub fn new(
        max: Option<f32>,
        scaler: Option<LossScaler>,
        role: NormRole,
        slices: usize,
        workers: usize,
    ) -> GlobalNorm {
        GlobalNorm {
            max,
            scaler,
            workers,
            role,
            slices,
            held: Vec::with_capacity(slices),
            squares: 0.0,
            parts: 0,
            scratch: Vec::new(),
            total: None,
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

    /// Holds slice `i` of group `g` until the step's verdict is known, adding the squares of
    /// its averaged gradient (`sum` clamped to `±bound`, times `grad_scale`), or without a norm
    /// to clip to, only its sum (taken on the device: it is not finite once a value is not).
    /// Returns the verdict once it is known: at the lead, when this was its last slice and
    /// every part is in.
    pub fn hold(
        &mut self,
        (i, g): (usize, usize),
        sum: &Tensor,
        grad_scale: f32,
        bound: Option<f32>,
        transport: &mut TransportBox,
    ) -> Result<Option<Verdict>> {
        if self.max.is_some() {
            self.add_squares(sum, grad_scale, bound)?;
        } else {
            crate::loss_scale::add_sum(sum, &mut self.total, self.held.is_empty())?;
        }
        self.held.push((i, g));
        if self.held.len() < self.slices {
            return Ok(None);
        }
        if self.max.is_none() {
            self.squares = crate::loss_scale::read_sum(&self.total)? as f64;
        }
        match self.role {
            NormRole::Follower(lead) => {
                send(transport, lead, self.squares)?;
                Ok(None)
            }
            NormRole::Lead(_) => self.finish(transport),
        }
    }

    /// Adds the squares of `sum` clamped to `±bound`, times `grad_scale`, read to the host.
    fn add_squares(&mut self, sum: &Tensor, grad_scale: f32, bound: Option<f32>) -> Result<()> {
        let n = sum.numel();
        if self.scratch.len() < n {
            self.scratch.resize(n, 0.0);
        }
        let values = &mut self.scratch[..n];
        sum.read_into(values)?;
        let (scale, bound) = (grad_scale as f64, bound.unwrap_or(f32::INFINITY));
        self.squares += values
            .iter()
            .map(|&v| match v.is_finite() {
                // As the one-worker engine clamps (on the device) and then sums.
                true => (v.clamp(-bound, bound) as f64 * scale).powi(2),
                false => f64::NAN,
            })
            .sum::<f64>();
        Ok(())
    }

    /// Takes in a `Norm` message: at the lead another server's part, elsewhere the verdict.
    pub fn on_message(
        &mut self,
        msg: &Msg,
        transport: &mut TransportBox,
    ) -> Result<Option<Verdict>> {
        let me = transport.addr();
        let value = f64::from_bits(msg.version);
        match &self.role {
            NormRole::Lead(others) if others.contains(&msg.src) => {
                self.squares += value;
                self.parts += 1;
                self.finish(transport)
            }
            NormRole::Follower(lead) if *lead == msg.src => Ok(Some(Verdict::from_wire(value))),
            _ => Err(Error::invalid(format!(
                "{me}: a Norm message from {}, which is not a server it agrees on the norm with",
                msg.src
            ))),
        }
    }

    /// At the lead, once its slices and every part are in: the verdict, sent to the others.
    fn finish(&mut self, transport: &mut TransportBox) -> Result<Option<Verdict>> {
        let NormRole::Lead(others) = &self.role else {
            return Ok(None);
        };
        if self.parts < others.len() || self.held.len() < self.slices {
            return Ok(None);
        }
        let verdict = match self.squares.is_finite() {
            false => Verdict::Skip,
            true => {
                // As the one-worker engine computes it.
                let loss_scale = self.loss_scale();
                let norm = self.squares.sqrt() as f32 / loss_scale;
                let mut factor = 1.0 / loss_scale;
                if let Some(max) = self.max.filter(|&max| norm > max) {
                    factor *= max / norm;
                }
                Verdict::Update(factor)
            }
        };
        for &other in others {
            send(transport, other, verdict.to_wire())?;
        }
        Ok(Some(verdict))
    }

    /// The held slices, to update or skip as `verdict` says; the step's exchange is over, and
    /// the loss scaler takes the verdict in.
    pub fn take_held(&mut self, verdict: Verdict) -> Vec<(usize, usize)> {
        self.squares = 0.0;
        self.parts = 0;
        if let Some(s) = &mut self.scaler {
            // The coordinator's copy says when this is divergence.
            s.advance(verdict != Verdict::Skip);
        }
        std::mem::take(&mut self.held)
    }

    /// Returns the list [`take_held`](Self::take_held) gave, emptied, for the next step (so
    /// that a warm step allocates nothing).
    pub fn give_back(&mut self, mut held: Vec<(usize, usize)>) {
        held.clear();
        self.held = held;
    }
}

/// The loss scale of each of a group's `workers` when the step's scale is `scale`.
pub(crate) fn worker_loss_scale(scale: f32, workers: usize) -> f32 {
    scale / workers as f32
}

/// Sends `value` to `dst` as a `Norm` message.
fn send(transport: &mut TransportBox, dst: Addr, value: f64) -> Result<()> {
    transport
        .send(Msg {
            src: transport.addr(),
            dst,
            kind: MsgKind::Norm,
            target: 0,
            slice: 0,
            version: value.to_bits(),
            payload: None.into(),
        })
        .into_result()
}
