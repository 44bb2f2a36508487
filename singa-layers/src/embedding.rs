//! Layers that turn integer ids (characters, words) into features: `embedding` (a learned
//! vector per id) and `one_hot` (the id's indicator vector).

use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DType, DeviceRef, Error, FieldKind, FieldSpec, Fields, Init, Layer, LayerDef, Param,
    ParamFactoryMut, ParamSpec, Phase, Result, SetupContext, Shape, Tensor, TensorSpec,
};

/// The output shape of a lookup: the ids' shape with `features` appended.
fn lookup_shape(ctx: &SetupContext<'_>, ty: &str, features: usize) -> Result<Shape> {
    let ids = ctx.single_input()?;
    if ids.dtype != DType::I32 {
        return Err(Error::shape(
            format!("layer {}", ctx.layer),
            format!(
                "{ty} takes i32 ids (a text_data or label output), got {}",
                ids.dtype
            ),
        ));
    }
    let mut dims = ids.shape.dims().to_vec();
    dims.push(features);
    Shape::new(&dims)
}

/// A learned vector of `feature_dim` values per id of a vocabulary (PyTorch's
/// `nn.Embedding`): `y[..., :] = W[id, :]`. The ids get no gradient; `W`'s gradient adds the
/// output gradients of every place its row was used.
pub struct Embedding {
    vocab_size: usize,
    feature_dim: usize,
    state: Option<(DeviceRef, Param)>,
}

impl LayerDef for Embedding {
    const TYPE: &'static str = "embedding";
    const DOC: &'static str = "A learned vector per id: i32 ids of any shape in, f32 out with feature_dim appended (y[..., :] = W[id, :]). Param `weight` [vocab_size, feature_dim], uniform on ±0.08 unless [[layer.param]] says otherwise.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new(
                "vocab_size",
                FieldKind::Int,
                "the number of ids (ids are 0..vocab_size)",
            )
            .required(),
            FieldSpec::new("feature_dim", FieldKind::Int, "values per id").required(),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let (vocab_size, feature_dim) = (f.usize("vocab_size")?, f.usize("feature_dim")?);
        if vocab_size == 0 || feature_dim == 0 {
            return Err(Error::invalid(
                "vocab_size and feature_dim must be at least 1",
            ));
        }
        Ok(Embedding {
            vocab_size,
            feature_dim,
            state: None,
        })
    }
}

impl Embedding {
    fn setup_impl(
        &mut self,
        ctx: &SetupContext<'_>,
        mut params: ParamFactoryMut<'_>,
    ) -> Result<RVec<TensorSpec>> {
        let shape = lookup_shape(ctx, Self::TYPE, self.feature_dim)?;
        let (v, d) = (self.vocab_size, self.feature_dim);
        // char-rnn's initialisation; fan-in and fan-out as for a one-hot input times W.
        let init = Init::Uniform {
            low: -0.08,
            high: 0.08,
        };
        let weight = params
            .param(ParamSpec::new("weight", [v, d], v, d, init))
            .into_result()?;
        self.state = Some((ctx.device.clone(), weight));
        Ok(vec![TensorSpec::new("output", shape, DType::F32)].into())
    }

    fn state(&mut self) -> Result<&mut (DeviceRef, Param)> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("embedding used before setup"))
    }
}

impl Layer for Embedding {
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
            let (dev, w) = self.state()?;
            dev.gather_rows(&w.value, &inputs[0], &mut outputs[0])
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        _: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            let (dev, w) = self.state()?;
            dev.fill(&mut w.grad, 0.0)?;
            dev.scatter_add_rows(&inputs[0], &grad_outputs[0], &mut w.grad)
        })()
        .into()
    }
}

/// The largest vocabulary `one_hot` takes: it keeps a `vocab_size²` identity table.
pub const MAX_ONE_HOT: usize = 4096;

/// The indicator vector of each id (`y[..., id] = 1`, 0 elsewhere): SINGA's one-hot layer
/// for character models. No parameters, no gradient.
pub struct OneHot {
    vocab_size: usize,
    /// The identity matrix its rows are read from, and the device.
    state: Option<(DeviceRef, Tensor)>,
}

impl LayerDef for OneHot {
    const TYPE: &'static str = "one_hot";
    const DOC: &'static str = "The indicator vector of each id: i32 ids of any shape in, f32 out with vocab_size appended (1 at the id, 0 elsewhere). For vocabularies above 4096, use embedding.";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new(
            "vocab_size",
            FieldKind::Int,
            "the number of ids (ids are 0..vocab_size)",
        )
        .required()]
    }

    fn new(f: &Fields) -> Result<Self> {
        let vocab_size = f.usize("vocab_size")?;
        if !(1..=MAX_ONE_HOT).contains(&vocab_size) {
            return Err(Error::invalid(format!(
                "vocab_size must be between 1 and {MAX_ONE_HOT} (a larger vocabulary wants an \
                 embedding layer), got {vocab_size}"
            )));
        }
        Ok(OneHot {
            vocab_size,
            state: None,
        })
    }
}

impl Layer for OneHot {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| -> Result<RVec<TensorSpec>> {
            let v = self.vocab_size;
            let shape = lookup_shape(ctx, Self::TYPE, v)?;
            let identity: Vec<f32> = (0..v * v)
                .map(|i| if i / v == i % v { 1.0 } else { 0.0 })
                .collect();
            let table = Tensor::from_slice(ctx.device, &identity, [v, v])?;
            self.state = Some((ctx.device.clone(), table));
            Ok(vec![TensorSpec::new("output", shape, DType::F32)].into())
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
            let (dev, table) = self
                .state
                .as_ref()
                .ok_or_else(|| Error::invalid("one_hot used before setup"))?;
            dev.gather_rows(table, &inputs[0], &mut outputs[0])
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        _: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        RResult::ROk(())
    }
}
