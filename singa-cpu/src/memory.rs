//! Host memory behind the handles of the CPU and reference devices.
//!
//! A handle is the address of a 64-byte aligned, zero-initialised block (large blocks in huge
//! pages, see [`mapped_blocks`]). These helpers allocate and free blocks and turn views back
//! into slices.

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
    let ptr = unsafe {
        if layout.size() >= pages::MIN_BYTES {
            pages::map(layout.size())
        } else {
            alloc_zeroed(layout)
        }
    };
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
        if layout.size() >= pages::MIN_BYTES {
            pages::unmap(handle as *mut u8, layout.size());
        } else {
            dealloc(handle as *mut u8, layout);
        }
    }
}

/// How many blocks [`allocate`] has taken straight from the operating system (those of 1 MiB
/// or more, in huge pages), which a counting global allocator does not see: add this to its
/// count to find every allocation.
pub fn mapped_blocks() -> u64 {
    pages::MAPPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Large blocks in 2 MiB pages. Linux backs memory with 4 KiB pages unless a region asks for
/// transparent huge pages (`madvise`, the common setting): a 3 MB weight then spans 750 pages,
/// which a product reading it row by row walks through one TLB entry at a time, and which MPI
/// pins page by page each time it copies a message between processes (`process_vm_readv`).
/// Blocks of at least [`pages::MIN_BYTES`] are therefore mapped on their own, 2 MiB-aligned
/// and rounded up to 2 MiB, and advised to be huge; elsewhere, or when the system declines,
/// they are ordinary zeroed memory all the same.
mod pages {
    use std::sync::atomic::AtomicU64;

    /// The smallest block mapped this way. A block is rounded up to whole huge pages, so one
    /// of just over 1 MiB takes up to twice its size; the few tensors that large are the
    /// weights, their gradients and updater state, and the largest activations.
    pub const MIN_BYTES: usize = 1 << 20;

    /// Blocks mapped so far (see [`super::mapped_blocks`]; Linux only).
    pub static MAPPED: AtomicU64 = AtomicU64::new(0);

    #[cfg(target_os = "linux")]
    const HUGE: usize = 2 << 20;

    /// A zeroed, 2 MiB-aligned block of at least `bytes` bytes (null when out of memory).
    ///
    /// # Safety
    /// `bytes` is non-zero; the block is freed only by [`unmap`] with the same size.
    #[cfg(target_os = "linux")]
    pub unsafe fn map(bytes: usize) -> *mut u8 {
        use libc::{c_void, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE};
        let len = bytes.next_multiple_of(HUGE);
        // Map one huge page more than needed, then trim both ends to an aligned block.
        let total = len + HUGE;
        let flags = MAP_PRIVATE | MAP_ANONYMOUS;
        let p = libc::mmap(
            std::ptr::null_mut(),
            total,
            PROT_READ | PROT_WRITE,
            flags,
            -1,
            0,
        );
        if p == MAP_FAILED {
            return std::ptr::null_mut();
        }
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE);
        let head = aligned - start;
        if head > 0 {
            libc::munmap(p, head);
        }
        let tail = total - head - len;
        if tail > 0 {
            libc::munmap((aligned + len) as *mut c_void, tail);
        }
        // Advice only: without huge pages the block still works.
        libc::madvise(aligned as *mut c_void, len, libc::MADV_HUGEPAGE);
        MAPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        aligned as *mut u8
    }

    /// Frees a block of [`map`].
    ///
    /// # Safety
    /// `ptr` came from `map(bytes)` and is not used again.
    #[cfg(target_os = "linux")]
    pub unsafe fn unmap(ptr: *mut u8, bytes: usize) {
        libc::munmap(ptr as *mut libc::c_void, bytes.next_multiple_of(HUGE));
    }

    /// Elsewhere: the global allocator's zeroed memory (which its counters see).
    #[cfg(not(target_os = "linux"))]
    pub unsafe fn map(bytes: usize) -> *mut u8 {
        std::alloc::alloc_zeroed(std::alloc::Layout::from_size_align_unchecked(
            bytes,
            super::ALIGN,
        ))
    }

    /// Frees a block of [`map`].
    #[cfg(not(target_os = "linux"))]
    pub unsafe fn unmap(ptr: *mut u8, bytes: usize) {
        std::alloc::dealloc(
            ptr,
            std::alloc::Layout::from_size_align_unchecked(bytes, super::ALIGN),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A large block is mapped (and counted: other tests may map blocks meanwhile), zeroed,
    /// aligned to a huge page on Linux, and usable to its last byte.
    #[test]
    fn large_blocks_are_mapped_zeroed_and_counted() {
        let before = mapped_blocks();
        let len = (3 << 20) / 4 + 5; // just over 3 MiB of f32
        let h = allocate("test", DType::F32, len).unwrap();
        assert!(mapped_blocks() > before);
        #[cfg(target_os = "linux")]
        assert_eq!(h as usize % (2 << 20), 0, "2 MiB-aligned");
        // SAFETY: `h` holds `len` f32 values, used only here.
        let values = unsafe { std::slice::from_raw_parts_mut(h as *mut f32, len) };
        assert!(values.iter().all(|&v| v == 0.0));
        values[len - 1] = 1.0;
        // SAFETY: allocated above with the same dtype and length, not used again.
        unsafe { release(h, DType::F32, len) };
    }
}
