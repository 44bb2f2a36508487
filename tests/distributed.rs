//! Workers and servers in one process: synchronous data parallelism equals one worker with
//! the same global batch, checkpoints resume a distributed run exactly, and a failing worker
//! stops the job with an error that names it.

use singa::config::{ClusterConfig, Framework, JobConfig};
use singa::trainer::{Silent, TrainOptions, Trainer};
use singa::workspace::Existing;
use singa::Registry;
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    Error, FieldSpec, Fields, Layer, LayerDef, ParamFactoryMut, Phase, SetupContext, Tensor,
    TensorSpec,
};
use singa_tests::{max_difference, metric, mlp_job, param_values, synthetic_mnist, tmpdir};
use std::path::Path;

/// The MLP of the training tests without dropout (whose masks depend on the batch split),
/// with Adam or SGD with momentum.
fn job(data: &Path, steps: u64, updater: &str) -> JobConfig {
    let text = mlp_job(
        data,
        &format!("train_steps = {steps}\ndisplay_freq = 10"),
        24,
        0.0,
    );
    let mut job = JobConfig::from_toml(&text, Default::default()).unwrap();
    if updater == "adam" {
        job.updater.type_name = "adam".into();
        job.updater.fields = Fields::new();
        job.updater.learning_rate = singa::config::LrConfig::fixed(0.003);
    }
    job
}

fn train(job: &JobConfig, options: &TrainOptions) -> (Trainer, singa::trainer::Summary) {
    let mut t = Trainer::new(job, &Registry::builtin(), options).unwrap();
    let s = t.run(&mut Silent).unwrap();
    (t, s)
}

fn options(threads: usize) -> TrainOptions {
    TrainOptions {
        threads: Some(threads),
        ..TrainOptions::default()
    }
}

#[test]
fn synchronous_workers_equal_one_worker_with_the_same_batch() {
    let dir = tmpdir("dist-equal");
    synthetic_mnist(&dir, 600, 100, 8);
    for updater in ["sgd", "adam"] {
        let single = job(&dir, 60, updater);
        let (one, one_summary) = train(&single, &options(1));
        let reference = param_values(&one);
        for (framework, workers) in [
            (Framework::Sandblaster, 1),
            (Framework::Sandblaster, 2),
            (Framework::AllReduce, 2),
            (Framework::AllReduce, 4),
        ] {
            let mut j = single.clone();
            j.cluster = framework.preset(workers);
            let (many, summary) = train(&j, &options(workers));
            let diff = max_difference(&reference, &param_values(&many));
            let what = format!("{framework:?} with {workers} workers, {updater}");
            assert!(diff < 2e-5, "{what}: parameters differ by {diff}");
            // The workers compute the weight gradients together (a block of rows each).
            let described = many.cluster().unwrap().describe();
            assert_eq!(
                described.contains("compute together, each worker a block of rows"),
                workers > 1,
                "{what}: {described}"
            );
            assert!(
                described.contains("fc1/weight") == (workers > 1),
                "{what}: {described}"
            );
            assert_eq!(summary.steps, 60, "{what}");
            let loss =
                |s: &singa::trainer::Summary| s.train.iter().find(|(k, _)| k == "loss").unwrap().1;
            assert!(
                (loss(&summary) - loss(&one_summary)).abs() < 1e-3,
                "{what}: the reported loss is the whole batch's: {} vs {}",
                loss(&summary),
                loss(&one_summary)
            );
            if workers == 1 {
                assert_eq!(
                    diff, 0.0,
                    "{what}: one worker and one server do what one worker does"
                );
            }
        }
    }
}

