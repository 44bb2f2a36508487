//! SINGA's training architecture: worker groups that compute gradients and server groups that
//! hold the parameters and update them, talking through a [`Transport`](singa_core::Transport).
//!
//! The coordinating thread (the [`Trainer`](crate::trainer::Trainer)'s) is worker 0 of group
//! 0; the other workers run on their own threads, and so do the servers unless each sits beside
//! a worker (AllReduce, Hogwild), when the worker's thread runs it. Each worker reads its part
//! of every batch; a layer split along the features (`partition_dim = 1`) has a block of its
//! neurons on each worker of the group, with bridges between differently split layers (see
//! [`crate::partition`]). In one
//! process the workers of a group share one copy of the parameter values; a server group that
//! serves one worker group updates that copy in place, one that serves several (Downpour) keeps
//! a master copy and refreshes a group's copy after each of its updates.
//!
//! A step: every worker runs TrainOneBatch and sends each parameter's gradient slices to their
//! servers as soon as the layer that computes them is done; a server waits for the gradients
//! of every worker of a group, sums them, runs the updater and sends the fresh values back; a
//! worker's step ends when every slice it sent came back. In one process, the workers of a group
//! compute the weight gradients their layers can share together instead (see
//! [`singa_core::Layer::param_grad_rows`]): each a block of rows over every worker's batch, into
//! one gradient, once every colleague's backward pass is done (`BackwardDone`); the servers then
//! have no sum to make. The coordinator starts a step on
//! every worker and waits for all of them, so asynchronous groups are at most one step apart,
//! unless `cluster.staleness` lets other groups lag group 0 by up to that many steps.
//! Hogwild's server groups average their values every `sync_freq` steps with a round of `Sync`
//! messages: server `s` of each group sends its slices to server `s` of group 0, which sends
//! the averages back.
//!
//! With `cluster.nprocs > 1` the workers and servers are spread over processes that share no
//! values (see `processes.rs`): every worker has its own copy and every server its own slices, on
//! a thread of its own; the servers start from worker 0's values (`Put`), the workers fetch
//! theirs (`Get`), and what crosses between processes goes through their routers as a copy.
//! The processes run inside this one, and two things still bypass the routers: the
//! coordinator's commands to the workers (start a step, read metrics, restore layer states),
//! which travel over channels, and the updater state, which server group 0 keeps in worker
//! 0's parameter store and the coordinator reads and writes directly for checkpoints (the
//! other server groups' too). Across machines both will need messages of their own.

mod build;
mod processes;
mod server;
mod slices;
mod worker;

pub use slices::{slice_params, Slice, MIN_SLICE};

use crate::algorithm::{self, TrainOneBatch};
use crate::config::{ClusterConfig, DeviceConfig, JobConfig};
use crate::net::NeuralNet;
use crate::params::ParamStore;
use crate::partition::Exchanges;
use crate::registry::Registry;
use server::{Server, SyncRole};
use singa_comm::{ChannelEndpoint, ProcessNetwork};
use singa_core::abi::{RBox, TD_Opaque, Transport_TO};
use singa_core::park::Waiter;
use singa_core::{Addr, DeviceRef, Error, Result, Role, Tensor};
use singa_layers::schedule::LrSchedule;
use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use worker::{Command, PeerWorker, Reply, WorkerLink};

/// A transport endpoint behind the ABI-stable trait object.
pub(crate) type TransportBox = Transport_TO<'static, RBox<()>>;

/// The first errors of worker and server threads, for the message the job stops with.
#[derive(Clone, Default)]
pub(crate) struct Failures(Arc<Mutex<Vec<Error>>>);

impl Failures {
    fn record(&self, e: Error) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    fn first(&self) -> Option<Error> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .cloned()
    }
}

