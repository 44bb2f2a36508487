//! Loss layers: the start of the backward pass and the source of the training metrics.
//!
//! A loss layer has no outputs. It accumulates its statistics on the device every step and
//! reads them back only when the runtime asks for metrics, so a step never waits for the host.

use crate::operator::{Describe, Operator};
use crate::sums::Sums;
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RString, RVec};
use singa_core::{
    BinaryOp, DType, DeviceRef, Dims3, Error, FieldKind, FieldSpec, Fields, Layer, LayerDef,
    ParamFactoryMut, Phase, ReduceOp, Result, SetupContext, Tensor, TensorSpec, UnaryOp,
};

fn context(ctx: &SetupContext<'_>) -> String {
    format!("layer {}", ctx.layer)
}

/// Softmax cross-entropy over class scores and integer labels; reports `loss` (mean negative
/// log-likelihood, times `scale`) and `accuracy` (top-1).
pub struct SoftmaxLoss {
    scale: f32,
    state: Option<SoftmaxState>,
}

struct SoftmaxState {
    dev: DeviceRef,
    probs: Tensor,
    /// Summed loss, number correct, number of samples.
    stats: Sums,
    rows: usize,
}

impl LayerDef for SoftmaxLoss {
    const TYPE: &'static str = "softmax_loss";
    const DOC: &'static str = "Softmax cross-entropy. Sources: the class scores [batch, classes] and the labels (e.g. \"data:label\"). Reports loss and top-1 accuracy.";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new(
            "scale",
            FieldKind::Float,
            "weight of this loss in the objective",
        )
        .default(1.0)]
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(SoftmaxLoss {
            scale: f.f32("scale")?,
            state: None,
        })
    }
}

impl SoftmaxLoss {
    fn st(&mut self) -> Result<&mut SoftmaxState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("softmax_loss used before setup"))
    }

    fn setup_impl(&mut self, ctx: &SetupContext<'_>) -> Result<RVec<TensorSpec>> {
        let inputs = ctx.expect_inputs(2)?;
        let (scores, labels) = (&inputs[0], &inputs[1]);
        let (rows, cols) = scores.shape.as_matrix();
        if scores.dtype != DType::F32 || labels.dtype != DType::I32 || labels.shape.numel() != rows
        {
            return Err(Error::shape(
                context(ctx),
                format!(
                    "expects class scores [batch, classes] (f32) and labels [batch] (i32); got {} {} and {} {}",
                    scores.shape, scores.dtype, labels.shape, labels.dtype
                ),
            ));
        }
        self.state = Some(SoftmaxState {
            dev: ctx.device.clone(),
            probs: Tensor::zeros(ctx.device, [rows, cols], DType::F32)?,
            stats: Sums::new(ctx.device, 3)?,
            rows,
        });
        Ok(RVec::new())
    }
}

impl Describe for SoftmaxLoss {
    fn operator(&self) -> Option<Operator> {
        self.state.as_ref()?;
        Some(Operator::SoftmaxLoss)
    }
}

impl Layer for SoftmaxLoss {
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
        _: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.st()?;
            s.dev.softmax_cross_entropy(
                &inputs[0],
                &inputs[1],
                &mut s.probs,
                &mut s.stats.device,
            )?;
            s.stats.stepped(&s.dev)
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        let scale = self.scale;
        (|| {
            let s = self.st()?;
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                s.dev.softmax_cross_entropy_backward(
                    &s.probs,
                    &inputs[1],
                    dx,
                    scale / s.rows as f32,
                )?;
            }
            Ok(())
        })()
        .into()
    }

    fn metric_names(&self) -> RResult<RVec<RString>, Error> {
        RResult::ROk(vec![RString::from("loss"), RString::from("accuracy")].into())
    }

    fn read_metrics(&mut self, mut out: RSliceMut<'_, f64>) -> RResult<(), Error> {
        let scale = self.scale as f64;
        (|| {
            let s = self.st()?;
            let v = s.stats.take(&s.dev)?;
            let n = v[2].max(1.0);
            out[0] = scale * v[0] / n;
            out[1] = v[1] / n;
            Ok(())
        })()
        .into()
    }
}

