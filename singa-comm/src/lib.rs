//! Transports: the engines under singa-core's [`Transport`](singa_core::Transport) trait.
//!
//! Workers, servers and stubs see only that trait. The runtime places its endpoints on ranks
//! (processes) and gets each rank's endpoints from a [`Fabric`]: in one process they are
//! threads that talk over [`flume`] channels, a message's payload a tensor handle, nothing
//! copied ([`ChannelNetwork`]); with several ranks each has a router (SINGA's stub) that
//! forwards what crosses between them, its payload copied: between processes emulated inside
//! this one ([`ProcessNetwork`], for tests) or between real processes over MPI (`MpiFabric`,
//! feature `mpi`). Data-parallel workers may also meet in a [`Collective`] (sums and
//! broadcasts), which a fabric hands out where it can ([`Fabric::collective`]).

#![warn(missing_docs)]

mod channel;
#[cfg(any(feature = "mpi", test))]
mod codec;
mod collective;
mod fabric;
#[cfg(feature = "mpi")]
pub mod mpi;
mod process;
mod wire;

pub use channel::{ChannelEndpoint, ChannelNetwork};
pub use collective::{Collective, ThreadCollective};
pub use fabric::{is_control, Endpoints, Fabric, LocalFabric, Placement, Traffic};
/// The names of the engines ([`Fabric::engine`]).
pub mod engines {
    pub use crate::fabric::{EMULATED_PROCESSES, MPI, THREADS};
}
pub use process::{stub_addr, ProcessNetwork};
