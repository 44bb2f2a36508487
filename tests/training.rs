//! Training runs end to end: what a run leaves behind, exact resumption, and the MNIST example
//! reaching its accuracy.

use singa::config::JobConfig;
use singa::trainer::{Silent, TrainOptions, Trainer};
use singa::workspace::Existing;
use singa::Registry;
use singa_tests::{char_job, metric, mlp_job, param_values, rbm_job_text, synthetic_mnist, tmpdir};
use std::path::{Path, PathBuf};

fn job(data: &Path, top: &str, dropout: f64) -> JobConfig {
    JobConfig::from_toml(&mlp_job(data, top, 32, dropout), Default::default()).unwrap()
}

fn train(
    job: &JobConfig,
    workspace: &Path,
    existing: Existing,
) -> (Trainer, singa::trainer::Summary) {
    let options = TrainOptions {
        threads: None,
        workspace: Some(workspace.to_path_buf()),
        existing,
        ..Default::default()
    };
    let mut t = Trainer::new(job, &Registry::builtin(), &options).unwrap();
    let s = t.run(&mut Silent).unwrap();
    (t, s)
}

#[test]
fn a_run_leaves_metrics_summary_and_checkpoints() {
    let dir = tmpdir("run");
    synthetic_mnist(&dir, 800, 200, 8);
    let top = "train_steps = 150\ndisplay_freq = 50\ntest_freq = 50\ntest_steps = 4\ncheckpoint_freq = 100";
    let ws = dir.join("ws");
    let (_, summary) = train(&job(&dir, top, 0.2), &ws, Existing::Refuse);
    let test_acc = metric(&summary.test, "accuracy");
    assert!(
        test_acc > 0.9,
        "the toy problem is learnable, got test accuracy {test_acc}"
    );

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(ws.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train_lines: Vec<_> = lines.iter().filter(|l| l["phase"] == "train").collect();
    let test_lines: Vec<_> = lines.iter().filter(|l| l["phase"] == "test").collect();
    assert_eq!(
        train_lines
            .iter()
            .map(|l| l["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![50, 100, 150]
    );
    assert_eq!(
        test_lines
            .iter()
            .map(|l| l["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![50, 100, 150]
    );
    for l in &train_lines {
        for key in ["loss", "accuracy", "samples_per_sec", "elapsed", "lr"] {
            assert!(l[key].is_number(), "train line lacks {key}: {l}");
        }
    }
    for l in &test_lines {
        for key in ["loss", "accuracy", "elapsed"] {
            assert!(l[key].is_number(), "test line lacks {key}: {l}");
        }
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.join("summary.json")).unwrap()).unwrap();
    for key in [
        "steps",
        "train_loss",
        "test_loss",
        "test_accuracy",
        "samples_per_sec",
        "wall_seconds",
    ] {
        assert!(s[key].is_number(), "summary lacks {key}: {s}");
    }
    assert_eq!(s["steps"], 150);
    let ckpts: Vec<u64> = singa::checkpoint::list(&ws.join("checkpoints"))
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(ckpts, vec![150, 100]);
}

#[test]
fn resuming_from_a_checkpoint_continues_exactly() {
    let dir = tmpdir("resume");
    synthetic_mnist(&dir, 300, 50, 8);
    let full = "train_steps = 60\ndisplay_freq = 20\ncheckpoint_freq = 30";
    let (straight, _) = train(&job(&dir, full, 0.3), &dir.join("a"), Existing::Refuse);

    // The same job stopped after 30 steps, then resumed to 60.
    let half = "train_steps = 30\ndisplay_freq = 20\ncheckpoint_freq = 30";
    train(&job(&dir, half, 0.3), &dir.join("b"), Existing::Refuse);
    let (resumed, summary) = train(&job(&dir, full, 0.3), &dir.join("b"), Existing::Resume);
    assert_eq!(summary.steps, 60);
    assert_eq!(
        param_values(&straight),
        param_values(&resumed),
        "parameters differ bitwise after resuming"
    );
}

#[test]
fn a_workspace_with_a_run_is_not_overwritten_by_accident() {
    let dir = tmpdir("refuse");
    synthetic_mnist(&dir, 100, 50, 8);
    let top = "train_steps = 5\ndisplay_freq = 5";
    let ws = dir.join("ws");
    train(&job(&dir, top, 0.0), &ws, Existing::Refuse);
    let ckpt = ws.join("checkpoints").join(singa::checkpoint::file_name(5));
    let before = std::fs::read(&ckpt).unwrap();
    let options = TrainOptions {
        workspace: Some(ws.clone()),
        ..Default::default()
    };
    let e = Trainer::new(&job(&dir, top, 0.0), &Registry::builtin(), &options)
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("already holds a run (checkpoint at step 5); pass --resume"),
        "{e}"
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
}

#[test]
fn a_checkpoint_of_another_net_is_refused() {
    let dir = tmpdir("othernet");
    synthetic_mnist(&dir, 100, 50, 8);
    let top = "train_steps = 5\ndisplay_freq = 5";
    let ws = dir.join("ws");
    train(&job(&dir, top, 0.0), &ws, Existing::Refuse);
    let ckpt = ws.join("checkpoints").join(singa::checkpoint::file_name(5));
    let before = std::fs::read(&ckpt).unwrap();
    // A wider hidden layer: same parameter names, other shapes.
    let wider = JobConfig::from_toml(
        &mlp_job(&dir, "train_steps = 10", 48, 0.0),
        Default::default(),
    )
    .unwrap();
    let options = TrainOptions {
        workspace: Some(ws.clone()),
        existing: Existing::Resume,
        ..Default::default()
    };
    let e = Trainer::new(&wider, &Registry::builtin(), &options)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("does not match this net: parameter fc1/weight has shape [64, 32] in the checkpoint but [64, 48] in the net"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the existing checkpoint is untouched"
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README's main command: the MNIST MLP of `examples/mnist-mlp/job.toml` on the MNIST files
/// the repository ships reaches at least 98.0 % test accuracy.
#[test]
fn mnist_mlp_example_reaches_98_percent() {
    let job = JobConfig::from_file(repo().join("examples/mnist-mlp/job.toml")).unwrap();
    let ws = tmpdir("mnist-example");
    let (_, summary) = train(&job, &ws, Existing::Refuse);
    let acc = metric(&summary.test, "accuracy");
    eprintln!(
        "MNIST MLP test accuracy {acc:.4} after {} steps, {:.0} samples/s",
        summary.steps, summary.samples_per_sec
    );
    assert!(acc >= 0.98, "test accuracy {acc}");
}

#[test]
fn lr_mult_zero_freezes_a_parameter_and_share_from_ties_two() {
    let dir = tmpdir("params");
    synthetic_mnist(&dir, 200, 50, 8);
    let text = mlp_job(&dir, "train_steps = 40\ndisplay_freq = 40", 16, 0.0)
        .replace(
            "num_output = 16\n",
            "num_output = 16\n[[layer.param]]\nname = \"bias\"\nlr_mult = 0\nwd_mult = 0\ninit = { type = \"constant\", value = 0.25 }\n",
        )
        .replace(
            "[[layer]]\nname = \"fc2\"\ntype = \"inner_product\"\nsrclayers = \"drop\"",
            "[[layer]]\nname = \"tied_a\"\ntype = \"inner_product\"\nsrclayers = \"drop\"\nnum_output = 16\n\n\
             [[layer]]\nname = \"tied_b\"\ntype = \"inner_product\"\nsrclayers = \"tied_a\"\nnum_output = 16\n\
             [[layer.param]]\nname = \"weight\"\nshare_from = \"tied_a/weight\"\n\n\
             [[layer]]\nname = \"fc2\"\ntype = \"inner_product\"\nsrclayers = \"tied_b\"",
        );
    let job = JobConfig::from_toml(&text, Default::default()).unwrap();
    let before = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let init = param_values(&before);
    let (after, _) = train(&job, &dir.join("ws"), Existing::Refuse);
    let get =
        |ps: &[(String, Vec<f32>)], n: &str| ps.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let trained = param_values(&after);
    assert_eq!(
        get(&trained, "fc1/bias"),
        vec![0.25; 16],
        "lr_mult = 0 keeps the bias at its init"
    );
    assert_ne!(
        get(&trained, "fc1/weight"),
        get(&init, "fc1/weight"),
        "the weight trains"
    );
    let store = after.params();
    let tied = store.find("tied_a/weight").unwrap();
    assert_eq!(
        store.find("tied_b/weight"),
        Some(tied),
        "both names are one parameter"
    );
    assert_eq!(
        store.entries()[tied].grads.len(),
        2,
        "each user has its own gradient, summed before the update"
    );
    assert_ne!(get(&trained, "tied_a/weight"), get(&init, "tied_a/weight"));
}

fn convnet(data: &Path, top: &str) -> JobConfig {
    JobConfig::from_toml(&singa_tests::convnet_job(data, top), Default::default()).unwrap()
}

/// A convnet with every image layer type learns the toy images, and stopping and resuming it
/// gives bitwise the same parameters as an uninterrupted run: batch norm's running statistics,
/// the updater's momentum, the data order and the random crops all come back from the
/// checkpoint.
#[test]
fn a_convnet_learns_and_resumes_exactly() {
    let dir = tmpdir("convnet");
    singa_tests::synthetic_images(&dir.join("train.shard"), 160, 8, 1);
    singa_tests::synthetic_images(&dir.join("test.shard"), 16, 8, 2);
    let full = "train_steps = 40\ndisplay_freq = 20\ncheckpoint_freq = 20\ntest_freq = 40";
    let (straight, summary) = train(&convnet(&dir, full), &dir.join("a"), Existing::Refuse);
    let test_metric = |name: &str| metric(&summary.test, name);
    assert!(
        test_metric("loss/accuracy") >= 0.75,
        "test metrics {:?}",
        summary.test
    );
    assert!(test_metric("top2/top2_accuracy") >= test_metric("loss/accuracy"));

    let half = "train_steps = 20\ndisplay_freq = 20\ncheckpoint_freq = 20\ntest_freq = 40";
    train(&convnet(&dir, half), &dir.join("b"), Existing::Refuse);
    let (resumed, _) = train(&convnet(&dir, full), &dir.join("b"), Existing::Resume);
    let (a, b) = (param_values(&straight), param_values(&resumed));
    assert!(
        a.iter().any(|(k, _)| k == "bn/mean"),
        "running statistics are parameters: {:?}",
        a.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    assert_eq!(a, b, "parameters differ bitwise after resuming");
}

/// With `precision = "bf16"` the convnet learns as in f32, a stopped bf16 run resumes bitwise
/// to the uninterrupted one, and its checkpoint (f32 values, as always) resumes in f32 too.
#[test]
fn a_bf16_convnet_learns_and_resumes_in_either_precision() {
    let dir = tmpdir("convnet-bf16");
    singa_tests::synthetic_images(&dir.join("train.shard"), 160, 8, 1);
    singa_tests::synthetic_images(&dir.join("test.shard"), 16, 8, 2);
    let steps = |n: u32, precision: &str| {
        let top = format!("train_steps = {n}\ndisplay_freq = 20\ncheckpoint_freq = 20\ntest_freq = 40\ndevice = {{ precision = \"{precision}\" }}");
        convnet(&dir, &top)
    };
    let (straight, summary) = train(&steps(40, "bf16"), &dir.join("a"), Existing::Refuse);
    let accuracy = metric(&summary.test, "loss/accuracy");
    assert!(accuracy >= 0.75, "test metrics {:?}", summary.test);

    train(&steps(20, "bf16"), &dir.join("b"), Existing::Refuse);
    let (resumed, _) = train(&steps(40, "bf16"), &dir.join("b"), Existing::Resume);
    assert_eq!(
        param_values(&straight),
        param_values(&resumed),
        "bf16 parameters differ bitwise after resuming"
    );

    train(&steps(20, "bf16"), &dir.join("c"), Existing::Refuse);
    let (as_f32, summary) = train(&steps(40, "f32"), &dir.join("c"), Existing::Resume);
    let accuracy = metric(&summary.test, "loss/accuracy");
    assert!(accuracy >= 0.75, "test metrics {:?}", summary.test);
    // The last 20 steps in f32 move the parameters a little away from the bf16 run's.
    let moved = singa_tests::max_difference(&param_values(&straight), &param_values(&as_f32));
    assert!(moved > 0.0 && moved < 0.01, "parameters moved by {moved}");
}

/// The character model of [`char_job`] as a job.
fn char_model(dir: &Path, cell: &str, top: &str) -> JobConfig {
    JobConfig::from_toml(&char_job(dir, cell, top), Default::default()).unwrap()
}

/// BPTT: a GRU and an LSTM character model learn (from ln 58 = 4.06 nats per character to
/// well below the ~3.3 of single-character frequencies), and resume exactly, the text's
/// position and Adam's state included.
#[test]
fn recurrent_char_models_learn_with_bptt_and_resume_exactly() {
    for cell in ["gru", "lstm"] {
        let dir = tmpdir(&format!("bptt-{cell}"));
        let full = "train_steps = 300\ntest_freq = 300\ntest_steps = 10\ncheckpoint_freq = 150";
        let (straight, summary) = train(
            &char_model(&dir, cell, full),
            &dir.join("a"),
            Existing::Refuse,
        );
        let loss = metric(&summary.test, "loss");
        eprintln!("{cell}: validation loss {loss:.3} after 300 steps");
        assert!(loss < 2.8, "{cell}: validation loss {loss} after 300 steps");
        let half = "train_steps = 150\ntest_freq = 150\ntest_steps = 10\ncheckpoint_freq = 150";
        train(
            &char_model(&dir, cell, half),
            &dir.join("b"),
            Existing::Refuse,
        );
        let (resumed, _) = train(
            &char_model(&dir, cell, full),
            &dir.join("b"),
            Existing::Resume,
        );
        assert_eq!(param_values(&straight), param_values(&resumed), "{cell}");
    }
}

/// The steps of an unrolled cell write one gradient of each shared parameter together, each
/// adding to it (`gru` and `lstm` can): the same gradients, to rounding, as one gradient per
/// step summed after the backward pass, which is what the steps get when a parameter setting
/// of their own (here `share_from` on every parameter of every step) takes them out of the
/// family.
#[test]
fn unrolled_steps_adding_to_one_gradient_equal_the_steps_gradients_summed() {
    use singa::config::ParamConfig;
    use singa::net::NeuralNet;
    use singa::params::ParamStore;
    use singa_core::{DeviceRef, Phase};
    let registry = Registry::builtin();
    // Every parameter's gradients after a forward and backward pass: how many tensors hold
    // them, and their sum.
    let gradients = |job: &JobConfig| -> Vec<(String, usize, Vec<f32>)> {
        let dev = DeviceRef::new(singa_cpu::CpuDevice::new(2).unwrap());
        let mut store = ParamStore::new();
        let mut net = NeuralNet::build(job, &registry, &dev, &mut store, Phase::TRAIN).unwrap();
        // Two batches: the second pass's gradients must not keep anything of the first's.
        for _ in 0..2 {
            net.forward(Phase::TRAIN).unwrap();
            net.backward(Phase::TRAIN, &mut |_, _| Ok(())).unwrap();
        }
        let mut out = Vec::new();
        for e in store.entries() {
            let mut sum = vec![0.0f32; e.value.numel()];
            for g in &e.grads {
                for (s, v) in sum.iter_mut().zip(g.to_vec::<f32>().unwrap()) {
                    *s += v;
                }
            }
            out.push((e.name.clone(), e.grads.len(), sum));
        }
        out
    };
    for cell in ["gru", "lstm"] {
        let dir = tmpdir(&format!("shared-grads-{cell}"));
        let job = char_model(&dir, cell, "train_steps = 1");
        let job = job.validate(&registry).unwrap().job;
        let together = gradients(&job);
        let mut apart = job.clone();
        for l in apart.layers.iter_mut() {
            let Some(owner) = l.share_params_from.clone() else {
                continue;
            };
            for (name, _, _) in together.iter().filter(|(n, _, _)| n.starts_with("rnn@0/")) {
                let short = name.trim_start_matches("rnn@0/");
                l.params
                    .push(ParamConfig::new(short).share_from(&format!("{owner}/{short}")));
            }
        }
        let apart = gradients(&apart);
        let mut shared = 0;
        for ((name, n, a), (_, m, b)) in together.iter().zip(&apart) {
            if name.starts_with("rnn@0/") {
                assert_eq!((*n, *m), (1, 8), "{cell} {name}: gradient tensors");
                shared += 1;
            }
            let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(worst <= 1e-5 * scale, "{cell} {name}: differs by {worst}");
        }
        assert!(shared >= 2, "{cell}: {shared} shared parameters");
    }
}

/// `singa sample`: a trained character model generates the requested number of characters
/// after the priming text, the same text for the same seed, from its own vocabulary; a priming
/// character it does not know is refused.
#[test]
fn a_char_model_samples_text_reproducibly() {
    let dir = tmpdir("sample");
    let top = "train_steps = 100\ntest_freq = 100\ntest_steps = 2\ncheckpoint_freq = 100";
    let job = char_model(&dir, "gru", top);
    let ws = dir.join("ws");
    train(&job, &ws, Existing::Refuse);
    let checkpoint = ws.join("checkpoints/step-00000100.safetensors");
    let options = |seed: u64, prime: &str| singa::sample::SampleOptions {
        length: 80,
        temperature: 0.8,
        prime: prime.to_string(),
        seed,
    };
    let registry = Registry::builtin();
    let text =
        |o: &singa::sample::SampleOptions| singa::sample::sample(&job, &registry, &checkpoint, o);
    let a = text(&options(7, "First")).unwrap();
    assert_eq!(a.chars().count(), 5 + 80);
    assert!(a.starts_with("First"));
    assert_eq!(a, text(&options(7, "First")).unwrap(), "seeded");
    assert_ne!(a, text(&options(8, "First")).unwrap());
    let e = text(&options(7, "First§")).unwrap_err().to_string();
    assert!(e.contains("'§' is not in the model's vocabulary"), "{e}");
    // A model whose scores do not match the text's characters is refused, not indexed past.
    let mut wide = job.clone();
    let fc = wide.layers.iter_mut().find(|l| l.name == "fc").unwrap();
    fc.fields.set("num_output", 70i64);
    let wide_ws = dir.join("wide");
    train(&wide, &wide_ws, Existing::Refuse);
    let wide_checkpoint = wide_ws.join("checkpoints/step-00000100.safetensors");
    let e = singa::sample::sample(&wide, &registry, &wide_checkpoint, &options(7, "First"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("70 classes but the text has 58 characters"),
        "{e}"
    );
}

/// Gradient clipping: with plain SGD at learning rate 1, one step moves the parameters by
/// exactly the clipped gradient, whose global norm is `clip_norm` (the raw one is larger) and
/// whose values stay within `clip_value`.
#[test]
fn gradients_are_clipped_by_global_norm_and_by_value() {
    let dir = tmpdir("clip");
    synthetic_mnist(&dir, 200, 50, 8);
    let moved = |clip: singa::config::Clipping| -> Vec<f32> {
        let mut job = job(&dir, "train_steps = 1", 0.0);
        job.updater = singa::config::UpdaterConfig::sgd(1.0);
        job.updater.clip = clip;
        let options = TrainOptions::default();
        let mut t = Trainer::new(&job, &Registry::builtin(), &options).unwrap();
        let before = param_values(&t);
        t.run(&mut Silent).unwrap();
        let after = param_values(&t);
        before
            .iter()
            .zip(&after)
            .flat_map(|((_, b), (_, a))| b.iter().zip(a).map(|(x, y)| y - x))
            .collect()
    };
    let norm = |d: &[f32]| d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let raw = moved(Default::default());
    assert!(norm(&raw) > 0.05, "the raw gradient norm {}", norm(&raw));
    let by_norm = moved(singa::config::Clipping {
        norm: Some(0.01),
        value: None,
    });
    assert!((norm(&by_norm) - 0.01).abs() < 1e-5, "{}", norm(&by_norm));
    let by_value = moved(singa::config::Clipping {
        norm: None,
        value: Some(1e-3),
    });
    let largest = by_value.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(largest <= 1e-3 + 1e-7 && largest > 0.9e-3, "{largest}");
    let raw_largest = raw.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(raw_largest > 1e-3, "{raw_largest}");
}

/// The parameters `job` trains to with `threads` threads.
fn trained_params(job: &JobConfig, threads: usize) -> Vec<(String, Vec<f32>)> {
    let options = TrainOptions {
        threads: Some(threads),
        ..TrainOptions::default()
    };
    let mut t = Trainer::new(job, &Registry::builtin(), &options).unwrap();
    t.run(&mut Silent).unwrap();
    param_values(&t)
}

/// How far the parameters `job` trains to on two AllReduce workers (two threads, each with
/// half of every batch) end from those of one worker with the whole batch.
fn two_allreduce_workers_differ_by(job: &JobConfig) -> f32 {
    let mut two = job.clone();
    two.cluster = singa::config::Framework::AllReduce.preset(2);
    singa_tests::max_difference(&trained_params(job, 1), &trained_params(&two, 2))
}

/// Clipping on two synchronous workers trains as one worker does: per value (the servers
/// clamp the averaged gradient) and by the global norm (the servers add up their parts of it
/// and update with the same scale), beside the workers (AllReduce: two servers) and apart
/// from them (Sandblaster with two servers); and it clips (without it the parameters end far
/// elsewhere).
#[test]
fn clipping_on_two_synchronous_workers_equals_one_worker() {
    use singa::config::{Clipping, Framework};
    let dir = tmpdir("clip-cluster");
    synthetic_mnist(&dir, 200, 50, 8);
    let mut base = job(&dir, "train_steps = 10", 0.0);
    base.updater = singa::config::UpdaterConfig::sgd(1.0);
    let mut sandblaster = Framework::Sandblaster.preset(2);
    sandblaster.nservers_per_group = 2;
    for (name, clip) in [
        (
            "value",
            Clipping {
                norm: None,
                value: Some(1e-3),
            },
        ),
        (
            "norm",
            Clipping {
                norm: Some(0.05),
                value: None,
            },
        ),
        (
            "both",
            Clipping {
                norm: Some(0.05),
                value: Some(1e-2),
            },
        ),
    ] {
        let mut clipped = base.clone();
        clipped.updater.clip = clip;
        let one = trained_params(&clipped, 1);
        for cluster in [Framework::AllReduce.preset(2), sandblaster.clone()] {
            let mut two = clipped.clone();
            two.cluster = cluster;
            let diff = singa_tests::max_difference(&one, &trained_params(&two, 2));
            assert!(diff < 1e-6, "{name}: parameters differ by {diff}");
        }
        let apart = singa_tests::max_difference(&one, &trained_params(&base, 1));
        assert!(
            apart > 1e-2,
            "{name}: clipping changed the parameters by only {apart}"
        );
    }
}

/// BPTT under AllReduce: two workers, each with half of the streams (and its own carried
/// state), train the character model as one worker with the whole batch does.
#[test]
fn bptt_on_two_allreduce_workers_equals_one_worker() {
    let dir = tmpdir("bptt-allreduce");
    let top = "train_steps = 40";
    let one = char_model(&dir, "lstm", top);
    let diff = two_allreduce_workers_differ_by(&one);
    assert!(diff < 2e-5, "parameters differ by {diff}");
}

/// The RBM of [`rbm_job_text`] as a job.
fn rbm_job(dir: &Path, top: &str, below: &str, input: &str) -> JobConfig {
    JobConfig::from_toml(&rbm_job_text(dir, top, below, input), Default::default()).unwrap()
}

/// CD-1 lowers the reconstruction error of held-out data, and a run resumed from a
/// checkpoint (the hidden units' draws included) ends where an uninterrupted one does.
#[test]
fn an_rbm_learns_with_cd_and_resumes_exactly() {
    let dir = tmpdir("rbm");
    synthetic_mnist(&dir, 400, 100, 8);
    let top = |steps: u64| {
        format!("train_steps = {steps}\ndisplay_freq = 20\ntest_steps = 2\ncheckpoint_freq = 40")
    };
    let untrained = {
        let mut t = Trainer::new(
            &rbm_job(&dir, &top(80), "", "data"),
            &Registry::builtin(),
            &TrainOptions::default(),
        )
        .unwrap();
        metric(&t.evaluate().unwrap(), "reconstruction_error")
    };
    let (straight, summary) = train(
        &rbm_job(&dir, &top(80), "", "data"),
        &dir.join("a"),
        Existing::Refuse,
    );
    let trained = metric(&summary.test, "reconstruction_error");
    assert!(
        trained < 0.5 * untrained,
        "reconstruction error {untrained} before, {trained} after"
    );
    train(
        &rbm_job(&dir, &top(40), "", "data"),
        &dir.join("b"),
        Existing::Refuse,
    );
    let (resumed, _) = train(
        &rbm_job(&dir, &top(80), "", "data"),
        &dir.join("b"),
        Existing::Resume,
    );
    assert_eq!(param_values(&straight), param_values(&resumed));
}

/// Two AllReduce workers, each with half of every batch (and its rows' draws), train the RBM
/// as one worker does.
#[test]
fn cd_on_two_allreduce_workers_equals_one_worker() {
    let dir = tmpdir("rbm-allreduce");
    synthetic_mnist(&dir, 200, 50, 8);
    let one = rbm_job(&dir, "train_steps = 30", "", "data");
    let diff = two_allreduce_workers_differ_by(&one);
    assert!(diff < 1e-5, "parameters differ by {diff}");
}

/// `job` with its RBM layers `vis` and `hid` renamed `vis{suffix}` and `hid{suffix}`.
fn renamed_rbm(mut job: JobConfig, suffix: &str) -> JobConfig {
    for l in &mut job.layers {
        for name in std::iter::once(&mut l.name).chain(&mut l.srclayers) {
            if name == "vis" || name == "hid" {
                name.push_str(suffix);
            }
        }
    }
    job
}

/// SINGA's pretraining: a second RBM reads the data through the layer the first one trained
/// (`checkpoint_path` with a rename), which CD keeps fixed; the weight lands in a decoder
/// stored the other way round too.
#[test]
fn checkpoints_of_rbms_initialise_deeper_nets() {
    let dir = tmpdir("rbm-stack");
    synthetic_mnist(&dir, 200, 50, 8);
    let (first, _) = train(
        &rbm_job(&dir, "train_steps = 20", "", "data"),
        &dir.join("rbm1"),
        Existing::Refuse,
    );
    let values = param_values(&first);
    let value = |name: &str| values.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let fc1 = r#"
[[layer]]
name = "fc1"
type = "inner_product"
srclayers = "data"
num_output = 16

[[layer]]
name = "sig1"
type = "sigmoid"
srclayers = "fc1"
"#;
    let top = format!(
        "train_steps = 10\ncheckpoint_path = \"{}\"\n[checkpoint_rename]\n\"vis/weight\" = \"fc1/weight\"\n\"hid/bias\" = \"fc1/bias\"\n",
        dir.join("rbm1").display()
    );
    let mut second = renamed_rbm(rbm_job(&dir, &top, fc1, "sig1"), "2");
    second.name = "rbm2".into();
    let (t, _) = train(&second, &dir.join("rbm2"), Existing::Refuse);
    let after = param_values(&t);
    let get = |name: &str| after.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(
        get("fc1/weight"),
        value("vis/weight"),
        "fc1 is the first RBM's, untouched"
    );
    assert_eq!(get("fc1/bias"), value("hid/bias"));
    assert_ne!(get("vis2/weight"), value("vis/weight"));

    // On two AllReduce workers each worker's fixed layer has the checkpoint's values too.
    let diff = two_allreduce_workers_differ_by(&second);
    assert!(diff < 1e-5, "parameters differ by {diff}");

    // A rename to two names; a rename naming nothing, or a checkpoint matching nothing, fails.
    let mut wrong = second.clone();
    wrong
        .checkpoint_rename
        .push(("vis/weght".into(), "fc1/weight".into()));
    let e = Trainer::new(&wrong, &Registry::builtin(), &TrainOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("checkpoint_rename.\"vis/weght\": no checkpoint of checkpoint_path has a parameter of that name"), "{e}");
    let mut nothing = renamed_rbm(rbm_job(&dir, "train_steps = 10", "", "data"), "2");
    nothing.checkpoint_path = second.checkpoint_path.clone();
    let e = Trainer::new(&nothing, &Registry::builtin(), &TrainOptions::default())
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("none of its parameters is one of this net's"),
        "{e}"
    );

    // The same on two AllReduce workers in two processes (emulated: memory apart), where the
    // fixed layer reaches the second worker only in a message from the first.
    let mut two = second.clone();
    two.cluster = singa::config::Framework::AllReduce.preset(2);
    two.cluster.nprocs = 2;
    train(&two, &dir.join("rbm2-two"), Existing::Refuse);

    // A resumed run takes every value from its own checkpoint: the pretrained one is not read
    // again, and may have moved.
    std::fs::rename(dir.join("rbm1"), dir.join("rbm1-moved")).unwrap();
    let mut longer = second.clone();
    longer.train_steps = 20;
    let (t, summary) = train(&longer, &dir.join("rbm2"), Existing::Resume);
    assert_eq!(summary.steps, 20);
    let resumed = param_values(&t);
    assert_eq!(resumed[0], after[0], "fc1/weight stays the first RBM's");
    two.train_steps = 20;
    let (t, summary) = train(&two, &dir.join("rbm2-two"), Existing::Resume);
    assert_eq!(summary.steps, 20);
    let diff = singa_tests::max_difference(&resumed, &param_values(&t));
    assert!(
        diff < 1e-5,
        "two processes resumed differ from one by {diff}"
    );
}

/// `checkpoint_path` reaches every worker group, in one process too: Hogwild's second group
/// starts from the checkpoint's values as the first does, so with a learning rate of 0 the
/// groups' averages leave the checkpoint's values as they are (were the second group left
/// at its own initial values, the first average would move every parameter halfway there).
#[test]
fn checkpoints_initialise_every_worker_group() {
    let dir = tmpdir("pretrained-groups");
    synthetic_mnist(&dir, 200, 50, 8);
    let (first, _) = train(
        &job(&dir, "train_steps = 10", 0.0),
        &dir.join("a"),
        Existing::Refuse,
    );
    let top = format!(
        "train_steps = 4\ncheckpoint_path = \"{}\"",
        dir.join("a").display()
    );
    let mut hogwild = job(&dir, &top, 0.0);
    hogwild.updater = singa::config::UpdaterConfig::sgd(0.0);
    hogwild.cluster = singa::config::ClusterConfig {
        sync_freq: 1,
        ..singa::config::Framework::Hogwild.preset(2)
    };
    let (t, _) = train(&hogwild, &dir.join("b"), Existing::Refuse);
    let diff = singa_tests::max_difference(&param_values(&first), &param_values(&t));
    assert_eq!(
        diff, 0.0,
        "the groups' average moved the checkpoint's values by {diff}"
    );
}

/// The RBM's two-way link is the one cycle a net may have: any other is refused, in a CD
/// job as in a BP one.
#[test]
fn cycles_other_than_the_rbm_link_are_refused() {
    let dir = tmpdir("rbm-cycle");
    synthetic_mnist(&dir, 100, 50, 8);
    let cycle = r#"
[[layer]]
name = "a"
type = "inner_product"
srclayers = "b"
num_output = 4

[[layer]]
name = "b"
type = "sigmoid"
srclayers = "a"
"#;
    let job = rbm_job(&dir, "train_steps = 5", cycle, "data");
    let e = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default())
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("layer[a].srclayers: the layers a, b form a cycle; a net must be acyclic"),
        "{e}"
    );
    let ok = rbm_job(&dir, "train_steps = 5", "", "data");
    Trainer::new(&ok, &Registry::builtin(), &TrainOptions::default()).unwrap();
}

/// The state a BPTT net carries between batches starts again from zeros when the text does
/// (a new epoch), and is carried otherwise; an evaluation starts from zeros too.
#[test]
fn the_carried_state_is_reset_at_each_epoch() {
    let dir = tmpdir("bptt-epochs");
    let job = char_model(&dir, "gru", "train_steps = 2000\ntest_steps = 3");
    let mut t = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let carry = t
        .train_net()
        .layers()
        .iter()
        .position(|l| l.name == "rnn@carry")
        .unwrap();
    let zero = |t: &Trainer| {
        let v: Vec<f32> = t.train_net().outputs(carry)[0].to_vec().unwrap();
        v.iter().all(|&x| x == 0.0)
    };
    let mut resets = Vec::new();
    for step in 1..=1300u64 {
        t.train_step().unwrap();
        if zero(&t) {
            resets.push(step);
        }
    }
    // 38,000 training characters in 8 streams of 8-character batches: 593 batches an epoch.
    assert_eq!(resets, [593, 1186]);
    let first = t.evaluate().unwrap();
    assert_eq!(
        t.evaluate().unwrap(),
        first,
        "every evaluation starts alike"
    );
}

/// An MLP on the reference device in `precision` whose loss is weighted by `loss_weight`,
/// trained by plain SGD at `lr` (so that a tiny weight with a large rate learns as weight 1
/// does), with `device` settings added.
fn scaled_mlp(dir: &Path, precision: &str, loss_weight: f64, lr: f64, device: &str) -> JobConfig {
    scaled_mlp_on("reference", dir, precision, loss_weight, lr, device)
}

/// [`scaled_mlp`] on the device of type `kind`.
fn scaled_mlp_on(
    kind: &str,
    dir: &Path,
    precision: &str,
    loss_weight: f64,
    lr: f64,
    device: &str,
) -> JobConfig {
    let text = mlp_job(dir, "train_steps = 30", 32, 0.0)
        .replace(
            "type = \"cpu\"\nthreads = 2",
            &format!("type = \"{kind}\"\nprecision = \"{precision}\"\n{device}"),
        )
        .replace(
            "type = \"softmax_loss\"",
            &format!("type = \"softmax_loss\"\nscale = {loss_weight:e}"),
        );
    let mut job = JobConfig::from_toml(&text, Default::default()).unwrap();
    job.updater = singa::config::UpdaterConfig::sgd(lr);
    job
}

/// Runs `steps` training steps of `job` (no workspace) and returns the trainer and the
/// training metrics read once at the end.
fn run_steps(job: &JobConfig, steps: u64) -> (Trainer, Vec<(String, f64)>) {
    let mut t = Trainer::new(job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    for _ in 0..steps {
        t.train_step().unwrap();
    }
    let metrics = t.train_metrics().unwrap();
    (t, metrics)
}

/// A loss weighted by 1e-6 gives gradients below f16's smallest value: f16 products without
/// loss scaling flush them to zero and the weights do not learn, while the default dynamic
/// scaling (2^16) trains them as f32 does; on the reference device and on the CPU device.
#[test]
fn f16_with_loss_scaling_keeps_the_gradients_that_f16_alone_loses() {
    for kind in ["reference", "cpu"] {
        f16_loss_scaling_on(kind);
    }
}

fn f16_loss_scaling_on(kind: &str) {
    let dir = tmpdir(&format!("f16-underflow-{kind}"));
    synthetic_mnist(&dir, 200, 50, 8);
    let job =
        |precision: &str, device: &str| scaled_mlp_on(kind, &dir, precision, 1e-6, 5e4, device);
    let (start, _) = run_steps(&job("f32", ""), 0);
    let (f32_run, _) = run_steps(&job("f32", ""), 30);
    let (scaled, metrics) = run_steps(&job("f16", ""), 30);
    let (unscaled, _) = run_steps(&job("f16", "loss_scale = \"none\""), 30);
    assert_eq!(metric(&metrics, "loss_scale"), 65536.0, "{metrics:?}");
    assert_eq!(metric(&metrics, "skipped_steps"), 0.0, "{metrics:?}");
    let weights = |t: &Trainer| -> Vec<(String, Vec<f32>)> {
        param_values(t)
            .into_iter()
            .filter(|(n, _)| n.ends_with("weight"))
            .collect()
    };
    let diff = |a: &Trainer, b: &Trainer| singa_tests::max_difference(&weights(a), &weights(b));
    let learned = diff(&start, &f32_run);
    assert!(learned > 0.05, "f32 moved the weights by {learned}");
    assert_eq!(
        diff(&start, &unscaled),
        0.0,
        "unscaled f16 gradients should vanish"
    );
    let off = diff(&scaled, &f32_run);
    eprintln!("{kind}: f32 moved the weights by {learned}; scaled f16 is {off} from it");
    assert!(
        off < 0.05 * learned,
        "scaled f16 is {off} from f32, which moved {learned}"
    );
}

/// A loss scale far too large overflows f16: those steps are skipped (and counted), the scale
/// halves each time, and training then goes on.
#[test]
fn f16_steps_that_overflow_are_skipped_and_the_scale_halves() {
    let dir = tmpdir("f16-overflow");
    synthetic_mnist(&dir, 200, 50, 8);
    let init = 2f32.powi(40);
    let device = format!("loss_scale = {{ init = {init:e}, growth_interval = 1000 }}");
    let job = scaled_mlp(&dir, "f16", 1.0, 0.05, &device);
    let (t, metrics) = run_steps(&job, 30);
    let skipped = metric(&metrics, "skipped_steps");
    eprintln!("{metrics:?}");
    assert!((10.0..30.0).contains(&skipped), "{metrics:?}");
    assert_eq!(
        metric(&metrics, "loss_scale"),
        init as f64 / 2f64.powf(skipped),
        "{metrics:?}"
    );
    let (start, _) = run_steps(&job, 0);
    let moved = singa_tests::max_difference(&param_values(&start), &param_values(&t));
    assert!(moved > 0.0, "the steps after the overflows train");
}

/// The scaler's state is part of the checkpoint: with a scale that doubles after every step
/// and gradients small enough that it matters, a stopped f16 run resumes bitwise, on one
/// worker and on two workers with two separate servers (whose copies of the scaler are
/// restored with the coordinator's).
#[test]
fn an_f16_run_resumes_its_loss_scale_exactly() {
    let dir = tmpdir("f16-resume");
    synthetic_mnist(&dir, 200, 50, 8);
    let mut sandblaster = singa::config::Framework::Sandblaster.preset(2);
    sandblaster.nservers_per_group = 2;
    for (name, cluster) in [("one", None), ("sandblaster", Some(sandblaster))] {
        let steps = |n: u64| {
            let device = "loss_scale = { init = 1, growth_interval = 1 }";
            let mut job = scaled_mlp(&dir, "f16", 1e-6, 5e4, device);
            job.train_steps = n;
            job.checkpoint_freq = 6;
            if let Some(c) = &cluster {
                job.cluster = c.clone();
            }
            job
        };
        let ws = |run: &str| dir.join(format!("{name}-{run}"));
        let (straight, _) = train(&steps(12), &ws("a"), Existing::Refuse);
        train(&steps(6), &ws("b"), Existing::Refuse);
        let (resumed, summary) = train(&steps(12), &ws("b"), Existing::Resume);
        assert_eq!(metric(&summary.train, "loss_scale"), 4096.0, "{name}");
        assert_eq!(param_values(&straight), param_values(&resumed), "{name}");
    }
}

/// At a fixed scale that always overflows, training stops as diverged, naming the step and
/// the gradient that overflowed.
#[test]
fn f16_overflow_at_a_fixed_scale_stops_training_naming_the_gradient() {
    let dir = tmpdir("f16-fixed-overflow");
    synthetic_mnist(&dir, 200, 50, 8);
    let job = scaled_mlp(&dir, "f16", 1.0, 0.05, "loss_scale = 1e30");
    let mut t = Trainer::new(&job, &Registry::builtin(), &TrainOptions::default()).unwrap();
    let e = (0..100).find_map(|_| t.train_step().err()).unwrap();
    let e = e.to_string();
    assert!(
        e.starts_with("step 40: training diverged: the gradients of step 40 are not finite"),
        "{e}"
    );
    assert!(e.contains("; the gradient of fc"), "{e}");
}

/// Loss scaling on two synchronous workers trains as one worker does, beside the workers
/// (AllReduce: two servers) and apart from them (Sandblaster with two servers): small
/// gradients scaled into f16's range by a growing scale, and steps that overflow, skipped by
/// every server at once (with clipping by value and by norm of the unscaled gradients). (At
/// scales that leave gradients among f16's subnormal numbers, two workers' halves of a batch
/// round differently from one worker's whole batch: there they cannot agree bit for bit.)
#[test]
fn f16_loss_scaling_on_two_synchronous_workers_equals_one_worker() {
    use singa::config::{Clipping, Framework};
    let dir = tmpdir("f16-cluster");
    synthetic_mnist(&dir, 200, 50, 8);
    let mut sandblaster = Framework::Sandblaster.preset(2);
    sandblaster.nservers_per_group = 2;
    let overflow = format!(
        "loss_scale = {{ init = {:e}, growth_interval = 1000 }}",
        2f32.powi(40)
    );
    let mut tiny = scaled_mlp(
        &dir,
        "f16",
        1e-6,
        5e4,
        "loss_scale = { growth_interval = 2 }",
    );
    tiny.train_steps = 20;
    let mut clipped = scaled_mlp(&dir, "f16", 1.0, 0.5, &overflow);
    clipped.updater.clip = Clipping {
        norm: Some(0.05),
        value: Some(1e-2),
    };
    for (name, job) in [("tiny", tiny), ("overflow", clipped)] {
        let (one, one_metrics) = run_steps(&job, job.train_steps);
        for cluster in [Framework::AllReduce.preset(2), sandblaster.clone()] {
            let mut two = job.clone();
            two.cluster = cluster;
            let (t, metrics) = run_steps(&two, job.train_steps);
            let diff = singa_tests::max_difference(&param_values(&one), &param_values(&t));
            assert!(diff < 1e-6, "{name}: parameters differ by {diff}");
            for m in ["loss_scale", "skipped_steps"] {
                assert_eq!(metric(&metrics, m), metric(&one_metrics, m), "{name}: {m}");
            }
        }
        eprintln!("{name}: {one_metrics:?}");
    }
}

/// In asynchronous clusters each worker group's step is clipped by its own global norm (the
/// servers agree on it group by group): after one step of plain SGD at rate 1 with two
/// groups, Downpour's master moved by the sum of two clipped gradients (each of norm
/// `clip_norm`) and Hogwild's average by half of it.
#[test]
fn clipping_by_norm_clips_each_asynchronous_groups_step() {
    use singa::config::{Clipping, Framework};
    let dir = tmpdir("clip-async");
    synthetic_mnist(&dir, 200, 50, 8);
    let norm = |d: &[f32]| d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    for (framework, most) in [(Framework::Downpour, 0.02), (Framework::Hogwild, 0.01)] {
        let moved = |clip: Option<f32>| -> f64 {
            let mut job = job(&dir, "train_steps = 1", 0.0);
            job.updater = singa::config::UpdaterConfig::sgd(1.0);
            job.updater.clip = Clipping {
                norm: clip,
                value: None,
            };
            job.cluster = framework.preset(2);
            let options = TrainOptions {
                threads: Some(2),
                ..TrainOptions::default()
            };
            let mut t = Trainer::new(&job, &Registry::builtin(), &options).unwrap();
            let before = param_values(&t);
            t.run(&mut Silent).unwrap();
            let after = param_values(&t);
            let d: Vec<f32> = before
                .iter()
                .zip(&after)
                .flat_map(|((_, b), (_, a))| b.iter().zip(a).map(|(x, y)| y - x))
                .collect();
            norm(&d)
        };
        let raw = moved(None);
        assert!(
            raw > 0.1,
            "{framework:?}: unclipped, the parameters moved {raw}"
        );
        let clipped = moved(Some(0.01));
        assert!(
            clipped <= most + 1e-6 && clipped > most / 2.0,
            "{framework:?}: clipped, the parameters moved {clipped}"
        );
    }
}
