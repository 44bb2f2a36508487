//! `shard_data`: records of any shape as they are stored, scaled and shifted.

use super::Records;
use crate::operator::Preprocessing;
use singa_core::{Error, FieldKind, FieldSpec, Fields, Result, SetupContext};
use singa_data::{LoaderConfig, Shard, Transform};

/// The records of [`ShardData`](super::ShardData): every stored value becomes
/// `(value · scale − mean) / std`.
pub struct Values {
    transform: Transform,
    /// The fields the transform was made of, as the user gave them.
    given: Preprocessing,
}

impl Records for Values {
    const TYPE: &'static str = "shard_data";
    const DOC: &'static str = "Batches from a shard file: outputs `data` (f32, (value·scale - mean)/std) and `label` (i32). With `import`, builds the shard from raw files on first use.";

    fn fields() -> Vec<FieldSpec> {
        vec![
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
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let std = f.f32("std")?;
        if std == 0.0 {
            return Err(Error::invalid("std must not be 0"));
        }
        let (scale, mean) = (f.f32("scale")?, f.f32("mean")?);
        Ok(Values {
            transform: Transform {
                scale: scale / std,
                shift: -mean / std,
            },
            given: Preprocessing {
                scale,
                mean: vec![mean],
                mean_file: None,
                std: vec![std],
                crop: None,
            },
        })
    }

    fn prepare(&self, _: &SetupContext<'_>, shard: &Shard) -> Result<(LoaderConfig, Vec<usize>)> {
        let config = LoaderConfig {
            transform: self.transform,
            ..LoaderConfig::new(1)
        };
        Ok((config, shard.spec().shape.clone()))
    }

    fn preprocessing(&self) -> Preprocessing {
        self.given.clone()
    }
}
