//! A cost model of synchronous data-parallel training: what a step of a job would take on `k`
//! workers, each with a server beside it that owns `1/k` of every parameter (AllReduce's
//! layout; the runtime keeps parameters under `MIN_SLICE · k` values whole on one server,
//! which the model does not), given the link's bandwidth and latency.
//!
//! The compute comes from measurements here: every layer's forward and backward timed on one
//! worker with the batch a worker would get (`batch / k`), and every parameter's update and
//! gradient sum timed on its full size. The model then replays a step:
//!
//! 1. forward, then backward layer by layer from the top; a parameter's gradient is ready when
//!    the layer that computes it is done;
//! 2. each ready gradient goes out on the worker's link: `(k − 1)/k` of its bytes (the slices
//!    other servers own), after the gradients before it, plus the latency;
//! 3. the server beside the worker sums the `k` gradients of its slice and updates it, on the
//!    worker's core, once the backward pass has freed the core (the runtime updates in gaps of
//!    the backward pass already, so the model is pessimistic here);
//! 4. the fresh slice goes to the other workers on the same outgoing link, after the
//!    gradients; all workers alike, what comes in mirrors what goes out.
//!
//! The step ends when the core is free and every fresh slice has arrived. All workers are
//! alike, so one worker's timeline is the cluster's. What the model leaves out: contention
//! between workers that share a machine (memory bandwidth, cores), and stragglers.

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
            ..validated.device.clone()
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
    Ok(Measured {
        batch,
        forward,
        backward,
        params,
    })
}

/// A predicted step.
#[derive(Clone, Copy, Debug)]
pub struct Prediction {
    /// Seconds of forward and backward on one worker.
    pub compute: f64,
    /// Seconds a step waits for the network beyond the compute and the updates.
    pub exposed_comm: f64,
    /// Seconds per step.
    pub step: f64,
    /// Samples per second over all workers.
    pub throughput: f64,
    /// Bytes each worker sends per step (and receives).
    pub bytes: f64,
}

/// Replays a step of `k` workers with costs `m` (measured at `m.batch` per worker) over
/// `link`.
pub fn predict(m: &Measured, k: usize, link: Link) -> Prediction {
    let kf = k as f64;
    let share = (kf - 1.0) / kf;
    // Gradients, in the order the backward pass completes them.
    let mut t = m.forward;
    let mut ready: Vec<(f64, usize)> = Vec::new();
    for (secs, done) in &m.backward {
        t += secs;
        ready.extend(done.iter().map(|&p| (t, p)));
    }
    let compute = t;
    let wire = |p: usize| share * m.params[p].0 as f64;
    let send = |free: &mut f64, at: f64, bytes: f64| {
        *free = free.max(at) + bytes / link.bandwidth + link.latency;
        *free
    };
    // Every worker sends the slices the other servers own; all workers alike, the slices of
    // this worker's server arrive from the others when its own sends are done.
    let mut out_free = 0.0;
    let arrived: Vec<f64> = ready
        .iter()
        .map(|&(at, p)| {
            if k > 1 {
                send(&mut out_free, at, wire(p))
            } else {
                at
            }
        })
        .collect();
    // The server sums and updates its slices on the worker's core, after the backward pass.
    let mut core_free = compute;
    let mut updated = Vec::with_capacity(ready.len());
    for (&(_, p), &arrival) in ready.iter().zip(&arrived) {
        let (_, update, sum) = m.params[p];
        core_free = core_free.max(arrival) + (update + (kf - 1.0) * sum) / kf;
        updated.push(core_free);
    }
    // Then it sends the fresh slices to the other workers, on the same outgoing link, after
    // the gradients (queued earlier); the fresh slices it needs arrive the same way.
    let mut last = core_free;
    if k > 1 {
        for (&(_, p), &done) in ready.iter().zip(&updated) {
            last = last.max(send(&mut out_free, done, wire(p)));
        }
    }
    let step = core_free.max(last);
    let updates: f64 = m
        .params
        .iter()
        .map(|&(_, u, s)| (u + (kf - 1.0) * s) / kf)
        .sum();
    let bytes: f64 = if k > 1 {
        ready.iter().map(|&(_, p)| 2.0 * wire(p)).sum()
    } else {
        0.0
    };
    Prediction {
        compute,
        exposed_comm: (step - compute - updates).max(0.0),
        step,
        throughput: (m.batch * k) as f64 / step,
        bytes,
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
        }
    }

    const FAST: Link = Link {
        bandwidth: 1e15,
        latency: 0.0,
    };

    #[test]
    fn one_worker_computes_then_updates() {
        let p = predict(&measured(), 1, FAST);
        assert!((p.step - (4e-3 + 8e-4)).abs() < 1e-12, "{p:?}");
        assert_eq!(p.bytes, 0.0);
        assert!((p.throughput - 32.0 / 4.8e-3).abs() < 1e-6);
    }

    #[test]
    fn a_free_network_leaves_compute_and_shared_updates() {
        // Two workers: each updates half of each parameter after summing two gradients.
        let p = predict(&measured(), 2, FAST);
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
        let slow = Link {
            bandwidth: 1e6,
            latency: 0.0,
        };
        let p = predict(&measured(), 2, slow);
        assert!(p.step > 4.0 && p.step < 4.01, "{p:?}");
        assert!(p.exposed_comm > 3.9, "{p:?}");
    }
}
