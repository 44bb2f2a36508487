//! Clipping by the global gradient norm (`clip_norm`) across the servers of a group.
//!
//! One worker clips a step's gradients by their global norm before any update (see
//! `engine.rs`). In a cluster the gradients of a step lie on several servers, each of which
//! updates a slice as soon as the slice's gradients are in. With `clip_norm` a server instead
//! holds its summed slices back and adds up its part of the squared norm of the step's
//! averaged gradients; the other servers send their parts to the lead server (the first that
//! holds slices), which adds them, takes the square root and sends back the scale
//! `min(1, clip_norm / norm)`; then every server updates its held slices with it. The numbers
//! travel as f64 bits in a `Norm` message's `version`, so that the parts add up in f64 as the
//! one-worker sum does. Only synchronous groups (one worker group) clip by norm: every
//! server's slices then belong to the same step.

use super::TransportBox;
use singa_core::{Addr, Error, Msg, MsgKind, Result, Tensor};

/// A server's place in the exchange.
pub(crate) enum NormRole {
    /// The lead server, and the other servers that hold slices.
    Lead(Vec<Addr>),
    /// Another server, and the lead's address.
    Follower(Addr),
}

/// A server's part in clipping each step's global gradient norm.
pub(crate) struct NormClip {
    max: f32,
    role: NormRole,
    /// The slices this server updates every step.
    slices: usize,
    /// `(slice, group)` of the slices summed this step, waiting for the scale.
    held: Vec<(usize, usize)>,
    /// The squared norm so far: this server's part, and at the lead the others' too.
    squares: f64,
    /// At the lead: the parts received this step.
    parts: usize,
    /// Where gradients are read to the host.
    scratch: Vec<f32>,
}

impl NormClip {
    /// Clipping to `max` as `role`, for a server of `slices` slices.
    pub fn new(max: f32, role: NormRole, slices: usize) -> NormClip {
        NormClip {
            max,
            role,
            slices,
            held: Vec::with_capacity(slices),
            squares: 0.0,
            parts: 0,
            scratch: Vec::new(),
        }
    }

    /// Holds slice `i` of group `g` until the step's scale is known, adding the squares of
    /// its averaged gradient (`sum` times `grad_scale`). Returns the scale once it is known:
    /// at the lead, when this was its last slice and every part is in.
    pub fn hold(
        &mut self,
        (i, g): (usize, usize),
        sum: &Tensor,
        grad_scale: f32,
        transport: &mut TransportBox,
    ) -> Result<Option<f32>> {
        let n = sum.numel();
        if self.scratch.len() < n {
            self.scratch.resize(n, 0.0);
        }
        let values = &mut self.scratch[..n];
        sum.read_into(values)?;
        let scale = grad_scale as f64;
        self.squares += values
            .iter()
            .map(|&v| (v as f64 * scale).powi(2))
            .sum::<f64>();
        self.held.push((i, g));
        if self.held.len() < self.slices {
            return Ok(None);
        }
        match self.role {
            NormRole::Follower(lead) => {
                send(transport, lead, self.squares)?;
                Ok(None)
            }
            NormRole::Lead(_) => self.finish(transport),
        }
    }

    /// Takes in a `Norm` message: at the lead another server's part, elsewhere the scale.
    pub fn on_message(&mut self, msg: &Msg, transport: &mut TransportBox) -> Result<Option<f32>> {
        let me = transport.addr();
        let value = f64::from_bits(msg.version);
        match &self.role {
            NormRole::Lead(others) if others.contains(&msg.src) => {
                self.squares += value;
                self.parts += 1;
                self.finish(transport)
            }
            NormRole::Follower(lead) if *lead == msg.src => Ok(Some(value as f32)),
            _ => Err(Error::invalid(format!(
                "{me}: a Norm message from {}, which is not a server it clips the norm with",
                msg.src
            ))),
        }
    }

    /// At the lead, once its slices and every part are in: the scale, sent to the others.
    fn finish(&mut self, transport: &mut TransportBox) -> Result<Option<f32>> {
        let NormRole::Lead(others) = &self.role else {
            return Ok(None);
        };
        if self.parts < others.len() || self.held.len() < self.slices {
            return Ok(None);
        }
        // As the one-worker engine computes it.
        let norm = self.squares.sqrt() as f32;
        let scale = if norm > self.max {
            self.max / norm
        } else {
            1.0
        };
        for &other in others {
            send(transport, other, scale as f64)?;
        }
        Ok(Some(scale))
    }

    /// The held slices, to update; the step's exchange is over.
    pub fn take_held(&mut self) -> Vec<(usize, usize)> {
        self.squares = 0.0;
        self.parts = 0;
        std::mem::take(&mut self.held)
    }

    /// Returns the list [`take_held`](Self::take_held) gave, emptied, for the next step (so
    /// that a warm step allocates nothing).
    pub fn give_back(&mut self, mut held: Vec<(usize, usize)>) {
        held.clear();
        self.held = held;
    }
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
