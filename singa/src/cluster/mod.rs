//! SINGA's training architecture: worker groups that compute gradients and server groups that
//! hold the parameters and update them, talking through a [`Transport`](singa_core::Transport).
//!
//! A job's workers and servers are placed on ranks (processes) by its [`Topology`]; a
//! [`Fabric`] (threads of one process, processes emulated in this one, or MPI) gives each rank
//! the endpoints of what it holds, and each rank builds only its own workers and servers
//! (`build.rs`). Rank 0 runs the [`Cluster`]: the coordinator, on the trainer's thread, which
//! runs worker 0 itself and commands every other worker, wherever it lives, through the
//! control plane (`control.rs`): start a step, report metrics, restore layer states, take part
//! in a synchronisation or a refresh, send or take in updater state, stop. Every other rank
//! runs [`run_rank`]. Nothing crosses between ranks but messages.
//!
//! A step: every worker runs TrainOneBatch and sends each parameter's gradient slices to their
//! servers as soon as the layer that computes them is done; a server waits for the gradients
//! of every worker of a group, sums them, runs the updater and sends the fresh values back; a
//! worker's step ends when every slice it sent came back. In one process the workers of a
//! group share one copy of the values, each server sits on the thread of the worker beside it
//! (AllReduce), and the workers of a group compute the weight gradients their layers can
//! share together (layers with the capability [`singa_layers::capability::RowGradients`],
//! outside the plugin interface): each a block of rows over every worker's batch, into one
//! gradient, once every colleague's backward pass is done (a latch in shared memory); the
//! servers then have no sum to make. A server group that serves several
//! worker groups (Downpour) keeps a master copy and refreshes a group's copy after each of its
//! updates. With ranks apart every worker has its own copy of the values and every server its
//! own slices (but a server beside a worker, AllReduce's, whose slices are views of that
//! worker's values, updated in place); the servers start from worker 0's values (`Put`) and the
//! workers fetch theirs (`Get`).
//!
//! The coordinator starts a step on every worker and waits for all of them, so asynchronous
//! groups are at most one step apart, unless `cluster.staleness` lets other groups lag group
//! 0 by up to that many steps. Hogwild's server groups average their values every `sync_freq`
//! steps with a round of `Sync` messages: server `s` of each group sends its slices to server
//! `s` of group 0, which sends the averages back. For a checkpoint the coordinator gathers
//! every server's updater state (`State` messages), and after a resume sends it back, so a
//! checkpoint is the same file whatever the number of ranks.

mod build;
mod collective;
mod control;
mod latch;
mod node;
mod norm;
mod server;
mod slices;
pub mod topology;
mod worker;

pub use node::{run_rank, StepHook};
pub use slices::{slice_params, Slice, MIN_SLICE};
pub use topology::Topology;

use crate::algorithm::{self, TrainOneBatch};
use crate::checkpoint::Loaded;
use crate::config::{DeviceConfig, JobConfig};
use crate::loss_scale::LossScaler;
use crate::net::NeuralNet;
use crate::params::ParamStore;
use crate::partition::Exchanges;
use crate::registry::Registry;
use control::{Op, Outcome, Report};
use server::Server;
use singa_comm::{Endpoints, Fabric, Traffic};
use singa_core::abi::{RBox, TD_Opaque, Transport_TO};
use singa_core::{Addr, DeviceRef, Error, Msg, MsgKind, Result, Tensor};
use singa_layers::schedule::LrSchedule;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use topology::{control_addr, node_addr, server_addr, worker_addr, COORDINATOR};
use worker::{PeerWorker, WorkerLink};

/// A transport endpoint behind the ABI-stable trait object.
pub(crate) type TransportBox = Transport_TO<'static, RBox<()>>;

/// Wraps an endpoint of the fabric.
fn boxed(e: singa_comm::ChannelEndpoint) -> TransportBox {
    Transport_TO::from_value(e, TD_Opaque)
}

/// A worker on another thread (of this process or another), seen from the coordinator.
struct Peer {
    addr: Addr,
    /// Steps sent whose reports the coordinator has not taken yet (asynchronous groups with
    /// a staleness bound run ahead of their reports).
    pending: usize,
    /// Step reports received and not yet taken.
    done: usize,
    /// Its answer to the last other command, once it came.
    answer: Option<Outcome>,
    /// Whether it reported a failure (it has stopped).
    failed: bool,
}

