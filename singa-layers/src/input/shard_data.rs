//! `shard_data`: records of any shape as they are stored, scaled and shifted.

use super::{source_fields, Source};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DType, Error, FieldKind, FieldSpec, Fields, Layer, LayerDef, ParamFactoryMut, Phase, Result,
    SetupContext, Shape, Tensor, TensorSpec,
};
use singa_data::{LoaderConfig, Transform};

/// Reads batches from a shard (SINGA's `ShardData` with its parser): outputs `data`, the
/// records as `f32` (`(value · scale − mean) / std`, e.g. MNIST pixels scaled to [0, 1]), and
/// `label`, the `i32` labels. Batches are prepared on a background thread in a seeded order; the
/// position in the data is saved in checkpoints.
pub struct ShardData {
    source: Source,
    transform: Transform,
}

impl LayerDef for ShardData {
    const TYPE: &'static str = "shard_data";
    const DOC: &'static str = "Batches from a shard file: outputs `data` (f32, (value·scale - mean)/std) and `label` (i32). With `import`, builds the shard from raw files on first use.";

    fn fields() -> Vec<FieldSpec> {
        let mut f = source_fields();
        f.extend([
            FieldSpec::new(
                "scale",
                FieldKind::Float,
                "multiplies each value (1/255 maps bytes to [0, 1])",
            )
            .default(1.0),
            FieldSpec::new("mean", FieldKind::Float, "subtracted after scaling").default(0.0),
            FieldSpec::new(
                "std",
                FieldKind::Float,
                "divides after subtracting the mean",
            )
            .default(1.0),
        ]);
        f
    }

    fn new(f: &Fields) -> Result<Self> {
        let std = f.f32("std")?;
        if std == 0.0 {
            return Err(Error::invalid("std must not be 0"));
        }
        let (scale, mean) = (f.f32("scale")?, f.f32("mean")?);
        Ok(ShardData {
            source: Source::new(Self::TYPE, f)?,
            transform: Transform {
                scale: scale / std,
                shift: -mean / std,
            },
        })
    }
}

impl ShardData {
    fn setup_impl(&mut self, ctx: &SetupContext<'_>) -> Result<RVec<TensorSpec>> {
        let shard = self.source.open(ctx)?;
        let batch = self.source.batch_size;
        let mut dims = vec![batch];
        dims.extend(&shard.spec().shape);
        let shape = Shape::new(&dims)?;
        let config = LoaderConfig {
            transform: self.transform,
            ..LoaderConfig::new(batch)
        };
        self.source.start(shard, ctx.seed, config)?;
        Ok(vec![
            TensorSpec::new("data", shape, DType::F32),
            TensorSpec::new("label", [batch], DType::I32),
        ]
        .into())
    }
}

impl Layer for ShardData {
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
        _: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let [data, label] = outputs.as_mut_slice() else {
            return RResult::RErr(Error::invalid("shard_data has two outputs"));
        };
        self.source.next(data, label).into()
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

    fn state(&self) -> RResult<RVec<u64>, Error> {
        RResult::ROk(self.source.state().into())
    }

    fn restore_state(&mut self, state: RSlice<'_, u64>) -> RResult<(), Error> {
        self.source.restore(state.as_slice()).into()
    }
}
