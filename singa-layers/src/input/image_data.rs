//! `image_data`: RGB (or any `[channels, height, width]`) images with mean subtraction,
//! scaling, and seeded crop and mirror augmentation.

use super::{resolve, source_fields, Source};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DType, Error, FieldKind, FieldSpec, FieldValue, Fields, Layer, LayerDef, ParamFactoryMut,
    Phase, Result, SetupContext, Tensor, TensorSpec,
};
use singa_data::{ImagePrep, ImageSpec, LoaderConfig, Mean};

/// Reads images from a shard of `[channels, height, width]` records (SINGA's image parser):
/// outputs `data`, `[batch, channels, crop_h, crop_w]` f32 values
/// `((pixel · scale) − mean) / std` (or `(pixel − mean image) · scale / std` with a mean file),
/// and `label`. In the training net, each image is cropped at a random place (after `pad`
/// zeros on every side) and mirrored with probability ½ if `mirror`; in the test net, the
/// centre is cropped. The randomness is a function of the seed and the record's position in
/// the data stream, so resuming from a checkpoint reproduces it.
pub struct ImageData {
    source: Source,
    spec: ImageSpec,
    mean_file: Option<String>,
}

impl LayerDef for ImageData {
    const TYPE: &'static str = "image_data";
    const DOC: &'static str = "Images [channels, height, width] from a shard, normalised ((pixel·scale - mean)/std, or a mean_file), randomly cropped (with pad) and mirrored in training, centre-cropped in testing. Outputs `data` and `label`.";

    fn fields() -> Vec<FieldSpec> {
        let mut f = source_fields();
        f.extend([
            FieldSpec::new(
                "scale",
                FieldKind::Float,
                "multiplies each pixel (1/255 maps bytes to [0, 1])",
            )
            .default(1.0),
            FieldSpec::new(
                "mean",
                FieldKind::List,
                "subtracted after scaling: one value, or one per channel",
            ),
            FieldSpec::new(
                "std",
                FieldKind::List,
                "divides after the mean: one value, or one per channel",
            )
            .default(FieldValue::List(vec![FieldValue::Float(1.0)].into())),
            FieldSpec::new(
                "mean_file",
                FieldKind::Str,
                "a mean image (from `singa data mean`), subtracted before scaling; instead of mean",
            ),
            FieldSpec::new(
                "crop",
                FieldKind::List,
                "the output size: one value (square) or [height, width]; default the stored size",
            ),
            FieldSpec::new(
                "pad",
                FieldKind::Int,
                "zeros added on every side before a random training crop",
            )
            .default(0),
            FieldSpec::new(
                "mirror",
                FieldKind::Bool,
                "mirror left-right at random in training",
            )
            .default(false),
        ]);
        f
    }

    fn new(f: &Fields) -> Result<Self> {
        let mean = floats(f, "mean")?;
        let mean_file = f.opt_str("mean_file")?.map(str::to_string);
        if mean.is_some() && mean_file.is_some() {
            return Err(Error::invalid("give mean or mean_file, not both"));
        }
        let crop = match floats(f, "crop")?.as_deref() {
            None => None,
            Some(&[s]) => Some((size(s)?, size(s)?)),
            Some(&[h, w]) => Some((size(h)?, size(w)?)),
            Some(other) => {
                return Err(Error::invalid(format!(
                    "crop is one size or [height, width], got {other:?}"
                )))
            }
        };
        let spec = ImageSpec {
            scale: f.f32("scale")?,
            mean: mean.map(Mean::PerChannel).unwrap_or(Mean::None),
            std: floats(f, "std")?.unwrap_or_else(|| vec![1.0]),
            crop,
            pad: f.usize("pad")?,
            mirror: f.bool("mirror")?,
        };
        Ok(ImageData {
            source: Source::new(Self::TYPE, f)?,
            spec,
            mean_file,
        })
    }
}

/// A list field of numbers.
fn floats(f: &Fields, name: &str) -> Result<Option<Vec<f32>>> {
    let Some(list) = f.opt_list(name)? else {
        return Ok(None);
    };
    list.iter()
        .map(|v| match v {
            FieldValue::Int(i) => Ok(*i as f32),
            FieldValue::Float(x) => Ok(*x as f32),
            other => Err(Error::invalid(format!("{name} holds numbers, got {other}"))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn size(v: f32) -> Result<usize> {
    if v >= 1.0 && v.fract() == 0.0 {
        Ok(v as usize)
    } else {
        Err(Error::invalid(format!(
            "crop sizes are positive integers, got {v}"
        )))
    }
}

impl ImageData {
    fn setup_impl(&mut self, ctx: &SetupContext<'_>) -> Result<RVec<TensorSpec>> {
        let shard = self.source.open(ctx)?;
        let record = shard.spec().shape.clone();
        let here = |e: Error| {
            e.context(format!(
                "layer {}: shard {}",
                ctx.layer,
                shard.path().display()
            ))
        };
        let mut spec = self.spec.clone();
        if let Some(file) = &self.mean_file {
            let path = resolve(ctx.base_dir.as_str(), file);
            spec.mean = Mean::Image(singa_data::image::read_mean(&path, &record)?);
        }
        let prep = ImagePrep::new(&spec, &record, ctx.phase.is_train()).map_err(here)?;
        let [c, h, w] = prep.output_shape();
        let batch = self.source.batch_size;
        let config = LoaderConfig {
            image: Some(prep),
            ..LoaderConfig::new(batch)
        };
        self.source.start(shard, ctx.seed, config)?;
        Ok(vec![
            TensorSpec::new("data", [batch, c, h, w], DType::F32),
            TensorSpec::new("label", [batch], DType::I32),
        ]
        .into())
    }
}

impl Layer for ImageData {
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
            return RResult::RErr(Error::invalid("image_data has two outputs"));
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
