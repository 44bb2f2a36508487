//! # singa-cpu
//!
//! Two [`Device`](singa_core::Device)s for the host:
//!
//! - [`CpuDevice`], the fast one: matrix products through the `gemm` crate (AVX-512 kernels
//!   picked at run time), elementwise kernels and reductions vectorised for AVX-512/AVX2, and a
//!   rayon pool of its own whose size the job file (or `--threads`) sets.
//! - [`ReferenceDevice`], the plainest loops in `f64`: the yardstick every other device is
//!   tested against (see `tests/cpu_vs_reference.rs`).

#![warn(missing_docs)]

pub mod cpu;
pub mod memory;
pub mod reference;

pub use cpu::{CpuDevice, Threads};
pub use reference::ReferenceDevice;