/// A worker on its own thread, seen from the coordinator.
///
/// Commands and replies go through `std::sync::mpsc` queues, and each side waits through a
/// [`Waiter`] that the other wakes: a blocking receive would allocate (`flume`'s every time,
/// `std`'s the first time a thread parks, which can fall into any step since waiters poll
/// briefly first).
struct Peer {
    addr: Addr,
    commands: Option<SyncSender<Command>>,
    /// Where the worker thread waits for commands.
    waiter: Arc<Waiter>,
    replies: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
    /// Steps sent whose replies the coordinator has not taken yet (asynchronous groups with a
    /// staleness bound run ahead of their replies).
    pending: usize,
}

impl Peer {
    fn send(&self, cmd: Command) -> bool {
        let sent = self.commands.as_ref().is_some_and(|c| c.send(cmd).is_ok());
        self.waiter.wake();
        sent
    }

    /// The worker's next reply, waited for through `waiter` (the coordinator's) for at most
    /// `timeout`.
    fn reply(&self, waiter: &Waiter, timeout: Duration) -> Result<Reply, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let got = waiter.wait_for(Some(deadline), || match self.replies.try_recv() {
            Ok(r) => Some(Ok(r)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(RecvTimeoutError::Disconnected)),
        });
        got.unwrap_or(Err(RecvTimeoutError::Timeout))
    }
}

/// The workers and servers of a job, started and ready to train.
pub struct Cluster {
    config: ClusterConfig,
    /// Worker 0's link (it runs on the coordinating thread).
    link: WorkerLink,
    peers: Vec<Peer>,
    /// Where the coordinator waits for the workers' replies.
    replies: Arc<Waiter>,
    /// The coordinator's endpoint for stopping the servers.
    servers: Vec<(Addr, JoinHandle<()>)>,
    failures: Failures,
    algorithm: Box<dyn TrainOneBatch>,
    /// Parameter values held by each server.
    loads: Vec<usize>,
    /// The parameters whose gradients the workers of a group compute together.
    shared_grads: Vec<String>,
    /// For copies and averages between steps.
    dev: DeviceRef,
    /// Downpour's master copy of each trainable parameter.
    downpour_master: Option<build::Values>,
    /// Each worker group's values of each trainable parameter (group 0's are worker 0's).
    values: Vec<build::Values>,
    /// Each server group's updater state, per parameter (group 0's are worker 0's).
    states: Vec<build::States>,
    /// Whether the workers' values match what the servers hold (Downpour's master, the
    /// average of Hogwild's groups): true after [`Cluster::settle`] until the next step.
    settled: bool,
    /// The most steps any group had left to finish when group 0 started one.
    max_lag: usize,
    /// Hogwild: every server, group 0's (the leaders) first, told to start a synchronisation.
    sync_servers: Vec<Addr>,
    /// The last step trained.
    last_step: u64,
    /// The worker groups' bridges, told when worker 0 fails.
    exchanges: Arc<Exchanges>,
    /// The routers between the job's processes, when it has several (dropped last).
    processes: Option<ProcessNetwork>,
    /// Each server group's servers, where worker 0 puts the values (with separate memory).
    server_groups: Vec<Vec<Addr>>,
    /// The last round of `Put`s.
    put_round: u64,
}

/// The address of worker `id` of group `group`.
fn worker_addr(group: u32, id: u32) -> Addr {
    Addr {
        group,
        id,
        role: Role::Worker,
    }
}

fn server_addr(group: u32, id: u32) -> Addr {
    Addr {
        group,
        id,
        role: Role::Server,
    }
}

/// The device configuration of one worker (or server) when `total` share the job's threads.
pub fn share_of_threads(
    device: &DeviceConfig,
    threads: Option<usize>,
    total: usize,
) -> DeviceConfig {
    let all = threads
        .or(device.threads)
        .unwrap_or_else(crate::device::default_threads);
    DeviceConfig {
        threads: Some((all / total.max(1)).max(1)),
        ..device.clone()
    }
}