/// The workers and servers of a job, seen from rank 0: the coordinator.
pub struct Cluster {
    topology: Topology,
    fabric: Arc<dyn Fabric>,
    /// The coordinator's endpoint: commands go out, reports and state come in.
    control: TransportBox,
    /// Worker 0's link (it runs on the coordinating thread).
    link: WorkerLink,
    peers: Vec<Peer>,
    peer_index: HashMap<Addr, usize>,
    /// Reports of servers and ranks (not workers) not yet taken: who, for what, how.
    reports: Vec<(Addr, Op, Outcome)>,
    /// `State` messages received and not yet taken.
    states: Vec<Msg>,
    /// Failures reported, in the order they came (worker 0's own among them).
    failures: Vec<(Addr, Outcome)>,
    /// This rank's other workers and its servers, on threads of their own.
    threads: Vec<JoinHandle<bool>>,
    /// The other ranks, when they run in this process (emulated).
    nodes: Vec<JoinHandle<Result<()>>>,
    algorithm: Box<dyn TrainOneBatch>,
    /// The slices of every parameter over the servers of a group.
    slices: Vec<Vec<Slice>>,
    /// The parameters' names.
    names: Vec<String>,
    /// The parameters whose gradients the workers of a group compute together.
    shared_grads: Vec<String>,
    /// The updater's state tensors, by name.
    state_names: Vec<String>,
    /// For control payloads and state.
    dev: DeviceRef,
    /// Whether worker 0's values match what the servers hold (Downpour's master, the average
    /// of Hogwild's groups): true after [`Cluster::settle`] until the next step.
    settled: bool,
    /// The most steps any group had left to finish when group 0 started one.
    max_lag: usize,
    /// The last step trained.
    last_step: u64,
    /// The rank's bridges, told when worker 0 fails.
    exchanges: Arc<Exchanges>,
    /// The last round of `Put`s.
    put_round: u64,
    /// With loss scaling: the scale of every worker's next step. The servers keep copies,
    /// which the steps' verdicts move in step with this one (see [`norm`]).
    scaler: Option<LossScaler>,
}

/// The device configuration of one worker when `total` share the job's threads.
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

/// The device of each worker of `topology` that runs in this OS process: the fabric's local
/// ranks share its threads. A rank in a process of its own (MPI) uses at most the cores the
/// launcher gave it (mpirun binds each rank to its cores).
pub fn worker_device(
    job: &JobConfig,
    topology: &Topology,
    fabric: &dyn Fabric,
    threads: Option<usize>,
) -> DeviceConfig {
    let here: usize = fabric
        .local_ranks()
        .map(|r| topology.rank_workers(r).len())
        .sum();
    let mut device = share_of_threads(&job.device, threads, here);
    if fabric.local_ranks().len() < fabric.ranks() {
        let cores = crate::device::default_threads().div_ceil(here.max(1));
        device.threads = device.threads.map(|t| t.min(cores.max(1)));
    }
    device
}

/// What [`Cluster::start`] needs beyond the job: where its ranks live, and worker 0.
pub struct Start<'a> {
    /// The validated job.
    pub job: &'a JobConfig,
    /// Its layer and updater types.
    pub registry: &'a Registry,
    /// Its learning-rate schedule.
    pub schedule: &'a LrSchedule,
    /// Where its workers and servers live.
    pub topology: Topology,
    /// The engine between its ranks.
    pub fabric: Arc<dyn Fabric>,
    /// Rank 0's endpoints (those worker 0's bridges took aside).
    pub endpoints: Endpoints,
    /// Rank 0's bridges.
    pub exchanges: Arc<Exchanges>,
    /// `--threads`.
    pub threads: Option<usize>,
    /// The updater's state tensors, by name.
    pub state_names: Vec<String>,
}

