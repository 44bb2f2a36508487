//! The `Transport` trait: how workers, servers and stubs exchange messages.
//!
//! Workers and servers see only this trait, never the engine under it: threads and channels in
//! one process, MPI between processes, NCCL between GPUs. The implementations live in
//! `singa-comm`. A transport value is one endpoint, addressed by an [`Addr`].

use crate::error::Error;
use crate::tensor::Tensor;
use abi_stable::sabi_trait;
use abi_stable::std_types::{ROption, RResult};
use abi_stable::StableAbi;
use std::fmt;

/// The kind of entity an address names.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs TrainOneBatch on (part of) a net.
    Worker,
    /// Holds parameter slices and runs the updater.
    Server,
    /// Routes messages for one process (SINGA's stub).
    Stub,
    /// A worker's end of its group's bridges (activations and gradients between workers
    /// that hold differently split layers).
    Bridge,
    /// Where a worker takes commands from the coordinator (worker 0's is the coordinator's
    /// own, where the answers come).
    Control,
    /// A process (rank) of the job, as a whole: its id is the rank. Says when the process
    /// has built its part of the job, or why it could not.
    Node,
}

/// Where a message goes: a role, its group, and its index inside the group.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    /// Worker or server group (or process, for a stub).
    pub group: u32,
    /// Index within the group.
    pub id: u32,
    /// What the address names.
    pub role: Role,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = match self.role {
            Role::Worker => "worker",
            Role::Server => "server",
            Role::Stub => "stub",
            Role::Bridge => "bridge",
            Role::Control => "control",
            Role::Node => "rank",
        };
        if self.role == Role::Node {
            return write!(f, "{r} {}", self.id);
        }
        write!(f, "{r} {}.{}", self.group, self.id)
    }
}

/// What a message asks for (SINGA's message types).
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgKind {
    /// Request a parameter slice's values, as of the round of `Put`s `version` names (at
    /// least); the answer is an `Updated` with the same version.
    Get,
    /// Install a parameter slice's values at its server (the initial ones, or a checkpoint's),
    /// as round `version`.
    Put,
    /// A gradient of a parameter slice, from a worker to the server that holds the slice.
    Update,
    /// The fresh values of a slice, from its server to a worker, in answer to `Update`s (the
    /// version is the step) or to a `Get` (the version is its round).
    Updated,
    /// Synchronise a slice between server groups.
    Sync,
    /// Activations or gradients between neighbouring layers on different workers.
    Bridge,
    /// Shut down.
    Stop,
    /// A command from the coordinator: what to do in `target`, its argument in `version`,
    /// anything larger encoded in the payload.
    Control,
    /// An answer to the coordinator: the command it answers in `target`, its argument in
    /// `version`, whether it succeeded in `slice` (see the runtime's control module), and
    /// metrics, states or an error encoded in the payload.
    Report,
    /// A slice of a parameter's updater state (`target` the parameter, `slice` the slice,
    /// `version` the state tensor's index): to a server, install it; from a server, here it is.
    State,
    /// Clipping by the global gradient norm, between the servers of a group: to the lead
    /// server, another server's part of the step's squared norm; from it, the scale. The
    /// number is an f64's bits in `version`.
    Norm,
}

/// One message. In one process the payload is a tensor handle (no copy); across processes the
/// transport serialises it.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct Msg {
    /// Sender.
    pub src: Addr,
    /// Receiver.
    pub dst: Addr,
    /// What it is.
    pub kind: MsgKind,
    /// The parameter (or bridge) it concerns.
    pub target: u32,
    /// The slice of that parameter.
    pub slice: u32,
    /// The parameter version the message refers to.
    pub version: u64,
    /// The values, if any.
    pub payload: ROption<Tensor>,
}

/// One endpoint of a message transport.
#[sabi_trait]
pub trait Transport: Send {
    /// This endpoint's address.
    fn addr(&self) -> Addr;

    /// Sends a message to `msg.dst`.
    fn send(&mut self, msg: Msg) -> RResult<(), Error>;

    /// Waits up to `timeout_ms` for the next message; `RNone` when the time ran out.
    fn recv(&mut self, timeout_ms: u64) -> RResult<ROption<Msg>, Error>;
}
