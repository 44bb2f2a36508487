//! `image_data`: RGB (or any `[channels, height, width]`) images with mean subtraction,
//! scaling, and seeded crop and mirror augmentation.

use super::{resolve, Records};
use crate::operator::Preprocessing;
use singa_core::{Error, FieldKind, FieldSpec, FieldValue, Fields, Result, SetupContext};
use singa_data::{ImagePrep, ImageSpec, LoaderConfig, Mean, Shard};

/// The records of [`ImageData`](super::ImageData): `[channels, height, width]` images as
/// `((pixel · scale) − mean) / std` (or `(pixel − mean image) · scale / std` with a mean file).
/// In the training net, each image is cropped at a random place (after `pad` zeros on every
/// side) and mirrored with probability ½ if `mirror`; in the test net, the centre is cropped.
/// The randomness is a function of the seed and the record's position in the data stream, so
/// resuming from a checkpoint reproduces it.
pub struct Images {
    spec: ImageSpec,
    mean_file: Option<String>,
}

impl Records for Images {
    const TYPE: &'static str = "image_data";
    const DOC: &'static str = "Images [channels, height, width] from a shard, normalised ((pixel·scale - mean)/std, or a mean_file), randomly cropped (with pad) and mirrored in training, centre-cropped in testing. Outputs `data` and `label`.";

    fn fields() -> Vec<FieldSpec> {
        vec![
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
        ]
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
        Ok(Images { spec, mean_file })
    }

    fn prepare(&self, ctx: &SetupContext<'_>, shard: &Shard) -> Result<(LoaderConfig, Vec<usize>)> {
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
        let shape = prep.output_shape().to_vec();
        Ok((
            LoaderConfig {
                image: Some(prep),
                ..LoaderConfig::new(1)
            },
            shape,
        ))
    }

    fn preprocessing(&self) -> Preprocessing {
        let spec = &self.spec;
        Preprocessing {
            scale: spec.scale,
            mean: match &spec.mean {
                Mean::PerChannel(m) => m.clone(),
                _ => Vec::new(),
            },
            mean_file: self.mean_file.clone(),
            std: spec.std.clone(),
            crop: spec.crop,
        }
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
