//! A net: the layers of one phase as a DAG in topological order, with every tensor that flows
//! between them allocated once.

use crate::config::{rbm, Algorithm, JobConfig, LayerConfig};
use crate::params::{NetParams, ParamStore};
use crate::partition::bridge::Bridge;
use crate::partition::{
    effective_fields, feature_split, splits_features, Dist, Exchanges, FeatureSplit,
};
use crate::registry::Registry;
use singa_core::abi::ROption;
use singa_core::fields::nearest;
use singa_core::rng::derive_seed;
use singa_core::{
    catch_panic, layer_box, param_factory, DType, DeviceRef, Error, LayerBox, LayerRole, Phase,
    Result, ResultExt, SetupContext, Tensor, TensorSpec,
};
use singa_layers::capability::{row_gradients, sequences};
use singa_layers::operator::Operator;
use std::collections::HashMap;
use std::fmt::Write;

mod shared_grads;

/// A layer in a net, with its tensors.
pub struct NetLayer {
    /// The layer's name.
    pub name: String,
    /// The layer's type.
    pub type_name: String,
    layer: LayerBox,
    /// (producer index, output index) of each input.
    sources: Vec<(usize, usize)>,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    output_specs: Vec<TensorSpec>,
    grad_outputs: Vec<Tensor>,
    grad_inputs: Vec<ROption<Tensor>>,
    /// Outputs read by several layers: the per-consumer gradients summed into `grad_outputs`.
    fanout: Vec<(usize, Vec<Tensor>)>,
    needs_backward: bool,
    /// Indices of the parameters the layer uses.
    pub params: Vec<usize>,
    metric_names: Vec<String>,
    /// The metrics of the last step read one step at a time, and their sum over the steps read
    /// since [`NeuralNet::read_metrics`] was last called.
    metric_step: Vec<f64>,
    metric_sum: Vec<f64>,
}

impl NetLayer {
    /// A bridge layer reading output `source` (of spec `input`) of `layers`, set up on `dev`.
    fn bridge(
        name: String,
        bridge: Bridge,
        dev: &DeviceRef,
        source: (usize, usize),
        input: TensorSpec,
        layers: &[NetLayer],
    ) -> Result<NetLayer> {
        let mut layer = layer_box("bridge", bridge);
        let mut no_params = crate::params::NoParams;
        let ctx = SetupContext {
            layer: name.as_str().into(),
            device: dev,
            inputs: std::slice::from_ref(&input).into(),
            phase: Phase::TRAIN,
            base_dir: "".into(),
            seed: 0,
            partition_id: 0,
            num_partitions: 1,
        };
        let output_specs = layer
            .setup(&ctx, param_factory(&mut no_params))
            .into_result()?
            .into_vec();
        NetLayer::new(
            (name, "bridge".to_string()),
            layer,
            vec![source],
            output_specs,
            dev,
            layers,
        )
    }

    /// A layer set up to read `sources` of `layers` and produce `output_specs`, with its
    /// outputs allocated on `dev`; no parameters or metrics yet, gradients decided later.
    fn new(
        (name, type_name): (String, String),
        layer: LayerBox,
        sources: Vec<(usize, usize)>,
        output_specs: Vec<TensorSpec>,
        dev: &DeviceRef,
        layers: &[NetLayer],
    ) -> Result<NetLayer> {
        let outputs = output_specs
            .iter()
            .map(|s| Tensor::zeros(dev, s.shape, s.dtype))
            .collect::<Result<Vec<_>>>()?;
        let inputs = sources
            .iter()
            .map(|&(p, o)| layers[p].outputs[o].clone())
            .collect();
        Ok(NetLayer {
            name,
            type_name,
            layer,
            sources,
            inputs,
            outputs,
            output_specs,
            grad_outputs: Vec::new(),
            grad_inputs: Vec::new(),
            fanout: Vec::new(),
            needs_backward: false,
            params: Vec::new(),
            metric_names: Vec::new(),
            metric_step: Vec::new(),
            metric_sum: Vec::new(),
        })
    }

    /// The layer's output specs.
    pub fn output_specs(&self) -> &[TensorSpec] {
        &self.output_specs
    }

    /// The names of the metrics the layer reports.
    pub fn metric_names(&self) -> &[String] {
        &self.metric_names
    }

    /// Whether backward runs for this layer.
    pub fn needs_backward(&self) -> bool {
        self.needs_backward
    }

    /// Whether it is a loss layer: one without outputs that runs backward, so that its
    /// backward starts the gradients (the loss scale multiplies what it writes).
    pub fn is_loss(&self) -> bool {
        self.needs_backward && self.outputs.is_empty()
    }
}

