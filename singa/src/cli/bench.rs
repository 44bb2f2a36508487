//! `singa bench`: training throughput of reference models, measured like the peer benchmarks
//! in `shared/peers` (warm-up steps, then timed windows; the median window is the result).

use singa::config::{DeviceConfig, JobConfig, LayerConfig, UpdaterConfig};
use singa::progress::thousands;
use singa::registry::Registry;
use singa::trainer::{TrainOptions, Trainer};
use singa_core::{Error, Fields, Result};
use std::path::PathBuf;
use std::time::Instant;

/// What to measure.
pub struct BenchOptions {
    /// CPU threads.
    pub threads: usize,
    /// Untimed steps first.
    pub warmup: u64,
    /// Timed windows.
    pub windows: usize,
    /// Steps per window.
    pub steps: u64,
    /// The folder with the MNIST IDX files (shards are built there on first use).
    pub data: PathBuf,
    /// Reads the process's allocation counter.
    pub allocations: fn() -> u64,
}

/// The MLP of the peer benchmarks: 784-1000-500-10, ReLU, softmax cross-entropy, plain SGD
/// with learning rate 0.1, batch 64, MNIST scaled to [0, 1].
pub fn mlp_job(data: &std::path::Path, threads: usize) -> JobConfig {
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
                .field("batch_size", 64)
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

/// Runs the benchmark and prints its table.
pub fn run(opts: &BenchOptions) -> Result<()> {
    if opts.windows == 0 || opts.steps == 0 {
        return Err(Error::invalid("--windows and --steps must be at least 1"));
    }
    let job = mlp_job(&opts.data, opts.threads);
    let mut trainer = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default())?;
    let batch = trainer.train_net().batch_size() as f64;
    let device = trainer.device().info().description.into_string();
    println!("singa bench: MLP 784-1000-500-10, batch 64, SGD lr 0.1, on {device}");
    println!(
        "protocol: {} warm-up steps, then {} windows of {} steps",
        opts.warmup, opts.windows, opts.steps
    );
    let (warmup, windows, steps, count) = (opts.warmup, opts.windows, opts.steps, opts.allocations);
    for _ in 0..warmup {
        trainer.train_step()?;
    }
    let mut measured = Vec::new();
    for _ in 0..windows {
        let a0 = count();
        let t0 = Instant::now();
        for _ in 0..steps {
            trainer.train_step()?;
        }
        measured.push((t0.elapsed().as_secs_f64(), count() - a0));
    }
    println!("\n| window | steps | seconds | samples/s | allocations/step |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let mut rates = Vec::new();
    for (i, (secs, allocs)) in measured.iter().enumerate() {
        let rate = steps as f64 * batch / secs;
        rates.push(rate);
        println!(
            "| {} | {steps} | {secs:.3} | {} | {:.2} |",
            i + 1,
            thousands(rate),
            *allocs as f64 / steps as f64
        );
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    let metrics = trainer.train_metrics()?;
    let loss = metrics
        .iter()
        .find(|(k, _)| k == "loss")
        .map(|(_, v)| *v)
        .unwrap_or(f64::NAN);
    println!(
        "\nmedian: {} samples/s   (mean training loss over all steps {loss:.4})",
        thousands(rates[rates.len() / 2])
    );
    Ok(())
}
