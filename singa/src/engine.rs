//! How the trainer's steps are carried out, seen by the trainer: by one worker that updates
//! its own parameters ([`Local`]), or by the workers and servers of a
//! [`Cluster`](crate::cluster::Cluster), in one process or many. The trainer holds worker 0's
//! net and parameters (which its test net shares) and hands them to the engine.

use crate::algorithm::{GradientSink, TrainOneBatch};
use crate::checkpoint::Loaded;
use crate::cluster::Cluster;
use crate::config::Clipping;
use crate::net::NeuralNet;
use crate::params::ParamStore;
use singa_core::{Result, Tensor, UpdateArgs, UpdaterBox};
use singa_layers::schedule::LrSchedule;

/// What the trainer asks of whoever trains.
pub trait Engine: Send {
    /// Trains step `step`: worker 0's `net` and `store`, and every other worker's.
    fn train_step(&mut self, net: &mut NeuralNet, store: &mut ParamStore, step: u64) -> Result<()>;

    /// The training metrics since they were last read, over every worker (`own`: worker 0's).
    fn train_metrics(&mut self, own: Vec<(String, f64)>) -> Result<Vec<(String, f64)>>;

    /// Brings worker 0's values (`store`) to what the job holds as its parameters, to test
    /// them or write them to a checkpoint.
    fn settle(&mut self, store: &mut ParamStore) -> Result<()>;

    /// Brings the updater state of `store` to the job's, and returns the state the checkpoint
    /// must keep beyond it (other server groups').
    fn checkpoint_state(&mut self, store: &mut ParamStore) -> Result<Vec<(String, Tensor)>>;

    /// After `store` was restored from `loaded` (values, and updater state unless
    /// `values_only`): hands it to every worker and server; with `layer_states`, the data
    /// positions too.
    fn restore(
        &mut self,
        store: &ParamStore,
        loaded: &Loaded,
        layer_states: &[(String, Vec<u64>)],
    ) -> Result<()>;

    /// How many workers share each step (a step trains this many batches of worker 0's size).
    fn workers(&self) -> usize;

    /// The workers and servers, when there are any.
    fn cluster(&self) -> Option<&Cluster>;
}

/// One worker that applies the updater to each parameter as soon as its gradient is
/// complete.
pub struct Local {
    updater: UpdaterBox,
    schedule: LrSchedule,
    weight_decay: f32,
    algorithm: Box<dyn TrainOneBatch>,
    /// Parameters whose gradients are complete once a layer's backward is done.
    ready_after: Vec<Vec<usize>>,
    clip: Clipping,
    /// Host space for reading gradients to take their norm (sized once).
    scratch: Vec<f32>,
}

impl Local {
    /// The engine of a job with one worker.
    pub fn new(
        updater: UpdaterBox,
        schedule: LrSchedule,
        weight_decay: f32,
        algorithm: Box<dyn TrainOneBatch>,
        ready_after: Vec<Vec<usize>>,
    ) -> Local {
        Local {
            updater,
            schedule,
            weight_decay,
            algorithm,
            ready_after,
            clip: Clipping::default(),
            scratch: Vec::new(),
        }
    }

    /// Clips the gradients before each update (see [`Clipping`]).
    pub fn with_clipping(mut self, clip: Clipping) -> Local {
        self.clip = clip;
        self
    }
}

/// Applies the updater to each parameter as soon as its last gradient is computed.
struct LocalUpdates<'a> {
    store: &'a mut ParamStore,
    updater: &'a mut UpdaterBox,
    ready_after: &'a [Vec<usize>],
    step: u64,
    lr: f32,
    weight_decay: f32,
    clip: Clipping,
}