impl Cluster {
    /// Starts the workers and servers of a validated `job` whose worker 0 has built `net` and
    /// `store` (values, gradients and updater state) on its device. Parameters a server
    /// updates are those of `store` that are trainable; `ready_after` says which are complete
    /// after each layer's backward.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        job: &JobConfig,
        registry: &Registry,
        schedule: &LrSchedule,
        net: &mut NeuralNet,
        store: &ParamStore,
        ready_after: Vec<Vec<usize>>,
        threads: Option<usize>,
        exchanges: &Arc<Exchanges>,
    ) -> Result<Cluster> {
        let c = job.cluster.clone();
        let ngroups = c.nworker_groups;
        let nworkers = c.nworkers_per_group;
        let nservers = c.nservers_per_group;
        // AllReduce (and Hogwild's groups): one server beside each worker, run by the worker's
        // own thread and reached at the worker's address, when a server group serves one
        // worker group. Otherwise every server has a thread and address of its own, and so
        // has every server of a job in several processes (which share no memory).
        let separate = c.separate_memory();
        let colocated = c.servers_on_worker_threads();
        let timeout = Duration::from_secs(c.timeout_secs);
        let groups: Vec<Vec<Addr>> = (0..ngroups as u32)
            .map(|g| (0..nworkers as u32).map(|i| worker_addr(g, i)).collect())
            .collect();
        let workers: Vec<Addr> = groups.iter().flatten().copied().collect();
        let mut addrs = workers.clone();
        if !colocated {
            for h in 0..c.nserver_groups as u32 {
                addrs.extend((0..nservers as u32).map(|s| server_addr(h, s)));
            }
        }
        let (processes, endpoints) = processes::connect(&c, &addrs)?;
        let mut endpoints: HashMap<Addr, ChannelEndpoint> = endpoints;
        let mut boxed = |a: Addr| -> TransportBox {
            let e = endpoints.remove(&a).expect("one endpoint per address");
            Transport_TO::from_value(e, TD_Opaque)
        };

        let worker_device = share_of_threads(&job.device, threads, ngroups * nworkers);
        let (mut nets, replicas) =
            build::worker_nets(job, registry, store, &worker_device, exchanges)?;
        // In one process, the workers of a group compute the gradients their layers can
        // share together, each a block of rows.
        let mut shared = if separate {
            Vec::new()
        } else {
            let mut members: Vec<Vec<(&mut NeuralNet, &ParamStore)>> =
                (0..ngroups).map(|_| Vec::new()).collect();
            members[0].push((net, store));
            for (addr, n, s) in nets.iter_mut() {
                members[addr.group as usize].push((n, &*s));
            }
            build::shared_grads(&mut members)?
        };
        let shared_grads: Vec<String> = shared
            .iter()
            .flatten()
            .next()
            .map(|l| {
                l.iter()
                    .map(|s| store.entries()[s.param].name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut shared_of = |worker: Addr| -> Vec<build::SharedGrad> {
            shared
                .get_mut(worker.group as usize)
                .and_then(|g| g.get_mut(worker.id as usize))
                .map(std::mem::take)
                .unwrap_or_default()
        };
        // A server group serves every worker group (nserver_groups = 1) or its own (Hogwild).
        let nsgroups = c.nserver_groups;
        let served: Vec<Vec<usize>> = if nsgroups == 1 {
            vec![(0..ngroups).collect()]
        } else {
            (0..ngroups).map(|g| vec![g]).collect()
        };
        let dev = store
            .entries()
            .first()
            .map(|e| e.value.device().clone())
            .ok_or_else(|| Error::invalid("the net has no parameters to train"))?;
        let (masters, states) =
            build::masters_and_states(store, &served, &replicas, &dev, separate)?;

        // The servers: each updates its slices of its group's master values and state.
        let sizes: Vec<usize> = store
            .entries()
            .iter()
            .map(|e| if e.trainable { e.value.numel() } else { 0 })
            .collect();
        let slices = slice_params(&sizes, nservers);
        let mut loads = vec![0; nservers];
        for sl in slices.iter().flatten() {
            loads[sl.server] += sl.len;
        }
        let mut cores = build::server_cores(
            job,
            registry,
            schedule,
            store,
            &slices,
            build::Held {
                separate,
                served: &served,
                masters: &masters,
                states: &states,
                replicas: &replicas,
                groups: &groups,
            },
        )?;
        // Hogwild: server s of every group synchronises with server s of group 0.
        let server_at = |h: usize, s: usize| {
            if colocated {
                worker_addr(h as u32, s as u32)
            } else {
                server_addr(h as u32, s as u32)
            }
        };
        let mut sync_servers = Vec::new();
        if c.hogwild_sync_freq().is_some() {
            for (h, group) in cores.iter_mut().enumerate() {
                for (s, core) in group.iter_mut().enumerate() {
                    let role = if h == 0 {
                        SyncRole::Leader((1..nsgroups).map(|f| server_at(f, s)).collect())
                    } else {
                        SyncRole::Follower(server_at(0, s))
                    };
                    *core = core.take().map(|c| c.with_sync(role, worker_addr(0, 0)));
                    sync_servers.push(server_at(h, s));
                }
            }
        }
        let server_group_of = |g: usize| if nsgroups == 1 { 0 } else { g };
        let server_addrs: Vec<Vec<Addr>> = (0..ngroups)
            .map(|g| {
                if colocated {
                    groups[g].clone()
                } else {
                    let h = server_group_of(g) as u32;
                    (0..nservers as u32).map(|s| server_addr(h, s)).collect()
                }
            })
            .collect();
        let failures = Failures::default();
        let mut link_for = |store: &ParamStore, worker: Addr| -> Result<WorkerLink> {
            let g = worker.group as usize;
            let link = WorkerLink::new(
                boxed(worker),
                store,
                &slices,
                &server_addrs[g],
                ready_after.clone(),
                timeout,
                &groups[g],
                shared_of(worker),
            )?;
            Ok(match colocated {
                true => link.with_server(
                    cores[server_group_of(g)][worker.id as usize]
                        .take()
                        .expect("one server per worker"),
                ),
                false => link,
            })
        };
        let link = link_for(store, worker_addr(0, 0))?;

        let mut peers = Vec::new();
        let replies = Arc::new(Waiter::default());
        for (addr, net, own) in nets {
            let peer = PeerWorker {
                link: link_for(&own, addr)?,
                net,
                store: own,
                algorithm: algorithm::create(job.algorithm),
                exchanges: Arc::clone(exchanges),
            };
            // Room for every step a lagging group may have queued.
            let room = c.staleness as usize + 1;
            let (cmd_tx, cmd_rx) = sync_channel(room);
            let (reply_tx, reply_rx) = sync_channel(room);
            let f = failures.clone();
            let waiter = Arc::new(Waiter::default());
            let waiters = (Arc::clone(&waiter), Arc::clone(&replies));
            let thread = std::thread::Builder::new()
                .name(format!("singa-{addr}").replace(' ', "-"))
                .spawn(move || peer.run((cmd_rx, reply_tx), waiters, f))
                .map_err(|e| Error::invalid(format!("cannot start {addr}: {e}")))?;
            peers.push(Peer {
                addr,
                commands: Some(cmd_tx),
                waiter,
                replies: reply_rx,
                thread: Some(thread),
                pending: 0,
            });
        }

        let mut server_threads = Vec::new();
        if !colocated {
            let all = cores.into_iter().enumerate().flat_map(|(h, cs)| {
                cs.into_iter()
                    .enumerate()
                    .map(move |(s, core)| (server_addr(h as u32, s as u32), core))
            });
            for (addr, core) in all {
                let core = core.expect("not taken by a worker");
                let server = Server {
                    transport: boxed(addr),
                    core,
                };
                let f = failures.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("singa-{addr}").replace(' ', "-"))
                    .spawn(move || server.run(f))
                    .map_err(|e| Error::invalid(format!("cannot start {addr}: {e}")))?;
                server_threads.push((addr, thread));
            }
        }
        let server_groups = (0..nsgroups)
            .map(|h| (0..nservers).map(|s| server_at(h, s)).collect())
            .collect();
        let mut cluster = Cluster {
            config: c,
            link,
            peers,
            replies,
            servers: server_threads,
            failures,
            algorithm: algorithm::create(job.algorithm),
            loads,
            shared_grads,
            dev,
            downpour_master: match served.as_slice() {
                [gs] if gs.len() > 1 => Some(masters.into_iter().next().expect("one")),
                _ => None,
            },
            values: replicas,
            states,
            settled: true,
            max_lag: 0,
            sync_servers,
            last_step: 0,
            exchanges: Arc::clone(exchanges),
            processes,
            server_groups,
            put_round: 0,
        };
        if separate {
            // The servers' values and every worker's come from worker 0's.
            cluster.refresh(true, None)?;
        }
        Ok(cluster)
    }

    /// Brings worker 0's values to what the servers hold, between steps (to test them or
    /// write them to a checkpoint): with Downpour, the master copy; with Hogwild, the average
    /// of the groups' values (a synchronisation of the server groups).
    pub fn settle(&mut self, store: &mut ParamStore) -> Result<()> {
        self.drain()?;
        if self.settled {
            return Ok(());
        }
        if self.config.separate_memory() {
            // Downpour: group 0 takes the values of the one server group.
            if self.config.nserver_groups == 1 && self.config.nworker_groups > 1 {
                self.refresh(false, Some(0))?;
            }
        } else if let Some(master) = &self.downpour_master {
            for (m, e) in master.iter().zip(store.entries_mut()) {
                if let Some(m) = m {
                    self.dev.copy(m, &mut e.value)?;
                }
            }
        }
        if self.config.hogwild_sync_freq().is_some() {
            self.sync_server_groups(self.last_step)?;
        }
        self.settled = true;
        Ok(())
    }

    /// Replaces every group's values by their average: a round of `Sync` messages between
    /// the server groups (Hogwild), which the coordinator starts and waits for.
    fn sync_server_groups(&mut self, step: u64) -> Result<()> {
        let me = self.link.addr();
        // Leaders first: a leader's start is then in its queue before any follower's slices.
        for &server in &self.sync_servers {
            self.link.send_raw(server::sync_signal(me, server, step))?;
        }
        for p in &self.peers {
            if !p.send(Command::Sync(step)) {
                return Err(self.stopped(p.addr));
            }
        }
        // Servers with threads of their own report the end of their round; the others run on
        // the workers' threads, which answer the command.
        let reports = if self.config.servers_on_worker_threads() {
            0
        } else {
            self.sync_servers.len()
        };
        let own = self.link.sync(step, reports);
        let own = self.own_outcome(own);
        let peers = self.collect(|_| {});
        own?;
        peers?;
        if self.config.separate_memory() {
            // The workers copy the averages from their servers.
            self.refresh(false, None)?;
        }
        // Every group now holds the average: a settle right after has nothing to do.
        self.settled = true;
        Ok(())
    }

    /// The updater state of the server groups after the first (Hogwild's), named for a
    /// checkpoint: `group<h>/state/<param>/<slot>`.
    pub fn group_states(
        &self,
        store: &ParamStore,
        state_names: &[String],
    ) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (h, states) in self.states.iter().enumerate().skip(1) {
            for (e, slots) in store.entries().iter().zip(states) {
                for (slot, t) in state_names.iter().zip(slots) {
                    out.push((format!("group{h}/state/{}/{slot}", e.name), t.clone()));
                }
            }
        }
        out
    }

    /// After worker 0's values and updater state were restored from `loaded`: copies them
    /// into every other group's values and into the master copy. The other server groups'
    /// updater state comes from the checkpoint where it has it, from worker 0's otherwise.
    pub fn push_restored(
        &mut self,
        store: &ParamStore,
        loaded: &crate::checkpoint::Loaded,
        state_names: &[String],
    ) -> Result<()> {
        let separate = self.config.separate_memory();
        for (p, e) in store.entries().iter().enumerate() {
            let master = self
                .downpour_master
                .iter_mut()
                .filter_map(move |m| m[p].as_mut());
            let others = self.values.iter_mut().skip(1).filter_map(|r| r[p].as_mut());
            for dst in master.chain(others) {
                if !separate && !dst.shares_storage(&e.value) {
                    self.dev.copy(&e.value, dst)?;
                }
            }
            for (h, state) in self.states.iter_mut().enumerate().skip(1) {
                for ((src, dst), slot) in e.state.iter().zip(&mut state[p]).zip(state_names) {
                    match loaded.tensor(&format!("group{h}/state/{}/{slot}", e.name)) {
                        Some(saved) => dst.write_from(saved)?,
                        None => self.dev.copy(src, dst)?,
                    }
                }
            }
        }
        if separate {
            self.refresh(true, None)?;
        }
        self.settled = true;
        Ok(())
    }

    /// All workers: the factor between one worker's batch and a step's.
    pub fn workers(&self) -> usize {
        self.config.nworkers()
    }

    /// One step of every worker; `net` and `store` are worker 0's. The workers of group 0
    /// finish it together; other groups finish it before the next step when
    /// `cluster.staleness` is 0, and at most that many steps later otherwise.
    pub fn train_step(
        &mut self,
        net: &mut NeuralNet,
        store: &mut ParamStore,
        step: u64,
    ) -> Result<()> {
        self.settled = false;
        self.last_step = step;
        if self.config.staleness > 0 {
            return self.stale_step(net, store, step);
        }
        for p in &self.peers {
            if !p.send(Command::Step(step)) {
                return Err(self.stopped(p.addr));
            }
        }
        let own = self.link.train_step(net, store, &mut *self.algorithm, step);
        let own = self.own_outcome(own);
        let peers = self.collect(|_| {});
        own?;
        peers?;
        match self.config.hogwild_sync_freq() {
            Some(freq) if (step + 1).is_multiple_of(freq) => self.sync_server_groups(step),
            _ => Ok(()),
        }
    }

    /// A step with a staleness bound: before group 0 starts step `step`, every other group has
    /// at most `staleness` earlier steps left to finish (it waits for them otherwise).
    fn stale_step(&mut self, net: &mut NeuralNet, store: &mut ParamStore, step: u64) -> Result<()> {
        let bound = self.config.staleness as usize;
        // Wait for the groups that lag too far first, then start everyone together (a worker
        // of group 0 must not wait at a bridge for worker 0 meanwhile).
        for i in 0..self.peers.len() {
            let allowed = if self.peers[i].addr.group == 0 {
                0
            } else {
                bound
            };
            while self.peers[i].pending > allowed {
                self.take_step_reply(i)?;
            }
            self.max_lag = self.max_lag.max(self.peers[i].pending);
        }
        for i in 0..self.peers.len() {
            if !self.peers[i].send(Command::Step(step)) {
                return Err(self.stopped(self.peers[i].addr));
            }
            self.peers[i].pending += 1;
        }
        let own = self.link.train_step(net, store, &mut *self.algorithm, step);
        self.own_outcome(own)?;
        // The other workers of group 0 finished this step with worker 0.
        for i in 0..self.peers.len() {
            if self.peers[i].addr.group == 0 {
                while self.peers[i].pending > 0 {
                    self.take_step_reply(i)?;
                }
            }
        }
        match self.config.hogwild_sync_freq() {
            Some(freq) if (step + 1).is_multiple_of(freq) => {
                self.drain()?;
                self.sync_server_groups(step)
            }
            _ => Ok(()),
        }
    }

    /// Takes peer `i`'s reply to its oldest pending step.
    fn take_step_reply(&mut self, i: usize) -> Result<()> {
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let p = &self.peers[i];
        let outcome = match p.reply(&self.replies, timeout) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.explain(e)),
            Err(RecvTimeoutError::Timeout) => Err(Error::invalid(format!(
                "{} did not finish a step within {} s (raise cluster.timeout if a step takes longer)",
                p.addr, self.config.timeout_secs
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(self.stopped(p.addr)),
        };
        self.peers[i].pending -= 1;
        outcome
    }

    /// Waits until every group has finished every step it was given.
    fn drain(&mut self) -> Result<()> {
        for i in 0..self.peers.len() {
            while self.peers[i].pending > 0 {
                self.take_step_reply(i)?;
            }
        }
        Ok(())
    }

    /// The most steps a group had left to finish when group 0 started one (at most
    /// `cluster.staleness`).
    pub fn max_lag(&self) -> usize {
        self.max_lag
    }

    /// The training metrics since they were last read, averaged over the workers (each saw
    /// an equal part of every batch); `own` are worker 0's.
    pub fn read_metrics(&mut self, own: Vec<(String, f64)>) -> Result<Vec<(String, f64)>> {
        self.drain()?;
        for p in &self.peers {
            if !p.send(Command::Metrics) {
                return Err(self.stopped(p.addr));
            }
        }
        let mut sum = own;
        self.collect(|theirs| {
            for ((name, v), (other, x)) in sum.iter_mut().zip(theirs) {
                debug_assert_eq!(*name, other);
                *v += x;
            }
        })?;
        let n = (self.peers.len() + 1) as f64;
        Ok(sum.into_iter().map(|(k, v)| (k, v / n)).collect())
    }

    /// Restores the other workers' layer states (worker 0's are the caller's).
    pub fn restore_layer_states(&mut self, states: &[(String, Vec<u64>)]) -> Result<()> {
        self.drain()?;
        for p in &self.peers {
            if !p.send(Command::Restore(states.to_vec())) {
                return Err(self.stopped(p.addr));
            }
        }
        self.collect(|_| {})
    }

    /// The topology, for `--dry-run` and logs.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "cluster: {} worker group{} of {} worker{}, {} server group{} of {} server{} ({}), {}\n",
            c.nworker_groups,
            plural(c.nworker_groups),
            c.nworkers_per_group,
            plural(c.nworkers_per_group),
            c.nserver_groups,
            plural(c.nserver_groups),
            c.nservers_per_group,
            plural(c.nservers_per_group),
            if c.servers_on_worker_threads() {
                "each on the thread of the worker it sits beside"
            } else {
                "each on a thread of its own"
            },
            match (c.nworker_groups, c.hogwild_sync_freq()) {
                (1, _) => "synchronous".to_string(),
                (_, None) if c.staleness > 0 => format!(
                    "groups asynchronous at the servers, another group at most {} steps behind group 0",
                    c.staleness
                ),
                (_, None) => "groups asynchronous at the servers, at most one step apart".to_string(),
                (_, Some(f)) if c.staleness > 0 => format!(
                    "each worker group with a server group of its own, their values averaged every {f} steps, another group at most {} steps behind group 0",
                    c.staleness
                ),
                (_, Some(f)) => format!(
                    "each worker group with a server group of its own, their values averaged every {f} steps"
                ),
            }
        );
        for (i, load) in self.loads.iter().enumerate() {
            let each = if c.nserver_groups > 1 {
                " (in each server group)"
            } else {
                ""
            };
            s.push_str(&format!("  server {i}: {load} values{each}\n"));
        }
        if !self.shared_grads.is_empty() {
            s.push_str(&format!(
                "  gradients the workers of each group compute together, each worker a block of rows over every worker's batch, so the servers need not sum them: {}\n",
                self.shared_grads.join(", ")
            ));
        }
        if c.separate_memory() {
            s.push_str(&format!(
                "{} processes, each with memory of its own and a router (run in this one, copying what crosses between them):\n",
                c.nprocs
            ));
            for p in 0..c.nprocs {
                let workers = (0..c.nworkers())
                    .filter(|&k| c.process_of_worker(k) == p)
                    .map(|k| {
                        format!(
                            "worker {}.{}",
                            k / c.nworkers_per_group,
                            k % c.nworkers_per_group
                        )
                    });
                let servers = (0..c.nserver_groups)
                    .flat_map(|h| (0..c.nservers_per_group).map(move |s| (h, s)))
                    .filter(|&(h, s)| c.process_of_server(h, s) == p)
                    .map(|(h, s)| format!("server {h}.{s}"));
                let all: Vec<String> = workers.chain(servers).collect();
                s.push_str(&format!("  process {p}: {}\n", all.join(", ")));
            }
        }
        s
    }

    /// Worker 0's own outcome: a failure is recorded and told to the other workers (their
    /// parameter traffic and their bridges), and reported with its first cause.
    fn own_outcome(&mut self, own: Result<()>) -> Result<()> {
        if let Err(e) = &own {
            self.failures.record(e.clone());
            self.link.tell_stopped();
            self.exchanges.tell_stopped(0, 0);
        }
        own.map_err(|e| self.explain(e))
    }

    /// Every peer's reply to the last command, in order; the first failure is the error.
    fn collect(&self, each: impl FnMut(Vec<(String, f64)>)) -> Result<()> {
        self.collect_from(|_| true, each)
    }

    /// The replies of the peers `which` selects, as [`Cluster::collect`].
    fn collect_from(
        &self,
        which: impl Fn(&Peer) -> bool,
        mut each: impl FnMut(Vec<(String, f64)>),
    ) -> Result<()> {
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let mut first_error = None;
        for p in self.peers.iter().filter(|p| which(p)) {
            match p.reply(&self.replies, timeout) {
                Ok(Ok(m)) => each(m),
                Ok(Err(e)) => {
                    first_error.get_or_insert(self.explain(e));
                }
                Err(RecvTimeoutError::Timeout) => {
                    first_error.get_or_insert(Error::invalid(format!(
                        "{} did not answer within {} s (raise cluster.timeout if a step takes longer)",
                        p.addr, self.config.timeout_secs
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    first_error.get_or_insert(self.stopped(p.addr));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A failure as the job reports it: the first thread that failed is the cause.
    fn explain(&self, e: Error) -> Error {
        match self.failures.first() {
            Some(cause) if cause.to_string() != e.to_string() => {
                Error::invalid(format!("{cause} (and so: {e})"))
            }
            _ => e,
        }
    }

    fn stopped(&self, who: Addr) -> Error {
        self.failures
            .first()
            .unwrap_or_else(|| Error::invalid(format!("{who} has stopped")))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let me = self.link.addr();
        for (addr, _) in &self.servers {
            let _ = self.link.send_raw(server::stop(me, *addr));
        }
        // Workers still waiting for values stop waiting.
        self.link.tell_stopped();
        for p in &mut self.peers {
            // Closing its command channel ends a worker thread's loop.
            p.commands.take();
            p.waiter.wake();
            if let Some(t) = p.thread.take() {
                let _ = t.join();
            }
        }
        for (_, t) in self.servers.drain(..) {
            let _ = t.join();
        }
    }
}

/// The device that worker 0 of a distributed job runs on.
pub fn coordinator_device(job: &JobConfig, threads: Option<usize>) -> Result<DeviceRef> {
    crate::device::create(
        &share_of_threads(&job.device, threads, job.cluster.nworkers()),
        None,
    )
}
