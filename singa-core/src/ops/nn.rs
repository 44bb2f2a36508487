//! Checked convolutional-network operations: convolution, pooling, normalisation, softmax
//! gradients and top-k.

use crate::device::{BatchNormArgs, BufView, ConvShape, DeviceRef, LrnShape, PoolKind, PoolShape};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Access, Tensor};
use abi_stable::std_types::ROption;

impl DeviceRef {
    /// A checked `F32` view of `t`, which must have `len` elements.
    pub(super) fn f32_view(
        &self,
        op: &'static str,
        t: &Tensor,
        len: usize,
        what: &str,
    ) -> Result<BufView> {
        let v = self.check(op, t, Some(DType::F32))?;
        Self::check_len(op, t, len, what)?;
        Ok(v)
    }

    fn conv_checked(op: &'static str, shape: &ConvShape) -> Result<()> {
        match shape.problem() {
            Some(p) => Err(Error::shape(op, p)),
            None => Ok(()),
        }
    }

    /// 2-D convolution, see [`Device::conv2d`](crate::Device::conv2d).
    pub fn conv2d(&self, shape: &ConvShape, x: &Tensor, w: &Tensor, y: &mut Tensor) -> Result<()> {
        const OP: &str = "conv2d";
        Self::conv_checked(OP, shape)?;
        let xv = self.f32_view(OP, x, shape.input_len(), "the input")?;
        let wv = self.f32_view(OP, w, shape.weight_len(), "the weights")?;
        let yv = self.f32_view(OP, y, shape.output_len(), "the output")?;
        Self::check_alias(OP, &yv, &[xv, wv], false)?;
        let _access = Access::new(OP, &[y], &[x, w])?;
        // SAFETY: checked above.
        unsafe { self.raw().conv2d(shape, xv, wv, yv) }.into_result()
    }

    /// The input gradient of a convolution.
    pub fn conv2d_backward_data(
        &self,
        shape: &ConvShape,
        dy: &Tensor,
        w: &Tensor,
        dx: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "conv2d_backward_data";
        Self::conv_checked(OP, shape)?;
        let dyv = self.f32_view(OP, dy, shape.output_len(), "the output gradient")?;
        let wv = self.f32_view(OP, w, shape.weight_len(), "the weights")?;
        let dxv = self.f32_view(OP, dx, shape.input_len(), "the input gradient")?;
        Self::check_alias(OP, &dxv, &[dyv, wv], false)?;
        let _access = Access::new(OP, &[dx], &[dy, w])?;
        // SAFETY: checked above.
        unsafe { self.raw().conv2d_backward_data(shape, dyv, wv, dxv) }.into_result()
    }

    /// The weight gradient of a convolution.
    pub fn conv2d_backward_filter(
        &self,
        shape: &ConvShape,
        x: &Tensor,
        dy: &Tensor,
        dw: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "conv2d_backward_filter";
        Self::conv_checked(OP, shape)?;
        let xv = self.f32_view(OP, x, shape.input_len(), "the input")?;
        let dyv = self.f32_view(OP, dy, shape.output_len(), "the output gradient")?;
        let dwv = self.f32_view(OP, dw, shape.weight_len(), "the weight gradient")?;
        Self::check_alias(OP, &dwv, &[xv, dyv], false)?;
        let _access = Access::new(OP, &[dw], &[x, dy])?;
        // SAFETY: checked above.
        unsafe { self.raw().conv2d_backward_filter(shape, xv, dyv, dwv) }.into_result()
    }

    fn pool_checked(op: &'static str, shape: &PoolShape, has_argmax: bool) -> Result<()> {
        if let Some(p) = shape.problem() {
            return Err(Error::shape(op, p));
        }
        if has_argmax != (shape.kind == PoolKind::Max) {
            return Err(Error::invalid(format!(
                "{op}: max pooling needs an argmax tensor, average pooling takes none"
            )));
        }
        Ok(())
    }