impl LocalUpdates<'_> {
    /// Sums parameter `p`'s gradients (one per layer that uses it) into the first, clamped to
    /// `clip.value` when set.
    fn gather(&mut self, p: usize) -> Result<()> {
        let e = &mut self.store.entries_mut()[p];
        let dev = e.value.device().clone();
        if e.grads.len() > 1 {
            let (first, rest) = e.grads.split_at_mut(1);
            for g in rest.iter() {
                dev.axpby(1.0, g, 1.0, &mut first[0])?;
            }
        }
        if let Some(c) = self.clip.value {
            let g = e.grads[0].clone();
            dev.clamp(&g, &mut e.grads[0], -c, c)?;
        }
        Ok(())
    }

    /// Updates parameter `p` with its gathered gradient times `grad_scale`.
    fn update(&mut self, p: usize, grad_scale: f32) -> Result<()> {
        let e = &mut self.store.entries_mut()[p];
        let args = UpdateArgs {
            lr: self.lr * e.lr_mult,
            weight_decay: self.weight_decay * e.wd_mult,
            grad_scale,
        };
        self.updater
            .update(
                self.step,
                &args,
                &mut e.value,
                &e.grads[0],
                e.state.as_mut_slice().into(),
            )
            .into_result()
            .map_err(|err| err.context(format!("updating {}", e.name)))
    }

    /// With `clip.norm`: the scale that brings the global norm of the gathered gradients down
    /// to it (1 when it is below), read through `scratch`.
    fn norm_scale(&mut self, scratch: &mut Vec<f32>) -> Result<f32> {
        let Some(max) = self.clip.norm else {
            return Ok(1.0);
        };
        let mut sum = 0.0f64;
        for &p in self.ready_after.iter().flatten() {
            let g = &self.store.entries()[p].grads[0];
            if scratch.len() < g.numel() {
                scratch.resize(g.numel(), 0.0);
            }
            let part = &mut scratch[..g.numel()];
            g.read_into(part)?;
            sum += part.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
        }
        let norm = sum.sqrt() as f32;
        Ok(if norm > max { max / norm } else { 1.0 })
    }
}

impl GradientSink for LocalUpdates<'_> {
    fn layer_done(&mut self, _: &mut NeuralNet, layer: usize) -> Result<()> {
        for &p in &self.ready_after[layer] {
            self.gather(p)?;
            // With a norm to clip to, the updates wait for every gradient of the step.
            if self.clip.norm.is_none() {
                self.update(p, 1.0)?;
            }
        }
        Ok(())
    }
}

impl Engine for Local {
    fn train_step(&mut self, net: &mut NeuralNet, store: &mut ParamStore, step: u64) -> Result<()> {
        let mut sink = LocalUpdates {
            store,
            updater: &mut self.updater,
            ready_after: &self.ready_after,
            step,
            lr: self.schedule.lr(step),
            weight_decay: self.weight_decay,
            clip: self.clip,
        };
        let done = self.algorithm.train_one_batch(net, step, &mut sink);
        let done = done.and_then(|()| {
            if self.clip.norm.is_none() {
                return Ok(());
            }
            let scale = sink.norm_scale(&mut self.scratch)?;
            for &p in self.ready_after.iter().flatten() {
                sink.update(p, scale)?;
            }
            Ok(())
        });
        done.map_err(|e| crate::finite::explain(e, store))
    }

    fn train_metrics(&mut self, own: Vec<(String, f64)>) -> Result<Vec<(String, f64)>> {
        Ok(own)
    }

    fn settle(&mut self, _: &mut ParamStore) -> Result<()> {
        Ok(())
    }

    fn checkpoint_state(&mut self, _: &mut ParamStore) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    fn restore(&mut self, _: &ParamStore, _: &Loaded, _: &[(String, Vec<u64>)]) -> Result<()> {
        Ok(())
    }

    fn workers(&self) -> usize {
        1
    }

    fn cluster(&self) -> Option<&Cluster> {
        None
    }
}

impl Engine for Cluster {
    fn train_step(&mut self, net: &mut NeuralNet, store: &mut ParamStore, step: u64) -> Result<()> {
        Cluster::train_step(self, net, store, step)
    }

    fn train_metrics(&mut self, own: Vec<(String, f64)>) -> Result<Vec<(String, f64)>> {
        self.read_metrics(own)
    }

    fn settle(&mut self, store: &mut ParamStore) -> Result<()> {
        Cluster::settle(self, store)
    }

    fn checkpoint_state(&mut self, store: &mut ParamStore) -> Result<Vec<(String, Tensor)>> {
        self.gather_states(store)
    }

    fn restore(
        &mut self,
        store: &ParamStore,
        loaded: &Loaded,
        layer_states: &[(String, Vec<u64>)],
    ) -> Result<()> {
        if !layer_states.is_empty() {
            self.restore_layer_states(layer_states)?;
        }
        self.push_restored(store, loaded)
    }

    fn workers(&self) -> usize {
        Cluster::workers(self)
    }

    fn cluster(&self) -> Option<&Cluster> {
        Some(self)
    }
}
