//! The CUDA device against the reference device: every property of `singa-conformance`, on
//! GPU 0 with f32, bf16 and f16 products.
//!
//! Without a GPU (or driver, NVRTC, cuBLAS) each test prints why it skipped;
//! `SINGA_REQUIRE_GPU=1` makes that a failure, for the machines that have one.

use singa_conformance::{Devices, Unavailable};
use singa_core::{DeviceRef, Precision};
use singa_cuda::CudaDevice;
use std::sync::OnceLock;

fn open() -> Result<Devices, String> {
    if let Some(why) = singa_cuda::unavailable_reason() {
        return Err(why);
    }
    let device = |p| {
        CudaDevice::new(0, p)
            .map(DeviceRef::new)
            .map_err(|e| e.to_string())
    };
    // CUDA's `log`, `cos` and `sqrt` in double may differ from the host's in the last bit,
    // which can move a Gaussian draw by one f32 step.
    Ok(Devices::new(device(Precision::F32)?)
        .with_bf16(device(Precision::BF16)?)
        .with_f16(device(Precision::F16)?)
        .with_gaussian_tolerance(singa_conformance::MAX_GAUSSIAN_TOLERANCE))
}

fn gpu() -> Result<&'static Devices, Unavailable> {
    static DEVICES: OnceLock<Result<Devices, String>> = OnceLock::new();
    let devices = DEVICES.get_or_init(open);
    if let Err(why) = devices {
        assert!(
            std::env::var("SINGA_REQUIRE_GPU").as_deref() != Ok("1"),
            "SINGA_REQUIRE_GPU=1 but the CUDA device cannot run: {why}"
        );
    }
    devices
        .as_ref()
        .map_err(|why| Unavailable::new(format!("no CUDA device: {why}")))
}

singa_conformance::device_tests!(gpu);
