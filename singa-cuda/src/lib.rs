//! # singa-cuda
//!
//! The CUDA device of singa: [`CudaDevice`] implements [`singa_core::Device`] on one NVIDIA
//! GPU. Its kernels are CUDA C (`src/kernels/`) compiled by NVRTC for the GPU's architecture
//! at first use; matrix products and the products of convolutions (im2col) run on cuBLAS,
//! in f32 or, with `[device] precision = "bf16"`/`"f16"`, on the tensor cores with f32
//! accumulation.
//!
//! Everything of CUDA is loaded at run time (cudarc's dynamic loading): the crate builds on
//! any machine, and on one without an NVIDIA driver [`CudaDevice::new`] returns an error
//! saying so instead of panicking. [`kernels::compile`] needs only NVRTC, no GPU, which lets
//! CI compile every kernel on a machine without one.
//!
//! [`Communicator`] sums tensors across GPUs with NCCL (loaded at run time too: `libnccl.so.2`),
//! for data-parallel workers on several GPUs.

#![warn(missing_docs)]

mod about;
mod codes;
mod conv;
mod device;
mod driver;
mod gpu;
pub mod kernels;
mod launch;
mod nccl;
mod products;
mod scratch;

pub use about::about;
pub use device::CudaDevice;
pub use driver::{device_count, driver_present, nvrtc_present};
pub use nccl::{nccl_present, nccl_version, Communicator, NcclId};

/// Why GPU tests cannot run here, or `None` when a CUDA GPU is present.
pub fn unavailable_reason() -> Option<String> {
    match device_count() {
        Ok(0) => Some("the NVIDIA driver reports no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}
