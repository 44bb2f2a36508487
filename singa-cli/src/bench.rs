//! `singa bench`: training throughput of reference models, measured like the peer benchmarks
//! in `shared/peers` (warm-up steps, then timed windows; the median window is the result).

use crate::output::{out, outln};
use singa::cluster::StepHook;
use singa::config::{
    ClusterConfig, DeviceConfig, DeviceKind, JobConfig, LayerConfig, UpdaterConfig,
};
use singa::progress::thousands;
use singa::registry::Registry;
use singa::trainer::{TrainOptions, Trainer};
use singa_core::{Error, Fields, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What to measure.
pub struct BenchOptions {
    /// CPU threads.
    pub threads: usize,
    /// The device kind (CPU or CUDA GPU 0).
    pub device: DeviceKind,
    /// The precision of the products.
    pub precision: singa_core::Precision,
    /// Untimed steps first.
    pub warmup: u64,
    /// Timed windows.
    pub windows: usize,
    /// Steps per window.
    pub steps: u64,
    /// The model.
    pub model: Model,
    /// The folder with the MNIST IDX files (shards are built there on first use).
    pub data: PathBuf,
    /// The CIFAR-10 training shard for the convnet (`None`: synthetic images).
    pub cifar: Option<PathBuf>,
    /// The text of the recurrent models (its shards are built beside it on first use).
    pub text: PathBuf,
    /// Reads the process's allocation counter.
    pub allocations: fn() -> u64,
    /// Samples per step (over all workers).
    pub batch: usize,
    /// Workers and servers (`None`: one worker updating its own parameters).
    pub cluster: Option<ClusterConfig>,
    /// The `partition_dim` of every layer but the data and loss layers (1: model
    /// parallelism over the workers of a group).
    pub partition_dim: i32,
    /// The layer type in place of the models' ReLU layers (e.g. a plugin's activation).
    pub activation: String,
    /// The updater type in place of the model's (same fields, e.g. a plugin's copy of SGD);
    /// `sgd` leaves every model's own.
    pub updater: String,
    /// `clip_norm`, if any.
    pub clip_norm: Option<f32>,
    /// `[device] loss_scale` (`None`: the precision's default).
    pub loss_scale: Option<singa::config::LossScaling>,
}

/// The models of the peer benchmarks (`shared/peers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// 784-1000-500-10 on MNIST.
    Mlp,
    /// The CIFAR-10 "quick"-shaped convnet with 2×2 pools.
    Cnn,
    /// The character model of `examples/char-rnn` with GRU cells.
    Gru,
    /// The same with LSTM cells.
    Lstm,
}

/// The convnet of the peer benchmarks: conv5x5 3→32 pad 2, max-pool 2×2/2, ReLU, conv5x5
/// 32→32 pad 2, ReLU, max-pool 2×2/2, conv5x5 32→64 pad 2, ReLU, max-pool 2×2/2, inner
/// product 1024→10, softmax cross-entropy; plain SGD lr 0.01, batch 64, pixels / 255 − 0.5.
pub fn cnn_job(train: &std::path::Path, threads: usize, batch: usize) -> JobConfig {
    let conv = |name: &str, src: &str, filters: usize| {
        LayerConfig::new(name, "convolution")
            .src(src)
            .field("num_filters", filters)
            .field("kernel", 5)
            .field("pad", 2)
    };
    let layer = |name: &str, ty: &str, src: &str| LayerConfig::new(name, ty).src(src);
    let pool = |name: &str, src: &str| {
        layer(name, "pooling", src)
            .field("kernel", 2)
            .field("stride", 2)
    };
    JobConfig::new("bench-cnn")
        .train_steps(u64::MAX / 2)
        .display_freq(0)
        .device(DeviceConfig::cpu(threads))
        .updater(UpdaterConfig::sgd(0.01))
        .layer(
            LayerConfig::new("data", "image_data")
                .field("path", train.display().to_string())
                .field("batch_size", batch)
                .field("shuffle", true)
                .field("scale", 1.0 / 255.0)
                .field("mean", 0.5),
        )
        .layer(conv("conv1", "data", 32))
        .layer(pool("pool1", "conv1"))
        .layer(layer("relu1", "relu", "pool1"))
        .layer(conv("conv2", "relu1", 32))
        .layer(layer("relu2", "relu", "conv2"))
        .layer(pool("pool2", "relu2"))
        .layer(conv("conv3", "pool2", 64))
        .layer(layer("relu3", "relu", "conv3"))
        .layer(pool("pool3", "relu3"))
        .layer(layer("ip", "inner_product", "pool3").field("num_output", 10))
        .layer(
            LayerConfig::new("loss", "softmax_loss")
                .src("ip")
                .src("data:label"),
        )
}

