//! Once warmed up, a training step allocates nothing: every tensor, packing buffer and data
//! batch is reused. Counted with a global allocator that counts, on the MLP of the benchmark
//! (784-1000-500-10, batch 64) over synthetic MNIST-shaped data, and on a convnet with every
//! image layer (augmented image input, convolution, batch norm, pooling, LRN, split, concat,
//! flatten, top-k accuracy), both also with bf16 products, on the MLP trained by two
//! workers and two servers, with loss scaling too, and on a character model trained with BPTT.

use singa::config::JobConfig;
use singa::trainer::{TrainOptions, Trainer};
use singa::Registry;
use singa_tests::{synthetic_mnist, tmpdir};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations so far, and the large blocks the CPU device maps itself.
fn allocated() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed) + singa_cpu::memory::mapped_blocks()
}

/// Allocations over `steps` training steps after `warmup` steps.
fn allocations(trainer: &mut Trainer, warmup: usize, steps: usize) -> u64 {
    for _ in 0..warmup {
        trainer.train_step().unwrap();
    }
    let before = allocated();
    for _ in 0..steps {
        trainer.train_step().unwrap();
    }
    allocated() - before
}

/// One test runs the three checks in turn: the counter is global, and the test harness
/// allocates on its own thread whenever another test ends.
#[test]
fn warm_training_steps_allocate_nothing() {
    the_loader_waiting_for_the_consumer_allocates_nothing();
    a_warm_mlp_step_allocates_nothing();
    a_warm_convnet_step_allocates_nothing();
    a_warm_bptt_step_allocates_nothing();
}

/// A character model trained with BPTT (embedding, an LSTM and a GRU unrolled over 6 steps,
/// their state carried between batches), with gradients clipped by their global norm.
fn a_warm_bptt_step_allocates_nothing() {
    let dir = tmpdir("alloc-bptt");
    let text: String = (0..20_000)
        .map(|i| ["to be ", "or not ", "that is\n"][i % 3])
        .collect();
    std::fs::write(dir.join("text.txt"), text).unwrap();
    let d = dir.display();
    let job = format!(
        r#"
name = "alloc-bptt"
algorithm = "bptt"
unroll_len = 6
train_steps = 1000000
[device]
threads = 2
[updater]
type = "adam"
learning_rate = 0.01
clip_norm = 1.0
[[layer]]
name = "data"
type = "text_data"
path = "{d}/train.shard"
import = {{ kind = "text", src = "{d}/text.txt" }}
batch_size = 8
unroll_len = 6
[[layer]]
name = "embed"
type = "embedding"
srclayers = "data"
vocab_size = 12
feature_dim = 8
[[layer]]
name = "lstm"
type = "lstm"
srclayers = "embed"
hidden_dim = 16
unroll = true
[[layer]]
name = "gru"
type = "gru"
srclayers = "lstm"
hidden_dim = 16
unroll = true
[[layer]]
name = "steps"
type = "flatten"
srclayers = "gru"
axis = 0
end_axis = 1
[[layer]]
name = "fc"
type = "inner_product"
srclayers = "steps"
num_output = 12
[[layer]]
name = "loss"
type = "softmax_loss"
srclayers = ["fc", "data:label"]
"#
    );
    let job = JobConfig::from_toml(&job, Default::default()).unwrap();
    let mut t = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let n = allocations(&mut t, 5, 50);
    assert_eq!(n, 0, "{n} allocations in 50 warm BPTT steps");
}

/// The batch loader fills its buffers ahead of the consumer, then waits for one back: a wait
/// that once allocated the first time it happened (a blocking channel receive), which could
/// fall in the middle of training when the loader first got ahead late.
fn the_loader_waiting_for_the_consumer_allocates_nothing() {
    let dir = tmpdir("alloc-loader");
    synthetic_mnist(&dir, 200, 100, 8);
    singa_data::import::import("mnist", &dir, &dir).unwrap();
    let shard = std::sync::Arc::new(singa_data::Shard::open(dir.join("train.shard")).unwrap());
    let mut loader = singa_data::BatchLoader::new(shard, singa_data::LoaderConfig::new(8)).unwrap();
    // The first batch: the loader thread has started and made its buffers.
    loader.next_batch().unwrap();
    let before = allocated();
    // It fills the others and waits for the consumer, for the first time.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let waited = allocated() - before;
    for _ in 0..10 {
        loader.next_batch().unwrap();
    }
    let more = allocated() - before - waited;
    assert_eq!(waited, 0, "{waited} allocations while the loader waited");
    assert_eq!(more, 0, "{more} allocations in 10 batches");
}

