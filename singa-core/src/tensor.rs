//! Tensors: a shape and a dtype over memory owned by a device.

use crate::device::{BufHandle, BufView, DeviceRef};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::shape::Shape;
use abi_stable::std_types::RArc;
use abi_stable::StableAbi;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One allocation on a device; freed on the device when the last tensor using it is dropped.
#[repr(C)]
#[derive(StableAbi)]
struct Storage {
    device: DeviceRef,
    handle: BufHandle,
    len: usize,
    dtype: DType,
    /// Which parts of the memory operations use right now (see [`Access`]).
    borrows: Borrows,
}

/// The value of [`Region::users`] that marks an operation writing the region.
const WRITER: usize = 1 << (usize::BITS - 1);

/// The most regions of one allocation that operations can use at the same moment. An
/// operation that needs another one waits until one is given back: the servers of a large
/// group update disjoint slices of one parameter at once, and more of them than this can be
/// in the middle of an operation (each on a thread the scheduler paused).
pub const MAX_REGIONS: usize = 16;

/// How long an operation waits for a region of an allocation whose regions are all in use
/// before it gives up (a thread holding one for this long is stuck, not slow).
const FULL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why [`Borrows::acquire`] did not take a region.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Refused {
    /// Another operation uses overlapping elements, and one of the two writes them.
    Conflict,
    /// Every region of the allocation is in use (by operations on disjoint elements).
    Full,
}

/// Elements `start .. end` of an allocation, used by `users` operations: [`WRITER`], a count
/// of readers, or 0 when the slot is free. Changed only under [`Borrows::lock`].
#[repr(C)]
#[derive(StableAbi)]
struct Region {
    start: AtomicUsize,
    end: AtomicUsize,
    users: AtomicUsize,
}

/// The regions of an allocation in use. Disjoint regions can be written by different threads
/// at once (the servers of a group update their slices of one parameter in place); an
/// operation that would write memory another is reading or writing is refused.
#[repr(C)]
#[derive(StableAbi)]
struct Borrows {
    lock: AtomicBool,
    regions: [Region; MAX_REGIONS],
}

impl Borrows {
    fn new() -> Borrows {
        Borrows {
            lock: AtomicBool::new(false),
            regions: std::array::from_fn(|_| Region {
                start: AtomicUsize::new(0),
                end: AtomicUsize::new(0),
                users: AtomicUsize::new(0),
            }),
        }
    }

    /// Runs `f` holding the lock (held for a few dozen instructions at most).
    fn locked<T>(&self, f: impl FnOnce(&[Region; MAX_REGIONS]) -> T) -> T {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let out = f(&self.regions);
        self.lock.store(false, Ordering::Release);
        out
    }

