//! A template singa plugin: a layer with a parameter, `softsign` (`y = a · x / (1 + |x|)`,
//! one learned scale `a` per feature), and an updater with scratch memory, `clipped_sgd`.
//!
//! Copy this crate, rename it in Cargo.toml, and replace the types. What a layer does:
//! - `LayerDef` names the type, documents it, declares its fields (with defaults, so a job
//!   file can omit them) and builds it from validated fields;
//! - `setup` checks the inputs' shapes, creates its parameters and the buffers kept across
//!   steps, and declares the outputs;
//! - `forward` and `backward` compute with the `DeviceRef` methods, so the layer runs on every
//!   device singa has. They must not allocate: allocate in `setup`. `backward` *overwrites*
//!   the parameters' gradients and the input gradients (the runtime never zeroes them).
//!
//! What an updater does: `state_names` lists the tensors it keeps per parameter (singa
//! allocates and checkpoints them); `update` changes a parameter's values from its gradient.
//! Memory it only needs during one update is scratch, not state: keep it in the updater.
//!
//! Check them with `singa plugin check target/release/libsinga_plugin_template.so`.

use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RString, RVec};
use singa_core::{
    BinaryOp, DType, DeviceRef, Dims3, Error, FieldKind, FieldSpec, Fields, Init, Layer, LayerDef,
    LayerExample, Param, ParamFactoryMut, ParamSpec, Phase, ReduceOp, Result, SetupContext, Tensor,
    TensorSpec, UnaryOp, UpdateArgs, Updater, UpdaterDef,
};

/// `y = a · x / (1 + |x|)` over `[batch, features]`: a tanh-like squashing with polynomial
/// tails, scaled by a learned factor per feature.
#[derive(Default)]
pub struct Softsign {
    /// Filled in by `setup`.
    state: Option<State>,
}

struct State {
    dev: DeviceRef,
    /// The learned scale, one per feature (the parameter: its value and its gradient).
    scale: Param,
    /// `[batch, features, 1]`: how the scale broadcasts over the input.
    dims: Dims3,
    /// `1 + |x|` from the last forward (backward needs it).
    denominator: Tensor,
    /// `x / (1 + |x|)` from the last forward, before scaling (the scale's gradient needs it).
    squashed: Tensor,
    /// Backward's scratch.
    scratch: Tensor,
}

impl LayerDef for Softsign {
    const TYPE: &'static str = "softsign";
    const DOC: &'static str = "Softsign a·x / (1 + |x|) over [batch, features], with a learned scale a per feature (param `scale`, 1 at first).";

    fn fields() -> Vec<FieldSpec> {
        // A layer with fields lists them here, e.g.
        // FieldSpec::new("alpha", FieldKind::Float, "what alpha does").default(1.0)
        vec![]
    }

    fn new(_fields: &Fields) -> Result<Self> {
        Ok(Softsign::default())
    }

    fn examples() -> Vec<LayerExample> {
        // The shapes `singa plugin check` tries the layer on.
        vec![LayerExample::new(
            Fields::new(),
            vec![TensorSpec::new("x", [4, 9], DType::F32)],
        )]
    }
}

impl Softsign {
    fn state(&mut self) -> Result<&mut State> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("softsign used before setup"))
    }
}

