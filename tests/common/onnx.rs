//! Checking an exported ONNX model against singa with ONNX Runtime (`tests/onnx_check.py`):
//! singa runs its test net over some batches, keeping what goes into the model's inputs and
//! what it computes for the model's outputs; the script runs the model on the same inputs, in
//! one batch, and compares.

use singa::net::NeuralNet;
use singa::Trainer;
use singa_core::{DType, Error};
use std::path::Path;
use std::process::Command;

/// Whether Python with `onnx`, `onnxruntime` and `numpy` is here. Without it the check is
/// skipped, saying so, unless `SINGA_REQUIRE_ONNXRUNTIME` is set (as `.ci/run` does).
pub fn onnxruntime_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("SINGA_REQUIRE_ONNXRUNTIME").is_none(),
            "SINGA_REQUIRE_ONNXRUNTIME is set but python3 cannot import onnx, onnxruntime and numpy (pip install onnx onnxruntime numpy)"
        );
        eprintln!("skipped: python3 with onnx, onnxruntime and numpy is not installed (pip install onnx onnxruntime numpy)");
    }
    found
}

/// Where a model value comes from in the net: a layer's output, or the softmax of one (a
/// `softmax_loss`'s probabilities).
struct Source {
    layer: usize,
    output: usize,
    softmax: bool,
}

/// The net's (layer, output) named `name` in the model (`layer` or `layer:output`; `prob` and
/// `loss:prob` are softmaxes of a loss's scores).
fn source(net: &NeuralNet, name: &str) -> Source {
    let layers = net.layers();
    let find = |n: &str| {
        layers
            .iter()
            .position(|l| l.name == n)
            .unwrap_or_else(|| panic!("the model's value {name} names no layer"))
    };
    let prob = |loss: usize| Source {
        layer: net.sources(loss)[0].0,
        output: net.sources(loss)[0].1,
        softmax: true,
    };
    if name == "prob" {
        let loss = layers
            .iter()
            .position(|l| l.type_name == "softmax_loss")
            .expect("a softmax_loss");
        return prob(loss);
    }
    match name.split_once(':') {
        Some((layer, "prob")) => prob(find(layer)),
        Some((layer, output)) => {
            let i = find(layer);
            let o = layers[i]
                .output_specs()
                .iter()
                .position(|s| s.name == output)
                .unwrap();
            Source {
                layer: i,
                output: o,
                softmax: false,
            }
        }
        None => Source {
            layer: find(name),
            output: 0,
            softmax: false,
        },
    }
}

/// Each row of `values` (rows of `width`) through a softmax, as `singa predict` computes it.
fn softmax_rows(values: &[f32], width: usize) -> Vec<f32> {
    values
        .chunks(width)
        .flat_map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(move |x| (x / sum) as f32)
        })
        .collect()
}

/// A value's bytes as gathered over the batches.
#[derive(Default)]
struct Gathered {
    bytes: Vec<u8>,
    rows: usize,
}

/// Exports the test net of `trainer`, runs `batches` batches of its test data through singa
/// and the model through ONNX Runtime, and fails the test when they disagree: probabilities
/// by more than 1e-5, other float outputs by more than 1e-4 of their largest magnitude,
/// integer outputs at all, or any sample's predicted class. Returns ONNX Runtime's report
/// (one JSON line), or `None` when skipped.
pub fn check_against_onnxruntime(
    trainer: &mut Trainer,
    batches: usize,
    dir: &Path,
) -> Option<String> {
    if !onnxruntime_available() {
        return None;
    }
    let about = singa_onnx::About {
        name: trainer.job().name.clone(),
        job_text: trainer.job().text.clone(),
        ..Default::default()
    };
    let net = trainer.test_net().expect("a test net");
    let model = singa_onnx::export(net, trainer.params(), &about).unwrap();
    let model_path = dir.join("model.onnx");
    model.save(&model_path).unwrap();
    let values: Vec<(singa_onnx::Value, bool)> = model
        .inputs()
        .iter()
        .map(|v| (v.clone(), true))
        .chain(model.outputs().iter().map(|v| (v.clone(), false)))
        .collect();
    let sources: Vec<Source> = values.iter().map(|(v, _)| source(net, &v.name)).collect();
    let mut gathered: Vec<Gathered> = values.iter().map(|_| Gathered::default()).collect();
    trainer
        .run_test_net(batches, |net| {
            for (s, g) in sources.iter().zip(&mut gathered) {
                let t = &net.outputs(s.layer)[s.output];
                g.rows += t.shape().dims()[0];
                match t.dtype() {
                    DType::F32 => {
                        let mut v = t.to_vec::<f32>()?;
                        if s.softmax {
                            v = softmax_rows(&v, t.numel() / t.shape().dims()[0]);
                        }
                        g.bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                    }
                    DType::I32 => {
                        let v = t.to_vec::<i32>()?;
                        g.bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                    }
                    other => return Err(Error::invalid(format!("no check for {other} values"))),
                }
            }
            Ok(())
        })
        .unwrap();
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for (k, ((v, is_input), g)) in values.iter().zip(&gathered).enumerate() {
        let file = format!("value{k}.bin");
        std::fs::write(dir.join(&file), &g.bytes).unwrap();
        let mut shape: Vec<usize> = v.dims.iter().map(|d| d.unwrap_or(0)).collect();
        shape[0] = g.rows;
        let dtype = if v.dtype == DType::I32 { "<i4" } else { "<f4" };
        let prob = sources[k].softmax;
        let entry = serde_json::json!({
            "name": v.name,
            "file": file,
            "dtype": dtype,
            "shape": shape,
            "tolerance": if v.dtype == DType::I32 { 0.0 } else if prob { 1e-5 } else { 1e-4 },
            "absolute": prob || v.dtype == DType::I32,
            "classes": prob,
        });
        if *is_input {
            inputs.push(entry);
        } else {
            outputs.push(entry);
        }
    }
    let case = serde_json::json!({ "inputs": inputs, "outputs": outputs });
    std::fs::write(dir.join("case.json"), case.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&model_path)
        .arg(dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "ONNX Runtime disagrees with singa on {}: {report}\n{}",
        model_path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(report)
}
