//! Bridge layers: where neighbouring layers of a worker group's net are split differently, a
//! bridge moves the tensor between the group's workers (SINGA's bridge source/destination
//! pair, fused with the concat or slice it feeds).
//!
//! Every worker of the group runs its own instance of a bridge, and the instances talk through
//! a [`Transport`](singa_core::Transport): each worker has one bridge endpoint for all its
//! bridges, and since every worker runs its bridges in the same order, the messages from a
//! peer arrive in the order they are consumed. Forward, each instance sends its part to every
//! peer (`Bridge` messages), receives theirs and assembles what its consumer needs; backward,
//! it sends its output gradient and sums (or gathers) the pieces that belong to its own input
//! part. A last round of empty messages says "read": nobody overwrites a part a peer may
//! still read. In one process a message carries a tensor handle; a multi-process transport
//! would carry the block itself.

use super::Dist;
use singa_comm::{ChannelEndpoint, ChannelNetwork, Endpoints};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec, TD_Opaque, Transport_TO};
use singa_core::{
    Addr, DType, DeviceRef, Error, Layer, Msg, MsgKind, ParamFactoryMut, Phase, Result, Role,
    SetupContext, Tensor, TensorSpec,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A transport endpoint behind the ABI-stable trait object.
type Endpoint = Transport_TO<'static, singa_core::abi::RBox<()>>;

/// One worker's bridge endpoint, shared by its bridges (which run one at a time, on its
/// thread).
pub(crate) type Link = Arc<Mutex<LinkState>>;

/// A worker's bridge endpoint and the messages that came early on it.
pub(crate) struct LinkState {
    endpoint: Endpoint,
    /// A message per peer that came before it was due: for the round after the current one,
    /// maybe of the next bridge (a peer that has all it needs moves on, and can be one round
    /// ahead, never more).
    early: Vec<Option<Msg>>,
    /// Whether a peer said it stopped.
    saw_stop: bool,
}

/// The bridge endpoints of a rank's workers, handed to them while their nets are built.
pub struct Exchanges {
    timeout: Duration,
    /// The endpoints of the rank's workers that no net has taken yet (from the fabric).
    endpoints: Mutex<HashMap<Addr, ChannelEndpoint>>,
    /// Whether endpoints are made here, a channel network per group, when a net asks (nets
    /// built on their own, outside a cluster).
    standalone: bool,
    /// The links handed out, by bridge address.
    links: Mutex<HashMap<Addr, Link>>,
}

impl Exchanges {
    /// Endpoints made on demand, for nets built outside a cluster; every wait at a bridge
    /// gives up after `timeout`.
    pub fn new(timeout: Duration) -> Arc<Exchanges> {
        Arc::new(Exchanges {
            timeout,
            endpoints: Mutex::new(HashMap::new()),
            standalone: true,
            links: Mutex::new(HashMap::new()),
        })
    }

    /// The bridges of `workers`, whose endpoints it takes from `ends` (a rank's, from the
    /// fabric; none when the workers' groups have one worker each).
    pub fn for_rank(
        timeout: Duration,
        ends: &mut Endpoints,
        workers: &[Addr],
        bridges: bool,
    ) -> Result<Arc<Exchanges>> {
        let mut endpoints = HashMap::new();
        if bridges {
            for w in workers {
                let a = bridge_addr(w.group, w.id);
                endpoints.insert(a, ends.take(a)?);
            }
        }
        Ok(Arc::new(Exchanges {
            timeout,
            endpoints: Mutex::new(endpoints),
            standalone: false,
            links: Mutex::new(HashMap::new()),
        }))
    }

    fn wrap(e: ChannelEndpoint, members: u32) -> Link {
        Arc::new(Mutex::new(LinkState {
            endpoint: Transport_TO::from_value(e, TD_Opaque),
            early: vec![None; members as usize],
            saw_stop: false,
        }))
    }

    /// The bridge endpoint of worker `member` of group `group` of `members` workers.
    pub(crate) fn link(&self, group: u32, member: u32, members: u32) -> Result<Link> {
        let addr = bridge_addr(group, member);
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = links.get(&addr) {
            return Ok(Arc::clone(l));
        }
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if self.standalone {
            let addrs: Vec<Addr> = (0..members).map(|m| bridge_addr(group, m)).collect();
            for (a, e) in addrs.iter().zip(ChannelNetwork::connect(&addrs)?) {
                endpoints.insert(*a, e);
            }
        }
        let e = endpoints.remove(&addr).ok_or_else(|| {
            Error::invalid(format!(
                "no bridge endpoint for worker {group}.{member} here"
            ))
        })?;
        let link = Exchanges::wrap(e, members);
        links.insert(addr, Arc::clone(&link));
        Ok(link)
    }

    /// How long a bridge waits for its peers.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn link_of(&self, group: u32, member: u32) -> Option<Link> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.get(&bridge_addr(group, member)).cloned()
    }

    /// Whether a peer of worker `member` of group `group` told its bridges it stopped.
    pub fn saw_stop(&self, group: u32, member: u32) -> bool {
        self.link_of(group, member)
            .is_some_and(|l| l.lock().unwrap_or_else(|p| p.into_inner()).saw_stop)
    }

    /// Tells the other workers of `group` that worker `member` has stopped, so that their
    /// bridges stop waiting for it at once.
    pub fn tell_stopped(&self, group: u32, member: u32) {
        let Some(link) = self.link_of(group, member) else {
            return;
        };
        let mut link = link.lock().unwrap_or_else(|p| p.into_inner());
        let peers = link.early.len() as u32;
        let me = bridge_addr(group, member);
        for j in (0..peers).filter(|&j| j != member) {
            let _ = link.endpoint.send(Msg {
                src: me,
                dst: bridge_addr(group, j),
                kind: MsgKind::Stop,
                target: 0,
                slice: 0,
                version: 0,
                payload: None.into(),
            });
        }
    }
}

