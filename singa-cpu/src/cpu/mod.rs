//! The CPU device: `gemm` for matrix products, vectorised kernels for everything else, and a
//! thread pool of its own for the work that is big enough to split.

mod conv;
mod elementwise;
mod gemm;
pub mod math;
mod norm;
mod parallel;
mod pool;
mod recurrent;
mod reduce;
mod scratch;
mod sgemm;
pub mod simd;

use crate::memory::{self, bytes, bytes_mut, convert, load, store};
use elementwise as ew;
pub use parallel::Threads;
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut};
use singa_core::{
    catch_panic, AdaptiveArgs, BatchNormArgs, BinaryOp, BufHandle, BufView, ConvShape, DType,
    Device, DeviceInfo, Dims3, Distribution, Error, GemmArgs, LrnShape, PoolShape, Precision,
    ReduceOp, Result, SgdArgs, UnaryOp,
};

const NAME: &str = "cpu";

/// Whether this CPU device runs the convolution `s` as Winograd transforms (tests use it to
/// say when they cannot check that path here).
pub fn convolution_uses_winograd(s: &ConvShape) -> bool {
    conv::uses_winograd(s)
}

/// Elements per thread below which an elementwise operation is not split: a hand-over to
/// another core costs about as much as streaming this many floats.
const ELEMENTWISE_GRAIN: usize = 1 << 16;

/// The CPU device.
///
/// ```
/// use singa_core::{DeviceRef, DType, Tensor};
/// let dev = DeviceRef::new(singa_cpu::CpuDevice::new(2).unwrap());
/// let x = Tensor::from_slice(&dev, &[1.0f32, -2.0, 3.0], [3]).unwrap();
/// let mut y = Tensor::zeros(&dev, [3], DType::F32).unwrap();
/// dev.unary(singa_core::UnaryOp::Relu, &x, &mut y).unwrap();
/// assert_eq!(y.to_vec::<f32>().unwrap(), vec![1.0, 0.0, 3.0]);
/// ```
#[derive(Clone)]
pub struct CpuDevice {
    threads: Threads,
    scratch: std::sync::Arc<scratch::Scratch>,
    precision: Precision,
}

impl CpuDevice {
    /// A CPU device using `threads` threads (at least one), with f32 products.
    pub fn new(threads: usize) -> Result<CpuDevice> {
        CpuDevice::with_precision(threads, Precision::F32)
    }

    /// A CPU device whose matrix products and convolutions run in `precision`: f32; bf16
    /// (inputs rounded to bf16, sums in f32; faster than f32 with AMX tiles or with an AVX-512
    /// BF16 that runs at the FMA rate, see docs/PERFORMANCE.md); or f16 (inputs rounded to
    /// f16, sums in f32: the numbers a GPU's f16 products give, so an f16 job and its loss
    /// scaling run here as there, at about f32's speed, since this CPU has no f16 products;
    /// the Winograd convolutions stay f32 in both). f16 needs AVX2 (its products are the f32
    /// kernels' on rounded inputs) and is refused without it.
    pub fn with_precision(threads: usize, precision: Precision) -> Result<CpuDevice> {
        if precision == Precision::F16 && !sgemm::available() {
            return Err(Error::unsupported(
                NAME,
                "precision f16 (a job's `[device] precision = \"f16\"`) on a CPU without AVX2: \
                 its f16 products run on the AVX2 and AVX-512 kernels; use f32 or bf16",
            ));
        }
        Ok(CpuDevice {
            threads: Threads::new(threads)?,
            scratch: Default::default(),
            precision,
        })
    }

    /// The precision of its matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How this CPU computes bf16 products: AMX tiles, AVX-512 BF16, or a plain, slow path
    /// with the same rounded products.
    pub fn bf16_path() -> sgemm::bf16::Path {
        sgemm::bf16::Path::here()
    }

    /// The device's threads.
    pub fn threads(&self) -> &Threads {
        &self.threads
    }

    fn f32s(views: &[&BufView], op: &str) -> Result<()> {
        for v in views {
            if v.dtype != DType::F32 {
                return Err(Error::unsupported(
                    NAME,
                    format!("{op} on {} tensors", v.dtype),
                ));
            }
        }
        Ok(())
    }

