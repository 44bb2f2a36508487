//! The restricted Boltzmann machine as SINGA's pair of layers, trained by contrastive
//! divergence (`algorithm = "cd"`).
//!
//! An RBM is two layers of units joined by one weight matrix `W` (`[visible, hidden]`, the
//! layout of an `inner_product` from the visible to the hidden units, so a trained RBM feeds a
//! feed-forward net as it is). The pair names each other as sources: `rbm_vis` reads the data
//! and its `rbm_hid`, `rbm_hid` reads its `rbm_vis`. The net builder accepts that two-way link
//! (and no other cycle): the visible layer is set up with the data only, and the hidden
//! layer's `sample` output is appended to its inputs once the net is built.
//!
//! One training step (see the `cd` algorithm):
//! - positive phase: the visible layer copies the data `v₀`, the hidden layer computes
//!   `h₀ = σ(v₀·W + c)` and samples binary states from it;
//! - `k` negative phases: the visible layer reconstructs `vᵢ = σ(hᵢ₋₁·Wᵀ + b)` from the
//!   sampled hidden states, the hidden layer computes `hᵢ` from it and samples again;
//! - gradients: `∂W = (v_kᵀ·h_k − v₀ᵀ·h₀) / batch`, `∂b = mean(v_k − v₀)`,
//!   `∂c = mean(h_k − h₀)`, the negative of the CD estimate of the log-likelihood's gradient,
//!   so the updaters descend on it as on any loss. The hidden layer computes `∂W` (it holds
//!   both phases of both layers' units); the visible layer's share of the shared weight is 0.
//!
//! Outside training the hidden layer's `sample` is its mean, so the reconstruction error the
//! visible layer reports on test data is deterministic.

use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RString, RVec};
use singa_core::{
    BinaryOp, DType, DeviceRef, Dims3, Distribution, Error, FieldKind, FieldSpec, Fields, Init,
    Layer, LayerDef, LayerRole, Param, ParamFactoryMut, ParamSpec, Phase, ReduceOp, Result,
    SetupContext, Tensor, TensorSpec, UnaryOp,
};

/// Fields both layers of the pair have.
fn common_fields(units: &str, hdim: &str) -> Vec<FieldSpec> {
    vec![
        FieldSpec::new("hdim", FieldKind::Int, hdim).required(),
        FieldSpec::new("bias_term", FieldKind::Bool, "learn a bias for each unit").default(true),
        FieldSpec::new(
            "gaussian",
            FieldKind::Bool,
            &format!(
                "{units} units are linear with unit-variance Gaussian noise instead of binary"
            ),
        )
        .default(false),
    ]
}

/// The fields both layers read, checked.
struct Units {
    hdim: usize,
    bias_term: bool,
    gaussian: bool,
}

impl Units {
    fn new(f: &Fields) -> Result<Units> {
        let hdim = f.usize("hdim")?;
        if hdim == 0 {
            return Err(Error::invalid("hdim must be at least 1"));
        }
        Ok(Units {
            hdim,
            bias_term: f.bool("bias_term")?,
            gaussian: f.bool("gaussian")?,
        })
    }
}

/// The bias of `units` units (0 at first), if the layer learns one.
fn bias(params: &mut ParamFactoryMut<'_>, units: &Units, n: usize) -> Result<Option<Param>> {
    if !units.bias_term {
        return Ok(None);
    }
    let spec = ParamSpec::new("bias", [n], n, n, Init::Constant { value: 0.0 });
    Ok(Some(params.param(spec).into_result()?))
}

/// The weight `[visible, hidden]`, drawn from N(0, 0.01) as Hinton's guide to RBMs does.
fn weight(params: &mut ParamFactoryMut<'_>, vdim: usize, hdim: usize) -> Result<Param> {
    let init = Init::Gaussian {
        mean: 0.0,
        std: 0.01,
    };
    let spec = ParamSpec::new("weight", [vdim, hdim], vdim, hdim, init);
    params.param(spec).into_result()
}

/// `y = act(y + bias)` over the rows of `y`: the mean of a layer of units.
fn activate(dev: &DeviceRef, bias: &Option<Param>, gaussian: bool, y: &mut Tensor) -> Result<()> {
    if let Some(b) = bias {
        let (rows, cols) = y.shape().as_matrix();
        let dims = Dims3 {
            outer: rows,
            mid: cols,
            inner: 1,
        };
        dev.add_broadcast(dims, &b.value, y)?;
    }
    if !gaussian {
        let x = y.clone();
        dev.unary(UnaryOp::Sigmoid, &x, y)?;
    }
    Ok(())
}

