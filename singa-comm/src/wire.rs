//! What a message carries from one process to another: a copy of its payload, made by the
//! sender into a buffer of the wire (what serialising it would do).

use crate::fabric::is_control;
use singa_core::{Addr, Msg, MsgKind, Result, Tensor};
use std::collections::HashMap;

/// One buffer per kind of training message a sender sends to a receiver about a slice, made the first
/// time and reused after: no allocation once the first steps have run.
///
/// Reuse is safe because of what the receivers do: each one is done with a payload (has
/// copied it, summed it, or stopped reading it) before it sends what lets the sender send the
/// next message of the same kind about the same slice. A server is done with a gradient before
/// it answers `Updated`; a worker copies values before its step or its round of `Get`s ends; a
/// server installs a `Put` before it answers the `Get`s that follow it; a bridge reads a part
/// before its "read" round.
#[derive(Default)]
pub(crate) struct Wire {
    buffers: HashMap<(Addr, MsgKind, u32, u32), Tensor>,
}

impl Wire {
    /// Copies `t`, the payload of `msg`, into its buffer (made on first use, or when the shape
    /// changes) and returns a handle to the copy. The control plane's payloads get a new
    /// buffer each: several of one kind may be on their way at once (a server's state
    /// tensors of one slice), and they are rare.
    pub(crate) fn copy(&mut self, msg: &Msg, t: &Tensor) -> Result<Tensor> {
        let dev = t.device();
        if is_control(msg.kind) {
            let mut fresh = Tensor::zeros(dev, t.shape(), t.dtype())?;
            dev.copy(t, &mut fresh)?;
            return Ok(fresh);
        }
        let key = (msg.dst, msg.kind, msg.target, msg.slice);
        let fits = |b: &Tensor| b.shape() == t.shape() && b.dtype() == t.dtype();
        let buf = match self.buffers.get_mut(&key) {
            Some(b) if fits(b) => b,
            _ => {
                self.buffers
                    .insert(key, Tensor::zeros(dev, t.shape(), t.dtype())?);
                self.buffers.get_mut(&key).expect("just inserted")
            }
        };
        dev.copy(t, buf)?;
        Ok(buf.clone())
    }
}
