//! Creating the device a job asks for.

use crate::config::{DeviceConfig, DeviceKind};
use singa_core::{DeviceRef, Result};
use singa_cpu::{CpuDevice, ReferenceDevice};

/// The number of threads used when neither the job nor the command line says.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Creates the device `cfg` describes; `threads` (from `--threads`) overrides the job's count.
pub fn create(cfg: &DeviceConfig, threads: Option<usize>) -> Result<DeviceRef> {
    Ok(match cfg.kind {
        DeviceKind::Cpu => {
            let n = threads.or(cfg.threads).unwrap_or_else(default_threads);
            let max = crate::config::MAX_THREADS as usize;
            if n == 0 || n > max {
                return Err(singa_core::Error::invalid(format!(
                    "--threads: expected 1 to {max}, got {n}"
                )));
            }
            DeviceRef::new(CpuDevice::with_precision(n, cfg.precision)?)
        }
        DeviceKind::Reference => DeviceRef::new(ReferenceDevice::with_precision(cfg.precision)),
        DeviceKind::Cuda => cuda(cfg)?,
    })
}

#[cfg(feature = "cuda")]
fn cuda(cfg: &DeviceConfig) -> Result<DeviceRef> {
    Ok(DeviceRef::new(singa_cuda::CudaDevice::new(
        cfg.gpu,
        cfg.precision,
    )?))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &DeviceConfig) -> Result<DeviceRef> {
    Err(built_without_cuda())
}

#[cfg(not(feature = "cuda"))]
fn built_without_cuda() -> singa_core::Error {
    singa_core::Error::device(
        "cuda",
        "this singa was built without CUDA: build it with \
         `cargo build --release -p singa-cli --features cuda`",
    )
}

/// What this machine offers the CUDA device, one (component, state) line each: the driver,
/// every GPU, NVRTC, cuBLAS and NCCL (`singa devices`); an error when singa was built without
/// CUDA.
#[cfg(feature = "cuda")]
pub fn cuda_about() -> Result<Vec<(String, String)>> {
    Ok(singa_cuda::about())
}

/// Without CUDA built in: the error saying how to build it.
#[cfg(not(feature = "cuda"))]
pub fn cuda_about() -> Result<Vec<(String, String)>> {
    Err(built_without_cuda())
}
