//! The parameters of a job: values, gradients, updater state and per-parameter settings, shared
//! by the train and test nets.

use crate::config::ParamConfig;
use singa_core::abi::RResult;
use singa_core::rng::derive_seed;
use singa_core::{
    DType, DeviceRef, Error, Param, ParamFactory, ParamSpec, Phase, Result, Shape, Tensor,
};
use std::collections::HashMap;

/// One parameter and everything the runtime keeps about it.
pub struct ParamEntry {
    /// Full name, `<layer>/<param>`.
    pub name: String,
    /// Current values.
    pub value: Tensor,
    /// One gradient per layer that uses the parameter (several when it is shared), but one
    /// for all the layers of a family that add to one gradient (see `net/shared_grads.rs`).
    pub grads: Vec<Tensor>,
    /// Layer indices (in the train net) of the layers that use it, in the order they were
    /// built (every member of a family writing one gradient included).
    pub users: Vec<usize>,
    /// Learning-rate multiplier.
    pub lr_mult: f32,
    /// Weight-decay multiplier.
    pub wd_mult: f32,
    /// Whether the updater changes it.
    pub trainable: bool,
    /// The updater's state tensors, by the updater's state names.
    pub state: Vec<Tensor>,
    /// Whether the layers of the workers of a group, split along the features, each compute
    /// a block of rows of the gradient. In one process they share one gradient buffer;
    /// otherwise the rest of a worker's gradient stays zero.
    pub split: bool,
}

impl ParamEntry {
    /// The shape of the values.
    pub fn shape(&self) -> Shape {
        self.value.shape()
    }
}

/// All parameters of a job, by name.
#[derive(Default)]
pub struct ParamStore {
    entries: Vec<ParamEntry>,
    by_name: HashMap<String, usize>,
    /// Values to use instead of new ones for trainable parameters of these names.
    shared: HashMap<String, Tensor>,
    /// Gradients to use instead of new ones for parameters split along the features: the
    /// workers of a group write disjoint blocks of rows of one gradient.
    shared_grads: HashMap<String, Tensor>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// An empty store whose trainable parameters, once created, use the memory of `other`'s
    /// parameters of the same names: the workers of a group in one process share one copy of
    /// the values. Gradients stay separate (each worker's covers its part of the batch), but
    /// for parameters split along the features, whose blocks of rows the workers compute
    /// apart, and updater state stays with the servers.
    pub fn sharing_values_of(other: &ParamStore) -> ParamStore {
        let trainable = || other.entries.iter().filter(|e| e.trainable);
        ParamStore {
            shared: trainable()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            shared_grads: trainable()
                .filter(|e| e.split)
                .map(|e| (e.name.clone(), e.grads[0].clone()))
                .collect(),
            ..ParamStore::default()
        }
    }

    /// The parameters, in creation order.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// The parameters, mutably.
    pub fn entries_mut(&mut self) -> &mut [ParamEntry] {
        &mut self.entries
    }

    /// The index of the parameter called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The total number of values.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|e| e.value.numel()).sum()
    }

    /// Per layer of a train net of `layers` layers: the trainable parameters whose gradients
    /// are complete once that layer's backward is done (the first of their users, since
    /// backward runs in reverse).
    pub fn ready_after(&self, layers: usize) -> Vec<Vec<usize>> {
        let mut ready = vec![Vec::new(); layers];
        for (id, e) in self.entries.iter().enumerate() {
            if let (true, Some(&first)) = (e.trainable, e.users.iter().min()) {
                ready[first].push(id);
            }
        }
        ready
    }
}

/// The [`ParamFactory`] a layer sees during setup in a net: it applies the job file's settings
/// (init, multipliers, sharing) and registers parameters in the store.
pub(crate) struct NetParams<'a> {
    pub store: &'a mut ParamStore,
    pub dev: &'a DeviceRef,
    pub layer: &'a str,
    pub layer_index: usize,
    pub configs: &'a [ParamConfig],
    /// Every parameter is this layer's same-named one (the copies of an unrolled cell).
    pub share_from: Option<&'a str>,
    /// The parameters shared through `share_from` use the owner's gradient too, which this
    /// layer adds to (see `net/shared_grads.rs`) instead of writing one of its own. Set only
    /// for layers that configure no parameter of their own, so every shared parameter comes
    /// through `share_from`.
    pub reuse_grads: bool,
    /// Every parameter is fixed (not trainable), whatever the layer asks.
    pub frozen: bool,
    pub seed: u64,
    pub phase: Phase,
    /// Parameter indices this layer created or uses.
    pub used: Vec<usize>,
    /// Short names of the parameters the layer asked for.
    pub asked: Vec<String>,
    /// `(i, k)` when the layer is part `i` of `k` of a layer split along its outputs: its
    /// parameters are blocks of rows of the whole ones, which the store keeps.
    pub split: Option<(usize, usize)>,
}

