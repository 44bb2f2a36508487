//! Bridge layers: where neighbouring layers of a worker group's net are split differently, a
//! bridge moves the tensor between the group's workers (SINGA's bridge source/destination
//! pair, fused with the concat or slice it feeds).
//!
//! Every worker of the group runs its own instance of a bridge; the instances meet at a
//! [`Hub`]. Forward, each publishes its part, waits for the others and assembles what its
//! consumer needs; backward, each publishes its output gradient and sums (or gathers) the
//! pieces that belong to its own input part. In one process the parts are tensor handles the
//! peers read directly; a multi-process transport will move the same blocks as messages.

use super::Dist;
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DType, DeviceRef, Error, Layer, ParamFactoryMut, Phase, Result, SetupContext, Tensor,
    TensorSpec,
};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The bridges of every worker group, by group and bridge name: each group's workers find
/// their peers' halves here while their nets are built.
pub struct Exchanges {
    timeout: Duration,
    hubs: Mutex<HashMap<(u32, String), Arc<Hub>>>,
}

impl Exchanges {
    /// No bridges yet; every wait at a bridge gives up after `timeout`.
    pub fn new(timeout: Duration) -> Arc<Exchanges> {
        Arc::new(Exchanges {
            timeout,
            hubs: Mutex::new(HashMap::new()),
        })
    }

    /// The hub of bridge `name` in worker group `group` of `members` workers.
    pub(crate) fn hub(&self, group: u32, name: &str, members: u32) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.entry((group, name.to_string()))
            .or_insert_with(|| {
                Arc::new(Hub {
                    name: format!("bridge {name} of worker group {group}"),
                    members,
                    timeout: self.timeout,
                    parts: (0..members).map(|_| Mutex::new(None)).collect(),
                    barrier: Barrier::new(members),
                })
            })
            .clone()
    }
}

/// Where the instances of one bridge meet.
pub(crate) struct Hub {
    name: String,
    members: u32,
    timeout: Duration,
    /// What each member published for the current pass (its input forward, its output
    /// gradient backward).
    parts: Vec<Mutex<Option<Tensor>>>,
    barrier: Barrier,
}

impl Hub {
    fn publish(&self, member: u32, t: &Tensor) {
        *self.parts[member as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
    }

    fn part(&self, member: u32) -> Result<Tensor> {
        self.parts[member as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                Error::invalid(format!("{}: worker {member} published nothing", self.name))
            })
    }

    fn wait(&self, member: u32) -> Result<()> {
        self.barrier.wait(member, self.timeout, &self.name)
    }
}

/// A reusable barrier for the workers of a group whose wait gives up after a timeout, naming
/// the workers that did not arrive. Waiting allocates nothing.
struct Barrier {
    members: u32,
    state: Mutex<BarrierState>,
    turned: Condvar,
}

struct BarrierState {
    /// Bit `m` is set once member `m` arrived in this generation.
    arrived: u64,
    generation: u64,
}

impl Barrier {
    fn new(members: u32) -> Barrier {
        Barrier {
            members,
            state: Mutex::new(BarrierState {
                arrived: 0,
                generation: 0,
            }),
            turned: Condvar::new(),
        }
    }

    fn wait(&self, member: u32, timeout: Duration, what: &str) -> Result<()> {
        let all = if self.members == 64 {
            u64::MAX
        } else {
            (1u64 << self.members) - 1
        };
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.arrived |= 1 << member;
        if s.arrived == all {
            s.arrived = 0;
            s.generation += 1;
            self.turned.notify_all();
            return Ok(());
        }
        let generation = s.generation;
        let deadline = Instant::now() + timeout;
        while s.generation == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<String> = (0..self.members)
                    .filter(|m| s.arrived & (1 << m) == 0)
                    .map(|m| m.to_string())
                    .collect();
                return Err(Error::timeout(
                    format!("{what}: workers {} of the group", missing.join(", ")),
                    timeout.as_secs_f64(),
                ));
            }
            s = self
                .turned
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }
}

/// One worker's instance of a bridge from `from` to `to`.
pub(crate) struct Bridge {
    pub hub: Arc<Hub>,
    pub member: u32,
    pub from: Dist,
    pub to: Dist,
    dev: Option<DeviceRef>,
    /// Backward's scratch for summing column blocks.
    scratch: Option<Tensor>,
}

impl Bridge {
    /// The bridge instance of worker `member` at `hub`.
    pub fn new(hub: Arc<Hub>, member: u32, from: Dist, to: Dist) -> Bridge {
        Bridge {
            hub,
            member,
            from,
            to,
            dev: None,
            scratch: None,
        }
    }

    /// The shape of the output for an input part of shape `input`.
    pub fn output_shape(&self, input: singa_core::Shape) -> Result<singa_core::Shape> {
        let k = self.hub.members as usize;
        let full = match self.from {
            Dist::Rows => input.with_dim0(input.dim(0) * k),
            Dist::Cols => with_dim1(input, input.dim(1) * k)?,
            Dist::All => input,
        };
        Ok(match self.to {
            Dist::All => full,
            Dist::Rows => full.with_dim0(split(full.dim(0), k, "the batch")?),
            Dist::Cols => with_dim1(full, split(full.dim(1), k, "the features")?)?,
        })
    }

    fn dev(&self) -> Result<&DeviceRef> {
        self.dev
            .as_ref()
            .ok_or_else(|| Error::invalid("bridge used before setup"))
    }

    /// Column block `j` of the columns of `t` seen as a matrix, when `t` is split into the
    /// group's parts along dimension 1: (first column, width).
    fn col_block(&self, t: &Tensor, j: u32) -> (usize, usize) {
        let w = t.shape().as_matrix().1 / self.hub.members as usize;
        (j as usize * w, w)
    }