/// The net of one phase.
pub struct NeuralNet {
    phase: Phase,
    dev: DeviceRef,
    layers: Vec<NetLayer>,
    /// Steps read by [`NeuralNet::read_step_metrics`] since the metrics were last read.
    metric_steps: u64,
    /// `(from, to)`: after each batch, the outputs of layer `from` (an unrolled cell's last
    /// step) are copied into those of layer `to` (its `recurrent_state`, read by its first
    /// step in the next batch); see [`NeuralNet::carry_state`].
    carries: Vec<(usize, usize)>,
    /// `(visible, hidden)`: the RBM pairs, in order (see [`NeuralNet::rbm_pairs`]).
    rbm_pairs: Vec<(usize, usize)>,
    /// The input layers of sequences that continue between batches, which say when the
    /// carried state starts over ([`NeuralNet::carry_state`]).
    sequence_inputs: Vec<usize>,
    /// What the loss layers' gradients are multiplied by ([`NeuralNet::set_loss_scale`]).
    loss_scale: f32,
}

fn phase_name(p: Phase) -> &'static str {
    if p.contains(Phase::TRAIN) {
        "train"
    } else if p.contains(Phase::VAL) {
        "val"
    } else {
        "test"
    }
}

/// Whether source `src` of `layer` is the back half of an RBM's two-way link: the visible
/// layer reading its hidden layer (checked by [`crate::config::rbm::link_pairs`]). The net
/// sets the visible layer up without it and hands it the hidden layer's `sample` afterwards.
fn is_back_link(registry: &Registry, layer: &LayerConfig, src: &LayerConfig) -> bool {
    rbm::role(registry, layer) == LayerRole::RbmVisible
        && rbm::role(registry, src) == LayerRole::RbmHidden
}

