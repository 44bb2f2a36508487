//! The safe, checked way to run device operations on tensors.
//!
//! Each method of [`DeviceRef`] here checks that its tensors live on this device, have the
//! dtypes and sizes the operation needs, and do not overlap where they must not, then calls the
//! matching `unsafe` method of [`Device`](crate::Device). The checks are a few integer compares:
//! nothing here allocates unless it returns an error.

use crate::device::{
    AdaptiveArgs, BinaryOp, BufView, DeviceRef, Dims3, Distribution, DynDevice, GemmArgs,
    GemmLayout, ReduceOp, SgdArgs, UnaryOp,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Access, Tensor};
use abi_stable::std_types::{ROption, RResult};

mod nn;
mod recurrent;

impl DeviceRef {
    pub(crate) fn check(
        &self,
        op: &'static str,
        t: &Tensor,
        dtype: Option<DType>,
    ) -> Result<BufView> {
        if !t.device().shares_memory_with(self) {
            return Err(Error::invalid(format!(
                "{op}: a tensor lives in the memory of device {} ({}), which device {} ({}) cannot use",
                t.device().id(),
                t.device().info().memory_space,
                self.id(),
                self.info().memory_space,
            )));
        }
        if let Some(d) = dtype {
            if t.dtype() != d {
                return Err(Error::invalid(format!(
                    "{op}: expected a {d} tensor, got {}",
                    t.dtype()
                )));
            }
        }
        Ok(t.view())
    }

    pub(crate) fn check_len(op: &'static str, t: &Tensor, len: usize, what: &str) -> Result<()> {
        if t.numel() != len {
            return Err(Error::shape(
                op,
                format!(
                    "{what} has shape {} but {len} elements are needed",
                    t.shape()
                ),
            ));
        }
        Ok(())
    }

