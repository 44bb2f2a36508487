//! Unrolling recurrent cells over time, for back-propagation through time (SINGA's approach:
//! BPTT is BP on the unrolled net).
//!
//! A layer with `unroll = true` is a cell (`gru`, `lstm`) that runs once per time step. For
//! `unroll_len = T` it becomes T layers `name@0` … `name@{T-1}`: step `t` takes the step's
//! input and the outputs of step `t − 1` (its hidden state, and an LSTM's cell); step 0 takes
//! them from `name@carry`, a `recurrent_state` layer that holds the last step's outputs of the
//! batch before (zeros at first: SINGA's and char-rnn's "full state"). Every step uses step 0's parameters (`share_params_from`), so their gradients
//! add up over the steps. The cell's source is a sequence `[batch, T, features]` (a `slice`
//! layer `name@in` cuts it into steps) or another unrolled cell (step `t` reads its step `t`).
//! Other layers that read the cell see the sequence of its hidden states, `[batch, T,
//! hidden]`: a `concat` layer `name@seq` and a `reshape` layer that takes the cell's own name.
//!
//! ```text
//! text_data ─ one_hot ─ gru1@in ┬ gru1@0 ─ gru1@1 ─ … ─ gru1@49
//!                               └─ slices 0…49: the steps' inputs
//! gru1@0…49 ─ gru1@seq (concat) ─ gru1 (reshape [batch, 50, hidden]) ─ flatten ─ …
//! ```

use super::{split_source, LayerConfig};
use singa_core::{Error, FieldValue, Result};
use std::collections::BTreeSet;

/// The outputs of step `t − 1` that step `t` of a cell type takes after its input, as
/// source suffixes (`""`: the first output), or `None` for a type that is not a cell.
fn state_outputs(type_name: &str) -> Option<&'static [&'static str]> {
    match type_name {
        "gru" => Some(&[""]),
        "lstm" => Some(&["", ":cell"]),
        _ => None,
    }
}

/// The layers of a job with every `unroll` layer unrolled over `steps` time steps (see the
/// module documentation); errors name `file` and the field.
pub fn unroll(layers: &[LayerConfig], steps: usize, file: &str) -> Result<Vec<LayerConfig>> {
    let err = |l: &LayerConfig, field: &str, msg: String| {
        Error::config(file, format!("layer[{}].{field}", l.name), msg)
    };
    let unrolled: BTreeSet<&str> = layers
        .iter()
        .filter(|l| l.unroll)
        .map(|l| l.name.as_str())
        .collect();
    let mut out = Vec::new();
    // Unrolled cells other layers read as a sequence, in order of first use.
    let mut sequences: Vec<&LayerConfig> = Vec::new();
    for l in layers {
        if !l.unroll {
            for src in &l.srclayers {
                let (base, output) = split_source(src);
                let Some(cell) = layers.iter().find(|c| c.unroll && c.name == base) else {
                    continue;
                };
                if let Some(output) = output {
                    return Err(err(
                        l,
                        "srclayers",
                        format!(
                            "{src:?}: a layer that is not unrolled reads an unrolled cell as the \
                             sequence of its hidden states (\"{base}\"), not its output {output:?}"
                        ),
                    ));
                }
                if !sequences.iter().any(|c| c.name == cell.name) {
                    sequences.push(cell);
                }
            }
            out.push(l.clone());
            continue;
        }
        let Some(state) = state_outputs(&l.type_name) else {
            return Err(err(
                l,
                "unroll",
                format!(
                    "type {:?} is not a recurrent cell; the types that unroll are gru and lstm",
                    l.type_name
                ),
            ));
        };
        let [src] = l.srclayers.as_slice() else {
            return Err(err(
                l,
                "srclayers",
                format!(
                    "an unrolled cell has one source, its input (each step's state comes from \
                     the step before); got {}",
                    l.srclayers.len()
                ),
            ));
        };
        if l.partition_dim != -1 {
            return Err(err(
                l,
                "partition_dim",
                "an unrolled cell cannot be partitioned yet".into(),
            ));
        }
        let (base, output) = split_source(src);
        let from_cell = unrolled.contains(base);
        if !from_cell {
            let mut slice = aux(l, format!("{}@in", l.name), "slice", vec![src.clone()]);
            slice.fields = slice.fields.with("axis", 1i64).with(
                "slice_points",
                FieldValue::List((1..steps as i64).map(FieldValue::Int).collect()),
            );
            out.push(slice);
        }
        let input = |t: usize| match (from_cell, output) {
            (true, Some(o)) => format!("{base}@{t}:{o}"),
            (true, None) => format!("{base}@{t}"),
            (false, _) => format!("{}@in:{t}", l.name),
        };
        // The state carried over from the batch before: the last step's, after each batch.
        let carry = format!("{}@carry", l.name);
        let mut carried = aux(l, carry.clone(), "recurrent_state", vec![input(0)]);
        if let Some(h) = l.fields.get("hidden_dim") {
            carried.fields.set("hidden_dim", h.clone());
        }
        carried.fields = carried
            .fields
            .with("cell", state.len() == 2)
            .with("from", format!("{}@{}", l.name, steps - 1));
        out.push(carried);
        for t in 0..steps {
            let previous = if t == 0 {
                carry.clone()
            } else {
                format!("{}@{}", l.name, t - 1)
            };
            let mut step = l.clone();
            step.name = format!("{}@{t}", l.name);
            step.unroll = false;
            step.srclayers = vec![input(t)];
            step.srclayers
                .extend(state.iter().map(|o| format!("{previous}{o}")));
            if t > 0 {
                step.params = Vec::new();
                step.share_params_from = Some(format!("{}@0", l.name));
            }
            out.push(step);
        }
    }
    for cell in sequences {
        let steps_out = (0..steps).map(|t| format!("{}@{t}", cell.name)).collect();
        let mut concat = aux(cell, format!("{}@seq", cell.name), "concat", steps_out);
        concat.fields = concat.fields.with("axis", 1i64);
        out.push(concat);
        let mut reshape = aux(
            cell,
            cell.name.clone(),
            "reshape",
            vec![format!("{}@seq", cell.name)],
        );
        let shape = [0, steps as i64, -1].map(FieldValue::Int);
        reshape.fields = reshape
            .fields
            .with("shape", FieldValue::List(shape.to_vec().into()));
        out.push(reshape);
    }
    Ok(out)
}