#[test]
fn a_distributed_run_resumes_exactly() {
    let dir = tmpdir("dist-resume");
    synthetic_mnist(&dir, 600, 100, 8);
    // Data parallel, with the layers split along the features (model parallel), and two
    // Hogwild groups of two workers each.
    let pairs = ClusterConfig {
        nworkers_per_group: 2,
        nservers_per_group: 2,
        sync_freq: 5,
        ..Framework::Hogwild.preset(2)
    };
    let cases: [(&[&str], ClusterConfig); 3] = [
        (&[], Framework::AllReduce.preset(2)),
        (&["fc1", "act", "fc2"], Framework::AllReduce.preset(2)),
        (&[], pairs),
    ];
    for (run, (split, cluster)) in cases.into_iter().enumerate() {
        let mut j = split_features(job(&dir, 40, "sgd"), split);
        j.cluster = cluster;
        j.checkpoint_freq = 20;
        let ws = dir.join(format!("whole-{run}"));
        let whole = |existing| TrainOptions {
            workspace: Some(ws.clone()),
            existing,
            ..options(2)
        };
        let (straight, _) = train(&j, &whole(Existing::Refuse));
        let expected = param_values(&straight);
        drop(straight);
        // Cut the run after its first checkpoint, then resume.
        let ws2 = dir.join(format!("cut-{run}"));
        let mut cut = j.clone();
        cut.train_steps = 20;
        train(
            &cut,
            &TrainOptions {
                workspace: Some(ws2.clone()),
                ..options(2)
            },
        );
        let (resumed, summary) = train(
            &j,
            &TrainOptions {
                workspace: Some(ws2),
                existing: Existing::Resume,
                ..options(2)
            },
        );
        assert_eq!(summary.steps, 40);
        assert_eq!(
            max_difference(&expected, &param_values(&resumed)),
            0.0,
            "run {run}: split {split:?}"
        );
    }
}

/// Passes its input through; fails in the worker holding part `fail_part` at step `fail_at`.
struct FailingLayer {
    fail_part: u32,
    fail_at: i64,
    part: u32,
    steps: i64,
}

impl LayerDef for FailingLayer {
    const TYPE: &'static str = "failing";
    const DOC: &'static str = "identity that panics in one worker";
    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("part", singa_core::FieldKind::Int, "which worker fails").required(),
            FieldSpec::new("at", singa_core::FieldKind::Int, "at which step").required(),
        ]
    }
    fn new(f: &Fields) -> singa_core::Result<Self> {
        Ok(FailingLayer {
            fail_part: f.usize("part")? as u32,
            fail_at: f.usize("at")? as i64,
            part: 0,
            steps: 0,
        })
    }
}

impl Layer for FailingLayer {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        self.part = ctx.partition_id;
        let input = ctx.single_input().unwrap();
        RResult::ROk(vec![TensorSpec::new("out", input.shape, input.dtype)].into())
    }
    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        self.steps += 1;
        if self.part == self.fail_part && self.steps == self.fail_at {
            panic!("deliberately, at step {}", self.steps);
        }
        let dev = inputs[0].device().clone();
        dev.copy(&inputs[0], &mut outputs[0]).into()
    }
    fn backward(
        &mut self,
        _: Phase,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        if let ROption::RSome(g) = &mut grad_inputs[0] {
            let dev = g.device().clone();
            return dev.copy(&grad_outputs[0], g).into();
        }
        RResult::ROk(())
    }
}

