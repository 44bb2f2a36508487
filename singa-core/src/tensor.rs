//! Tensors: a shape and a dtype over memory owned by a device.

use crate::device::{BufHandle, BufView, DeviceRef};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::shape::Shape;
use abi_stable::std_types::RArc;
use abi_stable::StableAbi;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One allocation on a device; freed on the device when the last tensor using it is dropped.
#[repr(C)]
#[derive(StableAbi)]
struct Storage {
    device: DeviceRef,
    handle: BufHandle,
    len: usize,
    dtype: DType,
    /// Who is using the memory right now: [`WRITER`] or a count of readers (see [`Access`]).
    borrow: AtomicUsize,
}

/// The bit of [`Storage::borrow`] that marks an operation writing the memory.
const WRITER: usize = 1 << (usize::BITS - 1);

impl Drop for Storage {
    fn drop(&mut self) {
        // SAFETY: the handle came from this device's `alloc(dtype, len)` and this is its last user.
        unsafe { self.device.raw().free(self.handle, self.dtype, self.len) }
    }
}

/// A dense, row-major n-d array whose memory belongs to a [`Device`](crate::Device).
///
/// A tensor is a handle: cloning it is cheap and the clone refers to the same memory, like
/// an `Arc`. Operations write into tensors you pass as outputs (allocated once, reused every
/// step), so the training loop does not allocate. Read values back with [`Tensor::to_vec`].
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct Tensor {
    storage: RArc<Storage>,
    offset: usize,
    shape: Shape,
    dtype: DType,
}

impl Tensor {
    /// A new tensor of zeros.
    pub fn zeros(device: &DeviceRef, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        let shape = shape.into();
        let len = shape.numel();
        let handle = device.raw().alloc(dtype, len).into_result()?;
        Ok(Tensor {
            storage: RArc::new(Storage {
                device: device.clone(),
                handle,
                len,
                dtype,
                borrow: AtomicUsize::new(0),
            }),
            offset: 0,
            shape,
            dtype,
        })
    }

    /// A new tensor holding a copy of `data`.
    pub fn from_slice<T: Element>(
        device: &DeviceRef,
        data: &[T],
        shape: impl Into<Shape>,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != data.len() {
            return Err(Error::shape(
                "Tensor::from_slice",
                format!("{} values do not fill shape {shape}", data.len()),
            ));
        }
        let mut t = Tensor::zeros(device, shape, T::DTYPE)?;
        t.write_from(data)?;
        Ok(t)
    }

    /// The dimensions.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// The device that owns the memory.
    pub fn device(&self) -> &DeviceRef {
        &self.storage.device
    }

    /// The elements as a device view, for calling [`Device`](crate::Device) methods directly.
    pub fn view(&self) -> BufView {
        BufView {
            handle: self.storage.handle,
            offset: self.offset,
            len: self.numel(),
            dtype: self.dtype,
        }
    }