    /// 2-D pooling, see [`Device::pool2d`](crate::Device::pool2d).
    pub fn pool2d(
        &self,
        shape: &PoolShape,
        x: &Tensor,
        y: &mut Tensor,
        argmax: Option<&mut Tensor>,
    ) -> Result<()> {
        const OP: &str = "pool2d";
        Self::pool_checked(OP, shape, argmax.is_some())?;
        let xv = self.f32_view(OP, x, shape.input_len(), "the input")?;
        let yv = self.f32_view(OP, y, shape.output_len(), "the output")?;
        Self::check_alias(OP, &yv, &[xv], false)?;
        let am: Option<&Tensor> = argmax.as_deref();
        let av = match am {
            Some(a) => {
                let v = self.check(OP, a, Some(DType::I32))?;
                Self::check_len(OP, a, shape.output_len(), "the argmax")?;
                ROption::RSome(v)
            }
            None => ROption::RNone,
        };
        let y_ro: &Tensor = y;
        let _access = match am {
            Some(a) => Access::new(OP, &[y_ro, a], &[x])?,
            None => Access::new(OP, &[y_ro], &[x])?,
        };
        // SAFETY: checked above.
        unsafe { self.raw().pool2d(shape, xv, yv, av) }.into_result()
    }

    /// The gradient of 2-D pooling.
    pub fn pool2d_backward(
        &self,
        shape: &PoolShape,
        dy: &Tensor,
        argmax: Option<&Tensor>,
        dx: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "pool2d_backward";
        Self::pool_checked(OP, shape, argmax.is_some())?;
        let dyv = self.f32_view(OP, dy, shape.output_len(), "the output gradient")?;
        let dxv = self.f32_view(OP, dx, shape.input_len(), "the input gradient")?;
        Self::check_alias(OP, &dxv, &[dyv], false)?;
        let av = match argmax {
            Some(a) => {
                let v = self.check(OP, a, Some(DType::I32))?;
                Self::check_len(OP, a, shape.output_len(), "the argmax")?;
                ROption::RSome(v)
            }
            None => ROption::RNone,
        };
        let _access = match argmax {
            Some(a) => Access::new(OP, &[dx], &[dy, a])?,
            None => Access::new(OP, &[dx], &[dy])?,
        };
        // SAFETY: checked above.
        unsafe { self.raw().pool2d_backward(shape, dyv, av, dxv) }.into_result()
    }

