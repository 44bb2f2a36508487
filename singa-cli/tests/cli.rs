//! The `singa` command as a user runs it: happy paths, and bad input that must give one clear
//! error line, a non-zero exit status and no damage.

#[path = "../../tests/common/lib.rs"]
#[allow(dead_code)]
mod common;

use common::{mlp_job, synthetic_mnist, tmpdir};
use std::path::Path;
use std::process::{Command, Output};

fn singa(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_singa"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the singa binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the command failed with one error line, the last on stderr, containing `needle`.
fn fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{err}");
    assert_eq!(
        err.lines().last(),
        Some(errors[0]),
        "the error comes last:\n{err}"
    );
    assert!(errors[0].contains(needle), "expected {needle:?} in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A folder with synthetic data and a job file; returns (folder, job path).
fn setup(name: &str, top: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = tmpdir(name);
    synthetic_mnist(&dir, 200, 100, 8);
    let job = dir.join("job.toml");
    std::fs::write(&job, mlp_job(&dir, top, 16, 0.0)).unwrap();
    (dir, job)
}

#[test]
fn train_writes_metrics_summary_and_checkpoints() {
    let (dir, job) = setup(
        "cli-train",
        "train_steps = 20\ndisplay_freq = 10\ntest_freq = 10\ntest_steps = 2",
    );
    let o = singa(&["train", job.to_str().unwrap(), "--workspace", "ws"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("step      10  train  loss"), "{err}");
    assert!(err.contains("step      20  test   loss"), "{err}");
    assert!(err.contains("done: 20 steps"), "{err}");
    for f in [
        "metrics.jsonl",
        "summary.json",
        "checkpoints/step-00000020.safetensors",
    ] {
        assert!(dir.join("ws").join(f).exists(), "{f} missing");
    }
    // Evaluating the checkpoint gives the final test metrics.
    let o = singa(
        &[
            "test",
            job.to_str().unwrap(),
            "--checkpoint",
            "ws/checkpoints/step-00000020.safetensors",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("step      20  test   loss"),
        "{}",
        stdout(&o)
    );
    // Training again into the same workspace is refused without --resume or --overwrite.
    let o = singa(&["train", job.to_str().unwrap(), "--workspace", "ws"], &dir);
    fails_with(
        &o,
        "already holds a run (checkpoint at step 20); pass --resume",
    );
    let o = singa(
        &[
            "train",
            job.to_str().unwrap(),
            "--workspace",
            "ws",
            "--overwrite",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn dry_run_prints_the_nets() {
    let (dir, job) = setup("cli-dry", "train_steps = 5\ntest_steps = 1");
    // Before the data is imported, a dry run says what training would import, and imports
    // nothing.
    let o = singa(&["train", job.to_str().unwrap(), "--dry-run"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("would import the mnist data of")
            && out.contains("train.shard does not exist yet"),
        "{out}"
    );
    assert!(!dir.join("train.shard").exists() && !dir.join("test.shard").exists());
    let o = singa(&["data", "import", "mnist", ".", "."], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = singa(&["train", job.to_str().unwrap(), "--dry-run"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // Columns are aligned; compare the words of each line.
    let words = words_of(&out);
    let fc1 = "fc1 inner_product <- data -> [32, 16] f32 [weight [64, 16], bias [16]]";
    assert!(words.iter().any(|l| l == fc1), "{out}");
    assert!(out.contains("test net:"), "{out}");

    // A job for two GPUs is shown on a machine without them too, each worker's GPU named.
    let text = std::fs::read_to_string(&job).unwrap();
    let gpus = text.replace("type = \"cpu\"\nthreads = 2", "type = \"cuda\"")
        + "\n[cluster]\nframework = \"allreduce\"\nnworkers_per_group = 2\nnprocs = 2\ngpus = [0, 1]\n";
    let gpu_job = dir.join("gpus.toml");
    std::fs::write(&gpu_job, gpus).unwrap();
    let o = singa(&["train", gpu_job.to_str().unwrap(), "--dry-run"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("rank 0: worker 0.0 (GPU 0); server 0.0"),
        "{out}"
    );
    assert!(
        out.contains("rank 1: worker 0.1 (GPU 1); server 0.1"),
        "{out}"
    );
    let fc1 = "fc1 inner_product <- data -> [16, 16] f32 [weight [64, 16], bias [16]]";
    assert!(words_of(&out).iter().any(|l| l == fc1), "{out}");
    let gpu_here = !out.contains("the nets are built on the reference device here");
    assert!(
        gpu_here || out.contains("cannot run the job's: device cuda"),
        "{out}"
    );
}

/// The words of each line of `out`, one space apart (columns are aligned with spaces).
fn words_of(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn cost_predicts_every_framework_asked_for_from_one_measurement() {
    let (dir, job) = setup("cli-cost", "train_steps = 5");
    let o = singa(
        &[
            "cost",
            job.to_str().unwrap(),
            "--per-worker",
            "16",
            "--workers",
            "1,4,64",
            "--framework",
            "allreduce,sandblaster,downpour,hogwild",
            "--servers",
            "2",
            "--gbits",
            "0.01",
            "--reps",
            "1",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // One table per framework, one row per worker count.
    assert_eq!(
        out.matches("| workers | batch per worker |").count(),
        4,
        "{out}"
    );
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| 64 | 16 |"))
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    // At 10 Mbit/s, 64 workers and 2 servers are bound by the network.
    assert!(rows[0].ends_with("| workers' links |"), "{out}");
    assert!(rows[1].ends_with("| servers' links |"), "{out}");
    assert!(rows[2].ends_with("| servers' links |"), "{out}");
    // Every row's throughput is a number.
    for row in rows {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells[6].parse::<f64>().is_ok_and(|t| t > 0.0), "{row}");
    }
}

#[test]
fn job_file_mistakes_name_file_field_and_expectation() {
    let (dir, job) = setup("cli-badjob", "train_steps = 5");
    let text = std::fs::read_to_string(&job).unwrap();
    let cases = [
        (text.replace("num_output = 16", "num_ouput = 16"), "layer[fc1].num_ouput: unknown field; did you mean `num_output`?"),
        (text.replace("train_steps = 5", "train_steps = \"five\""), "train_steps: expected a non-negative integer, got the string \"five\""),
        (text.replace("type = \"stanh\"", "type = \"stahn\""), "layer[act].type: unknown layer type \"stahn\""),
        (text.replace("srclayers = \"act\"", "srclayers = \"acts\""), "layer[drop].srclayers: no layer named \"acts\" in the train net; did you mean \"act\"?"),
        (text.replace("momentum = 0.9", "momentum = true"), "updater.momentum: expected a number, got true"),
        (text.replace("[[layer]]\nname = \"fc2\"", "[[layer]]\nname = \"fc2\"\nbogus ="), "syntax: line"),
        (text.replace("\"fc2\", \"data:label\"", "\"fc2\", \"data:labels\""), "layer \"data\" has no output \"labels\" (its outputs: data, label)"),
        (text.replacen("batch_size = 32", "batch_size = 0", 1), "job.toml: layer[data]: batch_size must be at least 1"),
        (text.replace("dropout_ratio = 0", "dropout_ratio = 1.5"), "job.toml: layer[drop]: dropout_ratio must be in [0, 1), got 1.5"),
        (text.replace("threads = 2", "threads = 100000"), "device.threads: expected 1 to 1024, got 100000"),
    ];
    for (bad, needle) in cases {
        std::fs::write(&job, bad).unwrap();
        let o = singa(&["train", job.to_str().unwrap(), "--workspace", "ws"], &dir);
        fails_with(&o, needle);
        assert!(
            stderr(&o).contains("job.toml"),
            "the file is named: {}",
            stderr(&o)
        );
    }
    let o = singa(&["train", "no-such-job.toml"], &dir);
    fails_with(&o, "no-such-job.toml: No such file or directory");
}

#[test]
fn missing_and_corrupted_data_are_reported_with_file_and_offset() {
    let (dir, job) = setup("cli-baddata", "train_steps = 30");
    let text = std::fs::read_to_string(&job).unwrap();
    // A shard that does not exist, without an import step.
    let missing = text
        .replacen("path = \"", "path = \"/nonexistent", 1)
        .replacen("import = {", "# import = {", 1);
    std::fs::write(&job, missing).unwrap();
    let o = singa(
        &["train", job.to_str().unwrap(), "--workspace", "ws1"],
        &dir,
    );
    fails_with(&o, "/nonexistent");

    // A shard with one corrupted record.
    std::fs::write(&job, &text).unwrap();
    let o = singa(
        &[
            "data",
            "import",
            "mnist",
            dir.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let shard = dir.join("train.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    let offset = 128 + 7 * (4 + 64); // record 7: a 4-byte label and 64 pixels each
    bytes[offset + 10] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let o = singa(
        &["train", job.to_str().unwrap(), "--workspace", "ws2"],
        &dir,
    );
    fails_with(
        &o,
        &format!("train.shard: at byte offset {offset}: record 7 checksum mismatch"),
    );
    // Found while training: the job file is named too.
    fails_with(&o, "job.toml: step ");
    let o = singa(&["data", "inspect", shard.to_str().unwrap()], &dir);
    fails_with(
        &o,
        &format!("at byte offset {offset}: record 7 checksum mismatch"),
    );
}

#[test]
fn resuming_with_another_net_is_refused_and_keeps_the_checkpoint() {
    let (dir, job) = setup("cli-othernet", "train_steps = 5");
    let o = singa(&["train", job.to_str().unwrap(), "--workspace", "ws"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = dir.join("ws/checkpoints/step-00000005.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("num_output = 16", "num_output = 20")
        .replace("train_steps = 5", "train_steps = 9");
    std::fs::write(&job, text).unwrap();
    let o = singa(
        &[
            "train",
            job.to_str().unwrap(),
            "--workspace",
            "ws",
            "--resume",
        ],
        &dir,
    );
    fails_with(&o, "does not match this net: parameter fc1/weight has shape [64, 16] in the checkpoint but [64, 20] in the net");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
}

#[test]
fn data_tools_and_layer_listing() {
    let dir = tmpdir("cli-data");
    synthetic_mnist(&dir, 30, 10, 8);
    let o = singa(&["data", "import", "mnist", ".", "shards"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("shards/train.shard (30 records)"),
        "{}",
        stdout(&o)
    );
    let o = singa(&["data", "inspect", "shards/test.shard", "-n", "1"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("10 records"), "{out}");
    assert!(
        out.contains("record    u8 [1, 8, 8], with an i32 label"),
        "{out}"
    );
    assert!(out.contains("checksums all 10 records verified"), "{out}");
    let o = singa(&["data", "import", "cifar", ".", "x"], &dir);
    fails_with(&o, "unknown data set kind \"cifar\"");

    let o = singa(&["layers"], &dir);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("inner_product  (built in)"), "{out}");
    assert!(out.contains("num_output     int      (required)"), "{out}");
    assert!(out.contains("sgd  (built in)"), "{out}");
}

#[test]
fn a_diverging_run_stops_naming_the_step_layer_and_parameter_and_keeps_its_last_checkpoint() {
    // A learning rate of a million: the loss is no number within a few steps.
    let (dir, job) = setup(
        "cli-diverge",
        "train_steps = 200\ndisplay_freq = 1\ncheckpoint_freq = 1\ntest_steps = 1",
    );
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(&job, text.replace("base = 0.05", "base = 1e6")).unwrap();
    let o = singa(&["train", job.to_str().unwrap(), "--workspace", "ws"], &dir);
    fails_with(
        &o,
        "training diverged: layer loss (softmax_loss) reports loss = ",
    );
    let err = stderr(&o);
    let line = err.lines().last().unwrap();
    assert!(line.starts_with("error: step "), "{line}");
    assert!(
        line.contains("every parameter is still finite") || line.contains(" holds "),
        "says which parameter: {line}"
    );
    assert!(line.contains("the last checkpoint"), "{line}");
    // Every checkpoint left is one of finite values, and evaluates.
    let kept = std::fs::read_dir(dir.join("ws/checkpoints"))
        .unwrap()
        .count();
    assert!(kept > 0, "{err}");
    let o = singa(
        &[
            "test",
            job.to_str().unwrap(),
            "--checkpoint",
            "ws/checkpoints/step-00000001.safetensors",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("NaN"), "{}", stdout(&o));

    // Inputs scaled by 3e38: the input layer's values overflow.
    let (dir, job) = setup("cli-overflow", "train_steps = 20");
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        text.replace("scale = 0.00392156862745098", "scale = 3e38"),
    )
    .unwrap();
    let o = singa(&["train", job.to_str().unwrap()], &dir);
    fails_with(&o, "training diverged");
    assert!(
        stderr(&o).contains("the first layer whose output is not finite is data (shard_data)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn values_that_make_no_sense_are_refused_naming_the_field() {
    let (dir, job) = setup("cli-nonsense", "train_steps = 5");
    let text = std::fs::read_to_string(&job).unwrap();
    for (from, to, field) in [
        ("base = 0.05", "base = nan", "updater.learning_rate.base"),
        ("base = 0.05", "base = inf", "updater.learning_rate.base"),
        ("base = 0.05", "base = -0.1", "base must be at least 0"),
        ("gamma = 0.5", "gamma = nan", "updater.learning_rate.gamma"),
        ("gamma = 0.5", "gamma = -2.0", "gamma must be more than 0"),
        (
            "scale = 0.00392156862745098",
            "scale = nan",
            "layer[data].scale",
        ),
        (
            "weight_decay = 1e-4",
            "weight_decay = inf",
            "updater.weight_decay",
        ),
    ] {
        std::fs::write(&job, text.replacen(from, to, 1)).unwrap();
        let o = singa(&["train", job.to_str().unwrap()], &dir);
        fails_with(&o, field);
        assert!(stderr(&o).contains("job.toml"), "{}", stderr(&o));
    }
    // An error while building the net names the job file as well as the layer.
    let shard = format!("{}/train.shard", dir.display());
    std::fs::write(&job, text.replacen(&shard, &dir.display().to_string(), 1)).unwrap();
    let o = singa(&["train", job.to_str().unwrap()], &dir);
    fails_with(&o, "job.toml: layer data (shard_data): ");
    assert!(
        stderr(&o).contains("is a directory; expected a file"),
        "{}",
        stderr(&o)
    );
    // A net without a loss layer would train nothing.
    let start = text
        .find("[[layer]]\nname = \"loss\"")
        .expect("the loss layer");
    std::fs::write(&job, &text[..start]).unwrap();
    let o = singa(&["train", job.to_str().unwrap()], &dir);
    fails_with(&o, "the train net has no loss layer");
}

/// Waits for `child` at most `seconds`; kills it and fails if it is still running.
fn wait_at_most(child: &mut std::process::Child, seconds: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running {seconds} s after its reader closed the pipe");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_closed_pipe_ends_the_program_quietly_and_keeps_the_checkpoints() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let (dir, job) = setup(
        "cli-pipe",
        "train_steps = 1000000\ndisplay_freq = 1\ncheckpoint_freq = 5\ntest_steps = 1",
    );
    // `singa train ... 2>&1 | head`: the reader goes after the first checkpoint.
    let mut child = Command::new(env!("CARGO_BIN_EXE_singa"))
        .args(["train", job.to_str().unwrap(), "--workspace", "ws"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let checkpoint = line.starts_with("checkpoint ");
        seen.push(line);
        if checkpoint {
            break;
        }
    }
    drop(lines);
    let status = wait_at_most(&mut child, 60);
    assert_eq!(status.code(), Some(141), "{seen:?}");
    let o = singa(
        &[
            "test",
            job.to_str().unwrap(),
            "--checkpoint",
            "ws/checkpoints/step-00000005.safetensors",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // `singa layers | head -0`, `singa train --dry-run | true`: no panic either.
    for args in [
        vec!["layers"],
        vec!["train", job.to_str().unwrap(), "--dry-run"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_singa"))
            .args(&args)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            matches!(o.status.code(), Some(0 | 141)),
            "{args:?}: {:?} {err}",
            o.status
        );
    }
}

/// Rewrites checkpoint `path`: each tensor through `tensor(name, shape, values)`, the metadata
/// through `meta`.
fn rewrite_checkpoint(
    path: &Path,
    tensor: impl Fn(&str, &mut Vec<usize>, &mut Vec<f32>),
    meta: impl Fn(&mut std::collections::HashMap<String, String>),
) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut md = header.metadata().clone().unwrap_or_default();
    meta(&mut md);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut shape = view.shape().to_vec();
        let mut values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        tensor(&name, &mut shape, &mut values);
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, shape, data));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, Some(md)).unwrap()).unwrap();
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused_or_named() {
    let (dir, job) = setup(
        "cli-badckpt",
        "train_steps = 10\ndisplay_freq = 1\ncheckpoint_freq = 5\ntest_steps = 1",
    );
    let j = job.to_str().unwrap();
    let o = singa(&["train", j, "--workspace", "ws"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = dir.join("ws/checkpoints/step-00000005.safetensors");
    let good = std::fs::read(&ckpt).unwrap();
    let test = || singa(&["test", j, "--checkpoint", ckpt.to_str().unwrap()], &dir);
    let resume = || singa(&["train", j, "--workspace", "ws", "--resume"], &dir);
    let restore = || {
        std::fs::write(&ckpt, &good).unwrap();
        let _ = std::fs::remove_file(dir.join("ws/checkpoints/step-00000010.safetensors"));
    };
    restore();

    // A NaN among the weights.
    rewrite_checkpoint(
        &ckpt,
        |name, _, v| {
            if name == "param/fc1/weight" {
                v[3] = f32::NAN;
            }
        },
        |_| {},
    );
    fails_with(&test(), "tensor param/fc1/weight holds NaN at element 3");
    fails_with(
        &resume(),
        "step-00000005.safetensors: tensor param/fc1/weight holds NaN",
    );
    restore();

    // A step past the job's end.
    rewrite_checkpoint(
        &ckpt,
        |_, _, _| {},
        |m| {
            m.insert("step".into(), "1000000".into());
        },
    );
    fails_with(
        &resume(),
        "it is of step 1000000, past this job's train_steps = 10",
    );
    restore();

    // Updater state of the right size but another shape.
    rewrite_checkpoint(
        &ckpt,
        |name, shape, _| {
            if name.starts_with("state/fc1/weight/") {
                shape.reverse();
            }
        },
        |_| {},
    );
    fails_with(&resume(), "tensor state/fc1/weight/");
    restore();

    // No data position: the run goes on, said.
    rewrite_checkpoint(
        &ckpt,
        |_, _, _| {},
        |m| {
            m.insert("layer_states".into(), "{}".into());
        },
    );
    let o = resume();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("has no state for layer data: it starts from the beginning"),
        "{}",
        stderr(&o)
    );
    restore();

    // Another job's checkpoint with the same shapes: used, said.
    rewrite_checkpoint(
        &ckpt,
        |_, _, _| {},
        |m| {
            m.insert("job".into(), "mnist-mlp".into());
        },
    );
    let o = test();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("was written by job \"mnist-mlp\", not \"e2e\""),
        "{}",
        stderr(&o)
    );
    restore();
}

#[test]
fn a_resumed_run_logs_each_step_once_and_clears_what_a_crash_left() {
    let (dir, job) = setup(
        "cli-rewind",
        "train_steps = 10\ndisplay_freq = 1\ncheckpoint_freq = 5",
    );
    let j = job.to_str().unwrap();
    let o = singa(&["train", j, "--workspace", "ws"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    // As if killed after logging step 10 but before its checkpoint, mid-write.
    let ckpts = dir.join("ws/checkpoints");
    std::fs::remove_file(ckpts.join("step-00000010.safetensors")).unwrap();
    let stale = ckpts.join("step-00000010.tmp.999999999");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let o = singa(&["train", j, "--workspace", "ws", "--resume"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stale.exists(),
        "the crashed write's temporary file is left"
    );
    let log = std::fs::read_to_string(dir.join("ws/metrics.jsonl")).unwrap();
    let mut steps: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("\"train\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let logged = steps.len();
    steps.dedup();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>(), "{log}");
    assert_eq!(logged, 10, "{log}");
}

#[test]
fn net_prints_each_layers_cost_and_plot_draws_the_runs() {
    let (dir, job) = setup(
        "cli-net-plot",
        "train_steps = 20\ndisplay_freq = 5\ntest_freq = 10\ntest_steps = 1",
    );
    let j = job.to_str().unwrap();
    // Before the data is imported, `net` says what to do.
    let o = singa(&["net", j], &dir);
    fails_with(&o, "import it first (singa data import mnist");
    for ws in ["a", "b"] {
        let o = singa(&["train", j, "--workspace", ws], &dir);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = singa(&["net", j], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let words: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    // fc1: 64 inputs × 16 outputs, a multiply-add each, and 16 biases.
    assert!(
        words.contains(&"fc1 inner_product [32, 16] f32 1,040 2.1 k".to_string()),
        "{out}"
    );
    // The totals: fc1's 1,040 values and fc2's 16 × 4 + 4.
    assert!(words.iter().any(|l| l.starts_with("total 1,108 ")), "{out}");

    let o = singa(&["plot", "a", "b", "--out", "both.svg"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "wrote both.svg (2 runs)");
    let svg = std::fs::read_to_string(dir.join("both.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // Two runs × training and test × loss and accuracy × steps and wall time.
    assert_eq!(svg.matches("<polyline").count(), 16, "{svg}");
    let o = singa(&["plot", "a"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("a/run.svg").exists());
    let o = singa(&["plot", "nowhere"], &dir);
    fails_with(&o, "nowhere");
    // `train --plot` draws as it goes.
    let o = singa(&["train", j, "--workspace", "c", "--plot"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(dir.join("c/run.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 8, "{svg}");
}

#[test]
fn predict_gives_the_test_accuracy_and_writes_features() {
    let (dir, job) = setup(
        "cli-predict",
        "train_steps = 30\ntest_steps = 2\ncheckpoint_freq = 0",
    );
    let j = job.to_str().unwrap();
    let o = singa(&["train", j, "--workspace", "ws"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = "ws/checkpoints/step-00000030.safetensors";
    // The test net reads 2 batches of 50: the whole test shard of 100 images.
    let o = singa(&["test", j, "--checkpoint", ckpt], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let tested = stdout(&o);
    let accuracy = tested.split("accuracy ").nth(1).unwrap().trim().to_string();
    let o = singa(&["predict", j, "--checkpoint", ckpt, "--top", "2"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.lines().count(),
        101,
        "a header and a line per sample:\n{out}"
    );
    assert!(
        out.lines().nth(1).unwrap().trim_start().starts_with("0 "),
        "{out}"
    );
    assert!(
        stderr(&o).contains("100 samples of ")
            && stderr(&o).contains(&format!("top-1 accuracy {accuracy} against its labels")),
        "predict: {} test: {tested}",
        stderr(&o)
    );
    // The IDX files MNIST ships: the labels file beside the images is read too.
    let o = singa(
        &[
            "predict",
            j,
            "--checkpoint",
            ckpt,
            "--input",
            "t10k-images-idx3-ubyte.gz",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("top-1 accuracy {accuracy} against its labels")),
        "{}",
        stderr(&o)
    );
    // Without it, the images are predicted unlabelled.
    std::fs::create_dir_all(dir.join("alone")).unwrap();
    std::fs::copy(
        dir.join("t10k-images-idx3-ubyte.gz"),
        dir.join("alone/t10k-images-idx3-ubyte.gz"),
    )
    .unwrap();
    let o = singa(
        &[
            "predict",
            j,
            "--checkpoint",
            ckpt,
            "--input",
            "alone/t10k-images-idx3-ubyte.gz",
            "-n",
            "2",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    assert!(!stderr(&o).contains("accuracy"), "{}", stderr(&o));
    // CSV and JSON lines of the first samples of another shard.
    let o = singa(
        &[
            "predict",
            j,
            "--checkpoint",
            ckpt,
            "--input",
            "train.shard",
            "-n",
            "3",
            "--format",
            "csv",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.lines().next(),
        Some("sample,label,class_1,probability_1")
    );
    assert_eq!(out.lines().count(), 4, "{out}");
    let o = singa(
        &[
            "predict",
            j,
            "--checkpoint",
            ckpt,
            "-n",
            "1",
            "--format",
            "jsonl",
        ],
        &dir,
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["sample"], 0);
    assert!(v["top"][0]["probability"].as_f64().unwrap() > 0.0);
    // Features: fc1's 16 outputs per sample.
    let o = singa(
        &[
            "predict",
            j,
            "--checkpoint",
            ckpt,
            "-n",
            "2",
            "--features",
            "fc1",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.lines().nth(1).unwrap().split(',').count(),
        2 + 16,
        "{out}"
    );
    // The checkpoint records the job: predict needs nothing else, from any folder.
    let o = singa(
        &[
            "predict",
            "--checkpoint",
            dir.join(ckpt).to_str().unwrap(),
            "-n",
            "100",
        ],
        Path::new("/"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("top-1 accuracy {accuracy} against its labels")),
        "{}",
        stderr(&o)
    );
    // Mistakes: one line each, naming the file.
    let o = singa(
        &["predict", j, "--checkpoint", ckpt, "--features", "fc9"],
        &dir,
    );
    fails_with(
        &o,
        "job.toml: --features: the test net has no layer fc9 (its layers: data,",
    );
    let o = singa(&["predict", j, "--checkpoint", "nothing.safetensors"], &dir);
    fails_with(&o, "nothing.safetensors");
}

#[test]
fn export_writes_an_onnx_model_and_says_what_it_takes() {
    let (dir, job) = setup(
        "cli-export",
        "train_steps = 10\ntest_steps = 2\ncheckpoint_freq = 0",
    );
    let j = job.to_str().unwrap();
    let o = singa(&["train", j, "--workspace", "ws"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = "ws/checkpoints/step-00000010.safetensors";
    // From the checkpoint alone: it records the job.
    let o = singa(
        &["export", "--checkpoint", ckpt, "--onnx", "model.onnx"],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(lines[0].starts_with("wrote model.onnx ("), "{out}");
    assert!(lines[0].ends_with("kB): ONNX opset 21, 8 nodes"), "{out}");
    assert!(
        lines[1].starts_with("input data float32 [batch, 1, 8, 8] the stored values times 0.0039"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("output prob float32 [batch, 4]"),
        "{out}"
    );
    assert_eq!(
        lines[3],
        "metadata: singa.preprocessing, singa.classes, singa.job"
    );
    // An ONNX model is a protobuf message opening with its IR version (field 1): 10.
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    assert_eq!(&bytes[..2], &[0x08, 10]);
    // Mistakes: one line each, naming the file.
    let o = singa(
        &[
            "export",
            j,
            "--checkpoint",
            "nothing.safetensors",
            "--onnx",
            "m.onnx",
        ],
        &dir,
    );
    fails_with(&o, "nothing.safetensors");
    // Folders are made as needed; a file in the way is named.
    let o = singa(
        &["export", j, "--checkpoint", ckpt, "--onnx", "new/m.onnx"],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = singa(
        &[
            "export",
            j,
            "--checkpoint",
            ckpt,
            "--onnx",
            "model.onnx/m.onnx",
        ],
        &dir,
    );
    fails_with(&o, "model.onnx");
}

/// Writes a `side`×`side` PNG of one colour (with a little noise) to `path`.
fn png(path: &Path, side: u32, rgb: [u8; 3], seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        let n = ((x * 7 + y * 13 + seed * 31) % 40) as u8;
        image::Rgb(rgb.map(|c| c.saturating_add(n)))
    });
    img.save(path).unwrap();
}

#[test]
fn predict_names_the_classes_of_image_files_and_refuses_other_sizes() {
    let dir = tmpdir("cli-predict-images");
    let (red, blue) = ([200, 0, 0], [0, 0, 200]);
    for (split, n) in [("train", 40), ("test", 10)] {
        for k in 0..n {
            png(&dir.join(format!("src/{split}/red/{k}.png")), 4, red, k);
            png(&dir.join(format!("src/{split}/blue/{k}.png")), 4, blue, k);
        }
    }
    let o = singa(&["data", "import", "image-folder", "src", "."], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let layer = |split: &str, batch: usize| {
        format!(
            "[[layer]]\nname = \"data\"\ntype = \"image_data\"\ninclude = \"{split}\"\npath = \"{split}.shard\"\nbatch_size = {batch}\nscale = 0.00392156862745098\n\n"
        )
    };
    let job = format!(
        "name = \"colours\"\ntrain_steps = 40\ntest_steps = 1\n\n[updater]\ntype = \"sgd\"\nlearning_rate = 0.1\n\n{}{}[[layer]]\nname = \"fc\"\ntype = \"inner_product\"\nsrclayers = \"data\"\nnum_output = 2\n\n[[layer]]\nname = \"loss\"\ntype = \"softmax_loss\"\nsrclayers = [\"fc\", \"data:label\"]\n",
        layer("train", 16),
        layer("test", 20)
    );
    std::fs::write(dir.join("job.toml"), job).unwrap();
    let o = singa(&["train", "job.toml", "--workspace", "ws"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = "ws/checkpoints/step-00000040.safetensors";
    // Loose images in a folder, without classes: named with the model's classes.
    png(&dir.join("new/a.png"), 4, red, 99);
    png(&dir.join("new/b.png"), 4, blue, 98);
    let o = singa(&["predict", "--checkpoint", ckpt, "--input", "new"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!((rows[0][1], rows[1][1]), ("red", "blue"), "{out}");
    assert!(
        stderr(&o).contains("2 samples of ") && !stderr(&o).contains("accuracy"),
        "{}",
        stderr(&o)
    );
    // One image file; and one of another size, refused naming it and both shapes.
    let o = singa(
        &["predict", "--checkpoint", ckpt, "--input", "new/b.png"],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("blue ("), "{}", stdout(&o));
    png(&dir.join("big.png"), 8, red, 1);
    let o = singa(
        &["predict", "--checkpoint", ckpt, "--input", "big.png"],
        &dir,
    );
    fails_with(&o, "big.png: at byte offset 0: its records are [3, 8, 8] (channels, height, width) but the model reads [3, 4, 4]");
}

#[test]
fn devices_says_what_each_engine_offers_or_how_to_get_it() {
    let o = singa(&["devices"], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = |what: &str| {
        out.lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} line in:\n{out}"))
            .to_string()
    };
    assert!(line("cpu ").contains("thread"), "{out}");
    assert!(out.contains("with precision = \"bf16\": cpu ("), "{out}");
    // An optional engine says how to build it in, or what it found (the NVIDIA driver and
    // each library, found or why not; the MPI library's name).
    let cuda = line("cuda ");
    assert!(
        cuda.contains("--features cuda")
            || ["driver", "NVRTC", "cuBLAS", "NCCL"]
                .iter()
                .all(|c| out.contains(&format!("cuda {c}"))),
        "{out}"
    );
    let mpi = line("mpi ");
    assert!(
        mpi.contains("--features mpi") || mpi.contains("MPI"),
        "{out}"
    );
}
