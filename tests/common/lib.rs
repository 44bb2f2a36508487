//! Helpers shared by the end-to-end tests: temporary folders and small synthetic data sets in
//! the MNIST file format, and building the plugin crates the tests load.

pub mod onnx;

use singa_core::rng::SplitMix64;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

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

/// The train and test input layers (`data`, shuffled batches of `batch` for training, 50 for
/// tests, pixels scaled to [0, 1]) of the synthetic MNIST files in `dir`, as job-file text.
pub fn mnist_data_layers(dir: &Path, batch: usize) -> String {
    let d = dir.display();
    format!(
        r#"
[[layer]]
name = "data"
type = "shard_data"
include = "train"
path = "{d}/train.shard"
import = {{ kind = "mnist", src = "{d}" }}
batch_size = {batch}
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
"#
    )
}

/// A job file (TOML) for an MLP on the synthetic data in `data`, with the given extra
/// top-level settings, hidden layer width and dropout ratio.
pub fn mlp_job(data: &Path, top: &str, hidden: usize, dropout: f64) -> String {
    let data = mnist_data_layers(data, 32);
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

{data}
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

/// A learnable toy image set as a shard: `n` RGB images `side × side` of 4 classes, class `c`
/// brightening channel `c % 3` in quadrant `c` over noise.
pub fn synthetic_images(path: &Path, n: usize, side: usize, seed: u64) {
    let spec = singa_data::RecordSpec {
        dtype: singa_core::DType::U8,
        shape: vec![3, side, side],
        has_label: true,
    };
    let mut w = singa_data::ShardWriter::create(path, spec).unwrap();
    let mut rng = SplitMix64::new(seed);
    let half = side / 2;
    for _ in 0..n {
        let c = rng.below(4) as usize;
        let mut px = vec![0u8; 3 * side * side];
        for (i, p) in px.iter_mut().enumerate() {
            let (ch, y, x) = (i / (side * side), (i / side) % side, i % side);
            let inside = (y / half.max(1)) * 2 + (x / half.max(1)) == c;
            *p = (rng.below(80) + if inside && ch == c % 3 { 150 } else { 0 }) as u8;
        }
        w.append(Some(c as i32), &px).unwrap();
    }
    w.finish(&serde_json::json!({ "source": "synthetic" }))
        .unwrap();
}

/// A small convnet job on the shards `train.shard` and `test.shard` in `data`: random crops and
/// mirrors, convolution, batch norm, ReLU, max pooling, LRN, concat of two branches, and a
/// softmax loss with a top-2 accuracy; `top` holds the job's top-level settings.
pub fn convnet_job(data: &Path, top: &str) -> String {
    let d = data.display();
    format!(
        r#"name = "convnet"
{top}
test_steps = 2
seed = 3

[updater]
type = "nesterov"
momentum = 0.9
weight_decay = 0.0001
learning_rate = {{ type = "cosine", base = 0.05, final = 0.001, change_freq = 40, warmup = 5 }}

[[layer]]
name = "data"
type = "image_data"
include = "train"
path = "{d}/train.shard"
batch_size = 8
shuffle = true
crop = 8
pad = 1
mirror = true
scale = 0.0039
mean = [0.3, 0.3, 0.3]

[[layer]]
name = "data"
type = "image_data"
include = "test"
path = "{d}/test.shard"
batch_size = 8
scale = 0.0039
mean = [0.3, 0.3, 0.3]

[[layer]]
name = "conv"
type = "convolution"
srclayers = "data"
num_filters = 6
kernel = 3
pad = 1
bias_term = false

[[layer]]
name = "bn"
type = "batch_norm"
srclayers = "conv"

[[layer]]
name = "relu"
type = "relu"
srclayers = "bn"

[[layer]]
name = "split"
type = "split"
srclayers = "relu"

[[layer]]
name = "pool"
type = "pooling"
srclayers = "split:0"
kernel = 2
stride = 2

[[layer]]
name = "avg"
type = "pooling"
srclayers = "split:1"
pool = "avg"
kernel = 2
stride = 2

[[layer]]
name = "norm"
type = "lrn"
srclayers = "avg"
local_size = 3
alpha = 0.001

[[layer]]
name = "join"
type = "concat"
srclayers = ["pool", "norm"]

[[layer]]
name = "flat"
type = "flatten"
srclayers = "join"

[[layer]]
name = "fc"
type = "inner_product"
srclayers = "flat"
num_output = 4

[[layer]]
name = "loss"
type = "softmax_loss"
srclayers = ["fc", "data:label"]

[[layer]]
name = "top2"
type = "accuracy"
srclayers = ["fc", "data:label"]
top_k = 2
"#
    )
}

/// Every parameter of a trainer by name, with its values.
pub fn param_values(t: &singa::Trainer) -> Vec<(String, Vec<f32>)> {
    t.params()
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.value.to_vec::<f32>().unwrap()))
        .collect()
}

