//! Buffers the CPU device keeps between operations: per thread, packing space for matrix
//! products, temporaries (im2col columns, LRN ratios), and partial results of reductions
//! split over threads. They grow to the largest operation seen and are then reused, so a
//! training step allocates nothing once warmed up.

use super::sgemm::Workspace;
use std::sync::{Mutex, MutexGuard};

/// The device's buffers; one operation uses them at a time.
#[derive(Default)]
pub(crate) struct Scratch {
    buffers: Mutex<Buffers>,
}

impl Scratch {
    /// The buffers, for the duration of one operation.
    pub fn lock(&self) -> MutexGuard<'_, Buffers> {
        // A panic inside an operation leaves the buffers as valid as before.
        self.buffers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Per-thread buffers (index `t` belongs to thread `t` of a parallel operation).
#[derive(Default)]
pub(crate) struct Buffers {
    /// Matrix-product packing space.
    pub work: Vec<Workspace>,
    /// Temporaries.
    pub temp: Vec<Vec<f32>>,
    /// Partial results of threads `1..` (thread 0 writes the destination itself).
    pub partials: Vec<Vec<f32>>,
    /// One buffer all threads read (prepared before they start).
    pub shared: Vec<f32>,
    /// Another, for filters transformed before a convolution (whose filters may already be
    /// in `shared`).
    pub transformed: Vec<f32>,
}

/// Makes `count` vectors of at least `len` elements available, growing only.
fn grow(v: &mut Vec<Vec<f32>>, count: usize, len: usize) {
    while v.len() < count {
        v.push(Vec::new());
    }
    for b in &mut v[..count] {
        if b.len() < len {
            b.resize(len, 0.0);
        }
    }
}

impl Buffers {
    /// At least `count` packing workspaces.
    pub fn reserve_work(&mut self, count: usize) {
        while self.work.len() < count {
            self.work.push(Workspace::default());
        }
    }

    /// At least `count` temporaries of `len` elements.
    pub fn reserve_temp(&mut self, count: usize, len: usize) {
        grow(&mut self.temp, count, len);
    }

    /// At least `count` partial-result buffers of `len` elements.
    pub fn reserve_partials(&mut self, count: usize, len: usize) {
        grow(&mut self.partials, count, len);
    }

    /// Raw addresses of the buffers, for the threads of one operation (each uses its own).
    pub fn addresses(&mut self) -> Addresses {
        Addresses {
            work: self.work.as_mut_ptr() as usize,
            temp: self.temp.as_mut_ptr() as usize,
            partials: self.partials.as_mut_ptr() as usize,
        }
    }
}

/// Where thread `t` finds its buffers (plain addresses, so closures over them are `Sync`).
#[derive(Clone, Copy)]
pub(crate) struct Addresses {
    work: usize,
    temp: usize,
    partials: usize,
}

impl Addresses {
    /// Thread `t`'s packing workspace.
    ///
    /// # Safety
    /// Reserved for at least `t + 1` threads; only thread `t` uses it.
    pub unsafe fn work<'a>(&self, t: usize) -> &'a mut Workspace {
        &mut *(self.work as *mut Workspace).add(t)
    }

    /// Thread `t`'s temporary.
    ///
    /// # Safety
    /// As for [`Addresses::work`].
    pub unsafe fn temp<'a>(&self, t: usize) -> &'a mut [f32] {
        (*(self.temp as *mut Vec<f32>).add(t)).as_mut_slice()
    }

    /// Partial-result buffer `i` (of thread `i + 1`).
    ///
    /// # Safety
    /// As for [`Addresses::work`].
    pub unsafe fn partial<'a>(&self, i: usize) -> &'a mut [f32] {
        (*(self.partials as *mut Vec<f32>).add(i)).as_mut_slice()
    }
}
