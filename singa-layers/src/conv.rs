//! Convolution and pooling over NCHW images.

use crate::operator::{Describe, Operator};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    ConvShape, DType, DeviceRef, Dims3, Error, FieldKind, FieldSpec, Fields, Init, Layer, LayerDef,
    Param, ParamFactoryMut, ParamSpec, Phase, PoolKind, PoolShape, ReduceOp, Result, SetupContext,
    Tensor, TensorSpec,
};

/// The fields of a 2-D window: `kernel` (or `kernel_h` and `kernel_w`), `stride`, `pad`.
pub(crate) fn window_fields(stride_default: Option<usize>) -> Vec<FieldSpec> {
    let stride = FieldSpec::new(
        "stride",
        FieldKind::Int,
        "step between windows (both directions)",
    );
    vec![
        FieldSpec::new("kernel", FieldKind::Int, "window height and width"),
        FieldSpec::new(
            "kernel_h",
            FieldKind::Int,
            "window height (with kernel_w, instead of kernel)",
        ),
        FieldSpec::new("kernel_w", FieldKind::Int, "window width"),
        match stride_default {
            Some(s) => stride.default(s),
            None => stride,
        },
        FieldSpec::new(
            "stride_h",
            FieldKind::Int,
            "vertical step (instead of stride)",
        ),
        FieldSpec::new("stride_w", FieldKind::Int, "horizontal step"),
        FieldSpec::new(
            "pad",
            FieldKind::Int,
            "zeros added on each side (both directions)",
        )
        .default(0),
        FieldSpec::new(
            "pad_h",
            FieldKind::Int,
            "rows of zeros above and below (instead of pad)",
        ),
        FieldSpec::new("pad_w", FieldKind::Int, "columns of zeros left and right"),
    ]
}

/// `(h, w)` from `name_h`/`name_w`, or `name` for both, or `default`.
pub(crate) fn pair(f: &Fields, name: &str, default: Option<usize>) -> Result<(usize, usize)> {
    let get = |n: &str| -> Result<Option<usize>> {
        match f.opt_i64(n)? {
            None => Ok(None),
            Some(v) if v >= 0 => Ok(Some(v as usize)),
            Some(v) => Err(Error::invalid(format!("{n} must not be negative, got {v}"))),
        }
    };
    match (
        get(&format!("{name}_h"))?,
        get(&format!("{name}_w"))?,
        get(name)?,
    ) {
        (Some(h), Some(w), _) => Ok((h, w)),
        (None, None, Some(v)) => Ok((v, v)),
        (None, None, None) => default.map(|d| (d, d)).ok_or_else(|| {
            Error::invalid(format!("{name} (or {name}_h and {name}_w) is required"))
        }),
        _ => Err(Error::invalid(format!(
            "give both {name}_h and {name}_w, or {name}"
        ))),
    }
}

/// The NCHW dimensions of a layer's only input.
fn nchw(ctx: &SetupContext<'_>) -> Result<(usize, usize, usize, usize)> {
    let input = ctx.single_input()?;
    match input.shape.dims() {
        [n, c, h, w] if input.dtype == DType::F32 => Ok((*n, *c, *h, *w)),
        _ => Err(Error::shape(
            format!("layer {}", ctx.layer),
            format!(
                "expects an f32 image batch [batch, channels, height, width], got {} {}",
                input.shape, input.dtype
            ),
        )),
    }
}

/// 2-D convolution with a learned bias (SINGA's `Convolution`): `num_filters` kernels of
/// `kernel_h × kernel_w` over NCHW input, with stride, zero padding and channel groups.
pub struct Convolution {
    filters: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    groups: usize,
    bias_term: bool,
    state: Option<ConvState>,
}

struct ConvState {
    dev: DeviceRef,
    shape: ConvShape,
    weight: Param,
    bias: Option<Param>,
    /// Bias gradient per (image, filter), summed over the batch afterwards.
    bias_partial: Tensor,
}

impl LayerDef for Convolution {
    const TYPE: &'static str = "convolution";
    const DOC: &'static str = "2-D convolution over [batch, channels, height, width]: num_filters kernels with stride, zero padding and groups. Params `weight` [filters, channels/groups, kh, kw] and `bias`.";

