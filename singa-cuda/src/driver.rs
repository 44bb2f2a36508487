//! Finding CUDA's libraries before cudarc touches them, and turning CUDA's errors into
//! singa's.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcublas` lazily and panics when one is missing;
//! every entry point of this crate checks first, so a machine without CUDA gets an error value
//! that says what is missing.

use singa_core::{Error, Result};
use std::fmt::Display;

/// `.or_device(what)`: a CUDA error as a singa device error saying what was being done.
pub(crate) trait Fallible<T> {
    fn or_device(self, what: &str) -> Result<T>;
}

impl<T, E: Display> Fallible<T> for std::result::Result<T, E> {
    fn or_device(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::device("cuda", format!("{what}: {e}")))
    }
}

/// Whether a shared library of CUDA named `name` (`nvrtc`, `cublas`) can be loaded under one
/// of the file names cudarc tries.
fn library_present(name: &str) -> bool {
    cudarc::get_lib_name_candidates(name)
        .into_iter()
        .any(|file| {
            // SAFETY: loading a CUDA library runs only its initialisers, which have no
            // preconditions; the handle is dropped at once (cudarc loads its own).
            unsafe { libloading::Library::new(file) }.is_ok()
        })
}

/// Whether the NVIDIA driver's library (`libcuda.so`) is present.
pub fn driver_present() -> bool {
    // SAFETY: only tries to load the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Fails unless the NVIDIA driver library is present.
pub(crate) fn require_driver() -> Result<()> {
    if driver_present() {
        Ok(())
    } else {
        Err(Error::device(
            "cuda",
            "the NVIDIA driver library (libcuda.so) was not found: this machine has no NVIDIA \
             driver (install it, or use device type \"cpu\")",
        ))
    }
}

/// Whether NVRTC (`libnvrtc.so`), which compiles the kernels, is present.
pub fn nvrtc_present() -> bool {
    library_present("nvrtc")
}

/// Fails unless NVRTC is present.
pub(crate) fn require_nvrtc() -> Result<()> {
    if nvrtc_present() {
        Ok(())
    } else {
        Err(Error::device(
            "cuda",
            "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit or \
             `pip install nvidia-cuda-nvrtc` and put its lib directory on LD_LIBRARY_PATH",
        ))
    }
}

/// Fails unless cuBLAS is present.
pub(crate) fn require_cublas() -> Result<()> {
    if library_present("cublas") {
        Ok(())
    } else {
        Err(Error::device(
            "cuda",
            "cuBLAS (libcublas.so) was not found: install the CUDA toolkit or \
             `pip install nvidia-cublas` and put its lib directory on LD_LIBRARY_PATH",
        ))
    }
}

/// The CUDA version the driver supports, as `major.minor` (or why it is unknown).
pub fn driver_version() -> String {
    if !driver_present() {
        return "(no driver)".into();
    }
    let mut v = 0;
    // SAFETY: a plain out-parameter; the driver library is present.
    match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }.result() {
        Ok(()) => format!("{}.{}", v / 1000, v % 1000 / 10),
        Err(e) => format!("(version unknown: {e:?})"),
    }
}

/// The number of CUDA GPUs, or why there are none.
pub fn device_count() -> Result<usize> {
    require_driver()?;
    cudarc::driver::result::init().or_device("initialising the CUDA driver")?;
    let n = cudarc::driver::result::device::get_count().or_device("counting CUDA devices")?;
    Ok(n.max(0) as usize)
}