fn a_warm_convnet_step_allocates_nothing() {
    let dir = tmpdir("alloc-convnet");
    singa_tests::synthetic_images(&dir.join("train.shard"), 100, 8, 1);
    singa_tests::synthetic_images(&dir.join("test.shard"), 16, 8, 2);
    let text = singa_tests::convnet_job(&dir, "train_steps = 1000000\ndevice = { threads = 2 }");
    let job = JobConfig::from_toml(&text, Default::default()).unwrap();
    let mut trainer = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    // Past the first epoch boundary (100 / 8 ≈ 13 steps).
    let allocated = allocations(&mut trainer, 20, 50);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in 50 warm training steps"
    );
    drop(trainer);

    // With bf16 products (their pairs are packed into buffers kept like the f32 ones).
    let mut bf16 = job.clone();
    bf16.device.precision = singa_core::Precision::BF16;
    let mut trainer = Trainer::new(&bf16, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let allocated = allocations(&mut trainer, 20, 50);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in 50 warm bf16 training steps"
    );
    drop(trainer);

    // With 5×5 convolutions over 16 channels, which the CPU device runs as Winograd
    // transforms (its buffers and transformed filters are kept too).
    let wino = singa_core::ConvShape {
        batch: 1,
        channels: 16,
        height: 8,
        width: 8,
        filters: 16,
        kernel_h: 5,
        kernel_w: 5,
        stride_h: 1,
        stride_w: 1,
        pad_h: 2,
        pad_w: 2,
        groups: 1,
    };
    if !singa_cpu::cpu::convolution_uses_winograd(&wino) {
        eprintln!("this CPU runs 5×5 convolutions without Winograd (no AVX-512): the direct path is counted instead");
    }
    let mut job = job;
    let conv = job.layers.iter_mut().find(|l| l.name == "conv").unwrap();
    conv.fields.set("num_filters", 16);
    conv.fields.set("kernel", 5);
    conv.fields.set("pad", 2);
    let split = job.layers.iter().position(|l| l.name == "split").unwrap();
    job.layers[split].srclayers = vec!["wino".into()];
    job.layers.insert(
        split,
        singa::config::LayerConfig::new("wino", "convolution")
            .src("relu")
            .field("num_filters", 16)
            .field("kernel", 5)
            .field("pad", 2),
    );
    let mut trainer = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let allocated = allocations(&mut trainer, 20, 50);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in 50 warm training steps with 5×5 convolutions"
    );
}

/// The benchmark MLP on one worker, then on two workers and two servers (AllReduce).
fn a_warm_mlp_step_allocates_nothing() {
    let dir = tmpdir("alloc");
    synthetic_mnist(&dir, 2000, 100, 28);
    let d = dir.display();
    let text = format!(
        r#"
name = "alloc"
train_steps = 1000000
[device]
threads = 2
[updater]
type = "sgd"
momentum = 0.9
weight_decay = 1e-4
learning_rate = 0.01
[[layer]]
name = "data"
type = "shard_data"
path = "{d}/train.shard"
import = {{ kind = "mnist", src = "{d}" }}
batch_size = 64
shuffle = true
scale = 0.00392156862745098
[[layer]]
name = "fc1"
type = "inner_product"
srclayers = "data"
num_output = 1000
[[layer]]
name = "relu1"
type = "relu"
srclayers = "fc1"
[[layer]]
name = "drop"
type = "dropout"
srclayers = "relu1"
[[layer]]
name = "fc2"
type = "inner_product"
srclayers = "drop"
num_output = 500
[[layer]]
name = "relu2"
type = "relu"
srclayers = "fc2"
[[layer]]
name = "fc3"
type = "inner_product"
srclayers = "relu2"
num_output = 10
[[layer]]
name = "loss"
type = "softmax_loss"
srclayers = ["fc3", "data:label"]
"#
    );
    let job = JobConfig::from_toml(&text, Default::default()).unwrap();
    let mut trainer = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    // Warm up past the first epoch boundary (2000 / 64 ≈ 31 steps), where the order is redrawn.
    let steps = 100;
    let allocated = allocations(&mut trainer, 40, steps);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in {steps} warm training steps"
    );
    drop(trainer);

    // In bf16, with dynamic loss scaling too (the gradients read for the overflow check).
    let mut bf16 = job.clone();
    bf16.device.precision = singa_core::Precision::BF16;
    bf16.device.loss_scale = Some(singa::config::LossScaling::DYNAMIC);
    let mut trainer = Trainer::new(&bf16, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let allocated = allocations(&mut trainer, 40, steps);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in {steps} warm bf16 training steps"
    );
    drop(trainer);

    // Two workers and two servers (AllReduce) in this process with loss scaling: the servers
    // agree on every step's norm.
    let mut scaled = bf16.clone();
    scaled.cluster = singa::config::Framework::AllReduce.preset(2);
    let mut trainer =
        Trainer::new(&scaled, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let allocated = allocations(&mut trainer, 40, steps);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in {steps} warm distributed loss-scaled training steps"
    );
    drop(trainer);

    // The same net with two workers and two servers (AllReduce) in this process.
    let mut job = job;
    job.cluster = singa::config::Framework::AllReduce.preset(2);
    let mut trainer = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let allocated = allocations(&mut trainer, 40, steps);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in {steps} warm distributed training steps"
    );
    drop(trainer);

    // And with every layer but the data and the loss split over the two workers (model
    // parallelism, with bridges between the workers).
    let mut job = job;
    for l in job.layers.iter_mut() {
        if !matches!(l.name.as_str(), "data" | "loss") {
            l.partition_dim = 1;
        }
    }
    let mut trainer = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let allocated = allocations(&mut trainer, 40, steps);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in {steps} warm model-parallel training steps"
    );
    drop(trainer);

    // Both again with each worker in a process of its own: what crosses between processes
    // goes into wire buffers made during the first steps and reused after.
    for split in [true, false] {
        let mut job = job.clone();
        job.cluster.nprocs = 2;
        if !split {
            for l in job.layers.iter_mut() {
                l.partition_dim = -1;
            }
        }
        let mut trainer =
            Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
        let allocated = allocations(&mut trainer, 40, steps);
        assert_eq!(
            allocated, 0,
            "{allocated} allocations in {steps} warm steps in two processes (split: {split})"
        );
        if !split {
            // And with AllReduce's sums as collectives between the two processes.
            job.cluster.collective = true;
            let mut trainer =
                Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
            let allocated = allocations(&mut trainer, 40, steps);
            assert_eq!(
                allocated, 0,
                "{allocated} allocations in {steps} warm steps through collectives"
            );
        }
    }
}