    /// Runs `f` over `0..len`, split across threads when large.
    fn elementwise(&self, len: usize, f: impl Fn(usize, usize) + Sync) {
        self.threads.for_ranges(len, ELEMENTWISE_GRAIN, &f);
    }

    /// Runs `f` over the rows `0..rows` of `width` elements each, split across threads when
    /// there are enough elements.
    fn rows(&self, rows: usize, width: usize, f: impl Fn(usize, usize) + Sync) {
        let parts = (rows * width / ELEMENTWISE_GRAIN).max(1);
        self.threads.for_blocks(rows, parts, 1, &f);
    }

    fn gemm_impl(&self, args: &GemmArgs) -> Result<()> {
        if args.layout.k == 0 {
            // No products: C = beta·C.
            let l = args.layout;
            // SAFETY: the views satisfy the trait contract.
            let c = unsafe { bytes_mut(args.c) };
            for p in 0..l.batch {
                for i in 0..l.m {
                    for j in 0..l.n {
                        let idx = p * l.stride_c + i * l.ldc + j;
                        let old = if args.beta == 0.0 {
                            0.0
                        } else {
                            load(args.c.dtype, c, idx)
                        };
                        store(args.c.dtype, c, idx, args.beta as f64 * old);
                    }
                }
            }
            return Ok(());
        }
        // SAFETY: the views satisfy the trait contract.
        unsafe { gemm::gemm(&self.threads, &self.scratch, args, self.precision) }
    }

    fn cast_impl(&self, src: BufView, dst: BufView) -> Result<()> {
        use half::slice::HalfFloatSliceExt;
        // SAFETY: trait contract; `src` and `dst` do not overlap.
        unsafe {
            match (src.dtype, dst.dtype) {
                (DType::F32, DType::F16) => memory::slice_mut::<half::f16>(NAME, dst, "cast")?
                    .convert_from_f32_slice(memory::slice::<f32>(NAME, src, "cast")?),
                (DType::F32, DType::BF16) => memory::slice_mut::<half::bf16>(NAME, dst, "cast")?
                    .convert_from_f32_slice(memory::slice::<f32>(NAME, src, "cast")?),
                (DType::F16, DType::F32) => memory::slice::<half::f16>(NAME, src, "cast")?
                    .convert_to_f32_slice(memory::slice_mut::<f32>(NAME, dst, "cast")?),
                (DType::BF16, DType::F32) => memory::slice::<half::bf16>(NAME, src, "cast")?
                    .convert_to_f32_slice(memory::slice_mut::<f32>(NAME, dst, "cast")?),
                (DType::U8, DType::F32) => {
                    let s = memory::slice::<u8>(NAME, src, "cast")?;
                    for (o, &v) in memory::slice_mut::<f32>(NAME, dst, "cast")?
                        .iter_mut()
                        .zip(s)
                    {
                        *o = v as f32;
                    }
                }
                (a, b) if a == b => bytes_mut(dst).copy_from_slice(bytes(src)),
                _ => convert(src.dtype, bytes(src), dst.dtype, bytes_mut(dst), src.len),
            }
        }
        Ok(())
    }

    fn fill_impl(&self, dst: BufView, value: f64) -> Result<()> {
        // SAFETY: trait contract.
        unsafe {
            match dst.dtype {
                DType::F32 => {
                    let v = value as f32;
                    self.elementwise(dst.len, |s, e| ew::part_mut(dst, s, e).fill(v));
                }
                DType::I32 => memory::slice_mut::<i32>(NAME, dst, "fill")?.fill(value as i32),
                DType::U8 => memory::slice_mut::<u8>(NAME, dst, "fill")?.fill(value as u8),
                DType::F16 => memory::slice_mut::<half::f16>(NAME, dst, "fill")?
                    .fill(half::f16::from_f32(value as f32)),
                DType::BF16 => memory::slice_mut::<half::bf16>(NAME, dst, "fill")?
                    .fill(half::bf16::from_f32(value as f32)),
            }
        }
        Ok(())
    }

    fn reduce_impl(
        &self,
        op: ReduceOp,
        d: Dims3,
        x: BufView,
        y: BufView,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        Self::f32s(&[&x, &y], "reduce")?;
        let per_outer = (d.mid * d.inner).max(1);
        let grain = ELEMENTWISE_GRAIN.div_ceil(per_outer).max(1);
        // SAFETY: trait contract; ranges of outer indices are disjoint.
        self.threads.for_ranges(d.outer, grain, &|s, e| unsafe {
            reduce::reduce(op, d, x, y, alpha, beta, s, e)
        });
        Ok(())
    }

