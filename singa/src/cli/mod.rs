//! The parts of the `singa` command that are not library API.

pub mod bench;
