//! [`CudaDevice`]: singa's `Device` on one NVIDIA GPU.
//!
//! A buffer handle is the allocation's device address. Every operation is queued on the
//! device's one stream (allocations too, stream-ordered), so operations from several worker
//! threads run in the order they were called and nothing waits for the GPU except
//! [`Device::read`] and [`Device::synchronize`].

use crate::codes::{adaptive_code, unary_code, PoolGeometry};
use crate::driver::Fallible;
use crate::gpu::{Gpu, Memory};
use crate::launch::{blocks, launch, ptr, row_block, row_blocks, BLOCK};
use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{result as cu, sys as cu_sys, CudaFunction};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut};
use singa_core::{
    catch_panic, AdaptiveArgs, BatchNormArgs, BinaryOp, BufHandle, BufView, ConvShape, DType,
    Device, DeviceInfo, Dims3, Distribution, Error, GemmArgs, LrnShape, PoolKind, PoolShape,
    Precision, ReduceOp, Result, SgdArgs, UnaryOp,
};
use std::ffi::c_void;
use std::sync::Arc;

/// The handle of empty allocations (never dereferenced, never freed).
const EMPTY: BufHandle = 256;

/// One NVIDIA GPU as a singa device, with products in a precision of its own.
pub struct CudaDevice {
    pub(crate) gpu: Arc<Gpu>,
    precision: Precision,
    description: String,
}

fn require(v: &BufView, dtype: DType, op: &str) -> Result<()> {
    if v.dtype != dtype {
        return Err(Error::unsupported(
            "cuda",
            format!("{op} on {} tensors", v.dtype),
        ));
    }
    Ok(())
}

fn f32s(views: &[&BufView], op: &str) -> Result<()> {
    views.iter().try_for_each(|v| require(v, DType::F32, op))
}

impl CudaDevice {
    /// The GPU `ordinal` as a device whose products run in `precision`.
    ///
    /// Fails with a message saying what is missing when this machine has no NVIDIA driver,
    /// no such GPU, or no NVRTC or cuBLAS library. The devices of one GPU share its stream
    /// and memory (see [`CudaDevice::info`]'s memory space).
    pub fn new(ordinal: usize, precision: Precision) -> Result<CudaDevice> {
        catch_panic("cuda device", || {
            let gpu = Gpu::get(ordinal)?;
            let description = format!("{} ({}, {precision} products)", gpu.name, gpu.about);
            Ok(CudaDevice {
                gpu,
                precision,
                description,
            })
        })
    }

    /// Runs a method body with the context bound, catching panics.
    fn run<T>(&self, f: impl FnOnce() -> Result<T>) -> RResult<T, Error> {
        catch_panic("cuda device", || {
            self.bind()?;
            f()
        })
        .into()
    }

    /// Makes this device's context current on the calling thread.
    pub(crate) fn bind(&self) -> Result<()> {
        self.gpu
            .ctx
            .bind_to_thread()
            .or_device("binding the CUDA context")
    }

    /// The stream every operation is queued on.
    pub(crate) fn cu_stream(&self) -> cu_sys::CUstream {
        self.gpu.stream.cu_stream()
    }

    /// How this device's stream allocates and frees memory.
    pub(crate) fn memory(&self) -> Memory {
        Memory {
            stream: self.cu_stream(),
            pools: self.gpu.pools,
        }
    }

    /// Queues a kernel (see the `launch!` macro).
    ///
    /// # Safety
    /// `params` point at values of the types the kernel declares, addresses inside live
    /// allocations.
    pub(crate) unsafe fn launch(
        &self,
        kernel: &CudaFunction,
        grid: u32,
        block: u32,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        cu::launch_kernel(
            kernel.cu_function(),
            (grid, 1, 1),
            (block, 1, 1),
            0,
            self.cu_stream(),
            params,
        )
        .or_device("launching a kernel")
    }

    /// Zeroes a view.
    unsafe fn zero(&self, v: &BufView) -> Result<()> {
        if v.len == 0 {
            return Ok(());
        }
        cu::memset_d8_async(ptr(v), 0, v.len * v.dtype.size(), self.cu_stream())
            .or_device("zeroing")
    }

