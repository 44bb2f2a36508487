//! Building a cluster's workers and servers: their nets, the copies of the values each group
//! and server group works on, and the servers' slices.

use super::server::{ServerCore, ServerSlice};
use super::slices::Slice;
use super::worker_addr;
use crate::config::{DeviceConfig, JobConfig};
use crate::net::{NeuralNet, Part};
use crate::params::ParamStore;
use crate::partition::Exchanges;
use crate::registry::Registry;
use singa_core::{Addr, DeviceRef, Error, Phase, Result, Tensor};
use singa_layers::schedule::LrSchedule;

/// The values of the trainable parameters of `store` (`None` for the others).
pub(super) fn trainable_values(store: &ParamStore) -> Values {
    store
        .entries()
        .iter()
        .map(|e| e.trainable.then(|| e.value.clone()))
        .collect()
}

/// A worker built but not started: its address, net and parameters.
pub(super) type BuiltWorker = (Addr, NeuralNet, ParamStore);

/// A copy of the values of every parameter (`None` for those no server updates).
pub(super) type Values = Vec<Option<Tensor>>;

/// An updater's state tensors for every parameter.
pub(super) type States = Vec<Vec<Tensor>>;

/// The nets of every worker but worker 0 (whose parameters are `store`), each reading its part
/// of every batch, and each group's values. A group's first worker holds the group's copy of
/// the values (group 0's are `store`'s); the other workers of the group share it, unless the
/// job's processes share no memory, when every worker has a copy of its own.
pub(super) fn worker_nets(
    job: &JobConfig,
    registry: &Registry,
    store: &ParamStore,
    device: &DeviceConfig,
    exchanges: &Exchanges,
) -> Result<(Vec<BuiltWorker>, Vec<Values>)> {
    let (ngroups, nworkers) = (job.cluster.nworker_groups, job.cluster.nworkers_per_group);
    let share = !job.cluster.separate_memory();
    let mut nets: Vec<BuiltWorker> = Vec::new();
    let mut values = vec![trainable_values(store)];
    for g in 0..ngroups {
        // The index in `nets` of the group's first worker (group 0's is `store`'s owner).
        let mut leader: Option<usize> = None;
        for i in 0..nworkers {
            if g == 0 && i == 0 {
                continue;
            }
            let dev = crate::device::create(device, None)?;
            let mut own = match (leader, g) {
                _ if !share => ParamStore::new(),
                (Some(l), _) => ParamStore::sharing_values_of(&nets[l].2),
                (None, 0) => ParamStore::sharing_values_of(store),
                (None, _) => ParamStore::new(),
            };
            let part = Part::of_worker(g as u32, i as u32, ngroups as u32, nworkers as u32);
            let addr = worker_addr(g as u32, i as u32);
            let net = NeuralNet::build_part(
                job,
                registry,
                &dev,
                &mut own,
                Phase::TRAIN,
                part,
                Some(exchanges),
            )
            .map_err(|e| e.context(format!("{addr}")))?;
            if i == 0 {
                values.push(trainable_values(&own));
                leader = Some(nets.len());
            }
            nets.push((addr, net, own));
        }
    }
    Ok((nets, values))
}

