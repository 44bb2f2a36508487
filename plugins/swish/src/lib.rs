//! A singa plugin with one layer type, `swish`: `y = x·σ(βx)` (Ramachandran, Zoph and Le,
//! "Searching for activation functions", 2017; SiLU when β = 1).
//!
//! Build it with `cargo build --release -p singa-plugin-swish` and name
//! `target/release/libsinga_plugin_swish.so` in a job file's `plugins` list.

use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    BinaryOp, DType, DeviceRef, Error, FieldKind, FieldSpec, Fields, Layer, LayerDef, LayerExample,
    ParamFactoryMut, Phase, Result, SetupContext, Tensor, TensorSpec, UnaryOp,
};

/// `y = x·σ(βx)`, elementwise.
pub struct Swish {
    beta: f32,
    /// Set up by `setup`: the device and the buffers that live across forward and backward.
    state: Option<State>,
}

struct State {
    dev: DeviceRef,
    /// `σ(βx)` from the last forward.
    sigma: Tensor,
    /// `βx` forward, the local derivative backward.
    scratch: Tensor,
}

impl LayerDef for Swish {
    const TYPE: &'static str = "swish";
    const DOC: &'static str =
        "Swish activation x·sigmoid(beta·x) (SiLU for beta = 1); smooth, non-monotonic.";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new("beta", FieldKind::Float, "slope inside the sigmoid").default(1.0)]
    }

    fn new(fields: &Fields) -> Result<Self> {
        let beta = fields.f32("beta")?;
        if !beta.is_finite() {
            return Err(Error::invalid(format!(
                "beta must be a finite number, got {beta}"
            )));
        }
        Ok(Swish { beta, state: None })
    }

    fn examples() -> Vec<LayerExample> {
        let x = |shape: [usize; 2]| TensorSpec::new("x", shape, DType::F32);
        vec![
            LayerExample::new(Fields::new(), vec![x([3, 7])]),
            LayerExample::new(Fields::new().with("beta", 1.7), vec![x([4, 5])]),
        ]
    }
}

impl Swish {
    fn state(&mut self) -> Result<&mut State> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("swish used before setup"))
    }
}

impl Layer for Swish {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let input = ctx.single_input()?;
            if input.dtype != DType::F32 {
                return Err(Error::shape(
                    format!("layer {}", ctx.layer),
                    format!("swish expects an f32 input, got {}", input.dtype),
                ));
            }
            self.state = Some(State {
                dev: ctx.device.clone(),
                sigma: Tensor::zeros(ctx.device, input.shape, DType::F32)?,
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
        let beta = self.beta;
        (|| {
            let s = self.state()?;
            let x = &inputs[0];
            if beta == 1.0 {
                s.dev.unary(UnaryOp::Sigmoid, x, &mut s.sigma)?;
            } else {
                s.dev.affine(x, &mut s.scratch, beta, 0.0)?;
                s.dev.unary(UnaryOp::Sigmoid, &s.scratch, &mut s.sigma)?;
            }
            s.dev.binary(BinaryOp::Mul, x, &s.sigma, &mut outputs[0])
        })()
        .into()
    }

    fn backward(
        &mut self,
        _phase: Phase,
        _inputs: RSlice<'_, Tensor>,
        outputs: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        let beta = self.beta;
        (|| {
            let ROption::RSome(dx) = &mut grad_inputs[0] else {
                return Ok(());
            };
            let s = self.state()?;
            let y = &outputs[0];
            // dy/dx = σ + β·y·(1 − σ) = σ + β·(y − y·σ)
            let scratch = s.scratch.clone(); // a second handle, to read and write it in place
            s.dev.binary(BinaryOp::Mul, y, &s.sigma, &mut s.scratch)?;
            s.dev.binary(BinaryOp::Sub, y, &scratch, &mut s.scratch)?;
            s.dev.axpby(1.0, &s.sigma, beta, &mut s.scratch)?;
            s.dev
                .binary(BinaryOp::Mul, &grad_outputs[0], &s.scratch, dx)
        })()
        .into()
    }
}

singa_core::export_plugin! {
    layers: [Swish],
    updaters: [],
}