impl Cluster {
    /// Starts rank 0's workers and servers (worker 0's `net` and `store` built by the
    /// trainer, with `ready_after` saying which parameters are complete after each layer's
    /// backward), the other ranks that live in this process, and waits until every rank is
    /// ready; with ranks apart, brings every copy of the values to worker 0's.
    pub fn start(
        s: Start<'_>,
        net: &mut NeuralNet,
        store: &ParamStore,
        ready_after: Vec<Vec<usize>>,
    ) -> Result<Cluster> {
        let Start {
            job,
            registry,
            schedule,
            topology,
            fabric,
            mut endpoints,
            exchanges,
            threads,
            state_names,
        } = s;
        let plan = build::Plan {
            job,
            registry,
            schedule,
            topology: &topology,
            worker_device: worker_device(job, &topology, &*fabric, threads),
            exchanges: &exchanges,
            on_step: None,
            fabric: &*fabric,
        };
        let dev = net.device().clone();
        let control = boxed(endpoints.take(COORDINATOR)?);
        let lead = build::Lead {
            net,
            store,
            ready_after,
        };
        let rank = build::build_rank(&plan, &mut endpoints, Some(lead))?;
        let peers: Vec<Peer> = topology
            .workers()
            .filter(|&w| w != worker_addr(0, 0))
            .map(|addr| Peer {
                addr,
                pending: 0,
                done: 0,
                answer: None,
                failed: false,
            })
            .collect();
        let peer_index = peers.iter().enumerate().map(|(i, p)| (p.addr, i)).collect();
        let mut cluster = Cluster {
            link: rank.lead.expect("rank 0 holds worker 0"),
            topology,
            fabric: Arc::clone(&fabric),
            control,
            peers,
            peer_index,
            reports: Vec::new(),
            states: Vec::new(),
            failures: Vec::new(),
            threads: Vec::new(),
            nodes: Vec::new(),
            algorithm: algorithm::create(job),
            slices: rank.slices,
            names: rank.names,
            shared_grads: rank.shared_grads,
            state_names,
            dev,
            settled: true,
            max_lag: 0,
            last_step: 0,
            exchanges,
            put_round: 0,
            scaler: LossScaler::new(job.device.loss_scale.expect("settled by validation")),
        };
        cluster.threads = spawn(rank.workers, rank.servers)?;
        // The other ranks of this process (emulated ones) build themselves meanwhile.
        for r in fabric.local_ranks().filter(|&r| r != 0) {
            let validated = Ok(crate::config::Validated {
                job: job.clone(),
                schedule: schedule.clone(),
            });
            let (registry, fabric) = (registry.clone(), Arc::clone(&fabric));
            let thread = std::thread::Builder::new()
                .name(format!("singa-rank-{r}"))
                .spawn(move || {
                    node::run_validated(validated, &registry, &*fabric, r, threads, None)
                })
                .map_err(|e| Error::invalid(format!("cannot start rank {r}: {e}")))?;
            cluster.nodes.push(thread);
        }
        cluster.await_ranks()?;
        if cluster.topology.separate_memory() || job.cluster.nworker_groups > 1 {
            // The servers' values and every worker's come from worker 0's (which may come
            // from `checkpoint_path`): with ranks apart, and in one process for the copies of
            // the other worker groups.
            cluster.refresh(true, None)?;
        }
        cluster.push_fixed(store)?;
        Ok(cluster)
    }

