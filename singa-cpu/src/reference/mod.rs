//! The reference device: every operation as the plainest loop that is obviously correct.
//!
//! It exists to check the fast devices against. Inputs are copied to `f64` vectors first (so
//! in-place calls need no care), arithmetic runs in `f64`, and results are rounded once when
//! stored. Speed is not a goal.

mod nn;

use crate::memory::{self, bytes, bytes_mut, convert, load, store};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut};
use singa_core::{
    catch_panic, rng, AdaptiveArgs, AdaptiveRule, BatchNormArgs, BinaryOp, BufHandle, BufView,
    ConvShape, DType, Device, DeviceInfo, Dims3, Distribution, Error, GemmArgs, LrnShape,
    PoolShape, Precision, ReduceOp, Result, SgdArgs, UnaryOp,
};

const NAME: &str = "reference";

/// A device of plain loops, the yardstick for the CPU and GPU devices.
#[derive(Debug, Default, Clone)]
pub struct ReferenceDevice {
    precision: Precision,
    /// The memory space it claims, when not the host's (see [`ReferenceDevice::apart`]).
    memory_space: Option<String>,
}

impl ReferenceDevice {
    /// A reference device (f32 products).
    pub fn new() -> ReferenceDevice {
        ReferenceDevice::default()
    }

    /// A reference device whose matrix products and convolutions round their f32 inputs to
    /// `precision` and then compute exactly (in f64), the yardstick for a fast device's
    /// mixed-precision products.
    pub fn with_precision(precision: Precision) -> ReferenceDevice {
        ReferenceDevice {
            precision,
            memory_space: None,
        }
    }

    /// A reference device that claims a memory space of its own, `name`, as a GPU's is: other
    /// devices cannot use its tensors, nor it theirs, and its tensors are not host memory to
    /// the transports (although its buffers are). For testing, without a GPU, the code that
    /// moves tensors between memory spaces.
    pub fn apart(name: &str) -> ReferenceDevice {
        ReferenceDevice {
            precision: Precision::F32,
            memory_space: Some(name.to_string()),
        }
    }

    /// An f32 product input as the product sees it.
    fn input(&self, v: BufView) -> Vec<f64> {
        let mut x = get(v);
        if v.dtype == DType::F32 && self.precision != Precision::F32 {
            for e in &mut x {
                *e = self.precision.round(*e as f32) as f64;
            }
        }
        x
    }
}

/// Reads a view as `f64`s.
fn get(v: BufView) -> Vec<f64> {
    // SAFETY: the caller of the device method guarantees the view (trait contract).
    let b = unsafe { bytes(v) };
    (0..v.len).map(|i| load(v.dtype, b, i)).collect()
}

/// Stores `f64`s into a view.
fn put(v: BufView, values: &[f64]) {
    // SAFETY: as for `get`; inputs were copied out by `get` before, so nothing else is borrowed.
    let b = unsafe { bytes_mut(v) };
    for (i, x) in values.iter().enumerate() {
        store(v.dtype, b, i, *x);
    }
}

fn require(v: &BufView, dtype: DType, op: &str) -> Result<()> {
    if v.dtype != dtype {
        return Err(Error::unsupported(
            NAME,
            format!("{op} on {} tensors", v.dtype),
        ));
    }
    Ok(())
}

fn f32s(views: &[&BufView], op: &str) -> Result<()> {
    views.iter().try_for_each(|v| require(v, DType::F32, op))
}

/// `f(x)` in `f64`.
pub(crate) fn unary_value(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Identity => x,
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::LeakyRelu { slope } => {
            if x > 0.0 {
                x
            } else {
                slope as f64 * x
            }
        }
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::ScaledTanh => UnaryOp::STANH_A as f64 * (UnaryOp::STANH_B as f64 * x).tanh(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Square => x * x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Neg => -x,
        UnaryOp::Clamp { min, max } => x.max(min as f64).min(max as f64),
    }
}