/// Writes a shard of `n` random 32×32 RGB images with random labels (for the convnet
/// benchmark when CIFAR-10 is not at hand: the speed does not depend on the pixels).
pub fn synthetic_images(path: &std::path::Path, n: usize) -> Result<()> {
    let spec = singa_data::RecordSpec {
        dtype: singa_core::DType::U8,
        shape: vec![3, 32, 32],
        has_label: true,
    };
    let mut w = singa_data::ShardWriter::create(path, spec)?;
    let mut rng = singa_core::rng::SplitMix64::new(1);
    let mut pixels = vec![0u8; 3 * 32 * 32];
    for _ in 0..n {
        pixels.iter_mut().for_each(|p| *p = rng.next_u64() as u8);
        w.append(Some(rng.below(10) as i32), &pixels)?;
    }
    w.finish(&serde_json::json!({ "source": "synthetic", "classes": 10 }))?;
    Ok(())
}

/// The MLP of the peer benchmarks: 784-1000-500-10, ReLU, softmax cross-entropy, plain SGD
/// with learning rate 0.1, batch 64, MNIST scaled to [0, 1].
pub fn mlp_job(data: &std::path::Path, threads: usize, batch: usize) -> JobConfig {
    let import = Fields::new()
        .with("kind", "mnist")
        .with("src", data.display().to_string());
    let dense = |name: &str, src: &str, n: usize| {
        LayerConfig::new(name, "inner_product")
            .src(src)
            .field("num_output", n)
    };
    JobConfig::new("bench-mlp")
        .train_steps(u64::MAX / 2)
        .display_freq(0)
        .device(DeviceConfig::cpu(threads))
        .updater(UpdaterConfig::sgd(0.1))
        .layer(
            LayerConfig::new("data", "shard_data")
                .field("path", data.join("train.shard").display().to_string())
                .field("batch_size", batch)
                .field("shuffle", true)
                .field("scale", 1.0 / 255.0)
                .field("import", import),
        )
        .layer(dense("fc1", "data", 1000))
        .layer(LayerConfig::new("relu1", "relu").src("fc1"))
        .layer(dense("fc2", "relu1", 500))
        .layer(LayerConfig::new("relu2", "relu").src("fc2"))
        .layer(dense("fc3", "relu2", 10))
        .layer(
            LayerConfig::new("loss", "softmax_loss")
                .src("fc3")
                .src("data:label"),
        )
}

/// The character model of `examples/char-rnn` (and of `benchmarks/torch_rnn.py`): embedding
/// 65 → 64, two `cell` layers (`gru` or `lstm`) of 256 units unrolled over 50 characters,
/// linear 256 → 65, softmax cross-entropy, Adam with learning rate 0.002; `batch` streams of
/// the text, the state carried from batch to batch.
pub fn char_rnn_job(text: &std::path::Path, cell: &str, threads: usize, batch: usize) -> JobConfig {
    let import = Fields::new()
        .with("kind", "text")
        .with("src", text.display().to_string());
    let shard = text.with_file_name("train.shard");
    let recurrent = |name: &str, src: &str| {
        LayerConfig::new(name, cell)
            .src(src)
            .field("hidden_dim", 256)
            .unrolled()
    };
    JobConfig::new(&format!("bench-{cell}"))
        .bptt(50)
        .train_steps(u64::MAX / 2)
        .display_freq(0)
        .device(DeviceConfig::cpu(threads))
        .updater(UpdaterConfig {
            type_name: "adam".into(),
            ..UpdaterConfig::sgd(0.002)
        })
        .layer(
            LayerConfig::new("data", "text_data")
                .field("path", shard.display().to_string())
                .field("import", import)
                .field("batch_size", batch)
                .field("unroll_len", 50),
        )
        .layer(
            LayerConfig::new("embed", "embedding")
                .src("data")
                .field("vocab_size", 65)
                .field("feature_dim", 64),
        )
        .layer(recurrent("rnn1", "embed"))
        .layer(recurrent("rnn2", "rnn1"))
        .layer(
            LayerConfig::new("steps", "flatten")
                .src("rnn2")
                .field("axis", 0)
                .field("end_axis", 1),
        )
        .layer(
            LayerConfig::new("fc", "inner_product")
                .src("steps")
                .field("num_output", 65),
        )
        .layer(
            LayerConfig::new("loss", "softmax_loss")
                .src("fc")
                .src("data:label"),
        )
}