/// `grad = (Σ_rows negative − Σ_rows positive) / rows`: a bias's CD gradient.
fn bias_grad(
    dev: &DeviceRef,
    negative: &Tensor,
    positive: &Tensor,
    grad: &mut Tensor,
) -> Result<()> {
    let (rows, cols) = negative.shape().as_matrix();
    let dims = Dims3 {
        outer: 1,
        mid: rows,
        inner: cols,
    };
    let scale = 1.0 / rows as f32;
    dev.reduce(ReduceOp::Sum, dims, negative, grad, scale, 0.0)?;
    dev.reduce(ReduceOp::Sum, dims, positive, grad, -scale, 1.0)
}

/// Contrastive divergence does not back-propagate: an input gradient asked for is 0.
fn no_input_grads(dev: &DeviceRef, grad_inputs: &mut [ROption<Tensor>]) -> Result<()> {
    for g in grad_inputs.iter_mut() {
        if let ROption::RSome(g) = g {
            dev.fill(g, 0.0)?;
        }
    }
    Ok(())
}

/// The visible units of an RBM (SINGA's `RBMVisLayer`).
///
/// Sources: the data (any shape, seen as batch × features) and the `rbm_hid` of the pair.
/// Output `data`: the data in the positive phase, the reconstruction in the negative phase.
/// Parameters: `weight` `[visible, hidden]` (shared with the hidden layer) and `bias`.
/// Reports `reconstruction_error`: `‖v₀ − v₁‖²` per sample, the data against its first
/// reconstruction.
pub struct RbmVis {
    units: Units,
    state: Option<VisState>,
    /// Whether the next negative phase is the first after a positive one (the one whose
    /// reconstruction the error is measured on).
    first_negative: bool,
    error_sum: f64,
    error_batches: u64,
}

struct VisState {
    dev: DeviceRef,
    weight: Param,
    bias: Option<Param>,
    /// `v₁ − v₀` and then its square, for the reconstruction error.
    diff: Tensor,
    /// The sum of the squares.
    total: Tensor,
}

impl LayerDef for RbmVis {
    const TYPE: &'static str = "rbm_vis";
    const ROLE: LayerRole = LayerRole::RbmVisible;
    const DOC: &'static str = "The visible units of an RBM, trained with algorithm = \"cd\". Sources: the data and the rbm_hid of the pair (which names this layer back). Output: the data (positive phase) or its reconstruction σ(h·Wᵀ + b) (negative phase). Params `weight` [visible, hidden] (shared with the rbm_hid) and `bias`. Reports reconstruction_error, ‖v − v₁‖² per sample.";

    fn fields() -> Vec<FieldSpec> {
        common_fields(
            "visible",
            "number of hidden units (in a job, the rbm_hid's when not given)",
        )
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(RbmVis {
            units: Units::new(f)?,
            state: None,
            first_negative: false,
            error_sum: 0.0,
            error_batches: 0,
        })
    }
}

