//! How the trainer's steps are carried out, seen by the trainer: by one worker that updates
//! its own parameters ([`Local`]), or by the workers and servers of a
//! [`Cluster`](crate::cluster::Cluster), in one process or many. The trainer holds worker 0's
//! net and parameters (which its test net shares) and hands them to the engine.

use crate::algorithm::{GradientSink, TrainOneBatch};
use crate::checkpoint::Loaded;
use crate::cluster::Cluster;
use crate::config::{Clipping, LossScaling};
use crate::loss_scale::LossScaler;
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
/// complete (or, when the step's gradients must be seen together first, to clip them by
/// their norm or to skip a step whose scaled gradients overflowed, once all are).
pub struct Local {
    updater: UpdaterBox,
    schedule: LrSchedule,
    weight_decay: f32,
    algorithm: Box<dyn TrainOneBatch>,
    /// Parameters whose gradients are complete once a layer's backward is done.
    ready_after: Vec<Vec<usize>>,
    clip: Clipping,
    scaler: Option<LossScaler>,
    /// Host space for reading gradients to take their norm (sized once).
    scratch: Vec<f32>,
    /// Where the overflow check adds the gradients up, on the device (see
    /// [`crate::loss_scale::add_sum`]).
    total: Option<Tensor>,
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
            scaler: None,
            scratch: Vec::new(),
            total: None,
        }
    }

    /// Clips the gradients before each update (see [`Clipping`]).
    pub fn with_clipping(mut self, clip: Clipping) -> Local {
        self.clip = clip;
        self
    }

    /// Scales the loss (see [`LossScaling`]).
    pub fn with_loss_scaling(mut self, scaling: LossScaling) -> Local {
        self.scaler = LossScaler::new(scaling);
        self
    }
}

/// Applies the updater to each parameter as soon as its last gradient is computed, or at the
/// end of the step when `deferred`.
struct LocalUpdates<'a> {
    store: &'a mut ParamStore,
    updater: &'a mut UpdaterBox,
    ready_after: &'a [Vec<usize>],
    step: u64,
    lr: f32,
    weight_decay: f32,
    clip: Clipping,
    /// The loss scale of the step: every gradient is this many times the true one.
    loss_scale: f32,
    /// Whether the updates wait for the end of the step ([`LocalUpdates::finish`]).
    deferred: bool,
    /// Whether the end of the step checks the gradients for overflow (loss scaling), so
    /// that clamping them waits for it.
    checks_overflow: bool,
}

impl LocalUpdates<'_> {
    /// Sums parameter `p`'s gradients (one per layer that uses it, but one for a family of
    /// layers that add to one gradient) into the first, clamped to
    /// `clip.value` unless that waits for the overflow check.
    fn gather(&mut self, p: usize) -> Result<()> {
        let e = &mut self.store.entries_mut()[p];
        let dev = e.value.device().clone();
        if e.grads.len() > 1 {
            let (first, rest) = e.grads.split_at_mut(1);
            for g in rest.iter() {
                dev.axpby(1.0, g, 1.0, &mut first[0])?;
            }
        }
        if !self.checks_overflow {
            self.clamp(p)?;
        }
        Ok(())
    }

    /// Clamps parameter `p`'s gathered gradient to `clip.value` (scaled as the gradient is).
    fn clamp(&mut self, p: usize) -> Result<()> {
        let Some(c) = self.clip.value else {
            return Ok(());
        };
        let e = &mut self.store.entries_mut()[p];
        let (dev, g) = (e.value.device().clone(), e.grads[0].clone());
        let bound = c * self.loss_scale;
        dev.clamp(&g, &mut e.grads[0], -bound, bound)
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

    /// The sum of the squares of every gathered gradient (not finite when one value is not),
    /// read through `scratch`.
    fn sum_of_squares(&self, scratch: &mut Vec<f32>) -> Result<f64> {
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
        Ok(sum)
    }

    /// Whether every gathered gradient is finite: their sum, taken on the device into `total`.
    fn all_finite(&self, total: &mut Option<Tensor>) -> Result<bool> {
        for (k, &p) in self.ready_after.iter().flatten().enumerate() {
            crate::loss_scale::add_sum(&self.store.entries()[p].grads[0], total, k == 0)?;
        }
        Ok(crate::loss_scale::read_sum(total)?.is_finite())
    }

    /// The first parameter whose gathered gradient holds a value that is not finite.
    fn nonfinite_gradient(&self) -> Result<String> {
        for &p in self.ready_after.iter().flatten() {
            let e = &self.store.entries()[p];
            if let Some((i, v)) = crate::finite::first_nonfinite(&e.grads[0])? {
                return Ok(format!(
                    "the gradient of {} holds {v} at element {i}",
                    e.name
                ));
            }
        }
        Ok("every gradient is finite".to_string())
    }

    /// The end of a deferred step: with a `scaler`, skips it when a gradient overflowed (seen
    /// in the squares of the norm when clipping by it, else in the gradients' sum on the
    /// device, through `total`); clips by value and by the global norm; then updates every
    /// parameter with its gradient unscaled.
    fn finish(
        &mut self,
        (scratch, total): (&mut Vec<f32>, &mut Option<Tensor>),
        scaler: Option<&mut LossScaler>,
    ) -> Result<()> {
        let mut sum = None;
        if let Some(scaler) = scaler {
            let finite = match self.clip.norm {
                Some(_) => {
                    let s = self.sum_of_squares(scratch)?;
                    sum = Some(s);
                    s.is_finite()
                }
                None => self.all_finite(total)?,
            };
            if let Err(e) = scaler.record(self.step, finite) {
                return Err(crate::finite::append(e, &self.nonfinite_gradient()?));
            }
            if !finite {
                return Ok(());
            }
            if self.clip.value.is_some() {
                for &p in self.ready_after.iter().flatten() {
                    self.clamp(p)?;
                }
                sum = None;
            }
        }
        let mut grad_scale = 1.0 / self.loss_scale;
        if let Some(max) = self.clip.norm {
            let sum = match sum {
                Some(s) => s,
                None => self.sum_of_squares(scratch)?,
            };
            let norm = sum.sqrt() as f32 / self.loss_scale;
            if norm > max {
                grad_scale *= max / norm;
            }
        }
        for &p in self.ready_after.iter().flatten() {
            self.update(p, grad_scale)?;
        }
        Ok(())
    }
}

