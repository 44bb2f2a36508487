//! The RBM pairs of a contrastive-divergence job (`algorithm = "cd"`).
//!
//! An RBM is an `rbm_vis` and an `rbm_hid` layer that name each other as sources (SINGA's
//! two-way link): the visible layer reads the data and its hidden layer, the hidden layer
//! reads the visible one. Here each pair is checked and put in the form the net builder
//! expects: the visible layer's sources are the data first and the hidden layer second, the
//! visible layer's `hdim` is the hidden layer's when not written, and the hidden layer uses
//! the visible layer's weight (`share_from`), so that the pair has one `W`.

use super::{split_source, LayerConfig, ParamConfig};
use crate::registry::Registry;
use singa_core::{Error, LayerRole, Result};

/// The built-in visible and hidden layer types (a plugin's layer types can take their roles,
/// [`LayerRole`]).
pub const VISIBLE: &str = "rbm_vis";
/// See [`VISIBLE`].
pub const HIDDEN: &str = "rbm_hid";

/// The role of `layer`'s type in `registry` (none for a type it does not know).
pub fn role(registry: &Registry, layer: &LayerConfig) -> LayerRole {
    registry
        .layer(&layer.type_name)
        .map_or(LayerRole::Plain, |t| t.role)
}

/// The layers of a CD job with every RBM pair linked (see the module documentation); errors
/// name `file` and the field.
pub fn link_pairs(
    layers: &[LayerConfig],
    registry: &Registry,
    file: &str,
) -> Result<Vec<LayerConfig>> {
    let visible = |l: &LayerConfig| role(registry, l) == LayerRole::RbmVisible;
    let hidden = |l: &LayerConfig| role(registry, l) == LayerRole::RbmHidden;
    let err = |l: &LayerConfig, field: &str, msg: String| {
        Error::config(file, format!("layer[{}].{field}", l.name), msg)
    };
    let find = |name: &str| layers.iter().find(|l| l.name == name);
    let mut out = layers.to_vec();
    let mut pairs = 0;
    for (i, vis) in layers.iter().enumerate() {
        if !visible(vis) {
            continue;
        }
        let hidden: Vec<&String> = vis
            .srclayers
            .iter()
            .filter(|s| find(split_source(s).0).is_some_and(hidden))
            .collect();
        let (hid_name, data) = match (hidden.as_slice(), vis.srclayers.len()) {
            ([h], 2) => {
                let data = vis.srclayers.iter().find(|s| s != h).cloned();
                (split_source(h).0, data.unwrap_or_default())
            }
            _ => {
                return Err(err(
                    vis,
                    "srclayers",
                    format!(
                        "an RBM's visible layer ({}) reads two sources, the data and the RBM's hidden layer ({HIDDEN}); got {:?}",
                        vis.type_name, vis.srclayers
                    ),
                ))
            }
        };
        let (h, hid) = layers
            .iter()
            .enumerate()
            .find(|(_, l)| l.name == hid_name)
            .expect("found above");
        if hid.srclayers.len() != 1 || split_source(&hid.srclayers[0]).0 != vis.name {
            return Err(err(
                hid,
                "srclayers",
                format!(
                    "the {} layer of an RBM reads its {} layer {:?} only (the two-way link); got {:?}",
                    hid.type_name, vis.type_name, vis.name, hid.srclayers
                ),
            ));
        }
        if let Some(other) = layers.iter().find(|l| {
            l.name != vis.name
                && visible(l)
                && l.srclayers.iter().any(|s| split_source(s).0 == hid.name)
        }) {
            return Err(err(
                other,
                "srclayers",
                format!(
                    "{:?} already belongs to the RBM of {:?}",
                    hid.name, vis.name
                ),
            ));
        }
        let hdim = hid.fields.get("hdim").cloned();
        match (vis.fields.get("hdim"), &hdim) {
            (Some(v), Some(h)) if v != h => {
                return Err(err(
                    vis,
                    "hdim",
                    format!(
                        "{v:?}, but its {} layer {:?} has {h:?}",
                        hid.type_name, hid.name
                    ),
                ))
            }
            (None, Some(h)) => out[i].fields.set("hdim", h.clone()),
            _ => {}
        }
        out[i].srclayers = vec![data, hid.name.clone()];
        let weight = match out[h].params.iter_mut().find(|p| p.name == "weight") {
            Some(p) => p,
            None => {
                out[h].params.push(ParamConfig::new("weight"));
                out[h].params.last_mut().expect("pushed")
            }
        };
        let shared = format!("{}/weight", vis.name);
        if let Some(s) = weight.share_from.as_ref().filter(|s| **s != shared) {
            let msg =
                format!("{s:?}: an RBM's hidden layer uses its visible layer's weight, {shared:?}");
            return Err(err(hid, "param[weight].share_from", msg));
        }
        weight.share_from = Some(shared);
        pairs += 1;
    }
    if pairs == 0 {
        return Err(Error::config(
            file,
            "algorithm",
            format!(
                "\"cd\" trains RBMs, and no layer is an RBM's visible layer ({VISIBLE}; an RBM is an {VISIBLE} and an {HIDDEN} layer that read each other)"
            ),
        ));
    }
    if let Some(hid) = out.iter().find(|l| {
        hidden(l)
            && !out
                .iter()
                .any(|v| visible(v) && v.srclayers.get(1).is_some_and(|s| *s == l.name))
    }) {
        return Err(err(
            hid,
            "srclayers",
            format!("no visible layer ({VISIBLE}) reads this {} layer back: an RBM is the two, each naming the other", hid.type_name),
        ));
    }
    Ok(out)
}

/// Whether `layer` is one of an RBM's two layers (which a non-CD job cannot train).
pub fn is_rbm(registry: &Registry, layer: &LayerConfig) -> bool {
    role(registry, layer) != LayerRole::Plain
}
