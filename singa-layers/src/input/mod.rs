//! Input layers: where batches enter the net.
//!
//! Both read a shard through a [`BatchLoader`] (a background thread, a seeded order) and keep
//! the number of records consumed as their state, so a checkpoint resumes the data exactly.

mod image_data;
mod shard_data;
mod text_data;

pub use image_data::Images;
pub use shard_data::Values;
pub use text_data::TextData;

use crate::operator::{Describe, Operator, Preprocessing};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DType, Error, FieldKind, FieldSpec, Fields, Layer, LayerDef, ParamFactoryMut, Phase, Result,
    SetupContext, Shape, Tensor, TensorSpec,
};
use singa_data::{BatchLoader, LoaderConfig, Shard};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads batches from a shard (SINGA's `ShardData` with its parser): outputs `data`, the
/// records as `f32` (`(value · scale − mean) / std`, e.g. MNIST pixels scaled to [0, 1]), and
/// `label`, the `i32` labels.
pub type ShardData = Input<Values>;

/// Reads images from a shard of `[channels, height, width]` records (SINGA's image parser),
/// normalised, randomly cropped and mirrored in training and centre-cropped in testing: see
/// [`Images`].
pub type ImageData = Input<Images>;

/// How an input layer turns a shard's records into its `data` output.
pub trait Records: Send + Sync + Sized + 'static {
    /// The layer type's name in job files.
    const TYPE: &'static str;
    /// One paragraph of help.
    const DOC: &'static str;
    /// The fields beyond those every input layer has.
    fn fields() -> Vec<FieldSpec>;
    /// Builds it from the layer's validated fields.
    fn new(f: &Fields) -> Result<Self>;
    /// How the loader prepares `shard`'s records (its batch size, order and seed are set by
    /// the layer), and the shape of one prepared record.
    fn prepare(&self, ctx: &SetupContext<'_>, shard: &Shard) -> Result<(LoaderConfig, Vec<usize>)>;
    /// How stored values become the data output in testing.
    fn preprocessing(&self) -> Preprocessing;
}

/// An input layer: batches of a shard, prepared by `R`, as the outputs `data` (f32) and `label`
/// (i32). Batches are made on a background thread in a seeded order; the position in the data
/// is the layer's state, saved in checkpoints.
pub struct Input<R> {
    source: Source,
    records: R,
}

impl<R: Records> LayerDef for Input<R> {
    const TYPE: &'static str = R::TYPE;
    const DOC: &'static str = R::DOC;

    fn fields() -> Vec<FieldSpec> {
        let mut f = source_fields();
        f.extend(R::fields());
        f
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(Input {
            source: Source::new(R::TYPE, f)?,
            records: R::new(f)?,
        })
    }
}

impl<R: Records> Input<R> {
    fn setup_impl(&mut self, ctx: &SetupContext<'_>) -> Result<RVec<TensorSpec>> {
        let shard = self.source.open(ctx)?;
        let (config, record) = self.records.prepare(ctx, &shard)?;
        let (part, parts) = (
            ctx.partition_id as usize,
            ctx.num_partitions.max(1) as usize,
        );
        let whole = self.source.batch_size;
        if !whole.is_multiple_of(parts) {
            return Err(Error::shape(
                format!("layer {}", ctx.layer),
                format!("a batch of {whole} records cannot be split evenly over {parts} workers"),
            ));
        }
        let batch = whole / parts;
        let mut dims = vec![batch];
        dims.extend(record);
        let shape = Shape::new(&dims)?;
        let config = LoaderConfig {
            part: (part, parts),
            ..config
        };
        self.source.start(shard, ctx.seed, batch, config)?;
        Ok(vec![
            TensorSpec::new("data", shape, DType::F32),
            TensorSpec::new("label", [batch], DType::I32),
        ]
        .into())
    }
}

impl<R: Records> Describe for Input<R> {
    fn operator(&self) -> Option<Operator> {
        self.source.run.as_ref()?;
        Some(Operator::Input(self.records.preprocessing()))
    }
}

impl<R: Records> Layer for Input<R> {
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
            return RResult::RErr(Error::invalid(format!("{} has two outputs", R::TYPE)));
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

/// The fields every input layer has.
fn source_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::new("path", FieldKind::Str, "the shard file (relative to the job file)").required(),
        FieldSpec::new("batch_size", FieldKind::Int, "records per batch").required(),
        FieldSpec::new("shuffle", FieldKind::Bool, "a new random order every epoch").default(false),
        FieldSpec::new("prefetch", FieldKind::Int, "batches prepared ahead").default(4),
        FieldSpec::new(
            "import",
            FieldKind::Table,
            "build the shard on first use: { kind = \"mnist\", src = \"dir\" } (see `singa data import`)",
        ),
    ]
}

