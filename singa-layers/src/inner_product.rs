//! The fully connected layer.

use crate::capability::RowGradients;
use crate::operator::{Describe, Operator};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DType, DeviceRef, Dims3, Error, FieldKind, FieldSpec, Fields, GemmLayout, Init, Layer,
    LayerDef, Param, ParamFactoryMut, ParamSpec, Phase, ReduceOp, Result, SetupContext, Shape,
    Tensor, TensorSpec,
};

/// `y = x·W + b`, with the input seen as a matrix (batch × features).
///
/// `W` is stored `[in, out]` (or `[out, in]` with `transpose = true`, PyTorch's layout). With
/// `axis = k` the features are the input's dimensions from `k` on and every index of the
/// dimensions before them is a row (`axis = 2` maps each step of a `[batch, steps, features]`
/// sequence to `[batch, steps, num_output]`, as PyTorch's `nn.Linear` does).
pub struct InnerProduct {
    num_output: usize,
    bias_term: bool,
    transpose: bool,
    axis: usize,
    state: Option<State>,
}

struct State {
    dev: DeviceRef,
    weight: Param,
    bias: Option<Param>,
    rows: usize,
    /// The input's features (the product of its dimensions from `axis` on).
    cols: usize,
    /// Whether the workers of the group compute the weight gradient together
    /// ([`RowGradients::param_grad_rows`]), so that `backward` leaves it alone.
    shared_weight_grad: bool,
}

impl LayerDef for InnerProduct {
    const TYPE: &'static str = "inner_product";
    const DOC: &'static str =
        "Fully connected: y = x·W + b over the input seen as rows × features, the features its dimensions from `axis` on (default 1: batch × the rest; 2 maps each step of [batch, steps, features] to [batch, steps, num_output]). Params `weight` (fan-in = inputs) and `bias`.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("num_output", FieldKind::Int, "number of output units").required(),
            FieldSpec::new("bias_term", FieldKind::Bool, "add a learned bias").default(true),
            FieldSpec::new(
                "transpose",
                FieldKind::Bool,
                "store the weight as [out, in]",
            )
            .default(false),
            FieldSpec::new(
                "axis",
                FieldKind::Int,
                "the input's first feature dimension; the dimensions before it are rows",
            )
            .default(1),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let num_output = f.usize("num_output")?;
        if num_output == 0 {
            return Err(Error::invalid("num_output must be at least 1"));
        }
        let axis = f.usize("axis")?;
        if axis == 0 {
            return Err(Error::invalid(
                "axis must be at least 1 (dimension 0 is the batch)",
            ));
        }
        Ok(InnerProduct {
            num_output,
            bias_term: f.bool("bias_term")?,
            transpose: f.bool("transpose")?,
            axis,
            state: None,
        })
    }
}

impl InnerProduct {
    fn setup_impl(
        &mut self,
        ctx: &SetupContext<'_>,
        mut params: ParamFactoryMut<'_>,
    ) -> Result<RVec<TensorSpec>> {
        let input = ctx.single_input()?;
        let dims = input.shape.dims();
        // axis = rank: one feature per row (a [batch, steps] sequence of numbers).
        if self.axis > dims.len() {
            return Err(Error::shape(
                format!("layer {}", ctx.layer),
                format!(
                    "axis {} of an input of shape {}: it has no dimension {}",
                    self.axis, input.shape, self.axis
                ),
            ));
        }
        let rows: usize = dims[..self.axis].iter().product();
        let cols: usize = dims[self.axis..].iter().product();
        let mut out_dims = dims[..self.axis].to_vec();
        out_dims.push(self.num_output);
        let out = self.num_output;
        let wshape = if self.transpose {
            [out, cols]
        } else {
            [cols, out]
        };
        let weight = params
            .param(ParamSpec::new(
                "weight",
                wshape,
                cols,
                out,
                Init::XavierUniform { scale: 1.0 },
            ))
            .into_result()?;
        let bias = if self.bias_term {
            Some(
                params
                    .param(ParamSpec::new(
                        "bias",
                        [out],
                        cols,
                        out,
                        Init::Constant { value: 0.0 },
                    ))
                    .into_result()?,
            )
        } else {
            None
        };
        self.state = Some(State {
            dev: ctx.device.clone(),
            weight,
            bias,
            rows,
            cols,
            shared_weight_grad: false,
        });
        let shape = Shape::new(&out_dims)?;
        Ok(vec![TensorSpec::new("output", shape, DType::F32)].into())
    }

