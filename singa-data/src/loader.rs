//! Batches from a shard, in a seeded shuffled order, prepared on a background thread.
//!
//! The order of epoch `e` is a permutation drawn from `(seed, e)`, so the whole stream is a
//! function of the seed and the number of records consumed: that number (the *cursor*) is all
//! a checkpoint needs to resume the data exactly where it stopped. Batch buffers circulate
//! between the loader thread and the consumer, so steady-state loading allocates nothing.

use crate::image::ImagePrep;
use crate::shard::Shard;
use singa_core::park::Waiter;
use singa_core::rng::{mix64, SplitMix64};
use singa_core::{Error, Result};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The most batches a loader prepares ahead.
pub const MAX_PREFETCH: usize = 64;

/// The most values in one batch (4 GiB of f32).
pub const MAX_BATCH_VALUES: usize = 1 << 30;

/// How stored values become the floats a net sees: `value · scale + shift`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    /// Multiplies each value.
    pub scale: f32,
    /// Added after scaling.
    pub shift: f32,
}

impl Transform {
    /// Values as stored.
    pub const IDENTITY: Transform = Transform {
        scale: 1.0,
        shift: 0.0,
    };

    /// `(value - mean) / std`.
    pub fn standardize(mean: f32, std: f32) -> Transform {
        Transform {
            scale: 1.0 / std,
            shift: -mean / std,
        }
    }
}

/// What to load and in which order.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Records per batch.
    pub batch_size: usize,
    /// Draw a new random order every epoch (else the stored order).
    pub shuffle: bool,
    /// Seed of the orders.
    pub seed: u64,
    /// Value transform (of records that are not images).
    pub transform: Transform,
    /// Image preparation (normalisation, crop, mirror); replaces `transform`.
    pub image: Option<ImagePrep>,
    /// Records already consumed: loading starts after them.
    pub cursor: u64,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Which part of each batch to read, of how many: the stream is cut into batches of
    /// `batch_size · parts` records and this loader reads records `part · batch_size ..
    /// (part + 1) · batch_size` of each, so the `parts` workers of a group together see
    /// exactly the batches one worker would. The cursor counts the records of whole batches.
    pub part: (usize, usize),
}

impl LoaderConfig {
    /// Sequential batches of `batch_size`, values as stored, starting at the beginning.
    pub fn new(batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            shuffle: false,
            seed: 0,
            transform: Transform::IDENTITY,
            image: None,
            cursor: 0,
            prefetch: 2,
            part: (0, 1),
        }
    }
}

/// One batch: `batch_size` records' values (row-major) and labels (−1 for unlabelled shards).
#[derive(Debug, Default)]
pub struct Batch {
    /// `batch_size × record size` values.
    pub data: Vec<f32>,
    /// `batch_size` labels.
    pub labels: Vec<i32>,
    /// The cursor after this batch: records consumed up to and including it.
    pub cursor: u64,
}

/// Loads batches on a background thread. Dropping it stops the thread.
pub struct BatchLoader {
    ready: Option<Receiver<Result<Batch>>>,
    spare: Option<SyncSender<Batch>>,
    current: Option<Batch>,
    thread: Option<JoinHandle<()>>,
    shard: Arc<Shard>,
    /// The consumer's thread, woken by the loader when a batch is ready.
    consumer: Arc<Waiter>,
    /// The loader's thread, woken by the consumer when it gives a buffer back.
    loader: Arc<Waiter>,
}

/// The order of records in `epoch`.
fn fill_order(order: &mut [u32], shuffle: bool, seed: u64, epoch: u64) {
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u32;
    }
    if shuffle {
        SplitMix64::new(mix64(seed ^ mix64(epoch))).shuffle(order);
    }
}