/// Opens an input layer's shard at `path` (relative to the job file), importing it first with
/// `import` (kind, source) if it does not exist.
fn open_shard(
    ctx: &SetupContext<'_>,
    path: &str,
    import: Option<&(String, String)>,
) -> Result<Arc<Shard>> {
    if !ctx.inputs.is_empty() {
        return Err(Error::shape(
            format!("layer {}", ctx.layer),
            "an input layer takes no source layers",
        ));
    }
    let path = resolve(ctx.base_dir.as_str(), path);
    if !path.exists() {
        if let Some((kind, src)) = import {
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

/// The `import` field of an input layer: (kind, source).
fn import_field(f: &Fields) -> Result<Option<(String, String)>> {
    Ok(match f.opt_table("import")? {
        None => None,
        Some(t) => Some((
            t.str("kind").map_err(|e| e.context("import"))?.to_string(),
            t.str("src").map_err(|e| e.context("import"))?.to_string(),
        )),
    })
}

/// A shard read in batches: the part of an input layer that does not depend on what the
/// records are.
struct Source {
    /// The layer type, for messages.
    ty: &'static str,
    path: String,
    batch_size: usize,
    shuffle: bool,
    import: Option<(String, String)>,
    prefetch: usize,
    run: Option<Running>,
}

struct Running {
    shard: Arc<Shard>,
    /// How the loader was started (its cursor aside).
    config: LoaderConfig,
    loader: BatchLoader,
    /// Records consumed so far.
    cursor: u64,
}

fn resolve(base: &str, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() || base.is_empty() {
        p.to_path_buf()
    } else {
        Path::new(base).join(p)
    }
}

impl Source {
    fn new(ty: &'static str, f: &Fields) -> Result<Source> {
        let batch_size = f.usize("batch_size")?;
        if batch_size == 0 {
            return Err(Error::invalid("batch_size must be at least 1"));
        }
        let import = import_field(f)?;
        let prefetch = match f.usize("prefetch")? {
            p @ 1..=singa_data::loader::MAX_PREFETCH => p,
            p => {
                return Err(Error::invalid(format!(
                    "prefetch must be between 1 and {}, got {p}",
                    singa_data::loader::MAX_PREFETCH
                )))
            }
        };
        Ok(Source {
            ty,
            path: f.str("path")?.to_string(),
            batch_size,
            shuffle: f.bool("shuffle")?,
            import,
            prefetch,
            run: None,
        })
    }

    /// Opens the shard, importing it first if it does not exist and the layer says how.
    fn open(&self, ctx: &SetupContext<'_>) -> Result<Arc<Shard>> {
        open_shard(ctx, &self.path, self.import.as_ref())
    }

    /// Starts loading `shard` from its beginning, `batch_size` records a batch; `config` says
    /// how records become values and which part of each batch to read (its order, seed and
    /// prefetch are this source's).
    fn start(
        &mut self,
        shard: Arc<Shard>,
        seed: u64,
        batch_size: usize,
        config: LoaderConfig,
    ) -> Result<()> {
        let config = LoaderConfig {
            batch_size,
            shuffle: self.shuffle,
            seed,
            cursor: 0,
            prefetch: self.prefetch,
            ..config
        };
        let loader = BatchLoader::new(shard.clone(), config.clone())?;
        self.run = Some(Running {
            shard,
            config,
            loader,
            cursor: 0,
        });
        Ok(())
    }

    /// Writes the next batch into `data` and `label`.
    fn next(&mut self, data: &mut Tensor, label: &mut Tensor) -> Result<()> {
        let ty = self.ty;
        let run = self
            .run
            .as_mut()
            .ok_or_else(|| Error::invalid(format!("{ty} used before setup")))?;
        let batch = run.loader.next_batch()?;
        data.write_from(&batch.data)?;
        label.write_from(&batch.labels)?;
        run.cursor = batch.cursor;
        Ok(())
    }

    fn state(&self) -> Vec<u64> {
        self.run
            .as_ref()
            .map(|r| vec![r.cursor])
            .unwrap_or_default()
    }

    /// Continues after `state[0]` records.
    fn restore(&mut self, state: &[u64]) -> Result<()> {
        let ty = self.ty;
        let cursor = crate::single_state(ty, state)?;
        let run = self
            .run
            .take()
            .ok_or_else(|| Error::invalid(format!("{ty} used before setup")))?;
        let Running {
            shard,
            config,
            loader,
            ..
        } = run;
        // The old loader thread stops before the new one starts.
        drop(loader);
        let config = LoaderConfig { cursor, ..config };
        let loader = BatchLoader::new(shard.clone(), config.clone())?;
        self.run = Some(Running {
            shard,
            config: LoaderConfig {
                cursor: 0,
                ..config
            },
            loader,
            cursor,
        });
        Ok(())
    }
}
