//! # singa-onnx
//!
//! A trained net as an ONNX model (`singa export JOB --checkpoint F --onnx model.onnx`), for
//! ONNX Runtime, PyTorch, TensorRT and the rest. The model is the job's test net with the
//! checkpoint's parameters (named as in the checkpoint): inner products, convolutions,
//! pooling with Caffe's rounding, LRN, batch norm, the activations, softmax, concat, slice and
//! reshapes; dropout is the identity; a `softmax_loss` becomes a softmax, the model's output
//! `prob`. The inputs are the input layers' data after their preprocessing, which the model's
//! metadata documents (`singa.preprocessing`), with the class names (`singa.classes`) and the
//! job file (`singa.job`).
//!
//! Each built-in layer says what it computes ([`singa_layers::operator::Operator`]); a layer
//! that cannot (a plugin's) is refused, naming it. A crate of its own because it brings
//! protobuf in, which training does not need; the protobuf types are generated from
//! `proto/onnx.proto` once and committed (no `protoc` to build).

#![warn(missing_docs)]

mod graph;
mod lower;
#[rustfmt::skip]
#[allow(clippy::all, missing_docs)]
mod onnx;

use graph::{value_info, Graph};
use prost::Message;
use singa::config::JobConfig;
use singa::net::NeuralNet;
use singa::params::ParamStore;
use singa::registry::Registry;
use singa::trainer::{TrainOptions, Trainer};
use singa_core::{DType, Error, Result, TensorSpec};
use singa_layers::operator::{Operator, Preprocessing};
use std::collections::HashMap;
use std::path::Path;

/// The ONNX operator set the models use (ONNX 1.16, 2024; ONNX Runtime 1.18 and later).
pub const OPSET: i64 = 21;
/// The ONNX IR version of that operator set.
pub const IR_VERSION: i64 = 10;

/// What the model is, beyond the net: for its description and metadata.
#[derive(Clone, Debug, Default)]
pub struct About {
    /// The job's name (the graph's).
    pub name: String,
    /// The job file's text.
    pub job_text: Option<String>,
    /// The class names, by label.
    pub classes: Vec<String>,
    /// Where the parameters came from (a checkpoint and its step).
    pub source: Option<String>,
}

/// A graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Its name in the model.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its dimensions; `None` for the batch when the model takes any batch size.
    pub dims: Vec<Option<usize>>,
    /// What it holds (for an input: how to prepare it).
    pub doc: String,
}

/// An ONNX model of a net.
pub struct Model {
    proto: onnx::ModelProto,
    inputs: Vec<Value>,
    outputs: Vec<Value>,
}

impl Model {
    /// The model as ONNX bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// Writes the model to `path` (atomically: a reader never sees half a file).
    pub fn save(&self, path: &Path) -> Result<()> {
        singa::checkpoint::write_atomically(path, &self.to_bytes())
    }

    /// The model's inputs.
    pub fn inputs(&self) -> &[Value] {
        &self.inputs
    }

    /// The model's outputs.
    pub fn outputs(&self) -> &[Value] {
        &self.outputs
    }

    /// The number of nodes of the graph.
    pub fn nodes(&self) -> usize {
        self.proto.graph.as_ref().map_or(0, |g| g.node.len())
    }

    /// The model's metadata (key, value).
    pub fn metadata(&self) -> Vec<(&str, &str)> {
        self.proto
            .metadata_props
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect()
    }
}

/// The test net of `job` with the parameters of `checkpoint`, as an ONNX model.
pub fn export_checkpoint(job: &JobConfig, registry: &Registry, checkpoint: &Path) -> Result<Model> {
    let mut job = job.clone();
    // One worker in this process: the model is the same whatever trained it.
    job.cluster = Default::default();
    job.test_steps = job.test_steps.max(1);
    let mut trainer = Trainer::new(&job, registry, &TrainOptions::default())?;
    let step = trainer.load_params(checkpoint)?;
    let net = trainer.test_net().ok_or_else(|| {
        Error::config(
            &job.origin.file,
            "layer",
            "the job has no test net (no layer with include = \"test\" or without include) to export",
        )
    })?;
    let about = About {
        name: job.name.clone(),
        job_text: job.text.clone(),
        classes: singa::predict::model_classes(&job),
        source: Some(format!("{} (step {step})", checkpoint.display())),
    };
    export(net, trainer.params(), &about)
}