    /// Takes `start .. end` for writing or reading, unless that conflicts with a current use
    /// or every region is in use.
    fn acquire(&self, start: usize, end: usize, write: bool) -> Result<(), Refused> {
        self.locked(|regions| {
            let mut free = None;
            let mut same = None;
            for (i, r) in regions.iter().enumerate() {
                let users = r.users.load(Ordering::Relaxed);
                if users == 0 {
                    free.get_or_insert(i);
                    continue;
                }
                let (s, e) = (
                    r.start.load(Ordering::Relaxed),
                    r.end.load(Ordering::Relaxed),
                );
                if s < end && start < e && (write || users == WRITER) {
                    return Err(Refused::Conflict);
                }
                if !write && (s, e) == (start, end) {
                    same = Some(i);
                }
            }
            if let Some(i) = same {
                regions[i].users.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            let Some(i) = free else {
                return Err(Refused::Full);
            };
            let r = &regions[i];
            r.start.store(start, Ordering::Relaxed);
            r.end.store(end, Ordering::Relaxed);
            r.users
                .store(if write { WRITER } else { 1 }, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Gives back what [`Borrows::acquire`] took.
    fn release(&self, start: usize, end: usize, write: bool) {
        self.locked(|regions| {
            let held = regions.iter().find(|r| {
                let users = r.users.load(Ordering::Relaxed);
                users != 0
                    && (users == WRITER) == write
                    && r.start.load(Ordering::Relaxed) == start
                    && r.end.load(Ordering::Relaxed) == end
            });
            if let Some(r) = held {
                if write {
                    r.users.store(0, Ordering::Relaxed);
                } else {
                    r.users.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })
    }
}

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
                borrows: Borrows::new(),
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

    /// Whether `self` and `other` are the very same elements (same memory, offset and size).
    pub fn same_view(&self, other: &Tensor) -> bool {
        self.shares_storage(other) && self.offset == other.offset && self.numel() == other.numel()
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

    /// Copies the elements' bytes (native order) into `out`, which must hold exactly
    /// `numel · dtype size` bytes: what a transport between processes sends, whatever the
    /// dtype.
    pub fn read_bytes(&self, out: &mut [u8]) -> Result<()> {
        self.check_bytes("read_bytes", out.len())?;
        let _access = Access::new("read_bytes", &[], &[self])?;
        // SAFETY: the view is this tensor's own, and the byte length was checked.
        unsafe { self.device().raw().read(self.view(), out.into()) }.into_result()
    }

    /// Overwrites the elements with the bytes `data` (native order; exactly `numel · dtype
    /// size` of them): what a transport between processes receives.
    pub fn write_bytes(&mut self, data: &[u8]) -> Result<()> {
        self.check_bytes("write_bytes", data.len())?;
        let _access = Access::new("write_bytes", &[self], &[])?;
        // SAFETY: the view is this tensor's own, and the byte length was checked.
        unsafe { self.device().raw().write(self.view(), data.into()) }.into_result()
    }

    /// Copies `src` (same dtype and number of elements) into this tensor, whatever memory each
    /// lives in: on this tensor's device when it can use `src`'s memory, otherwise between
    /// host memory and a device's (what arrives from another process lands in host memory),
    /// or between two devices' memories through a host buffer of this thread's that is reused
    /// (nothing is allocated once it is large enough).
    pub fn copy_from(&mut self, src: &Tensor) -> Result<()> {
        let dev = self.device().clone();
        if dev.shares_memory_with(src.device()) {
            return dev.copy(src, self);
        }
        if src.dtype != self.dtype || src.numel() != self.numel() {
            return Err(Error::shape(
                "copy_from",
                format!(
                    "a {} tensor of shape {} into a {} tensor of shape {}",
                    src.dtype, src.shape, self.dtype, self.shape
                ),
            ));
        }
        // SAFETY: the access checker holds `src` (or `self`) for the whole use of its bytes,
        // and a handle keeps the memory alive.
        if let Some((ptr, len)) = unsafe { src.host_bytes() } {
            let _reading = Access::new("copy_from", &[], &[src])?;
            return self.write_bytes(unsafe { std::slice::from_raw_parts(ptr, len) });
        }
        if let Some((ptr, len)) = unsafe { self.host_bytes() } {
            let _writing = Access::new("copy_from", &[self], &[])?;
            return src.read_bytes(unsafe { std::slice::from_raw_parts_mut(ptr, len) });
        }
        thread_local! {
            static STAGING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        STAGING.with_borrow_mut(|staging| {
            let n = self.numel() * self.dtype.size();
            if staging.len() < n {
                staging.resize(n, 0);
            }
            src.read_bytes(&mut staging[..n])?;
            self.write_bytes(&staging[..n])
        })
    }

    /// This tensor where `dev` can use it: itself when `dev` shares its memory, otherwise a
    /// copy in `staged`, a tensor of `dev`'s made on first use (or when the shape changes) and
    /// reused after, so that a warm step allocates nothing.
    pub fn usable_on(self, dev: &DeviceRef, staged: &mut Option<Tensor>) -> Result<Tensor> {
        if dev.shares_memory_with(self.device()) {
            return Ok(self);
        }
        let fits = |t: &Tensor| t.shape == self.shape && t.dtype == self.dtype;
        let copy = match staged {
            Some(t) if fits(t) => t,
            _ => staged.insert(Tensor::zeros(dev, self.shape, self.dtype)?),
        };
        copy.copy_from(&self)?;
        Ok(copy.clone())
    }

    /// The address of the first element and the length in bytes, when the tensor lives in
    /// host memory (see [`DeviceRef::is_host`]): for transports that send from and receive
    /// into a tensor without copying it first.
    ///
    /// # Safety
    /// The memory is used outside the checked operations: the caller reads or writes it only
    /// while no operation on another thread writes (or, to write, reads) these elements, and
    /// only while a handle to the tensor keeps the memory alive.
    pub unsafe fn host_bytes(&self) -> Option<(*mut u8, usize)> {
        if !self.device().is_host() {
            return None;
        }
        let size = self.dtype.size();
        let addr = self.storage.handle as usize + self.offset * size;
        Some((addr as *mut u8, self.numel() * size))
    }

    fn check_bytes(&self, what: &str, len: usize) -> Result<()> {
        let want = self.numel() * self.dtype.size();
        if len != want {
            return Err(Error::shape(
                what,
                format!(
                    "{len} bytes for a tensor of shape {} and dtype {} ({want} bytes)",
                    self.shape, self.dtype
                ),
            ));
        }
        Ok(())
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

/// The right to use the memory of some tensors for one operation: exclusive for the elements
/// it writes, shared for those it reads; released when dropped.
///
/// Tensors are shared handles (cloning one does not copy its memory), so two threads can hold
/// the same memory. Every checked operation takes an `Access` first, and an operation that
/// would write elements another thread is reading or writing at that moment fails with an
/// error instead of racing; threads may write disjoint parts of one allocation at once. It
/// costs a short spin lock per tensor and call.
pub struct Access<'a> {
    taken: [Option<Taken<'a>>; 8],
}

/// One region an [`Access`] holds.
#[derive(Clone, Copy)]
struct Taken<'a> {
    storage: &'a Storage,
    start: usize,
    end: usize,
    write: bool,
}

impl<'a> Access<'a> {
    /// Takes exclusive access to the elements of `writes` and shared access to those of
    /// `reads` (elements that are also written are taken once, exclusively). At most four of
    /// each.
    pub fn new(
        op: &'static str,
        writes: &[&'a Tensor],
        reads: &[&'a Tensor],
    ) -> Result<Access<'a>> {
        let mut waiting_since = None;
        loop {
            match Access::take(writes, reads) {
                Ok(a) => return Ok(a),
                Err(Refused::Conflict) => {
                    return Err(Error::invalid(format!(
                        "{op}: a tensor is being used by an operation on another thread (tensors are shared handles; synchronise threads that use the same one)"
                    )))
                }
                // Nothing is held while waiting (what was taken is given back), so operations
                // that wait for each other's allocations cannot deadlock.
                Err(Refused::Full) => {
                    let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > FULL_WAIT {
                        return Err(Error::invalid(format!(
                            "{op}: waited {} s for one of the {MAX_REGIONS} regions of a tensor's memory that operations on other threads hold",
                            FULL_WAIT.as_secs()
                        )));
                    }
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Takes every region at once, or none.
    fn take(writes: &[&'a Tensor], reads: &[&'a Tensor]) -> Result<Access<'a>, Refused> {
        let mut a = Access { taken: [None; 8] };
        let tensors = writes
            .iter()
            .map(|t| (*t, true))
            .chain(reads.iter().map(|t| (*t, false)));
        for (slot, (t, write)) in tensors.enumerate().take(8) {
            let storage: &'a Storage = &t.storage;
            let (start, end) = (t.offset, t.offset + t.numel());
            // This operation's own writes cover what it reads of the same elements.
            let covered = a.taken.iter().flatten().any(|h| {
                std::ptr::eq(h.storage, storage)
                    && h.start <= start
                    && end <= h.end
                    && (h.write || !write)
            });
            if covered {
                continue;
            }
            // On failure, dropping `a` gives back what it took.
            storage.borrows.acquire(start, end, write)?;
            a.taken[slot] = Some(Taken {
                storage,
                start,
                end,
                write,
            });
        }
        Ok(a)
    }
}

impl Drop for Access<'_> {
    fn drop(&mut self) {
        for h in self.taken.iter().flatten() {
            h.storage.borrows.release(h.start, h.end, h.write);
        }
    }
}
