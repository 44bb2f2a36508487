//! TrainOneBatch: how one training iteration runs over a net.
//!
//! SINGA separates the algorithm (back-propagation, back-propagation through time, contrastive
//! divergence) from the net and from where gradients go. An algorithm drives the net's layers
//! through [`NeuralNet::forward_layer`] and [`NeuralNet::backward_layer`] in whatever order and
//! phases it needs, and hands every finished layer to a [`GradientSink`]: the single-worker
//! runtime applies the updater there, a distributed worker sends the gradients to servers.
//! One rule binds the order: layers that share one gradient (the steps of an unrolled cell, see
//! `net/shared_grads.rs`) each run backward exactly once per step, in reverse build order (as
//! [`NeuralNet::backward`] does), since the first overwrites the gradient and the others add
//! to it.

use crate::config::{Algorithm, JobConfig};
use crate::net::NeuralNet;
use singa_core::{Phase, Result};

/// Receives the gradients of a layer as soon as its backward pass is done.
pub trait GradientSink {
    /// Layer `layer` of `net` has written its parameter gradients.
    fn layer_done(&mut self, net: &mut NeuralNet, layer: usize) -> Result<()>;
}

/// One training iteration.
pub trait TrainOneBatch: Send {
    /// The algorithm's name in job files.
    fn name(&self) -> &'static str;

    /// Runs iteration `step` on `net`, giving each layer's gradients to `sink` when ready.
    fn train_one_batch(
        &mut self,
        net: &mut NeuralNet,
        step: u64,
        sink: &mut dyn GradientSink,
    ) -> Result<()>;

    /// Runs the net of `phase` (test or validation) over one batch, leaving its metrics in
    /// its layers (SINGA's `TestOneBatch`): by default every layer forward.
    fn test_one_batch(&mut self, net: &mut NeuralNet, phase: Phase) -> Result<()> {
        net.forward(phase)
    }
}

/// Back-propagation for feed-forward nets: every layer forward, then every layer backward in
/// reverse order.
pub struct Bp;

impl TrainOneBatch for Bp {
    fn name(&self) -> &'static str {
        "bp"
    }

    fn train_one_batch(
        &mut self,
        net: &mut NeuralNet,
        _step: u64,
        sink: &mut dyn GradientSink,
    ) -> Result<()> {
        net.forward(Phase::TRAIN)?;
        net.read_step_metrics()?;
        net.backward(Phase::TRAIN, &mut |net, i| sink.layer_done(net, i))
    }
}

/// Back-propagation through time for recurrent nets: BP over the net whose cells the job's
/// validation unrolled ([`crate::config::unroll`]). The steps of a cell share its parameters,
/// so each parameter's gradient is the sum over the steps, truncated at `unroll_len`; after
/// the backward pass each cell's last state is carried into the next batch.
pub struct Bptt;

impl TrainOneBatch for Bptt {
    fn name(&self) -> &'static str {
        "bptt"
    }

    fn train_one_batch(
        &mut self,
        net: &mut NeuralNet,
        step: u64,
        sink: &mut dyn GradientSink,
    ) -> Result<()> {
        Bp.train_one_batch(net, step, sink)?;
        net.carry_state()
    }
}

/// Contrastive divergence for RBMs (`cd_k` Gibbs steps, SINGA's `CDWorker`): every layer
/// forward in the positive phase, then `k` negative phases of each RBM pair (the visible layer
/// reconstructs from the hidden layer's sample, the hidden layer samples again), then the
/// pairs' gradients, the differences of the phases' statistics ([`singa_layers::rbm`]).
/// Layers outside the RBMs are fixed features: the net builds them without trainable
/// parameters.
pub struct Cd {
    /// Gibbs steps per iteration.
    pub k: usize,
}

impl Cd {
    /// One negative phase of every RBM of `net`.
    fn gibbs_step(net: &mut NeuralNet, phase: Phase) -> Result<()> {
        for p in 0..net.rbm_pairs().len() {
            let (vis, hid) = net.rbm_pairs()[p];
            net.forward_layer(vis, phase | Phase::NEGATIVE)?;
            net.forward_layer(hid, phase | Phase::NEGATIVE)?;
        }
        Ok(())
    }
}

impl TrainOneBatch for Cd {
    fn name(&self) -> &'static str {
        "cd"
    }

    fn train_one_batch(
        &mut self,
        net: &mut NeuralNet,
        _step: u64,
        sink: &mut dyn GradientSink,
    ) -> Result<()> {
        net.forward(Phase::TRAIN | Phase::POSITIVE)?;
        for _ in 0..self.k {
            Self::gibbs_step(net, Phase::TRAIN)?;
        }
        net.read_step_metrics()?;
        // Only the RBM layers run backward (the others have nothing to train).
        net.backward(Phase::TRAIN, &mut |net, i| sink.layer_done(net, i))
    }

    /// The positive phase and one reconstruction from the hidden units' means: the visible
    /// layers report the reconstruction error of the batch, and the hidden layers keep the
    /// data's features (what `singa predict --features` reads).
    fn test_one_batch(&mut self, net: &mut NeuralNet, phase: Phase) -> Result<()> {
        net.forward(phase | Phase::POSITIVE)?;
        for p in 0..net.rbm_pairs().len() {
            let (vis, _) = net.rbm_pairs()[p];
            net.forward_layer(vis, phase | Phase::NEGATIVE)?;
        }
        Ok(())
    }
}

/// The implementation of the job's algorithm.
pub fn create(job: &JobConfig) -> Box<dyn TrainOneBatch> {
    match job.algorithm {
        Algorithm::Bp => Box::new(Bp),
        Algorithm::Bptt => Box::new(Bptt),
        Algorithm::Cd => Box::new(Cd { k: job.cd_k }),
    }
}
