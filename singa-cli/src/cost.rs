//! A cost model of data-parallel training: what a step of a job would take on `k` workers
//! under each framework, given the link's bandwidth and latency.
//!
//! The compute comes from measurements here: every layer's forward and backward timed on one
//! worker with the batch a worker would get, every parameter's update and gradient sum timed
//! on its full size, and the speed of a memory copy (the runtime copies what it receives
//! from another process into a reused tensor, and fresh values into the worker's own). The
//! model then replays a step, one worker's timeline standing for all (all workers alike):
//!
//! - **AllReduce** (a server beside each worker owning `1/k` of every parameter; the runtime
//!   keeps parameters under `MIN_SLICE · k` values whole on one server, which the model does
//!   not): forward, then backward layer by layer from the top; each ready gradient goes out
//!   on the worker's link, `(k − 1)/k` of its bytes (the slices other servers own), after the
//!   gradients before it, plus the latency; the server beside the worker copies in the
//!   others' slices, sums the `k` gradients and updates, on the worker's core once the
//!   backward pass has freed it (the runtime updates in gaps of the backward pass already, so
//!   the model is pessimistic here); the fresh slice goes to the other workers on the same
//!   outgoing link, and what comes in mirrors what goes out; the worker copies the other
//!   servers' fresh values in (its own server updated its values in place).
//! - **Sandblaster** (`s` servers on machines of their own, each owning `1/s` of every
//!   parameter): each worker sends its whole gradients; each server's link takes in `k/s` of
//!   every gradient, its core sums and updates its slice, its link sends `k/s` of every
//!   fresh value back; the worker's link takes in every fresh value.
//! - **Downpour** (asynchronous groups of one worker, `s` servers of their own): a worker's
//!   step is Sandblaster's with one worker, and the servers serve at most as many steps a
//!   second as their links and cores allow; the groups share that.
//! - **Hogwild** (groups of one worker, each with a server beside it, averaged every `f`
//!   steps): a worker's step computes and updates locally, and every `f` steps the copies
//!   are averaged as AllReduce exchanges values.
//!
//! The step ends when the core is free and every fresh slice has arrived. What the model
//! leaves out: contention between workers that share a machine (memory bandwidth, cores, the
//! router threads' share of a core and the time they wait for it), and stragglers.

use singa::config::JobConfig;
use singa::net::NeuralNet;
use singa::params::ParamStore;
use singa::registry::Registry;
use singa_core::{DType, Error, FieldValue, Phase, Result, Tensor, UpdateArgs};
use std::time::Instant;

/// The link between workers.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Bytes per second, each direction.
    pub bandwidth: f64,
    /// Seconds per message.
    pub latency: f64,
}

/// Measured costs of one worker's step with a given batch.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Samples per worker per step.
    pub batch: usize,
    /// Seconds of forward, over all layers.
    pub forward: f64,
    /// Per layer, top first: (seconds of backward, the parameters it completes).
    pub backward: Vec<(f64, Vec<usize>)>,
    /// Per parameter: (bytes, seconds to update all of it, seconds to add one gradient to
    /// another).
    pub params: Vec<(usize, f64, f64)>,
    /// Seconds per byte of a memory copy.
    pub copy: f64,
}

/// How the workers and servers share the training (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Framework {
    /// A server beside each worker, synchronous.
    AllReduce,
    /// `servers` servers of their own, synchronous.
    Sandblaster {
        /// How many servers.
        servers: usize,
    },
    /// Asynchronous groups of one worker, `servers` servers of their own.
    Downpour {
        /// How many servers.
        servers: usize,
    },
    /// Groups of one worker with a server beside each, averaged every `sync_freq` steps.
    Hogwild {
        /// Steps between averages.
        sync_freq: u64,
    },
}