    fn fields() -> Vec<FieldSpec> {
        let mut f =
            vec![FieldSpec::new("num_filters", FieldKind::Int, "output channels").required()];
        f.extend(window_fields(Some(1)));
        f.push(
            FieldSpec::new(
                "groups",
                FieldKind::Int,
                "channel groups (each filter sees channels/groups inputs)",
            )
            .default(1),
        );
        f.push(
            FieldSpec::new(
                "bias_term",
                FieldKind::Bool,
                "add a learned bias per filter",
            )
            .default(true),
        );
        f
    }

    fn new(f: &Fields) -> Result<Self> {
        let filters = f.usize("num_filters")?;
        let kernel = pair(f, "kernel", None)?;
        let stride = pair(f, "stride", Some(1))?;
        let groups = f.usize("groups")?;
        if filters == 0
            || kernel.0 == 0
            || kernel.1 == 0
            || stride.0 == 0
            || stride.1 == 0
            || groups == 0
        {
            return Err(Error::invalid(
                "num_filters, kernel, stride and groups must be at least 1",
            ));
        }
        Ok(Convolution {
            filters,
            kernel,
            stride,
            pad: pair(f, "pad", Some(0))?,
            groups,
            bias_term: f.bool("bias_term")?,
            state: None,
        })
    }
}

impl Convolution {
    fn setup_impl(
        &mut self,
        ctx: &SetupContext<'_>,
        mut params: ParamFactoryMut<'_>,
    ) -> Result<RVec<TensorSpec>> {
        let (n, c, h, w) = nchw(ctx)?;
        let shape = ConvShape {
            batch: n,
            channels: c,
            height: h,
            width: w,
            filters: self.filters,
            kernel_h: self.kernel.0,
            kernel_w: self.kernel.1,
            stride_h: self.stride.0,
            stride_w: self.stride.1,
            pad_h: self.pad.0,
            pad_w: self.pad.1,
            groups: self.groups,
        };
        if let Some(p) = shape.problem() {
            return Err(Error::shape(
                format!("layer {}", ctx.layer),
                format!("input [{n}, {c}, {h}, {w}]: {p}"),
            ));
        }
        let area = self.kernel.0 * self.kernel.1;
        let fan_in = shape.group_channels() * area;
        let fan_out = shape.group_filters() * area;
        let weight = params
            .param(ParamSpec::new(
                "weight",
                [
                    self.filters,
                    shape.group_channels(),
                    self.kernel.0,
                    self.kernel.1,
                ],
                fan_in,
                fan_out,
                Init::XavierUniform { scale: 1.0 },
            ))
            .into_result()?;
        let bias = if self.bias_term {
            Some(
                params
                    .param(ParamSpec::new(
                        "bias",
                        [self.filters],
                        fan_in,
                        fan_out,
                        Init::Constant { value: 0.0 },
                    ))
                    .into_result()?,
            )
        } else {
            None
        };
        let out = [n, self.filters, shape.out_h(), shape.out_w()];
        self.state = Some(ConvState {
            dev: ctx.device.clone(),
            shape,
            weight,
            bias,
            bias_partial: Tensor::zeros(ctx.device, [n * self.filters], DType::F32)?,
        });
        Ok(vec![TensorSpec::new("output", out, DType::F32)].into())
    }

    fn st(&mut self) -> Result<&mut ConvState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("convolution used before setup"))
    }
}

impl Describe for Convolution {
    fn operator(&self) -> Option<Operator> {
        let s = self.state.as_ref()?;
        Some(Operator::Convolution {
            shape: s.shape,
            bias: self.bias_term,
        })
    }
}

impl Layer for Convolution {
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
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.st()?;
            let y = &mut outputs[0];
            s.dev.conv2d(&s.shape, &inputs[0], &s.weight.value, y)?;
            if let Some(b) = &s.bias {
                let dims = Dims3 {
                    outer: s.shape.batch,
                    mid: s.shape.filters,
                    inner: s.shape.out_h() * s.shape.out_w(),
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
        (|| {
            let s = self.st()?;
            let dy = &grad_outputs[0];
            // The input gradient first: it reads the weights before anything may change them.
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                s.dev
                    .conv2d_backward_data(&s.shape, dy, &s.weight.value, dx)?;
            }
            s.dev
                .conv2d_backward_filter(&s.shape, &inputs[0], dy, &mut s.weight.grad)?;
            if let Some(b) = &mut s.bias {
                let (n, f) = (s.shape.batch, s.shape.filters);
                let spatial = s.shape.out_h() * s.shape.out_w();
                s.dev.reduce(
                    ReduceOp::Sum,
                    Dims3 {
                        outer: n * f,
                        mid: spatial,
                        inner: 1,
                    },
                    dy,
                    &mut s.bias_partial,
                    1.0,
                    0.0,
                )?;
                s.dev.reduce(
                    ReduceOp::Sum,
                    Dims3 {
                        outer: 1,
                        mid: n,
                        inner: f,
                    },
                    &s.bias_partial,
                    &mut b.grad,
                    1.0,
                    0.0,
                )?;
            }
            Ok(())
        })()
        .into()
    }
}