/// Half the squared distance between a prediction and a target, per sample:
/// `loss = ½‖p − t‖² / batch`. Sources: the prediction and the target (same size).
pub struct EuclideanLoss {
    scale: f32,
    state: Option<EuclideanState>,
    samples: u64,
}

struct EuclideanState {
    dev: DeviceRef,
    diff: Tensor,
    square: Tensor,
    /// Half the summed squared error.
    sum: Sums,
    rows: usize,
}

impl LayerDef for EuclideanLoss {
    const TYPE: &'static str = "euclidean_loss";
    const DOC: &'static str = "Euclidean loss ½‖p − t‖² averaged over the batch. Sources: prediction and target of the same size. Reports loss (times scale) and squared_error, ‖p − t‖² per sample (a reconstruction error).";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new(
            "scale",
            FieldKind::Float,
            "weight of this loss in the objective",
        )
        .default(1.0)]
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(EuclideanLoss {
            scale: f.f32("scale")?,
            state: None,
            samples: 0,
        })
    }
}

impl EuclideanLoss {
    fn st(&mut self) -> Result<&mut EuclideanState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("euclidean_loss used before setup"))
    }
}

impl Describe for EuclideanLoss {
    fn operator(&self) -> Option<Operator> {
        self.state.as_ref()?;
        Some(Operator::EuclideanLoss)
    }
}

impl Layer for EuclideanLoss {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let inputs = ctx.expect_inputs(2)?;
            let (p, t) = (&inputs[0], &inputs[1]);
            if p.shape.numel() != t.shape.numel() || p.dtype != DType::F32 || t.dtype != DType::F32
            {
                return Err(Error::shape(
                    context(ctx),
                    format!(
                        "prediction {} {} and target {} {} must be f32 of one size",
                        p.shape, p.dtype, t.shape, t.dtype
                    ),
                ));
            }
            let n = p.shape.numel();
            self.state = Some(EuclideanState {
                dev: ctx.device.clone(),
                diff: Tensor::zeros(ctx.device, [n], DType::F32)?,
                square: Tensor::zeros(ctx.device, [n], DType::F32)?,
                sum: Sums::new(ctx.device, 1)?,
                rows: p.shape.as_matrix().0,
            });
            Ok(RVec::new())
        })()
        .into()
    }

    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        _: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.st()?;
            let n = s.diff.numel();
            let p = inputs[0].reshape([n])?;
            let t = inputs[1].reshape([n])?;
            s.dev.binary(BinaryOp::Sub, &p, &t, &mut s.diff)?;
            s.dev.unary(UnaryOp::Square, &s.diff, &mut s.square)?;
            let dims = Dims3 {
                outer: 1,
                mid: n,
                inner: 1,
            };
            s.dev
                .reduce(ReduceOp::Sum, dims, &s.square, &mut s.sum.device, 0.5, 1.0)?;
            s.sum.stepped(&s.dev)?;
            Ok(s.rows as u64)
        })()
        .map(|rows| self.samples += rows)
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        let scale = self.scale;
        (|| {
            let s = self.st()?;
            let k = scale / s.rows as f32;
            for (i, sign) in [(0, 1.0f32), (1, -1.0)] {
                if let ROption::RSome(d) = &mut grad_inputs[i] {
                    let mut flat = d.reshape([s.diff.numel()])?;
                    s.dev.affine(&s.diff, &mut flat, sign * k, 0.0)?;
                }
            }
            Ok(())
        })()
        .into()
    }

    fn metric_names(&self) -> RResult<RVec<RString>, Error> {
        RResult::ROk(vec![RString::from("loss"), RString::from("squared_error")].into())
    }

    fn read_metrics(&mut self, mut out: RSliceMut<'_, f64>) -> RResult<(), Error> {
        let samples = std::mem::take(&mut self.samples).max(1);
        let scale = self.scale as f64;
        (|| {
            let s = self.st()?;
            let v = s.sum.take(&s.dev)?;
            out[0] = scale * v[0] / samples as f64;
            out[1] = 2.0 * v[0] / samples as f64;
            Ok(())
        })()
        .into()
    }
}