    fn state(&mut self) -> Result<&mut State> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("inner_product used before setup"))
    }
}

impl Describe for InnerProduct {
    fn operator(&self) -> Option<Operator> {
        self.state.as_ref()?;
        Some(Operator::InnerProduct {
            transposed: self.transpose,
            bias: self.bias_term,
            axis: self.axis,
        })
    }
}

impl Layer for InnerProduct {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        self.setup_impl(ctx, params).into()
    }

    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let transpose = self.transpose;
        let n = self.num_output;
        (|| {
            let s = self.state()?;
            let x = inputs[0].reshape([s.rows, s.cols])?;
            let y = &mut outputs[0].reshape([s.rows, n])?;
            s.dev
                .matmul(1.0, &x, false, &s.weight.value, transpose, 0.0, y)?;
            if let Some(b) = &s.bias {
                let dims = Dims3 {
                    outer: s.rows,
                    mid: n,
                    inner: 1,
                };
                s.dev.add_broadcast(dims, &b.value, y)?;
            }
            Ok(())
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        let transpose = self.transpose;
        let n = self.num_output;
        (|| {
            let s = self.state()?;
            let x = &inputs[0].reshape([s.rows, s.cols])?;
            let dy = &grad_outputs[0].reshape([s.rows, n])?;
            if s.shared_weight_grad {
                // The group computes it (`param_grad_rows`).
            } else if transpose {
                s.dev
                    .matmul(1.0, dy, true, x, false, 0.0, &mut s.weight.grad)?;
            } else {
                s.dev
                    .matmul(1.0, x, true, dy, false, 0.0, &mut s.weight.grad)?;
            }
            if let Some(b) = &mut s.bias {
                let dims = Dims3 {
                    outer: 1,
                    mid: s.rows,
                    inner: n,
                };
                s.dev
                    .reduce(ReduceOp::Sum, dims, dy, &mut b.grad, 1.0, 0.0)?;
            }
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                let dx = &mut dx.reshape([s.rows, s.cols])?;
                s.dev
                    .matmul(1.0, dy, false, &s.weight.value, !transpose, 0.0, dx)?;
            }
            Ok(())
        })()
        .into()
    }
}

impl RowGradients for InnerProduct {
    fn share_param_grad(&mut self, param: usize) -> Result<bool> {
        let s = self.state()?;
        s.shared_weight_grad |= param == 0;
        Ok(param == 0)
    }

    fn param_grad_rows(
        &mut self,
        param: usize,
        start: usize,
        inputs: &[Tensor],
        grad_outputs: &[Tensor],
        accumulate: bool,
        grad: &mut Tensor,
    ) -> Result<()> {
        let (transpose, out) = (self.transpose, self.num_output);
        let s = self.state()?;
        if param != 0 {
            return Err(Error::invalid(format!(
                "inner_product computes rows of its weight gradient only, not of parameter {param}"
            )));
        }
        let (x, dy) = (&inputs[0], &grad_outputs[0]);
        let (wrows, wcols) = s.weight.grad.shape().as_matrix();
        let rows = grad.shape().dim(0);
        if start + rows > wrows || grad.numel() != rows * wcols {
            return Err(Error::shape(
                "param_grad_rows",
                format!(
                    "rows {start}..{} of a weight gradient of shape {} into a tensor of shape {}",
                    start + rows,
                    s.weight.grad.shape(),
                    grad.shape()
                ),
            ));
        }
        if rows == 0 {
            return Ok(());
        }
        let batch = dy.numel() / out;
        // Rows of W are columns of x (W is [in, out]: dW = xᵀ·dy) or of dy (W is
        // [out, in]: dW = dyᵀ·x): the left operand starts at column `start` of one of them,
        // read transposed with its full row stride.
        let (a, lda, b) = if transpose {
            (dy, out, x)
        } else {
            (x, wrows, dy)
        };
        let a = a.reshape([a.numel()])?;
        let a = a.narrow(start, a.numel() - start)?;
        let layout = GemmLayout {
            lda,
            trans_a: true,
            ..GemmLayout::dense(rows, wcols, batch, true, false)
        };
        let beta = if accumulate { 1.0 } else { 0.0 };
        s.dev.gemm(layout, 1.0, &a, b, beta, grad)
    }
}