#[test]
fn a_failing_worker_stops_the_job_with_its_name_and_the_checkpoint_resumes() {
    let dir = tmpdir("dist-fail");
    synthetic_mnist(&dir, 600, 100, 8);
    let mut registry = Registry::builtin();
    registry
        .add_layer(
            singa_core::layer_type::<FailingLayer>(),
            singa::registry::Provenance::BuiltIn,
        )
        .unwrap();
    // Data parallel, and with fc1 and fc2 split along the features: then worker 0 waits for
    // worker 1 at a bridge, and must stop waiting when it fails. Both in one process, and
    // with each worker in a process of its own (the news of the failure crosses the routers);
    // and data parallel through collectives, where worker 0 waits in a sum, reading no message.
    let splits = [&[][..], &["fc1", "act", "fc2"]];
    let cases = splits
        .iter()
        .flat_map(|s| [(*s, 1, false), (*s, 2, false)])
        .chain([(&[][..], 2, true)]);
    for (run, (split, nprocs, collective)) in cases.enumerate() {
        let mut j = split_features(job(&dir, 30, "sgd"), split);
        j.cluster = ClusterConfig {
            timeout_secs: 20,
            nprocs,
            collective,
            ..Framework::AllReduce.preset(2)
        };
        j.checkpoint_freq = 10;
        // Insert the failing layer between fc1 and its activation.
        let pos = j.layers.iter().position(|l| l.name == "act").unwrap();
        j.layers[pos].srclayers = vec!["fail".into()];
        j.layers.insert(
            pos,
            singa::config::LayerConfig::new("fail", "failing")
                .src("fc1")
                .field("part", 1)
                .field("at", 15),
        );
        let ws = dir.join(format!("ws-{run}"));
        let opts = TrainOptions {
            workspace: Some(ws.clone()),
            ..options(2)
        };
        let mut t = Trainer::new(&j, &registry, &opts).unwrap();
        let started = std::time::Instant::now();
        let e = t.run(&mut Silent).unwrap_err().to_string();
        assert!(
            e.contains("worker 0.1") && e.contains("deliberately, at step 15"),
            "{e}"
        );
        assert!(e.contains("step 15"), "{e}");
        assert!(
            started.elapsed().as_secs() < 15,
            "split {split:?}, {nprocs} processes, collective {collective}: the other worker stopped waiting at once"
        );
        drop(t);
        // The checkpoint of step 10 is intact: resuming (without the failing layer's trigger) works.
        let pos = j.layers.iter().position(|l| l.name == "fail").unwrap();
        j.layers[pos].fields.set("at", 1000);
        let mut resumed = Trainer::new(
            &j,
            &registry,
            &TrainOptions {
                workspace: Some(ws),
                existing: Existing::Resume,
                ..options(2)
            },
        )
        .unwrap();
        assert_eq!(resumed.step(), 10);
        let s = resumed.run(&mut Silent).unwrap();
        assert_eq!(s.steps, 30);
    }
}

#[test]
fn wrong_topologies_are_refused_with_the_field() {
    let dir = tmpdir("dist-refuse");
    synthetic_mnist(&dir, 60, 20, 8);
    let mut j = job(&dir, 5, "sgd");
    j.cluster = Framework::AllReduce.preset(3);
    let e = Trainer::new(&j, &Registry::builtin(), &options(2))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("layer[data].batch_size: 32 records cannot be split evenly over the 3 workers"),
        "{e}"
    );
    j.cluster = ClusterConfig {
        nserver_groups: 2,
        ..ClusterConfig::default()
    };
    let e = j.validate(&Registry::builtin()).unwrap_err().to_string();
    assert!(e.contains("cluster.nserver_groups"), "{e}");
}

/// The MNIST example's MLP on the real data the repo ships, cut to `steps` steps.
fn mnist_job(steps: u64) -> JobConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut job = JobConfig::from_file(root.join("examples/mnist-mlp/job.toml")).unwrap();
    job.train_steps = steps;
    job.display_freq = 0;
    job.test_freq = 0;
    job.checkpoint_freq = 0;
    job
}

fn test_accuracy(s: &singa::trainer::Summary) -> f64 {
    metric(&s.test, "accuracy")
}

/// Downpour and Hogwild with two groups end the MNIST example's schedule within half a point
/// of the synchronous accuracy.
#[test]
fn asynchronous_frameworks_reach_the_synchronous_accuracy_on_mnist() {
    let sync = mnist_job(9400);
    let (_, sync_summary) = train(&sync, &options(2));
    let a = test_accuracy(&sync_summary);
    assert!(a > 0.98, "synchronous accuracy {a}");
    for framework in [Framework::Downpour, Framework::Hogwild] {
        let mut asynchronous = sync.clone();
        asynchronous.cluster = framework.preset(2);
        let (_, summary) = train(&asynchronous, &options(2));
        let b = test_accuracy(&summary);
        eprintln!("MNIST after 9400 steps: synchronous {a:.4}, {framework:?} with 2 groups {b:.4}");
        assert!(
            (a - b).abs() < 0.005,
            "{framework:?} {b} vs synchronous {a}"
        );
    }
}

