//! What a net costs: each layer's outputs, parameters and forward FLOPs per sample, with totals
//! (`singa net JOB`).
//!
//! FLOPs count a multiply-add of a product as two (inner products, convolutions), a window of
//! a pooling layer as one per element it reads, and every other built-in layer as one per
//! element it produces (per element it reads, for a loss): an estimate for those, whose cost
//! is small beside the products'. Layers that only move data (flatten, reshape, split, slice,
//! concat) and input layers count none. A plugin's layer is not counted: its cost is unknown
//! here.

use crate::config::JobConfig;
use crate::net::NeuralNet;
use crate::params::ParamStore;
use singa_core::{FieldValue, TensorSpec};
use std::fmt::Write;

/// One layer's cost.
#[derive(Clone, Debug)]
pub struct LayerCost {
    /// The layer's name.
    pub name: String,
    /// Its type.
    pub type_name: String,
    /// Its outputs (batch first).
    pub outputs: Vec<TensorSpec>,
    /// The values of the parameters it uses (shared ones counted where they are created).
    pub params: usize,
    /// Forward FLOPs per sample; `None` for a type this module does not know.
    pub flops: Option<f64>,
}

/// Layer types whose forward pass only moves data.
const MOVES: [&str; 5] = ["flatten", "reshape", "split", "slice", "concat"];

/// The cost of every layer of `net` (built from `job`, with parameters in `store`).
pub fn summarize(net: &NeuralNet, store: &ParamStore, job: &JobConfig) -> Vec<LayerCost> {
    let batch = net.batch_size().max(1) as f64;
    let built_in: Vec<String> = singa_layers::layer_types()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    let mut seen = vec![false; store.entries().len()];
    net.layers()
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let params = l
                .params
                .iter()
                .filter(|&&p| !std::mem::replace(&mut seen[p], true))
                .map(|&p| store.entries()[p].value.numel())
                .sum();
            let numel =
                |specs: &[TensorSpec]| specs.iter().map(|s| s.shape.numel()).sum::<usize>() as f64;
            let outputs = numel(l.output_specs()) / batch;
            let input_specs = net.input_specs(i);
            let inputs = numel(&input_specs) / batch;
            let weights = |rank: usize| -> f64 {
                l.params
                    .iter()
                    .map(|&p| &store.entries()[p])
                    .filter(|e| e.shape().rank() == rank)
                    .map(|e| e.value.numel() as f64)
                    .sum()
            };
            let bias = || weights(1);
            let config = job.layers.iter().find(|c| c.name == l.name);
            let field = |k: &str| match config.and_then(|c| c.fields.get(k)) {
                Some(FieldValue::Int(v)) => Some(*v as f64),
                _ => None,
            };
            let t = l.type_name.as_str();
            let flops = if input_specs.is_empty() || MOVES.contains(&t) {
                Some(0.0)
            } else if t == "inner_product" {
                // Per row of its input: a sample's, or each step's of a sequence (`axis = 2`).
                let rows = outputs
                    / l.output_specs()[0]
                        .shape
                        .dims()
                        .last()
                        .map_or(1, |&n| n.max(1)) as f64;
                Some((2.0 * weights(2) + bias()) * rows)
            } else if t == "convolution" {
                // Per output position: every weight once, and a bias per filter.
                let positions = l.output_specs()[0].shape.dims()[2..]
                    .iter()
                    .product::<usize>() as f64;
                Some((2.0 * weights(4) + bias()) * positions)
            } else if t == "pooling" {
                let area = field("kernel")
                    .map(|k| k * k)
                    .or_else(|| Some(field("kernel_h")? * field("kernel_w")?))
                    .unwrap_or(1.0);
                Some(area * outputs)
            } else if built_in.iter().any(|b| b == t) || t == "bridge" {
                // Activations, normalisations, dropout, softmax, losses: about one per element.
                Some(if l.output_specs().is_empty() {
                    inputs
                } else {
                    outputs
                })
            } else {
                None
            };
            LayerCost {
                name: l.name.clone(),
                type_name: l.type_name.clone(),
                outputs: l.output_specs().to_vec(),
                params,
                flops,
            }
        })
        .collect()
}

/// `n` with thousands separated.
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn flops_text(f: f64) -> String {
    if f >= 1e6 {
        format!("{:.2} M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} k", f / 1e3)
    } else {
        format!("{f:.0}")
    }
}

/// The costs as an aligned table with totals.
pub fn table(costs: &[LayerCost]) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "layer".into(),
        "type".into(),
        "output (batch first)".into(),
        "params".into(),
        "FLOPs/sample".into(),
    ]];
    for c in costs {
        let outputs: Vec<String> = c
            .outputs
            .iter()
            .map(|o| format!("{} {}", o.shape, o.dtype))
            .collect();
        rows.push([
            c.name.clone(),
            c.type_name.clone(),
            outputs.join(", "),
            grouped(c.params),
            c.flops.map(flops_text).unwrap_or_else(|| "?".into()),
        ]);
    }
    let params: usize = costs.iter().map(|c| c.params).sum();
    let flops: f64 = costs.iter().filter_map(|c| c.flops).sum();
    let unknown = costs.iter().filter(|c| c.flops.is_none()).count();
    rows.push([
        "total".into(),
        String::new(),
        String::new(),
        grouped(params),
        format!(
            "{}{}",
            flops_text(flops),
            if unknown > 0 { " + ?" } else { "" }
        ),
    ]);
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..5).map(width).collect();
    let mut out = String::new();
    for (k, row) in rows.iter().enumerate() {
        if k == rows.len() - 1 {
            let rule: usize = widths.iter().sum::<usize>() + 2 * widths.len();
            let _ = writeln!(out, "  {}", "-".repeat(rule - 2));
        }
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            // Numbers right-aligned, words left.
            if c >= 3 {
                let _ = write!(line, "  {cell:>w$}", w = widths[c]);
            } else {
                let _ = write!(line, "  {cell:<w$}", w = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if unknown > 0 {
        let _ = writeln!(
            out,
            "  ? : a type whose cost singa does not know (a plugin's)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(grouped(1_290_000), "1,290,000");
        assert_eq!(grouped(999), "999");
        assert_eq!(flops_text(2_568_000.0), "2.57 M");
        assert_eq!(flops_text(1_500.0), "1.5 k");
    }
}