/// Runs the benchmark and prints its table; layer types are looked up in `registry`. Under
/// `mpirun` (several processes) rank 0 measures and prints the table, and every other rank
/// runs its workers and servers and prints the allocations of its warm steps.
pub fn run(opts: &BenchOptions, registry: &Registry) -> Result<()> {
    if opts.windows == 0 || opts.steps == 0 {
        return Err(Error::invalid("--windows and --steps must be at least 1"));
    }
    let (job, title) = bench_job(opts)?;
    match crate::train::launched_by_mpirun() {
        Some((size, _)) if size > 1 => {
            let count = opts.allocations;
            let first = opts.warmup;
            let last = opts.warmup + opts.windows as u64 * opts.steps - 1;
            let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
            let marks = Arc::clone(&seen);
            // From the start of the first timed step to the start of the last one.
            let hook: StepHook = Arc::new(move |step| {
                if step == first {
                    marks[0].store(count(), Ordering::Relaxed);
                } else if step == last {
                    marks[1].store(count(), Ordering::Relaxed);
                }
            });
            let read = |size: usize| {
                let mut job = job.clone();
                job.cluster.nprocs = size;
                Ok((job, registry.clone()))
            };
            let rank = crate::train::over_mpi(
                read,
                Some(opts.threads),
                Some(hook),
                |job, registry, base| measure(opts, job, &title, registry, base),
            )?;
            if rank != 0 {
                let allocs = seen[1].load(Ordering::Relaxed) - seen[0].load(Ordering::Relaxed);
                outln!(
                    "rank {rank}: {allocs} allocations in {} warm steps of its workers",
                    last - first
                );
            }
            Ok(())
        }
        _ => measure(opts, &job, &title, registry, TrainOptions::default()),
    }
}

/// The benchmark's job and title.
fn bench_job(opts: &BenchOptions) -> Result<(JobConfig, String)> {
    let (job, title) = match opts.model {
        Model::Mlp => (
            mlp_job(&opts.data, opts.threads, opts.batch),
            format!("MLP 784-1000-500-10, batch {}, SGD lr 0.1", opts.batch),
        ),
        Model::Cnn => {
            let (train, what) = match &opts.cifar {
                Some(path) => (path.clone(), "CIFAR-10"),
                None => (synthetic_shard()?, "synthetic images (no CIFAR-10 given)"),
            };
            (cnn_job(&train, opts.threads, opts.batch), format!("convnet conv5x5-32/pool/conv5x5-32/pool/conv5x5-64/pool/ip10, batch {}, SGD lr 0.01, {what}", opts.batch))
        }
        Model::Gru | Model::Lstm => {
            let cell = if opts.model == Model::Gru {
                "gru"
            } else {
                "lstm"
            };
            (
                char_rnn_job(&opts.text, cell, opts.threads, opts.batch),
                format!("char-rnn: embedding 64, 2 × {cell} 256 unrolled over 50 characters, fc 65, batch {} streams (a sample: 50 characters), Adam lr 0.002", opts.batch),
            )
        }
    };
    let (mut job, mut title) = (job, title);
    job.device.precision = opts.precision;
    job.device.kind = opts.device;
    if let Some(c) = &opts.cluster {
        job.cluster = c.clone();
    }
    if opts.partition_dim > 0 {
        // The input layers (no sources) and the loss read and score parts of the batch.
        let inner = |l: &LayerConfig| !l.srclayers.is_empty() && l.type_name != "softmax_loss";
        for layer in job.layers.iter_mut().filter(|l| inner(l)) {
            layer.partition_dim = opts.partition_dim;
        }
        title = format!(
            "{title}, layers split along dimension {}",
            opts.partition_dim
        );
    }
    for layer in job.layers.iter_mut().filter(|l| l.type_name == "relu") {
        layer.type_name = opts.activation.clone();
    }
    if opts.activation != "relu" {
        title = format!("{title}, {} in place of relu", opts.activation);
    }
    if let Some(norm) = opts.clip_norm {
        job.updater.clip.norm = Some(norm);
        title = format!("{title}, gradients clipped to norm {norm}");
    }
    if let Some(scaling) = opts.loss_scale {
        job.device.loss_scale = Some(scaling);
        title = format!("{title}, loss scale {scaling}");
    }
    // The recurrent models train with Adam: only a named updater replaces the model's.
    if opts.updater != "sgd" {
        title = format!(
            "{title}, {} in place of {}",
            opts.updater, job.updater.type_name
        );
        job.updater.type_name = opts.updater.clone();
    }
    Ok((job, title))
}