/// The values and updater state of each server group. A server group that serves one worker
/// group updates that group's values in place; one that serves several keeps a master copy
/// and refreshes a group's copy after each of its updates (Downpour). With `separate` memory
/// the servers make values of their own ([`server_cores`]), so there are no masters here
/// (`None` for every parameter). Server group 0's state is worker 0's (what checkpoints save);
/// the others have their own.
pub(super) fn masters_and_states(
    store: &ParamStore,
    served: &[Vec<usize>],
    values: &[Values],
    dev: &DeviceRef,
    separate: bool,
) -> Result<(Vec<Values>, Vec<States>)> {
    let copy_of = |values: &[Option<Tensor>]| -> Result<Values> {
        values
            .iter()
            .map(|v| {
                v.as_ref()
                    .filter(|_| !separate)
                    .map(|v| {
                        let mut m = Tensor::zeros(dev, v.shape(), v.dtype())?;
                        dev.copy(v, &mut m)?;
                        Ok(m)
                    })
                    .transpose()
            })
            .collect()
    };
    let masters = served
        .iter()
        .map(|gs| match gs.as_slice() {
            [g] if !separate => Ok(values[*g].clone()),
            _ => copy_of(&values[0]),
        })
        .collect::<Result<_>>()?;
    let states = (0..served.len())
        .map(|h| {
            store
                .entries()
                .iter()
                .map(|e| match h {
                    0 => Ok(e.state.clone()),
                    _ => e
                        .state
                        .iter()
                        .map(|s| Tensor::zeros(dev, s.shape(), s.dtype()))
                        .collect(),
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    Ok((masters, states))
}

/// What the server groups hold, by server group (`served`, `masters`, `states`) and by worker
/// group (`replicas`: each group's values; `groups`: its workers). With `separate` memory a
/// server sends its own values to the workers, which copy them.
pub(super) struct Held<'a> {
    /// Whether the job's processes share no memory (`cluster.nprocs > 1`).
    pub separate: bool,
    pub served: &'a [Vec<usize>],
    pub masters: &'a [Values],
    pub states: &'a [States],
    pub replicas: &'a [Values],
    pub groups: &'a [Vec<Addr>],
}

/// The servers of every server group, each over its slices of its group's values and state
/// (`Option`s, so that workers can take the servers that run beside them).
pub(super) fn server_cores(
    job: &JobConfig,
    registry: &Registry,
    schedule: &LrSchedule,
    store: &ParamStore,
    slices: &[Vec<Slice>],
    held: Held<'_>,
) -> Result<Vec<Vec<Option<ServerCore>>>> {
    let ut = registry
        .updater(&job.updater.type_name)
        .ok_or_else(|| Error::invalid(format!("no updater type {}", job.updater.type_name)))?;
    let one_thread = DeviceConfig {
        threads: Some(1),
        ..job.device.clone()
    };
    let mut cores = Vec::with_capacity(held.served.len());
    for (h, gs) in held.served.iter().enumerate() {
        let mut group_cores = Vec::new();
        for s in 0..job.cluster.nservers_per_group {
            let core_dev = crate::device::create(&one_thread, None)?;
            let mut mine = Vec::new();
            for sl in slices.iter().flatten().filter(|sl| sl.server == s) {
                let e = &store.entries()[sl.param];
                let n = e.value.numel();
                let view = |t: &Tensor| t.reshape([n])?.narrow(sl.offset, sl.len);
                let of = |t: &Option<Tensor>| -> Result<Tensor> {
                    view(t.as_ref().expect("trainable parameters have values"))
                };
                // With separate memory a server's values are its own, zero until a `Put`.
                let value = match held.separate {
                    true => Tensor::zeros(&core_dev, [sl.len], e.value.dtype())?,
                    false => of(&held.masters[h][sl.param])?,
                };
                mine.push(ServerSlice {
                    key: (sl.param as u32, sl.index),
                    value: value.clone(),
                    state: held.states[h][sl.param]
                        .iter()
                        .map(view)
                        .collect::<Result<_>>()?,
                    lr_mult: e.lr_mult,
                    wd_mult: e.wd_mult,
                    replicas: match (held.separate, gs.len()) {
                        (false, _) => gs
                            .iter()
                            .map(|&g| of(&held.replicas[g][sl.param]))
                            .collect::<Result<_>>()?,
                        // What a group reads while the server updates for another: a copy.
                        (true, n) if n > 1 => (0..n)
                            .map(|_| Tensor::zeros(&core_dev, [sl.len], e.value.dtype()))
                            .collect::<Result<_>>()?,
                        (true, _) => vec![value],
                    },
                    sum: match held.separate && e.split && job.cluster.nworkers_per_group > 1 {
                        true => Some(Tensor::zeros(&core_dev, [sl.len], e.value.dtype())?),
                        false => None,
                    },
                });
            }
            group_cores.push(Some(ServerCore::new(
                core_dev,
                (ut.create)(&job.updater.fields).into_result()?,
                schedule.clone(),
                job.updater.weight_decay,
                mine,
                gs.iter().map(|&g| held.groups[g].clone()).collect(),
            )));
        }
        cores.push(group_cores);
    }
    Ok(cores)
}

/// A parameter whose gradient the workers of a group compute together (data parallelism in
/// one process): each worker computes a block of rows over every worker's batch, into one
/// gradient, the group's first worker's. The servers find the sum made, and no worker holds a
/// whole gradient of its own.
pub(crate) struct SharedGrad {
    /// The parameter (its index in the store).
    pub param: usize,
    /// The layer that uses it.
    layer: usize,
    /// The parameter's position among the layer's.
    position: usize,
    /// The first of this worker's rows.
    start: usize,
    /// This worker's rows of the group's gradient.
    rows: Tensor,
    /// The group's whole gradient, which the servers read.
    pub whole: Tensor,
    /// This worker's index in its group.
    member: usize,
    /// The inputs and output gradients of the layer on each worker of the group, in order
    /// (`None` for this one).
    batches: Vec<Option<(Vec<Tensor>, Vec<Tensor>)>>,
}

impl SharedGrad {
    /// Whether this worker adds its own batch's part to its rows first, as soon as its
    /// layer's backward is done. The parts are added in the order of the workers, as a
    /// server sums whole gradients; the first two can come in either order, since float
    /// addition commutes. The values then match those of workers in processes apart to the
    /// bit when each part is one block of the product's depth (at most 256 samples per
    /// worker, on a device of one thread); otherwise they differ by rounding.
    fn own_part_first(&self) -> bool {
        self.member <= 1
    }

    /// Right after the layer's backward on this worker: writes this worker's own part into
    /// its rows, if that part comes first.
    pub fn after_own_backward(&mut self, net: &mut NeuralNet) -> Result<()> {
        if !self.own_part_first() {
            return Ok(());
        }
        net.param_grad_rows(
            self.layer,
            self.position,
            self.start,
            None,
            false,
            &mut self.rows,
        )
    }

    /// Once every worker's backward pass is done: adds the other parts to this worker's rows
    /// (all of them, in the workers' order, when its own part did not come first).
    pub fn after_group_backward(&mut self, net: &mut NeuralNet) -> Result<()> {
        let mut written = self.own_part_first();
        for batch in &self.batches {
            if batch.is_none() && self.own_part_first() {
                continue;
            }
            let batch = batch.as_ref().map(|(x, dy)| (x.as_slice(), dy.as_slice()));
            net.param_grad_rows(
                self.layer,
                self.position,
                self.start,
                batch,
                written,
                &mut self.rows,
            )?;
            written = true;
        }
        Ok(())
    }
}

/// The most workers of a group that share gradients: each writes its rows of one gradient and
/// reads the others' batches at once, and the tensor access checker tracks a bounded number of
/// regions of an allocation in use at the same moment (with room to spare).
pub(super) const MAX_SHARING_WORKERS: usize = singa_core::tensor::MAX_REGIONS / 2;

/// The worker groups' shared gradients (`[group][member]`), given each group's workers in
/// order (nets and parameter stores, the first holding the group's values). A parameter is
/// shared when its layer agrees (a layer implementing `Layer::param_grad_rows`), it is
/// trainable, used by that layer alone, and not already split over the workers. Groups of one
/// worker share nothing, nor do groups of more than [`MAX_SHARING_WORKERS`].
pub(super) fn shared_grads(
    groups: &mut [Vec<(&mut NeuralNet, &ParamStore)>],
) -> Result<Vec<Vec<Vec<SharedGrad>>>> {
    let mut all = Vec::with_capacity(groups.len());
    for group in groups.iter_mut() {
        let k = group.len();
        let mut per: Vec<Vec<SharedGrad>> = (0..k).map(|_| Vec::new()).collect();
        if !(2..=MAX_SHARING_WORKERS).contains(&k) {
            all.push(per);
            continue;
        }
        for l in 0..group[0].0.layers().len() {
            let layer = &group[0].0.layers()[l];
            if !layer.needs_backward() {
                continue;
            }
            for (position, p) in layer.params.clone().into_iter().enumerate() {
                let e = &group[0].1.entries()[p];
                if !e.trainable || e.split || e.grads.len() != 1 || e.users != [l] {
                    continue;
                }
                let mut agreed = 0;
                for (net, _) in group.iter_mut() {
                    agreed += usize::from(net.share_param_grad(l, position)?);
                }
                if agreed == 0 {
                    continue;
                }
                if agreed < k {
                    return Err(Error::invalid(format!(
                        "parameter {}: {agreed} of the {k} workers of a group would compute blocks of its gradient, the others not",
                        e.name
                    )));
                }
                let whole = e.grads[0].clone();
                let rows = whole.shape().dim(0);
                let batches: Vec<_> = group.iter().map(|(net, _)| net.batch_of(l)).collect();
                for (m, shared) in per.iter_mut().enumerate() {
                    let (start, end) = (m * rows / k, (m + 1) * rows / k);
                    shared.push(SharedGrad {
                        param: p,
                        layer: l,
                        position,
                        start,
                        rows: whole.narrow(start, end - start)?,
                        whole: whole.clone(),
                        member: m,
                        batches: batches
                            .iter()
                            .enumerate()
                            .map(|(q, b)| (q != m).then(|| b.clone()))
                            .collect(),
                    });
                }
            }
        }
        all.push(per);
    }
    Ok(all)
}
