//! Working memory of the products and convolutions: one device buffer, grown when an
//! operation needs more and kept, so a warm training step allocates nothing.

use crate::gpu::Memory;
use singa_core::Result;

/// Regions are aligned to this many bytes (what cuBLAS prefers for its operands).
const ALIGN: usize = 256;

/// The scratch buffer of a device (behind its mutex: held while an operation queues work
/// that uses it, since the stream runs that work in call order).
#[derive(Default)]
pub(crate) struct Scratch {
    base: u64,
    bytes: usize,
}

impl Scratch {
    /// Addresses of regions of the given byte sizes, growing the buffer if needed.
    pub(crate) fn regions<const N: usize>(
        &mut self,
        memory: Memory,
        sizes: [usize; N],
    ) -> Result<[u64; N]> {
        let mut offsets = [0usize; N];
        let mut total = 0;
        for (offset, size) in offsets.iter_mut().zip(sizes) {
            *offset = total;
            total += size.next_multiple_of(ALIGN);
        }
        if total > self.bytes {
            // SAFETY: the old buffer is freed in stream order, after the work that used it.
            unsafe { self.release(memory) };
            let bytes = total.max(self.bytes * 2);
            self.base = memory.allocate_zeroed(bytes)?;
            self.bytes = bytes;
        }
        Ok(offsets.map(|o| self.base + o as u64))
    }

    /// Frees the buffer (in stream order).
    ///
    /// # Safety
    /// No later work uses the regions handed out before.
    pub(crate) unsafe fn release(&mut self, memory: Memory) {
        if self.bytes > 0 {
            let _ = memory.free(self.base);
            self.bytes = 0;
        }
    }
}
