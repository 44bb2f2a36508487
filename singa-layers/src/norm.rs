//! Normalisation layers: local response normalisation and batch normalisation.

use crate::operator::{Describe, Operator};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    BatchNormArgs, DType, DeviceRef, Dims3, Error, FieldKind, FieldSpec, Fields, Init, Layer,
    LayerDef, LrnShape, Param, ParamFactoryMut, ParamSpec, Phase, Result, SetupContext, Tensor,
    TensorSpec,
};

/// Local response normalisation across channels (SINGA's `LRN`, AlexNet):
/// `y = x · (k + α/n · Σ x²)^(−β)` over the `local_size` channels around each one.
pub struct Lrn {
    size: usize,
    alpha: f32,
    beta: f32,
    k: f32,
    state: Option<LrnState>,
}

struct LrnState {
    dev: DeviceRef,
    shape: LrnShape,
    scale: Tensor,
}

impl LayerDef for Lrn {
    const TYPE: &'static str = "lrn";
    const DOC: &'static str = "Local response normalisation across channels: y = x · (k + alpha/local_size · Σ x²)^(−beta) over local_size neighbouring channels.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("local_size", FieldKind::Int, "channels in a window (odd)").default(5),
            FieldSpec::new("alpha", FieldKind::Float, "scale of the sum of squares").default(1e-4),
            FieldSpec::new("beta", FieldKind::Float, "exponent").default(0.75),
            FieldSpec::new("k", FieldKind::Float, "offset (SINGA's knorm)").default(1.0),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let size = f.usize("local_size")?;
        if size % 2 == 0 {
            return Err(Error::invalid(format!(
                "local_size must be odd, got {size}"
            )));
        }
        Ok(Lrn {
            size,
            alpha: f.f32("alpha")?,
            beta: f.f32("beta")?,
            k: f.f32("k")?,
            state: None,
        })
    }
}

impl Lrn {
    fn st(&mut self) -> Result<&mut LrnState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("lrn used before setup"))
    }
}

impl Describe for Lrn {
    fn operator(&self) -> Option<Operator> {
        self.state.as_ref()?;
        Some(Operator::Lrn {
            size: self.size,
            alpha: self.alpha,
            beta: self.beta,
            k: self.k,
        })
    }
}

impl Layer for Lrn {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let input = ctx.single_input()?;
            let dims = input.shape.dims();
            if dims.len() < 2 || input.dtype != DType::F32 {
                return Err(Error::shape(
                    format!("layer {}", ctx.layer),
                    format!(
                        "expects f32 [batch, channels, ...], got {} {}",
                        input.shape, input.dtype
                    ),
                ));
            }
            let shape = LrnShape {
                batch: dims[0],
                channels: dims[1],
                spatial: dims[2..].iter().product(),
                size: self.size,
                alpha: self.alpha,
                beta: self.beta,
                k: self.k,
            };
            self.state = Some(LrnState {
                dev: ctx.device.clone(),
                shape,
                scale: Tensor::zeros(ctx.device, input.shape, DType::F32)?,
            });
            Ok(vec![TensorSpec::new("output", input.shape, DType::F32)].into())
        })()
        .into()
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
                .lrn(&s.shape, &inputs[0], &mut outputs[0], &mut s.scale)
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        outputs: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.st()?;
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                s.dev.lrn_backward(
                    &s.shape,
                    &inputs[0],
                    &outputs[0],
                    &s.scale,
                    &grad_outputs[0],
                    dx,
                )?;
            }
            Ok(())
        })()
        .into()
    }
}

/// Batch normalisation (Ioffe and Szegedy 2015) over the channels of `[batch, channels, ...]`
/// (or the features of `[batch, features]`): training normalises with the batch statistics and
/// keeps running averages of them, which testing uses. Params `gamma`, `beta`, and the running
/// `mean` and `var` (not trained, saved in checkpoints).
pub struct BatchNorm {
    eps: f32,
    momentum: f32,
    state: Option<BnState>,
}

struct BnState {
    dev: DeviceRef,
    dims: Dims3,
    gamma: Param,
    beta: Param,
    running_mean: Param,
    running_var: Param,
    mean: Tensor,
    inv_std: Tensor,
    /// Where dx goes when the input needs no gradient.
    unused_dx: Option<Tensor>,
}