    fn rows_split(&self, rows: usize, cols: usize) -> usize {
        ELEMENTWISE_GRAIN
            .div_ceil(cols.max(1))
            .max(1)
            .min(rows.max(1))
    }

    fn softmax_ce_impl(
        &self,
        rows: usize,
        cols: usize,
        logits: BufView,
        labels: BufView,
        probs: BufView,
        stats: BufView,
    ) -> Result<()> {
        Self::f32s(&[&logits, &probs, &stats], "softmax_cross_entropy")?;
        // SAFETY: trait contract.
        let labs = unsafe { memory::slice::<i32>(NAME, labels, "softmax_cross_entropy labels")? };
        // Rows are few (a batch); one thread keeps the sums in a fixed order.
        // SAFETY: trait contract.
        let (loss, correct) =
            unsafe { reduce::softmax_cross_entropy(cols, logits, labs, probs, 0, rows)? };
        // SAFETY: trait contract; `stats` overlaps nothing else.
        let s = unsafe { ew::part_mut(stats, 0, 3) };
        s[0] += loss as f32;
        s[1] += correct as f32;
        s[2] += rows as f32;
        Ok(())
    }
}

/// Runs a device method body, catching panics.
fn guard<T>(f: impl FnOnce() -> Result<T>) -> RResult<T, Error> {
    catch_panic("cpu device", f).into()
}

impl Device for CpuDevice {
    fn info(&self) -> DeviceInfo {
        let isa = match simd::level() {
            simd::Level::Avx512 => "avx512",
            simd::Level::Avx2 => "avx2",
            simd::Level::Baseline => "baseline simd",
        };
        DeviceInfo {
            kind: NAME.into(),
            ordinal: 0,
            description: format!(
                "cpu ({} thread{}, {isa}{})",
                self.threads.count(),
                if self.threads.count() == 1 { "" } else { "s" },
                match self.precision {
                    Precision::F32 => String::new(),
                    Precision::BF16 => format!(
                        ", bf16 products ({}; Winograd convolutions in f32)",
                        Self::bf16_path().name()
                    ),
                    Precision::F16 => {
                        ", f16 products (f32 kernels on rounded inputs; Winograd convolutions \
                         in f32)"
                            .into()
                    }
                }
            )
            .into(),
            memory_space: crate::memory::HOST.into(),
        }
    }

    fn alloc(&self, dtype: DType, len: usize) -> RResult<BufHandle, Error> {
        guard(|| memory::allocate(NAME, dtype, len))
    }

    unsafe fn free(&self, handle: BufHandle, dtype: DType, len: usize) {
        memory::release(handle, dtype, len)
    }

    unsafe fn write(&self, dst: BufView, src: RSlice<'_, u8>) -> RResult<(), Error> {
        guard(|| memory::write(dst, src.as_slice()))
    }

    unsafe fn read(&self, src: BufView, mut dst: RSliceMut<'_, u8>) -> RResult<(), Error> {
        guard(|| memory::read(src, dst.as_mut_slice()))
    }

