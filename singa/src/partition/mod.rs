//! Partitioning a net over the workers of a group (SINGA's `partition_dim`).
//!
//! Each layer is split along the batch (`partition_dim = 0`, the default: every worker holds
//! the whole layer and computes it on its part of the batch) or along the features
//! (`partition_dim = 1`: every worker holds a part of the layer's neurons and its parameters,
//! and computes it on the whole batch). A tensor between two layers is therefore held in rows
//! ([`Dist::Rows`]: each worker has its part of the batch), in columns ([`Dist::Cols`]: its part
//! of the features) or whole ([`Dist::All`]). Where a layer needs its input held another way
//! than its source produces it, the net builder inserts a [`bridge`] layer that moves the
//! blocks between the workers, as `Bridge` messages through a [`Transport`](singa_core::Transport).
//!
//! Which layers can be split along the features, and how:
//! - `inner_product` and `convolution` keep `num_output` / `num_filters` divided by the
//!   workers and read the whole input. Their parameters stay whole in the parameter store, as
//!   in the unpartitioned net; each worker's layer sees a block of rows of them (an inner
//!   product's weight is therefore stored `[out, in]`, `transpose = true`);
//! - elementwise layers (activations, dropout) and pooling work on the columns they get.

pub mod bridge;

use crate::config::LayerConfig;
use singa_core::{Error, FieldValue, Fields, Result};

pub use bridge::Exchanges;

/// How a tensor is held by the workers of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dist {
    /// Each worker holds its block of rows (its part of the batch).
    Rows,
    /// Each worker holds its block of columns (its part of the features; channels for images).
    Cols,
    /// Each worker holds the whole tensor.
    All,
}

impl Dist {
    /// A short label for bridge names.
    pub fn label(self) -> &'static str {
        match self {
            Dist::Rows => "rows",
            Dist::Cols => "cols",
            Dist::All => "all",
        }
    }
}

/// How a layer split along the features treats its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSplit {
    /// Reads the whole input and computes its share of the outputs; the field holds the number
    /// of outputs, divided among the workers.
    Neurons(&'static str),
    /// Computes each feature on its own: works on whatever columns it gets.
    Elementwise,
}

/// How a layer of type `type_name` can be split along the features, if it can.
pub fn feature_split(type_name: &str) -> Option<FeatureSplit> {
    match type_name {
        "inner_product" => Some(FeatureSplit::Neurons("num_output")),
        "convolution" => Some(FeatureSplit::Neurons("num_filters")),
        "relu" | "sigmoid" | "tanh" | "stanh" | "activation" | "dropout" | "pooling" => {
            Some(FeatureSplit::Elementwise)
        }
        _ => None,
    }
}

/// The layer types that can be split along the features, for messages.
pub const FEATURE_SPLIT_TYPES: &str =
    "inner_product, convolution, relu, sigmoid, tanh, stanh, activation, dropout, pooling";

/// Whether `layer` is split along the features (in a group of more than one worker).
pub fn splits_features(layer: &LayerConfig) -> bool {
    layer.partition_dim == 1
}

/// Checks that `layer`, split along the features over `members` workers, can be: its type,
/// its fields and its sources.
pub fn check_feature_split(file: &str, layer: &LayerConfig, members: usize) -> Result<()> {
    let at = format!("layer[{}].partition_dim", layer.name);
    if layer.srclayers.is_empty() {
        return Err(Error::config(
            file,
            at,
            "an input layer reads its part of the batch; it cannot be split along the features (use 0)",
        ));
    }
    let Some(split) = feature_split(&layer.type_name) else {
        return Err(Error::config(
            file,
            at,
            format!(
                "a {} layer cannot be split along the features; the types that can: {FEATURE_SPLIT_TYPES}",
                layer.type_name
            ),
        ));
    };
    if let FeatureSplit::Neurons(field) = split {
        if let Some(FieldValue::Int(n)) = layer.fields.get(field) {
            if !(*n as usize).is_multiple_of(members) {
                return Err(Error::config(
                    file,
                    format!("layer[{}].{field}", layer.name),
                    format!(
                        "{n} cannot be split evenly over the {members} workers of a group (partition_dim = 1)"
                    ),
                ));
            }
        }
        if let Some(FieldValue::Int(g)) = layer.fields.get("groups") {
            if *g != 1 {
                return Err(Error::config(
                    file,
                    at,
                    "a grouped convolution cannot be split along the features",
                ));
            }
        }
        if let Some(FieldValue::Int(axis)) = layer.fields.get("axis") {
            if *axis != 1 {
                // The bridges join the parts' outputs as [batch, features] columns.
                return Err(Error::config(
                    file,
                    format!("layer[{}].axis", layer.name),
                    format!("an inner product over axis {axis} cannot be split along the features (only axis = 1)"),
                ));
            }
        }
        if let Some(FieldValue::Bool(false)) = layer.fields.get("transpose") {
            return Err(Error::config(
                file,
                format!("layer[{}].transpose", layer.name),
                "split along the features, an inner product stores its weight [out, in] (transpose = true); remove `transpose = false`",
            ));
        }
    }
    Ok(())
}

/// The fields a layer is built with: an inner product split along the features stores its
/// weight `[out, in]` (whether or not this net is partitioned, so that the train and test
/// nets and every worker agree on the parameter's shape), and a worker's part of a layer
/// split over `members` workers has its share of the outputs.
pub fn effective_fields(layer: &LayerConfig, members: usize) -> Fields {
    let mut fields = layer.fields.clone();
    if !splits_features(layer) {
        return fields;
    }
    if layer.type_name == "inner_product" {
        fields.set("transpose", true);
    }
    if members > 1 {
        if let Some(FeatureSplit::Neurons(field)) = feature_split(&layer.type_name) {
            if let Some(FieldValue::Int(n)) = fields.get(field) {
                let part = *n / members as i64;
                fields.set(field, part);
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inner product over a sequence's steps (`axis = 2`) is not split along the features:
    /// the bridges join parts as `[batch, features]` columns.
    #[test]
    fn an_inner_product_over_steps_is_not_split() {
        let mut l = LayerConfig::new("fc", "inner_product")
            .src("x")
            .field("num_output", 4)
            .field("axis", 2);
        l.partition_dim = 1;
        let e = check_feature_split("job.toml", &l, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer[fc].axis"), "{e}");
        l.fields.set("axis", 1i64);
        check_feature_split("job.toml", &l, 2).unwrap();
    }
}
