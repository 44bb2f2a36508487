//! Host memory behind the handles of the CPU and reference devices.
//!
//! A handle is the address of a 64-byte aligned, zero-initialised heap block. These helpers
//! allocate and free blocks and turn views back into slices.

use half::{bf16, f16};
use singa_core::{BufHandle, BufView, DType, Element, Error, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};

/// The memory space of the CPU and reference devices: handles of either are valid for both.
pub const HOST: &str = singa_core::device::HOST_MEMORY;

/// Alignment of every allocation: one cache line, and one AVX-512 register.
pub const ALIGN: usize = 64;

/// The handle of empty allocations (never dereferenced, never freed).
const EMPTY: BufHandle = ALIGN as BufHandle;

fn layout(dtype: DType, len: usize) -> Result<Layout> {
    len.checked_mul(dtype.size())
        .and_then(|bytes| Layout::from_size_align(bytes, ALIGN).ok())
        .ok_or_else(|| Error::invalid(format!("cannot allocate {len} elements of {dtype}")))
}

/// Allocates `len` zeroed elements.
pub fn allocate(device: &str, dtype: DType, len: usize) -> Result<BufHandle> {
    if len == 0 {
        return Ok(EMPTY);
    }
    let layout = layout(dtype, len)?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(Error::device(
            device,
            format!("out of memory allocating {} bytes", layout.size()),
        ));
    }
    Ok(ptr as BufHandle)
}

/// Frees what [`allocate`] returned.
///
/// # Safety
/// `handle` came from `allocate(_, dtype, len)` and is not used again.
pub unsafe fn release(handle: BufHandle, dtype: DType, len: usize) {
    if len == 0 {
        return;
    }
    if let Ok(layout) = layout(dtype, len) {
        dealloc(handle as *mut u8, layout);
    }
}

/// The bytes of a view.
///
/// # Safety
/// The view lies inside a live allocation of this module, and no `&mut` to the same bytes is
/// alive while the result is.
pub unsafe fn bytes<'a>(v: BufView) -> &'a [u8] {
    let size = v.dtype.size();
    std::slice::from_raw_parts((v.handle as *const u8).add(v.offset * size), v.len * size)
}

/// The bytes of a view, mutably.
///
/// # Safety
/// As for [`bytes`], and no other reference to the same bytes is alive while the result is.
pub unsafe fn bytes_mut<'a>(v: BufView) -> &'a mut [u8] {
    let size = v.dtype.size();
    std::slice::from_raw_parts_mut((v.handle as *mut u8).add(v.offset * size), v.len * size)
}

fn check<T: Element>(device: &str, v: &BufView, op: &str) -> Result<()> {
    if v.dtype != T::DTYPE {
        return Err(Error::unsupported(
            device,
            format!("{op} on {} tensors", v.dtype),
        ));
    }
    Ok(())
}

/// The elements of a view, if it holds `T`s; `Unsupported` (naming `op`) otherwise.
///
/// # Safety
/// As for [`bytes`].
pub unsafe fn slice<'a, T: Element>(device: &str, v: BufView, op: &str) -> Result<&'a [T]> {
    check::<T>(device, &v, op)?;
    let size = v.dtype.size();
    Ok(std::slice::from_raw_parts(
        (v.handle as *const u8).add(v.offset * size) as *const T,
        v.len,
    ))
}

/// The elements of a view, mutably, if it holds `T`s.
///
/// # Safety
/// As for [`bytes_mut`].
pub unsafe fn slice_mut<'a, T: Element>(device: &str, v: BufView, op: &str) -> Result<&'a mut [T]> {
    check::<T>(device, &v, op)?;
    let size = v.dtype.size();
    Ok(std::slice::from_raw_parts_mut(
        (v.handle as *mut u8).add(v.offset * size) as *mut T,
        v.len,
    ))
}

/// Reads element `i` of a byte buffer of `dtype` as `f64`.
pub fn load(dtype: DType, bytes: &[u8], i: usize) -> f64 {
    let s = dtype.size();
    let b = &bytes[i * s..(i + 1) * s];
    match dtype {
        DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::F16 => f16::from_le_bytes(b.try_into().unwrap()).to_f64(),
        DType::BF16 => bf16::from_le_bytes(b.try_into().unwrap()).to_f64(),
        DType::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::U8 => b[0] as f64,
    }
}

/// Writes `value` as element `i` of a byte buffer of `dtype` (rounding to nearest for floats,
/// truncating toward zero and saturating for integers).
pub fn store(dtype: DType, bytes: &mut [u8], i: usize, value: f64) {
    let s = dtype.size();
    let b = &mut bytes[i * s..(i + 1) * s];
    match dtype {
        DType::F32 => b.copy_from_slice(&(value as f32).to_le_bytes()),
        // Through f32, as every device converts (`half`'s direct f64 path rounds differently).
        DType::F16 => b.copy_from_slice(&f16::from_f32(value as f32).to_le_bytes()),
        DType::BF16 => b.copy_from_slice(&bf16::from_f32(value as f32).to_le_bytes()),
        DType::I32 => b.copy_from_slice(&(value as i32).to_le_bytes()),
        DType::U8 => b[0] = value as u8,
    }
}

/// Converts `n` elements between dtypes, one at a time through `f64`.
pub fn convert(src_dtype: DType, src: &[u8], dst_dtype: DType, dst: &mut [u8], n: usize) {
    for i in 0..n {
        store(dst_dtype, dst, i, load(src_dtype, src, i));
    }
}

/// Copies host bytes into `dst`: `Device::write` of the host devices.
///
/// # Safety
/// `dst` is a live view of a block from [`allocate`].
pub unsafe fn write(dst: BufView, src: &[u8]) -> Result<()> {
    dst.check_host_len(src.len(), "write")?;
    bytes_mut(dst).copy_from_slice(src);
    Ok(())
}

/// Copies `src` into host bytes: `Device::read` of the host devices.
///
/// # Safety
/// `src` is a live view of a block from [`allocate`].
pub unsafe fn read(src: BufView, dst: &mut [u8]) -> Result<()> {
    src.check_host_len(dst.len(), "read")?;
    dst.copy_from_slice(bytes(src));
    Ok(())
}