    /// Waits for the stream, then reports (and clears) the first bad input a kernel found.
    fn settle(&self) -> Result<()> {
        let _faults = self.gpu.lock_faults();
        self.settle_held()
    }

    /// [`CudaDevice::settle`], with the GPU's fault words held by the caller: from the launch
    /// of a kernel that may report a bad input through its settle, so that no other thread's
    /// settle takes (or clears) that report in between.
    fn settle_held(&self) -> Result<()> {
        let (fault, report) = (self.gpu.fault, self.gpu.fault + 32);
        // One kernel moves the fault word to the report and clears it: atomic in stream order,
        // so a fault queued by another thread meanwhile is kept for the next settle.
        // SAFETY: both are the GPU's fault words.
        unsafe { launch!(self, take_fault, 1, 1; fault, report)? };
        let mut words = [0u64; 4];
        // SAFETY: the report holds four u64s; the copy is waited for before `words` is read.
        unsafe {
            cu::memcpy_dtoh_async(&mut words, report, self.cu_stream())
                .or_device("reading the fault word")?;
        }
        self.gpu
            .stream
            .synchronize()
            .or_device("waiting for the GPU")?;
        let (value, position, bound) = (words[1] as i64, words[2] as i64, words[3] as i64);
        Err(Error::invalid(match words[0] {
            0 => return Ok(()),
            1 => format!("label {value} of sample {position} is outside the {bound} classes"),
            2 => format!(
                "id {value} at position {position} is outside the {bound} rows of the table"
            ),
            _ => format!("argmax {value} outside a plane of {bound}"),
        }))
    }

    /// The cuBLAS handle (bound to this device's stream).
    pub(crate) fn blas_handle(&self) -> blas_sys::cublasHandle_t {
        *self.gpu.blas.handle()
    }

    /// The precision of products.
    pub(crate) fn precision(&self) -> Precision {
        self.precision
    }
}