/// The name of output `o` of layer `i` as a graph value: the layer's name for its first
/// output, `layer:output` for the others (as job files name them).
fn value_name(net: &NeuralNet, i: usize, o: usize) -> String {
    let layer = &net.layers()[i];
    if o == 0 {
        layer.name.clone()
    } else {
        format!("{}:{}", layer.name, layer.output_specs()[o].name)
    }
}

/// `spec`'s dimensions, the batch left free when `free_batch`.
fn dims(spec: &TensorSpec, free_batch: bool) -> Vec<Option<usize>> {
    spec.shape
        .dims()
        .iter()
        .enumerate()
        .map(|(k, &d)| (k > 0 || !free_batch).then_some(d))
        .collect()
}

/// `net` (a test net) with the parameters in `store`, as an ONNX model.
pub fn export(net: &NeuralNet, store: &ParamStore, about: &About) -> Result<Model> {
    let layers = net.layers();
    let operators = (0..layers.len())
        .map(|i| {
            net.operator(i).ok_or_else(|| {
                Error::invalid(format!(
                    "layer {} (type {}) has no ONNX form: singa knows what its built-in layers compute, not a plugin's",
                    layers[i].name, layers[i].type_name
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // The batch is a free dimension unless some layer changes it (a concat along it, say).
    let batch = net.batch_size();
    let free_batch = layers
        .iter()
        .flat_map(|l| l.output_specs())
        .all(|s| s.shape.dims().first() == Some(&batch));
    // Which values the model computes with: a loss reads only its prediction, a metric none.
    let mut read = HashMap::new();
    for (i, op) in operators.iter().enumerate() {
        let sources = net.sources(i);
        let used = match op {
            Operator::Metric => &sources[..0],
            Operator::SoftmaxLoss | Operator::EuclideanLoss => &sources[..1],
            _ => sources,
        };
        for &s in used {
            *read.entry(s).or_insert(0) += 1;
        }
    }
    let losses = operators
        .iter()
        .filter(|o| **o == Operator::SoftmaxLoss)
        .count();

    let mut g = Graph::default();
    for (i, l) in layers.iter().enumerate() {
        for o in 0..l.output_specs().len() {
            g.claim(&value_name(net, i, o));
        }
    }
    let mut initialised = HashMap::new();
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    let mut preprocessing = serde_json::Map::new();
    for (i, (l, op)) in layers.iter().zip(&operators).enumerate() {
        let specs = l.output_specs();
        let input_values: Vec<(String, TensorSpec)> = net
            .sources(i)
            .iter()
            .map(|&(p, o)| (value_name(net, p, o), layers[p].output_specs()[o].clone()))
            .collect();
        match op {
            Operator::Input(prep) => {
                for (o, spec) in specs.iter().enumerate() {
                    if read.contains_key(&(i, o)) {
                        let name = value_name(net, i, o);
                        let doc = if o == 0 {
                            preprocessing.insert(name.clone(), preprocessing_json(prep));
                            prep.to_string()
                        } else {
                            format!("the {} of layer {}", spec.name, l.name)
                        };
                        inputs.push(Value {
                            name,
                            dtype: spec.dtype,
                            dims: dims(spec, free_batch),
                            doc,
                        });
                    }
                }
            }
            Operator::Metric => {}
            Operator::EuclideanLoss => {
                let (name, spec) = &input_values[0];
                outputs.push(Value {
                    name: name.clone(),
                    dtype: spec.dtype,
                    dims: dims(spec, free_batch),
                    doc: format!("the prediction layer {} compares with its target", l.name),
                });
            }
            Operator::SoftmaxLoss => {
                let (scores, spec) = &input_values[0];
                let name = if losses == 1 {
                    g.fresh("prob")
                } else {
                    g.fresh(&format!("{}:prob", l.name))
                };
                let classes = spec.shape.dims()[1..].iter().product();
                let x = if spec.shape.rank() > 2 {
                    let flat = format!("{}_flat", l.name);
                    g.step("Flatten", &flat, &[scores], vec![graph::int("axis", 1)])
                } else {
                    scores.clone()
                };
                let axis = vec![graph::int("axis", 1)];
                g.node("Softmax", &l.name, &[&x], &[&name], axis);
                let mut dims = dims(spec, free_batch);
                dims.truncate(1);
                dims.push(Some(classes));
                outputs.push(Value {
                    name,
                    dtype: DType::F32,
                    dims,
                    doc: format!("the probability of each class: the softmax of {scores}"),
                });
            }
            _ => {
                let params = l
                    .params
                    .iter()
                    .map(|&p| {
                        initialised
                            .entry(p)
                            .or_insert_with(|| {
                                let e = &store.entries()[p];
                                let values = e.value.to_vec::<f32>()?;
                                Ok(g.weights(&e.name, e.value.shape().dims(), &values))
                            })
                            .clone()
                    })
                    .collect::<Result<Vec<String>>>()?;
                let layer_outputs: Vec<(String, TensorSpec)> = specs
                    .iter()
                    .enumerate()
                    .map(|(o, s)| (value_name(net, i, o), s.clone()))
                    .collect();
                let lowering = lower::Layer {
                    name: &l.name,
                    inputs: input_values,
                    outputs: layer_outputs,
                    params,
                    free_batch,
                };
                lower::lower(&mut g, op, &lowering)?;
                for (o, (name, spec)) in lowering.outputs.iter().enumerate() {
                    if !read.contains_key(&(i, o)) {
                        outputs.push(Value {
                            name: name.clone(),
                            dtype: spec.dtype,
                            dims: dims(spec, free_batch),
                            doc: format!("output {} of layer {}", spec.name, l.name),
                        });
                    }
                }
            }
        }
    }
    if outputs.is_empty() {
        return Err(Error::invalid(
            "the test net computes nothing to export: it has no loss, and every layer's output is read by another",
        ));
    }
    let graph = onnx::GraphProto {
        node: g.nodes,
        name: about.name.clone(),
        initializer: g.initializers,
        doc_string: describe(about, &inputs, &outputs),
        input: inputs
            .iter()
            .map(|v| value_info(&v.name, v.dtype, &v.dims, v.doc.clone()))
            .collect(),
        output: outputs
            .iter()
            .map(|v| value_info(&v.name, v.dtype, &v.dims, v.doc.clone()))
            .collect(),
        ..Default::default()
    };
    let mut metadata = vec![(
        "singa.preprocessing",
        serde_json::Value::Object(preprocessing).to_string(),
    )];
    if !about.classes.is_empty() {
        metadata.push((
            "singa.classes",
            serde_json::json!(about.classes).to_string(),
        ));
    }
    if let Some(text) = &about.job_text {
        metadata.push(("singa.job", text.clone()));
    }
    let proto = onnx::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![onnx::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "singa".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: graph.doc_string.clone(),
        graph: Some(graph),
        metadata_props: metadata
            .into_iter()
            .map(|(key, value)| onnx::StringStringEntryProto {
                key: key.into(),
                value,
            })
            .collect(),
        ..Default::default()
    };
    Ok(Model {
        proto,
        inputs,
        outputs,
    })
}

/// The preprocessing of an input, for the metadata.
fn preprocessing_json(p: &Preprocessing) -> serde_json::Value {
    serde_json::json!({
        "scale": p.scale,
        "mean": p.mean,
        "mean_file": p.mean_file,
        "std": p.std,
        "crop": p.crop.map(|(h, w)| [h, w]),
        "description": p.to_string(),
    })
}

/// The model's description: what it is, what goes in and what comes out.
fn describe(about: &About, inputs: &[Value], outputs: &[Value]) -> String {
    let mut text = format!("The test net of singa job {:?}", about.name);
    if let Some(source) = &about.source {
        text += &format!(", with the parameters of {source}");
    }
    text += ".";
    for v in inputs {
        text += &format!("\nInput {}: {}.", v.name, v.doc);
    }
    for v in outputs {
        text += &format!("\nOutput {}: {}.", v.name, v.doc);
    }
    text
}