/// Asynchronous groups learn, and resuming from the last checkpoint restores the servers'
/// values in every group.
#[test]
fn asynchronous_groups_learn_and_checkpoints_resume() {
    let dir = tmpdir("dist-async");
    synthetic_mnist(&dir, 600, 100, 8);
    let hogwild = ClusterConfig {
        sync_freq: 5,
        ..Framework::Hogwild.preset(2)
    };
    // Downpour's 4 groups each read 8 of every 32 records; Hogwild's 2, 16 (with servers
    // beside the workers, and on threads of their own); and Downpour's 2 groups with a
    // staleness bound of 3 steps.
    let stale = ClusterConfig {
        staleness: 3,
        ..Framework::Downpour.preset(2)
    };
    let hogwild_apart = ClusterConfig {
        server_worker_separate: true,
        ..hogwild.clone()
    };
    // Groups of two workers each (the second worker of group 1 shares group 1's values).
    let hogwild_pairs = ClusterConfig {
        nworkers_per_group: 2,
        nservers_per_group: 2,
        ..hogwild.clone()
    };
    for (run, (cluster, batch)) in [
        (Framework::Downpour.preset(4), 8),
        (hogwild, 16),
        (hogwild_apart, 16),
        (hogwild_pairs, 8),
        (stale, 16),
    ]
    .into_iter()
    .enumerate()
    {
        let mut j = job(&dir, 40, "sgd");
        let what = format!("{cluster:?}");
        j.cluster = cluster;
        j.test_steps = 2;
        j.checkpoint_freq = 20;
        let ws = dir.join(format!("ws-{run}"));
        let opts = |existing| TrainOptions {
            workspace: Some(ws.clone()),
            existing,
            ..options(2)
        };
        let (t, s) = train(&j, &opts(Existing::Refuse));
        assert!(test_accuracy(&s) > 0.9, "{what}: {:?}", s.test);
        let lag = t.cluster().unwrap().max_lag();
        assert!(
            lag as u64 <= j.cluster.staleness,
            "{what}: a group lagged {lag} steps"
        );
        assert_eq!(
            (t.train_net().batch_size(), t.samples_per_step()),
            (batch, 32)
        );
        let finished = param_values(&t);
        drop(t);
        let mut resumed = Trainer::new(&j, &Registry::builtin(), &opts(Existing::Resume)).unwrap();
        assert_eq!(resumed.step(), 40);
        assert_eq!(
            max_difference(&finished, &param_values(&resumed)),
            0.0,
            "{what}"
        );
        let m = resumed.evaluate().unwrap();
        let acc = metric(&m, "accuracy");
        assert!(
            (acc - test_accuracy(&s)).abs() < 1e-9,
            "{what}: {acc} after resuming"
        );
    }
}

/// `job` with its layers `split` split along the features (`partition_dim = 1`).
fn split_features(mut job: JobConfig, split: &[&str]) -> JobConfig {
    for l in job.layers.iter_mut() {
        if split.contains(&l.name.as_str()) {
            l.partition_dim = 1;
        }
    }
    job
}

/// `job` with its inner products among `split` storing their weights `[out, in]`, as they do
/// when split along the features: the unpartitioned net to compare a partitioned one with.
fn transposed(mut job: JobConfig, split: &[&str]) -> JobConfig {
    for l in job.layers.iter_mut() {
        if l.type_name == "inner_product" && split.contains(&l.name.as_str()) {
            l.fields.set("transpose", true);
        }
    }
    job
}

/// The MLP of `job` behind data-parallel convolutions: data -> conv 3x3 (6 filters) -> relu ->
/// max-pool 2x2 -> fc1 -> act -> drop -> fc2 -> loss.
fn hybrid_job(data: &Path, steps: u64) -> JobConfig {
    let mut j = job(data, steps, "sgd");
    let fc1 = j.layers.iter_mut().find(|l| l.name == "fc1").unwrap();
    fc1.srclayers = vec!["pool".into()];
    let text = r#"
name = "convs"
train_steps = 1
[updater]
type = "sgd"
learning_rate = 0.1
[[layer]]
name = "conv"
type = "convolution"
srclayers = "data"
num_filters = 6
kernel = 3
pad = 1
[[layer]]
name = "crelu"
type = "relu"
srclayers = "conv"
[[layer]]
name = "pool"
type = "pooling"
srclayers = "crelu"
kernel = 2
stride = 2
"#;
    let convs = JobConfig::from_toml(text, Default::default()).unwrap();
    j.layers.extend(convs.layers);
    j
}