/// `f'(x)` in `f64`, from the input `x` (and output `y` where that is the textbook form).
pub(crate) fn unary_derivative(op: UnaryOp, x: f64, y: f64) -> f64 {
    match op {
        UnaryOp::Identity => 1.0,
        UnaryOp::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        UnaryOp::LeakyRelu { slope } => {
            if x > 0.0 {
                1.0
            } else {
                slope as f64
            }
        }
        UnaryOp::Sigmoid => y * (1.0 - y),
        UnaryOp::Tanh => 1.0 - y * y,
        UnaryOp::ScaledTanh => {
            let (a, b) = (UnaryOp::STANH_A as f64, UnaryOp::STANH_B as f64);
            let t = y / a;
            a * b * (1.0 - t * t)
        }
        UnaryOp::Exp => y,
        UnaryOp::Log => 1.0 / x,
        UnaryOp::Sqrt => 0.5 / y,
        UnaryOp::Square => 2.0 * x,
        UnaryOp::Abs => unary_value(UnaryOp::Sign, x),
        UnaryOp::Sign => 0.0,
        UnaryOp::Neg => -1.0,
        UnaryOp::Clamp { min, max } => {
            if (min as f64) <= x && x <= max as f64 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// One draw of `dist` at stream position `i`.
pub(crate) fn draw(dist: Distribution, seed: u64, i: u64) -> f32 {
    match dist {
        Distribution::Uniform { low, high } => low + (high - low) * rng::uniform_at(seed, i),
        Distribution::Gaussian { mean, std } => mean + std * rng::normal_at(seed, i),
        Distribution::Bernoulli { p, scale } => {
            if rng::uniform_at(seed, i) < p {
                scale
            } else {
                0.0
            }
        }
    }
}

impl ReferenceDevice {
    fn gemm_impl(&self, args: &GemmArgs) -> Result<()> {
        let l = &args.layout;
        if !matches!(args.c.dtype, DType::F32 | DType::F16) {
            return Err(Error::unsupported(
                NAME,
                format!("gemm on {} tensors", args.c.dtype),
            ));
        }
        let a = self.input(args.a);
        let b = self.input(args.b);
        let mut c = get(args.c);
        for p in 0..l.batch {
            for i in 0..l.m {
                for j in 0..l.n {
                    let mut acc = 0.0f64;
                    for t in 0..l.k {
                        let av = if l.trans_a {
                            a[p * l.stride_a + t * l.lda + i]
                        } else {
                            a[p * l.stride_a + i * l.lda + t]
                        };
                        let bv = if l.trans_b {
                            b[p * l.stride_b + j * l.ldb + t]
                        } else {
                            b[p * l.stride_b + t * l.ldb + j]
                        };
                        acc += av * bv;
                    }
                    let ci = p * l.stride_c + i * l.ldc + j;
                    let old = if args.beta == 0.0 {
                        0.0
                    } else {
                        args.beta as f64 * c[ci]
                    };
                    c[ci] = args.alpha as f64 * acc + old;
                }
            }
        }
        put(args.c, &c);
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
        f32s(&[&x, &y], "reduce")?;
        let xs = get(x);
        let mut ys = get(y);
        for o in 0..d.outer {
            for i in 0..d.inner {
                let vals = (0..d.mid).map(|m| xs[(o * d.mid + m) * d.inner + i]);
                let r = match op {
                    ReduceOp::Sum => vals.sum::<f64>(),
                    ReduceOp::Mean => vals.sum::<f64>() / d.mid.max(1) as f64,
                    ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                };
                let yi = o * d.inner + i;
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * ys[yi]
                };
                ys[yi] = alpha as f64 * r + old;
            }
        }
        put(y, &ys);
        Ok(())
    }

    fn softmax_rows(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut out = vec![0.0; rows * cols];
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            for c in 0..cols {
                out[r * cols + c] = (row[c] - max).exp() / sum;
            }
        }
        out
    }

    fn label(labels: &[f64], r: usize, cols: usize) -> Result<usize> {
        let l = labels[r];
        if l < 0.0 || l >= cols as f64 {
            return Err(Error::invalid(format!(
                "label {l} of sample {r} is outside the {cols} classes"
            )));
        }
        Ok(l as usize)
    }
}

/// Runs a device method body, catching panics.
fn guard<T>(f: impl FnOnce() -> Result<T>) -> RResult<T, Error> {
    catch_panic("reference device", f).into()
}

impl Device for ReferenceDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: NAME.into(),
            ordinal: 0,
            description: match self.precision {
                Precision::F32 => "reference (plain loops, f64 arithmetic)".to_string(),
                p => format!("reference (plain loops, f64 arithmetic on {p}-rounded products)"),
            }
            .into(),
            memory_space: self
                .memory_space
                .as_deref()
                .unwrap_or(crate::memory::HOST)
                .into(),
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
            let values = get(src);
            put(dst, &values);
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
            let s = get(src);
            let mut d = get(dst);
            for r in 0..rows {
                for c in 0..cols {
                    d[r * dst_ld + c] = s[r * src_ld + c];
                }
            }
            put(dst, &d);
            Ok(())
        })
    }

    unsafe fn cast(&self, src: BufView, dst: BufView) -> RResult<(), Error> {
        guard(|| {
            let s = bytes(src).to_vec();
            convert(src.dtype, &s, dst.dtype, bytes_mut(dst), src.len);
            Ok(())
        })
    }

    unsafe fn fill(&self, dst: BufView, value: f64) -> RResult<(), Error> {
        guard(|| {
            put(dst, &vec![value; dst.len]);
            Ok(())
        })
    }

    unsafe fn random(
        &self,
        dst: BufView,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> RResult<(), Error> {
        guard(|| {
            f32s(&[&dst], "random")?;
            let values: Vec<f64> = (0..dst.len as u64)
                .map(|i| draw(dist, seed, offset + i) as f64)
                .collect();
            put(dst, &values);
            Ok(())
        })
    }

    unsafe fn gemm(&self, args: &GemmArgs) -> RResult<(), Error> {
        guard(|| self.gemm_impl(args))
    }

    unsafe fn unary(&self, op: UnaryOp, x: BufView, y: BufView) -> RResult<(), Error> {
        guard(|| {
            f32s(&[&x, &y], "unary")?;
            let values: Vec<f64> = get(x).into_iter().map(|v| unary_value(op, v)).collect();
            put(y, &values);
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
            f32s(&[&x, &y, &dy, &dx], "unary_backward")?;
            let (xs, ys, dys) = (get(x), get(y), get(dy));
            let values: Vec<f64> = (0..x.len)
                .map(|i| dys[i] * unary_derivative(op, xs[i], ys[i]))
                .collect();
            put(dx, &values);
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
            f32s(&[&a, &b, &y], "binary")?;
            let (av, bv) = (get(a), get(b));
            let values: Vec<f64> = av
                .iter()
                .zip(&bv)
                .map(|(&p, &q)| match op {
                    BinaryOp::Add => p + q,
                    BinaryOp::Sub => p - q,
                    BinaryOp::Mul => p * q,
                    BinaryOp::Div => p / q,
                    BinaryOp::Max => p.max(q),
                    BinaryOp::Min => p.min(q),
                })
                .collect();
            put(y, &values);
            Ok(())
        })
    }

    unsafe fn axpby(&self, alpha: f32, x: BufView, beta: f32, y: BufView) -> RResult<(), Error> {
        guard(|| {
            f32s(&[&x, &y], "axpby")?;
            let (xs, ys) = (get(x), get(y));
            let values: Vec<f64> = xs
                .iter()
                .zip(&ys)
                .map(|(&p, &q)| {
                    let old = if beta == 0.0 { 0.0 } else { beta as f64 * q };
                    alpha as f64 * p + old
                })
                .collect();
            put(y, &values);
            Ok(())
        })
    }

    unsafe fn affine(&self, x: BufView, y: BufView, scale: f32, shift: f32) -> RResult<(), Error> {
        guard(|| {
            f32s(&[&x, &y], "affine")?;
            let values: Vec<f64> = get(x)
                .into_iter()
                .map(|v| scale as f64 * v + shift as f64)
                .collect();
            put(y, &values);
            Ok(())
        })
    }

    unsafe fn mul_broadcast(&self, d: Dims3, v: BufView, y: BufView) -> RResult<(), Error> {
        guard(|| {
            f32s(&[&v, &y], "mul_broadcast")?;
            let vs = get(v);
            let mut ys = get(y);
            for o in 0..d.outer {
                for m in 0..d.mid {
                    for i in 0..d.inner {
                        ys[(o * d.mid + m) * d.inner + i] *= vs[m];
                    }
                }
            }
            put(y, &ys);
            Ok(())
        })
    }

    unsafe fn add_broadcast(&self, d: Dims3, v: BufView, y: BufView) -> RResult<(), Error> {
        guard(|| {
            f32s(&[&v, &y], "add_broadcast")?;
            let vs = get(v);
            let mut ys = get(y);
            for o in 0..d.outer {
                for m in 0..d.mid {
                    for i in 0..d.inner {
                        ys[(o * d.mid + m) * d.inner + i] += vs[m];
                    }
                }
            }
            put(y, &ys);
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
            f32s(&[&x, &y], "softmax")?;
            put(y, &Self::softmax_rows(&get(x), rows, cols));
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
        guard(|| {
            f32s(&[&logits, &probs, &stats], "softmax_cross_entropy")?;
            require(&labels, DType::I32, "softmax_cross_entropy labels")?;
            let x = get(logits);
            let labs = get(labels);
            let p = Self::softmax_rows(&x, rows, cols);
            let mut s = get(stats);
            for r in 0..rows {
                let l = Self::label(&labs, r, cols)?;
                let row = &x[r * cols..(r + 1) * cols];
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                s[0] += lse - row[l];
                // The arg-max, first index on ties.
                let argmax = (0..cols).fold(0, |best, c| if row[c] > row[best] { c } else { best });
                if argmax == l {
                    s[1] += 1.0;
                }
                s[2] += 1.0;
            }
            put(probs, &p);
            put(stats, &s);
            Ok(())
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
        guard(|| {
            f32s(&[&probs, &dx], "softmax_cross_entropy_backward")?;
            require(&labels, DType::I32, "softmax_cross_entropy_backward labels")?;
            let p = get(probs);
            let labs = get(labels);
            let mut d = vec![0.0; rows * cols];
            for r in 0..rows {
                let l = Self::label(&labs, r, cols)?;
                for c in 0..cols {
                    let onehot = if c == l { 1.0 } else { 0.0 };
                    d[r * cols + c] = scale as f64 * (p[r * cols + c] - onehot);
                }
            }
            put(dx, &d);
            Ok(())
        })
    }

    unsafe fn sgd_update(
        &self,
        w: BufView,
        g: BufView,
        m: ROption<BufView>,
        a: SgdArgs,
    ) -> RResult<(), Error> {
        guard(|| {
            f32s(&[&w, &g], "sgd_update")?;
            let mut ws = get(w);
            let gs = get(g);
            let mut ms = match m {
                ROption::RSome(mv) => {
                    f32s(&[&mv], "sgd_update")?;
                    Some((mv, get(mv)))
                }
                ROption::RNone => None,
            };
            for i in 0..ws.len() {
                let mut d = a.grad_scale as f64 * gs[i] + a.weight_decay as f64 * ws[i];
                if let Some((_, ms)) = &mut ms {
                    ms[i] = a.momentum as f64 * ms[i] + d;
                    d = if a.nesterov {
                        d + a.momentum as f64 * ms[i]
                    } else {
                        ms[i]
                    };
                }
                ws[i] -= a.lr as f64 * d;
            }
            put(w, &ws);
            if let Some((mv, ms)) = ms {
                put(mv, &ms);
            }
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
        a: AdaptiveArgs,
    ) -> RResult<(), Error> {
        guard(|| {
            f32s(&[&w, &g, &s1], "adaptive_update")?;
            let (mut ws, gs, mut s1s) = (get(w), get(g), get(s1));
            let s2 = s2.into_option();
            let mut s2s = s2.map(get);
            let (lr, wd) = (a.lr as f64, a.weight_decay as f64);
            for i in 0..ws.len() {
                let decoupled = matches!(
                    a.rule,
                    AdaptiveRule::Adam {
                        decoupled: true,
                        ..
                    }
                );
                let d = a.grad_scale as f64 * gs[i] + if decoupled { 0.0 } else { wd * ws[i] };
                match a.rule {
                    AdaptiveRule::AdaGrad { eps } => {
                        s1s[i] += d * d;
                        ws[i] -= lr * d / (s1s[i].sqrt() + eps as f64);
                    }
                    AdaptiveRule::RmsProp { rho, eps } => {
                        let rho = rho as f64;
                        s1s[i] = rho * s1s[i] + (1.0 - rho) * d * d;
                        ws[i] -= lr * d / (s1s[i].sqrt() + eps as f64);
                    }
                    AdaptiveRule::Adam {
                        beta1,
                        beta2,
                        eps,
                        correction1,
                        correction2,
                        decoupled,
                    } => {
                        let v = s2s
                            .as_mut()
                            .ok_or_else(|| Error::invalid("adam needs a second state"))?;
                        let (b1, b2) = (beta1 as f64, beta2 as f64);
                        if decoupled {
                            ws[i] -= lr * wd * ws[i];
                        }
                        s1s[i] = b1 * s1s[i] + (1.0 - b1) * d;
                        v[i] = b2 * v[i] + (1.0 - b2) * d * d;
                        let m_hat = s1s[i] / correction1 as f64;
                        let v_hat = v[i] / correction2 as f64;
                        ws[i] -= lr * m_hat / (v_hat.sqrt() + eps as f64);
                    }
                    AdaptiveRule::AdaDelta { rho, eps } => {
                        let steps = s2s
                            .as_mut()
                            .ok_or_else(|| Error::invalid("adadelta needs a second state"))?;
                        let (rho, eps) = (rho as f64, eps as f64);
                        s1s[i] = rho * s1s[i] + (1.0 - rho) * d * d;
                        let step = (steps[i] + eps).sqrt() / (s1s[i] + eps).sqrt() * d;
                        steps[i] = rho * steps[i] + (1.0 - rho) * step * step;
                        ws[i] -= lr * step;
                    }
                    AdaptiveRule::AdaMax {
                        beta1,
                        beta2,
                        eps,
                        correction1,
                    } => {
                        let u = s2s
                            .as_mut()
                            .ok_or_else(|| Error::invalid("adamax needs a second state"))?;
                        let (b1, b2) = (beta1 as f64, beta2 as f64);
                        s1s[i] = b1 * s1s[i] + (1.0 - b1) * d;
                        u[i] = (b2 * u[i]).max(d.abs() + eps as f64);
                        ws[i] -= lr / correction1 as f64 * s1s[i] / u[i];
                    }
                }
            }
            put(w, &ws);
            put(s1, &s1s);
            if let (Some(view), Some(values)) = (s2, s2s) {
                put(view, &values);
            }
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
            f32s(&[&x, &w, &y], "conv2d")?;
            put(y, &nn::conv2d(shape, &self.input(x), &self.input(w)));
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
            f32s(&[&dy, &w, &dx], "conv2d_backward_data")?;
            put(
                dx,
                &nn::conv2d_backward_data(shape, &self.input(dy), &self.input(w)),
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
            f32s(&[&x, &dy, &dw], "conv2d_backward_filter")?;
            put(
                dw,
                &nn::conv2d_backward_filter(shape, &self.input(x), &self.input(dy)),
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
            f32s(&[&x, &y], "pool2d")?;
            let (out, arg) = nn::pool2d(shape, &get(x));
            put(y, &out);
            if let ROption::RSome(a) = argmax {
                require(&a, DType::I32, "pool2d argmax")?;
                put(a, &arg);
            }
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
            f32s(&[&dy, &dx], "pool2d_backward")?;
            let arg = argmax.into_option().map(get);
            put(dx, &nn::pool2d_backward(shape, &get(dy), arg.as_deref())?);
            Ok(())
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
            f32s(&[&x, &y, &scale], "lrn")?;
            let (out, sc) = nn::lrn(shape, &get(x));
            put(y, &out);
            put(scale, &sc);
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
            f32s(&[&x, &y, &scale, &dy, &dx], "lrn_backward")?;
            put(
                dx,
                &nn::lrn_backward(shape, &get(x), &get(y), &get(scale), &get(dy)),
            );
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
            let out = nn::batch_norm(
                args,
                &get(x),
                &get(gamma),
                &get(beta),
                &get(running_mean),
                &get(running_var),
            );
            put(y, &out.y);
            if args.training {
                put(mean, &out.mean);
                put(inv_std, &out.inv_std);
                put(running_mean, &out.running_mean);
                put(running_var, &out.running_var);
            }
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
            f32s(
                &[&x, &dy, &gamma, &mean, &inv_std, &dx, &dgamma, &dbeta],
                "batch_norm_backward",
            )?;
            let (d, dg, db) = nn::batch_norm_backward(
                args,
                &get(x),
                &get(dy),
                &get(gamma),
                &get(mean),
                &get(inv_std),
            );
            put(dx, &d);
            put(dgamma, &dg);
            put(dbeta, &db);
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
            f32s(&[&y, &dy, &dx], "softmax_backward")?;
            let (ys, dys) = (get(y), get(dy));
            let mut out = vec![0.0; rows * cols];
            for r in 0..rows {
                let row = r * cols..(r + 1) * cols;
                let dot: f64 = row.clone().map(|i| ys[i] * dys[i]).sum();
                for i in row {
                    out[i] = ys[i] * (dys[i] - dot);
                }
            }
            put(dx, &out);
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
            f32s(&[&x], "top_k")?;
            require(&indices, DType::I32, "top_k indices")?;
            let xs = get(x);
            let out: Vec<f64> = (0..rows)
                .flat_map(|r| {
                    nn::top_k_row(&xs[r * cols..(r + 1) * cols], k)
                        .into_iter()
                        .map(|i| i as f64)
                })
                .collect();
            put(indices, &out);
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
            f32s(&[&x, &stats], "top_k_accuracy")?;
            require(&labels, DType::I32, "top_k_accuracy labels")?;
            let (xs, labs) = (get(x), get(labels));
            let mut s = get(stats);
            for r in 0..rows {
                let l = Self::label(&labs, r, cols)?;
                if nn::top_k_row(&xs[r * cols..(r + 1) * cols], k).contains(&l) {
                    s[0] += 1.0;
                }
                s[1] += 1.0;
            }
            put(stats, &s);
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
            f32s(&[&table, &out], "gather_rows")?;
            require(&ids, DType::I32, "gather_rows ids")?;
            let (t, idx) = (get(table), get(ids));
            let mut o = vec![0.0; n * cols];
            for i in 0..n {
                let r = nn::row_id(idx[i], i, rows)?;
                o[i * cols..(i + 1) * cols].copy_from_slice(&t[r * cols..(r + 1) * cols]);
            }
            put(out, &o);
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
            f32s(&[&src, &table], "scatter_add_rows")?;
            require(&ids, DType::I32, "scatter_add_rows ids")?;
            let (x, idx) = (get(src), get(ids));
            let mut t = get(table);
            for i in 0..n {
                let r = nn::row_id(idx[i], i, rows)?;
                for c in 0..cols {
                    t[r * cols + c] += x[i * cols + c];
                }
            }
            put(table, &t);
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
            f32s(&[&gates, &c_prev, &c, &tanh_c, &h], "lstm_cell")?;
            let b = match bias {
                ROption::RSome(b) => {
                    f32s(&[&b], "lstm_cell")?;
                    get(b)
                }
                ROption::RNone => vec![0.0; 4 * hidden],
            };
            let (mut a, cp) = (get(gates), get(c_prev));
            let n = batch * hidden;
            let (mut cv, mut tv, mut hv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            for r in 0..batch {
                let row = &mut a[4 * hidden * r..4 * hidden * (r + 1)];
                for (k, x) in row.iter_mut().enumerate() {
                    let op = if k < 3 * hidden {
                        UnaryOp::Sigmoid
                    } else {
                        UnaryOp::Tanh
                    };
                    *x = unary_value(op, *x + b[k]);
                }
                for j in 0..hidden {
                    let gate = |k: usize| row[k * hidden + j];
                    let e = r * hidden + j;
                    cv[e] = gate(1) * cp[e] + gate(0) * gate(3);
                    tv[e] = cv[e].tanh();
                    hv[e] = gate(2) * tv[e];
                }
            }
            put(gates, &a);
            put(c, &cv);
            put(tanh_c, &tv);
            put(h, &hv);
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
            f32s(&[&gates, &c_prev, &tanh_c, &dh, &dc, &d_gates], op)?;
            if let ROption::RSome(p) = &dc_prev {
                f32s(&[p], op)?;
            }
            let (a, cp, t) = (get(gates), get(c_prev), get(tanh_c));
            let (dhv, dcv) = (get(dh), get(dc));
            let mut d = vec![0.0; 4 * batch * hidden];
            let mut dp = vec![0.0; batch * hidden];
            for r in 0..batch {
                for j in 0..hidden {
                    let gate = |k: usize| a[4 * hidden * r + k * hidden + j];
                    let (i, f, o, g) = (gate(0), gate(1), gate(2), gate(3));
                    let e = r * hidden + j;
                    let dcj = dcv[e] + dhv[e] * o * (1.0 - t[e] * t[e]);
                    let grads = [
                        dcj * g * i * (1.0 - i),
                        dcj * cp[e] * f * (1.0 - f),
                        dhv[e] * t[e] * o * (1.0 - o),
                        dcj * i * (1.0 - g * g),
                    ];
                    for (k, v) in grads.into_iter().enumerate() {
                        d[4 * hidden * r + k * hidden + j] = v;
                    }
                    dp[e] = dcj * f;
                }
            }
            put(d_gates, &d);
            if let ROption::RSome(p) = dc_prev {
                put(p, &dp);
            }
            Ok(())
        })
    }
}
