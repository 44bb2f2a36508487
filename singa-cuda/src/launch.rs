//! Launching kernels: the grid sizes, and a macro that passes arguments as
//! `cuLaunchKernel` takes them, without allocating.

use singa_core::BufView;
use std::ffi::c_void;

/// Threads per block of the elementwise kernels.
pub(crate) const BLOCK: u32 = 256;

/// The address of a view's first element.
pub(crate) fn ptr(v: &BufView) -> u64 {
    v.handle + (v.offset * v.dtype.size()) as u64
}

/// Blocks for `n` elements, one per thread in grid-stride loops.
pub(crate) fn blocks(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).clamp(1, 1 << 20) as u32
}

/// Blocks for one block per row (the kernels loop when there are more rows).
pub(crate) fn row_blocks(rows: usize) -> u32 {
    rows.clamp(1, 65_535) as u32
}

/// Threads per block for one block per row of `cols` values.
pub(crate) fn row_block(cols: usize) -> u32 {
    cols.next_power_of_two().clamp(32, 256) as u32
}

/// A kernel parameter as `cuLaunchKernel` takes it: the address of its value.
pub(crate) fn arg<T>(value: &T) -> *mut c_void {
    value as *const T as *mut c_void
}

/// Launches `$kernel` on `$grid` blocks of `$block` threads with the given arguments (each
/// of the exact type the kernel declares: `u64` for pointers, `i64` for sizes, `f32`, `i32`).
macro_rules! launch {
    ($dev:expr, $kernel:ident, $grid:expr, $block:expr; $($a:expr),* $(,)?) => {
        $dev.launch(&$dev.gpu.kernels.$kernel, $grid, $block, &mut [$($crate::launch::arg(&$a)),*])
    };
}
pub(crate) use launch;
