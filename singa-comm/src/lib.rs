//! Transports: the engines under singa-core's [`Transport`](singa_core::Transport) trait.
//!
//! Workers, servers and stubs see only that trait. In one process they are threads and talk
//! over [`flume`] channels ([`ChannelNetwork`]); a message's payload is a tensor handle, so
//! nothing is copied or serialised on the way.

#![warn(missing_docs)]

mod channel;

pub use channel::{ChannelEndpoint, ChannelNetwork};