impl LayerDef for BatchNorm {
    const TYPE: &'static str = "batch_norm";
    const DOC: &'static str = "Batch normalisation per channel of [batch, channels, ...]: batch statistics in training (running averages kept), running statistics in testing. Params gamma, beta, mean and var (the last two not trained).";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("eps", FieldKind::Float, "added to the variance").default(1e-5),
            FieldSpec::new(
                "momentum",
                FieldKind::Float,
                "weight of each batch in the running statistics",
            )
            .default(0.1),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let momentum = f.f32("momentum")?;
        if !(0.0..=1.0).contains(&momentum) {
            return Err(Error::invalid(format!(
                "momentum must be in [0, 1], got {momentum}"
            )));
        }
        Ok(BatchNorm {
            eps: f.f32("eps")?,
            momentum,
            state: None,
        })
    }
}

impl BatchNorm {
    fn st(&mut self) -> Result<&mut BnState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("batch_norm used before setup"))
    }

    fn setup_impl(
        &mut self,
        ctx: &SetupContext<'_>,
        mut params: ParamFactoryMut<'_>,
    ) -> Result<RVec<TensorSpec>> {
        let input = ctx.single_input()?;
        let dims = input.shape.dims();
        if dims.len() < 2 || input.dtype != DType::F32 {
            return Err(Error::shape(
                format!("layer {}", ctx.layer),
                format!(
                    "expects f32 [batch, channels, ...], got {} {}",
                    input.shape, input.dtype
                ),
            ));
        }
        let c = dims[1];
        let mut p = |name: &str, value: f32, trainable: bool| -> Result<Param> {
            let mut spec = ParamSpec::new(name, [c], c, c, Init::Constant { value });
            spec.trainable = trainable;
            params.param(spec).into_result()
        };
        let (gamma, beta) = (p("gamma", 1.0, true)?, p("beta", 0.0, true)?);
        let (running_mean, running_var) = (p("mean", 0.0, false)?, p("var", 1.0, false)?);
        self.state = Some(BnState {
            dev: ctx.device.clone(),
            dims: Dims3 {
                outer: dims[0],
                mid: c,
                inner: dims[2..].iter().product(),
            },
            gamma,
            beta,
            running_mean,
            running_var,
            mean: Tensor::zeros(ctx.device, [c], DType::F32)?,
            inv_std: Tensor::zeros(ctx.device, [c], DType::F32)?,
            unused_dx: None,
        });
        Ok(vec![TensorSpec::new("output", input.shape, DType::F32)].into())
    }
}

impl Describe for BatchNorm {
    fn operator(&self) -> Option<Operator> {
        self.state.as_ref()?;
        Some(Operator::BatchNorm { eps: self.eps })
    }
}

impl Layer for BatchNorm {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        self.setup_impl(ctx, params).into()
    }

    fn forward(
        &mut self,
        phase: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let (eps, momentum) = (self.eps, self.momentum);
        (|| {
            let s = self.st()?;
            let args = BatchNormArgs {
                dims: s.dims,
                eps,
                momentum,
                training: phase.is_train(),
            };
            s.dev.batch_norm(
                &args,
                &inputs[0],
                &s.gamma.value,
                &s.beta.value,
                &mut outputs[0],
                &mut s.mean,
                &mut s.inv_std,
                &mut s.running_mean.value,
                &mut s.running_var.value,
            )
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
        let (eps, momentum) = (self.eps, self.momentum);
        (|| {
            let s = self.st()?;
            let args = BatchNormArgs {
                dims: s.dims,
                eps,
                momentum,
                training: true,
            };
            // The gamma and beta gradients come out of the same kernel as dx; when the input
            // needs no gradient, dx goes to a buffer nobody reads (allocated once).
            let dx = match &mut grad_inputs[0] {
                ROption::RSome(dx) => dx,
                ROption::RNone => {
                    if s.unused_dx.is_none() {
                        s.unused_dx = Some(Tensor::zeros(&s.dev, inputs[0].shape(), DType::F32)?);
                    }
                    s.unused_dx.as_mut().expect("just set")
                }
            };
            s.dev.batch_norm_backward(
                &args,
                &inputs[0],
                &grad_outputs[0],
                &s.gamma.value,
                &s.mean,
                &s.inv_std,
                dx,
                &mut s.gamma.grad,
                &mut s.beta.grad,
            )
        })()
        .into()
    }
}