/// Orders the layers so that every layer comes after its sources (Kahn's algorithm, keeping
/// the job file's order among independent layers); an RBM's back link does not count.
fn topological_order(
    registry: &Registry,
    file: &str,
    phase: Phase,
    layers: &[&LayerConfig],
) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(layers.len());
    for l in layers {
        let mut d = Vec::new();
        for r in &l.srclayers {
            let (src, _) = crate::config::split_source(r);
            let Some(&i) = index.get(src) else {
                let hint = nearest(src, &names)
                    .map(|n| format!("; did you mean {n:?}?"))
                    .unwrap_or_default();
                return Err(Error::config(
                    file,
                    format!("layer[{}].srclayers", l.name),
                    format!(
                        "no layer named {src:?} in the {} net{hint}",
                        phase_name(phase)
                    ),
                ));
            };
            if !is_back_link(registry, l, layers[i]) {
                d.push(i);
            }
        }
        deps.push(d);
    }
    let mut order = Vec::with_capacity(layers.len());
    let mut placed = vec![false; layers.len()];
    while order.len() < layers.len() {
        let next = (0..layers.len()).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let stuck: Vec<&str> = (0..layers.len())
                    .filter(|&i| !placed[i])
                    .map(|i| names[i])
                    .collect();
                return Err(Error::config(
                    file,
                    format!("layer[{}].srclayers", stuck[0]),
                    format!(
                        "the layers {} form a cycle; a net must be acyclic",
                        stuck.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(order)
}

/// Which part of the job's net a worker holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// The worker's index among all workers: its input layers read part `id` of `count` of
    /// every batch.
    pub id: u32,
    /// All workers.
    pub count: u32,
    /// The worker's group.
    pub group: u32,
    /// The worker's index in its group: its share of the layers split along the features.
    pub member: u32,
    /// The workers of the group.
    pub members: u32,
}

impl Part {
    /// The whole net, on one worker.
    pub const WHOLE: Part = Part {
        id: 0,
        count: 1,
        group: 0,
        member: 0,
        members: 1,
    };

    /// Worker `member` of group `group`, in `groups` groups of `members` workers.
    pub fn of_worker(group: u32, member: u32, groups: u32, members: u32) -> Part {
        Part {
            id: group * members + member,
            count: groups * members,
            group,
            member,
            members,
        }
    }
}

impl NeuralNet {
    /// Builds the net of `phase` from a validated job: creates and sets up every layer on `dev`,
    /// registering parameters in `store` (the test net reuses the train net's), and allocates
    /// every output and gradient tensor.
    pub fn build(
        job: &JobConfig,
        registry: &Registry,
        dev: &DeviceRef,
        store: &mut ParamStore,
        phase: Phase,
    ) -> Result<NeuralNet> {
        Self::build_part(job, registry, dev, store, phase, Part::WHOLE, None)
    }

    /// Builds the part `part` of the net of a worker group (see [`NeuralNet::build`]). Input
    /// layers read their part of each batch; layers split along the features
    /// (`partition_dim = 1`) compute their share of the outputs on the whole batch, with
    /// bridges (met at `exchanges`, shared by the group's workers) where neighbouring layers
    /// are split differently; see [`crate::partition`].
    pub fn build_part(
        job: &JobConfig,
        registry: &Registry,
        dev: &DeviceRef,
        store: &mut ParamStore,
        phase: Phase,
        part: Part,
        exchanges: Option<&Exchanges>,
    ) -> Result<NeuralNet> {
        let file = job.origin.file.as_str();
        let configs: Vec<&LayerConfig> = job.layers.iter().filter(|l| l.in_phase(phase)).collect();
        if configs.is_empty() {
            return Err(Error::config(
                file,
                "layer",
                format!("no layer belongs to the {} net", phase_name(phase)),
            ));
        }
        for (i, l) in configs.iter().enumerate() {
            if configs[..i].iter().any(|o| o.name == l.name) {
                return Err(Error::config(
                    file,
                    format!("layer[{}].name", l.name),
                    format!(
                        "two layers of the {} net are called {:?}",
                        phase_name(phase),
                        l.name
                    ),
                ));
            }
        }
        let order = topological_order(registry, file, phase, &configs)?;
        let base_dir = job.origin.base_dir.display().to_string();
        let mut layers: Vec<NetLayer> = Vec::with_capacity(order.len());
        let mut position: HashMap<&str, usize> = HashMap::new();
        // (recurrent_state layer, the layer it takes its values from), resolved at the end.
        let mut carried: Vec<(usize, String)> = Vec::new();
        // (rbm_vis layer, the rbm_hid it reads back), resolved at the end.
        let mut back_links: Vec<(usize, &str)> = Vec::new();
        // With features split over the group: how each layer's outputs are held, and the
        // bridges made so far, by (producer, output, wanted holding).
        let partitioned = part.members > 1 && configs.iter().any(|c| splits_features(c));
        let exchanges = match (partitioned, exchanges) {
            (false, _) => None,
            (true, Some(x)) => Some(x),
            (true, None) => {
                return Err(Error::invalid(
                    "a net split over the workers of a group needs their exchanges",
                ))
            }
        };
        let mut dist: Vec<Dist> = Vec::new();
        let mut bridges: HashMap<(usize, usize, Dist), usize> = HashMap::new();
        let grad_roles = shared_grads::roles(&configs, &order, phase, |c| {
            partitioned && splits_features(c)
        });
        for &ci in &order {
            let cfg = configs[ci];
            let split = (partitioned && splits_features(cfg))
                .then(|| feature_split(&cfg.type_name))
                .flatten();
            let want = match split {
                None => Dist::Rows,
                Some(FeatureSplit::Neurons(_)) => Dist::All,
                Some(FeatureSplit::Elementwise) => Dist::Cols,
            };
            let context = || format!("layer {} ({})", cfg.name, cfg.type_name);
            let ty = registry.layer(&cfg.type_name).ok_or_else(|| {
                Error::config(
                    file,
                    format!("layer[{}].type", cfg.name),
                    format!("unknown layer type {:?}", cfg.type_name),
                )
            })?;
            // Resolve the sources to (layer, output) pairs.
            let mut sources = Vec::new();
            let mut input_specs = Vec::new();
            for r in &cfg.srclayers {
                let (src, out) = crate::config::split_source(r);
                if configs
                    .iter()
                    .any(|c| c.name == src && is_back_link(registry, cfg, c))
                {
                    back_links.push((layers.len(), src));
                    continue;
                }
                let p = position[src];
                let specs = &layers[p].output_specs;
                let o = match out {
                    None if specs.is_empty() => {
                        return Err(Error::config(
                            file,
                            format!("layer[{}].srclayers", cfg.name),
                            format!("layer {src:?} has no outputs to read"),
                        ));
                    }
                    None => 0,
                    Some(o) => specs.iter().position(|s| s.name == o).ok_or_else(|| {
                        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                        Error::config(
                            file,
                            format!("layer[{}].srclayers", cfg.name),
                            format!(
                                "layer {src:?} has no output {o:?} (its outputs: {})",
                                names.join(", ")
                            ),
                        )
                    })?,
                };
                let (p, o) = match exchanges {
                    Some(x) if dist[p] != want => {
                        let key = (p, o, want);
                        let b = match bridges.get(&key) {
                            Some(&b) => b,
                            None => {
                                let name = format!("{r}~{}", want.label());
                                let link = x.link(part.group, part.member, part.members)?;
                                let bridge = Bridge::new(
                                    &name,
                                    bridges.len() as u32,
                                    link,
                                    (part.group, part.member, part.members),
                                    x.timeout(),
                                    dist[p],
                                    want,
                                );
                                let spec = layers[p].output_specs[o].clone();
                                let l = NetLayer::bridge(name, bridge, dev, (p, o), spec, &layers)
                                    .map_err(|e| {
                                        Error::config(
                                            file,
                                            format!("layer[{}].partition_dim", cfg.name),
                                            e,
                                        )
                                    })?;
                                layers.push(l);
                                dist.push(want);
                                bridges.insert(key, layers.len() - 1);
                                layers.len() - 1
                            }
                        };
                        (b, 0)
                    }
                    _ => (p, o),
                };
                sources.push((p, o));
                input_specs.push(layers[p].output_specs[o].clone());
            }
            // The constructor checks the values of the fields (ranges, combinations).
            let fields = effective_fields(cfg, part.members as usize);
            let mut layer = (ty.create)(&fields)
                .into_result()
                .map_err(|e| Error::config(file, format!("layer[{}]", cfg.name), e))?;
            // A family of layers sharing their parameters writes one gradient of each when
            // their type can add to it (all members are of one type: all can, or none).
            let grad_role = grad_roles.get(cfg.name.as_str()).and_then(|&role| {
                let layer = singa_layers::capability::accumulate_gradients(&mut layer)?;
                layer.accumulate_param_grads(role.accumulates());
                Some(role)
            });
            let mut factory = NetParams {
                store: &mut *store,
                dev,
                layer: &cfg.name,
                layer_index: layers.len(),
                configs: &cfg.params,
                share_from: cfg.share_params_from.as_deref(),
                reuse_grads: grad_role.is_some() && cfg.share_params_from.is_some(),
                // Contrastive divergence trains the RBMs only: layers below them are fixed
                // features (pretrained layers a deeper RBM reads through).
                frozen: job.algorithm == Algorithm::Cd && !rbm::is_rbm(registry, cfg),
                seed: job.seed,
                phase,
                used: Vec::new(),
                asked: Vec::new(),
                split: match split {
                    Some(FeatureSplit::Neurons(_)) => {
                        Some((part.member as usize, part.members as usize))
                    }
                    _ => None,
                },
            };
            let ctx = SetupContext {
                layer: cfg.name.as_str().into(),
                device: dev,
                inputs: input_specs.as_slice().into(),
                phase,
                base_dir: base_dir.as_str().into(),
                seed: derive_seed(job.seed, &cfg.name),
                partition_id: part.id,
                num_partitions: part.count,
            };
            let output_specs = layer
                .setup(&ctx, param_factory(&mut factory))
                .into_result()
                .context(context)?
                .into_vec();
            factory.check_configs_used().context(context)?;
            let params = factory.used;
            let metric_names: Vec<String> = layer
                .metric_names()
                .into_result()
                .context(context)?
                .into_iter()
                .map(|s| s.into_string())
                .collect();
            position.insert(cfg.name.as_str(), layers.len());
            dist.push(if split.is_some() {
                Dist::Cols
            } else {
                Dist::Rows
            });
            let mut l = NetLayer::new(
                (cfg.name.clone(), cfg.type_name.clone()),
                layer,
                sources,
                output_specs,
                dev,
                &layers,
            )?;
            l.params = params;
            l.metric_step = vec![0.0; metric_names.len()];
            l.metric_sum = vec![0.0; metric_names.len()];
            l.metric_names = metric_names;
            if cfg.type_name == "recurrent_state" {
                carried.push((layers.len(), fields.str("from")?.to_string()));
            }
            layers.push(l);
        }
        let mut carries = Vec::new();
        for (to, from) in carried {
            let Some(&from) = position.get(from.as_str()) else {
                return Err(Error::config(
                    file,
                    format!("layer[{}].from", layers[to].name),
                    format!("no layer {from:?} in the {} net", phase_name(phase)),
                ));
            };
            let specs = |i: usize| -> Vec<TensorSpec> { layers[i].output_specs.clone() };
            if specs(from) != specs(to) {
                return Err(Error::config(
                    file,
                    format!("layer[{}].from", layers[to].name),
                    format!(
                        "{} has other outputs than the state it should carry",
                        layers[from].name
                    ),
                ));
            }
            carries.push((from, to));
        }
        let mut rbm_pairs = Vec::new();
        for (vis, hid) in back_links {
            let hid = position[hid];
            let sample = layers[hid]
                .output_specs
                .iter()
                .position(|s| s.name == "sample")
                .ok_or_else(|| {
                    Error::config(
                        file,
                        format!("layer[{}].srclayers", layers[vis].name),
                        format!("{} has no output \"sample\" to read back", layers[hid].name),
                    )
                })?;
            let back = layers[hid].outputs[sample].clone();
            layers[vis].inputs.push(back);
            rbm_pairs.push((vis, hid));
        }
        let sequence_inputs = (0..layers.len())
            .filter(|&i| sequences(&layers[i].layer).is_some())
            .collect();
        let mut net = NeuralNet {
            phase,
            dev: dev.clone(),
            layers,
            metric_steps: 0,
            loss_scale: 1.0,
            carries,
            rbm_pairs,
            sequence_inputs,
        };
        if phase.is_train() {
            net.allocate_gradients(store)?;
            net.check_has_loss(file)?;
        }
        Ok(net)
    }

    /// Decides which layers run backward and gives every gradient a buffer. A layer's input
    /// needs a gradient when its producer has trainable parameters upstream; where an output
    /// feeds several layers, each gets its own buffer and they are summed before the producer's
    /// backward.
    fn allocate_gradients(&mut self, store: &ParamStore) -> Result<()> {
        let n = self.layers.len();
        let mut requires = vec![false; n];
        for i in 0..n {
            let l = &self.layers[i];
            let trainable = l.params.iter().any(|&p| store.entries()[p].trainable);
            requires[i] = trainable || l.sources.iter().any(|&(p, _)| requires[p]);
            self.layers[i].needs_backward = requires[i];
        }
        // consumers[(producer, output)] = (consumer, input slot) for inputs that need gradients.
        let mut consumers: HashMap<(usize, usize), Vec<(usize, usize)>> = HashMap::new();
        for (c, l) in self.layers.iter().enumerate() {
            for (slot, &(p, o)) in l.sources.iter().enumerate() {
                if requires[p] && self.layers[p].output_specs[o].dtype == DType::F32 {
                    consumers.entry((p, o)).or_default().push((c, slot));
                }
            }
        }
        for l in &mut self.layers {
            l.grad_inputs = vec![ROption::RNone; l.sources.len()];
        }
        for p in 0..n {
            for o in 0..self.layers[p].outputs.len() {
                let spec = self.layers[p].output_specs[o].clone();
                let grad = Tensor::zeros(&self.dev, spec.shape, DType::F32)?;
                let users = consumers.get(&(p, o)).cloned().unwrap_or_default();
                if users.len() == 1 {
                    let (c, slot) = users[0];
                    self.layers[c].grad_inputs[slot] = ROption::RSome(grad.clone());
                } else if users.len() > 1 {
                    let mut parts = Vec::new();
                    for (c, slot) in users {
                        let g = Tensor::zeros(&self.dev, spec.shape, DType::F32)?;
                        self.layers[c].grad_inputs[slot] = ROption::RSome(g.clone());
                        parts.push(g);
                    }
                    self.layers[p].fanout.push((o, parts));
                }
                self.layers[p].grad_outputs.push(grad);
            }
        }
        Ok(())
    }

    /// Refuses a train net whose trainable parameters no loss reaches: a loss layer (see
    /// [`NetLayer::is_loss`]) starts every gradient, and without one training would change
    /// nothing while it seemed to run.
    fn check_has_loss(&self, file: &str) -> Result<()> {
        // An RBM learns from the difference of its phases, not from a loss.
        let trains = self.rbm_pairs.is_empty() && self.layers.iter().any(|l| l.needs_backward);
        let has_loss = self.layers.iter().any(NetLayer::is_loss);
        if trains && !has_loss {
            let sinks: Vec<&str> = self
                .layers
                .iter()
                .filter(|l| l.outputs.is_empty())
                .map(|l| l.name.as_str())
                .collect();
            let found = match sinks.as_slice() {
                [] => "no layer of it is one".to_string(),
                s => format!("{} do not depend on a trainable parameter", s.join(", ")),
            };
            return Err(Error::config(
                file,
                "layer",
                format!(
                    "the train net has no loss layer for its parameters to learn from ({found}); add one, e.g. softmax_loss or euclidean_loss, reading the last layer and the labels"
                ),
            ));
        }
        Ok(())
    }

    /// The phase this net was built for.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The device it runs on.
    pub fn device(&self) -> &DeviceRef {
        &self.dev
    }

    /// The layers in topological order.
    pub fn layers(&self) -> &[NetLayer] {
        &self.layers
    }

    /// The outputs of layer `i`, as its last forward pass left them.
    pub fn outputs(&self, i: usize) -> &[Tensor] {
        &self.layers[i].outputs
    }

    /// What layer `i` computes in testing, if it is a built-in layer (a plugin's is unknown).
    pub fn operator(&self, i: usize) -> Option<Operator> {
        singa_layers::capability::operator(&self.layers[i].layer)
    }

    /// The (layer, output) pairs layer `i` reads.
    pub fn sources(&self, i: usize) -> &[(usize, usize)] {
        &self.layers[i].sources
    }

    /// The specs of the inputs of layer `i` (the outputs of its sources).
    pub fn input_specs(&self, i: usize) -> Vec<TensorSpec> {
        self.layers[i]
            .sources
            .iter()
            .map(|&(p, o)| self.layers[p].output_specs[o].clone())
            .collect()
    }

    /// Samples per step: the batch dimension of the first input layer's first output.
    pub fn batch_size(&self) -> usize {
        self.layers
            .iter()
            .find(|l| l.sources.is_empty() && !l.output_specs.is_empty())
            .map(|l| l.output_specs[0].shape.as_matrix().0)
            .unwrap_or(1)
    }

    /// Runs layer `i` forward (SINGA's `ComputeFeature`).
    pub fn forward_layer(&mut self, i: usize, phase: Phase) -> Result<()> {
        let l = &mut self.layers[i];
        l.layer
            .forward(
                phase,
                l.inputs.as_slice().into(),
                l.outputs.as_mut_slice().into(),
            )
            .into_result()
            .map_err(|e| e.context(format!("layer {} ({}) forward", l.name, l.type_name)))
    }

    /// Multiplies the gradients the loss layers start the backward pass with by `scale` (loss
    /// scaling, see [`crate::config::LossScaling`]): every parameter gradient of the pass is
    /// then `scale` times the true one.
    pub fn set_loss_scale(&mut self, scale: f32) {
        self.loss_scale = scale;
    }

    /// Runs layer `i` backward (SINGA's `ComputeGradient`), after summing the gradients of an
    /// output read by several layers; a loss layer's gradients are scaled by the loss scale.
    pub fn backward_layer(&mut self, i: usize, phase: Phase) -> Result<()> {
        let dev = &self.dev;
        let l = &mut self.layers[i];
        if !l.needs_backward {
            return Ok(());
        }
        for (o, parts) in &l.fanout {
            let total = &mut l.grad_outputs[*o];
            dev.copy(&parts[0], total)?;
            for p in &parts[1..] {
                dev.axpby(1.0, p, 1.0, total)?;
            }
        }
        l.layer
            .backward(
                phase,
                l.inputs.as_slice().into(),
                l.outputs.as_slice().into(),
                l.grad_outputs.as_slice().into(),
                l.grad_inputs.as_mut_slice().into(),
            )
            .into_result()
            .map_err(|e| e.context(format!("layer {} ({}) backward", l.name, l.type_name)))?;
        if self.loss_scale != 1.0 && l.is_loss() {
            for g in l.grad_inputs.iter_mut() {
                if let ROption::RSome(g) = g {
                    let x = g.clone();
                    dev.affine(&x, g, self.loss_scale, 0.0)?;
                }
            }
        }
        Ok(())
    }

    /// Asks layer `i` to leave the gradient of its `position`-th parameter to
    /// [`NeuralNet::param_grad_rows`], if its type has that capability (see
    /// [`singa_layers::capability::RowGradients`]); whether it agreed.
    pub fn share_param_grad(&mut self, i: usize, position: usize) -> Result<bool> {
        let l = &mut self.layers[i];
        let (name, type_name) = (&l.name, &l.type_name);
        match row_gradients(&mut l.layer) {
            Some(rows) => catch_panic("share_param_grad", || rows.share_param_grad(position)),
            None => Ok(false),
        }
        .map_err(|e| e.context(format!("layer {name} ({type_name})")))
    }

    /// Layer `i`'s inputs and output gradients: the batch its parameter gradients come from.
    /// They are the same tensors every step.
    pub fn batch_of(&self, i: usize) -> (Vec<Tensor>, Vec<Tensor>) {
        let l = &self.layers[i];
        (l.inputs.clone(), l.grad_outputs.clone())
    }

    /// Rows from `start` of the gradient of layer `i`'s `position`-th parameter over `batch`
    /// (inputs and output gradients; `None`: the layer's own), written to `grad` or added to
    /// it (see [`singa_layers::capability::RowGradients`]).
    pub fn param_grad_rows(
        &mut self,
        i: usize,
        position: usize,
        start: usize,
        batch: Option<(&[Tensor], &[Tensor])>,
        accumulate: bool,
        grad: &mut Tensor,
    ) -> Result<()> {
        let l = &mut self.layers[i];
        let (inputs, grad_outputs) = batch.unwrap_or((&l.inputs, &l.grad_outputs));
        let (name, type_name) = (&l.name, &l.type_name);
        // Called every step: nothing here allocates unless it fails.
        match row_gradients(&mut l.layer) {
            Some(rows) => catch_panic("param_grad_rows", || {
                rows.param_grad_rows(position, start, inputs, grad_outputs, accumulate, grad)
            }),
            None => Err(Error::invalid(
                "this layer does not compute blocks of rows of its parameter gradients",
            )),
        }
        .map_err(|e| e.context(format!("layer {name} ({type_name}) gradient rows")))
    }

    /// Every layer forward, in order.
    ///
    /// Outside training, the state of unrolled cells is carried to the next batch at the end
    /// ([`NeuralNet::carry_state`]); in training the backward pass still reads it, so the
    /// algorithm carries it after the backward pass.
    pub fn forward(&mut self, phase: Phase) -> Result<()> {
        (0..self.layers.len()).try_for_each(|i| self.forward_layer(i, phase))?;
        if !phase.is_train() {
            self.carry_state()?;
        }
        Ok(())
    }

    /// `(visible, hidden)` layer indices of the net's RBMs (the two-way links of contrastive
    /// divergence), in order.
    pub fn rbm_pairs(&self) -> &[(usize, usize)] {
        &self.rbm_pairs
    }

    /// Copies the last step of every unrolled cell into the state its first step reads in the
    /// next batch (nothing for a net without recurrent cells); zeroes it instead when the
    /// next batch starts the text over (a new epoch: the streams' ends do not lead to their
    /// beginnings).
    pub fn carry_state(&mut self) -> Result<()> {
        if self.carries.is_empty() {
            return Ok(());
        }
        let restart = self
            .sequence_inputs
            .iter()
            .any(|&i| sequences(&self.layers[i].layer).is_some_and(|s| s.next_batch_restarts()));
        for &(from, to) in &self.carries {
            for k in 0..self.layers[to].outputs.len() {
                if restart {
                    self.dev.fill(&mut self.layers[to].outputs[k], 0.0)?;
                } else {
                    let src = self.layers[from].outputs[k].clone();
                    self.dev.copy(&src, &mut self.layers[to].outputs[k])?;
                }
            }
        }
        Ok(())
    }

    /// Every layer backward, in reverse order; `after(i)` runs once layer `i` is done (to send
    /// or apply the gradients it produced while the rest of the pass goes on).
    pub fn backward(
        &mut self,
        phase: Phase,
        after: &mut dyn FnMut(&mut NeuralNet, usize) -> Result<()>,
    ) -> Result<()> {
        for i in (0..self.layers.len()).rev() {
            self.backward_layer(i, phase)?;
            after(self, i)?;
        }
        Ok(())
    }

    /// Reads the metrics of the step just run forward (a loss layer's loss and accuracy) into
    /// the net's sums, and stops the step if one is not a finite number: before any gradient
    /// comes of it, so no parameter takes a step from a loss that diverged. Training calls it
    /// once per step; [`NeuralNet::read_metrics`] then averages the steps read. It reads a few
    /// numbers and allocates nothing unless the loss diverged.
    pub fn read_step_metrics(&mut self) -> Result<()> {
        let mut diverged = None;
        for (i, l) in self.layers.iter_mut().enumerate() {
            if l.metric_names.is_empty() {
                continue;
            }
            l.layer
                .read_metrics(l.metric_step.as_mut_slice().into())
                .into_result()
                .map_err(|e| e.context(format!("layer {} metrics", l.name)))?;
            if let Some(k) = l.metric_step.iter().position(|v| !v.is_finite()) {
                diverged.get_or_insert((i, k));
            }
            for (sum, v) in l.metric_sum.iter_mut().zip(&l.metric_step) {
                *sum += v;
            }
        }
        self.metric_steps += 1;
        match diverged {
            None => Ok(()),
            Some((i, k)) => Err(self.diverged(i, k)),
        }
    }

    /// Says that metric `k` of layer `i` is not finite, and which layer's output first is not.
    fn diverged(&self, i: usize, k: usize) -> Error {
        let l = &self.layers[i];
        let mut message = format!(
            "layer {} ({}) reports {} = {}",
            l.name, l.type_name, l.metric_names[k], l.metric_step[k]
        );
        let first = self.layers.iter().find_map(|l| {
            l.outputs.iter().enumerate().find_map(|(o, t)| {
                match crate::finite::first_nonfinite(t) {
                    Ok(Some((at, v))) => Some(format!(
                        "the first layer whose output is not finite is {} ({}): {v} at element {at} of output {o}",
                        l.name, l.type_name
                    )),
                    _ => None,
                }
            })
        });
        message.push_str("; ");
        match first {
            Some(first) => message.push_str(&first),
            None => {
                // Finite scores too large for the loss: say how large.
                let largest = l
                    .inputs
                    .iter()
                    .filter(|t| t.dtype() == DType::F32)
                    .filter_map(|t| t.to_vec::<f32>().ok())
                    .flatten()
                    .fold(0.0f32, |m, v| m.max(v.abs()));
                let _ = write!(
                    message,
                    "every layer's output is finite, and the inputs of {} reach {largest:e} in magnitude",
                    l.name
                );
            }
        }
        Error::diverged(message)
    }

    /// The metrics averaged since the last call, from every layer that reports some (names are
    /// prefixed with the layer's name when several layers report metrics): over the steps
    /// read one at a time by [`NeuralNet::read_step_metrics`], if any, else as the layers
    /// averaged them (a test pass).
    pub fn read_metrics(&mut self) -> Result<Vec<(String, f64)>> {
        let reporting = self
            .layers
            .iter()
            .filter(|l| !l.metric_names.is_empty())
            .count();
        let steps = std::mem::take(&mut self.metric_steps);
        let mut out = Vec::new();
        for l in &mut self.layers {
            if l.metric_names.is_empty() {
                continue;
            }
            let mut values = vec![0.0; l.metric_names.len()];
            l.layer
                .read_metrics(values.as_mut_slice().into())
                .into_result()
                .map_err(|e| e.context(format!("layer {} metrics", l.name)))?;
            if steps > 0 {
                for (v, sum) in values.iter_mut().zip(&mut l.metric_sum) {
                    *v = std::mem::take(sum) / steps as f64;
                }
            }
            for (name, v) in l.metric_names.iter().zip(values) {
                let key = if reporting > 1 {
                    format!("{}/{name}", l.name)
                } else {
                    name.clone()
                };
                out.push((key, v));
            }
        }
        Ok(out)
    }

    /// The non-parameter state of every layer that has some (data positions, random streams).
    pub fn layer_states(&self) -> Result<Vec<(String, Vec<u64>)>> {
        let mut out = Vec::new();
        for l in &self.layers {
            let s = l
                .layer
                .state()
                .into_result()
                .map_err(|e| e.context(format!("layer {} state", l.name)))?;
            if !s.is_empty() {
                out.push((l.name.clone(), s.into_vec()));
            }
        }
        Ok(out)
    }

    /// Restores the state of the layer called `name`.
    pub fn restore_layer_state(&mut self, name: &str, state: &[u64]) -> Result<()> {
        let l = self
            .layers
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| Error::invalid(format!("no layer {name:?} in the net")))?;
        l.layer
            .restore_state(state.into())
            .into_result()
            .map_err(|e| e.context(format!("layer {name} state")))
    }

    /// A readable listing: each layer with its type, sources, output shapes and parameters,
    /// in aligned columns.
    pub fn describe(&self, store: &ParamStore) -> String {
        let rows: Vec<[String; 5]> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut srcs: Vec<String> = l
                    .sources
                    .iter()
                    .map(|&(p, o)| {
                        let src = &self.layers[p];
                        // Numbered outputs (split, slice) always show their number.
                        let numbered = src.output_specs[o].name.parse::<usize>().is_ok();
                        if o == 0 && !numbered {
                            src.name.clone()
                        } else {
                            format!("{}:{}", src.name, src.output_specs[o].name)
                        }
                    })
                    .collect();
                if let Some(&(_, hid)) = self.rbm_pairs.iter().find(|(v, _)| *v == i) {
                    srcs.push(format!("{}:sample (back)", self.layers[hid].name));
                }
                let outs = repeats(
                    l.output_specs
                        .iter()
                        .map(|o| format!("{} {}", o.shape, o.dtype)),
                );
                // Parameters another layer created (an unrolled cell's steps) are named by it.
                let owners: Vec<&str> = l
                    .params
                    .iter()
                    .map(|&p| {
                        store.entries()[p]
                            .name
                            .rsplit_once('/')
                            .map_or("", |(o, _)| o)
                    })
                    .collect();
                let params: Vec<String> = match owners.first() {
                    Some(&owner) if owner != l.name && owners.iter().all(|&o| o == owner) => {
                        vec![format!("{} parameters of {owner}", owners.len())]
                    }
                    _ => l
                        .params
                        .iter()
                        .map(|&p| {
                            let e = &store.entries()[p];
                            let (owner, short) = e.name.rsplit_once('/').unwrap_or(("", &e.name));
                            if owner == l.name {
                                format!("{short} {}", e.shape())
                            } else {
                                format!("{short} = {}", e.name)
                            }
                        })
                        .collect(),
                };
                let srcs = if srcs.len() > 4 {
                    let n = srcs.len();
                    vec![format!("{}, {} … {} ({n})", srcs[0], srcs[1], srcs[n - 1])]
                } else {
                    srcs
                };
                let arrow = |sign: &str, items: Vec<String>| {
                    if items.is_empty() {
                        String::new()
                    } else {
                        format!("{sign} {}", items.join(", "))
                    }
                };
                [
                    l.name.clone(),
                    l.type_name.to_string(),
                    arrow("<-", srcs),
                    arrow("->", outs),
                    if params.is_empty() {
                        String::new()
                    } else {
                        format!("[{}]", params.join(", "))
                    },
                ]
            })
            .collect();
        let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
        let widths = [width(0), width(1), width(2), width(3)];
        let mut s = String::new();
        for row in &rows {
            let mut line = String::new();
            for (cell, w) in row.iter().zip(widths.iter().chain([&0])) {
                let _ = write!(line, "  {cell:<w$}");
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }
}

/// Runs of equal items written once with their count (`[32, 1, 64] f32 × 50`).
fn repeats(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for item in items {
        match out.last_mut() {
            Some((last, n)) if *last == item => *n += 1,
            _ => out.push((item, 1)),
        }
    }
    out.into_iter()
        .map(|(item, n)| {
            if n == 1 {
                item
            } else {
                format!("{item} × {n}")
            }
        })
        .collect()
}