impl RbmVis {
    fn st(&mut self) -> Result<&mut VisState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("rbm_vis used before setup"))
    }

    fn setup_impl(
        &mut self,
        ctx: &SetupContext<'_>,
        mut params: ParamFactoryMut<'_>,
    ) -> Result<RVec<TensorSpec>> {
        // The hidden layer is not set up yet: its output joins the inputs after the build.
        let input = ctx.single_input()?;
        if input.dtype != DType::F32 {
            return Err(Error::shape(
                format!("layer {}", ctx.layer),
                format!("the data must be f32, got {}", input.dtype),
            ));
        }
        let (rows, vdim) = input.shape.as_matrix();
        let weight = weight(&mut params, vdim, self.units.hdim)?;
        let bias = bias(&mut params, &self.units, vdim)?;
        self.state = Some(VisState {
            dev: ctx.device.clone(),
            weight,
            bias,
            diff: Tensor::zeros(ctx.device, [rows, vdim], DType::F32)?,
            total: Tensor::zeros(ctx.device, [1], DType::F32)?,
        });
        Ok(vec![TensorSpec::new("data", [rows, vdim], DType::F32)].into())
    }

    /// The positive phase copies the data; a negative phase reconstructs it from the hidden
    /// layer's sample (and the first one measures the error).
    fn forward_impl(&mut self, phase: Phase, inputs: &[Tensor], out: &mut Tensor) -> Result<()> {
        let gaussian = self.units.gaussian;
        let hdim = self.units.hdim;
        let first = std::mem::replace(&mut self.first_negative, !phase.contains(Phase::NEGATIVE));
        let s = self.st()?;
        let data = &inputs[0];
        if !phase.contains(Phase::NEGATIVE) {
            return s.dev.copy(data, out);
        }
        let hidden = match inputs {
            [_, h] if h.shape().as_matrix() == (out.shape().as_matrix().0, hdim) => h,
            _ => {
                return Err(Error::invalid(format!(
                    "the negative phase needs the hidden layer's [batch, {hdim}] sample as the second input (the rbm_hid of the pair)"
                )))
            }
        };
        s.dev
            .matmul(1.0, hidden, false, &s.weight.value, true, 0.0, out)?;
        activate(&s.dev, &s.bias, gaussian, out)?;
        if !first {
            return Ok(());
        }
        let data = data.reshape(out.shape())?;
        s.dev.binary(BinaryOp::Sub, out, &data, &mut s.diff)?;
        let d = s.diff.clone();
        s.dev.unary(UnaryOp::Square, &d, &mut s.diff)?;
        let dims = Dims3 {
            outer: 1,
            mid: s.diff.numel(),
            inner: 1,
        };
        s.dev
            .reduce(ReduceOp::Sum, dims, &s.diff, &mut s.total, 1.0, 0.0)?;
        let mut total = [0f32];
        s.total.read_into(&mut total)?;
        let rows = out.shape().as_matrix().0;
        self.error_sum += total[0] as f64 / rows as f64;
        self.error_batches += 1;
        Ok(())
    }
}

impl Layer for RbmVis {
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
        self.forward_impl(phase, inputs.as_slice(), &mut outputs[0])
            .into()
    }

    /// The visible bias's CD gradient; the weight's comes from the hidden layer.
    fn backward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        outputs: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.st()?;
            s.dev.fill(&mut s.weight.grad, 0.0)?;
            if let Some(b) = &mut s.bias {
                let data = inputs[0].reshape(outputs[0].shape())?;
                bias_grad(&s.dev, &outputs[0], &data, &mut b.grad)?;
            }
            no_input_grads(&s.dev, grad_inputs.as_mut_slice())
        })()
        .into()
    }

    fn metric_names(&self) -> RResult<RVec<RString>, Error> {
        RResult::ROk(vec![RString::from("reconstruction_error")].into())
    }

    fn read_metrics(&mut self, mut out: RSliceMut<'_, f64>) -> RResult<(), Error> {
        out[0] = self.error_sum / self.error_batches.max(1) as f64;
        self.error_sum = 0.0;
        self.error_batches = 0;
        RResult::ROk(())
    }
}

/// The hidden units of an RBM (SINGA's `RBMHidLayer`).
///
/// Source: the `rbm_vis` of the pair. Outputs `data` (the units' means, `σ(v·W + c)`) and
/// `sample` (states drawn from them in training, the means otherwise). Parameters: `weight`
/// (the visible layer's, shared) and `bias`. It computes the weight's CD gradient.
pub struct RbmHid {
    units: Units,
    state: Option<HidState>,
    /// Random numbers drawn so far for the whole batch (the stream position of the next
    /// sample), kept in checkpoints so that a resumed run draws what an uninterrupted one
    /// would.
    draws: u64,
}

struct HidState {
    dev: DeviceRef,
    weight: Param,
    bias: Option<Param>,
    seed: u64,
    /// Where this part of the batch starts in each sample's stream of draws, and the draws
    /// of a whole batch: the workers splitting a batch draw what one worker would for it.
    offset: u64,
    stride: u64,
    /// The positive phase's visible and hidden means, for the gradient.
    positive_v: Tensor,
    positive_h: Tensor,
    /// Uniform draws (binary units) or noise (Gaussian units).
    noise: Tensor,
}

impl LayerDef for RbmHid {
    const TYPE: &'static str = "rbm_hid";
    const ROLE: LayerRole = LayerRole::RbmHidden;
    const DOC: &'static str = "The hidden units of an RBM, trained with algorithm = \"cd\". Source: the rbm_vis of the pair. Outputs: data, the means σ(v·W + c), and sample, states drawn from them in training (the means otherwise). Params `weight` (the rbm_vis's, shared) and `bias`.";

    fn fields() -> Vec<FieldSpec> {
        common_fields("hidden", "number of hidden units")
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(RbmHid {
            units: Units::new(f)?,
            state: None,
            draws: 0,
        })
    }
}