    /// Fails if `out` overlaps any of `inputs`, except (when `inplace_ok`) being exactly one.
    pub(crate) fn check_alias(
        op: &'static str,
        out: &BufView,
        inputs: &[BufView],
        inplace_ok: bool,
    ) -> Result<()> {
        for i in inputs {
            if out.overlaps(i) && !(inplace_ok && out.same_region(i)) {
                return Err(Error::invalid(format!(
                    "{op}: the output overlaps an input{}",
                    if inplace_ok {
                        " without being exactly it"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }

    /// `c = alpha · op(a) · op(b) + beta · c` on matrices (each tensor seen through
    /// [`Shape::as_matrix`](crate::Shape::as_matrix)); `trans_*` says the operand is stored
    /// transposed.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        alpha: f32,
        a: &Tensor,
        trans_a: bool,
        b: &Tensor,
        trans_b: bool,
        beta: f32,
        c: &mut Tensor,
    ) -> Result<()> {
        let (ar, ac) = a.shape().as_matrix();
        let (br, bc) = b.shape().as_matrix();
        let (cr, cc) = c.shape().as_matrix();
        let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
        let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
        if k != kb || cr != m || cc != n {
            return Err(Error::shape(
                "matmul",
                format!(
                    "{}{} x {}{} -> {}",
                    a.shape(),
                    if trans_a { "ᵀ" } else { "" },
                    b.shape(),
                    if trans_b { "ᵀ" } else { "" },
                    c.shape()
                ),
            ));
        }
        self.gemm(
            GemmLayout::dense(m, n, k, trans_a, trans_b),
            alpha,
            a,
            b,
            beta,
            c,
        )
    }

    /// A general (batched, strided) matrix multiply, see [`GemmLayout`]; checks that every
    /// operand stays inside its tensor.
    pub fn gemm(
        &self,
        layout: GemmLayout,
        alpha: f32,
        a: &Tensor,
        b: &Tensor,
        beta: f32,
        c: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "gemm";
        let av = self.check(OP, a, None)?;
        let bv = self.check(OP, b, None)?;
        let cv = self.check(OP, c, None)?;
        let l = &layout;
        let fits = |t: &Tensor,
                    (rows, cols): (usize, usize),
                    ld: usize,
                    stride: usize,
                    what: &str| {
            if rows == 0 || cols == 0 || l.batch == 0 {
                return Ok(());
            }
            let last = (l.batch - 1)
                .checked_mul(stride)
                .and_then(|v| v.checked_add((rows - 1).checked_mul(ld)?))
                .and_then(|v| v.checked_add(cols));
            if cols > ld || last.is_none_or(|last| last > t.numel()) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{what} of shape {}: {} matrices of {rows}x{cols} with row stride {ld} and batch stride {stride} do not fit",
                        t.shape(),
                        l.batch
                    ),
                ));
            }
            Ok(())
        };
        fits(a, l.a_stored(), l.lda, l.stride_a, "A")?;
        fits(b, l.b_stored(), l.ldb, l.stride_b, "B")?;
        fits(c, (l.m, l.n), l.ldc, l.stride_c, "C")?;
        if a.dtype() != c.dtype() || b.dtype() != c.dtype() {
            return Err(Error::invalid(format!(
                "{OP}: operands are {}, {} and {}; they must have one dtype",
                a.dtype(),
                b.dtype(),
                c.dtype()
            )));
        }
        Self::check_alias(OP, &cv, &[av, bv], false)?;
        let args = GemmArgs {
            layout,
            a: av,
            b: bv,
            c: cv,
            alpha,
            beta,
        };
        let _access = Access::new(OP, &[c], &[a, b])?;
        // SAFETY: devices, extents, dtypes and aliasing were checked above.
        unsafe { self.raw().gemm(&args) }.into_result()
    }

    /// `y = op(x)`; `y` may be `x` itself.
    pub fn unary(&self, op: UnaryOp, x: &Tensor, y: &mut Tensor) -> Result<()> {
        const OP: &str = "unary";
        let xv = self.check(OP, x, Some(DType::F32))?;
        let yv = self.check(OP, y, Some(DType::F32))?;
        Self::check_len(OP, y, x.numel(), "the output")?;
        Self::check_alias(OP, &yv, &[xv], true)?;
        let _access = Access::new(OP, &[y], &[x])?;
        // SAFETY: checked above.
        unsafe { self.raw().unary(op, xv, yv) }.into_result()
    }

    /// `dx = dy · op'(x)` given the forward input `x` and output `y`; `dx` may be `dy`.
    pub fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        dx: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "unary_backward";
        let n = x.numel();
        let xv = self.check(OP, x, Some(DType::F32))?;
        let yv = self.check(OP, y, Some(DType::F32))?;
        let dyv = self.check(OP, dy, Some(DType::F32))?;
        let dxv = self.check(OP, dx, Some(DType::F32))?;
        Self::check_len(OP, y, n, "y")?;
        Self::check_len(OP, dy, n, "dy")?;
        Self::check_len(OP, dx, n, "dx")?;
        Self::check_alias(OP, &dxv, &[xv, yv], false)?;
        Self::check_alias(OP, &dxv, &[dyv], true)?;
        let _access = Access::new(OP, &[dx], &[x, y, dy])?;
        // SAFETY: checked above.
        unsafe { self.raw().unary_backward(op, xv, yv, dyv, dxv) }.into_result()
    }