/// The largest difference between two sets of parameters, relative to the values' size.
pub fn max_difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs() / (1.0 + x.abs()));
        }
    }
    worst
}

/// The metric `name` among `metrics` (panics if it is missing).
pub fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
    metrics
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no metric {name} in {metrics:?}"))
        .1
}

/// The folder cargo builds into for the profile these tests were built with.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/plugins-<hash>
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds the workspace package `package` (a plugin, or the `singa` binary) with the same
/// profile as these tests and returns what it built. `cargo test` builds a cdylib's tests,
/// not the library itself, hence this.
pub fn build(package: &str, artifact: &str) -> PathBuf {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = profile_dir();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", package, "--target-dir"])
        .arg(dir.parent().unwrap());
    if dir.file_name().unwrap() == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "cargo build -p {package} failed");
    let path = dir.join(artifact);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Builds the plugin crate `package` and returns its library.
pub fn plugin(package: &str) -> PathBuf {
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    build(package, &file)
}

/// Builds the `singa` command and returns it.
pub fn singa_binary() -> PathBuf {
    build(
        "singa-cli",
        &format!("singa{}", std::env::consts::EXE_SUFFIX),
    )
}

/// A character model over the first 40,000 characters of tiny-shakespeare (shipped in
/// `data/text`; they use 58 of its 65 characters), with a recurrent cell of type `cell`
/// unrolled over 8 steps for BPTT, as a job file's text.
pub fn char_job(dir: &Path, cell: &str, top: &str) -> String {
    let text = dir.join("text.txt");
    if !text.exists() {
        let all = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/text/tinyshakespeare.txt"),
        )
        .unwrap();
        std::fs::write(&text, all.chars().take(40_000).collect::<String>()).unwrap();
    }
    let d = dir.display();
    format!(
        r#"
name = "char-{cell}"
algorithm = "bptt"
unroll_len = 8
{top}

[device]
type = "cpu"
threads = 2

[updater]
type = "adam"
learning_rate = {{ type = "fixed", base = 0.01 }}

[[layer]]
name = "data"
type = "text_data"
include = "train"
path = "{d}/train.shard"
import = {{ kind = "text", src = "{d}/text.txt" }}
batch_size = 8
unroll_len = 8

[[layer]]
name = "data"
type = "text_data"
include = "test"
path = "{d}/valid.shard"
import = {{ kind = "text", src = "{d}/text.txt" }}
batch_size = 8
unroll_len = 8

[[layer]]
name = "embed"
type = "embedding"
srclayers = "data"
vocab_size = 58
feature_dim = 16

[[layer]]
name = "rnn"
type = "{cell}"
srclayers = "embed"
hidden_dim = 32
unroll = true

[[layer]]
name = "steps"
type = "flatten"
srclayers = "rnn"
axis = 0
end_axis = 1

[[layer]]
name = "fc"
type = "inner_product"
srclayers = "steps"
num_output = 58

[[layer]]
name = "loss"
type = "softmax_loss"
srclayers = ["fc", "data:label"]
"#
    )
}

/// An RBM job (CD) on the synthetic data in `dir`: `below` are layers between the data and
/// the RBM (whose visible layer reads `input`), `top` extra top-level settings; a job file's
/// text.
pub fn rbm_job_text(dir: &Path, top: &str, below: &str, input: &str) -> String {
    let data = mnist_data_layers(dir, 20);
    format!(
        r#"
name = "rbm"
algorithm = "cd"
cd_k = 1
{top}

[device]
type = "cpu"
threads = 2

[updater]
type = "sgd"
momentum = 0.9
weight_decay = 2e-4
learning_rate = 0.1

{data}{below}
[[layer]]
name = "vis"
type = "rbm_vis"
srclayers = ["{input}", "hid"]

[[layer]]
name = "hid"
type = "rbm_hid"
srclayers = "vis"
hdim = 16
"#
    )
}
