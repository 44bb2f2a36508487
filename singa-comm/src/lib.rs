//! Transports: the engines under singa-core's [`Transport`](singa_core::Transport) trait.
//!
//! Workers, servers and stubs see only that trait. In one process they are threads and talk
//! over [`flume`] channels ([`ChannelNetwork`]); a message's payload is a tensor handle, so
//! nothing is copied or serialised on the way. A [`ProcessNetwork`] spreads the endpoints over
//! several processes, each with a router (SINGA's stub) that forwards what crosses between
//! them, its payload copied.

#![warn(missing_docs)]

mod channel;
mod process;
mod wire;

pub use channel::{ChannelEndpoint, ChannelNetwork};
pub use process::{stub_addr, ProcessNetwork};
