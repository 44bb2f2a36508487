//! One gradient for a parameter that several layers share.
//!
//! The steps of an unrolled cell all use step 0's parameters (`share_params_from`). By default
//! each step writes its own gradient of each parameter and the runtime sums them once the
//! backward pass has gone through every step: for a 50-step LSTM that is 50 gradients of
//! every weight to keep and 49 sums over memory that left the cache long before. When the
//! layers' type can add to a gradient instead of overwriting it
//! ([`AccumulateGradients`](singa_layers::capability::AccumulateGradients)), the family writes
//! one gradient together: the member that runs backward first (the last one built) overwrites
//! it, every other member adds to it.

use crate::config::LayerConfig;
use singa_core::Phase;
use std::collections::HashMap;

/// How a member of a family of layers sharing all their parameters writes their gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GradRole {
    /// The first member in the backward pass: writes the gradients afresh.
    Overwrite,
    /// Every other member: adds to them.
    Accumulate,
}

impl GradRole {
    /// Whether the layer adds to its parameters' gradients.
    pub(crate) fn accumulates(self) -> bool {
        self == GradRole::Accumulate
    }
}

/// The role of every layer of a family that can share one gradient per parameter, by name,
/// for the layers built in `order` (indices into `configs`). A family is an owner and the
/// layers whose `share_params_from` names it, all of one type, sharing every parameter as a
/// whole: the owner shares none of its own from elsewhere (no `share_from` in its params),
/// and the others configure no parameter of their own. Only a train net has gradients; a
/// layer split along its features (whose gradients are blocks of rows) is left out. Whether
/// the type can accumulate is asked of each member when it is built (see
/// [`NeuralNet::build_part`](crate::net::NeuralNet::build_part)); all are of one type, so all
/// can or none.
pub(crate) fn roles<'a>(
    configs: &[&'a LayerConfig],
    order: &[usize],
    phase: Phase,
    split: impl Fn(&LayerConfig) -> bool,
) -> HashMap<&'a str, GradRole> {
    let mut roles = HashMap::new();
    if !phase.is_train() {
        return roles;
    }
    let clean_owner = |c: &LayerConfig| {
        c.share_params_from.is_none()
            && c.params.iter().all(|p| p.share_from.is_none())
            && !split(c)
    };
    // Members of each owner's family in build order, the owner first.
    let mut families: HashMap<&str, Vec<&str>> = HashMap::new();
    for &i in order {
        let c = configs[i];
        let Some(owner) = c.share_params_from.as_deref() else {
            continue;
        };
        let Some(o) = configs.iter().find(|o| o.name == owner) else {
            continue;
        };
        if clean_owner(o) && o.type_name == c.type_name && c.params.is_empty() && !split(c) {
            families
                .entry(o.name.as_str())
                .or_insert_with(|| vec![o.name.as_str()])
                .push(c.name.as_str());
        }
    }
    for (_, members) in families {
        let (last, rest) = members.split_last().expect("an owner and a member");
        roles.insert(*last, GradRole::Overwrite);
        for m in rest {
            roles.insert(*m, GradRole::Accumulate);
        }
    }
    roles
}