    /// Whether `self` and `other` use the same allocation.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        std::ptr::eq(&*self.storage, &*other.storage)
    }

    /// The same elements with another shape of the same size.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {} as {shape}", self.shape),
            ));
        }
        Ok(Tensor {
            shape,
            ..self.clone()
        })
    }

    /// Rows `start .. start + count` of dimension 0, sharing memory with `self`.
    pub fn narrow(&self, start: usize, count: usize) -> Result<Tensor> {
        let rows = if self.shape.rank() == 0 {
            1
        } else {
            self.shape.dim(0)
        };
        if start.checked_add(count).is_none_or(|end| end > rows) {
            return Err(Error::shape(
                "narrow",
                format!(
                    "rows {start}..{} of a tensor of shape {}",
                    start.saturating_add(count),
                    self.shape
                ),
            ));
        }
        let row_len = self.numel().checked_div(rows).unwrap_or(0);
        Ok(Tensor {
            storage: self.storage.clone(),
            offset: self.offset + start * row_len,
            shape: self.shape.with_dim0(count),
            dtype: self.dtype,
        })
    }

    /// Copies the elements to the host.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); self.numel()];
        self.read_into(&mut out)?;
        Ok(out)
    }

    /// Copies the elements into `out`, which must have exactly [`Tensor::numel`] elements.
    pub fn read_into<T: Element>(&self, out: &mut [T]) -> Result<()> {
        self.check_host::<T>("read_into", out.len())?;
        let _access = Access::new("read_into", &[], &[self])?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        // SAFETY: the view is this tensor's own, and the byte length was checked.
        unsafe { self.device().raw().read(self.view(), bytes.into()) }.into_result()
    }

    /// Overwrites the elements with `data`, which must have exactly [`Tensor::numel`] elements.
    pub fn write_from<T: Element>(&mut self, data: &[T]) -> Result<()> {
        self.check_host::<T>("write_from", data.len())?;
        let _access = Access::new("write_from", &[self], &[])?;
        let bytes: &[u8] = bytemuck::cast_slice(data);
        // SAFETY: the view is this tensor's own, and the byte length was checked.
        unsafe { self.device().raw().write(self.view(), bytes.into()) }.into_result()
    }

    fn check_host<T: Element>(&self, what: &str, len: usize) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::invalid(format!(
                "{what}: the tensor holds {} but the host buffer holds {}",
                self.dtype,
                T::DTYPE
            )));
        }
        if len != self.numel() {
            return Err(Error::shape(
                what,
                format!(
                    "host buffer of {len} elements for a tensor of shape {}",
                    self.shape
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({}, {}, device {})",
            self.shape,
            self.dtype,
            self.device().id()
        )
    }
}

/// The right to use the memory of some tensors for one operation: exclusive for the tensors it
/// writes, shared for those it reads; released when dropped.
///
/// Tensors are shared handles (cloning one does not copy its memory), so two threads can hold
/// the same memory. Every checked operation takes an `Access` first, and an operation that
/// would write memory another thread is reading or writing at that moment fails with an error
/// instead of racing. It costs a few uncontended atomic operations per call.
pub struct Access<'a> {
    writes: [Option<&'a Storage>; 4],
    reads: [Option<&'a Storage>; 4],
}

impl<'a> Access<'a> {
    /// Takes exclusive access to the memory of `writes` and shared access to that of `reads`
    /// (memory that is also written is taken once, exclusively). At most four of each.
    pub fn new(
        op: &'static str,
        writes: &[&'a Tensor],
        reads: &[&'a Tensor],
    ) -> Result<Access<'a>> {
        let mut a = Access {
            writes: [None; 4],
            reads: [None; 4],
        };
        let busy = || {
            Error::invalid(format!(
                "{op}: a tensor is being used by an operation on another thread (tensors are shared handles; synchronise threads that use the same one)"
            ))
        };
        for (i, t) in writes.iter().copied().enumerate() {
            let s: &'a Storage = &t.storage;
            if a.writes.iter().flatten().any(|w| std::ptr::eq(*w, s)) {
                continue;
            }
            if s.borrow
                .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                return Err(busy());
            }
            a.writes[i] = Some(s);
        }
        for (i, t) in reads.iter().copied().enumerate() {
            let s: &'a Storage = &t.storage;
            let taken = a
                .writes
                .iter()
                .chain(a.reads.iter())
                .flatten()
                .any(|w| std::ptr::eq(*w, s));
            if taken {
                continue;
            }
            let mut cur = s.borrow.load(Ordering::Relaxed);
            loop {
                if cur & WRITER != 0 {
                    return Err(busy());
                }
                match s.borrow.compare_exchange_weak(
                    cur,
                    cur + 1,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
            a.reads[i] = Some(s);
        }
        Ok(a)
    }
}

impl Drop for Access<'_> {
    fn drop(&mut self) {
        for s in self.writes.iter().flatten() {
            s.borrow.store(0, Ordering::Release);
        }
        for s in self.reads.iter().flatten() {
            s.borrow.fetch_sub(1, Ordering::Release);
        }
    }
}
