//! # singa-cpu
//!
//! Two [`Device`](singa_core::Device)s for the host:
//!
//! - [`CpuDevice`], the fast one: f32 matrix products through its own AVX-512/AVX2 kernels
//!   (the `gemm` crate for f16 and for other CPUs), elementwise kernels and reductions
//!   vectorised for AVX-512/AVX2, and a fork-join pool of its own threads, whose number the job
//!   file (or `--threads`) sets. docs/PERFORMANCE.md says why and what it measures.
//! - [`ReferenceDevice`], the plainest loops in `f64`: the yardstick every other device is
//!   tested against (see `tests/cpu_vs_reference.rs`).

#![warn(missing_docs)]

pub mod cpu;
pub mod memory;
pub mod reference;

pub use cpu::{CpuDevice, Threads};
pub use reference::ReferenceDevice;
