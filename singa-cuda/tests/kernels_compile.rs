//! Every kernel compiles with NVRTC for the GPU generations singa targets, on any machine:
//! NVRTC needs no GPU and no driver (CI installs it from the `nvidia-cuda-nvrtc` Python
//! package and sets `SINGA_REQUIRE_NVRTC=1`, so that a missing library fails instead of
//! skipping).

use singa_cuda::kernels::{compile, compile_for, NAMES};

fn nvrtc_or_skip(test: &str) -> bool {
    if singa_cuda::nvrtc_present() {
        return true;
    }
    let why = "NVRTC (libnvrtc.so) is not on the library path";
    assert!(
        std::env::var("SINGA_REQUIRE_NVRTC").as_deref() != Ok("1"),
        "{test}: SINGA_REQUIRE_NVRTC=1 but {why}"
    );
    println!("{test}: skipped: {why} (pip install nvidia-cuda-nvrtc, then add its lib directory to LD_LIBRARY_PATH)");
    false
}

#[test]
fn every_kernel_compiles_for_ampere_and_hopper() {
    if !nvrtc_or_skip("every_kernel_compiles_for_ampere_and_hopper") {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let ptx = compile(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(
            ptx.contains(&format!(".target {arch}")),
            "{arch}: PTX for another target"
        );
        for name in NAMES {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch}: kernel {name} is not in the PTX"
            );
        }
    }
}

/// The machine code that is loaded (an ELF image for the real architecture), since a driver
/// older than NVRTC refuses its PTX.
#[test]
fn the_kernels_come_as_machine_code_too() {
    if !nvrtc_or_skip("the_kernels_come_as_machine_code_too") {
        return;
    }
    let compiled = compile_for("sm_90").unwrap();
    assert!(
        compiled.cubin.starts_with(b"\x7fELF"),
        "no machine code for sm_90"
    );
    let virtual_arch = compile_for("compute_90").unwrap();
    assert!(virtual_arch.cubin.is_empty() && virtual_arch.ptx.contains(".target sm_90"));
}

#[test]
fn a_kernel_error_is_an_error_value() {
    if !nvrtc_or_skip("a_kernel_error_is_an_error_value") {
        return;
    }
    // An architecture NVRTC does not know: the compile fails with its log, not a panic.
    let err = compile("sm_1").unwrap_err().to_string();
    assert!(err.contains("sm_1"), "{err}");
}

#[test]
fn no_driver_is_an_error_value_not_a_panic() {
    if singa_cuda::driver_present() {
        println!(
            "no_driver_is_an_error_value_not_a_panic: skipped: this machine has an NVIDIA driver"
        );
        return;
    }
    let err = singa_cuda::CudaDevice::new(0, singa_core::Precision::F32)
        .err()
        .expect("a device without a driver")
        .to_string();
    assert!(err.contains("libcuda.so"), "{err}");
    assert!(singa_cuda::unavailable_reason().is_some());
}
