//! A template singa plugin: one layer type, `softsign`, `y = x / (1 + |x|)`.
//!
//! Copy this crate, rename it in Cargo.toml, and replace the layer. What a layer does:
//! - `LayerDef` names the type, documents it, declares its fields (with defaults, so a job
//!   file can omit them) and builds it from validated fields;
//! - `setup` checks the inputs' shapes, creates parameters (none here) and the buffers kept
//!   across steps, and declares the outputs;
//! - `forward` and `backward` compute with the `DeviceRef` methods, so the layer runs on every
//!   device singa has. They must not allocate: allocate in `setup`.
//!
//! Check it with `singa plugin check target/release/libsinga_plugin_template.so`.

use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    BinaryOp, DType, DeviceRef, Error, FieldSpec, Fields, Layer, LayerDef, LayerExample,
    ParamFactoryMut, Phase, Result, SetupContext, Tensor, TensorSpec, UnaryOp,
};

/// `y = x / (1 + |x|)`, elementwise: a tanh-like squashing with polynomial tails.
#[derive(Default)]
pub struct Softsign {
    /// Filled in by `setup`.
    state: Option<State>,
}

struct State {
    dev: DeviceRef,
    /// `1 + |x|` from the last forward (backward needs it).
    denominator: Tensor,
    /// Backward's scratch: `(1 + |x|)²`.
    scratch: Tensor,
}

impl LayerDef for Softsign {
    const TYPE: &'static str = "softsign";
    const DOC: &'static str =
        "Softsign x / (1 + |x|): squashes to (-1, 1) like tanh, with slower tails.";

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
        _params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        // The closure returns a plain `Result`, so `?` works; `.into()` converts at the end.
        (|| {
            let input = ctx.single_input()?;
            if input.dtype != DType::F32 {
                return Err(Error::shape(
                    format!("layer {}", ctx.layer),
                    format!("softsign expects an f32 input, got {}", input.dtype),
                ));
            }
            self.state = Some(State {
                dev: ctx.device.clone(),
                denominator: Tensor::zeros(ctx.device, input.shape, DType::F32)?,
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
                .binary(BinaryOp::Div, x, &s.denominator, &mut outputs[0])
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
            // `None` when the input needs no gradient (it comes from a data layer).
            let ROption::RSome(dx) = &mut grad_inputs[0] else {
                return Ok(());
            };
            let s = self.state()?;
            // dy/dx = 1 / (1 + |x|)²
            s.dev
                .unary(UnaryOp::Square, &s.denominator, &mut s.scratch)?;
            s.dev
                .binary(BinaryOp::Div, &grad_outputs[0], &s.scratch, dx)
        })()
        .into()
    }
}

// Exports the plugin's types; list every layer (and updater) type here.
singa_core::export_plugin! {
    layers: [Softsign],
    updaters: [],
}