    fn lrn_checked(op: &'static str, shape: &LrnShape) -> Result<()> {
        if shape.size == 0 || shape.size.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "{op}: local_size must be odd, got {}",
                shape.size
            )));
        }
        Ok(())
    }

    /// Local response normalisation, see [`Device::lrn`](crate::Device::lrn).
    pub fn lrn(
        &self,
        shape: &LrnShape,
        x: &Tensor,
        y: &mut Tensor,
        scale: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "lrn";
        Self::lrn_checked(OP, shape)?;
        let n = shape.len();
        let xv = self.f32_view(OP, x, n, "the input")?;
        let yv = self.f32_view(OP, y, n, "the output")?;
        let sv = self.f32_view(OP, scale, n, "the scale")?;
        Self::check_alias(OP, &yv, &[xv, sv], false)?;
        Self::check_alias(OP, &sv, &[xv], false)?;
        let _access = Access::new(OP, &[y, scale], &[x])?;
        // SAFETY: checked above.
        unsafe { self.raw().lrn(shape, xv, yv, sv) }.into_result()
    }

    /// The gradient of local response normalisation.
    pub fn lrn_backward(
        &self,
        shape: &LrnShape,
        x: &Tensor,
        y: &Tensor,
        scale: &Tensor,
        dy: &Tensor,
        dx: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "lrn_backward";
        Self::lrn_checked(OP, shape)?;
        let n = shape.len();
        let xv = self.f32_view(OP, x, n, "the input")?;
        let yv = self.f32_view(OP, y, n, "the output")?;
        let sv = self.f32_view(OP, scale, n, "the scale")?;
        let dyv = self.f32_view(OP, dy, n, "the output gradient")?;
        let dxv = self.f32_view(OP, dx, n, "the input gradient")?;
        Self::check_alias(OP, &dxv, &[xv, yv, sv, dyv], false)?;
        let _access = Access::new(OP, &[dx], &[x, y, scale, dy])?;
        // SAFETY: checked above.
        unsafe { self.raw().lrn_backward(shape, xv, yv, sv, dyv, dxv) }.into_result()
    }

    /// Batch normalisation, see [`Device::batch_norm`](crate::Device::batch_norm).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        args: &BatchNormArgs,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        y: &mut Tensor,
        mean: &mut Tensor,
        inv_std: &mut Tensor,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "batch_norm";
        let (n, c) = (args.dims.numel(), args.dims.mid);
        let xv = self.f32_view(OP, x, n, "the input")?;
        let yv = self.f32_view(OP, y, n, "the output")?;
        let per_channel = [
            (gamma as &Tensor, "gamma"),
            (beta, "beta"),
            (mean, "the mean"),
            (inv_std, "inv_std"),
            (running_mean, "the running mean"),
            (running_var, "the running variance"),
        ];
        let mut views = [xv; 6];
        for (i, (t, what)) in per_channel.iter().enumerate() {
            views[i] = self.f32_view(OP, t, c, what)?;
        }
        Self::check_alias(OP, &yv, &[xv, views[0], views[1]], false)?;
        let [gv, bv, mv, iv, rmv, rvv] = views;
        for w in [mv, iv, rmv, rvv] {
            Self::check_alias(OP, &w, &[xv, yv, gv, bv], false)?;
        }
        let (g_ro, b_ro): (&Tensor, &Tensor) = (gamma, beta);
        let _access = Access::new(OP, &[y, mean, inv_std, running_mean], &[x, g_ro, b_ro])?;
        let _var = Access::new(OP, &[running_var], &[])?;
        // SAFETY: checked above.
        unsafe {
            self.raw()
                .batch_norm(args, xv, gv, bv, yv, mv, iv, rmv, rvv)
        }
        .into_result()
    }

    /// The gradients of batch normalisation.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_backward(
        &self,
        args: &BatchNormArgs,
        x: &Tensor,
        dy: &Tensor,
        gamma: &Tensor,
        mean: &Tensor,
        inv_std: &Tensor,
        dx: &mut Tensor,
        dgamma: &mut Tensor,
        dbeta: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "batch_norm_backward";
        let (n, c) = (args.dims.numel(), args.dims.mid);
        let xv = self.f32_view(OP, x, n, "the input")?;
        let dyv = self.f32_view(OP, dy, n, "the output gradient")?;
        let dxv = self.f32_view(OP, dx, n, "the input gradient")?;
        let gv = self.f32_view(OP, gamma, c, "gamma")?;
        let mv = self.f32_view(OP, mean, c, "the mean")?;
        let iv = self.f32_view(OP, inv_std, c, "inv_std")?;
        let dgv = self.f32_view(OP, dgamma, c, "the gamma gradient")?;
        let dbv = self.f32_view(OP, dbeta, c, "the beta gradient")?;
        Self::check_alias(OP, &dxv, &[xv, dyv, gv, mv, iv], false)?;
        for w in [dgv, dbv] {
            Self::check_alias(OP, &w, &[xv, dyv, dxv, gv, mv, iv], false)?;
        }
        let _access = Access::new(OP, &[dx, dgamma, dbeta], &[x, dy, gamma, mean])?;
        let _inv = Access::new(OP, &[], &[inv_std])?;
        // SAFETY: checked above.
        unsafe {
            self.raw()
                .batch_norm_backward(args, xv, dyv, gv, mv, iv, dxv, dgv, dbv)
        }
        .into_result()
    }

    /// The gradient of a row-wise softmax (rows = dimension 0) from its output `y`.
    pub fn softmax_backward(&self, y: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        const OP: &str = "softmax_backward";
        let (rows, cols) = y.shape().as_matrix();
        let yv = self.f32_view(OP, y, rows * cols, "the output")?;
        let dyv = self.f32_view(OP, dy, rows * cols, "the output gradient")?;
        let dxv = self.f32_view(OP, dx, rows * cols, "the input gradient")?;
        Self::check_alias(OP, &dxv, &[yv], false)?;
        Self::check_alias(OP, &dxv, &[dyv], true)?;
        let _access = Access::new(OP, &[dx], &[y, dy])?;
        // SAFETY: checked above.
        unsafe { self.raw().softmax_backward(rows, cols, yv, dyv, dxv) }.into_result()
    }

    fn k_checked(op: &'static str, k: usize, cols: usize) -> Result<()> {
        if k == 0 || k > cols {
            return Err(Error::invalid(format!(
                "{op}: k = {k} must be between 1 and the {cols} columns"
            )));
        }
        Ok(())
    }

    /// The indices of the `k` largest values of each row (rows = dimension 0), into `indices`
    /// (`I32`, rows × k).
    pub fn top_k(&self, x: &Tensor, k: usize, indices: &mut Tensor) -> Result<()> {
        const OP: &str = "top_k";
        let (rows, cols) = x.shape().as_matrix();
        Self::k_checked(OP, k, cols)?;
        let xv = self.f32_view(OP, x, rows * cols, "the input")?;
        let iv = self.check(OP, indices, Some(DType::I32))?;
        Self::check_len(OP, indices, rows * k, "the indices")?;
        let _access = Access::new(OP, &[indices], &[x])?;
        // SAFETY: checked above.
        unsafe { self.raw().top_k(rows, cols, k, xv, iv) }.into_result()
    }

    /// Adds to `stats` (2 elements) how many rows have their label among the `k` largest
    /// values, and how many rows there are.
    pub fn top_k_accuracy(
        &self,
        x: &Tensor,
        labels: &Tensor,
        k: usize,
        stats: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "top_k_accuracy";
        let (rows, cols) = x.shape().as_matrix();
        Self::k_checked(OP, k, cols)?;
        let xv = self.f32_view(OP, x, rows * cols, "the input")?;
        let lv = self.check(OP, labels, Some(DType::I32))?;
        Self::check_len(OP, labels, rows, "the labels")?;
        let sv = self.f32_view(OP, stats, 2, "the statistics")?;
        Self::check_alias(OP, &sv, &[xv], false)?;
        let _access = Access::new(OP, &[stats], &[x, labels])?;
        // SAFETY: checked above.
        unsafe { self.raw().top_k_accuracy(rows, cols, k, xv, lv, sv) }.into_result()
    }

    /// Row `ids[i]` of `table` (`[rows, cols]`) into row `i` of `out`, for every id of `ids`
    /// (`I32`, any shape; `out` has `ids.numel() × cols` elements): an embedding lookup.
    pub fn gather_rows(&self, table: &Tensor, ids: &Tensor, out: &mut Tensor) -> Result<()> {
        const OP: &str = "gather_rows";
        let (rows, cols) = table.shape().as_matrix();
        let n = ids.numel();
        let tv = self.f32_view(OP, table, rows * cols, "the table")?;
        let iv = self.check(OP, ids, Some(DType::I32))?;
        let ov = self.f32_view(OP, out, n * cols, "the output")?;
        Self::check_alias(OP, &ov, &[tv], false)?;
        let _access = Access::new(OP, &[out], &[table, ids])?;
        // SAFETY: checked above.
        unsafe { self.raw().gather_rows(rows, cols, n, tv, iv, ov) }.into_result()
    }

    /// Adds row `i` of `src` to row `ids[i]` of `table` (`[rows, cols]`) for every id: the
    /// backward pass of [`DeviceRef::gather_rows`].
    pub fn scatter_add_rows(&self, ids: &Tensor, src: &Tensor, table: &mut Tensor) -> Result<()> {
        const OP: &str = "scatter_add_rows";
        let (rows, cols) = table.shape().as_matrix();
        let n = ids.numel();
        let iv = self.check(OP, ids, Some(DType::I32))?;
        let sv = self.f32_view(OP, src, n * cols, "the rows to add")?;
        let tv = self.f32_view(OP, table, rows * cols, "the table")?;
        Self::check_alias(OP, &tv, &[sv], false)?;
        let _access = Access::new(OP, &[table], &[ids, src])?;
        // SAFETY: checked above.
        unsafe { self.raw().scatter_add_rows(rows, cols, n, iv, sv, tv) }.into_result()
    }
}
