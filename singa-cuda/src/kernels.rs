//! The device's kernels: CUDA C in `src/kernels/`, compiled by NVRTC for the GPU's
//! architecture at first use (once per architecture per process) and loaded once per device.

use crate::driver::{self, Fallible};
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
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

/// Compiles [`SOURCE`] to PTX for a GPU architecture such as `sm_90`.
///
/// Needs NVRTC (`libnvrtc.so`, from the CUDA toolkit or the `nvidia-cuda-nvrtc` Python
/// package) but neither a GPU nor a driver.
pub fn compile(arch: &str) -> Result<String> {
    driver::require_nvrtc()?;
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("singa_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(SOURCE, options).map_err(|e| {
        Error::device(
            "cuda",
            format!("NVRTC could not compile the kernels for {arch}: {e}"),
        )
    })?;
    Ok(ptx.to_src())
}

/// The PTX of [`SOURCE`] for `arch`, compiled once per process.
fn ptx_for(arch: &str) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(ptx) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(arch) {
        return Ok(ptx.clone());
    }
    // Compiled outside the lock: two devices of one architecture may both compile once.
    let ptx = compile(arch)?;
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(arch.to_string(), ptx.clone());
    Ok(ptx)
}

/// Compiles (or takes from the cache) and loads every kernel on `ctx`'s device.
pub(crate) fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Kernels> {
    Kernels::load(ctx, Ptx::from_src(ptx_for(arch)?))
}
