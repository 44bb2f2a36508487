//! A rank other than 0: it builds its own workers and servers, tells the coordinator it is
//! ready (or why it cannot be), and runs them until the coordinator stops them.

use super::build::{self, Plan};
use super::control::{self, Op, Outcome};
use super::topology::{node_addr, Topology};
use super::{boxed, spawn, worker_device};
use crate::config::{DeviceConfig, JobConfig, Validated};
use crate::partition::Exchanges;
use crate::registry::Registry;
use singa_comm::Fabric;
use singa_core::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// Called by each worker of a rank as it starts a step, with the step (for measurements:
/// `singa bench` counts the allocations of the warm steps on every rank).
pub type StepHook = Arc<dyn Fn(u64) + Send + Sync>;

/// Runs rank `rank` (not 0) of `job` over `fabric` until the coordinator (rank 0) stops it.
/// `threads` is `--threads`, shared by the workers this OS process runs; `on_step`, if any,
/// sees every step its workers start. An error if the rank cannot start (said to the
/// coordinator too) or one of its workers or servers failed (which said why to the
/// coordinator itself).
pub fn run_rank(
    job: &JobConfig,
    registry: &Registry,
    fabric: &dyn Fabric,
    rank: usize,
    threads: Option<usize>,
    on_step: Option<StepHook>,
) -> Result<()> {
    let validated = job.validate(registry);
    run_validated(validated, registry, fabric, rank, threads, on_step)
}

/// [`run_rank`] with the job validated already (or why it is not valid, which the rank
/// reports).
pub(super) fn run_validated(
    validated: Result<Validated>,
    registry: &Registry,
    fabric: &dyn Fabric,
    rank: usize,
    threads: Option<usize>,
    on_step: Option<StepHook>,
) -> Result<()> {
    let mut ends = fabric.take_rank(rank)?;
    let mut me = boxed(ends.take(node_addr(rank))?);
    let host = crate::device::create(&DeviceConfig::cpu(1), None)?;
    let built = (|| {
        let Validated { job, schedule } = validated?;
        let topology = Topology::new(&job.cluster, fabric.ranks());
        let timeout = Duration::from_secs(job.cluster.timeout_secs);
        let bridges = job.cluster.nworkers_per_group > 1;
        let exchanges =
            Exchanges::for_rank(timeout, &mut ends, &topology.rank_workers(rank), bridges)?;
        let plan = Plan {
            job: &job,
            registry,
            schedule: &schedule,
            topology: &topology,
            worker_device: worker_device(&job, &topology, fabric, threads),
            exchanges: &exchanges,
            on_step: on_step.clone(),
            fabric,
        };
        build::build_rank(&plan, &mut ends, None)
    })();
    let (outcome, parts) = match built {
        Ok(parts) => (Outcome::Done(Vec::new()), Ok(parts)),
        Err(e) => {
            let e = e.context(format!("rank {rank}"));
            (Outcome::Failed(e.to_string()), Err(e))
        }
    };
    let report = control::report(node_addr(rank), Op::Ready, 0, &outcome, &host)?;
    me.send(report).into_result()?;
    let parts = parts?;
    let threads = spawn(parts.workers, parts.servers)?;
    let mut failed = 0;
    for t in threads {
        failed += usize::from(t.join().unwrap_or(true));
    }
    match failed {
        0 => Ok(()),
        n => Err(Error::invalid(format!(
            "rank {rank}: {n} of its workers and servers failed (the coordinator says why)"
        ))),
    }
}