    /// `y = op(a, b)`; `y` may be `a` or `b`.
    pub fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        const OP: &str = "binary";
        let av = self.check(OP, a, Some(DType::F32))?;
        let bv = self.check(OP, b, Some(DType::F32))?;
        let yv = self.check(OP, y, Some(DType::F32))?;
        Self::check_len(OP, b, a.numel(), "b")?;
        Self::check_len(OP, y, a.numel(), "the output")?;
        Self::check_alias(OP, &yv, &[av, bv], true)?;
        let _access = Access::new(OP, &[y], &[a, b])?;
        // SAFETY: checked above.
        unsafe { self.raw().binary(op, av, bv, yv) }.into_result()
    }

    /// `y = alpha · x + beta · y`.
    pub fn axpby(&self, alpha: f32, x: &Tensor, beta: f32, y: &mut Tensor) -> Result<()> {
        const OP: &str = "axpby";
        let xv = self.check(OP, x, Some(DType::F32))?;
        let yv = self.check(OP, y, Some(DType::F32))?;
        Self::check_len(OP, y, x.numel(), "y")?;
        Self::check_alias(OP, &yv, &[xv], true)?;
        let _access = Access::new(OP, &[y], &[x])?;
        // SAFETY: checked above.
        unsafe { self.raw().axpby(alpha, xv, beta, yv) }.into_result()
    }

    /// `y = scale · x + shift`; `y` may be `x`.
    pub fn affine(&self, x: &Tensor, y: &mut Tensor, scale: f32, shift: f32) -> Result<()> {
        const OP: &str = "affine";
        let xv = self.check(OP, x, Some(DType::F32))?;
        let yv = self.check(OP, y, Some(DType::F32))?;
        Self::check_len(OP, y, x.numel(), "y")?;
        Self::check_alias(OP, &yv, &[xv], true)?;
        let _access = Access::new(OP, &[y], &[x])?;
        // SAFETY: checked above.
        unsafe { self.raw().affine(xv, yv, scale, shift) }.into_result()
    }

    /// Sets every element to `value`.
    pub fn fill(&self, t: &mut Tensor, value: f64) -> Result<()> {
        let v = self.check("fill", t, None)?;
        let _access = Access::new("fill", &[t], &[])?;
        // SAFETY: checked above.
        unsafe { self.raw().fill(v, value) }.into_result()
    }

    /// Fills an `F32` tensor with draws from `dist`, element `i` depending only on
    /// `(seed, offset + i)`.
    pub fn random(&self, t: &mut Tensor, dist: Distribution, seed: u64, offset: u64) -> Result<()> {
        let v = self.check("random", t, Some(DType::F32))?;
        let _access = Access::new("random", &[t], &[])?;
        // SAFETY: checked above.
        unsafe { self.raw().random(v, dist, seed, offset) }.into_result()
    }

    /// Copies `src` into `dst` (same dtype and number of elements).
    pub fn copy(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        const OP: &str = "copy";
        let sv = self.check(OP, src, None)?;
        let dv = self.check(OP, dst, Some(src.dtype()))?;
        Self::check_len(OP, dst, src.numel(), "the destination")?;
        Self::check_alias(OP, &dv, &[sv], false)?;
        let _access = Access::new(OP, &[dst], &[src])?;
        // SAFETY: checked above.
        unsafe { self.raw().copy(sv, dv) }.into_result()
    }

    /// Copies columns `src_col ..` of `src` (seen as a matrix) into columns `dst_col ..` of
    /// `dst`, `cols` columns wide, for every row. Both must have the same number of rows.
    pub fn copy_columns(
        &self,
        src: &Tensor,
        src_col: usize,
        dst: &mut Tensor,
        dst_col: usize,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "copy_columns";
        let sv = self.check(OP, src, None)?;
        let dv = self.check(OP, dst, Some(src.dtype()))?;
        let (sr, sc) = src.shape().as_matrix();
        let (dr, dc) = dst.shape().as_matrix();
        if sr != dr || src_col + cols > sc || dst_col + cols > dc {
            return Err(Error::shape(
                OP,
                format!(
                    "columns {src_col}..{} of {} into columns {dst_col}..{} of {}",
                    src_col + cols,
                    src.shape(),
                    dst_col + cols,
                    dst.shape()
                ),
            ));
        }
        if sr == 0 || cols == 0 {
            return Ok(());
        }
        Self::check_alias(OP, &dv, &[sv], false)?;
        let span = |v: BufView, start: usize, ld: usize| BufView {
            offset: v.offset + start,
            len: (sr - 1) * ld + cols,
            ..v
        };
        let _access = Access::new(OP, &[dst], &[src])?;
        // SAFETY: the block lies inside both views (checked above).
        unsafe {
            self.raw().copy2d(
                span(sv, src_col, sc),
                sc,
                span(dv, dst_col, dc),
                dc,
                sr,
                cols,
            )
        }
        .into_result()
    }

    /// Converts `src` into `dst`'s dtype.
    pub fn cast(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        const OP: &str = "cast";
        let sv = self.check(OP, src, None)?;
        let dv = self.check(OP, dst, None)?;
        Self::check_len(OP, dst, src.numel(), "the destination")?;
        Self::check_alias(OP, &dv, &[sv], false)?;
        let _access = Access::new(OP, &[dst], &[src])?;
        // SAFETY: checked above.
        unsafe { self.raw().cast(sv, dv) }.into_result()
    }

    /// `y[o, m, i] += v[m]`.
    pub fn add_broadcast(&self, dims: Dims3, v: &Tensor, y: &mut Tensor) -> Result<()> {
        // SAFETY: `broadcast` checks the views first.
        self.broadcast("add_broadcast", dims, v, y, |d, v, y| unsafe {
            d.add_broadcast(dims, v, y)
        })
    }

    /// `y[o, m, i] *= v[m]`.
    pub fn mul_broadcast(&self, dims: Dims3, v: &Tensor, y: &mut Tensor) -> Result<()> {
        // SAFETY: `broadcast` checks the views first.
        self.broadcast("mul_broadcast", dims, v, y, |d, v, y| unsafe {
            d.mul_broadcast(dims, v, y)
        })
    }

    /// Checks a vector `v` along the middle axis of `y` (`dims`), then runs `op` on their
    /// views.
    fn broadcast(
        &self,
        op: &'static str,
        dims: Dims3,
        v: &Tensor,
        y: &mut Tensor,
        run: impl FnOnce(&DynDevice, BufView, BufView) -> RResult<(), Error>,
    ) -> Result<()> {
        let vv = self.check(op, v, Some(DType::F32))?;
        let yv = self.check(op, y, Some(DType::F32))?;
        Self::check_len(op, v, dims.mid, "the vector")?;
        Self::check_len(op, y, dims.numel(), "the tensor")?;
        Self::check_alias(op, &yv, &[vv], false)?;
        let _access = Access::new(op, &[y], &[v])?;
        run(self.raw(), vv, yv).into_result()
    }

    /// `y = min(max(x, min), max)` (see [`UnaryOp::Clamp`]).
    pub fn clamp(&self, x: &Tensor, y: &mut Tensor, min: f32, max: f32) -> Result<()> {
        if min.is_nan() || max.is_nan() || min > max {
            return Err(Error::invalid(format!(
                "clamp: expected min ≤ max, got {min} and {max}"
            )));
        }
        self.unary(UnaryOp::Clamp { min, max }, x, y)
    }

    /// `y = max(x, v)`: every element at least `v`.
    pub fn max_scalar(&self, x: &Tensor, y: &mut Tensor, v: f32) -> Result<()> {
        self.clamp(x, y, v, f32::INFINITY)
    }

    /// `y = min(x, v)`: every element at most `v`.
    pub fn min_scalar(&self, x: &Tensor, y: &mut Tensor, v: f32) -> Result<()> {
        self.clamp(x, y, f32::NEG_INFINITY, v)
    }

    /// `y[o, i] = beta · y[o, i] + alpha · reduce_m x[o, m, i]`.
    pub fn reduce(
        &self,
        op: ReduceOp,
        dims: Dims3,
        x: &Tensor,
        y: &mut Tensor,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        const OP: &str = "reduce";
        let xv = self.check(OP, x, Some(DType::F32))?;
        let yv = self.check(OP, y, Some(DType::F32))?;
        Self::check_len(OP, x, dims.numel(), "the input")?;
        Self::check_len(OP, y, dims.outer * dims.inner, "the output")?;
        Self::check_alias(OP, &yv, &[xv], false)?;
        let _access = Access::new(OP, &[y], &[x])?;
        // SAFETY: checked above.
        unsafe { self.raw().reduce(op, dims, xv, yv, alpha, beta) }.into_result()
    }

    /// Row-wise softmax (rows = dimension 0).
    pub fn softmax(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        const OP: &str = "softmax";
        let xv = self.check(OP, x, Some(DType::F32))?;
        let yv = self.check(OP, y, Some(DType::F32))?;
        Self::check_len(OP, y, x.numel(), "the output")?;
        Self::check_alias(OP, &yv, &[xv], true)?;
        let (rows, cols) = x.shape().as_matrix();
        let _access = Access::new(OP, &[y], &[x])?;
        // SAFETY: checked above.
        unsafe { self.raw().softmax(rows, cols, xv, yv) }.into_result()
    }

    /// Softmax cross-entropy forward; adds `[loss sum, correct, samples]` into `stats`.
    pub fn softmax_cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        probs: &mut Tensor,
        stats: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "softmax_cross_entropy";
        let (rows, cols) = logits.shape().as_matrix();
        let lv = self.check(OP, logits, Some(DType::F32))?;
        let labv = self.check(OP, labels, Some(DType::I32))?;
        let pv = self.check(OP, probs, Some(DType::F32))?;
        let sv = self.check(OP, stats, Some(DType::F32))?;
        Self::check_len(OP, labels, rows, "the labels")?;
        Self::check_len(OP, probs, rows * cols, "the probabilities")?;
        Self::check_len(OP, stats, 3, "the statistics")?;
        Self::check_alias(OP, &pv, &[lv], true)?;
        Self::check_alias(OP, &sv, &[lv, pv], false)?;
        let _access = Access::new(OP, &[probs, stats], &[logits, labels])?;
        // SAFETY: checked above.
        unsafe {
            self.raw()
                .softmax_cross_entropy(rows, cols, lv, labv, pv, sv)
        }
        .into_result()
    }

    /// `dx = scale · (probs - onehot(labels))`.
    pub fn softmax_cross_entropy_backward(
        &self,
        probs: &Tensor,
        labels: &Tensor,
        dx: &mut Tensor,
        scale: f32,
    ) -> Result<()> {
        const OP: &str = "softmax_cross_entropy_backward";
        let (rows, cols) = probs.shape().as_matrix();
        let pv = self.check(OP, probs, Some(DType::F32))?;
        let labv = self.check(OP, labels, Some(DType::I32))?;
        let dv = self.check(OP, dx, Some(DType::F32))?;
        Self::check_len(OP, labels, rows, "the labels")?;
        Self::check_len(OP, dx, rows * cols, "dx")?;
        Self::check_alias(OP, &dv, &[pv], true)?;
        let _access = Access::new(OP, &[dx], &[probs, labels])?;
        // SAFETY: checked above.
        unsafe {
            self.raw()
                .softmax_cross_entropy_backward(rows, cols, pv, labv, dv, scale)
        }
        .into_result()
    }

    /// One fused adaptive step, see [`Device::adaptive_update`](crate::Device::adaptive_update):
    /// `s1` always, `s2` for Adam.
    pub fn adaptive_update(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        s1: &mut Tensor,
        s2: Option<&mut Tensor>,
        args: AdaptiveArgs,
    ) -> Result<()> {
        const OP: &str = "adaptive_update";
        let wv = self.check(OP, w, Some(DType::F32))?;
        let gv = self.check(OP, g, Some(DType::F32))?;
        let s1v = self.check(OP, s1, Some(DType::F32))?;
        for (t, what) in [(g, "the gradient"), (&*s1, "the first state")] {
            Self::check_len(OP, t, w.numel(), what)?;
        }
        Self::check_alias(OP, &wv, &[gv, s1v], false)?;
        Self::check_alias(OP, &s1v, &[gv], false)?;
        let needs_second = args.rule.needs_second_state();
        let s2_ref: Option<&Tensor> = s2.as_deref();
        if s2_ref.is_some() != needs_second {
            return Err(Error::invalid(format!(
                "{OP}: {:?} {} second state tensor",
                args.rule,
                if needs_second { "needs a" } else { "takes no" }
            )));
        }
        let s2v = match s2_ref {
            Some(t) => {
                let v = self.check(OP, t, Some(DType::F32))?;
                Self::check_len(OP, t, w.numel(), "the second state")?;
                Self::check_alias(OP, &v, &[wv, gv, s1v], false)?;
                ROption::RSome(v)
            }
            None => ROption::RNone,
        };
        let w_ro: &Tensor = w;
        let s1_ro: &Tensor = s1;
        let _access = match s2_ref {
            Some(t) => Access::new(OP, &[w_ro, s1_ro, t], &[g])?,
            None => Access::new(OP, &[w_ro, s1_ro], &[g])?,
        };
        // SAFETY: checked above.
        unsafe { self.raw().adaptive_update(wv, gv, s1v, s2v, args) }.into_result()
    }

    /// One fused SGD step, see [`Device::sgd_update`](crate::Device::sgd_update).
    pub fn sgd_update(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        momentum: Option<&mut Tensor>,
        args: SgdArgs,
    ) -> Result<()> {
        const OP: &str = "sgd_update";
        let wv = self.check(OP, w, Some(DType::F32))?;
        let gv = self.check(OP, g, Some(DType::F32))?;
        Self::check_len(OP, g, w.numel(), "the gradient")?;
        Self::check_alias(OP, &wv, &[gv], false)?;
        let momentum_ref: Option<&Tensor> = momentum.as_deref();
        let mv = match momentum_ref {
            Some(m) => {
                let mv = self.check(OP, m, Some(DType::F32))?;
                Self::check_len(OP, m, w.numel(), "the momentum")?;
                Self::check_alias(OP, &mv, &[wv, gv], false)?;
                ROption::RSome(mv)
            }
            None => ROption::RNone,
        };
        let w_only = [&*w];
        let _access = match &momentum_ref {
            Some(m) => Access::new(OP, &[&*w, m], &[g])?,
            None => Access::new(OP, &w_only, &[g])?,
        };
        // SAFETY: checked above.
        unsafe { self.raw().sgd_update(wv, gv, mv, args) }.into_result()
    }
}
