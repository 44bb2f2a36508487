//! The job of `job.toml`, built with the builder API (shared by `main.rs` and the test that
//! checks the two describe the same job).

use singa::config::{DeviceConfig, JobConfig, LayerConfig, LrConfig, UpdaterConfig};
use singa_core::{Fields, Phase};
use std::path::Path;

/// The MNIST MLP 784-1000-500-10, reading (and on first use building) shards in `data`.
pub fn job(data: &Path) -> JobConfig {
    let input = |phase: Phase, split: &str, batch: usize| {
        let layer = LayerConfig::new("data", "shard_data")
            .include(phase)
            .field(
                "path",
                data.join(format!("{split}.shard")).display().to_string(),
            )
            .field(
                "import",
                Fields::new()
                    .with("kind", "mnist")
                    .with("src", data.display().to_string()),
            )
            .field("batch_size", batch)
            .field("scale", 1.0 / 255.0);
        if phase == Phase::TRAIN {
            layer.field("shuffle", true)
        } else {
            layer
        }
    };
    let dense = |name: &str, src: &str, n: usize| {
        LayerConfig::new(name, "inner_product")
            .src(src)
            .field("num_output", n)
    };
    JobConfig::new("mnist-mlp")
        .train_steps(9400)
        .display_freq(500)
        .test(2000, 100)
        .checkpoint_freq(3000)
        .seed(1)
        .device(DeviceConfig::cpu(2))
        .updater(
            UpdaterConfig::sgd(0.05)
                .momentum(0.9)
                .learning_rate(LrConfig::step(0.05, 0.5, 3000)),
        )
        .layer(input(Phase::TRAIN, "train", 64))
        .layer(input(Phase::TEST, "test", 100))
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
