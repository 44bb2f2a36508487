//! Unrolling recurrent cells over time, for back-propagation through time (SINGA's approach:
//! BPTT is BP on the unrolled net).
//!
//! A layer with `unroll = true` is a cell (`gru`, `lstm`) that runs once per time step. For
//! `unroll_len = T` it becomes T layers `name@0` … `name@{T-1}`: step `t` takes the step's
//! input and the outputs of step `t − 1` (its hidden state, and an LSTM's cell); step 0 takes
//! them from `name@carry`, a `recurrent_state` layer that holds the last step's outputs of the
//! batch before (zeros at first: SINGA's and char-rnn's "full state"). Every step uses step
//! 0's parameters (`share_params_from`), so their gradients add up over the steps.
//!
//! The input side of every step is computed at once, before the steps: `name@x`, an
//! `inner_product` over the whole sequence (`axis = 2`, no bias), holds the cell's input
//! weights (`weight_x`, the gates side by side, as the layer `weight`) and maps `[batch, T,
//! features]` to `[batch, T, gates·hidden]` in one product; `name@in` slices it into steps, and
//! the steps take it as a `projected_input`. One product of `batch·T` rows runs far faster
//! than T products of `batch` rows, forward and backward (PyTorch's and cuDNN's RNNs do the
//! same). The cell's source is a sequence `[batch, T, features]` or another unrolled cell,
//! read as the sequence of its hidden states. Other layers that read a cell see that
//! sequence, `[batch, T, hidden]`: a `concat` layer `name@seq` and a `reshape` layer that takes
//! the cell's own name.
//!
//! ```text
//! text_data ─ one_hot ─ gru1@x ─ gru1@in ┬ gru1@0 ─ gru1@1 ─ … ─ gru1@49
//!                                        └─ slices 0…49: the steps' projected inputs
//! gru1@0…49 ─ gru1@seq (concat) ─ gru1 (reshape [batch, 50, hidden]) ─ gru2@x ─ …
//! ```

use super::{split_source, LayerConfig, ParamConfig};
use singa_core::{Error, FieldValue, Init, Result};

/// What the unrolling needs to know of a cell type.
struct CellKind {
    /// The outputs of step `t − 1` that step `t` takes after its input, as source suffixes
    /// (`""`: the first output).
    state: &'static [&'static str],
    /// The gates whose input products lie side by side in `weight_x`.
    gates: usize,
}

/// The cell kind of a layer type, or `None` for a type that is not a cell.
fn cell_kind(type_name: &str) -> Option<CellKind> {
    match type_name {
        "gru" => Some(CellKind {
            state: &[""],
            gates: 3,
        }),
        "lstm" => Some(CellKind {
            state: &["", ":cell"],
            gates: 4,
        }),
        _ => None,
    }
}

