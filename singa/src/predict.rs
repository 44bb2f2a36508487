//! Using a trained model: the job's test net, with a checkpoint's parameters, over a shard,
//! one sample at a time out: its most likely classes with their probabilities, or one layer's
//! outputs (features, SINGA's CSV output layer).
//!
//! The input goes through the job's own test input layer (its preprocessing: scale, mean,
//! crop), reading the given shard instead of the job's; image files are imported into a
//! temporary shard first. Records of another shape than the job's data are refused. The
//! scores are what the job's `softmax_loss` reads; their softmax gives the probabilities.
//! Class names come from the shards' metadata (`classes`, which the importers write): the
//! job's own data's, else the input's.

use crate::config::JobConfig;
use crate::net::NeuralNet;
use crate::registry::Registry;
use crate::trainer::{TrainOptions, Trainer};
use singa_core::{DType, Error, FieldValue, Result};
use std::path::{Path, PathBuf};

/// What is read out of the net for each sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// The `k` most likely classes, most likely first, with their probabilities.
    Top(Vec<(usize, f32)>),
    /// The values of a layer's first output.
    Features(Vec<f32>),
}

/// One sample's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The sample's index in the shard.
    pub index: usize,
    /// Its label, if the shard has one for it.
    pub label: Option<i32>,
    /// What the net says.
    pub output: Output,
}

/// A trained model ready to predict.
pub struct Predictor {
    trainer: Trainer,
    source: PathBuf,
    records: usize,
    classes: Vec<String>,
    /// The layer and output read (the scores, or the features' layer).
    read: (usize, usize),
    /// Where the labels are (the loss layer's second input), if anywhere.
    labels: Option<(usize, usize)>,
    /// Whether `read` holds scores (softmax and top-k) or features (as they are).
    features: bool,
    /// The files of the samples, when they were image files.
    files: Vec<String>,
    /// Where image files were imported, removed with the predictor.
    _temporary: Option<Temporary>,
}

/// The last part of a path, for a table.
fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// A folder removed when dropped.
struct Temporary(PathBuf);

impl Drop for Temporary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test input layers of `job` (those with a `path`), with their paths.
fn test_inputs(job: &JobConfig) -> Vec<(usize, PathBuf)> {
    job.layers
        .iter()
        .enumerate()
        .filter(|(_, l)| l.in_phase(singa_core::Phase::TEST))
        .filter_map(|(i, l)| match l.fields.get("path") {
            Some(FieldValue::Str(p)) => Some((i, job.origin.base_dir.join(p.as_str()))),
            _ => None,
        })
        .collect()
}