/// A layer the unrolling adds for `cell`, in the same phases.
fn aux(cell: &LayerConfig, name: String, type_name: &str, srclayers: Vec<String>) -> LayerConfig {
    let mut l = LayerConfig::new(&name, type_name);
    l.srclayers = srclayers;
    l.include = cell.include.clone();
    l.exclude = cell.exclude.clone();
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(name: &str, ty: &str, src: &str) -> LayerConfig {
        let mut l = LayerConfig::new(name, ty).src(src).field("hidden_dim", 4);
        l.unroll = true;
        l
    }

    fn names(layers: &[LayerConfig]) -> Vec<&str> {
        layers.iter().map(|l| l.name.as_str()).collect()
    }

    fn find<'a>(layers: &'a [LayerConfig], name: &str) -> &'a LayerConfig {
        layers.iter().find(|l| l.name == name).unwrap()
    }

    /// Two stacked cells: the first slices its input, the second reads the first step by
    /// step, the loss side sees the second as a sequence; steps share step 0's parameters.
    #[test]
    fn stacked_cells_unroll_step_by_step() {
        let layers = vec![
            LayerConfig::new("data", "text_data"),
            LayerConfig::new("onehot", "one_hot").src("data"),
            cell("lstm1", "lstm", "onehot"),
            cell("gru2", "gru", "lstm1"),
            LayerConfig::new("flat", "flatten").src("gru2"),
        ];
        let out = unroll(&layers, 3, "job.toml").unwrap();
        assert_eq!(
            names(&out),
            [
                "data",
                "onehot",
                "lstm1@in",
                "lstm1@carry",
                "lstm1@0",
                "lstm1@1",
                "lstm1@2",
                "gru2@carry",
                "gru2@0",
                "gru2@1",
                "gru2@2",
                "flat",
                "gru2@seq",
                "gru2"
            ]
        );
        assert_eq!(find(&out, "lstm1@in").srclayers, ["onehot"]);
        assert_eq!(
            find(&out, "lstm1@0").srclayers,
            ["lstm1@in:0", "lstm1@carry", "lstm1@carry:cell"]
        );
        let carry = find(&out, "lstm1@carry");
        assert_eq!(carry.srclayers, ["lstm1@in:0"]);
        assert_eq!(carry.fields.str("from").unwrap(), "lstm1@2");
        assert!(carry.fields.bool("cell").unwrap());
        assert_eq!(find(&out, "gru2@carry").srclayers, ["lstm1@0"]);
        assert_eq!(
            find(&out, "lstm1@2").srclayers,
            ["lstm1@in:2", "lstm1@1", "lstm1@1:cell"]
        );
        assert_eq!(find(&out, "gru2@1").srclayers, ["lstm1@1", "gru2@0"]);
        assert_eq!(find(&out, "gru2@0").share_params_from, None);
        assert_eq!(
            find(&out, "gru2@2").share_params_from.as_deref(),
            Some("gru2@0")
        );
        assert_eq!(
            find(&out, "gru2@seq").srclayers,
            ["gru2@0", "gru2@1", "gru2@2"]
        );
        assert_eq!(find(&out, "gru2").type_name, "reshape");
        assert!(out.iter().all(|l| !l.unroll));
    }

    /// What cannot unroll is refused, naming the layer and the field.
    #[test]
    fn mistakes_are_named() {
        let data = LayerConfig::new("data", "text_data");
        let e = |layers: Vec<LayerConfig>| unroll(&layers, 2, "job.toml").unwrap_err().to_string();
        let msg = e(vec![data.clone(), cell("fc", "inner_product", "data")]);
        assert!(
            msg.contains("layer[fc].unroll") && msg.contains("not a recurrent cell"),
            "{msg}"
        );
        let two = cell("g", "gru", "data").src("data");
        assert!(e(vec![data.clone(), two]).contains("one source"));
        let reader = LayerConfig::new("fc", "inner_product").src("l:cell");
        let msg = e(vec![data, cell("l", "lstm", "data"), reader]);
        assert!(msg.contains("layer[fc].srclayers"), "{msg}");
    }
}