impl NetParams<'_> {
    fn create(&mut self, mut spec: ParamSpec) -> Result<Param> {
        spec.trainable &= !self.frozen;
        let Some((i, k)) = self.split else {
            return self.create_whole(spec);
        };
        let part_shape = spec.shape;
        let whole = ParamSpec {
            shape: part_shape.with_dim0(part_shape.dim(0) * k),
            fan_out: spec.fan_out * k,
            ..spec
        };
        let p = self.create_whole(whole)?;
        if let Some(&id) = self.used.last() {
            self.store.entries[id].split = true;
        }
        let n = part_shape.numel();
        let block = |t: &Tensor| -> Result<Tensor> {
            t.reshape([t.numel()])?
                .narrow(i * n, n)?
                .reshape(part_shape)
        };
        Ok(Param {
            value: block(&p.value)?,
            grad: block(&p.grad)?,
            name: p.name,
        })
    }

    fn create_whole(&mut self, spec: ParamSpec) -> Result<Param> {
        let full = format!("{}/{}", self.layer, spec.name);
        self.asked.push(spec.name.to_string());
        let cfg = self.configs.iter().find(|c| c.name == spec.name.as_str());
        let mismatch = |existing: Shape, what: &str| {
            Error::invalid(format!(
                "parameter {full} has shape {} but {what} has shape {existing}",
                spec.shape
            ))
        };
        let whole_layer = self.share_from.map(|l| format!("{l}/{}", spec.name));
        let source = cfg.and_then(|c| c.share_from.clone()).or(whole_layer);
        if let Some(source) = source.as_deref() {
            let Some(id) = self.store.find(source) else {
                let names: Vec<&str> = self.store.entries.iter().map(|e| e.name.as_str()).collect();
                return Err(Error::invalid(format!(
                    "share_from: no parameter {source:?} defined before layer {} (parameters so far: {})",
                    self.layer,
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                )));
            };
            let e = &mut self.store.entries[id];
            if e.shape() != spec.shape {
                return Err(mismatch(e.shape(), source));
            }
            // A test net never computes gradients: it needs no buffer of its own either.
            let reuse = !self.phase.is_train() || self.reuse_grads;
            let grad = match reuse {
                true => e.grads[0].clone(),
                false => Tensor::zeros(self.dev, spec.shape, DType::F32)?,
            };
            if self.phase.is_train() {
                if !reuse {
                    e.grads.push(grad.clone());
                }
                e.users.push(self.layer_index);
            }
            self.store.by_name.insert(full.clone(), id);
            self.used.push(id);
            return Ok(Param {
                name: full.into(),
                value: e.value.clone(),
                grad,
            });
        }
        if let Some(id) = self.store.find(&full) {
            // The test net reuses the train net's parameters.
            let e = &self.store.entries[id];
            if e.shape() != spec.shape {
                return Err(mismatch(e.shape(), "the same parameter in the train net"));
            }
            self.used.push(id);
            return Ok(Param {
                name: full.into(),
                value: e.value.clone(),
                grad: e.grads[0].clone(),
            });
        }
        let value = match self.store.shared.get(&full) {
            Some(v) if spec.trainable && v.shape() == spec.shape => v.clone(),
            Some(v) if spec.trainable => return Err(mismatch(v.shape(), "the shared replica")),
            _ => {
                let init = cfg.and_then(|c| c.init).unwrap_or(spec.init);
                let mut value = Tensor::zeros(self.dev, spec.shape, DType::F32)?;
                init.apply(
                    self.dev,
                    &mut value,
                    spec.fan_in,
                    spec.fan_out,
                    derive_seed(self.seed, &full),
                )?;
                value
            }
        };
        let grad = match self.store.shared_grads.get(&full) {
            Some(g) if self.split.is_some() && g.shape() == spec.shape => g.clone(),
            _ => Tensor::zeros(self.dev, spec.shape, DType::F32)?,
        };
        let id = self.store.entries.len();
        self.store.entries.push(ParamEntry {
            name: full.clone(),
            value: value.clone(),
            grads: vec![grad.clone()],
            users: if self.phase.is_train() {
                vec![self.layer_index]
            } else {
                vec![]
            },
            lr_mult: cfg.map_or(1.0, |c| c.lr_mult),
            wd_mult: cfg.map_or(1.0, |c| c.wd_mult),
            trainable: spec.trainable,
            state: Vec::new(),
            split: false,
        });
        self.store.by_name.insert(full.clone(), id);
        self.used.push(id);
        Ok(Param {
            name: full.into(),
            value,
            grad,
        })
    }

    /// Fails if the job configures a parameter the layer does not have.
    pub fn check_configs_used(&self) -> Result<()> {
        for c in self.configs {
            if !self.asked.contains(&c.name) {
                return Err(Error::invalid(format!(
                    "[[layer.param]] {:?} does not match a parameter of this layer (it has {})",
                    c.name,
                    if self.asked.is_empty() {
                        "none".to_string()
                    } else {
                        self.asked.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }
}

/// The factory of layers the runtime inserts (bridges), which have no parameters.
pub(crate) struct NoParams;

impl ParamFactory for NoParams {
    fn param(&mut self, spec: ParamSpec) -> RResult<Param, Error> {
        RResult::RErr(Error::invalid(format!(
            "this layer has no parameters, but asked for {}",
            spec.name
        )))
    }
}

impl ParamFactory for NetParams<'_> {
    fn param(&mut self, spec: ParamSpec) -> RResult<Param, Error> {
        // Called from layers, which may live in a plugin: a panic must not unwind into them.
        singa_core::catch_panic("the parameter factory", || self.create(spec)).into()
    }
}
