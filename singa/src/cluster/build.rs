//! Building a rank's workers and servers: their nets, the copies of the values each group
//! and server group works on (in one process), and the servers' slices.

use super::latch::BackwardLatch;
use super::norm::{GlobalNorm, NormRole};
use super::server::{Server, ServerCore, ServerSlice, SyncRole};
use super::slices::{holders, slice_params, Slice};
use super::topology::{control_addr, server_addr, worker_addr, Topology};
use super::worker::{PeerWorker, RowBlocks, WorkerLink};
use super::TransportBox;
use crate::config::{DeviceConfig, JobConfig};
use crate::net::{NeuralNet, Part};
use crate::params::ParamStore;
use crate::partition::Exchanges;
use crate::registry::Registry;
use singa_comm::{Endpoints, Fabric};
use singa_core::abi::{TD_Opaque, Transport_TO};
use singa_core::{Addr, DeviceRef, Error, MsgKind, Phase, Result, Tensor};
use singa_layers::schedule::LrSchedule;
use std::sync::Arc;
use std::time::Duration;

/// The values of the trainable parameters of `store` (`None` for the others).
fn trainable_values(store: &ParamStore) -> Values {
    store
        .entries()
        .iter()
        .map(|e| e.trainable.then(|| e.value.clone()))
        .collect()
}

/// A copy of the values of every parameter (`None` for those no server updates).
type Values = Vec<Option<Tensor>>;

/// An updater's state tensors for every parameter.
type States = Vec<Vec<Tensor>>;

/// What a rank's workers and servers are built from.
pub(crate) struct Plan<'a> {
    pub job: &'a JobConfig,
    pub registry: &'a Registry,
    pub schedule: &'a LrSchedule,
    pub topology: &'a Topology,
    /// Each worker's device (its share of the threads).
    pub worker_device: DeviceConfig,
    /// The rank's bridges.
    pub exchanges: &'a Arc<Exchanges>,
    /// Sees every step the rank's workers start.
    pub on_step: Option<super::node::StepHook>,
    /// The engine between the ranks (where collectives come from).
    pub fabric: &'a dyn Fabric,
}

impl Plan<'_> {
    pub(super) fn timeout(&self) -> Duration {
        Duration::from_secs(self.job.cluster.timeout_secs)
    }
}

/// Worker 0 of a job, built by the trainer on the coordinating thread: its net, parameters,
/// and which parameters are complete after each layer's backward.
pub(crate) struct Lead<'a> {
    pub net: &'a mut NeuralNet,
    pub store: &'a ParamStore,
    pub ready_after: Vec<Vec<usize>>,
}

/// A rank's workers and servers, built and ready to run.
pub(crate) struct Rank {
    /// Worker 0's link, when the rank holds the lead.
    pub lead: Option<WorkerLink>,
    /// The workers that run on threads of their own.
    pub workers: Vec<PeerWorker>,
    /// The servers that run on threads of their own.
    pub servers: Vec<Server>,
    /// The slices of every parameter over the servers of a group.
    pub slices: Vec<Vec<Slice>>,
    /// The parameters' names.
    pub names: Vec<String>,
    /// The parameters whose gradients the workers of a group compute together.
    pub shared_grads: Vec<String>,
}

/// A worker built but not started: its address, net and parameters.
type BuiltWorker = (Addr, NeuralNet, ParamStore);