impl Device for CudaDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: "cuda".into(),
            ordinal: self.gpu.ctx.ordinal() as u32,
            description: self.description.clone().into(),
            memory_space: self.gpu.name.clone().into(),
        }
    }

    fn alloc(&self, dtype: DType, len: usize) -> RResult<BufHandle, Error> {
        self.run(|| {
            if len == 0 {
                return Ok(EMPTY);
            }
            let bytes = len.checked_mul(dtype.size()).ok_or_else(|| {
                Error::invalid(format!("cannot allocate {len} elements of {dtype}"))
            })?;
            self.memory().allocate_zeroed(bytes)
        })
    }

    unsafe fn free(&self, handle: BufHandle, _dtype: DType, len: usize) {
        if len == 0 || handle == EMPTY || self.bind().is_err() {
            return;
        }
        let _ = self.memory().free(handle);
    }

    unsafe fn write(&self, dst: BufView, src: RSlice<'_, u8>) -> RResult<(), Error> {
        self.run(|| {
            dst.check_host_len(src.len(), "write")?;
            if src.is_empty() {
                return Ok(());
            }
            // From pageable memory the copy is staged before the call returns, so the host
            // buffer may be reused at once and the stream need not be waited for.
            cu::memcpy_htod_async(ptr(&dst), src.as_slice(), self.cu_stream())
                .or_device("copying to the GPU")
        })
    }

    unsafe fn read(&self, src: BufView, mut dst: RSliceMut<'_, u8>) -> RResult<(), Error> {
        self.run(|| {
            src.check_host_len(dst.len(), "read")?;
            if dst.is_empty() {
                return self.settle();
            }
            cu::memcpy_dtoh_async(dst.as_mut_slice(), ptr(&src), self.cu_stream())
                .or_device("copying from the GPU")?;
            self.settle()
        })
    }

    unsafe fn copy(&self, src: BufView, dst: BufView) -> RResult<(), Error> {
        self.run(|| {
            if src.same_region(&dst) || src.len == 0 {
                return Ok(());
            }
            cu::memcpy_dtod_async(
                ptr(&dst),
                ptr(&src),
                src.len * src.dtype.size(),
                self.cu_stream(),
            )
            .or_device("copying on the GPU")
        })
    }

    unsafe fn copy2d(
        &self,
        src: BufView,
        src_ld: usize,
        dst: BufView,
        dst_ld: usize,
        rows: usize,
        cols: usize,
    ) -> RResult<(), Error> {
        self.run(|| {
            if rows == 0 || cols == 0 {
                return Ok(());
            }
            let (s, d) = (ptr(&src), ptr(&dst));
            let (sl, dl, r, c) = (src_ld as i64, dst_ld as i64, rows as i64, cols as i64);
            let grid = blocks(rows * cols);
            match src.dtype.size() {
                1 => launch!(self, copy2d_u8, grid, BLOCK; s, sl, d, dl, r, c),
                2 => launch!(self, copy2d_u16, grid, BLOCK; s, sl, d, dl, r, c),
                _ => launch!(self, copy2d_u32, grid, BLOCK; s, sl, d, dl, r, c),
            }
        })
    }

    unsafe fn cast(&self, src: BufView, dst: BufView) -> RResult<(), Error> {
        self.run(|| {
            if src.dtype == dst.dtype {
                return self.copy(src, dst).into_result();
            }
            let (sd, dd, n) = (src.dtype as i32, dst.dtype as i32, src.len as i64);
            launch!(self, cast_any, blocks(src.len), BLOCK; ptr(&src), sd, ptr(&dst), dd, n)
        })
    }

    unsafe fn fill(&self, dst: BufView, value: f64) -> RResult<(), Error> {
        self.run(|| {
            let (d, n) = (dst.dtype as i32, dst.len as i64);
            launch!(self, fill_any, blocks(dst.len), BLOCK; ptr(&dst), d, n, value)
        })
    }

    unsafe fn random(
        &self,
        dst: BufView,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&dst], "random")?;
            let (kind, a, b) = match dist {
                Distribution::Uniform { low, high } => (0i32, low, high),
                Distribution::Gaussian { mean, std } => (1, mean, std),
                Distribution::Bernoulli { p, scale } => (2, p, scale),
            };
            let n = dst.len as i64;
            launch!(self, random_fill, blocks(dst.len), BLOCK; ptr(&dst), n, kind, a, b, seed, offset)
        })
    }

    unsafe fn gemm(&self, args: &GemmArgs) -> RResult<(), Error> {
        self.run(|| crate::products::gemm(self, args))
    }

    unsafe fn unary(&self, op: UnaryOp, x: BufView, y: BufView) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &y], "unary")?;
            let (code, p0, p1) = unary_code(op);
            let n = x.len as i64;
            launch!(self, unary, blocks(x.len), BLOCK; code, p0, p1, ptr(&x), ptr(&y), n)
        })
    }

    unsafe fn unary_backward(
        &self,
        op: UnaryOp,
        x: BufView,
        y: BufView,
        dy: BufView,
        dx: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &y, &dy, &dx], "unary_backward")?;
            let (code, p0, p1) = unary_code(op);
            let n = x.len as i64;
            launch!(self, unary_backward, blocks(x.len), BLOCK;
                code, p0, p1, ptr(&x), ptr(&y), ptr(&dy), ptr(&dx), n)
        })
    }

    unsafe fn binary(
        &self,
        op: BinaryOp,
        a: BufView,
        b: BufView,
        y: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&a, &b, &y], "binary")?;
            let (code, n) = (op as i32, a.len as i64);
            launch!(self, binary, blocks(a.len), BLOCK; code, ptr(&a), ptr(&b), ptr(&y), n)
        })
    }

    unsafe fn axpby(&self, alpha: f32, x: BufView, beta: f32, y: BufView) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &y], "axpby")?;
            let n = x.len as i64;
            launch!(self, axpby, blocks(x.len), BLOCK; alpha, ptr(&x), beta, ptr(&y), n)
        })
    }

    unsafe fn affine(&self, x: BufView, y: BufView, scale: f32, shift: f32) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &y], "affine")?;
            let n = x.len as i64;
            launch!(self, affine, blocks(x.len), BLOCK; ptr(&x), ptr(&y), scale, shift, n)
        })
    }

    unsafe fn add_broadcast(&self, d: Dims3, v: BufView, y: BufView) -> RResult<(), Error> {
        self.run(|| self.broadcast(0, d, v, y, "add_broadcast"))
    }

    unsafe fn mul_broadcast(&self, d: Dims3, v: BufView, y: BufView) -> RResult<(), Error> {
        self.run(|| self.broadcast(1, d, v, y, "mul_broadcast"))
    }

    unsafe fn reduce(
        &self,
        op: ReduceOp,
        d: Dims3,
        x: BufView,
        y: BufView,
        alpha: f32,
        beta: f32,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &y], "reduce")?;
            let outputs = d.outer * d.inner;
            if outputs == 0 {
                return Ok(());
            }
            let code = op as i32;
            let (o, m, i) = (d.outer as i64, d.mid as i64, d.inner as i64);
            // Wide outputs: a thread each; few outputs over a long axis: a block each.
            if d.inner >= 32 || outputs >= 4096 || d.mid < 64 {
                launch!(self, reduce_mid_threads, blocks(outputs), BLOCK;
                    code, ptr(&x), ptr(&y), o, m, i, alpha, beta)
            } else {
                launch!(self, reduce_mid_blocks, row_blocks(outputs), BLOCK;
                    code, ptr(&x), ptr(&y), o, m, i, alpha, beta)
            }
        })
    }

    unsafe fn softmax(
        &self,
        rows: usize,
        cols: usize,
        x: BufView,
        y: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &y], "softmax")?;
            if rows == 0 || cols == 0 {
                return Ok(());
            }
            let (r, c) = (rows as i64, cols as i64);
            launch!(self, softmax_rows, row_blocks(rows), row_block(cols); ptr(&x), ptr(&y), r, c)
        })
    }

    unsafe fn softmax_cross_entropy(
        &self,
        rows: usize,
        cols: usize,
        logits: BufView,
        labels: BufView,
        probs: BufView,
        stats: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&logits, &probs, &stats], "softmax_cross_entropy")?;
            require(&labels, DType::I32, "softmax_cross_entropy labels")?;
            if rows == 0 || cols == 0 {
                return Ok(());
            }
            let (r, c) = (rows as i64, cols as i64);
            let _faults = self.gpu.lock_faults();
            launch!(self, softmax_cross_entropy, row_blocks(rows), row_block(cols);
                ptr(&logits), ptr(&labels), ptr(&probs), ptr(&stats), r, c, self.gpu.fault)?;
            // Bad labels and ids are errors of this call (the loss is read every step anyway).
            self.settle_held()
        })
    }

    unsafe fn softmax_cross_entropy_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: BufView,
        labels: BufView,
        dx: BufView,
        scale: f32,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&probs, &dx], "softmax_cross_entropy_backward")?;
            require(&labels, DType::I32, "softmax_cross_entropy_backward labels")?;
            let (r, c) = (rows as i64, cols as i64);
            let _faults = self.gpu.lock_faults();
            launch!(self, softmax_cross_entropy_backward, blocks(rows * cols), BLOCK;
                ptr(&probs), ptr(&labels), ptr(&dx), r, c, scale, self.gpu.fault)?;
            // Bad labels and ids are errors of this call (the loss is read every step anyway).
            self.settle_held()
        })
    }

    unsafe fn sgd_update(
        &self,
        w: BufView,
        g: BufView,
        m: ROption<BufView>,
        a: SgdArgs,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&w, &g], "sgd_update")?;
            let momentum = match m {
                ROption::RSome(mv) => {
                    require(&mv, DType::F32, "sgd_update")?;
                    ptr(&mv)
                }
                ROption::RNone => 0,
            };
            let (n, nesterov) = (w.len as i64, a.nesterov as i32);
            launch!(self, sgd_update, blocks(w.len), BLOCK;
                ptr(&w), ptr(&g), momentum, n, a.lr, a.momentum, a.weight_decay, nesterov,
                a.grad_scale)
        })
    }

    fn synchronize(&self) -> RResult<(), Error> {
        self.run(|| self.settle())
    }

    unsafe fn adaptive_update(
        &self,
        w: BufView,
        g: BufView,
        s1: BufView,
        s2: ROption<BufView>,
        a: AdaptiveArgs,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&w, &g, &s1], "adaptive_update")?;
            let second = match s2 {
                ROption::RSome(v) => {
                    require(&v, DType::F32, "adaptive_update")?;
                    ptr(&v)
                }
                ROption::RNone if a.rule.needs_second_state() => {
                    return Err(Error::invalid("this update rule needs a second state"))
                }
                ROption::RNone => 0,
            };
            let (rule, c, decoupled) = adaptive_code(a.rule);
            let n = w.len as i64;
            launch!(self, adaptive_update, blocks(w.len), BLOCK;
                ptr(&w), ptr(&g), ptr(&s1), second, n, rule, c[0], c[1], c[2], c[3], c[4],
                decoupled, a.lr, a.weight_decay, a.grad_scale)
        })
    }

    unsafe fn conv2d(
        &self,
        shape: &ConvShape,
        x: BufView,
        w: BufView,
        y: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &w, &y], "conv2d")?;
            crate::conv::forward(self, shape, &x, &w, &y)
        })
    }

    unsafe fn conv2d_backward_data(
        &self,
        shape: &ConvShape,
        dy: BufView,
        w: BufView,
        dx: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&dy, &w, &dx], "conv2d_backward_data")?;
            crate::conv::backward_data(self, shape, &dy, &w, &dx)
        })
    }

    unsafe fn conv2d_backward_filter(
        &self,
        shape: &ConvShape,
        x: BufView,
        dy: BufView,
        dw: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &dy, &dw], "conv2d_backward_filter")?;
            crate::conv::backward_filter(self, shape, &x, &dy, &dw)
        })
    }

    unsafe fn pool2d(
        &self,
        s: &PoolShape,
        x: BufView,
        y: BufView,
        argmax: ROption<BufView>,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &y], "pool2d")?;
            let arg = match argmax {
                ROption::RSome(a) => {
                    require(&a, DType::I32, "pool2d argmax")?;
                    ptr(&a)
                }
                ROption::RNone => 0,
            };
            let kind = (s.kind == PoolKind::Avg) as i32;
            let g = PoolGeometry::of(s);
            launch!(self, pool2d, blocks(s.output_len()), BLOCK;
                kind, ptr(&x), ptr(&y), arg, g.planes, g.height, g.width, g.kh, g.kw, g.sh,
                g.sw, g.ph, g.pw, g.out_h, g.out_w)
        })
    }

    unsafe fn pool2d_backward(
        &self,
        s: &PoolShape,
        dy: BufView,
        argmax: ROption<BufView>,
        dx: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&dy, &dx], "pool2d_backward")?;
            let arg = match (s.kind, argmax) {
                (_, ROption::RSome(a)) => {
                    require(&a, DType::I32, "pool2d_backward argmax")?;
                    ptr(&a)
                }
                (PoolKind::Max, ROption::RNone) => {
                    return Err(Error::invalid(
                        "max pooling's backward pass needs the argmax",
                    ))
                }
                (PoolKind::Avg, ROption::RNone) => 0,
            };
            // With an argmax the backward pass follows it, whatever the kind (as the
            // reference does).
            let kind = (arg == 0) as i32;
            self.zero(&dx)?;
            let g = PoolGeometry::of(s);
            let _faults = self.gpu.lock_faults();
            launch!(self, pool2d_backward, blocks(s.output_len()), BLOCK;
                kind, ptr(&dy), arg, ptr(&dx), g.planes, g.height, g.width, g.kh, g.kw, g.sh,
                g.sw, g.ph, g.pw, g.out_h, g.out_w, self.gpu.fault)?;
            // Bad labels and ids are errors of this call (the loss is read every step anyway).
            self.settle_held()
        })
    }

    unsafe fn lrn(
        &self,
        s: &LrnShape,
        x: BufView,
        y: BufView,
        scale: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &y, &scale], "lrn")?;
            let (b, c, p, size) = (
                s.batch as i64,
                s.channels as i64,
                s.spatial as i64,
                s.size as i64,
            );
            launch!(self, lrn, blocks(s.len()), BLOCK;
                ptr(&x), ptr(&y), ptr(&scale), b, c, p, size, s.alpha, s.beta, s.k)
        })
    }

    unsafe fn lrn_backward(
        &self,
        s: &LrnShape,
        x: BufView,
        y: BufView,
        scale: BufView,
        dy: BufView,
        dx: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &y, &scale, &dy, &dx], "lrn_backward")?;
            let (b, c, p, size) = (
                s.batch as i64,
                s.channels as i64,
                s.spatial as i64,
                s.size as i64,
            );
            launch!(self, lrn_backward, blocks(s.len()), BLOCK;
                ptr(&x), ptr(&y), ptr(&scale), ptr(&dy), ptr(&dx), b, c, p, size, s.alpha,
                s.beta)
        })
    }

    unsafe fn batch_norm(
        &self,
        args: &BatchNormArgs,
        x: BufView,
        gamma: BufView,
        beta: BufView,
        y: BufView,
        mean: BufView,
        inv_std: BufView,
        running_mean: BufView,
        running_var: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(
                &[
                    &x,
                    &gamma,
                    &beta,
                    &y,
                    &mean,
                    &inv_std,
                    &running_mean,
                    &running_var,
                ],
                "batch_norm",
            )?;
            let d = args.dims;
            let (o, m, i) = (d.outer as i64, d.mid as i64, d.inner as i64);
            if d.numel() == 0 {
                return Ok(());
            }
            if args.training {
                launch!(self, batch_norm_train, row_blocks(d.mid), BLOCK;
                    ptr(&x), ptr(&gamma), ptr(&beta), ptr(&y), ptr(&mean), ptr(&inv_std),
                    ptr(&running_mean), ptr(&running_var), o, m, i, args.eps, args.momentum)
            } else {
                let n = d.numel() as i64;
                launch!(self, batch_norm_infer, blocks(d.numel()), BLOCK;
                    ptr(&x), ptr(&gamma), ptr(&beta), ptr(&y), ptr(&running_mean),
                    ptr(&running_var), m, i, n, args.eps)
            }
        })
    }

    unsafe fn batch_norm_backward(
        &self,
        args: &BatchNormArgs,
        x: BufView,
        dy: BufView,
        gamma: BufView,
        mean: BufView,
        inv_std: BufView,
        dx: BufView,
        dgamma: BufView,
        dbeta: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(
                &[&x, &dy, &gamma, &mean, &inv_std, &dx, &dgamma, &dbeta],
                "batch_norm_backward",
            )?;
            let d = args.dims;
            if d.numel() == 0 {
                return Ok(());
            }
            let (o, m, i) = (d.outer as i64, d.mid as i64, d.inner as i64);
            launch!(self, batch_norm_backward, row_blocks(d.mid), BLOCK;
                ptr(&x), ptr(&dy), ptr(&gamma), ptr(&mean), ptr(&inv_std), ptr(&dx),
                ptr(&dgamma), ptr(&dbeta), o, m, i)
        })
    }

    unsafe fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        y: BufView,
        dy: BufView,
        dx: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&y, &dy, &dx], "softmax_backward")?;
            if rows == 0 || cols == 0 {
                return Ok(());
            }
            let (r, c) = (rows as i64, cols as i64);
            launch!(self, softmax_backward, row_blocks(rows), row_block(cols);
                ptr(&y), ptr(&dy), ptr(&dx), r, c)
        })
    }

    unsafe fn top_k(
        &self,
        rows: usize,
        cols: usize,
        k: usize,
        x: BufView,
        indices: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x], "top_k")?;
            require(&indices, DType::I32, "top_k indices")?;
            if k > cols {
                return Err(Error::invalid(format!("top {k} of rows of {cols} values")));
            }
            let (r, c, k) = (rows as i64, cols as i64, k as i64);
            launch!(self, top_k, blocks(rows), BLOCK; ptr(&x), ptr(&indices), r, c, k)
        })
    }

    unsafe fn top_k_accuracy(
        &self,
        rows: usize,
        cols: usize,
        k: usize,
        x: BufView,
        labels: BufView,
        stats: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&x, &stats], "top_k_accuracy")?;
            require(&labels, DType::I32, "top_k_accuracy labels")?;
            let (r, c, k) = (rows as i64, cols as i64, k as i64);
            let _faults = self.gpu.lock_faults();
            launch!(self, top_k_accuracy, blocks(rows), BLOCK;
                ptr(&x), ptr(&labels), ptr(&stats), r, c, k, self.gpu.fault)?;
            // Bad labels and ids are errors of this call (the loss is read every step anyway).
            self.settle_held()
        })
    }

    unsafe fn gather_rows(
        &self,
        rows: usize,
        cols: usize,
        n: usize,
        table: BufView,
        ids: BufView,
        out: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&table, &out], "gather_rows")?;
            require(&ids, DType::I32, "gather_rows ids")?;
            let (r, c, count) = (rows as i64, cols as i64, n as i64);
            let _faults = self.gpu.lock_faults();
            launch!(self, gather_rows, blocks(n * cols), BLOCK;
                ptr(&table), ptr(&ids), ptr(&out), r, c, count, self.gpu.fault)?;
            // Bad labels and ids are errors of this call (the loss is read every step anyway).
            self.settle_held()
        })
    }

    unsafe fn scatter_add_rows(
        &self,
        rows: usize,
        cols: usize,
        n: usize,
        ids: BufView,
        src: BufView,
        table: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&src, &table], "scatter_add_rows")?;
            require(&ids, DType::I32, "scatter_add_rows ids")?;
            let (r, c, count) = (rows as i64, cols as i64, n as i64);
            let _faults = self.gpu.lock_faults();
            launch!(self, scatter_add_rows, blocks(n * cols), BLOCK;
                ptr(&ids), ptr(&src), ptr(&table), r, c, count, self.gpu.fault)?;
            // Bad labels and ids are errors of this call (the loss is read every step anyway).
            self.settle_held()
        })
    }

    unsafe fn lstm_cell(
        &self,
        batch: usize,
        hidden: usize,
        gates: BufView,
        bias: ROption<BufView>,
        c_prev: BufView,
        c: BufView,
        tanh_c: BufView,
        h: BufView,
    ) -> RResult<(), Error> {
        self.run(|| {
            f32s(&[&gates, &c_prev, &c, &tanh_c, &h], "lstm_cell")?;
            let bias = match bias {
                ROption::RSome(b) => {
                    require(&b, DType::F32, "lstm_cell")?;
                    ptr(&b)
                }
                ROption::RNone => 0,
            };
            let (b, hid) = (batch as i64, hidden as i64);
            launch!(self, lstm_cell, blocks(batch * hidden), BLOCK;
                ptr(&gates), bias, ptr(&c_prev), ptr(&c), ptr(&tanh_c), ptr(&h), b, hid)
        })
    }

    unsafe fn lstm_cell_backward(
        &self,
        batch: usize,
        hidden: usize,
        gates: BufView,
        c_prev: BufView,
        tanh_c: BufView,
        dh: BufView,
        dc: BufView,
        d_gates: BufView,
        dc_prev: ROption<BufView>,
    ) -> RResult<(), Error> {
        self.run(|| {
            let op = "lstm_cell_backward";
            f32s(&[&gates, &c_prev, &tanh_c, &dh, &dc, &d_gates], op)?;
            let dc_prev = match dc_prev {
                ROption::RSome(p) => {
                    require(&p, DType::F32, op)?;
                    ptr(&p)
                }
                ROption::RNone => 0,
            };
            let (b, hid) = (batch as i64, hidden as i64);
            launch!(self, lstm_cell_backward, blocks(batch * hidden), BLOCK;
                ptr(&gates), ptr(&c_prev), ptr(&tanh_c), ptr(&dh), ptr(&dc), ptr(&d_gates),
                dc_prev, b, hid)
        })
    }
}

impl CudaDevice {
    unsafe fn broadcast(&self, mul: i32, d: Dims3, v: BufView, y: BufView, op: &str) -> Result<()> {
        f32s(&[&v, &y], op)?;
        if d.numel() == 0 {
            return Ok(());
        }
        let (m, i, n) = (d.mid as i64, d.inner as i64, d.numel() as i64);
        launch!(self, broadcast_mid, blocks(d.numel()), BLOCK; mul, ptr(&v), ptr(&y), m, i, n)
    }
}