impl GradientSink for LocalUpdates<'_> {
    fn layer_done(&mut self, _: &mut NeuralNet, layer: usize) -> Result<()> {
        for &p in &self.ready_after[layer] {
            self.gather(p)?;
            if !self.deferred {
                self.update(p, 1.0)?;
            }
        }
        Ok(())
    }
}

impl Engine for Local {
    fn train_step(&mut self, net: &mut NeuralNet, store: &mut ParamStore, step: u64) -> Result<()> {
        let loss_scale = self.scaler.as_ref().map_or(1.0, LossScaler::scale);
        net.set_loss_scale(loss_scale);
        let mut sink = LocalUpdates {
            store,
            updater: &mut self.updater,
            ready_after: &self.ready_after,
            step,
            lr: self.schedule.lr(step),
            weight_decay: self.weight_decay,
            clip: self.clip,
            loss_scale,
            deferred: self.clip.norm.is_some() || self.scaler.is_some(),
            checks_overflow: self.scaler.is_some(),
        };
        let done = self.algorithm.train_one_batch(net, step, &mut sink);
        let done = done.and_then(|()| match sink.deferred {
            true => sink.finish((&mut self.scratch, &mut self.total), self.scaler.as_mut()),
            false => Ok(()),
        });
        done.map_err(|e| crate::finite::explain(e, store))
    }

    fn train_metrics(&mut self, mut own: Vec<(String, f64)>) -> Result<Vec<(String, f64)>> {
        if let Some(s) = &mut self.scaler {
            own.extend(s.read_metrics());
        }
        Ok(own)
    }

    fn settle(&mut self, _: &mut ParamStore) -> Result<()> {
        Ok(())
    }

    fn checkpoint_state(&mut self, store: &mut ParamStore) -> Result<Vec<(String, Tensor)>> {
        match (&self.scaler, store.entries().first()) {
            (Some(scaler), Some(e)) => Ok(vec![scaler.checkpoint_entry(e.value.device())?]),
            _ => Ok(Vec::new()),
        }
    }

    fn restore(&mut self, _: &ParamStore, loaded: &Loaded, _: &[(String, Vec<u64>)]) -> Result<()> {
        match &mut self.scaler {
            Some(scaler) => scaler.restore_from(loaded),
            None => Ok(()),
        }
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
        let mut extra = self.gather_states(store)?;
        if let (Some(scaler), Some(e)) = (self.loss_scaler(), store.entries().first()) {
            extra.push(scaler.checkpoint_entry(e.value.device())?);
        }
        Ok(extra)
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
