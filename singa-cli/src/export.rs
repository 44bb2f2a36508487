//! `singa export`: what was written, so the user knows how to feed the model.

use crate::output::outln;
use singa_onnx::{Model, Value};
use std::path::Path;

/// A value's type and shape, as `float32 [batch, 784]`.
fn signature(v: &Value) -> String {
    let dims: Vec<String> = v
        .dims
        .iter()
        .map(|d| d.map_or("batch".to_string(), |n| n.to_string()))
        .collect();
    let ty = match v.dtype {
        singa_core::DType::F32 => "float32".to_string(),
        singa_core::DType::I32 => "int32".to_string(),
        other => other.to_string(),
    };
    format!("{ty} [{}]", dims.join(", "))
}

/// Prints the file written, its inputs and outputs, and its metadata keys.
pub fn print(model: &Model, path: &Path) {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let size = if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    };
    outln!(
        "wrote {} ({size}): ONNX opset {}, {} nodes",
        path.display(),
        singa_onnx::OPSET,
        model.nodes()
    );
    let rows: Vec<[String; 4]> = [("input", model.inputs()), ("output", model.outputs())]
        .into_iter()
        .flat_map(|(what, values)| {
            values.iter().map(move |v| {
                [
                    what.to_string(),
                    v.name.clone(),
                    signature(v),
                    v.doc.clone(),
                ]
            })
        })
        .collect();
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for [what, name, sig, doc] in &rows {
        outln!("  {what:<w0$}  {name:<w1$}  {sig:<w2$}  {doc}");
    }
    let keys: Vec<&str> = model.metadata().into_iter().map(|(k, _)| k).collect();
    outln!("  metadata: {}", keys.join(", "));
}