/// The layers of a job with every `unroll` layer unrolled over `steps` time steps (see the
/// module documentation); errors name `file` and the field.
pub fn unroll<'a>(layers: &'a [LayerConfig], steps: usize, file: &str) -> Result<Vec<LayerConfig>> {
    let err = |l: &LayerConfig, field: &str, msg: String| {
        Error::config(file, format!("layer[{}].{field}", l.name), msg)
    };
    let is_cell = |name: &str| layers.iter().any(|c| c.unroll && c.name == name);
    // Unrolled cells read as a sequence, in order of first use.
    let mut sequences: Vec<&str> = Vec::new();
    // Every reader of an unrolled cell (an unrolled cell too) reads the sequence of its
    // hidden states.
    let mut read = |reader: &LayerConfig, src: &'a str| -> Result<()> {
        let (base, output) = split_source(src);
        if !is_cell(base) {
            return Ok(());
        }
        if let Some(output) = output {
            return Err(err(
                reader,
                "srclayers",
                format!(
                    "{src:?}: an unrolled cell is read as the sequence of its hidden states \
                     (\"{base}\"), not as its output {output:?}"
                ),
            ));
        }
        if !sequences.contains(&base) {
            sequences.push(base);
        }
        Ok(())
    };
    let mut out = Vec::new();
    for l in layers {
        if !l.unroll {
            for src in &l.srclayers {
                read(l, src)?;
            }
            out.push(l.clone());
            continue;
        }
        let Some(kind) = cell_kind(&l.type_name) else {
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
        let hidden = l.fields.usize("hidden_dim").map_err(|e| {
            err(
                l,
                "hidden_dim",
                format!("an unrolled cell needs its size: {e}"),
            )
        })?;
        read(l, src)?;
        let (projection, cell_params) = input_projection(l, src, kind.gates * hidden);
        out.push(projection);
        let mut slice = aux(
            l,
            format!("{}@in", l.name),
            "slice",
            vec![format!("{}@x", l.name)],
        );
        slice.fields = slice.fields.with("axis", 1i64).with(
            "slice_points",
            FieldValue::List((1..steps as i64).map(FieldValue::Int).collect()),
        );
        out.push(slice);
        let input = |t: usize| format!("{}@in:{t}", l.name);
        // The state carried over from the batch before: the last step's, after each batch.
        let carry = format!("{}@carry", l.name);
        let mut carried = aux(l, carry.clone(), "recurrent_state", vec![input(0)]);
        carried.fields = carried
            .fields
            .with("hidden_dim", hidden)
            .with("cell", kind.state.len() == 2)
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
            step.fields.set("projected_input", true);
            step.srclayers = vec![input(t)];
            step.srclayers
                .extend(kind.state.iter().map(|o| format!("{previous}{o}")));
            if t > 0 {
                step.params = Vec::new();
                step.share_params_from = Some(format!("{}@0", l.name));
            } else {
                step.params = cell_params.clone();
            }
            out.push(step);
        }
    }
    for name in sequences {
        let cell = layers.iter().find(|c| c.name == name).expect("a cell");
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

/// `cell`'s input projection `name@x` over the whole sequence `src`, `width` outputs (the
/// gates side by side), and the cell's parameter settings without the input weights', which
/// the projection takes (as its `weight`, initialised as the cell's own).
fn input_projection(
    cell: &LayerConfig,
    src: &str,
    width: usize,
) -> (LayerConfig, Vec<ParamConfig>) {
    let mut projection = aux(
        cell,
        format!("{}@x", cell.name),
        "inner_product",
        vec![src.to_string()],
    );
    projection.fields = projection
        .fields
        .with("num_output", width)
        .with("bias_term", false)
        .with("axis", 2i64);
    let mut weight = ParamConfig::new("weight");
    weight.init = Some(Init::Uniform {
        low: -0.08,
        high: 0.08,
    });
    let mut cell_params = Vec::new();
    for p in &cell.params {
        if p.name == "weight_x" {
            // Another unrolled cell's input weights moved to its projection too.
            let share_from = p
                .share_from
                .as_ref()
                .map(|s| match s.strip_suffix("@0/weight_x") {
                    Some(other) => format!("{other}@x/weight"),
                    None => s.clone(),
                });
            weight = ParamConfig {
                name: "weight".into(),
                init: p.init.or(weight.init),
                share_from,
                ..p.clone()
            };
        } else {
            cell_params.push(p.clone());
        }
    }
    projection.params = vec![weight];
    (projection, cell_params)
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

    /// Two stacked cells: each projects its whole input sequence at once and slices the
    /// projection into steps; the second reads the first as a sequence, as the loss side
    /// does; steps share step 0's parameters; the input weights' settings move to the
    /// projection.
    #[test]
    fn stacked_cells_unroll_with_their_inputs_projected() {
        let mut lstm = cell("lstm1", "lstm", "onehot");
        let mut wx = ParamConfig::new("weight_x");
        wx.lr_mult = 2.0;
        wx.share_from = Some("other@0/weight_x".into());
        lstm.params = vec![wx, ParamConfig::new("weight_h")];
        let layers = vec![
            LayerConfig::new("data", "text_data"),
            LayerConfig::new("onehot", "one_hot").src("data"),
            lstm,
            cell("gru2", "gru", "lstm1"),
            LayerConfig::new("flat", "flatten").src("gru2"),
        ];
        let out = unroll(&layers, 3, "job.toml").unwrap();
        assert_eq!(
            names(&out),
            [
                "data",
                "onehot",
                "lstm1@x",
                "lstm1@in",
                "lstm1@carry",
                "lstm1@0",
                "lstm1@1",
                "lstm1@2",
                "gru2@x",
                "gru2@in",
                "gru2@carry",
                "gru2@0",
                "gru2@1",
                "gru2@2",
                "flat",
                "lstm1@seq",
                "lstm1",
                "gru2@seq",
                "gru2"
            ]
        );
        let x = find(&out, "lstm1@x");
        assert_eq!(
            (x.type_name.as_str(), x.srclayers.as_slice()),
            ("inner_product", &["onehot".to_string()][..])
        );
        assert_eq!(x.fields.usize("num_output").unwrap(), 16);
        assert_eq!(x.fields.usize("axis").unwrap(), 2);
        assert!(!x.fields.bool("bias_term").unwrap());
        assert_eq!(x.params.len(), 1);
        assert_eq!(
            (x.params[0].name.as_str(), x.params[0].lr_mult),
            ("weight", 2.0)
        );
        assert!(matches!(x.params[0].init, Some(Init::Uniform { .. })));
        assert_eq!(x.params[0].share_from.as_deref(), Some("other@x/weight"));
        let names: Vec<&str> = find(&out, "lstm1@0")
            .params
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["weight_h"]);
        assert_eq!(find(&out, "gru2@x").srclayers, ["lstm1"]);
        assert_eq!(find(&out, "gru2@x").fields.usize("num_output").unwrap(), 12);
        assert_eq!(find(&out, "lstm1@in").srclayers, ["lstm1@x"]);
        assert_eq!(
            find(&out, "lstm1@0").srclayers,
            ["lstm1@in:0", "lstm1@carry", "lstm1@carry:cell"]
        );
        assert!(find(&out, "lstm1@0")
            .fields
            .bool("projected_input")
            .unwrap());
        let carry = find(&out, "lstm1@carry");
        assert_eq!(carry.srclayers, ["lstm1@in:0"]);
        assert_eq!(carry.fields.str("from").unwrap(), "lstm1@2");
        assert!(carry.fields.bool("cell").unwrap());
        assert_eq!(find(&out, "gru2@carry").srclayers, ["gru2@in:0"]);
        assert_eq!(
            find(&out, "lstm1@2").srclayers,
            ["lstm1@in:2", "lstm1@1", "lstm1@1:cell"]
        );
        assert_eq!(find(&out, "gru2@1").srclayers, ["gru2@in:1", "gru2@0"]);
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
        let msg = e(vec![data.clone(), cell("l", "lstm", "data"), reader]);
        assert!(msg.contains("layer[fc].srclayers"), "{msg}");
        let reader = cell("g", "gru", "l:cell");
        let msg = e(vec![data.clone(), cell("l", "lstm", "data"), reader]);
        assert!(msg.contains("layer[g].srclayers"), "{msg}");
        let mut sizeless = cell("g", "gru", "data");
        sizeless.fields = Default::default();
        let msg = e(vec![data, sizeless]);
        assert!(msg.contains("layer[g].hidden_dim"), "{msg}");
    }
}
