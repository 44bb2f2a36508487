//! The examples: the job file and its builder twin describe the same job.

#[path = "../examples/mnist-mlp/net.rs"]
mod net;

use singa::config::JobConfig;
use singa::Registry;
use singa_core::FieldValue;
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