/// Layers split along the features over the workers of a group (model parallelism), alone or
/// after data-parallel convolutions (hybrid), train exactly as the unpartitioned net on one
/// worker with the same batch: same forward values (the reported loss) and the same gradients
/// (the parameters after every update), with bridges wherever neighbouring layers are split
/// differently.
#[test]
fn feature_split_workers_equal_one_worker_with_the_same_batch() {
    let dir = tmpdir("dist-model");
    synthetic_mnist(&dir, 600, 100, 8);
    let cases: Vec<(&str, JobConfig, &[&str])> = vec![
        // fc1 and act split, drop on the batch, fc2 split: rows -> all -> cols -> rows -> all.
        ("mlp", job(&dir, 40, "sgd"), &["fc1", "act", "fc2"]),
        (
            "mlp, adam",
            job(&dir, 40, "adam"),
            &["fc1", "act", "drop", "fc2"],
        ),
        (
            "hybrid",
            hybrid_job(&dir, 40),
            &["fc1", "act", "drop", "fc2"],
        ),
        (
            "convolution split on filters",
            hybrid_job(&dir, 40),
            &["conv", "crelu", "pool", "fc1"],
        ),
    ];
    for (what, base, split) in cases {
        let reference = transposed(base.clone(), split);
        let (one, one_summary) = train(&reference, &options(1));
        let expected = param_values(&one);
        for (framework, workers) in [(Framework::Sandblaster, 2), (Framework::AllReduce, 2)] {
            let mut j = split_features(base.clone(), split);
            j.cluster = framework.preset(workers);
            let (many, summary) = train(&j, &options(workers));
            let what = format!("{what}, {framework:?} with {workers} workers");
            let diff = max_difference(&expected, &param_values(&many));
            assert!(diff < 2e-5, "{what}: parameters differ by {diff}");
            let loss =
                |s: &singa::trainer::Summary| s.train.iter().find(|(k, _)| k == "loss").unwrap().1;
            assert!(
                (loss(&summary) - loss(&one_summary)).abs() < 1e-3,
                "{what}: loss {} vs {}",
                loss(&summary),
                loss(&one_summary)
            );
        }
    }
    // Four workers: fc1 (24 outputs) and fc2 (4) split four ways.
    let base = job(&dir, 40, "sgd");
    let split = ["fc1", "act", "fc2"];
    let (one, _) = train(&transposed(base.clone(), &split), &options(1));
    let mut j = split_features(base, &split);
    j.cluster = Framework::AllReduce.preset(4);
    let (many, _) = train(&j, &options(4));
    let diff = max_difference(&param_values(&one), &param_values(&many));
    assert!(diff < 2e-5, "4 workers: parameters differ by {diff}");
}

