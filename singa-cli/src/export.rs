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
    for (what, values) in [("input", model.inputs()), ("output", model.outputs())] {
        for v in values {
            outln!(
                "  {what:<6}  {:<8}  {:<24}  {}",
                v.name,
                signature(v),
                v.doc
            );
        }
    }
    let keys: Vec<&str> = model.metadata().into_iter().map(|(k, _)| k).collect();
    outln!("  metadata: {}", keys.join(", "));
}
