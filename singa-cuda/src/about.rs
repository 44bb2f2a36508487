//! What this machine offers the CUDA device, for `singa devices`: the driver, each GPU, and
//! the libraries loaded at run time (NVRTC, cuBLAS, NCCL), each found or why not.

use crate::driver::{self, Fallible};
use cudarc::driver::{result as cu, sys as cu_sys};

/// One line per component: (what, its version or model, or why it is missing). Asks the
/// driver only for names and attributes: no context is made and no kernel compiled.
pub fn about() -> Vec<(String, String)> {
    let mut lines = Vec::new();
    match gpus() {
        Ok(gpus) => {
            let driver = format!(
                "CUDA {} ({} GPU{})",
                driver::driver_version(),
                gpus.len(),
                if gpus.len() == 1 { "" } else { "s" }
            );
            lines.push(("driver".into(), driver));
            for (i, gpu) in gpus.into_iter().enumerate() {
                lines.push((format!("cuda:{i}"), gpu));
            }
        }
        Err(why) => lines.push(("driver".into(), why.to_string())),
    }
    // A missing library: the error the device would give, which names it and its package.
    let or_why = |found: singa_core::Result<()>, version: String| match found {
        Ok(()) => version,
        Err(why) => why.to_string(),
    };
    lines.push((
        "NVRTC".into(),
        or_why(driver::require_nvrtc(), crate::kernels::nvrtc_version()),
    ));
    lines.push((
        "cuBLAS".into(),
        or_why(driver::require_cublas(), "found".into()),
    ));
    lines.push((
        "NCCL".into(),
        crate::nccl::nccl_version()
            .unwrap_or_else(|why| format!("{why} (NCCL is needed only to sum across GPUs)")),
    ));
    lines
}

/// Each GPU's model, architecture and memory.
fn gpus() -> singa_core::Result<Vec<String>> {
    let count = driver::device_count()?;
    (0..count)
        .map(|i| {
            let dev = cu::device::get(i as i32).or_device("opening a GPU")?;
            let name = cu::device::get_name(dev).or_device("reading a GPU's name")?;
            let attribute = |a| {
                // SAFETY: `dev` is a device of this driver; the attribute is an int.
                unsafe { cu::device::get_attribute(dev, a) }.or_device("reading a GPU attribute")
            };
            let major = attribute(
                cu_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )?;
            let minor = attribute(
                cu_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            )?;
            // SAFETY: as above.
            let bytes =
                unsafe { cu::device::total_mem(dev) }.or_device("reading a GPU's memory")?;
            let gib = bytes as f64 / (1u64 << 30) as f64;
            Ok(format!("{name}, sm_{major}{minor}, {gib:.1} GiB"))
        })
        .collect()
}