/// Builds rank `ends.rank()`'s workers (but `lead`, built already) and servers, taking their
/// endpoints from `ends`.
pub(crate) fn build_rank(
    plan: &Plan<'_>,
    ends: &mut Endpoints,
    lead: Option<Lead<'_>>,
) -> Result<Rank> {
    let t = plan.topology;
    let rank = ends.rank();
    let shared_memory = !t.separate_memory();
    let mut lead = lead;
    let mut nets = worker_nets(plan, rank, lead.as_ref().map(|l| l.store))?;
    // Any worker's parameters tell the servers what they hold; a rank without workers builds
    // the net once to know.
    let meta: Vec<ParamInfo> = match (&lead, nets.first()) {
        (Some(l), _) => ParamInfo::of(l.store),
        (None, Some((_, _, s))) => ParamInfo::of(s),
        (None, None) => ParamInfo::of(&parameters_of(plan)?),
    };
    let sizes: Vec<usize> = meta
        .iter()
        .map(|e| if e.trainable { e.numel } else { 0 })
        .collect();
    let slices = slice_params(&sizes, plan.job.cluster.nservers_per_group);
    let names = meta.iter().map(|e| e.name.clone()).collect();
    let held = if shared_memory {
        let lead = lead
            .as_ref()
            .ok_or_else(|| Error::invalid("one process without worker 0"))?;
        Some(SharedHeld::new(t, lead.store, &nets)?)
    } else {
        None
    };
    let mut shared = match (shared_memory, &mut lead) {
        (true, Some(l)) => {
            let mut members: Vec<Vec<(&mut NeuralNet, &ParamStore)>> =
                (0..plan.job.cluster.nworker_groups)
                    .map(|_| Vec::new())
                    .collect();
            members[0].push((&mut *l.net, l.store));
            for (addr, n, s) in nets.iter_mut() {
                members[addr.group as usize].push((n, &*s));
            }
            shared_grads(&mut members)?
        }
        _ => Vec::new(),
    };
    let shared_grads: Vec<String> = shared
        .iter()
        .flatten()
        .next()
        .map(|l| l.grads.iter().map(|s| meta[s.param].name.clone()).collect())
        .unwrap_or_default();
    let mut shared_of = |w: Addr| -> Sharing {
        shared
            .get_mut(w.group as usize)
            .and_then(|g| g.get_mut(w.id as usize))
            .map(std::mem::take)
            .unwrap_or_default()
    };

    // With ranks apart, an AllReduce server updates the values of the worker beside it in
    // place, as in one process: that worker then copies only the other servers' slices, and
    // not even those where the engine receives them in place (below).
    let beside = |h: usize, s: usize| -> Option<&ParamStore> {
        let c = &plan.job.cluster;
        if shared_memory || !t.servers_on_worker_threads() || c.nworker_groups != 1 {
            return None;
        }
        let w = worker_addr(h as u32, s as u32);
        match &lead {
            Some(l) if w == worker_addr(0, 0) => Some(l.store),
            _ => nets.iter().find(|(a, _, _)| *a == w).map(|(_, _, s)| s),
        }
    };
    let mut cores: Vec<((usize, usize), ServerCore)> = t
        .rank_servers(rank)
        .into_iter()
        .map(|(h, s)| {
            let held = match &held {
                Some(held) => Held::Shared(held),
                None => Held::Apart(beside(h, s)),
            };
            Ok(((h, s), server_core(plan, &meta, &slices, h, s, held)?))
        })
        .collect::<Result<_>>()?;
    // The fresh values the servers of other ranks send such a worker are received straight
    // into its parameters, where the engine can (MPI), rather than copied there after. The
    // router writes them on its own thread, which is safe because a slice's `Updated` message
    // needs this worker's gradient of the slice, sent after the slice's last use in the step,
    // and the next step waits for the message; a `Get`'s reply comes between steps.
    for w in t.rank_workers(rank) {
        let Some(store) = beside(w.group as usize, w.id as usize) else {
            continue;
        };
        let remote = |sl: &&Slice| t.rank_of_server(w.group as usize, sl.server) != rank;
        for sl in slices.iter().flatten().filter(remote) {
            let Some(view) = slice_of(store, &meta, sl)? else {
                continue;
            };
            let from = t.server_at(w.group as usize, sl.server);
            let key = (sl.param as u32, sl.index);
            ends.receive_into((from, w), MsgKind::Updated, key, view);
        }
    }
    let mut take_core = |h: usize, s: usize| -> Option<ServerCore> {
        let i = cores.iter().position(|(k, _)| *k == (h, s))?;
        Some(cores.swap_remove(i).1)
    };
    let boxed =
        |e: singa_comm::ChannelEndpoint| -> TransportBox { Transport_TO::from_value(e, TD_Opaque) };
    let mut link_for = |ends: &mut Endpoints,
                        net: &mut NeuralNet,
                        store: &ParamStore,
                        w: Addr,
                        ready_after: Vec<Vec<usize>>| {
        let g = w.group as usize;
        let servers = t.server_group(t.server_group_of(g));
        let collective = plan.job.cluster.collective;
        let blocks = match shared_memory || collective {
            true => Vec::new(),
            false => row_blocks(plan, rank, w, net, store, &slices)?,
        };
        let link = WorkerLink::new(
            boxed(ends.take(w)?),
            store,
            &slices,
            &servers,
            ready_after,
            plan.timeout(),
            &t.group(g),
            shared_of(w),
        )?
        .with_row_blocks(blocks, store.entries().len());
        let link = match collective {
            true => link.with_collective(super::collective::member(plan, rank, w)?),
            false => link,
        };
        Result::Ok(match t.servers_on_worker_threads() {
            true => link.with_server(
                take_core(g, w.id as usize)
                    .ok_or_else(|| Error::invalid("one server per worker"))?,
            ),
            false => link,
        })
    };
    let lead_link = match lead {
        Some(l) => Some(link_for(
            ends,
            l.net,
            l.store,
            worker_addr(0, 0),
            l.ready_after,
        )?),
        None => None,
    };
    let mut workers = Vec::with_capacity(nets.len());
    for (addr, mut net, store) in nets {
        let ready_after = store.ready_after(net.layers().len());
        let link = link_for(ends, &mut net, &store, addr, ready_after)?;
        workers.push(PeerWorker {
            dev: net.device().clone(),
            link,
            net,
            store,
            algorithm: crate::algorithm::create(plan.job),
            exchanges: Arc::clone(plan.exchanges),
            control: boxed(ends.take(control_addr(addr))?),
            on_step: plan.on_step.clone(),
        });
    }
    let servers = cores
        .into_iter()
        .map(|((h, s), core)| {
            Ok(Server {
                transport: boxed(ends.take(server_addr(h as u32, s as u32))?),
                core,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Rank {
        lead: lead_link,
        workers,
        servers,
        slices,
        names,
        shared_grads,
    })
}

/// What servers need to know of a parameter.
struct ParamInfo {
    name: String,
    numel: usize,
    dtype: singa_core::DType,
    trainable: bool,
    lr_mult: f32,
    wd_mult: f32,
    /// Split along the features over the workers of a group.
    split: bool,
}

impl ParamInfo {
    fn of(store: &ParamStore) -> Vec<ParamInfo> {
        store
            .entries()
            .iter()
            .map(|e| ParamInfo {
                name: e.name.clone(),
                numel: e.value.numel(),
                dtype: e.value.dtype(),
                trainable: e.trainable,
                lr_mult: e.lr_mult,
                wd_mult: e.wd_mult,
                split: e.split,
            })
            .collect()
    }
}

/// The parameters of the job's train net, for a rank that holds servers but no worker.
fn parameters_of(plan: &Plan<'_>) -> Result<ParamStore> {
    let dev = crate::device::create(&plan.worker_device, Some(1))?;
    let mut store = ParamStore::new();
    NeuralNet::build(plan.job, plan.registry, &dev, &mut store, Phase::TRAIN)?;
    Ok(store)
}

/// The nets of rank `rank`'s workers but worker 0 (whose parameters are `lead`, when the rank
/// holds it), each reading its part of every batch. In one process a group's first worker
/// holds the group's copy of the values (group 0's are `lead`'s) and the other workers of the
/// group share it; with ranks apart every worker has a copy of its own.
fn worker_nets(
    plan: &Plan<'_>,
    rank: usize,
    lead: Option<&ParamStore>,
) -> Result<Vec<BuiltWorker>> {
    let t = plan.topology;
    let c = &plan.job.cluster;
    let share = !t.separate_memory();
    let mut nets: Vec<BuiltWorker> = Vec::new();
    for w in t.rank_workers(rank) {
        if w == worker_addr(0, 0) && lead.is_some() {
            continue;
        }
        let g = w.group as usize;
        let device = plan.worker_device.for_worker(c, t.worker_index(w));
        let dev = crate::device::create(&device, None)?;
        // The index in `nets` of the group's first worker, which holds its values.
        let leader = nets
            .iter()
            .position(|(a, _, _)| a.group == w.group && a.id == 0);
        let mut own = match (share, leader, g, lead) {
            (false, ..) => ParamStore::new(),
            (true, Some(l), _, _) => ParamStore::sharing_values_of(&nets[l].2),
            (true, None, 0, Some(store)) => ParamStore::sharing_values_of(store),
            _ => ParamStore::new(),
        };
        let part = Part::of_worker(
            w.group,
            w.id,
            c.nworker_groups as u32,
            c.nworkers_per_group as u32,
        );
        let net = NeuralNet::build_part(
            plan.job,
            plan.registry,
            &dev,
            &mut own,
            Phase::TRAIN,
            part,
            Some(plan.exchanges),
        )
        .map_err(|e| e.context(format!("{w}")))?;
        nets.push((w, net, own));
    }
    Ok(nets)
}

/// In one process, what the server groups update in place: a server group that serves one
/// worker group updates that group's values; one that serves several keeps a master copy and
/// refreshes a group's copy after each of its updates (Downpour). Server group 0's updater
/// state is worker 0's (the trainer's); the others have their own.
struct SharedHeld {
    /// Each server group's values.
    masters: Vec<Values>,
    /// Each server group's updater state.
    states: Vec<States>,
    /// Each worker group's values.
    replicas: Vec<Values>,
}

impl SharedHeld {
    fn new(t: &Topology, lead: &ParamStore, nets: &[BuiltWorker]) -> Result<SharedHeld> {
        let dev = lead
            .entries()
            .first()
            .map(|e| e.value.device().clone())
            .ok_or_else(|| Error::invalid("the net has no parameters to train"))?;
        let mut replicas = vec![trainable_values(lead)];
        for (a, _, s) in nets {
            if a.id == 0 {
                replicas.push(trainable_values(s));
            }
        }
        let c = t.cluster();
        let copy_of = |values: &[Option<Tensor>]| -> Result<Values> {
            values
                .iter()
                .map(|v| {
                    v.as_ref()
                        .map(|v| {
                            let mut m = Tensor::zeros(&dev, v.shape(), v.dtype())?;
                            dev.copy(v, &mut m)?;
                            Ok(m)
                        })
                        .transpose()
                })
                .collect()
        };
        let masters = (0..c.nserver_groups)
            .map(|h| match t.served_by(h).as_slice() {
                [g] => Ok(replicas[*g].clone()),
                _ => copy_of(&replicas[0]),
            })
            .collect::<Result<_>>()?;
        let states = (0..c.nserver_groups)
            .map(|h| {
                lead.entries()
                    .iter()
                    .map(|e| match h {
                        0 => Ok(e.state.clone()),
                        _ => e
                            .state
                            .iter()
                            .map(|s| Tensor::zeros(&dev, s.shape(), s.dtype()))
                            .collect(),
                    })
                    .collect()
            })
            .collect::<Result<_>>()?;
        Ok(SharedHeld {
            masters,
            states,
            replicas,
        })
    }
}

/// Server `s` of group `h`'s part in agreeing on the global gradient norm (for `clip_norm`
/// and loss scaling): none without either or without slices; the first server with slices
/// leads.
fn global_norm(plan: &Plan<'_>, slices: &[Vec<Slice>], h: usize, s: usize) -> Option<GlobalNorm> {
    let max = plan.job.updater.clip.norm;
    let scaling = plan.job.device.loss_scale.expect("settled by validation");
    let scaler = crate::loss_scale::LossScaler::new(scaling);
    if max.is_none() && scaler.is_none() {
        return None;
    }
    let holders = holders(slices);
    let mine = slices.iter().flatten().filter(|sl| sl.server == s).count();
    let (&lead, others) = holders.split_first()?;
    if mine == 0 {
        return None;
    }
    let t = plan.topology;
    let role = match lead == s {
        true => NormRole::Lead(others.iter().map(|&o| t.server_at(h, o)).collect()),
        false => NormRole::Follower(t.server_at(h, lead)),
    };
    let groups = (t.served_by(h).len(), plan.job.cluster.nworkers_per_group);
    Some(GlobalNorm::new(max, scaler, role, mine, groups))
}

/// With ranks apart, the gradients worker `w` (on rank `rank`) computes in blocks of rows, the
/// slices of servers on other ranks first (see [`RowBlocks`]): those of trainable parameters cut
/// into slices, one of them at least on another rank, used by one layer alone, not split over
/// the workers, whose layer agrees (`inner_product`'s weight).
fn row_blocks(
    plan: &Plan<'_>,
    rank: usize,
    w: Addr,
    net: &mut NeuralNet,
    store: &ParamStore,
    slices: &[Vec<Slice>],
) -> Result<Vec<RowBlocks>> {
    let t = plan.topology;
    let h = t.server_group_of(w.group as usize);
    let remote = |sl: &Slice| t.rank_of_server(h, sl.server) != rank;
    let mut blocks = Vec::new();
    for (p, (e, ss)) in store.entries().iter().zip(slices).enumerate() {
        let one_user = match e.users.as_slice() {
            [l] if e.grads.len() == 1 => Some(*l),
            _ => None,
        };
        let Some(layer) = one_user.filter(|_| e.trainable && !e.split) else {
            continue;
        };
        if ss.len() < 2 || !ss.iter().any(remote) {
            continue;
        }
        let params = &net.layers()[layer].params;
        let Some(position) = params.iter().position(|&q| q == p) else {
            continue;
        };
        if net.share_param_grad(layer, position)? {
            blocks.push(RowBlocks::new(
                p,
                (layer, position),
                &e.grads[0],
                ss,
                remote,
            )?);
        }
    }
    Ok(blocks)
}

/// The elements of slice `sl` in `store`'s values, when the store holds that parameter whole
/// under the name the servers know it by (not split along the features).
fn slice_of(store: &ParamStore, meta: &[ParamInfo], sl: &Slice) -> Result<Option<Tensor>> {
    let e = &meta[sl.param];
    match store.entries().get(sl.param) {
        Some(w) if w.name == e.name && !e.split => {
            let flat = w.value.reshape([w.value.numel()])?;
            Ok(Some(flat.narrow(sl.offset, sl.len)?))
        }
        _ => Ok(None),
    }
}

/// What a server's slices are views of.
#[derive(Clone, Copy)]
enum Held<'a> {
    /// In one process: what its group updates in place.
    Shared(&'a SharedHeld),
    /// With ranks apart: values and state of its own (zero until a `Put` and the
    /// coordinator's `State` messages), but the values of the worker beside it, if given:
    /// those it updates in place.
    Apart(Option<&'a ParamStore>),
}

/// Server `s` of server group `h`, over its slices, held as `held` says.
fn server_core(
    plan: &Plan<'_>,
    meta: &[ParamInfo],
    slices: &[Vec<Slice>],
    h: usize,
    s: usize,
    held: Held<'_>,
) -> Result<ServerCore> {
    let t = plan.topology;
    let job = plan.job;
    let ut = plan
        .registry
        .updater(&job.updater.type_name)
        .ok_or_else(|| Error::invalid(format!("no updater type {}", job.updater.type_name)))?;
    let updater = (ut.create)(&job.updater.fields).into_result()?;
    let slots = updater.state_names().into_result()?.len();
    // A server runs on the device of its rank's workers (a server beside a worker on that
    // worker's, whose values it may update in place): the GPU `[cluster] gpus` gives them.
    let worker = match job.cluster.servers_beside_workers() {
        true => worker_addr(h as u32, s as u32),
        false => t
            .rank_workers(t.rank_of_server(h, s))
            .first()
            .copied()
            .unwrap_or(worker_addr(0, 0)),
    };
    let device = job.device.for_worker(&job.cluster, t.worker_index(worker));
    let one_thread = DeviceConfig {
        threads: Some(1),
        ..device
    };
    let dev: DeviceRef = crate::device::create(&one_thread, None)?;
    let served = t.served_by(h);
    let mut mine = Vec::new();
    for sl in slices.iter().flatten().filter(|sl| sl.server == s) {
        let e = &meta[sl.param];
        let n = e.numel;
        let view = |t: &Tensor| t.reshape([n])?.narrow(sl.offset, sl.len);
        let of = |t: &Option<Tensor>| -> Result<Tensor> {
            view(t.as_ref().expect("trainable parameters have values"))
        };
        let zeros = || Tensor::zeros(&dev, [sl.len], e.dtype);
        let slice = match held {
            Held::Shared(held) => ServerSlice {
                key: (sl.param as u32, sl.index),
                value: of(&held.masters[h][sl.param])?,
                state: held.states[h][sl.param]
                    .iter()
                    .map(view)
                    .collect::<Result<_>>()?,
                lr_mult: e.lr_mult,
                wd_mult: e.wd_mult,
                replicas: served
                    .iter()
                    .map(|&g| of(&held.replicas[g][sl.param]))
                    .collect::<Result<_>>()?,
                sum: None,
            },
            Held::Apart(beside) => {
                let in_place = match beside.filter(|_| served.len() == 1) {
                    Some(store) => slice_of(store, meta, sl)?,
                    None => None,
                };
                let value = match in_place {
                    Some(v) => v,
                    None => zeros()?,
                };
                ServerSlice {
                    key: (sl.param as u32, sl.index),
                    value: value.clone(),
                    state: (0..slots).map(|_| zeros()).collect::<Result<_>>()?,
                    lr_mult: e.lr_mult,
                    wd_mult: e.wd_mult,
                    // What a group reads while the server updates for another: a copy.
                    replicas: match served.len() {
                        1 => vec![value],
                        k => (0..k).map(|_| zeros()).collect::<Result<_>>()?,
                    },
                    // Workers that each hold a whole gradient of a parameter split along the
                    // features, zero outside their rows: summing into one of them would leave
                    // other rows in it for the next step.
                    sum: match e.split && job.cluster.nworkers_per_group > 1 {
                        true => Some(zeros()?),
                        false => None,
                    },
                }
            }
        };
        mine.push(slice);
    }
    let core = ServerCore::new(
        dev,
        updater,
        plan.schedule.clone(),
        job.updater.weight_decay,
        mine,
        served.iter().map(|&g| t.group(g)).collect(),
    )
    .with_clip_value(job.updater.clip.value)
    .with_global_norm(global_norm(plan, slices, h, s));
    let core = match job.cluster.collective {
        true => core.without_replies(),
        false => core,
    };
    // Hogwild: server s of every group synchronises with server s of group 0.
    Ok(match job.cluster.hogwild_sync_freq() {
        Some(_) => core.with_sync(match h {
            0 => SyncRole::Leader(
                (1..job.cluster.nserver_groups)
                    .map(|f| t.server_at(f, s))
                    .collect(),
            ),
            _ => SyncRole::Follower(t.server_at(0, s)),
        }),
        None => core,
    })
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
/// regions of an allocation in use at the same moment; beyond it operations would wait for
/// each other (with room to spare).
pub(super) const MAX_SHARING_WORKERS: usize = singa_core::tensor::MAX_REGIONS / 2;

/// What a worker computes together with the rest of its group: the gradients it computes
/// blocks of rows of, and the latch where the group's workers say their backward passes are
/// done (nothing for most setups).
#[derive(Default)]
pub(crate) struct Sharing {
    /// The shared gradients, in the order of their parameters.
    pub grads: Vec<SharedGrad>,
    /// The group's latch; `None` when it shares no gradient.
    pub latch: Option<BackwardLatch>,
}

/// The worker groups' shared gradients (`[group][member]`), given each group's workers in
/// order (nets and parameter stores, the first holding the group's values). A parameter is
/// shared when its layer agrees (a layer implementing `Layer::param_grad_rows`), it is
/// trainable, used by that layer alone, and not already split over the workers. Groups of one
/// worker share nothing, nor do groups of more than [`MAX_SHARING_WORKERS`].
fn shared_grads(groups: &mut [Vec<(&mut NeuralNet, &ParamStore)>]) -> Result<Vec<Vec<Sharing>>> {
    let mut all = Vec::with_capacity(groups.len());
    for group in groups.iter_mut() {
        let k = group.len();
        let mut per: Vec<Sharing> = (0..k).map(|_| Sharing::default()).collect();
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
                    shared.grads.push(SharedGrad {
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
        if !per[0].grads.is_empty() {
            for (sharing, latch) in per.iter_mut().zip(BackwardLatch::group(k)) {
                sharing.latch = Some(latch);
            }
        }
        all.push(per);
    }
    Ok(all)
}
