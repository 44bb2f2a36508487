//! ONNX export checked by ONNX Runtime: the MNIST example's MLP (trained briefly on the data
//! the repo ships) and a net of every built-in layer type that has an ONNX form, each against
//! singa's own outputs on the same test data; and the refusals, which name the layer.

use singa::config::JobConfig;
use singa::{Registry, Trainer};
use singa_tests::onnx::check_against_onnxruntime;
use singa_tests::{synthetic_images, tmpdir};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn trainer(job: &JobConfig, steps: usize) -> Trainer {
    let mut t = Trainer::new(job, &Registry::builtin(), &Default::default()).unwrap();
    for _ in 0..steps {
        t.train_step().unwrap();
    }
    t
}

#[test]
fn mnist_mlp_gives_singas_probabilities_in_onnxruntime() {
    let job = JobConfig::from_file(repo().join("examples/mnist-mlp/job.toml")).unwrap();
    let mut t = trainer(&job, 200);
    let dir = tmpdir("onnx-mnist");
    // 5 batches of 100: the first 500 test images, in one batch of 500 for ONNX Runtime.
    if let Some(report) = check_against_onnxruntime(&mut t, 5, &dir) {
        eprintln!("mnist-mlp: {report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A net of every exportable layer type: image preprocessing with a centre crop, grouped and
/// padded convolution, batch norm, the activations (leaky ReLU, the `activation` layer's
/// stanh, sigmoid, tanh), split, max and average pooling with padding and Caffe's rounding,
/// LRN, concat, dropout, inner products (transposed, without bias), slice, reshape, flatten,
/// and as outputs a softmax, an argsort and the loss's probabilities.
fn every_layer_job(data: &Path) -> String {
    let d = data.display();
    format!(
        r#"name = "every-layer"
train_steps = 20
test_steps = 2
seed = 5

[updater]
type = "sgd"
momentum = 0.9
learning_rate = 0.05

[[layer]]
name = "data"
type = "image_data"
include = "train"
path = "{d}/train.shard"
batch_size = 8
shuffle = true
crop = 9
scale = 0.0039
mean = [0.3, 0.2, 0.1]
std = [0.5, 0.4, 0.3]

[[layer]]
name = "data"
type = "image_data"
include = "test"
path = "{d}/test.shard"
batch_size = 8
crop = 9
scale = 0.0039
mean = [0.3, 0.2, 0.1]
std = [0.5, 0.4, 0.3]

[[layer]]
name = "conv"
type = "convolution"
srclayers = "data"
num_filters = 6
kernel_h = 3
kernel_w = 2
pad_h = 1
pad_w = 1
groups = 3

[[layer]]
name = "bn"
type = "batch_norm"
srclayers = "conv"

[[layer]]
name = "leaky"
type = "relu"
srclayers = "bn"
negative_slope = 0.1

[[layer]]
name = "split"
type = "split"
srclayers = "leaky"

[[layer]]
name = "max"
type = "pooling"
srclayers = "split:0"
kernel = 3
stride = 2
pad = 1

[[layer]]
name = "avg"
type = "pooling"
srclayers = "split:1"
pool = "avg"
kernel = 3
stride = 2
pad = 1

[[layer]]
name = "norm"
type = "lrn"
srclayers = "avg"
local_size = 3
alpha = 0.01
k = 2.0

[[layer]]
name = "join"
type = "concat"
srclayers = ["max", "norm"]

[[layer]]
name = "drop"
type = "dropout"
srclayers = "join"
dropout_ratio = 0.3

[[layer]]
name = "fc1"
type = "inner_product"
srclayers = "drop"
num_output = 16
transpose = true

[[layer]]
name = "squash"
type = "activation"
srclayers = "fc1"
function = "stanh"

[[layer]]
name = "halves"
type = "slice"
srclayers = "squash"
slice_points = [6]

[[layer]]
name = "sig"
type = "sigmoid"
srclayers = "halves:0"

[[layer]]
name = "th"
type = "tanh"
srclayers = "halves:1"

[[layer]]
name = "both"
type = "concat"
srclayers = ["sig", "th"]

[[layer]]
name = "square"
type = "reshape"
srclayers = "both"
shape = [0, 4, 4]

[[layer]]
name = "flat"
type = "flatten"
srclayers = "square"

[[layer]]
name = "fc2"
type = "inner_product"
srclayers = "flat"
num_output = 4
bias_term = false

[[layer]]
name = "probs"
type = "softmax"
srclayers = "fc2"

[[layer]]
name = "best"
type = "argsort"
srclayers = "fc2"
top_k = 2

[[layer]]
name = "loss"
type = "softmax_loss"
srclayers = ["fc2", "data:label"]

[[layer]]
name = "acc"
type = "accuracy"
srclayers = ["fc2", "data:label"]
"#
    )
}

#[test]
fn every_layer_type_gives_the_same_outputs_in_onnxruntime() {
    let dir = tmpdir("onnx-every-layer");
    synthetic_images(&dir.join("train.shard"), 64, 11, 1);
    synthetic_images(&dir.join("test.shard"), 32, 11, 2);
    let job = JobConfig::from_toml(&every_layer_job(&dir), Default::default()).unwrap();
    let mut t = trainer(&job, 20);
    if let Some(report) = check_against_onnxruntime(&mut t, 4, &dir) {
        eprintln!("every layer: {report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where Caffe's rounding drops a last window that would start in the padding, ONNX's shape
/// rule keeps it: such a pooling layer is refused, naming it, rather than exported wrong.
#[test]
fn a_pooling_that_onnx_would_size_otherwise_is_refused() {
    let dir = tmpdir("onnx-refused");
    synthetic_images(&dir.join("train.shard"), 16, 5, 1);
    synthetic_images(&dir.join("test.shard"), 8, 5, 2);
    let text = every_layer_job(&dir);
    // 5x5 images (no crop) make 5x6 after the 3x2 convolution; pooled with kernel 2, stride 2,
    // pad 1: Caffe makes 3x4, ONNX 4x4.
    let text = text.replace("crop = 9\n", "").replacen(
        "kernel = 3\nstride = 2\npad = 1",
        "kernel = 2\nstride = 2\npad = 1",
        1,
    );
    let job = JobConfig::from_toml(&text, Default::default()).unwrap();
    let t = trainer(&job, 0);
    let refused = singa_onnx::export(t.test_net().unwrap(), t.params(), &Default::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.contains("layer max has no exact ONNX form")
            && refused.contains("Caffe's rounding drops (3x4 outputs) and ONNX's keeps (4x4)"),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
