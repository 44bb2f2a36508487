//! Elementwise activation layers.

use crate::operator::{Describe, Operator};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DType, DeviceRef, Error, FieldKind, FieldSpec, Fields, Layer, LayerDef, ParamFactoryMut, Phase,
    Result, SetupContext, Tensor, TensorSpec, UnaryOp,
};

/// The shared machinery: one elementwise function forward, its derivative backward.
struct Elementwise {
    op: UnaryOp,
    dev: Option<DeviceRef>,
}

impl Elementwise {
    fn new(op: UnaryOp) -> Elementwise {
        Elementwise { op, dev: None }
    }

    fn dev(&self) -> Result<&DeviceRef> {
        self.dev
            .as_ref()
            .ok_or_else(|| Error::invalid("activation used before setup"))
    }

    fn setup(&mut self, ctx: &SetupContext<'_>) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let input = ctx.single_input()?;
            if input.dtype != DType::F32 {
                return Err(Error::shape(
                    format!("layer {}", ctx.layer),
                    format!("expects f32 input, got {}", input.dtype),
                ));
            }
            self.dev = Some(ctx.device.clone());
            Ok(vec![TensorSpec::new("output", input.shape, DType::F32)].into())
        })()
        .into()
    }

    fn forward(
        &mut self,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| self.dev()?.unary(self.op, &inputs[0], &mut outputs[0]))().into()
    }

    fn backward(
        &mut self,
        inputs: RSlice<'_, Tensor>,
        outputs: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                self.dev()?.unary_backward(
                    self.op,
                    &inputs[0],
                    &outputs[0],
                    &grad_outputs[0],
                    dx,
                )?;
            }
            Ok(())
        })()
        .into()
    }
}

macro_rules! activation_layer {
    ($(#[$doc:meta])* $name:ident, $type_name:literal, $help:literal, fields: $fields:expr, op: |$f:ident| $op:expr) => {
        $(#[$doc])*
        pub struct $name(Elementwise);

        impl LayerDef for $name {
            const TYPE: &'static str = $type_name;
            const DOC: &'static str = $help;

            fn fields() -> Vec<FieldSpec> {
                $fields
            }

            fn new($f: &Fields) -> Result<Self> {
                Ok($name(Elementwise::new($op)))
            }
        }

        impl Describe for $name {
            fn operator(&self) -> Option<Operator> {
                self.0.dev.as_ref()?;
                Some(Operator::Unary(self.0.op))
            }
        }

        impl Layer for $name {
            fn setup(&mut self, ctx: &SetupContext<'_>, _: ParamFactoryMut<'_>) -> RResult<RVec<TensorSpec>, Error> {
                self.0.setup(ctx)
            }

            fn forward(&mut self, _: Phase, inputs: RSlice<'_, Tensor>, outputs: RSliceMut<'_, Tensor>) -> RResult<(), Error> {
                self.0.forward(inputs, outputs)
            }

            fn backward(
                &mut self,
                _: Phase,
                inputs: RSlice<'_, Tensor>,
                outputs: RSlice<'_, Tensor>,
                grad_outputs: RSlice<'_, Tensor>,
                grad_inputs: RSliceMut<'_, ROption<Tensor>>,
            ) -> RResult<(), Error> {
                self.0.backward(inputs, outputs, grad_outputs, grad_inputs)
            }
        }
    };
}

activation_layer!(
    /// `max(x, 0)`, or leaky with a negative slope.
    Relu, "relu", "Rectified linear unit max(x, 0); with negative_slope, a leaky ReLU.",
    fields: vec![FieldSpec::new("negative_slope", FieldKind::Float, "slope for x < 0 (leaky ReLU)").default(0.0)],
    op: |f| {
        let slope = f.f32("negative_slope")?;
        if slope == 0.0 { UnaryOp::Relu } else { UnaryOp::LeakyRelu { slope } }
    }
);

activation_layer!(
    /// The logistic function.
    Sigmoid, "sigmoid", "Logistic function 1 / (1 + e^-x).",
    fields: vec![],
    op: |_f| UnaryOp::Sigmoid
);

activation_layer!(
    /// Hyperbolic tangent.
    Tanh, "tanh", "Hyperbolic tangent.",
    fields: vec![],
    op: |_f| UnaryOp::Tanh
);

activation_layer!(
    /// SINGA's scaled tanh, `1.7159·tanh(2x/3)`.
    STanh, "stanh", "Scaled tanh 1.7159·tanh(2x/3) (LeCun's choice for MLPs, SINGA's STanh).",
    fields: vec![],
    op: |_f| UnaryOp::ScaledTanh
);

activation_layer!(
    /// Any of the activations above, picked by a field (SINGA v0.3's `Activation` layer).
    Activation, "activation", "One layer for relu, sigmoid, tanh and stanh, chosen by `function` (a layer's `type` is its own type's name, so the field cannot be called `type` as in SINGA).",
    fields: vec![
        FieldSpec::new("function", FieldKind::Str, "the function").required().choices(&["relu", "sigmoid", "tanh", "stanh"]),
        FieldSpec::new("negative_slope", FieldKind::Float, "slope for x < 0 when function = relu").default(0.0),
    ],
    op: |f| match f.str("function")? {
        "relu" => {
            let slope = f.f32("negative_slope")?;
            if slope == 0.0 { UnaryOp::Relu } else { UnaryOp::LeakyRelu { slope } }
        }
        "sigmoid" => UnaryOp::Sigmoid,
        "tanh" => UnaryOp::Tanh,
        "stanh" => UnaryOp::ScaledTanh,
        other => return Err(Error::invalid(format!("unknown activation {other:?}"))),
    }
);