/// 2-D max or average pooling (SINGA's `Pooling`), with Caffe's output size (rounded up by
/// default) so that SINGA's and Caffe's nets keep their shapes.
pub struct Pooling {
    kind: PoolKind,
    kernel: (usize, usize),
    stride: Option<(usize, usize)>,
    pad: (usize, usize),
    ceil: bool,
    state: Option<PoolState>,
}

struct PoolState {
    dev: DeviceRef,
    shape: PoolShape,
    argmax: Option<Tensor>,
}

impl LayerDef for Pooling {
    const TYPE: &'static str = "pooling";
    const DOC: &'static str = "2-D max or average pooling over [batch, channels, height, width]; the output size is rounded up (Caffe) unless ceil = false.";

    fn fields() -> Vec<FieldSpec> {
        let mut f = vec![FieldSpec::new("pool", FieldKind::Str, "max or avg")
            .default("max")
            .choices(&["max", "avg"])];
        f.extend(window_fields(None));
        f.push(
            FieldSpec::new(
                "ceil",
                FieldKind::Bool,
                "round the output size up (Caffe, SINGA) rather than down (PyTorch)",
            )
            .default(true),
        );
        f
    }

    fn new(f: &Fields) -> Result<Self> {
        let kind = if f.str("pool")? == "max" {
            PoolKind::Max
        } else {
            PoolKind::Avg
        };
        let kernel = pair(f, "kernel", None)?;
        let has_stride = ["stride", "stride_h", "stride_w"]
            .iter()
            .any(|n| f.get(n).is_some());
        let stride = if has_stride {
            Some(pair(f, "stride", None)?)
        } else {
            None
        };
        Ok(Pooling {
            kind,
            kernel,
            stride,
            pad: pair(f, "pad", Some(0))?,
            ceil: f.bool("ceil")?,
            state: None,
        })
    }
}

impl Pooling {
    fn setup_impl(&mut self, ctx: &SetupContext<'_>) -> Result<RVec<TensorSpec>> {
        let (n, c, h, w) = nchw(ctx)?;
        let stride = self.stride.unwrap_or(self.kernel);
        let shape = PoolShape {
            kind: self.kind,
            batch: n,
            channels: c,
            height: h,
            width: w,
            kernel_h: self.kernel.0,
            kernel_w: self.kernel.1,
            stride_h: stride.0,
            stride_w: stride.1,
            pad_h: self.pad.0,
            pad_w: self.pad.1,
            ceil: self.ceil,
        };
        if let Some(p) = shape.problem() {
            return Err(Error::shape(
                format!("layer {}", ctx.layer),
                format!("input [{n}, {c}, {h}, {w}]: {p}"),
            ));
        }
        let out = [n, c, shape.out_h(), shape.out_w()];
        let argmax = match self.kind {
            PoolKind::Max => Some(Tensor::zeros(ctx.device, out, DType::I32)?),
            PoolKind::Avg => None,
        };
        self.state = Some(PoolState {
            dev: ctx.device.clone(),
            shape,
            argmax,
        });
        Ok(vec![TensorSpec::new("output", out, DType::F32)].into())
    }

    fn st(&mut self) -> Result<&mut PoolState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("pooling used before setup"))
    }
}

impl Describe for Pooling {
    fn operator(&self) -> Option<Operator> {
        Some(Operator::Pooling(self.state.as_ref()?.shape))
    }
}

impl Layer for Pooling {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        self.setup_impl(ctx).into()
    }

    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.st()?;
            s.dev
                .pool2d(&s.shape, &inputs[0], &mut outputs[0], s.argmax.as_mut())
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.st()?;
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                s.dev
                    .pool2d_backward(&s.shape, &grad_outputs[0], s.argmax.as_ref(), dx)?;
            }
            Ok(())
        })()
        .into()
    }
}