    /// Row block `j` of `t` split into the group's parts along dimension 0.
    fn row_block(&self, t: &Tensor, j: u32) -> Result<Tensor> {
        let rows = t.shape().dim(0) / self.hub.members as usize;
        t.narrow(j as usize * rows, rows)
    }

    fn forward_parts(&mut self, input: &Tensor, out: &mut Tensor) -> Result<()> {
        let (me, k) = (self.member, self.hub.members);
        self.hub.publish(me, input);
        self.hub.wait(me)?;
        let dev = self.dev()?.clone();
        for j in 0..k {
            let part = self.hub.part(j)?;
            match (self.from, self.to) {
                // Gather: every part into its block of the whole.
                (Dist::Rows, Dist::All) => dev.copy(&part, &mut self.row_block(out, j)?)?,
                (Dist::Cols, Dist::All) => {
                    let (c, w) = self.col_block(out, j);
                    dev.copy_columns(&part, 0, out, c, w)?
                }
                // Re-split: my block of every part.
                (Dist::Cols, Dist::Rows) => {
                    let rows = self.row_block(&part, me)?;
                    let (c, w) = self.col_block(out, j);
                    dev.copy_columns(&rows, 0, out, c, w)?
                }
                (Dist::Rows, Dist::Cols) => {
                    let (c, w) = self.col_block(&part, me);
                    dev.copy_columns(&part, c, &mut self.row_block(out, j)?, 0, w)?
                }
                (from, to) => {
                    return Err(Error::invalid(format!(
                        "{}: no bridge from {from:?} to {to:?}",
                        self.hub.name
                    )))
                }
            }
        }
        // Nobody overwrites a part before every peer has read it.
        self.hub.wait(me)
    }

    fn backward_parts(&mut self, grad_out: &Tensor, grad_in: &mut Tensor) -> Result<()> {
        let (me, k) = (self.member, self.hub.members);
        self.hub.publish(me, grad_out);
        self.hub.wait(me)?;
        let dev = self.dev()?.clone();
        for j in 0..k {
            let g = self.hub.part(j)?;
            match (self.from, self.to) {
                // The whole was copied to everyone: my part's gradient is the sum of every
                // peer's gradient over my block.
                (Dist::Rows, Dist::All) => {
                    let mine = self.row_block(&g, me)?;
                    if j == 0 {
                        dev.copy(&mine, grad_in)?;
                    } else {
                        dev.axpby(1.0, &mine, 1.0, grad_in)?;
                    }
                }
                (Dist::Cols, Dist::All) => {
                    let (c, w) = self.col_block(&g, me);
                    if j == 0 {
                        dev.copy_columns(&g, c, grad_in, 0, w)?;
                    } else {
                        let scratch = self
                            .scratch
                            .as_mut()
                            .ok_or_else(|| Error::invalid("bridge scratch missing"))?;
                        dev.copy_columns(&g, c, scratch, 0, w)?;
                        dev.axpby(1.0, scratch, 1.0, grad_in)?;
                    }
                }
                // Re-split: each of my blocks went to exactly one peer; take its gradient back.
                (Dist::Cols, Dist::Rows) => {
                    let (c, w) = self.col_block(&g, me);
                    dev.copy_columns(&g, c, &mut self.row_block(grad_in, j)?, 0, w)?
                }
                (Dist::Rows, Dist::Cols) => {
                    let rows = self.row_block(&g, me)?;
                    let (c, w) = self.col_block(grad_in, j);
                    dev.copy_columns(&rows, 0, grad_in, c, w)?
                }
                (from, to) => {
                    return Err(Error::invalid(format!(
                        "{}: no bridge from {from:?} to {to:?}",
                        self.hub.name
                    )))
                }
            }
        }
        self.hub.wait(me)
    }
}

fn split(n: usize, k: usize, what: &str) -> Result<usize> {
    if !n.is_multiple_of(k) {
        return Err(Error::invalid(format!(
            "{what} ({n}) cannot be split evenly over {k} workers"
        )));
    }
    Ok(n / k)
}

fn with_dim1(s: singa_core::Shape, d1: usize) -> Result<singa_core::Shape> {
    let mut dims = s.dims().to_vec();
    if dims.len() < 2 {
        return Err(Error::invalid(format!(
            "a tensor of shape {s} has no feature dimension to split"
        )));
    }
    dims[1] = d1;
    singa_core::Shape::new(&dims)
}

impl Layer for Bridge {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let input = ctx.single_input()?;
            let shape = self
                .output_shape(input.shape)
                .map_err(|e| e.context(format!("layer {}", ctx.layer)))?;
            self.dev = Some(ctx.device.clone());
            if input.dtype == DType::F32 {
                self.scratch = Some(Tensor::zeros(ctx.device, input.shape, DType::F32)?);
            }
            Ok(vec![TensorSpec::new("output", shape, input.dtype)].into())
        })()
        .into()
    }

    fn forward(
        &mut self,
        _phase: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        self.forward_parts(&inputs[0], &mut outputs[0]).into()
    }

    fn backward(
        &mut self,
        _phase: Phase,
        _inputs: RSlice<'_, Tensor>,
        _outputs: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        // Every member takes part, so that the hub's passes stay in step even where an input
        // needs no gradient.
        match &mut grad_inputs[0] {
            ROption::RSome(dx) => self.backward_parts(&grad_outputs[0], dx).into(),
            ROption::RNone => RResult::ROk(()),
        }
    }
}
