//! `singa predict`: a trained model's predictions as a table, CSV or JSON lines, and the
//! accuracy against the shard's labels when it has them.

use crate::output::{errln, outln};
use singa::config::{JobConfig, Origin};
use singa::predict::{Output, Predictor, Row};
use singa_core::{Error, Result};
use std::path::Path;

/// The job a checkpoint records (its text, read as if from the folder it was trained in).
pub fn recorded_job(checkpoint: &Path) -> Result<JobConfig> {
    let loaded = singa::checkpoint::load(checkpoint)?;
    let Some((text, dir)) = loaded.meta.job_file else {
        return Err(Error::checkpoint(
            checkpoint,
            "it records no job file (a job built in Rust, or a checkpoint from before singa recorded them): name the job file",
        ));
    };
    let origin = Origin {
        file: format!("{} (its job)", checkpoint.display()),
        base_dir: dir.into(),
    };
    JobConfig::from_toml(&text, origin)
}

/// The job a model was trained with (`job`, else the one `checkpoint` records) and the
/// registry of its layer types, with `plugins` loaded.
pub fn trained_job(
    job: Option<&Path>,
    checkpoint: &Path,
    plugins: &[std::path::PathBuf],
    detail: singa::plugins::Detail,
) -> Result<(JobConfig, singa::Registry)> {
    let config = match job {
        Some(job) => JobConfig::from_file(job)?,
        None => recorded_job(checkpoint)?,
    };
    let registry = singa::Registry::with_plugins(plugins, Some(&config), detail)?;
    Ok((config, registry))
}

/// A class's name, or its number when the shard names none.
fn name(classes: &[String], class: usize) -> String {
    classes
        .get(class)
        .cloned()
        .unwrap_or_else(|| class.to_string())
}

/// Prints the predictions of the first `n` samples in `format`, then (on standard error)
/// how many were right.
pub fn print(p: &mut Predictor, n: Option<usize>, top: usize, format: &str) -> Result<()> {
    let classes = p.classes().to_vec();
    let files = p.files().to_vec();
    // A sample is named by its file when it came from one, else by its index.
    let sample = |i: usize| files.get(i).cloned().unwrap_or_else(|| i.to_string());
    let width = files
        .iter()
        .map(|f| f.chars().count())
        .max()
        .unwrap_or(0)
        .max(7);
    let label_text = |l: Option<i32>| match l {
        Some(l) if l >= 0 => name(&classes, l as usize),
        Some(l) => l.to_string(),
        None => String::new(),
    };
    let (mut right, mut labelled) = (0usize, 0usize);
    let mut header = true;
    let rows = p.run(n, top, |row: Row| {
        if let (Output::Top(t), Some(l)) = (&row.output, row.label) {
            labelled += 1;
            right += usize::from(t.first().is_some_and(|&(c, _)| c as i64 == l as i64));
        }
        match (&row.output, format) {
            (Output::Top(t), "table") => {
                if std::mem::take(&mut header) {
                    outln!("{:>width$}  {:<12}  prediction (probability)", "sample", "label");
                }
                let guesses: Vec<String> = t
                    .iter()
                    .map(|&(c, prob)| format!("{} ({prob:.4})", name(&classes, c)))
                    .collect();
                outln!(
                    "{:>width$}  {:<12}  {}",
                    sample(row.index),
                    label_text(row.label),
                    guesses.join("  ")
                );
            }
            (Output::Top(t), "csv") => {
                if std::mem::take(&mut header) {
                    let cols: Vec<String> = (1..=top)
                        .map(|k| format!("class_{k},probability_{k}"))
                        .collect();
                    outln!("sample,label,{}", cols.join(","));
                }
                let cols: Vec<String> = t
                    .iter()
                    .map(|&(c, prob)| format!("{},{prob}", csv(&name(&classes, c))))
                    .collect();
                outln!(
                    "{},{},{}",
                    csv(&sample(row.index)),
                    csv(&label_text(row.label)),
                    cols.join(",")
                );
            }
            (Output::Top(t), _) => {
                let top: Vec<serde_json::Value> = t
                    .iter()
                    .map(|&(c, prob)| {
                        serde_json::json!({"class": c, "name": name(&classes, c), "probability": prob})
                    })
                    .collect();
                let mut v = serde_json::json!({"sample": row.index, "label": row.label, "top": top});
                if let Some(f) = files.get(row.index) {
                    v["file"] = f.clone().into();
                }
                outln!("{v}");
            }
            (Output::Features(f), "jsonl") => {
                outln!(
                    "{}",
                    serde_json::json!({"sample": row.index, "label": row.label, "features": f})
                );
            }
            (Output::Features(f), _) => {
                if std::mem::take(&mut header) {
                    let cols: Vec<String> = (0..f.len()).map(|k| format!("f{k}")).collect();
                    outln!("sample,label,{}", cols.join(","));
                }
                let values: Vec<String> = f.iter().map(|v| v.to_string()).collect();
                outln!(
                    "{},{},{}",
                    row.index,
                    row.label.map(|l| l.to_string()).unwrap_or_default(),
                    values.join(",")
                );
            }
        }
        Ok(())
    })?;
    if labelled > 0 {
        errln!(
            "{rows} samples of {}: top-1 accuracy {:.2}% against its labels",
            p.source().display(),
            100.0 * right as f64 / labelled as f64
        );
    } else {
        errln!("{rows} samples of {}", p.source().display());
    }
    Ok(())
}

/// `s` as a CSV field (quoted when it holds a comma or a quote).
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
