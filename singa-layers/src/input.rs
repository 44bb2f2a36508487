//! Input layers: where batches enter the net.

use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DType, Error, FieldKind, FieldSpec, Fields, Layer, LayerDef, ParamFactoryMut, Phase, Result,
    SetupContext, Shape, Tensor, TensorSpec,
};
use singa_data::{BatchLoader, LoaderConfig, Shard, Transform};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads batches from a shard (SINGA's `ShardData` with its parser): outputs `data`, the
/// records as `f32` (`(value · scale − mean) / std`, e.g. MNIST pixels scaled to [0, 1]), and
/// `label`, the `i32` labels. Batches are prepared on a background thread in a seeded order; the
/// position in the data is saved in checkpoints.
pub struct ShardData {
    path: String,
    batch_size: usize,
    shuffle: bool,
    transform: Transform,
    import: Option<(String, String)>,
    prefetch: usize,
    run: Option<Running>,
}

struct Running {
    shard: Arc<Shard>,
    loader: BatchLoader,
    seed: u64,
    /// Records consumed so far.
    cursor: u64,
}

impl LayerDef for ShardData {
    const TYPE: &'static str = "shard_data";
    const DOC: &'static str = "Batches from a shard file: outputs `data` (f32, (value·scale - mean)/std) and `label` (i32). With `import`, builds the shard from raw files on first use.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("path", FieldKind::Str, "the shard file (relative to the job file)").required(),
            FieldSpec::new("batch_size", FieldKind::Int, "records per batch").required(),
            FieldSpec::new("shuffle", FieldKind::Bool, "a new random order every epoch").default(false),
            FieldSpec::new("scale", FieldKind::Float, "multiplies each value (1/255 maps bytes to [0, 1])").default(1.0),
            FieldSpec::new("mean", FieldKind::Float, "subtracted after scaling").default(0.0),
            FieldSpec::new("std", FieldKind::Float, "divides after subtracting the mean").default(1.0),
            FieldSpec::new("prefetch", FieldKind::Int, "batches prepared ahead").default(4),
            FieldSpec::new(
                "import",
                FieldKind::Table,
                "build the shard on first use: { kind = \"mnist\", src = \"dir\" } (see `singa data import`)",
            ),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let batch_size = f.usize("batch_size")?;
        if batch_size == 0 {
            return Err(Error::invalid("batch_size must be at least 1"));
        }
        let std = f.f32("std")?;
        if std == 0.0 {
            return Err(Error::invalid("std must not be 0"));
        }
        let (scale, mean) = (f.f32("scale")?, f.f32("mean")?);
        let import = match f.opt_table("import")? {
            None => None,
            Some(t) => Some((
                t.str("kind").map_err(|e| e.context("import"))?.to_string(),
                t.str("src").map_err(|e| e.context("import"))?.to_string(),
            )),
        };
        Ok(ShardData {
            path: f.str("path")?.to_string(),
            batch_size,
            shuffle: f.bool("shuffle")?,
            transform: Transform {
                scale: scale / std,
                shift: -mean / std,
            },
            import,
            prefetch: match f.usize("prefetch")? {
                p @ 1..=singa_data::loader::MAX_PREFETCH => p,
                p => {
                    return Err(Error::invalid(format!(
                        "prefetch must be between 1 and {}, got {p}",
                        singa_data::loader::MAX_PREFETCH
                    )))
                }
            },
            run: None,
        })
    }
}

fn resolve(base: &str, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() || base.is_empty() {
        p.to_path_buf()
    } else {
        Path::new(base).join(p)
    }
}

impl ShardData {
    fn open(&self, ctx: &SetupContext<'_>) -> Result<Arc<Shard>> {
        let path = resolve(ctx.base_dir.as_str(), &self.path);
        if !path.exists() {
            if let Some((kind, src)) = &self.import {
                let src = resolve(ctx.base_dir.as_str(), src);
                let dst = path.parent().unwrap_or(Path::new("."));
                let written = singa_data::import::import(kind, &src, dst)?;
                if !path.exists() {
                    let names: Vec<String> = written
                        .iter()
                        .map(|(p, _)| p.display().to_string())
                        .collect();
                    return Err(Error::io(
                        &path,
                        format!(
                            "not produced by the {kind} importer, which wrote {}",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(Arc::new(Shard::open(&path)?))
    }

    fn loader(&self, shard: Arc<Shard>, seed: u64, cursor: u64) -> Result<BatchLoader> {
        BatchLoader::new(
            shard,
            LoaderConfig {
                batch_size: self.batch_size,
                shuffle: self.shuffle,
                seed,
                transform: self.transform,
                cursor,
                prefetch: self.prefetch,
            },
        )
    }

    fn setup_impl(&mut self, ctx: &SetupContext<'_>) -> Result<RVec<TensorSpec>> {
        if !ctx.inputs.is_empty() {
            return Err(Error::shape(
                format!("layer {}", ctx.layer),
                "an input layer takes no source layers",
            ));
        }
        let shard = self.open(ctx)?;
        let mut dims = vec![self.batch_size];
        dims.extend(&shard.spec().shape);
        let shape = Shape::new(&dims)?;
        let loader = self.loader(shard.clone(), ctx.seed, 0)?;
        self.run = Some(Running {
            shard,
            loader,
            seed: ctx.seed,
            cursor: 0,
        });
        Ok(vec![
            TensorSpec::new("data", shape, DType::F32),
            TensorSpec::new("label", [self.batch_size], DType::I32),
        ]
        .into())
    }

    fn forward_impl(&mut self, outputs: &mut [Tensor]) -> Result<()> {
        let run = self
            .run
            .as_mut()
            .ok_or_else(|| Error::invalid("shard_data used before setup"))?;
        let batch = run.loader.next_batch()?;
        outputs[0].write_from(&batch.data)?;
        outputs[1].write_from(&batch.labels)?;
        run.cursor = batch.cursor;
        Ok(())
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
        self.forward_impl(outputs.as_mut_slice()).into()
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
        RResult::ROk(
            self.run
                .as_ref()
                .map(|r| vec![r.cursor])
                .unwrap_or_default()
                .into(),
        )
    }

    fn restore_state(&mut self, state: RSlice<'_, u64>) -> RResult<(), Error> {
        (|| {
            let [cursor] = state.as_slice() else {
                return Err(Error::invalid(format!(
                    "shard_data state has 1 value, got {}",
                    state.len()
                )));
            };
            let (shard, seed) = {
                let run = self
                    .run
                    .as_ref()
                    .ok_or_else(|| Error::invalid("shard_data used before setup"))?;
                (run.shard.clone(), run.seed)
            };
            // Stop the old loader before starting the new one.
            self.run = None;
            let loader = self.loader(shard.clone(), seed, *cursor)?;
            self.run = Some(Running {
                shard,
                loader,
                seed,
                cursor: *cursor,
            });
            Ok(())
        })()
        .into()
    }
}
