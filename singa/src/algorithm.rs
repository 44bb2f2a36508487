//! TrainOneBatch: how one training iteration runs over a net.
//!
//! SINGA separates the algorithm (back-propagation, back-propagation through time, contrastive
//! divergence) from the net and from where gradients go. An algorithm drives the net's layers
//! through [`NeuralNet::forward_layer`] and [`NeuralNet::backward_layer`] in whatever order and
//! phases it needs, and hands every finished layer to a [`GradientSink`]: the single-worker
//! runtime applies the updater there, a distributed worker sends the gradients to servers.

use crate::config::Algorithm;
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

/// The implementation of `algorithm`.
pub fn create(algorithm: Algorithm) -> Box<dyn TrainOneBatch> {
    match algorithm {
        Algorithm::Bp => Box::new(Bp),
        Algorithm::Bptt => Box::new(Bptt),
    }
}