/// What cannot be split along the features is refused, naming the file and the field.
#[test]
fn impossible_feature_splits_are_refused() {
    let dir = tmpdir("dist-model-refusals");
    synthetic_mnist(&dir, 100, 50, 8);
    let refused = |split: &[&str], workers: usize, fix: &dyn Fn(&mut JobConfig)| -> String {
        let mut j = split_features(job(&dir, 5, "sgd"), split);
        j.cluster = Framework::AllReduce.preset(workers);
        fix(&mut j);
        match Trainer::new(&j, &Registry::builtin(), &options(2)) {
            Ok(_) => panic!("{split:?} with {workers} workers was accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = refused(&["loss"], 2, &|_| {});
    assert!(
        e.contains("layer[loss].partition_dim") && e.contains("inner_product, convolution"),
        "{e}"
    );
    let e = refused(&["data"], 2, &|_| {});
    assert!(
        e.contains("layer[data].partition_dim") && e.contains("input layer"),
        "{e}"
    );
    // fc2 has 4 outputs: not three ways.
    let e = refused(&["fc2"], 3, &|j| {
        for l in j.layers.iter_mut().filter(|l| l.name == "data") {
            l.fields.set("batch_size", 33usize);
        }
    });
    assert!(
        e.contains("layer[fc2].num_output") && e.contains("3 workers"),
        "{e}"
    );
    let e = refused(&["fc1"], 2, &|j| {
        for l in j.layers.iter_mut().filter(|l| l.name == "fc1") {
            l.fields.set("transpose", false);
        }
    });
    assert!(e.contains("layer[fc1].transpose"), "{e}");
    // A split layer's parameters are blocks on each worker: not shareable whole.
    let e = refused(&["fc1"], 2, &|j| {
        for l in j.layers.iter_mut().filter(|l| l.name == "fc2") {
            let mut p = singa::config::ParamConfig::new("weight");
            p.share_from = Some("fc1/weight".into());
            l.params.push(p);
        }
    });
    assert!(
        e.contains("layer[fc2].param[weight].share_from") && e.contains("cannot be shared"),
        "{e}"
    );
}

/// A staleness bound needs asynchronous groups, and a sensible size.
#[test]
fn a_staleness_bound_without_asynchronous_groups_is_refused() {
    let dir = tmpdir("dist-stale-refusal");
    synthetic_mnist(&dir, 100, 50, 8);
    for (cluster, field_says) in [
        (
            ClusterConfig {
                staleness: 2,
                ..Framework::AllReduce.preset(2)
            },
            "this job has one group",
        ),
        (
            ClusterConfig {
                staleness: 1000,
                ..Framework::Downpour.preset(2)
            },
            "expected at most 64",
        ),
    ] {
        let mut j = job(&dir, 5, "sgd");
        j.cluster = cluster;
        let e = Trainer::new(&j, &Registry::builtin(), &options(2))
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("cluster.staleness") && e.contains(field_says),
            "{e}"
        );
    }
}

/// A split inner product stores its weight `[out, in]`: a checkpoint written with the other
/// layout is refused, even for a square weight whose shape cannot tell.
#[test]
fn a_checkpoint_in_the_other_weight_layout_is_refused() {
    let dir = tmpdir("dist-layout");
    synthetic_mnist(&dir, 200, 50, 8);
    // fc1 is 64 → 64 on 8×8 images: square.
    let text = mlp_job(&dir, "train_steps = 10\ncheckpoint_freq = 10", 64, 0.0);
    let plain = JobConfig::from_toml(&text, Default::default()).unwrap();
    let ws = dir.join("ws");
    let opts = |existing| TrainOptions {
        workspace: Some(ws.clone()),
        existing,
        ..options(2)
    };
    train(&plain, &opts(Existing::Refuse));
    let mut split = split_features(plain, &["fc1"]);
    split.cluster = Framework::AllReduce.preset(2);
    split.train_steps = 20;
    let e = Trainer::new(&split, &Registry::builtin(), &opts(Existing::Resume))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("layer fc1's weight as [in, out], this job as [out, in]"),
        "{e}"
    );
}

#[test]
fn large_groups_sum_whole_gradients_and_train_the_same() {
    // More workers than can share a gradient (the access checker tracks a bounded number of
    // regions of a tensor at once): each computes a whole gradient, the servers sum them.
    let dir = tmpdir("dist-large-group");
    synthetic_mnist(&dir, 600, 100, 8);
    let single = job(&dir, 10, "sgd");
    let (one, _) = train(&single, &options(1));
    let mut j = single.clone();
    j.cluster = Framework::AllReduce.preset(16);
    let (many, summary) = train(&j, &options(2));
    assert_eq!(summary.steps, 10);
    let described = many.cluster().unwrap().describe();
    assert!(!described.contains("compute together"), "{described}");
    let diff = max_difference(&param_values(&one), &param_values(&many));
    assert!(diff < 2e-5, "16 workers: parameters differ by {diff}");
}

/// Sixty-four workers and their servers on two cores, several times over: the servers update
/// disjoint slices of each parameter at once, more of them than an allocation tracks regions
/// (`singa_core::MAX_REGIONS`), each possibly paused mid-operation. Those beyond the limit
/// wait for a region; until they did, about one run in three failed with "a tensor is being
/// used by an operation on another thread". Bounded: four runs of ten steps.
#[test]
fn sixty_four_workers_train_without_tripping_the_access_checker() {
    let mut job = mnist_job(10);
    job.cluster = Framework::AllReduce.preset(64);
    for run in 0..4 {
        let mut t = Trainer::new(&job, &Registry::builtin(), &options(2)).unwrap();
        let summary = t
            .run(&mut Silent)
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        assert_eq!(summary.steps, 10);
    }
}
