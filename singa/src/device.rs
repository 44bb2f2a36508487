//! Creating the device a job asks for.

use crate::config::{DeviceConfig, DeviceKind};
use singa_core::{DeviceRef, Result};
use singa_cpu::{CpuDevice, ReferenceDevice, Threads};

/// A device and, for a CPU device, its threads (to run the training loop on).
pub struct Created {
    /// The device.
    pub device: DeviceRef,
    /// The CPU device's threads, if it is one.
    pub threads: Option<Threads>,
}

/// The number of threads used when neither the job nor the command line says.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Creates the device `cfg` describes; `threads` (from `--threads`) overrides the job's count.
pub fn create(cfg: &DeviceConfig, threads: Option<usize>) -> Result<Created> {
    Ok(match cfg.kind {
        DeviceKind::Cpu => {
            let n = threads.or(cfg.threads).unwrap_or_else(default_threads);
            let (device, threads) = CpuDevice::create(n)?;
            Created { device, threads: Some(threads) }
        }
        DeviceKind::Reference => Created { device: DeviceRef::new(ReferenceDevice::new()), threads: None },
    })
}
