//! The device's kernels: CUDA C in `src/kernels/`, compiled by NVRTC for the GPU's
//! architecture at first use (once per architecture per process) and loaded once per device.

use crate::driver::{self, Fallible};
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::Ptx;
use singa_core::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The whole kernel source, as NVRTC compiles it (one translation unit).
pub const SOURCE: &str = concat!(
    include_str!("kernels/common.cuh"),
    include_str!("kernels/elementwise.cu"),
    include_str!("kernels/rows.cu"),
    include_str!("kernels/update.cu"),
    include_str!("kernels/nn.cu"),
);

/// Declares the kernels once: their names (for the compile test) and a struct holding one
/// loaded function per kernel.
macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        /// Every kernel's entry name in [`SOURCE`].
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// The kernels loaded on one device.
        pub(crate) struct Kernels {
            $(pub(crate) $name: CudaFunction,)*
        }

        impl Kernels {
            fn load(ctx: &Arc<CudaContext>, ptx: Ptx) -> Result<Kernels> {
                let module = ctx.load_module(ptx).or_device("loading the kernels")?;
                Ok(Kernels {
                    $($name: module
                        .load_function(stringify!($name))
                        .or_device(concat!("loading kernel ", stringify!($name)))?,)*
                })
            }
        }
    };
}

kernels!(
    cast_any,
    fill_any,
    copy2d_u8,
    copy2d_u16,
    copy2d_u32,
    random_fill,
    unary,
    unary_backward,
    binary,
    axpby,
    affine,
    broadcast_mid,
    round_product_input,
    swap_outer_axes,
    scale_matrices,
    take_fault,
    reduce_mid_threads,
    reduce_mid_blocks,
    softmax_rows,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    softmax_backward,
    top_k,
    top_k_accuracy,
    gather_rows,
    scatter_add_rows,
    sgd_update,
    adaptive_update,
    im2col,
    col2im,
    pool2d,
    pool2d_backward,
    lrn,
    lrn_backward,
    batch_norm_train,
    batch_norm_infer,
    batch_norm_backward,
    lstm_cell,
    lstm_cell_backward,
);

/// [`SOURCE`] compiled for one GPU architecture: the PTX (what the compile test reads) and the
/// machine code (CUBIN) that is loaded. The machine code loads on any driver of the same
/// CUDA major version, while PTX from a newer NVRTC than the driver (a pip package newer than
/// the machine's CUDA) is refused as an unsupported PTX version.
pub struct Compiled {
    /// The PTX assembly.
    pub ptx: String,
    /// The machine code (an ELF image); empty for a virtual architecture (`compute_90`).
    pub cubin: Vec<u8>,
}

/// Compiles [`SOURCE`] for a GPU architecture such as `sm_90`.
///
/// Needs NVRTC (`libnvrtc.so`, from the CUDA toolkit or the `nvidia-cuda-nvrtc` Python
/// package) but neither a GPU nor a driver.
pub fn compile_for(arch: &str) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    driver::require_nvrtc()?;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::device(
            "cuda",
            format!(
                "NVRTC {} could not {what} the kernels for {arch}: {e}",
                nvrtc_version()
            ),
        )
    };
    let src = std::ffi::CString::new(SOURCE).expect("the kernel source has no NUL");
    let name = std::ffi::CString::new("singa_kernels.cu").expect("no NUL");
    let prog = result::create_program(&src, Some(&name)).map_err(|e| failed("create", &e))?;
    let options = [format!("--gpu-architecture={arch}"), "--std=c++17".into()];
    // SAFETY: `prog` was created above and is destroyed once, at the end.
    let built = unsafe {
        result::compile_program(prog, &options)
            .map_err(|e| {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log = c_text(&log);
                failed("compile", &format!("{e:?}: {log}"))
            })
            .and_then(|()| {
                let ptx = result::get_ptx(prog).map_err(|e| failed("emit", &format!("{e:?}")))?;
                let ptx = c_text(&ptx);
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| failed("emit machine code for", &format!("{e:?}")))?;
                let mut cubin = vec![0u8; size];
                if size > 0 {
                    sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
                        .result()
                        .map_err(|e| failed("emit machine code for", &format!("{e:?}")))?;
                }
                Ok(Compiled { ptx, cubin })
            })
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    built
}

/// The text of a NUL-terminated C buffer NVRTC filled (up to its first NUL, or all of it).
fn c_text(buf: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles [`SOURCE`] to PTX for a GPU architecture such as `sm_90` (see [`compile_for`]).
pub fn compile(arch: &str) -> Result<String> {
    compile_for(arch).map(|c| c.ptx)
}

/// The version of the NVRTC library loaded, as `major.minor` (or why it is unknown).
pub fn nvrtc_version() -> String {
    if !crate::nvrtc_present() {
        return "(no NVRTC)".into();
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two plain out-parameters.
    match unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }.result() {
        Ok(()) => format!("{major}.{minor}"),
        Err(e) => format!("(version unknown: {e:?})"),
    }
}

/// The kernels for `arch`, compiled once per process: the machine code, or the PTX where
/// NVRTC gave none.
fn image_for(arch: &str) -> Result<Arc<Compiled>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Compiled>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(arch) {
        return Ok(Arc::clone(c));
    }
    // Compiled outside the lock: two devices of one architecture may both compile once.
    let compiled = Arc::new(compile_for(arch)?);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(arch.to_string(), Arc::clone(&compiled));
    Ok(compiled)
}

/// Compiles (or takes from the cache) and loads every kernel on `ctx`'s device.
pub(crate) fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Kernels> {
    let compiled = image_for(arch)?;
    let image = match compiled.cubin.is_empty() {
        true => Ptx::from_src(compiled.ptx.clone()),
        false => Ptx::from_binary(compiled.cubin.clone()),
    };
    Kernels::load(ctx, image).map_err(|e| {
        Error::device(
            "cuda",
            format!(
                "{e} (kernels for {arch} from NVRTC {}; the driver supports CUDA {})",
                nvrtc_version(),
                driver::driver_version()
            ),
        )
    })
}