    unsafe fn copy(&self, src: BufView, dst: BufView) -> RResult<(), Error> {
        guard(|| {
            bytes_mut(dst).copy_from_slice(bytes(src));
            Ok(())
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
        guard(|| {
            let size = src.dtype.size();
            let (s, d) = (bytes(src), bytes_mut(dst));
            for r in 0..rows {
                d[r * dst_ld * size..(r * dst_ld + cols) * size]
                    .copy_from_slice(&s[r * src_ld * size..(r * src_ld + cols) * size]);
            }
            Ok(())
        })
    }

    unsafe fn cast(&self, src: BufView, dst: BufView) -> RResult<(), Error> {
        guard(|| self.cast_impl(src, dst))
    }

    unsafe fn fill(&self, dst: BufView, value: f64) -> RResult<(), Error> {
        guard(|| self.fill_impl(dst, value))
    }

    unsafe fn random(
        &self,
        dst: BufView,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&dst], "random")?;
            self.elementwise(dst.len, |s, e| ew::random(dst, dist, seed, offset, s, e));
            Ok(())
        })
    }

    unsafe fn gemm(&self, args: &GemmArgs) -> RResult<(), Error> {
        guard(|| self.gemm_impl(args))
    }

    unsafe fn unary(&self, op: UnaryOp, x: BufView, y: BufView) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&x, &y], "unary")?;
            self.elementwise(x.len, |s, e| ew::unary(op, x, y, s, e));
            Ok(())
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
        guard(|| {
            Self::f32s(&[&x, &y, &dy, &dx], "unary_backward")?;
            self.elementwise(x.len, |s, e| ew::unary_backward(op, x, y, dy, dx, s, e));
            Ok(())
        })
    }

    unsafe fn binary(
        &self,
        op: BinaryOp,
        a: BufView,
        b: BufView,
        y: BufView,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&a, &b, &y], "binary")?;
            self.elementwise(a.len, |s, e| ew::binary(op, a, b, y, s, e));
            Ok(())
        })
    }

    unsafe fn axpby(&self, alpha: f32, x: BufView, beta: f32, y: BufView) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&x, &y], "axpby")?;
            self.elementwise(x.len, |s, e| ew::axpby(alpha, x, beta, y, s, e));
            Ok(())
        })
    }

    unsafe fn affine(&self, x: BufView, y: BufView, scale: f32, shift: f32) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&x, &y], "affine")?;
            self.elementwise(x.len, |s, e| ew::affine(x, y, scale, shift, s, e));
            Ok(())
        })
    }

    unsafe fn mul_broadcast(&self, d: Dims3, v: BufView, y: BufView) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&v, &y], "mul_broadcast")?;
            let grain = ELEMENTWISE_GRAIN.div_ceil((d.mid * d.inner).max(1)).max(1);
            self.threads
                .for_ranges(d.outer, grain, &|s, e| ew::mul_broadcast(d, v, y, s, e));
            Ok(())
        })
    }

    unsafe fn add_broadcast(&self, d: Dims3, v: BufView, y: BufView) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&v, &y], "add_broadcast")?;
            let grain = ELEMENTWISE_GRAIN.div_ceil((d.mid * d.inner).max(1)).max(1);
            self.threads
                .for_ranges(d.outer, grain, &|s, e| ew::add_broadcast(d, v, y, s, e));
            Ok(())
        })
    }

    unsafe fn reduce(
        &self,
        op: ReduceOp,
        dims: Dims3,
        x: BufView,
        y: BufView,
        alpha: f32,
        beta: f32,
    ) -> RResult<(), Error> {
        guard(|| self.reduce_impl(op, dims, x, y, alpha, beta))
    }

    unsafe fn softmax(
        &self,
        rows: usize,
        cols: usize,
        x: BufView,
        y: BufView,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&x, &y], "softmax")?;
            let grain = self.rows_split(rows, cols);
            self.threads
                .for_ranges(rows, grain, &|s, e| reduce::softmax(cols, x, y, s, e));
            Ok(())
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
        guard(|| self.softmax_ce_impl(rows, cols, logits, labels, probs, stats))
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
        guard(|| {
            Self::f32s(&[&probs, &dx], "softmax_cross_entropy_backward")?;
            let labs = memory::slice::<i32>(NAME, labels, "softmax_cross_entropy labels")?;
            reduce::softmax_cross_entropy_backward(cols, probs, labs, dx, scale, 0, rows)
        })
    }

    unsafe fn sgd_update(
        &self,
        w: BufView,
        g: BufView,
        m: ROption<BufView>,
        args: SgdArgs,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&w, &g], "sgd_update")?;
            let m = m.into_option();
            if let Some(mv) = &m {
                Self::f32s(&[mv], "sgd_update")?;
            }
            self.elementwise(w.len, |s, e| ew::sgd(w, g, m, args, s, e));
            Ok(())
        })
    }

    fn synchronize(&self) -> RResult<(), Error> {
        RResult::ROk(())
    }

    unsafe fn adaptive_update(
        &self,
        w: BufView,
        g: BufView,
        s1: BufView,
        s2: ROption<BufView>,
        args: AdaptiveArgs,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&w, &g, &s1], "adaptive_update")?;
            let s2 = s2.into_option();
            if let Some(v) = &s2 {
                Self::f32s(&[v], "adaptive_update")?;
            } else if args.rule.needs_second_state() {
                return Err(Error::invalid(format!(
                    "{:?} needs a second state",
                    args.rule
                )));
            }
            self.elementwise(w.len, |s, e| ew::adaptive(w, g, s1, s2, args, s, e));
            Ok(())
        })
    }

    unsafe fn conv2d(
        &self,
        shape: &ConvShape,
        x: BufView,
        w: BufView,
        y: BufView,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&x, &w, &y], "conv2d")?;
            conv::run(
                &self.threads,
                &self.scratch,
                self.precision,
                shape,
                conv::Pass::Forward,
                x,
                w,
                y,
            );
            Ok(())
        })
    }

    unsafe fn conv2d_backward_data(
        &self,
        shape: &ConvShape,
        dy: BufView,
        w: BufView,
        dx: BufView,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&dy, &w, &dx], "conv2d_backward_data")?;
            conv::run(
                &self.threads,
                &self.scratch,
                self.precision,
                shape,
                conv::Pass::Data,
                dy,
                w,
                dx,
            );
            Ok(())
        })
    }

    unsafe fn conv2d_backward_filter(
        &self,
        shape: &ConvShape,
        x: BufView,
        dy: BufView,
        dw: BufView,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&x, &dy, &dw], "conv2d_backward_filter")?;
            conv::run(
                &self.threads,
                &self.scratch,
                self.precision,
                shape,
                conv::Pass::Filter,
                x,
                dy,
                dw,
            );
            Ok(())
        })
    }

    unsafe fn pool2d(
        &self,
        shape: &PoolShape,
        x: BufView,
        y: BufView,
        argmax: ROption<BufView>,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&x, &y], "pool2d")?;
            let argmax = argmax.into_option();
            if let Some(a) = &argmax {
                if a.dtype != DType::I32 {
                    return Err(Error::unsupported(
                        NAME,
                        format!("pool2d argmax of {}", a.dtype),
                    ));
                }
            }
            pool::forward(&self.threads, shape, x, y, argmax);
            Ok(())
        })
    }

    unsafe fn pool2d_backward(
        &self,
        shape: &PoolShape,
        dy: BufView,
        argmax: ROption<BufView>,
        dx: BufView,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&dy, &dx], "pool2d_backward")?;
            pool::backward(&self.threads, shape, dy, argmax.into_option(), dx)
        })
    }

    unsafe fn lrn(
        &self,
        shape: &LrnShape,
        x: BufView,
        y: BufView,
        scale: BufView,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&x, &y, &scale], "lrn")?;
            norm::lrn(&self.threads, shape, x, y, scale);
            Ok(())
        })
    }

    unsafe fn lrn_backward(
        &self,
        shape: &LrnShape,
        x: BufView,
        y: BufView,
        scale: BufView,
        dy: BufView,
        dx: BufView,
    ) -> RResult<(), Error> {
        guard(|| {
            Self::f32s(&[&x, &y, &scale, &dy, &dx], "lrn_backward")?;
            norm::lrn_backward(&self.threads, &self.scratch, shape, x, y, scale, dy, dx);
            Ok(())
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
        guard(|| {
            Self::f32s(
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
            let per_channel = args.dims.outer * args.dims.inner;
            let grain = ELEMENTWISE_GRAIN.div_ceil(per_channel.max(1)).max(1);
            self.threads.for_ranges(args.dims.mid, grain, &|m0, m1| {
                norm::batch_norm(
                    args,
                    m0,
                    m1,
                    x,
                    gamma,
                    beta,
                    y,
                    mean,
                    inv_std,
                    running_mean,
                    running_var,
                )
            });
            Ok(())
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
        guard(|| {
            Self::f32s(
                &[&x, &dy, &gamma, &mean, &inv_std, &dx, &dgamma, &dbeta],
                "batch_norm_backward",
            )?;
            let per_channel = args.dims.outer * args.dims.inner;
            let grain = ELEMENTWISE_GRAIN.div_ceil(per_channel.max(1)).max(1);
            self.threads.for_ranges(args.dims.mid, grain, &|m0, m1| {
                norm::batch_norm_backward(
                    args, m0, m1, x, dy, gamma, mean, inv_std, dx, dgamma, dbeta,
                )
            });
            Ok(())
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
        guard(|| {
            Self::f32s(&[&y, &dy, &dx], "softmax_backward")?;
            let grain = self.rows_split(rows, cols);
            self.threads.for_ranges(rows, grain, &|s, e| {
                reduce::softmax_backward(cols, y, dy, dx, s, e)
            });
            Ok(())
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
        guard(|| {
            Self::f32s(&[&x], "top_k")?;
            let xs = ew::part(x, 0, rows * cols);
            let out = memory::slice_mut::<i32>(NAME, indices, "top_k indices")?;
            for r in 0..rows {
                reduce::top_k_row(&xs[r * cols..(r + 1) * cols], &mut out[r * k..(r + 1) * k]);
            }
            Ok(())
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
        guard(|| {
            Self::f32s(&[&x, &stats], "top_k_accuracy")?;
            let xs = ew::part(x, 0, rows * cols);
            let labs = memory::slice::<i32>(NAME, labels, "top_k_accuracy labels")?;
            // k is at most cols; a few indices on the stack cover common cases.
            let mut small = [0i32; 16];
            let mut large = Vec::new();
            let top: &mut [i32] = if k <= small.len() {
                &mut small[..k]
            } else {
                large.resize(k, 0);
                &mut large
            };
            let mut correct = 0.0f32;
            for r in 0..rows {
                let l = labs[r];
                if l < 0 || l as usize >= cols {
                    return Err(Error::invalid(format!(
                        "label {l} of sample {r} is outside the {cols} classes"
                    )));
                }
                reduce::top_k_row(&xs[r * cols..(r + 1) * cols], top);
                if top.contains(&l) {
                    correct += 1.0;
                }
            }
            let s = ew::part_mut(stats, 0, 2);
            s[0] += correct;
            s[1] += rows as f32;
            Ok(())
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
        guard(|| {
            Self::f32s(&[&table, &out], "gather_rows")?;
            let idx = memory::slice::<i32>(NAME, ids, "gather_rows ids")?;
            let t = ew::part(table, 0, rows * cols);
            let o = ew::part_mut(out, 0, n * cols);
            for (i, &id) in idx.iter().enumerate() {
                let r = row_id(id, i, rows)?;
                o[i * cols..(i + 1) * cols].copy_from_slice(&t[r * cols..(r + 1) * cols]);
            }
            Ok(())
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
        guard(|| {
            Self::f32s(&[&src, &table], "scatter_add_rows")?;
            let idx = memory::slice::<i32>(NAME, ids, "scatter_add_rows ids")?;
            let x = ew::part(src, 0, n * cols);
            let t = ew::part_mut(table, 0, rows * cols);
            for (i, &id) in idx.iter().enumerate() {
                let r = row_id(id, i, rows)?;
                let row = &x[i * cols..(i + 1) * cols];
                for (d, v) in t[r * cols..(r + 1) * cols].iter_mut().zip(row) {
                    *d += v;
                }
            }
            Ok(())
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
        guard(|| {
            Self::f32s(&[&gates, &c_prev, &c, &tanh_c, &h], "lstm_cell")?;
            let bias = bias.into_option();
            if let Some(b) = &bias {
                Self::f32s(&[b], "lstm_cell")?;
            }
            let views = recurrent::CellViews {
                hidden,
                gates,
                bias,
                c_prev,
                c,
                tanh_c,
                h,
            };
            self.rows(batch, 4 * hidden, |s, e| recurrent::cell_rows(views, s..e));
            Ok(())
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
        guard(|| {
            let op = "lstm_cell_backward";
            Self::f32s(&[&gates, &c_prev, &tanh_c, &dh, &dc, &d_gates], op)?;
            let dc_prev = dc_prev.into_option();
            if let Some(p) = &dc_prev {
                Self::f32s(&[p], op)?;
            }
            let views = recurrent::CellGradViews {
                hidden,
                gates,
                c_prev,
                tanh_c,
                dh,
                dc,
                d_gates,
                dc_prev,
            };
            self.rows(batch, 4 * hidden, |s, e| {
                recurrent::cell_grad_rows(views, s..e)
            });
            Ok(())
        })
    }
}

/// Id `i` of a row lookup as a row of a table of `rows`, or an error naming it and its
/// position.
fn row_id(id: i32, i: usize, rows: usize) -> Result<usize> {
    if id < 0 || id as usize >= rows {
        return Err(Error::invalid(format!(
            "id {id} at position {i} is outside the {rows} rows of the table"
        )));
    }
    Ok(id as usize)
}
