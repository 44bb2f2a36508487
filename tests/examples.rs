//! The examples: the job file and its builder twin describe the same job.

#[path = "../examples/mnist-mlp/net.rs"]
mod net;

use singa::config::JobConfig;
use singa::Registry;
use singa_core::FieldValue;
use singa_tests::{metric, plugin};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Resolves the data paths of `shard_data` layers so jobs from different folders compare.
fn normalise(mut job: JobConfig) -> JobConfig {
    let base = job.origin.base_dir.clone();
    let abs = |p: &str| {
        std::fs::canonicalize(base.join(p).parent().unwrap())
            .unwrap()
            .join(Path::new(p).file_name().unwrap())
    };
    for l in &mut job.layers {
        if l.type_name != "shard_data" {
            continue;
        }
        let path = l.fields.str("path").unwrap().to_string();
        l.fields.set("path", abs(&path).display().to_string());
        if let Some(FieldValue::Table(t)) = l.fields.get("import").cloned() {
            let src = std::fs::canonicalize(base.join(t.str("src").unwrap())).unwrap();
            l.fields
                .set("import", t.with("src", src.display().to_string()));
        }
    }
    job.origin = Default::default();
    // Where a job came from is not what it says.
    job.text = None;
    job
}

#[test]
fn mnist_mlp_job_file_and_builder_agree() {
    let registry = Registry::builtin();
    let file = JobConfig::from_file(repo().join("examples/mnist-mlp/job.toml")).unwrap();
    let file = normalise(file.validate(&registry).unwrap().job);
    let code = normalise(
        net::job(&repo().join("data/mnist"))
            .validate(&registry)
            .unwrap()
            .job,
    );
    assert_eq!(file.layers, code.layers);
    assert_eq!(file.updater, code.updater);
    assert_eq!(file, code);
}

/// Every example's job file parses and its layers accept their fields.
#[test]
fn every_example_job_file_is_valid() {
    // Jobs that name plugins get them built with this test's profile (the job files name the
    // release build, which a test run need not have).
    let plugins = [plugin("singa-plugin-swish"), plugin("singa-plugin-lion")];
    let mut with_plugins = Registry::builtin();
    with_plugins
        .load_plugins(&plugins, singa::plugins::Detail::Brief)
        .unwrap();
    let builtin = Registry::builtin();
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let job = JobConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
                let registry = if job.plugins.is_empty() {
                    &builtin
                } else {
                    for p in &job.plugins {
                        assert!(
                            plugins.iter().any(|b| b.file_name() == p.file_name()),
                            "{}: unknown plugin {}",
                            path.display(),
                            p.display()
                        );
                    }
                    &with_plugins
                };
                job.validate(registry)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "found {checked} example jobs");
}

/// The CIFAR-10 quick example's job, cut to 400 steps, learns on the real data (needs
/// `SINGA_DATA_DIR`; the full run's accuracy is in its README).
#[test]
fn cifar10_quick_learns_on_real_data() {
    let Some(root) = std::env::var_os("SINGA_DATA_DIR") else {
        eprintln!("skipped: SINGA_DATA_DIR is not set (CIFAR-10 lives in ../shared/data)");
        return;
    };
    let archive = Path::new(&root).join("cifar10-jpeg/cifar10_jpeg_q75.tar.gz");
    let dir = std::env::temp_dir().join(format!("singa-cifar-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut job = JobConfig::from_file(repo().join("examples/cifar10-quick/job.toml")).unwrap();
    job.train_steps = 400;
    job.test_freq = 0;
    // The whole test set: its shard is ordered by class, so part of it would be biased.
    job.test_steps = 100;
    job.checkpoint_freq = 0;
    for l in &mut job.layers {
        if l.type_name == "image_data" {
            let split = if l.fields.str("path").unwrap().contains("test") {
                "test"
            } else {
                "train"
            };
            l.fields.set(
                "path",
                dir.join(format!("{split}.shard")).display().to_string(),
            );
            let import = singa_core::Fields::new()
                .with("kind", "image-folder")
                .with("src", archive.display().to_string());
            l.fields.set("import", import);
        }
    }
    let mut trainer =
        singa::trainer::Trainer::new(&job, &Registry::builtin(), &Default::default()).unwrap();
    let summary = trainer.run(&mut singa::trainer::Silent).unwrap();
    let acc = metric(&summary.test, "accuracy");
    eprintln!("cifar10-quick after 400 steps: test accuracy {acc:.4}");
    assert!(acc > 0.40, "test accuracy {acc} after 400 steps");
    // Exported as ONNX, the net gives ONNX Runtime singa's probabilities on the first 500
    // test images (airplanes all, in this shard's order; the classes predicted vary).
    if let Some(report) = singa_tests::onnx::check_against_onnxruntime(&mut trainer, 5, &dir) {
        eprintln!("cifar10-quick in ONNX Runtime: {report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The RBM autoencoder's pipeline, shortened to a few steps a job: four RBMs pretrained with
/// CD-1 in turn (each reading the data through the layers the ones below trained), then the
/// autoencoder initialised from all four and fine-tuned; each stage lowers its test error.
#[test]
fn rbm_autoencoder_pipeline_runs_shortened() {
    use singa::trainer::{Silent, TrainOptions, Trainer};
    let dir = singa_tests::tmpdir("rbm-autoencoder");
    for (name, error) in [
        ("rbm1", "reconstruction_error"),
        ("rbm2", "reconstruction_error"),
        ("rbm3", "reconstruction_error"),
        ("rbm4", "reconstruction_error"),
        ("autoencoder", "squared_error"),
    ] {
        let file = repo().join(format!("examples/rbm-autoencoder/{name}.toml"));
        let mut job = JobConfig::from_file(&file).unwrap();
        job.train_steps = 30;
        job.display_freq = 10;
        job.test_freq = 0;
        job.test_steps = 5;
        job.checkpoint_freq = 0;
        // The earlier stages' workspaces are here, not in the example's runs/.
        for p in &mut job.checkpoint_path {
            *p = dir.join(p.file_name().unwrap());
        }
        let options = TrainOptions {
            workspace: Some(dir.join(name)),
            ..TrainOptions::default()
        };
        let mut t = Trainer::new(&job, &Registry::builtin(), &options).unwrap();
        let before = metric(&t.evaluate().unwrap(), error);
        let summary = t.run(&mut Silent).unwrap();
        let after = metric(&summary.test, error);
        assert!(
            after < before,
            "{name}: {error} {before} before, {after} after"
        );
    }
}