/// The class names a shard's metadata keeps (`classes`, which the importers write), by label;
/// empty when it keeps none.
pub fn class_names(shard: &singa_data::Shard) -> Vec<String> {
    shard
        .metadata()
        .get("classes")
        .and_then(|c| c.as_array())
        .map(|c| {
            c.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The class names of the data `job` tests on (its one test input layer's shard), if that
/// shard exists and keeps them.
pub fn model_classes(job: &JobConfig) -> Vec<String> {
    match test_inputs(job).as_slice() {
        [(_, path)] => singa_data::Shard::open(path)
            .map(|s| class_names(&s))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

impl Predictor {
    /// The test net of `job` with the parameters of `checkpoint`, reading `input` (a shard, an
    /// IDX file of images (`*-idx3-ubyte[.gz]`, with the labels file beside it if there is
    /// one), an image file or a folder of them; the job's test shard when `None`); `features` names a
    /// layer to read instead of the class scores.
    pub fn new(
        job: &JobConfig,
        registry: &Registry,
        checkpoint: &Path,
        input: Option<&Path>,
        features: Option<&str>,
    ) -> Result<Predictor> {
        let file = job.origin.file.clone();
        let mut job = job.clone();
        // One worker in this process: a prediction is the same whatever trained the model.
        job.cluster = Default::default();
        job.test_steps = job.test_steps.max(1);
        let inputs = test_inputs(&job);
        let [(input_layer, own)] = inputs.as_slice() else {
            return Err(Error::config(
                &file,
                "layer",
                format!(
                    "predict reads one test input layer with a `path`; this job has {}",
                    inputs.len()
                ),
            ));
        };
        let (input_layer, own) = (*input_layer, own.clone());
        let mut temporary = None;
        let shard = match input {
            None => own.clone(),
            Some(p) => {
                let p = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
                let shard = if p.extension().is_some_and(|e| e == "shard") {
                    p
                } else {
                    // IDX or image files: into a shard of their own first.
                    let dir =
                        std::env::temp_dir().join(format!("singa-predict-{}", std::process::id()));
                    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                    let shard = dir.join("input.shard");
                    let _ = std::fs::remove_file(&shard);
                    let imported = if singa_data::import::is_idx_images(&p) {
                        singa_data::import::import_idx_images(&p, &shard)
                    } else {
                        singa_data::import::image_files(&p)
                            .and_then(|files| singa_data::import::import_images(&files, &shard))
                    };
                    temporary = Some(Temporary(dir));
                    imported?;
                    shard
                };
                let l = &mut job.layers[input_layer];
                l.fields.set("path", shard.display().to_string());
                l.fields.remove("import");
                shard
            }
        };
        let data = singa_data::Shard::open(&shard)?;
        let model = singa_data::Shard::open(&own).ok();
        // The model reads records of the shape it was trained on: say so rather than fail
        // somewhere in the net.
        if let Some(model) = &model {
            let (want, got) = (&model.spec().shape, &data.spec().shape);
            if want != got {
                let what = input.unwrap_or(&shard);
                return Err(Error::data(
                    what,
                    0,
                    format!(
                        "its records are {got:?} (channels, height, width) but the model reads {want:?}, as in {}: resize them, or convert their channels",
                        own.display()
                    ),
                ));
            }
        }
        let records = data.len();
        let unlabelled = data.metadata().get("unlabelled").and_then(|v| v.as_bool()) == Some(true);
        let files: Vec<String> = data
            .metadata()
            .get("files")
            .and_then(|f| f.as_array())
            .map(|f| f.iter().filter_map(|v| v.as_str()).map(file_name).collect())
            .unwrap_or_default();
        // The model's class names (its own data's), else the input's.
        let classes = model
            .as_ref()
            .map(class_names)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| class_names(&data));
        let mut trainer = Trainer::new(&job, registry, &TrainOptions::default())?;
        trainer.load_params(checkpoint)?;
        let net = trainer
            .test_net()
            .ok_or_else(|| Error::config(&file, "layer", "the job has no test net"))?;
        let loss = (0..net.layers().len()).find(|&i| net.layers()[i].type_name == "softmax_loss");
        let labels = loss
            .and_then(|i| net.sources(i).get(1).copied())
            .filter(|_| !unlabelled);
        let (read, features) = match features {
            Some(name) => {
                let i = net
                    .layers()
                    .iter()
                    .position(|l| l.name == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            net.layers().iter().map(|l| l.name.as_str()).collect();
                        Error::config(
                            &file,
                            "--features",
                            format!(
                                "the test net has no layer {name} (its layers: {})",
                                names.join(", ")
                            ),
                        )
                    })?;
                if net.layers()[i].output_specs().is_empty() {
                    return Err(Error::config(
                        &file,
                        "--features",
                        format!("layer {name} has no outputs to write"),
                    ));
                }
                ((i, 0), true)
            }
            None => {
                let i = loss.ok_or_else(|| {
                    Error::config(
                        &file,
                        "layer",
                        "predict reads the class scores of a softmax_loss layer, and this job has none; write a layer's outputs with --features LAYER",
                    )
                })?;
                (net.sources(i)[0], false)
            }
        };
        Ok(Predictor {
            trainer,
            source: input.map(Path::to_path_buf).unwrap_or(shard),
            records,
            classes,
            read,
            labels,
            features,
            files,
            _temporary: temporary,
        })
    }

    /// The files the samples came from, when the input was image files.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The class names, by label (empty when the shard records none).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// What is read: the input as given (a shard, image file or folder), or the job's test
    /// shard.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The records of the shard.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Predicts the first `n` samples (all of the shard's when `None`), keeping the `top`
    /// classes of each, and hands every row to `each` in order; returns the rows handed.
    pub fn run(
        &mut self,
        n: Option<usize>,
        top: usize,
        mut each: impl FnMut(Row) -> Result<()>,
    ) -> Result<usize> {
        let n = n.unwrap_or(self.records).min(self.records);
        let batch = self
            .trainer
            .test_net()
            .map(NeuralNet::batch_size)
            .unwrap_or(1)
            .max(1);
        let (read, labels, features) = (self.read, self.labels, self.features);
        let mut done = 0;
        self.trainer.run_test_net(n.div_ceil(batch), |net| {
            let values = net.outputs(read.0)[read.1].to_vec::<f32>()?;
            let width = values.len() / batch;
            let labels: Option<Vec<i32>> = match labels {
                Some((l, o)) if net.outputs(l)[o].dtype() == DType::I32 => {
                    Some(net.outputs(l)[o].to_vec::<i32>()?)
                }
                _ => None,
            };
            for r in 0..batch.min(n - done) {
                let row = &values[r * width..(r + 1) * width];
                let output = if features {
                    Output::Features(row.to_vec())
                } else {
                    Output::Top(top_k(&softmax(row), top))
                };
                each(Row {
                    index: done + r,
                    label: labels.as_ref().map(|l| l[r]),
                    output,
                })?;
            }
            done += batch.min(n - done);
            Ok(())
        })?;
        Ok(done)
    }
}

/// The softmax of `scores` (shifted by their maximum, so that large scores do not overflow).
fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = scores.iter().map(|&s| ((s - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// The `k` largest of `p`, largest first, with their indices (the lower index first on ties).
fn top_k(p: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| (i, p[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_and_their_order() {
        let p = softmax(&[1.0, 3.0, 3.0, 1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&softmax(&[1.0, 3.0, 3.0, -2.0]), 2)[0].0, 1);
        assert_eq!(top_k(&p, 1), vec![(3, 1.0)]);
    }
}
