//! Output layers: class probabilities, top-k predictions and top-k accuracy.

use crate::operator::{Describe, Operator};
use crate::sums::Sums;
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RString, RVec};
use singa_core::{
    DType, DeviceRef, Error, FieldKind, FieldSpec, Fields, Layer, LayerDef, ParamFactoryMut, Phase,
    Result, SetupContext, Tensor, TensorSpec,
};

fn context(ctx: &SetupContext<'_>) -> String {
    format!("layer {}", ctx.layer)
}

fn not_set_up(ty: &str) -> Error {
    Error::invalid(format!("{ty} used before setup"))
}

/// The scores input of an output layer: f32, seen as `[batch, classes]`.
fn scores(ctx: &SetupContext<'_>, x: &TensorSpec) -> Result<(usize, usize)> {
    let (rows, cols) = x.shape.as_matrix();
    if x.dtype != DType::F32 || cols == 0 {
        return Err(Error::shape(
            context(ctx),
            format!(
                "expects f32 class scores [batch, classes], got {} {}",
                x.shape, x.dtype
            ),
        ));
    }
    Ok((rows, cols))
}

fn top_k_field(default: usize) -> FieldSpec {
    FieldSpec::new(
        "top_k",
        FieldKind::Int,
        "how many of the highest scores count",
    )
    .default(default)
}

fn top_k(f: &Fields) -> Result<usize> {
    let k = f.usize("top_k")?;
    if k == 0 {
        return Err(Error::invalid("top_k must be at least 1"));
    }
    Ok(k)
}

fn check_k(ctx: &SetupContext<'_>, k: usize, classes: usize) -> Result<()> {
    if k > classes {
        return Err(Error::shape(
            context(ctx),
            format!("top_k = {k} is more than the {classes} classes"),
        ));
    }
    Ok(())
}

/// Softmax over the classes of each sample: `y = exp(x) / Σ exp(x)` per row.
pub struct Softmax {
    dev: Option<DeviceRef>,
}

impl LayerDef for Softmax {
    const TYPE: &'static str = "softmax";
    const DOC: &'static str = "Softmax over the classes of each sample of [batch, classes]: probabilities that sum to 1 per row.";

    fn fields() -> Vec<FieldSpec> {
        Vec::new()
    }

    fn new(_: &Fields) -> Result<Self> {
        Ok(Softmax { dev: None })
    }
}

impl Describe for Softmax {
    fn operator(&self) -> Option<Operator> {
        self.dev.as_ref()?;
        Some(Operator::Softmax)
    }
}

impl Layer for Softmax {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let x = ctx.single_input()?;
            scores(ctx, x)?;
            self.dev = Some(ctx.device.clone());
            Ok(vec![TensorSpec::new("output", x.shape, DType::F32)].into())
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
            self.dev
                .as_ref()
                .ok_or_else(|| not_set_up(Self::TYPE))?
                .softmax(&inputs[0], &mut outputs[0])
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        _: RSlice<'_, Tensor>,
        outputs: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            let dev = self.dev.as_ref().ok_or_else(|| not_set_up(Self::TYPE))?;
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                dev.softmax_backward(&outputs[0], &grad_outputs[0], dx)?;
            }
            Ok(())
        })()
        .into()
    }
}

/// The indices of the `top_k` highest scores of each sample, best first (SINGA's `ArgSort`):
/// the predicted classes. Output `indices`, `[batch, top_k]` of i32.
pub struct ArgSort {
    k: usize,
    dev: Option<DeviceRef>,
}

impl LayerDef for ArgSort {
    const TYPE: &'static str = "argsort";
    const DOC: &'static str = "The indices of the top_k highest scores of each sample, best first: output `indices` [batch, top_k] (i32). No gradient.";

    fn fields() -> Vec<FieldSpec> {
        vec![top_k_field(1)]
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(ArgSort {
            k: top_k(f)?,
            dev: None,
        })
    }
}