/// Where worker `member` of group `group` exchanges its bridges' parts.
pub fn bridge_addr(group: u32, member: u32) -> Addr {
    Addr {
        group,
        id: member,
        role: Role::Bridge,
    }
}

/// Which exchange of a bridge a message belongs to (its `slice` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    Forward = 0,
    Backward = 1,
    /// "I have read your part": the end of a forward or backward exchange.
    Read = 2,
}

/// One worker's instance of a bridge from `from` to `to`.
pub(crate) struct Bridge {
    name: String,
    /// Names the bridge in its messages (`target`): its index among the worker's bridges.
    id: u32,
    link: Link,
    group: u32,
    member: u32,
    members: u32,
    timeout: Duration,
    from: Dist,
    to: Dist,
    /// Every member's part of the current exchange (this worker's own included).
    parts: Vec<Option<Tensor>>,
    /// Per member and round (forward, backward): a copy of its parts in this worker's device
    /// memory, when they arrive in another (a GPU worker's, from another process, in host
    /// memory).
    staged: Vec<[Option<Tensor>; 2]>,
    /// Which peers' messages of the current round have arrived.
    arrived: Vec<bool>,
    /// Exchanges done, to check that messages belong to the current one.
    exchanges: u64,
    dev: Option<DeviceRef>,
    /// Backward's scratch for summing column blocks.
    scratch: Option<Tensor>,
}