    /// Waits until every other rank has built its workers and servers.
    fn await_ranks(&mut self) -> Result<()> {
        let ranks = self.topology.ranks();
        let deadline = Instant::now() + self.timeout();
        loop {
            let mut ready = 0;
            for (from, op, outcome) in &self.reports {
                match (op, outcome) {
                    (Op::Ready, Outcome::Done(_)) => ready += 1,
                    (Op::Ready, Outcome::Failed(e) | Outcome::Interrupted(e)) => {
                        return Err(Error::invalid(format!("{from} could not start: {e}")))
                    }
                    _ => {}
                }
            }
            if ready == ranks - 1 {
                break;
            }
            if !self.pump(deadline)? {
                let waiting: Vec<String> = (1..ranks)
                    .filter(|&r| {
                        !self
                            .reports
                            .iter()
                            .any(|(from, _, _)| *from == node_addr(r))
                    })
                    .map(|r| format!("rank {r}"))
                    .collect();
                return Err(Error::invalid(format!(
                    "waited {} s for {} to build its workers and servers (raise cluster.timeout if that takes longer)",
                    self.timeout().as_secs(),
                    waiting.join(", ")
                )));
            }
        }
        self.reports.retain(|(_, op, _)| *op != Op::Ready);
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.topology.cluster().timeout_secs)
    }

    /// Receives one message at the coordinator's endpoint and files it; false once `deadline`
    /// has passed with nothing received.
    fn pump(&mut self, deadline: Instant) -> Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = self
            .control
            .recv(left.as_millis() as u64)
            .into_result()?
            .into_option()
        else {
            return Ok(false);
        };
        match msg.kind {
            MsgKind::Report => {
                let report = control::decode_report(&msg)?;
                self.file(report);
            }
            MsgKind::State => self.states.push(msg),
            // A worker or server that stopped says so in its report; this is its echo.
            MsgKind::Stop => {}
            other => {
                return Err(Error::invalid(format!(
                    "the coordinator got an unexpected {other:?} message from {}",
                    msg.src
                )))
            }
        }
        Ok(true)
    }

    /// Files a report: a worker's with the worker, anyone else's in `reports`; failures are
    /// recorded in the order they came.
    fn file(&mut self, r: Report) {
        let failed = !matches!(r.outcome, Outcome::Done(_));
        if failed {
            self.failures.push((r.from, r.outcome.clone()));
        }
        match self.peer_index.get(&r.from) {
            Some(&i) => {
                let p = &mut self.peers[i];
                p.failed |= failed;
                match (r.op, failed) {
                    (Op::Step, false) => p.done += 1,
                    _ => p.answer = Some(r.outcome),
                }
            }
            None => self.reports.push((r.from, r.op, r.outcome)),
        }
    }

    /// The job's failure: the first one that was a cause rather than a consequence of another
    /// stopping (the first one at all otherwise), with the first other one after it.
    fn failure(&self) -> Error {
        let text = |o: &Outcome| match o {
            Outcome::Failed(e) | Outcome::Interrupted(e) => e.clone(),
            Outcome::Done(_) => String::new(),
        };
        let cause = self
            .failures
            .iter()
            .find(|(_, o)| matches!(o, Outcome::Failed(_)))
            .or(self.failures.first());
        let Some((who, cause)) = cause else {
            return Error::invalid("the job stopped");
        };
        let cause = text(cause);
        match self.failures.iter().find(|(w, _)| w != who) {
            Some((_, then)) if text(then) != cause => {
                Error::invalid(format!("{cause} (and so: {})", text(then)))
            }
            _ => Error::invalid(cause),
        }
    }

    /// Worker 0's own outcome: a failure is recorded and told to the other workers of its
    /// group (their parameter traffic and their bridges).
    fn own_outcome(&mut self, own: Result<()>) -> Result<()> {
        if let Err(e) = &own {
            let interrupted = self.link.saw_stop() || self.exchanges.saw_stop(0, 0);
            let outcome = match interrupted {
                true => Outcome::Interrupted(e.to_string()),
                false => Outcome::Failed(e.to_string()),
            };
            self.failures.push((worker_addr(0, 0), outcome));
            self.link.tell_stopped();
            self.exchanges.tell_stopped(0, 0);
        }
        own
    }

    /// After gathering replies: the job's failure if anyone failed (see [`Cluster::fail`]).
    fn check(&mut self) -> Result<()> {
        match self.failures.is_empty() {
            true => Ok(()),
            false => Err(self.fail()),
        }
    }

    /// The job's failure, with whatever other reports come within a moment, so that a cause
    /// reported late (from another rank) still shows.
    fn fail(&mut self) -> Error {
        let soon = Instant::now() + Duration::from_millis(50);
        while let Ok(true) = self.pump(soon) {}
        self.failure()
    }

    /// The outcome of a command that worker 0 (`own`) and its peers (`peers`) carried out.
    fn conclude<T>(&mut self, own: Result<()>, peers: Result<T>) -> Result<T> {
        match (own, peers) {
            (Ok(()), Ok(t)) => Ok(t),
            _ => Err(self.fail()),
        }
    }

    /// Sends command `op(arg)` to worker `to` (its control endpoint).
    fn command(&mut self, to: Addr, op: Op, arg: u64, states: &[(String, Vec<u64>)]) -> Result<()> {
        let msg = control::command(COORDINATOR, control_addr(to), op, arg, states, &self.dev)?;
        self.control.send(msg).into_result()
    }

    /// Sends command `op(arg)` to the server with a thread of its own at `to`.
    fn command_server(&mut self, to: Addr, op: Op, arg: u64) -> Result<()> {
        let msg = control::command(COORDINATOR, to, op, arg, &[], &self.dev)?;
        self.control.send(msg).into_result()
    }

    /// Sends `op(arg)` to the peers `which` selects, and forgets their previous answers.
    fn command_peers(
        &mut self,
        which: impl Fn(Addr) -> bool,
        op: Op,
        arg: u64,
        states: &[(String, Vec<u64>)],
    ) -> Result<()> {
        for i in 0..self.peers.len() {
            let addr = self.peers[i].addr;
            if which(addr) {
                self.peers[i].answer = None;
                self.command(addr, op, arg, states)?;
            }
        }
        Ok(())
    }

    /// The answers of the peers `which` selects to the last command, in order.
    fn answers(
        &mut self,
        which: impl Fn(Addr) -> bool,
        what: &str,
    ) -> Result<Vec<Vec<(String, f64)>>> {
        let deadline = Instant::now() + self.timeout();
        let mut out = Vec::new();
        for i in 0..self.peers.len() {
            if !which(self.peers[i].addr) {
                continue;
            }
            while self.peers[i].answer.is_none() && !self.peers[i].failed {
                if !self.pump(deadline)? {
                    return Err(Error::invalid(format!(
                        "{} did not answer {what} within {} s (raise cluster.timeout if that takes longer)",
                        self.peers[i].addr,
                        self.timeout().as_secs()
                    )));
                }
            }
            if let Some(Outcome::Done(m)) = self.peers[i].answer.take() {
                out.push(m);
            }
        }
        self.check()?;
        Ok(out)
    }

    /// Waits for `count` reports of `op` from servers with threads of their own.
    fn server_reports(&mut self, op: Op, count: usize) -> Result<()> {
        let deadline = Instant::now() + self.timeout();
        let done = |c: &Cluster| c.reports.iter().filter(|(_, o, _)| *o == op).count();
        while done(self) < count && self.failures.is_empty() {
            if !self.pump(deadline)? {
                return Err(Error::invalid(format!(
                    "{} of {count} servers did not finish {op:?} within {} s",
                    count - done(self),
                    self.timeout().as_secs()
                )));
            }
        }
        self.reports.retain(|(_, o, _)| *o != op);
        self.check()
    }

    /// Servers with threads of their own: where they receive.
    fn separate_servers(&self) -> Vec<Addr> {
        match self.topology.servers_on_worker_threads() {
            true => Vec::new(),
            false => self
                .topology
                .servers()
                .map(|(h, s)| server_addr(h as u32, s as u32))
                .collect(),
        }
    }

    /// With several copies of the values: a round of `Put`s of worker 0's values to every
    /// server group (when `put`), then of `Get`s by every worker (of group `only`, if given),
    /// which install the values their servers hold. A `Get` names the last round of `Put`s,
    /// which its server must have installed before it answers.
    fn refresh(&mut self, put: bool, only: Option<u32>) -> Result<()> {
        // Nothing of a step may be in flight: its replies share the queues.
        self.drain()?;
        let takes_part = |a: Addr| only.is_none_or(|g| a.group == g);
        if put {
            self.put_round += 1;
            let groups = self.topology.server_groups();
            let own = self.link.put_all(self.put_round, &groups);
            let own = self.own_outcome(own);
            self.conclude(own, Ok(()))?;
        }
        let round = self.put_round;
        self.command_peers(takes_part, Op::Refresh, round, &[])?;
        let own = self.link.get_all(round);
        let own = self.own_outcome(own);
        let peers = self.answers(takes_part, "a refresh of its values");
        self.conclude(own, peers).map(|_| ())
    }

    /// Brings worker 0's values to what the servers hold, between steps (to test them or
    /// write them to a checkpoint): with Downpour, the master copy; with Hogwild, the average
    /// of the groups' values (a synchronisation of the server groups).
    pub fn settle(&mut self, _store: &mut ParamStore) -> Result<()> {
        self.drain()?;
        if self.settled {
            return Ok(());
        }
        let c = self.topology.cluster();
        let (downpour, hogwild) = (
            c.nserver_groups == 1 && c.nworker_groups > 1,
            c.hogwild_sync_freq().is_some(),
        );
        if downpour {
            // Downpour: group 0 takes the values of the one server group.
            self.refresh(false, Some(0))?;
        }
        if hogwild {
            self.sync_server_groups(self.last_step)?;
        }
        self.settled = true;
        Ok(())
    }

    /// Replaces every group's values by their average: a round of `Sync` messages between
    /// the server groups (Hogwild), which the coordinator starts and waits for.
    fn sync_server_groups(&mut self, step: u64) -> Result<()> {
        let servers: Vec<Addr> = self
            .topology
            .servers()
            .map(|(h, s)| self.topology.server_at(h, s))
            .collect();
        for &server in &servers {
            let signal = server::sync_signal(COORDINATOR, server, step);
            self.control.send(signal).into_result()?;
        }
        if self.topology.servers_on_worker_threads() {
            // Each runs on the thread of the worker beside it, which the command wakes.
            self.command_peers(|_| true, Op::Sync, step, &[])?;
            let own = self.link.sync(step);
            let own = self.own_outcome(own);
            let peers = self.answers(|_| true, "a synchronisation of the server groups");
            self.conclude(own, peers)?;
        } else {
            self.server_reports(Op::Sync, servers.len())?;
        }
        if self.topology.separate_memory() {
            // The workers copy the averages from their servers.
            self.refresh(false, None)?;
        }
        // Every group now holds the average: a settle right after has nothing to do.
        self.settled = true;
        Ok(())
    }

    /// The updater state of every server group, for a checkpoint: server group 0's into the
    /// state tensors of `store` (worker 0's, which the checkpoint saves), the others' as
    /// `group<h>/state/<param>/<slot>` tensors. The servers send it (`State` messages).
    pub fn gather_states(&mut self, store: &mut ParamStore) -> Result<Vec<(String, Tensor)>> {
        self.drain()?;
        let slots = self.state_names.len();
        let nsgroups = self.topology.cluster().nserver_groups;
        let expected = self.slices.iter().flatten().count() * slots * nsgroups;
        if expected == 0 {
            return Ok(Vec::new());
        }
        self.states.clear();
        let separate = self.separate_servers();
        for &s in &separate {
            self.command_server(s, Op::StateOut, 0)?;
        }
        let on_threads = self.topology.servers_on_worker_threads();
        if on_threads {
            self.command_peers(|_| true, Op::StateOut, 0, &[])?;
            let own = self.link.state_out();
            let own = self.own_outcome(own);
            let peers = self.answers(|_| true, "a request for its server's updater state");
            self.conclude(own, peers)?;
        } else {
            self.server_reports(Op::StateOut, separate.len())?;
        }
        let deadline = Instant::now() + self.timeout();
        while self.states.len() < expected {
            if !self.pump(deadline)? {
                return Err(Error::invalid(format!(
                    "{} of {expected} updater state tensors did not come within {} s",
                    expected - self.states.len(),
                    self.timeout().as_secs()
                )));
            }
        }
        let mut extra: Vec<(String, Tensor)> = Vec::new();
        for msg in std::mem::take(&mut self.states) {
            let h = msg.src.group as usize;
            let (p, slot) = (msg.target as usize, msg.version as usize);
            let sl = self
                .slices
                .get(p)
                .and_then(|s| s.get(msg.slice as usize))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{} sent the state of a slice that does not exist",
                        msg.src
                    ))
                })?;
            let part = msg
                .payload
                .into_option()
                .ok_or_else(|| Error::invalid("empty state"))?;
            let e = &mut store.entries_mut()[p];
            let whole = match h {
                0 => e.state.get(slot).cloned(),
                _ => {
                    let name = format!("group{h}/state/{}/{}", e.name, self.state_names[slot]);
                    let i = match extra.iter().position(|(n, _)| *n == name) {
                        Some(i) => i,
                        None => {
                            extra.push((
                                name,
                                Tensor::zeros(&self.dev, e.value.shape(), e.value.dtype())?,
                            ));
                            extra.len() - 1
                        }
                    };
                    Some(extra[i].1.clone())
                }
            };
            let whole = whole
                .ok_or_else(|| Error::invalid(format!("{}: no state tensor {slot}", e.name)))?;
            let mut dst = whole.reshape([whole.numel()])?.narrow(sl.offset, sl.len)?;
            if !part.shares_storage(&dst) {
                dst.copy_from(&part)?;
            }
        }
        // In the order the checkpoint lists them.
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(extra)
    }

    /// After worker 0's values and updater state were restored from `loaded`: sends every
    /// server its updater state (server group 0's from `store`; the others' from the
    /// checkpoint where it has it, from worker 0's otherwise), then brings every copy of the
    /// values to worker 0's.
    pub fn push_restored(&mut self, store: &ParamStore, loaded: &Loaded) -> Result<()> {
        self.drain()?;
        let slots = self.state_names.len();
        let servers: Vec<(usize, usize)> = self.topology.servers().collect();
        for &(h, s) in &servers {
            let to = self.topology.server_at(h, s);
            for sl in self.slices.iter().flatten().filter(|sl| sl.server == s) {
                let e = &store.entries()[sl.param];
                for slot in 0..slots.min(e.state.len()) {
                    let name = format!("group{h}/state/{}/{}", e.name, self.state_names[slot]);
                    let part = match (h, loaded.tensor(&name)) {
                        (0, _) | (_, None) => e.state[slot]
                            .reshape([e.value.numel()])?
                            .narrow(sl.offset, sl.len)?,
                        (_, Some(saved)) => {
                            let part =
                                saved.get(sl.offset..sl.offset + sl.len).ok_or_else(|| {
                                    Error::checkpoint(&loaded.path, format!("{name} is too short"))
                                })?;
                            Tensor::from_slice(&self.dev, part, [sl.len])?
                        }
                    };
                    self.control
                        .send(Msg {
                            src: COORDINATOR,
                            dst: to,
                            kind: MsgKind::State,
                            target: sl.param as u32,
                            slice: sl.index,
                            version: slot as u64,
                            payload: Some(part).into(),
                        })
                        .into_result()?;
                }
            }
        }
        let scaling = self.restore_loss_scale(loaded)?;
        if slots > 0 || scaling {
            let separate = self.separate_servers();
            for &s in &separate {
                self.command_server(s, Op::StateIn, 0)?;
            }
            if self.topology.servers_on_worker_threads() {
                self.command_peers(|_| true, Op::StateIn, 0, &[])?;
                let own = self.link.state_in();
                let own = self.own_outcome(own);
                let peers = self.answers(|_| true, "the updater state it was sent");
                self.conclude(own, peers)?;
            } else {
                self.server_reports(Op::StateIn, separate.len())?;
            }
        }
        self.refresh(true, None)?;
        self.push_fixed(store)?;
        self.settled = true;
        Ok(())
    }

    /// Sends every other worker the values of worker 0's fixed parameters (those no server
    /// updates, such as the layers under an RBM, set from `checkpoint_path` or from the
    /// checkpoint a run resumes from): they reach the workers no other way, and only rank 0
    /// reads checkpoints.
    fn push_fixed(&mut self, store: &ParamStore) -> Result<()> {
        let fixed: Vec<(String, Vec<f32>)> = store
            .entries()
            .iter()
            .filter(|e| !e.trainable)
            .map(|e| Ok((e.name.clone(), e.value.to_vec::<f32>()?)))
            .collect::<Result<_>>()?;
        if fixed.is_empty() || self.peers.is_empty() {
            return Ok(());
        }
        for i in 0..self.peers.len() {
            self.peers[i].answer = None;
            let to = control_addr(self.peers[i].addr);
            let msg = control::fixed_command(COORDINATOR, to, &fixed, &self.dev)?;
            self.control.send(msg).into_result()?;
        }
        self.answers(|_| true, "the values of its fixed parameters")
            .map(|_| ())
    }

    /// With loss scaling: restores the coordinator's scaler from `loaded` and sends its state
    /// to every server that holds slices (each keeps a copy; `State` messages of target
    /// [`server::LOSS_SCALER_STATE`]). Whether there is loss scaling.
    fn restore_loss_scale(&mut self, loaded: &Loaded) -> Result<bool> {
        let Some(scaler) = &mut self.scaler else {
            return Ok(false);
        };
        scaler.restore_from(loaded)?;
        let state = scaler.state();
        for s in slices::holders(&self.slices) {
            self.control
                .send(Msg {
                    src: COORDINATOR,
                    dst: self.topology.server_at(0, s),
                    kind: MsgKind::State,
                    target: server::LOSS_SCALER_STATE,
                    slice: 0,
                    version: 0,
                    payload: Some(Tensor::from_slice(&self.dev, &state, [state.len()])?).into(),
                })
                .into_result()?;
        }
        Ok(true)
    }

    /// All workers: the factor between one worker's batch and a step's.
    pub fn workers(&self) -> usize {
        self.topology.cluster().nworkers()
    }

    /// One step of every worker; `net` and `store` are worker 0's. The workers of group 0
    /// finish it together (the others report it while the next one starts); other groups
    /// finish it before the next step when `cluster.staleness` is 0, and at most that many
    /// steps later otherwise.
    pub fn train_step(
        &mut self,
        net: &mut NeuralNet,
        store: &mut ParamStore,
        step: u64,
    ) -> Result<()> {
        self.settled = false;
        self.last_step = step;
        let c = self.topology.cluster();
        let (bound, sync) = (c.staleness as usize, c.hogwild_sync_freq());
        // Wait for the groups that lag too far first, then start everyone together (a worker
        // of group 0 must not wait at a bridge for worker 0 meanwhile). Group 0's other
        // workers may not have reported the last step yet: they cannot run ahead of worker 0
        // (they wait for the same servers' values), and taking the new step from their queue
        // as soon as they finish the last spares them a round trip to the coordinator.
        for i in 0..self.peers.len() {
            let group0 = self.peers[i].addr.group == 0;
            let allowed = if group0 { 1 } else { bound };
            while self.peers[i].pending > allowed {
                self.take_step(i)?;
            }
            if !group0 {
                self.max_lag = self.max_lag.max(self.peers[i].pending);
            }
        }
        let loss_scale = self.scaler.as_ref().map_or(1.0, |s| {
            norm::worker_loss_scale(s.scale(), self.topology.cluster().nworkers_per_group)
        });
        for i in 0..self.peers.len() {
            let addr = self.peers[i].addr;
            let msg = control::step_command(COORDINATOR, control_addr(addr), step, loss_scale);
            self.control.send(msg).into_result()?;
            self.peers[i].pending += 1;
        }
        net.set_loss_scale(loss_scale);
        let own = self.link.train_step(net, store, &mut *self.algorithm, step);
        let own = self.own_outcome(own);
        self.conclude(own, Ok(()))?;
        // One worker group: worker 0's step is over once every server has updated or skipped
        // its slices, so the verdict is known before the next step's scale is sent.
        if let Some(scaler) = &mut self.scaler {
            scaler.record(step, !self.link.skipped())?;
        }
        match sync {
            Some(freq) if (step + 1).is_multiple_of(freq) => {
                self.drain()?;
                self.sync_server_groups(step)
            }
            _ => Ok(()),
        }
    }

    /// Takes peer `i`'s report of its oldest pending step.
    fn take_step(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + self.timeout();
        while self.peers[i].done == 0 && !self.peers[i].failed {
            if !self.pump(deadline)? {
                return Err(Error::invalid(format!(
                    "{} did not finish a step within {} s (raise cluster.timeout if a step takes longer)",
                    self.peers[i].addr,
                    self.timeout().as_secs()
                )));
            }
        }
        if self.peers[i].failed {
            self.check()?;
        }
        self.peers[i].done -= 1;
        self.peers[i].pending -= 1;
        Ok(())
    }

    /// Waits until every group has finished every step it was given.
    fn drain(&mut self) -> Result<()> {
        for i in 0..self.peers.len() {
            while self.peers[i].pending > 0 {
                self.take_step(i)?;
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
        self.command_peers(|_| true, Op::Metrics, 0, &[])?;
        let mut sum = own;
        for theirs in self.answers(|_| true, "a request for its metrics")? {
            for ((name, v), (other, x)) in sum.iter_mut().zip(theirs) {
                debug_assert_eq!(*name, other);
                *v += x;
            }
        }
        let n = (self.peers.len() + 1) as f64;
        let mut metrics: Vec<(String, f64)> = sum.into_iter().map(|(k, v)| (k, v / n)).collect();
        if let Some(scaler) = &mut self.scaler {
            metrics.extend(scaler.read_metrics());
        }
        Ok(metrics)
    }

    /// The loss scaler of the workers, with loss scaling.
    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// Restores the other workers' layer states (worker 0's are the caller's).
    pub fn restore_layer_states(&mut self, states: &[(String, Vec<u64>)]) -> Result<()> {
        self.drain()?;
        self.command_peers(|_| true, Op::Restore, 0, states)?;
        self.answers(|_| true, "a restore of its layers' states")
            .map(|_| ())
    }

    /// Messages and payload bytes that went from one rank to another so far, parameter
    /// traffic and bridges together (none with one rank).
    pub fn traffic_between_processes(&self) -> (u64, u64) {
        let t = self.traffic();
        (t.messages, t.bytes)
    }

    /// What crossed between ranks so far (sent by this process's ranks), the training traffic
    /// and the control plane apart.
    pub fn traffic(&self) -> Traffic {
        self.fabric.traffic()
    }

    /// What carries messages between the ranks ("threads", "MPI", ...).
    pub fn engine(&self) -> &'static str {
        self.fabric.engine()
    }

    /// Where the workers and servers live.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The topology, for `--dry-run` and logs.
    pub fn describe(&self) -> String {
        self.describe_over(self.fabric.engine())
    }

    /// [`Cluster::describe`], saying the ranks talk over `engine` (a plan made in one process
    /// for ranks that will run over MPI, say).
    pub fn describe_over(&self, engine: &str) -> String {
        let c = self.topology.cluster();
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
            if self.topology.servers_on_worker_threads() {
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
        let mut loads = vec![0; c.nservers_per_group];
        for sl in self.slices.iter().flatten() {
            loads[sl.server] += sl.len;
        }
        for (i, load) in loads.iter().enumerate() {
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
        if c.collective {
            s.push_str(
                "  gradients summed and fresh values broadcast through collectives (NCCL between GPUs, in memory between emulated processes), not messages to the servers\n",
            );
        }
        if self.topology.separate_memory() {
            s.push_str(&format!(
                "{} ranks (processes), each with memory of its own, over {}:\n",
                self.topology.ranks(),
                engine
            ));
            s.push_str(&self.topology.describe_ranks(&self.slices, &self.names));
        }
        s
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Starts `workers` and `servers` on threads of their own; each thread's result says whether
/// it failed.
fn spawn(workers: Vec<PeerWorker>, servers: Vec<Server>) -> Result<Vec<JoinHandle<bool>>> {
    let mut threads = Vec::new();
    for w in workers {
        let name = format!("singa-{}", w.link.addr()).replace(' ', "-");
        threads.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || w.run())
                .map_err(|e| Error::invalid(format!("cannot start a worker: {e}")))?,
        );
    }
    for s in servers {
        let name = format!("singa-{}", s.transport.addr()).replace(' ', "-");
        threads.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || s.run())
                .map_err(|e| Error::invalid(format!("cannot start a server: {e}")))?,
        );
    }
    Ok(threads)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.peers.len() {
            let addr = self.peers[i].addr;
            let _ = self.command(addr, Op::Stop, 0, &[]);
        }
        for s in self.separate_servers() {
            let _ = self.command_server(s, Op::Stop, 0);
        }
        // Workers still waiting for values stop waiting.
        self.link.tell_stopped();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for t in self.nodes.drain(..) {
            let _ = t.join();
        }
    }
}
