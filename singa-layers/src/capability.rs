//! Optional capabilities of built-in layers, which the runtime uses where it can and which are
//! not part of the plugin interface (the `Layer` trait).
//!
//! A capability is a plain Rust trait that some built-in layer types implement. The runtime
//! asks for it through a function here, given a boxed layer: a layer of another type, or from
//! a plugin library, simply has none, and the runtime takes its general path. Adding or
//! changing a capability thus never changes the interface plugins are built against.

use singa_core::{downcast_layer, downcast_layer_mut, Layer, LayerBox, Result, Tensor};

use crate::inner_product::InnerProduct;
use crate::operator::{Describe, Operator};
use crate::{activation, connection, conv, dropout, input, loss, norm, output};

/// A parameter's gradient computed in blocks of rows. In one process the workers of a group
/// compute it together, each a block of rows over every worker's batch, into one gradient the
/// group shares, so the servers have no sum to make; with ranks apart a worker computes the
/// rows other ranks' servers update first and sends them while it computes the rest.
/// `inner_product` has it for its weight (`dW = xᵀ·dy`: rows `r0..r1` need only columns
/// `r0..r1` of `x`).
pub trait RowGradients {
    /// Asks the layer to leave the gradient of its `param`-th parameter (in the order it
    /// created them) out of `backward`, because the group computes it through
    /// [`RowGradients::param_grad_rows`]. Returns whether the layer agrees; when it does not,
    /// the workers sum whole gradients as for any other layer.
    fn share_param_grad(&mut self, param: usize) -> Result<bool>;

    /// Computes rows `start .. start + grad.shape().dim(0)` (along the first dimension) of the
    /// gradient of the `param`-th parameter over one batch, into `grad`, or adds them to it
    /// when `accumulate`. The batch is given by its `inputs` and `grad_outputs`: this layer's
    /// own, or those of the same layer on another worker of the group. Called only for
    /// parameters [`RowGradients::share_param_grad`] agreed to share.
    fn param_grad_rows(
        &mut self,
        param: usize,
        start: usize,
        inputs: &[Tensor],
        grad_outputs: &[Tensor],
        accumulate: bool,
        grad: &mut Tensor,
    ) -> Result<()>;
}

/// The [`RowGradients`] capability of `layer`, if its type has it.
pub fn row_gradients(layer: &mut LayerBox) -> Option<&mut dyn RowGradients> {
    downcast_layer_mut::<InnerProduct>(layer).map(|l| l as &mut dyn RowGradients)
}

/// Parameters shared by several layers of a net (the steps of an unrolled cell, which share
/// step 0's): a layer with this capability adds its parameters' gradients to what their
/// gradient tensors hold instead of overwriting them, so that all the users of a parameter
/// write one gradient (each product adding into it while it is in the cache) and the runtime
/// keeps no gradient per user and has no sum to make. `gru` and `lstm` have it.
pub trait AccumulateGradients {
    /// Makes `backward` add to the parameters' gradients (`on`) or overwrite them (the
    /// default).
    fn accumulate_param_grads(&mut self, on: bool);
}

/// The [`AccumulateGradients`] capability of `layer`, if its type has it.
pub fn accumulate_gradients(layer: &mut LayerBox) -> Option<&mut dyn AccumulateGradients> {
    use crate::recurrent::{Gru, Lstm};
    if downcast_layer::<Gru>(layer).is_some() {
        return downcast_layer_mut::<Gru>(layer).map(|l| l as &mut dyn AccumulateGradients);
    }
    downcast_layer_mut::<Lstm>(layer).map(|l| l as &mut dyn AccumulateGradients)
}

/// An input of sequences that continue from batch to batch (`text_data`'s streams): whether
/// the next batch starts the data over (a new epoch), where a state carried between batches
/// must start from zeros rather than from the end of the text (char-rnn resets its state at
/// every epoch).
pub trait Sequences {
    /// Whether the next batch this layer reads starts its streams from their beginning again
    /// (false before the first batch: every carried state starts at zero anyway).
    fn next_batch_restarts(&self) -> bool;
}

/// The [`Sequences`] capability of `layer`, if its type has it.
pub fn sequences(layer: &LayerBox) -> Option<&dyn Sequences> {
    downcast_layer::<input::TextData>(layer).map(|l| l as &dyn Sequences)
}

/// What `layer` computes in testing, if it is a built-in layer that is set up; `None` for a
/// plugin's layer (or one not set up).
pub fn operator(layer: &LayerBox) -> Option<Operator> {
    fn of<L: Layer + Describe + 'static>(layer: &LayerBox) -> Option<Option<Operator>> {
        downcast_layer::<L>(layer).map(L::operator)
    }
    of::<input::ShardData>(layer)
        .or_else(|| of::<input::ImageData>(layer))
        .or_else(|| of::<InnerProduct>(layer))
        .or_else(|| of::<activation::Relu>(layer))
        .or_else(|| of::<activation::Sigmoid>(layer))
        .or_else(|| of::<activation::Tanh>(layer))
        .or_else(|| of::<activation::STanh>(layer))
        .or_else(|| of::<activation::Activation>(layer))
        .or_else(|| of::<dropout::Dropout>(layer))
        .or_else(|| of::<conv::Convolution>(layer))
        .or_else(|| of::<conv::Pooling>(layer))
        .or_else(|| of::<norm::Lrn>(layer))
        .or_else(|| of::<norm::BatchNorm>(layer))
        .or_else(|| of::<connection::Concat>(layer))
        .or_else(|| of::<connection::Slice>(layer))
        .or_else(|| of::<connection::Split>(layer))
        .or_else(|| of::<connection::Flatten>(layer))
        .or_else(|| of::<connection::Reshape>(layer))
        .or_else(|| of::<output::Softmax>(layer))
        .or_else(|| of::<output::ArgSort>(layer))
        .or_else(|| of::<output::Accuracy>(layer))
        .or_else(|| of::<loss::SoftmaxLoss>(layer))
        .or_else(|| of::<loss::EuclideanLoss>(layer))
        .flatten()
}