impl Layer for Softsign {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        mut params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        // The closure returns a plain `Result`, so `?` works; `.into()` converts at the end.
        (|| {
            let input = ctx.single_input()?;
            if input.dtype != DType::F32 || input.shape.rank() != 2 {
                return Err(Error::shape(
                    format!("layer {}", ctx.layer),
                    format!(
                        "softsign expects an f32 input [batch, features], got {} {}",
                        input.dtype, input.shape
                    ),
                ));
            }
            let (batch, features) = (input.shape.dim(0), input.shape.dim(1));
            // A parameter: its name (the job file's `[[layer.param]] name = "scale"` refers to
            // it), its shape, and its fan-in and fan-out: how many inputs feed each output it
            // takes part in, and how many outputs each input feeds. Fan-scaled inits (xavier,
            // he) read them; an inner product's weight [in, out] has fan_in = in and
            // fan_out = out. A per-feature scale touches one input per output: 1 and 1. The
            // init is the layer's default; a job file may choose another.
            let spec = ParamSpec::new("scale", [features], 1, 1, Init::Constant { value: 1.0 });
            let scale = params.param(spec).into_result()?;
            self.state = Some(State {
                dev: ctx.device.clone(),
                scale,
                dims: Dims3 {
                    outer: batch,
                    mid: features,
                    inner: 1,
                },
                denominator: Tensor::zeros(ctx.device, input.shape, DType::F32)?,
                squashed: Tensor::zeros(ctx.device, input.shape, DType::F32)?,
                scratch: Tensor::zeros(ctx.device, input.shape, DType::F32)?,
            });
            Ok(vec![TensorSpec::new("output", input.shape, DType::F32)].into())
        })()
        .into()
    }

    fn forward(
        &mut self,
        _phase: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.state()?;
            let x = &inputs[0];
            s.dev.unary(UnaryOp::Abs, x, &mut s.scratch)?;
            s.dev.affine(&s.scratch, &mut s.denominator, 1.0, 1.0)?;
            s.dev
                .binary(BinaryOp::Div, x, &s.denominator, &mut s.squashed)?;
            let y = &mut outputs[0];
            s.dev.copy(&s.squashed, y)?;
            s.dev.mul_broadcast(s.dims, &s.scale.value, y)
        })()
        .into()
    }

    fn backward(
        &mut self,
        _phase: Phase,
        _inputs: RSlice<'_, Tensor>,
        _outputs: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.state()?;
            let dy = &grad_outputs[0];
            // d loss / d a[f] = Σ_batch dy · x / (1 + |x|): written, not added to.
            s.dev
                .binary(BinaryOp::Mul, dy, &s.squashed, &mut s.scratch)?;
            let rows = Dims3 {
                outer: 1,
                mid: s.dims.outer,
                inner: s.dims.mid,
            };
            s.dev
                .reduce(ReduceOp::Sum, rows, &s.scratch, &mut s.scale.grad, 1.0, 0.0)?;
            // `None` when the input needs no gradient (it comes from a data layer).
            let ROption::RSome(dx) = &mut grad_inputs[0] else {
                return Ok(());
            };
            // dy/dx = a / (1 + |x|)²
            s.dev
                .unary(UnaryOp::Square, &s.denominator, &mut s.scratch)?;
            s.dev.binary(BinaryOp::Div, dy, &s.scratch, dx)?;
            s.dev.mul_broadcast(s.dims, &s.scale.value, dx)
        })()
        .into()
    }
}

/// SGD whose gradient is first held to `[-clip, clip]`, elementwise: `w −= lr·clamp(g + wd·w)`.
pub struct ClippedSgd {
    clip: f32,
    /// The clipped gradient: scratch for one update at a time, sized by the largest
    /// parameter seen (it grows during the first step, then stays).
    scratch: Option<Tensor>,
}

impl UpdaterDef for ClippedSgd {
    const TYPE: &'static str = "clipped_sgd";
    const DOC: &'static str =
        "SGD with each gradient value held to [-clip, clip] (weight decay included).";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new(
            "clip",
            FieldKind::Float,
            "the largest magnitude of a gradient value",
        )
        .default(1.0)]
    }

    fn new(fields: &Fields) -> Result<Self> {
        let clip = fields.f32("clip")?;
        if clip.is_nan() || clip <= 0.0 {
            return Err(Error::invalid(format!("clip must be positive, got {clip}")));
        }
        Ok(ClippedSgd {
            clip,
            scratch: None,
        })
    }
}

impl ClippedSgd {
    /// A scratch tensor of `grad`'s shape, on its device.
    fn scratch_for(&mut self, grad: &Tensor) -> Result<Tensor> {
        let n = grad.numel();
        let fits = self
            .scratch
            .as_ref()
            .is_some_and(|s| s.numel() >= n && s.device().id() == grad.device().id());
        if !fits {
            self.scratch = Some(Tensor::zeros(grad.device(), [n], DType::F32)?);
        }
        let whole = self.scratch.as_ref().expect("made above");
        whole.narrow(0, n)?.reshape(grad.shape())
    }
}

impl Updater for ClippedSgd {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        // No state kept between steps (momentum would be one: `vec!["momentum".into()]`).
        RResult::ROk(RVec::new())
    }

    fn update(
        &mut self,
        _step: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        _state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let dev = value.device().clone();
            let mut g = self.scratch_for(grad)?;
            // g = grad_scale · grad + wd · w, then clipped, then w −= lr · g.
            dev.copy(value, &mut g)?;
            dev.axpby(a.grad_scale, grad, a.weight_decay, &mut g)?;
            dev.clamp(&g.clone(), &mut g, -self.clip, self.clip)?;
            dev.axpby(-a.lr, &g, 1.0, value)
        })()
        .into()
    }
}

// Exports the plugin's types; list every layer and updater type here.
singa_core::export_plugin! {
    layers: [Softsign],
    updaters: [ClippedSgd],
}
