//! Helpers shared by the end-to-end tests: temporary folders and small synthetic data sets in
//! the MNIST file format.

use singa_core::rng::SplitMix64;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A fresh, empty folder under the system's temporary directory.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("singa-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes an IDX file of `u8` values.
pub fn write_idx(path: &Path, dims: &[u32], data: &[u8], gzip: bool) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        bytes = e.finish().unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// A learnable toy data set in MNIST's format: `side × side` images of 4 classes, class `c`
/// being a bright horizontal band at rows `2c, 2c+1` over noise. Writes the four IDX files
/// (gzip-compressed) into `dir`.
pub fn synthetic_mnist(dir: &Path, train: u32, test: u32, side: u32) {
    let mut rng = SplitMix64::new(42);
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let c = rng.below(4) as u32;
            labels.push(c as u8);
            for row in 0..side {
                for _ in 0..side {
                    let noise = rng.below(90) as u8;
                    let band = row / 2 == c;
                    images.push(if band { 160 + noise } else { noise });
                }
            }
        }
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &[n, side, side],
            &images,
            true,
        );
        write_idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            &[n],
            &labels,
            true,
        );
    }
}

/// A job file (TOML) for an MLP on the synthetic data in `data`, with the given extra
/// top-level settings, hidden layer width and dropout ratio.
pub fn mlp_job(data: &Path, top: &str, hidden: usize, dropout: f64) -> String {
    let d = data.display();
    format!(
        r#"
name = "e2e"
{top}

[device]
type = "cpu"
threads = 2

[updater]
type = "sgd"
momentum = 0.9
weight_decay = 1e-4
learning_rate = {{ type = "step", base = 0.05, gamma = 0.5, change_freq = 100 }}

[[layer]]
name = "data"
type = "shard_data"
include = "train"
path = "{d}/train.shard"
import = {{ kind = "mnist", src = "{d}" }}
batch_size = 32
shuffle = true
scale = 0.00392156862745098

[[layer]]
name = "data"
type = "shard_data"
include = "test"
path = "{d}/test.shard"
import = {{ kind = "mnist", src = "{d}" }}
batch_size = 50
scale = 0.00392156862745098

[[layer]]
name = "fc1"
type = "inner_product"
srclayers = "data"
num_output = {hidden}

[[layer]]
name = "act"
type = "stanh"
srclayers = "fc1"

[[layer]]
name = "drop"
type = "dropout"
srclayers = "act"
dropout_ratio = {dropout}

[[layer]]
name = "fc2"
type = "inner_product"
srclayers = "drop"
num_output = 4

[[layer]]
name = "loss"
type = "softmax_loss"
srclayers = ["fc2", "data:label"]
"#
    )
}
