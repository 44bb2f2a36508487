//! `text_data`: character ids for recurrent models, in batches of independent streams.
//!
//! The text of a shard made by `singa data import text` is cut into `batch_size` streams of
//! equal length, stream `b` starting at `b · length / batch_size` (char-rnn's layout). Each
//! batch holds the next `unroll_len` ids of every stream (`data`, `[batch, unroll_len]`, i32)
//! and the ids one position later (`label`, the characters to predict). Consecutive batches
//! continue each stream where the last one stopped, so a recurrent layer can carry its hidden
//! state from one batch to the next; after the last whole batch of an epoch every stream starts
//! again from its beginning. The number of batches read is the layer's state, saved in
//! checkpoints.
//!
//! The batch is split over a group's workers by streams: worker `i` of `n` reads streams
//! `i · batch_size / n ..`.

use super::{import_field, open_shard};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DType, Error, FieldKind, FieldSpec, Fields, Layer, LayerDef, ParamFactoryMut, Phase, Result,
    SetupContext, Tensor, TensorSpec,
};

/// Character ids in streams (see the module documentation).
pub struct TextData {
    path: String,
    import: Option<(String, String)>,
    batch_size: usize,
    unroll_len: usize,
    run: Option<Streams>,
}

/// The streams of a set-up layer.
struct Streams {
    ids: Vec<u32>,
    /// This worker's first stream and its number of streams.
    first: usize,
    count: usize,
    /// Ids per stream.
    stream_len: usize,
    /// Batches per epoch.
    per_epoch: u64,
    /// Batches read so far.
    batches: u64,
    /// The next batch, prepared in place (no allocation per step).
    data: Vec<i32>,
    label: Vec<i32>,
}

impl LayerDef for TextData {
    const TYPE: &'static str = "text_data";
    const DOC: &'static str = "Character ids from a text shard (`singa data import text`) for recurrent models: outputs `data` ([batch_size, unroll_len] i32 ids) and `label` (the ids one position later), each batch continuing `batch_size` independent streams of the text.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("path", FieldKind::Str, "the text shard (relative to the job file)")
                .required(),
            FieldSpec::new("batch_size", FieldKind::Int, "streams per batch").required(),
            FieldSpec::new(
                "unroll_len",
                FieldKind::Int,
                "ids of each stream per batch (the steps a recurrent net is unrolled for)",
            )
            .required(),
            FieldSpec::new(
                "import",
                FieldKind::Table,
                "build the shards on first use: { kind = \"text\", src = \"file.txt\" } (see `singa data import`)",
            ),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let batch_size = f.usize("batch_size")?;
        let unroll_len = f.usize("unroll_len")?;
        if batch_size == 0 || unroll_len == 0 {
            return Err(Error::invalid(
                "batch_size and unroll_len must be at least 1",
            ));
        }
        Ok(TextData {
            path: f.str("path")?.to_string(),
            import: import_field(f)?,
            batch_size,
            unroll_len,
            run: None,
        })
    }
}

impl TextData {
    fn setup_impl(&mut self, ctx: &SetupContext<'_>) -> Result<RVec<TensorSpec>> {
        let shard = open_shard(ctx, &self.path, self.import.as_ref())?;
        let text = singa_data::import::read_text(&shard)?;
        let parts = ctx.num_partitions.max(1) as usize;
        let (b, u) = (self.batch_size, self.unroll_len);
        let context = || format!("layer {}", ctx.layer);
        if !b.is_multiple_of(parts) {
            return Err(Error::shape(
                context(),
                format!("{b} streams cannot be split evenly over {parts} workers"),
            ));
        }
        let stream_len = text.ids.len() / b;
        if stream_len < u + 1 {
            return Err(Error::shape(
                context(),
                format!(
                    "{} has {} ids: too few for {b} streams of at least {} (unroll_len + 1)",
                    shard.path().display(),
                    text.ids.len(),
                    u + 1
                ),
            ));
        }
        let count = b / parts;
        self.run = Some(Streams {
            ids: text.ids,
            first: ctx.partition_id as usize * count,
            count,
            stream_len,
            per_epoch: ((stream_len - 1) / u) as u64,
            batches: 0,
            data: vec![0; count * u],
            label: vec![0; count * u],
        });
        Ok(vec![
            TensorSpec::new("data", [count, u], DType::I32),
            TensorSpec::new("label", [count, u], DType::I32),
        ]
        .into())
    }

    fn streams(&mut self) -> Result<&mut Streams> {
        self.run
            .as_mut()
            .ok_or_else(|| Error::invalid("text_data used before setup"))
    }

    /// Continues after `state[0]` batches.
    fn restore(&mut self, state: &[u64]) -> Result<()> {
        self.streams()?.batches = crate::single_state("text_data", state)?;
        Ok(())
    }

    fn next(&mut self, data: &mut Tensor, label: &mut Tensor) -> Result<()> {
        let u = self.unroll_len;
        let s = self.streams()?;
        let at = (s.batches % s.per_epoch) as usize * u;
        for j in 0..s.count {
            let start = (s.first + j) * s.stream_len + at;
            for t in 0..u {
                s.data[j * u + t] = s.ids[start + t] as i32;
                s.label[j * u + t] = s.ids[start + t + 1] as i32;
            }
        }
        s.batches += 1;
        data.write_from(&s.data)?;
        label.write_from(&s.label)
    }
}

impl crate::capability::Sequences for TextData {
    fn next_batch_restarts(&self) -> bool {
        self.run
            .as_ref()
            .is_some_and(|s| s.batches > 0 && s.batches % s.per_epoch == 0)
    }
}

impl Layer for TextData {
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
            return RResult::RErr(Error::invalid("text_data has two outputs"));
        };
        self.next(data, label).into()
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
        let state = self
            .run
            .as_ref()
            .map(|s| vec![s.batches])
            .unwrap_or_default();
        RResult::ROk(state.into())
    }

    fn restore_state(&mut self, state: RSlice<'_, u64>) -> RResult<(), Error> {
        self.restore(state.as_slice()).into()
    }
}
