//! [`Gpu`]: what the devices of one GPU share, opened once per process.

use crate::driver::{self, Fallible};
use crate::kernels::{self, Kernels};
use crate::scratch::Scratch;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{result as cu, sys as cu_sys, CudaContext, CudaStream};
use singa_core::{Error, Result};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// What every [`CudaDevice`] of one GPU shares, made once per GPU and kept for the life of
/// the process: the context, the one stream every operation is queued on (so the workers and
/// servers of a process, which share tensors, see each other's writes in call order), the
/// loaded kernels, the cuBLAS handle, the fault word and the scratch memory.
pub(crate) struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) kernels: Kernels,
    pub(crate) blas: CudaBlas,
    /// `cuda:N`, also the memory space: tensors of one GPU are usable by all its devices.
    pub(crate) name: String,
    /// The GPU model, architecture and memory, for logs.
    pub(crate) about: String,
    /// Four `u64`s where kernels report the first bad input (see `common.cuh`), then four
    /// where `take_fault` moves them for the host to read.
    pub(crate) fault: u64,
    /// Whether the GPU has memory pools (see [`Memory`]).
    pub(crate) pools: bool,
    /// Held from the launch of a kernel that may report a bad input until its report is read
    /// (and by every other read of the report): the fault words are the GPU's, shared by its
    /// devices on every thread.
    faults: Mutex<()>,
    /// Working memory of the products and convolutions, grown when too small.
    pub(crate) scratch: Mutex<Scratch>,
}

/// Every GPU made so far in this process, by number.
static GPUS: Mutex<Vec<(usize, Arc<Gpu>)>> = Mutex::new(Vec::new());

impl Gpu {
    /// Holds the fault words (see [`Gpu::faults`]).
    pub(crate) fn lock_faults(&self) -> std::sync::MutexGuard<'_, ()> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The GPU `ordinal`, made on first use.
    pub(crate) fn get(ordinal: usize) -> Result<Arc<Gpu>> {
        let mut gpus = GPUS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, gpu)) = gpus.iter().find(|(o, _)| *o == ordinal) {
            return Ok(Arc::clone(gpu));
        }
        let gpu = Arc::new(Gpu::open(ordinal)?);
        gpus.push((ordinal, Arc::clone(&gpu)));
        Ok(gpu)
    }

    fn open(ordinal: usize) -> Result<Gpu> {
        driver::require_driver()?;
        driver::require_nvrtc()?;
        driver::require_cublas()?;
        let count = driver::device_count()?;
        if ordinal >= count {
            return Err(Error::device(
                format!("cuda:{ordinal}"),
                format!("this machine has {count} CUDA GPU(s) (numbered from 0)"),
            ));
        }
        let ctx = CudaContext::new(ordinal).or_device("creating a CUDA context")?;
        let attribute = cu_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED;
        let pools = ctx.attribute(attribute).unwrap_or(0) == 1;
        if pools {
            keep_pool_memory(&ctx)?;
        }
        let stream = ctx.new_stream().or_device("creating a stream")?;
        let (major, minor) = ctx
            .compute_capability()
            .or_device("reading the compute capability")?;
        let arch = format!("sm_{major}{minor}");
        let kernels = kernels::load(&ctx, &arch)?;
        let blas = CudaBlas::new(stream.clone()).or_device("creating a cuBLAS handle")?;
        let model = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let memory = ctx.total_mem().unwrap_or(0) as f64 / (1u64 << 30) as f64;
        let on_stream = Memory {
            stream: stream.cu_stream(),
            pools,
        };
        let fault = on_stream.allocate_zeroed(8 * 8)?;
        Ok(Gpu {
            name: format!("cuda:{ordinal}"),
            about: format!(
                "{model}, {arch}, {memory:.0} GiB, driver for CUDA {}, NVRTC {}{}",
                crate::driver::driver_version(),
                crate::kernels::nvrtc_version(),
                match pools {
                    true => "",
                    false => ", no memory pools (cuMemAlloc)",
                }
            ),
            fault,
            pools,
            faults: Mutex::new(()),
            ctx,
            stream,
            kernels,
            blas,
            scratch: Mutex::new(Scratch::default()),
        })
    }
}

/// Keeps freed memory in the GPU's pool instead of giving it back at every synchronisation
/// (the default), so that a warm step's stream-ordered allocations map nothing new.
fn keep_pool_memory(ctx: &CudaContext) -> Result<()> {
    // SAFETY: the device is the context's; the attribute takes a u64.
    unsafe {
        let pool = cu::device::get_default_mem_pool(ctx.cu_device())
            .or_device("reading the memory pool")?;
        let mut threshold = u64::MAX;
        cu::mem_pool::set_attribute(
            pool,
            cu_sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut c_void,
        )
        .or_device("setting the memory pool's release threshold")
    }
}

/// How a GPU's memory is allocated and freed, on one stream: in stream order
/// (`cuMemAllocAsync`, from the GPU's memory pool), or, where the GPU (or a virtualised
/// driver) has no memory pools, with plain `cuMemAlloc` and `cuMemFree`, which wait for it.
#[derive(Clone, Copy)]
pub(crate) struct Memory {
    pub(crate) stream: cu_sys::CUstream,
    pub(crate) pools: bool,
}

impl Memory {
    /// Queues `bytes` of zeroed memory on the stream (its context current).
    pub(crate) fn allocate_zeroed(self, bytes: usize) -> Result<u64> {
        // SAFETY: the memory is zeroed, in stream order, before any use.
        unsafe {
            let p = match self.pools {
                true => cu::malloc_async(self.stream, bytes),
                false => cu::malloc_sync(bytes),
            }
            .or_device("allocating GPU memory")?;
            cu::memset_d8_async(p, 0, bytes, self.stream).or_device("zeroing GPU memory")?;
            Ok(p)
        }
    }

    /// Frees memory from [`Memory::allocate_zeroed`] once the work queued on the stream is
    /// done with it.
    ///
    /// # Safety
    /// No work queued after this call uses the memory.
    pub(crate) unsafe fn free(self, p: u64) -> Result<()> {
        match self.pools {
            true => cu::free_async(p, self.stream).or_device("freeing GPU memory"),
            // cuMemFree does not wait for the stream: wait first.
            false => cu::stream::synchronize(self.stream)
                .and_then(|()| cu::free_sync(p))
                .or_device("freeing GPU memory"),
        }
    }
}