impl Bridge {
    /// Worker `member`'s instance of bridge `name` (the `id`-th of its net), from `from` to `to`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        id: u32,
        link: Link,
        (group, member, members): (u32, u32, u32),
        timeout: Duration,
        from: Dist,
        to: Dist,
    ) -> Bridge {
        Bridge {
            name: format!("bridge {name} of worker {group}.{member}"),
            id,
            link,
            group,
            member,
            members,
            timeout,
            from,
            to,
            parts: vec![None; members as usize],
            staged: vec![[None, None]; members as usize],
            arrived: vec![false; members as usize],
            exchanges: 0,
            dev: None,
            scratch: None,
        }
    }

    /// Sends `mine` to every peer and receives theirs into `self.parts` (`round`), or sends
    /// and receives the empty "read" messages (`Round::Read`).
    fn exchange(&mut self, round: Round, mine: Option<&Tensor>) -> Result<()> {
        let me = bridge_addr(self.group, self.member);
        let link = Arc::clone(&self.link);
        let mut link = link.lock().unwrap_or_else(|p| p.into_inner());
        let LinkState {
            endpoint,
            early,
            saw_stop,
        } = &mut *link;
        for j in (0..self.members).filter(|&j| j != self.member) {
            endpoint
                .send(Msg {
                    src: me,
                    dst: bridge_addr(self.group, j),
                    kind: MsgKind::Bridge,
                    target: self.id,
                    slice: round as u32,
                    version: self.exchanges,
                    payload: mine.cloned().into(),
                })
                .into_result()?;
        }
        if let Some(t) = mine {
            self.parts[self.member as usize] = Some(t.clone());
        }
        let (current, serial, id) = (round as u32, self.exchanges, self.id);
        let belongs = |m: &Msg| {
            m.kind == MsgKind::Bridge && m.target == id && m.slice == current && m.version == serial
        };
        for a in &mut self.arrived {
            *a = false;
        }
        self.arrived[self.member as usize] = true;
        let mut missing = self.members - 1;
        // What came early from a peer is this round's.
        for slot in early.iter_mut() {
            if let Some(m) = slot.take() {
                if !belongs(&m) {
                    return Err(self.unexpected(round, &m));
                }
                self.take(m, round)?;
                missing -= 1;
            }
        }
        let deadline = std::time::Instant::now() + self.timeout;
        while missing > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(msg) = endpoint
                .recv(left.as_millis() as u64)
                .into_result()?
                .into_option()
            else {
                let late: Vec<String> = (0..self.members as usize)
                    .filter(|&j| !self.arrived[j])
                    .map(|j| format!("worker {}.{j}", self.group))
                    .collect();
                return Err(Error::timeout(
                    format!("{}: {}", self.name, late.join(", ")),
                    self.timeout.as_secs_f64(),
                ));
            };
            let j = msg.src.id as usize;
            if msg.kind == MsgKind::Stop {
                *saw_stop = true;
                return Err(Error::invalid(format!(
                    "{}: worker {}.{j} stopped",
                    self.name, self.group
                )));
            }
            if j >= self.members as usize {
                return Err(self.unexpected(round, &msg));
            }
            if belongs(&msg) && !self.arrived[j] {
                self.take(msg, round)?;
                missing -= 1;
            } else if self.arrived[j] && early[j].is_none() {
                early[j] = Some(msg);
            } else {
                return Err(self.unexpected(round, &msg));
            }
        }
        Ok(())
    }

    /// Records a message of the current round.
    fn take(&mut self, msg: Msg, round: Round) -> Result<()> {
        let j = msg.src.id as usize;
        self.arrived[j] = true;
        if round != Round::Read {
            let part = msg.payload.into_option().ok_or_else(|| {
                Error::invalid(format!("{}: an empty part from {}", self.name, msg.src))
            })?;
            let dev = self.dev()?.clone();
            let staged = &mut self.staged[j][usize::from(round == Round::Backward)];
            self.parts[j] = Some(part.usable_on(&dev, staged)?);
        }
        Ok(())
    }

    fn unexpected(&self, round: Round, msg: &Msg) -> Error {
        Error::invalid(format!(
            "{}: expected {round:?} message {} of bridge {}, got {:?} round {} message {} of bridge {} from {}",
            self.name, self.exchanges, self.id, msg.kind, msg.slice, msg.version, msg.target, msg.src
        ))
    }

    /// The part member `j` sent in the current exchange.
    fn part(&self, j: u32) -> Result<Tensor> {
        self.parts[j as usize]
            .clone()
            .ok_or_else(|| Error::invalid(format!("{}: no part from worker {j}", self.name)))
    }

    /// Ends an exchange: every peer has read what it needed, and the handles are let go.
    fn finish(&mut self) -> Result<()> {
        self.exchange(Round::Read, None)?;
        for p in &mut self.parts {
            *p = None;
        }
        self.exchanges += 1;
        Ok(())
    }

    /// The shape of the output for an input part of shape `input`.
    pub fn output_shape(&self, input: singa_core::Shape) -> Result<singa_core::Shape> {
        let k = self.members as usize;
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
        let w = t.shape().as_matrix().1 / self.members as usize;
        (j as usize * w, w)
    }

    /// Row block `j` of `t` split into the group's parts along dimension 0.
    fn row_block(&self, t: &Tensor, j: u32) -> Result<Tensor> {
        let rows = t.shape().dim(0) / self.members as usize;
        t.narrow(j as usize * rows, rows)
    }

    fn forward_parts(&mut self, input: &Tensor, out: &mut Tensor) -> Result<()> {
        let (me, k) = (self.member, self.members);
        self.exchange(Round::Forward, Some(input))?;
        let dev = self.dev()?.clone();
        for j in 0..k {
            let part = self.part(j)?;
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
                        self.name
                    )))
                }
            }
        }
        // Nobody overwrites a part before every peer has read it.
        self.finish()
    }

    fn backward_parts(&mut self, grad_out: &Tensor, grad_in: &mut Tensor) -> Result<()> {
        let (me, k) = (self.member, self.members);
        self.exchange(Round::Backward, Some(grad_out))?;
        let dev = self.dev()?.clone();
        for j in 0..k {
            let g = self.part(j)?;
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
                        self.name
                    )))
                }
            }
        }
        self.finish()
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
        // Every worker's net has the same layers, so either every instance of a bridge runs
        // backward or none does.
        match &mut grad_inputs[0] {
            ROption::RSome(dx) => self.backward_parts(&grad_outputs[0], dx).into(),
            ROption::RNone => RResult::ROk(()),
        }
    }
}