/// The synthetic images' shard, made once in the temporary directory and kept there: the same
/// path in every process, so that the ranks of an MPI job agree on the job. Written to a file
/// of this process's own and renamed, so ranks that make it at once do not clash.
fn synthetic_shard() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join("singa-bench");
    let path = dir.join("synthetic-6400.shard");
    if !path.exists() {
        let mine = dir.join(format!("synthetic-6400.{}.tmp", std::process::id()));
        synthetic_images(&mine, 6400)?;
        std::fs::rename(&mine, &path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(path)
}

/// Trains `job` for the warm-up and the timed windows and prints the table.
fn measure(
    opts: &BenchOptions,
    job: &JobConfig,
    title: &str,
    registry: &Registry,
    options: TrainOptions,
) -> Result<()> {
    let mut trainer = Trainer::new(job, registry, &options)?;
    let batch = trainer.samples_per_step() as f64;
    let device = trainer.device().info().description.into_string();
    outln!("singa bench: {title}, on {device}");
    if let Some(c) = trainer.cluster() {
        out!("{}", c.describe());
    }
    outln!(
        "protocol: {} warm-up steps, then {} windows of {} steps",
        opts.warmup,
        opts.windows,
        opts.steps
    );
    let (warmup, windows, steps, count) = (opts.warmup, opts.windows, opts.steps, opts.allocations);
    for _ in 0..warmup {
        trainer.train_step()?;
    }
    trainer.device().synchronize()?;
    let crossed = |t: &Trainer| t.cluster().map(|c| c.traffic()).unwrap_or_default();
    let crossed_before = crossed(&trainer);
    let mut measured = Vec::new();
    for _ in 0..windows {
        let a0 = count();
        let t0 = Instant::now();
        for _ in 0..steps {
            trainer.train_step()?;
        }
        // A GPU may still be running queued work: a window ends when the device is idle.
        trainer.device().synchronize()?;
        measured.push((t0.elapsed().as_secs_f64(), count() - a0));
    }
    outln!("\n| window | steps | seconds | samples/s | allocations/step |");
    outln!("| ---: | ---: | ---: | ---: | ---: |");
    let mut rates = Vec::new();
    for (i, (secs, allocs)) in measured.iter().enumerate() {
        let rate = steps as f64 * batch / secs;
        rates.push(rate);
        outln!(
            "| {} | {steps} | {secs:.3} | {} | {:.2} |",
            i + 1,
            thousands(rate),
            *allocs as f64 / steps as f64
        );
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    let crossed_after = crossed(&trainer);
    if crossed_after != crossed_before {
        let timed = (windows as u64 * steps) as f64;
        let engine = trainer.cluster().map_or("", |c| c.engine());
        let who = match engine {
            singa_comm::engines::MPI => "what rank 0 sent",
            _ => "what every rank sent",
        };
        outln!(
            "\nbetween processes ({engine}, {who}): {:.1} messages and {:.3} MB a step, and {:.1} control messages ({:.0} bytes)",
            (crossed_after.messages - crossed_before.messages) as f64 / timed,
            (crossed_after.bytes - crossed_before.bytes) as f64 / timed / 1e6,
            (crossed_after.control_messages - crossed_before.control_messages) as f64 / timed,
            (crossed_after.control_bytes - crossed_before.control_bytes) as f64 / timed,
        );
    }
    let metrics = trainer.train_metrics()?;
    let loss = metrics
        .iter()
        .find(|(k, _)| k == "loss")
        .map(|(_, v)| *v)
        .unwrap_or(f64::NAN);
    let median = rates[rates.len() / 2];
    let characters = match opts.model {
        Model::Gru | Model::Lstm => format!(" = {} characters/s", thousands(median * 50.0)),
        Model::Mlp | Model::Cnn => String::new(),
    };
    outln!(
        "\nmedian: {} samples/s{characters}   (mean training loss over all steps {loss:.4})",
        thousands(median)
    );
    Ok(())
}