impl RbmHid {
    fn st(&mut self) -> Result<&mut HidState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("rbm_hid used before setup"))
    }

    fn setup_impl(
        &mut self,
        ctx: &SetupContext<'_>,
        mut params: ParamFactoryMut<'_>,
    ) -> Result<RVec<TensorSpec>> {
        let input = ctx.single_input()?;
        let (rows, vdim) = input.shape.as_matrix();
        let hdim = self.units.hdim;
        let dev = ctx.device;
        self.state = Some(HidState {
            dev: dev.clone(),
            weight: weight(&mut params, vdim, hdim)?,
            bias: bias(&mut params, &self.units, hdim)?,
            seed: ctx.seed,
            offset: (ctx.partition_id as usize * rows * hdim) as u64,
            stride: (ctx.num_partitions.max(1) as usize * rows * hdim) as u64,
            positive_v: Tensor::zeros(dev, [rows, vdim], DType::F32)?,
            positive_h: Tensor::zeros(dev, [rows, hdim], DType::F32)?,
            noise: Tensor::zeros(dev, [rows, hdim], DType::F32)?,
        });
        Ok(vec![
            TensorSpec::new("data", [rows, hdim], DType::F32),
            TensorSpec::new("sample", [rows, hdim], DType::F32),
        ]
        .into())
    }

    /// The means, their sample, and (in the positive phase) a copy of both phases' inputs.
    fn forward_impl(&mut self, phase: Phase, v: &Tensor, outputs: &mut [Tensor]) -> Result<()> {
        let gaussian = self.units.gaussian;
        let drawn = self.draws;
        let s = self.st()?;
        let draws = drawn + s.offset;
        let [mean, sample] = outputs else {
            return Err(Error::invalid("rbm_hid has two outputs"));
        };
        s.dev
            .matmul(1.0, v, false, &s.weight.value, false, 0.0, mean)?;
        activate(&s.dev, &s.bias, gaussian, mean)?;
        if !phase.contains(Phase::NEGATIVE) {
            s.dev.copy(v, &mut s.positive_v)?;
            s.dev.copy(mean, &mut s.positive_h)?;
        }
        if !phase.is_train() {
            return s.dev.copy(mean, sample);
        }
        if gaussian {
            let noise = Distribution::Gaussian {
                mean: 0.0,
                std: 1.0,
            };
            s.dev.random(&mut s.noise, noise, s.seed, draws)?;
            s.dev.binary(BinaryOp::Add, mean, &s.noise, sample)?;
        } else {
            // A unit is on when its uniform draw falls below its probability.
            let uniform = Distribution::Uniform {
                low: 0.0,
                high: 1.0,
            };
            s.dev.random(&mut s.noise, uniform, s.seed, draws)?;
            s.dev.binary(BinaryOp::Sub, mean, &s.noise, sample)?;
            let d = sample.clone();
            s.dev.unary(UnaryOp::Sign, &d, sample)?;
            let d = sample.clone();
            s.dev.max_scalar(&d, sample, 0.0)?;
        }
        let stride = s.stride;
        self.draws += stride;
        Ok(())
    }

    /// `∂W = (v_kᵀ·h_k − v₀ᵀ·h₀) / batch` and the hidden bias's gradient.
    fn backward_impl(&mut self, v: &Tensor, h: &Tensor) -> Result<()> {
        let s = self.st()?;
        let rows = v.shape().as_matrix().0;
        let scale = 1.0 / rows as f32;
        let g = &mut s.weight.grad;
        s.dev.matmul(scale, v, true, h, false, 0.0, g)?;
        s.dev
            .matmul(-scale, &s.positive_v, true, &s.positive_h, false, 1.0, g)?;
        if let Some(b) = &mut s.bias {
            bias_grad(&s.dev, h, &s.positive_h, &mut b.grad)?;
        }
        Ok(())
    }
}

impl Layer for RbmHid {
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
        self.forward_impl(phase, &inputs[0], outputs.as_mut_slice())
            .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        outputs: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            self.backward_impl(&inputs[0], &outputs[0])?;
            let s = self.st()?;
            no_input_grads(&s.dev, grad_inputs.as_mut_slice())
        })()
        .into()
    }

    fn state(&self) -> RResult<RVec<u64>, Error> {
        RResult::ROk(vec![self.draws].into())
    }

    fn restore_state(&mut self, state: RSlice<'_, u64>) -> RResult<(), Error> {
        crate::single_state("rbm_hid", state.as_slice())
            .map(|v| self.draws = v)
            .into()
    }
}