/// The median of `reps` timings of `f` after `warmup` untimed runs.
fn median_seconds(warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// `job` with every input layer reading `batch` records per step.
fn with_batch(job: &JobConfig, batch: usize) -> JobConfig {
    let mut job = job.clone();
    // One worker is measured, whatever the job's cluster.
    job.cluster = Default::default();
    for l in job.layers.iter_mut().filter(|l| l.srclayers.is_empty()) {
        if l.fields.get("batch_size").is_some() {
            l.fields.set("batch_size", FieldValue::Int(batch as i64));
        }
    }
    job
}

/// Times one worker of `job` (with one thread) at `batch` samples per step: every layer
/// forward and backward, and every trainable parameter's update and gradient sum (medians of
/// `reps` runs).
pub fn measure(
    job: &JobConfig,
    registry: &Registry,
    batch: usize,
    reps: usize,
) -> Result<Measured> {
    let job = with_batch(job, batch);
    let validated = job.validate(registry)?.job;
    let dev = singa::device::create(
        &singa::config::DeviceConfig {
            threads: Some(1),
            ..validated.device.for_worker(&validated.cluster, 0)
        },
        None,
    )?;
    let mut store = ParamStore::new();
    let mut net = NeuralNet::build(&validated, registry, &dev, &mut store, Phase::TRAIN)?;
    let n = net.layers().len();
    let mut forward = 0.0;
    for i in 0..n {
        forward += median_seconds(3, reps, || net.forward_layer(i, Phase::TRAIN))?;
    }
    let mut backward = Vec::with_capacity(n);
    for i in (0..n).rev() {
        let t = median_seconds(3, reps, || net.backward_layer(i, Phase::TRAIN))?;
        let done: Vec<usize> = store
            .entries()
            .iter()
            .enumerate()
            .filter(|(_, e)| e.trainable && e.users.iter().min() == Some(&i))
            .map(|(p, _)| p)
            .collect();
        backward.push((t, done));
    }
    let ut = registry
        .updater(&validated.updater.type_name)
        .ok_or_else(|| Error::invalid("unknown updater"))?;
    let mut updater = (ut.create)(&validated.updater.fields).into_result()?;
    let states = updater.state_names().into_result()?.len();
    let args = UpdateArgs {
        lr: 1e-6,
        weight_decay: 0.0,
        grad_scale: 1.0,
    };
    let mut params = Vec::new();
    for e in store.entries() {
        if !e.trainable {
            params.push((0, 0.0, 0.0));
            continue;
        }
        let shape = e.value.shape();
        let mut value = Tensor::zeros(&dev, shape, DType::F32)?;
        let grad = Tensor::zeros(&dev, shape, DType::F32)?;
        let mut other = Tensor::zeros(&dev, shape, DType::F32)?;
        let mut state: Vec<Tensor> = (0..states)
            .map(|_| Tensor::zeros(&dev, shape, DType::F32))
            .collect::<Result<_>>()?;
        let update = median_seconds(3, reps, || {
            updater
                .update(0, &args, &mut value, &grad, state.as_mut_slice().into())
                .into_result()
        })?;
        let sum = median_seconds(3, reps, || dev.axpby(1.0, &grad, 1.0, &mut other))?;
        params.push((shape.numel() * 4, update, sum));
    }
    // A copy as large as the largest parameter.
    let numel = store
        .entries()
        .iter()
        .map(|e| e.value.shape().numel())
        .max();
    let numel = numel.unwrap_or(1).max(1);
    let from = Tensor::zeros(&dev, [numel], DType::F32)?;
    let mut to = Tensor::zeros(&dev, [numel], DType::F32)?;
    let copy = median_seconds(3, reps, || dev.copy(&from, &mut to))? / (numel * 4) as f64;
    Ok(Measured {
        batch,
        forward,
        backward,
        params,
        copy,
    })
}

/// A predicted step.
#[derive(Clone, Copy, Debug)]
pub struct Prediction {
    /// Seconds of forward and backward on one worker.
    pub compute: f64,
    /// Seconds a step waits for the network and the servers beyond the compute and the
    /// worker's own updates and copies.
    pub exposed_comm: f64,
    /// Seconds per step of a worker.
    pub step: f64,
    /// Samples per second over all workers.
    pub throughput: f64,
    /// Bytes each worker sends per step (and receives).
    pub bytes: f64,
    /// What bounds the step: the compute, a worker's link, the servers' links or cores.
    pub bound: &'static str,
}

/// Replays a step of `k` workers under `framework` with costs `m` (measured at `m.batch`
/// per worker) over `link`.
pub fn predict(m: &Measured, k: usize, link: Link, framework: Framework) -> Prediction {
    match framework {
        Framework::AllReduce => allreduce(m, k, link),
        Framework::Sandblaster { servers } => sandblaster(m, k, servers.max(1), link),
        Framework::Downpour { servers } => downpour(m, k, servers.max(1), link),
        Framework::Hogwild { sync_freq } => hogwild(m, k, sync_freq.max(1), link),
    }
}

/// The forward and backward pass: its seconds, and each parameter with the time its
/// gradient is ready, in that order.
fn backward_pass(m: &Measured) -> (f64, Vec<(f64, usize)>) {
    let mut t = m.forward;
    let mut ready = Vec::new();
    for (secs, done) in &m.backward {
        t += secs;
        ready.extend(done.iter().map(|&p| (t, p)));
    }
    (t, ready)
}

/// Sends `bytes` on a link free from `*free`, starting no earlier than `at`; returns when
/// they have arrived.
fn send(link: Link, free: &mut f64, at: f64, bytes: f64) -> f64 {
    *free = free.max(at) + bytes / link.bandwidth + link.latency;
    *free
}

/// Bytes of parameter `p`.
fn size(m: &Measured, p: usize) -> f64 {
    m.params[p].0 as f64
}

/// Names what bounds a step of `step` seconds, given the seconds of it spent waiting
/// (`exposed`), those of the busiest link (`wire`, with its name) and of a server's core
/// (`server`): a server's core or a link busy half the step or more; else the compute when
/// the step hardly waits; else "compute, then the network": the step waits for gradients to
/// go out and values to come back after its compute, without either being busy throughout.
fn bound_of(step: f64, exposed: f64, wire: (f64, &'static str), server: f64) -> &'static str {
    if server >= 0.5 * step && server >= wire.0 {
        "servers' cores"
    } else if wire.0 >= 0.5 * step {
        wire.1
    } else if exposed < 0.1 * step {
        "compute"
    } else {
        "compute, then the network"
    }
}

fn allreduce(m: &Measured, k: usize, link: Link) -> Prediction {
    let kf = k as f64;
    let share = (kf - 1.0) / kf;
    let (compute, ready) = backward_pass(m);
    let wire = |p: usize| share * size(m, p);
    // Every worker sends the slices the other servers own; all workers alike, the slices of
    // this worker's server arrive from the others when its own sends are done.
    let mut out_free = 0.0;
    let arrived: Vec<f64> = ready
        .iter()
        .map(|&(at, p)| match k {
            1 => at,
            _ => send(link, &mut out_free, at, wire(p)),
        })
        .collect();
    // The server copies in, sums and updates its slices on the worker's core, after the
    // backward pass.
    let mut core_free = compute;
    let mut updated = Vec::with_capacity(ready.len());
    for (&(_, p), &arrival) in ready.iter().zip(&arrived) {
        let (_, update, sum) = m.params[p];
        core_free = core_free.max(arrival) + wire(p) * m.copy + (update + (kf - 1.0) * sum) / kf;
        updated.push(core_free);
    }
    // Then it sends the fresh slices to the other workers, on the same outgoing link, after
    // the gradients (queued earlier); the fresh slices it needs arrive the same way, are
    // received into a reused tensor and copied into the worker's values (its own server's
    // slices it updated in place).
    if k > 1 {
        for (&(_, p), &done) in ready.iter().zip(&updated) {
            let arrival = send(link, &mut out_free, done, wire(p));
            core_free = core_free.max(arrival) + 2.0 * wire(p) * m.copy;
        }
    }
    let step = core_free;
    let bytes: f64 = match k {
        1 => 0.0,
        _ => ready.iter().map(|&(_, p)| 2.0 * wire(p)).sum(),
    };
    // What the core does besides waiting: compute, the server's updates and the copies.
    let work: f64 = ready
        .iter()
        .map(|&(_, p)| {
            let (_, update, sum) = m.params[p];
            let copies = match k {
                1 => 0.0,
                _ => 3.0 * wire(p) * m.copy,
            };
            (update + (kf - 1.0) * sum) / kf + copies
        })
        .sum();
    let busy = compute + work;
    Prediction {
        compute,
        exposed_comm: (step - busy).max(0.0),
        step,
        throughput: (m.batch * k) as f64 / step,
        bytes,
        bound: bound_of(
            step,
            step - busy,
            (bytes / link.bandwidth, "workers' links"),
            0.0,
        ),
    }
}

/// The synchronous step with `s` servers of their own, and the seconds a server's link and
/// core are busy in it.
fn separate_servers(m: &Measured, k: usize, s: usize, link: Link) -> (f64, f64, f64, f64) {
    let (kf, sf) = (k as f64, s as f64);
    let (compute, ready) = backward_pass(m);
    let (mut out_free, mut server_in, mut server_core, mut server_out, mut in_free) =
        (0.0, 0.0, 0.0f64, 0.0, 0.0);
    let mut core_free = compute;
    let (mut server_wire, mut server_busy) = (0.0, 0.0);
    for &(at, p) in &ready {
        let (_, update, sum) = m.params[p];
        // The worker's link carries its whole gradient, a server's link k/s of them.
        let sent = send(link, &mut out_free, at, size(m, p));
        let part = kf * size(m, p) / sf;
        let arrived = send(link, &mut server_in, at, part).max(sent);
        let work = part * m.copy + (update + (kf - 1.0) * sum) / sf;
        server_core = server_core.max(arrived) + work;
        let back = send(link, &mut server_out, server_core, part);
        let fresh = send(link, &mut in_free, server_core, size(m, p)).max(back);
        core_free = core_free.max(fresh) + 2.0 * size(m, p) * m.copy;
        server_wire += part / link.bandwidth;
        server_busy += work;
    }
    (compute, core_free, server_wire, server_busy)
}

fn sandblaster(m: &Measured, k: usize, s: usize, link: Link) -> Prediction {
    let (compute, step, server_wire, server_busy) = separate_servers(m, k, s, link);
    let bytes: f64 = m.params.iter().map(|&(b, _, _)| b as f64).sum();
    let copies = 2.0 * bytes * m.copy;
    // Each link carries the gradients one way and the values the other, one after the
    // other within a step: both directions count.
    let wire = if server_wire > bytes / link.bandwidth {
        (2.0 * server_wire, "servers' links")
    } else {
        (2.0 * bytes / link.bandwidth, "workers' links")
    };
    Prediction {
        compute,
        exposed_comm: (step - compute - copies).max(0.0),
        step,
        throughput: (m.batch * k) as f64 / step,
        bytes,
        bound: bound_of(step, step - compute - copies, wire, server_busy),
    }
}

fn downpour(m: &Measured, k: usize, s: usize, link: Link) -> Prediction {
    // One worker's step with the servers to itself...
    let (compute, alone, server_wire, server_busy) = separate_servers(m, 1, s, link);
    // ...and the steps a second the servers take in, send out and update.
    let server = server_wire.max(server_busy);
    let steps = (k as f64 / alone).min(1.0 / server);
    let step = k as f64 / steps;
    let bytes: f64 = m.params.iter().map(|&(b, _, _)| b as f64).sum();
    let copies = 2.0 * bytes * m.copy;
    let bound = if k as f64 / alone > 1.0 / server {
        if server_wire >= server_busy {
            "servers' links"
        } else {
            "servers' cores"
        }
    } else {
        bound_of(
            alone,
            alone - compute - copies,
            (2.0 * bytes / link.bandwidth, "workers' links"),
            0.0,
        )
    };
    Prediction {
        compute,
        exposed_comm: (step - compute - copies).max(0.0),
        step,
        throughput: m.batch as f64 * steps,
        bytes,
        bound,
    }
}

fn hogwild(m: &Measured, k: usize, f: u64, link: Link) -> Prediction {
    let kf = k as f64;
    let (compute, _) = backward_pass(m);
    let updates: f64 = m.params.iter().map(|&(_, u, _)| u).sum();
    // Every f steps the copies are averaged: AllReduce's exchange of values, with the sums,
    // the copies in and the messages' latency.
    let bytes: f64 =
        m.params.iter().map(|&(b, _, _)| b as f64).sum::<f64>() * 2.0 * (kf - 1.0) / kf;
    let (sums, n): (f64, f64) = m
        .params
        .iter()
        .fold((0.0, 0.0), |(s, n), &(_, _, sum)| (s + sum, n + 1.0));
    let average = match k {
        1 => 0.0,
        _ => {
            bytes / link.bandwidth
                + 2.0 * n * link.latency
                + (kf - 1.0) / kf * sums
                + 1.5 * bytes * m.copy
        }
    };
    let step = compute + updates + average / f as f64;
    Prediction {
        compute,
        exposed_comm: average / f as f64,
        step,
        throughput: (m.batch * k) as f64 / step,
        bytes: bytes / 2.0 / f as f64,
        bound: bound_of(
            step,
            average / f as f64,
            (bytes / link.bandwidth / f as f64, "workers' links"),
            0.0,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two layers: the top one (1 ms backward) completes a 1 MB parameter, the bottom one
    /// (2 ms) a 3 MB one; forward 1 ms; each update 0.4 ms, each gradient sum 0.2 ms.
    fn measured() -> Measured {
        Measured {
            batch: 32,
            forward: 1e-3,
            backward: vec![(1e-3, vec![0]), (2e-3, vec![1])],
            params: vec![(1_000_000, 4e-4, 2e-4), (3_000_000, 4e-4, 2e-4)],
            copy: 0.0,
        }
    }

    const FAST: Link = Link {
        bandwidth: 1e15,
        latency: 0.0,
    };

    /// 1 MB/s, no latency.
    const SLOW: Link = Link {
        bandwidth: 1e6,
        latency: 0.0,
    };

    #[test]
    fn one_worker_computes_then_updates() {
        let p = predict(&measured(), 1, FAST, Framework::AllReduce);
        assert!((p.step - (4e-3 + 8e-4)).abs() < 1e-12, "{p:?}");
        assert_eq!(p.bytes, 0.0);
        assert!((p.throughput - 32.0 / 4.8e-3).abs() < 1e-6);
    }

    #[test]
    fn a_free_network_leaves_compute_and_shared_updates() {
        // Two workers: each updates half of each parameter after summing two gradients.
        let p = predict(&measured(), 2, FAST, Framework::AllReduce);
        let updates = 2.0 * (4e-4 + 2e-4) / 2.0;
        assert!((p.step - (4e-3 + updates)).abs() < 1e-8, "{p:?}");
        assert!(p.exposed_comm < 1e-8);
        // Half of each gradient out, half of each fresh value out: 2 MB in all.
        assert_eq!(p.bytes, 4_000_000.0);
    }

    #[test]
    fn a_slow_network_bounds_the_step() {
        // 1 MB/s out: the gradients' halves (0.5 s, then 1.5 s), then the fresh values'
        // halves (0.5 s, 1.5 s), one after another on the outgoing link: 4 s.
        let p = predict(&measured(), 2, SLOW, Framework::AllReduce);
        assert!(p.step > 4.0 && p.step < 4.01, "{p:?}");
        assert!(p.exposed_comm > 3.9, "{p:?}");
    }

    #[test]
    fn one_separate_server_bounds_many_workers_by_its_link() {
        // Four workers, one server, 1 MB/s: the server's link takes in 4 × 4 MB (16 s) and
        // sends as much back.
        let p = predict(&measured(), 4, SLOW, Framework::Sandblaster { servers: 1 });
        assert!(p.step > 16.0, "{p:?}");
        assert_eq!(p.bound, "servers' links");
        // Four servers share it: each link takes 4 MB in.
        let q = predict(&measured(), 4, SLOW, Framework::Sandblaster { servers: 4 });
        assert!(q.step < p.step / 2.0, "{q:?}");
    }

    #[test]
    fn downpour_workers_scale_until_the_servers_are_busy() {
        // On a free network one worker's step is 4 ms of compute and the update of the last
        // gradient (0.4 ms; the first is updated during the backward pass). The server
        // updates 0.8 ms a step: 1,250 steps a second at most, which ten workers (227 each)
        // would pass.
        let one = predict(&measured(), 1, FAST, Framework::Downpour { servers: 1 });
        let alone = 32.0 / 4.4e-3;
        assert!((one.throughput - alone).abs() < 1e-3 * alone, "{one:?}");
        let many = predict(&measured(), 10, FAST, Framework::Downpour { servers: 1 });
        assert!((many.throughput - 32.0 * 1250.0).abs() < 1.0, "{many:?}");
        assert_eq!(many.bound, "servers' cores");
    }

    #[test]
    fn hogwild_pays_its_average_once_every_sync_freq_steps() {
        // Two workers exchange half of 4 MB each way every 10 steps: 4 s / 10 a step (plus
        // the sums), on top of 4 ms of compute and 0.8 ms of updates.
        let p = predict(&measured(), 2, SLOW, Framework::Hogwild { sync_freq: 10 });
        let average = 4.0 + 2e-4;
        assert!((p.step - (4.8e-3 + average / 10.0)).abs() < 1e-9, "{p:?}");
        let local = predict(&measured(), 1, SLOW, Framework::Hogwild { sync_freq: 10 });
        assert!((local.step - 4.8e-3).abs() < 1e-12, "{local:?}");
    }
}