impl BatchLoader {
    /// Starts loading `shard` as `config` says.
    pub fn new(shard: Arc<Shard>, config: LoaderConfig) -> Result<BatchLoader> {
        let n = shard.len();
        if n == 0 {
            return Err(Error::data(shard.path(), 0, "the shard has no records"));
        }
        if config.batch_size == 0 {
            return Err(Error::invalid("batch size must be at least 1"));
        }
        let (part, parts) = config.part;
        if part >= parts {
            return Err(Error::invalid(format!(
                "part {part} of a batch cut into {parts} parts does not exist"
            )));
        }
        if n > u32::MAX as usize {
            return Err(Error::data(
                shard.path(),
                16,
                "more than 2^32 records per shard",
            ));
        }
        if config.prefetch > MAX_PREFETCH {
            return Err(Error::invalid(format!(
                "prefetch is at most {MAX_PREFETCH} batches, got {}",
                config.prefetch
            )));
        }
        let stored = shard.spec().numel();
        let numel = match &config.image {
            Some(prep) if prep.input_len() != stored => {
                return Err(Error::invalid(format!(
                    "image preparation expects records of {} values, the shard's have {stored}",
                    prep.input_len()
                )))
            }
            Some(prep) => prep.output_shape().iter().product(),
            None => stored,
        };
        if config
            .batch_size
            .checked_mul(numel)
            .is_none_or(|v| v > MAX_BATCH_VALUES)
        {
            return Err(Error::invalid(format!(
                "a batch of {} records of {numel} values exceeds {MAX_BATCH_VALUES} values",
                config.batch_size
            )));
        }
        let depth = config.prefetch.max(1);
        // Both channels hold every buffer, so a send never blocks: neither thread ever waits
        // in a channel, whose first blocking wait on a thread allocates (which could fall in
        // the middle of training); they park on `Waiter`s instead.
        let (ready_tx, ready_rx) = sync_channel::<Result<Batch>>(depth + 1);
        let (spare_tx, spare_rx) = sync_channel::<Batch>(depth + 1);
        for _ in 0..depth + 1 {
            spare_tx
                .send(Batch {
                    data: vec![0.0; config.batch_size * numel],
                    labels: vec![0; config.batch_size],
                    cursor: 0,
                })
                .expect("the spare channel has room for every buffer");
        }
        let worker_shard = shard.clone();
        let consumer: Arc<Waiter> = Arc::default();
        let wake = consumer.clone();
        let loader: Arc<Waiter> = Arc::default();
        let waiter = loader.clone();
        let thread = std::thread::Builder::new()
            .name("singa-loader".into())
            .spawn(move || {
                let shard = worker_shard;
                let mut order = vec![0u32; n];
                let mut pos = config.cursor;
                let mut epoch = pos / n as u64;
                fill_order(&mut order, config.shuffle, config.seed, epoch);
                let Transform { scale, shift } = config.transform;
                let mut raw = vec![0.0f32; if config.image.is_some() { stored } else { 0 }];
                let spare = || {
                    waiter.wait_for(None, || match spare_rx.try_recv() {
                        Ok(b) => Some(Some(b)),
                        Err(TryRecvError::Disconnected) => Some(None),
                        Err(TryRecvError::Empty) => None,
                    })
                };
                while let Some(Some(mut batch)) = spare() {
                    let mut result = Ok(());
                    let whole_batch_end = pos + (config.batch_size * parts) as u64;
                    pos += (config.batch_size * part) as u64;
                    for j in 0..config.batch_size {
                        if pos / n as u64 != epoch {
                            epoch = pos / n as u64;
                            fill_order(&mut order, config.shuffle, config.seed, epoch);
                        }
                        let idx = order[(pos % n as u64) as usize] as usize;
                        match shard.record(idx) {
                            Ok(r) => {
                                let out = &mut batch.data[j * numel..(j + 1) * numel];
                                match &config.image {
                                    Some(prep) => {
                                        shard.decode_values(r.values, &mut raw, 1.0, 0.0);
                                        prep.apply(&raw, out, config.seed, pos);
                                    }
                                    None => shard.decode_values(r.values, out, scale, shift),
                                }
                                batch.labels[j] = r.label.unwrap_or(-1);
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                        pos += 1;
                    }
                    pos = whole_batch_end;
                    batch.cursor = pos;
                    let failed = result.is_err();
                    let sent = ready_tx.send(result.map(|_| batch));
                    wake.wake();
                    if sent.is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::invalid(format!("cannot start the data loader thread: {e}")))?;
        Ok(BatchLoader {
            ready: Some(ready_rx),
            spare: Some(spare_tx),
            current: None,
            thread: Some(thread),
            shard,
            consumer,
            loader,
        })
    }

    /// The next batch. Its buffers are reused for a later batch once `next` is called again.
    pub fn next_batch(&mut self) -> Result<&Batch> {
        if let Some(prev) = self.current.take() {
            // The thread may have stopped after an error; then the buffer is simply dropped.
            let _ = self.spare.as_ref().map(|s| s.send(prev));
            self.loader.wake();
        }
        let ready = self.ready.as_ref().expect("loader used after drop");
        // Waiting parks this thread until the loader wakes it: a blocking channel receive may
        // allocate the first time it waits, which could fall in the middle of training.
        let batch = self
            .consumer
            .wait_for(None, || match ready.try_recv() {
                Ok(b) => Some(Ok(b)),
                Err(TryRecvError::Disconnected) => Some(Err(())),
                Err(TryRecvError::Empty) => None,
            })
            .unwrap_or(Err(()));
        let batch = batch.map_err(|_| {
            Error::data(
                self.shard.path(),
                0,
                "the data loader stopped after an earlier error",
            )
        })??;
        Ok(self.current.insert(batch))
    }

    /// The shard being read.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing both channels and waking the loader stops it wherever it is.
        self.ready.take();
        self.spare.take();
        self.loader.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