impl Describe for ArgSort {
    fn operator(&self) -> Option<Operator> {
        self.dev.as_ref()?;
        Some(Operator::TopK { k: self.k })
    }
}

impl Layer for ArgSort {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let (rows, classes) = scores(ctx, ctx.single_input()?)?;
            check_k(ctx, self.k, classes)?;
            self.dev = Some(ctx.device.clone());
            Ok(vec![TensorSpec::new("indices", [rows, self.k], DType::I32)].into())
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
            self.dev
                .as_ref()
                .ok_or_else(|| not_set_up(Self::TYPE))?
                .top_k(&inputs[0], self.k, &mut outputs[0])
        })()
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
        (|| {
            zero_gradients(
                self.dev.as_ref().ok_or_else(|| not_set_up(Self::TYPE))?,
                &mut grad_inputs,
            )
        })()
        .into()
    }
}

/// Predictions carry no gradient: an input that asks for one gets zeros.
fn zero_gradients(dev: &DeviceRef, grad_inputs: &mut RSliceMut<'_, ROption<Tensor>>) -> Result<()> {
    for dx in grad_inputs.iter_mut() {
        if let ROption::RSome(dx) = dx {
            dev.fill(dx, 0.0)?;
        }
    }
    Ok(())
}

/// The fraction of samples whose label is among their `top_k` highest scores. Sources: the
/// scores and the labels. Reports `accuracy` (top-1) or `top<k>_accuracy`.
pub struct Accuracy {
    k: usize,
    state: Option<(DeviceRef, Sums)>,
}

impl LayerDef for Accuracy {
    const TYPE: &'static str = "accuracy";
    const DOC: &'static str = "Top-k accuracy. Sources: class scores [batch, classes] and labels (e.g. \"data:label\"). Reports accuracy (k = 1) or top<k>_accuracy. No gradient.";

    fn fields() -> Vec<FieldSpec> {
        vec![top_k_field(1)]
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(Accuracy {
            k: top_k(f)?,
            state: None,
        })
    }
}

impl Describe for Accuracy {
    fn operator(&self) -> Option<Operator> {
        self.state.as_ref()?;
        Some(Operator::Metric)
    }
}

impl Layer for Accuracy {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let inputs = ctx.expect_inputs(2)?;
            let (rows, classes) = scores(ctx, &inputs[0])?;
            let labels = &inputs[1];
            if labels.dtype != DType::I32 || labels.shape.numel() != rows {
                return Err(Error::shape(
                    context(ctx),
                    format!(
                        "expects labels [batch] (i32) for {rows} samples, got {} {}",
                        labels.shape, labels.dtype
                    ),
                ));
            }
            check_k(ctx, self.k, classes)?;
            self.state = Some((ctx.device.clone(), Sums::new(ctx.device, 2)?));
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
            let (dev, sums) = self.state.as_mut().ok_or_else(|| not_set_up(Self::TYPE))?;
            dev.top_k_accuracy(&inputs[0], &inputs[1], self.k, &mut sums.device)?;
            sums.stepped(dev)
        })()
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
        (|| {
            zero_gradients(
                &self.state.as_ref().ok_or_else(|| not_set_up(Self::TYPE))?.0,
                &mut grad_inputs,
            )
        })()
        .into()
    }

    fn metric_names(&self) -> RResult<RVec<RString>, Error> {
        let name = if self.k == 1 {
            "accuracy".to_string()
        } else {
            format!("top{}_accuracy", self.k)
        };
        RResult::ROk(vec![RString::from(name)].into())
    }

    fn read_metrics(&mut self, mut out: RSliceMut<'_, f64>) -> RResult<(), Error> {
        (|| {
            let (dev, sums) = self.state.as_mut().ok_or_else(|| not_set_up(Self::TYPE))?;
            let [correct, samples, _] = sums.take(dev)?;
            out[0] = correct / samples.max(1.0);
            Ok(())
        })()
        .into()
    }
}
