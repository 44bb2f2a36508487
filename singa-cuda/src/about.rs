//! What this machine offers the CUDA device, for `singa devices`: the driver, each GPU, and
//! the libraries loaded at run time (NVRTC, cuBLAS, NCCL), each found or why not.

use crate::driver::{self, Fallible};
use cudarc::driver::{result as cu, sys as cu_sys};

/// One line per component: (what, its version or model, or why it is missing). Asks the
/// driver only for names and attributes: no context is made and no kernel compiled.
pub fn about() -> Vec<(String, String)> {
    let mut lines = Vec::new();
    let found = |present: bool, version: String, missing: &str| match present {
        true => version,
        false => format!("not found: {missing}"),
    };
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
    lines.push((
        "NVRTC".into(),
        found(
            driver::nvrtc_present(),
            crate::kernels::nvrtc_version(),
            "libnvrtc.so (the CUDA toolkit, or `pip install nvidia-cuda-nvrtc` with its lib \
             directory on LD_LIBRARY_PATH): kernels cannot be compiled",
        ),
    ));
    lines.push((
        "cuBLAS".into(),
        found(
            driver::require_cublas().is_ok(),
            "found".into(),
            "libcublas.so (the CUDA toolkit, or `pip install nvidia-cublas` with its lib \
             directory on LD_LIBRARY_PATH)",
        ),
    ));
    lines.push((
        "NCCL".into(),
        match crate::nccl::missing() {
            None => crate::nccl::nccl_version().unwrap_or_else(|e| e.to_string()),
            Some(why) => format!("{why} (NCCL is needed only to sum across GPUs)"),
        },
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
