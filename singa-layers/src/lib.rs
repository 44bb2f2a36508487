//! # singa-layers
//!
//! The built-in layers, updaters and learning-rate schedules of singa. Every layer is written
//! against the [`Device`](singa_core::Device) trait only, so it runs on any device; every
//! layer's backward pass is checked against finite differences ([`gradcheck`]).
//!
//! | type | what it computes |
//! | --- | --- |
//! | `shard_data` | batches from a shard, as `data` (f32) and `label` (i32) outputs |
//! | `image_data` | images from a shard, normalised, randomly cropped and mirrored in training |
//! | `text_data` | character ids of a text in streams, and the next ids as labels |
//! | `inner_product` | `y = x·W + b` |
//! | `embedding`, `one_hot` | a learned vector, or the indicator vector, per integer id |
//! | `gru`, `lstm` | one step of a gated recurrent unit or of an LSTM cell |
//! | `recurrent_state` | the state an unrolled cell carries from one batch to the next |
//! | `rbm_vis`, `rbm_hid` | the visible and hidden units of an RBM, trained by contrastive divergence |
//! | `relu`, `sigmoid`, `tanh`, `stanh`, `activation` | elementwise activations |
//! | `dropout` | inverted dropout in training, identity in testing |
//! | `convolution` | 2-D convolution with stride, padding and groups |
//! | `pooling` | 2-D max or average pooling |
//! | `lrn` | local response normalisation across channels |
//! | `batch_norm` | batch normalisation with running statistics |
//! | `concat`, `slice`, `split` | join, cut or copy features along an axis |
//! | `flatten`, `reshape` | the same features with another shape |
//! | `softmax` | class probabilities |
//! | `argsort` | the indices of the top-k scores |
//! | `accuracy` | top-k accuracy as a metric |
//! | `softmax_loss` | softmax cross-entropy; reports loss and accuracy |
//! | `euclidean_loss` | `½‖p − t‖²` per sample (and `‖p − t‖²` as a metric) |

#![warn(missing_docs)]

pub mod activation;
pub mod capability;
pub mod connection;
pub mod conv;
pub mod dropout;
pub mod embedding;
pub mod gradcheck;
pub mod inner_product;
pub mod input;
pub mod loss;
pub mod norm;
pub mod operator;
pub mod output;
pub mod rbm;
pub mod recurrent;
pub mod schedule;
mod sums;
pub mod updaters;

use singa_core::{layer_type, updater_type, Error, LayerType, Result, UpdaterType};

/// The one number a layer keeps as its state (a position in its data, a count of random
/// draws), or an error naming the layer type when a checkpoint holds another number of values.
pub(crate) fn single_state(layer: &str, state: &[u64]) -> Result<u64> {
    match state {
        [v] => Ok(*v),
        _ => Err(Error::invalid(format!(
            "{layer} state has 1 value, got {}",
            state.len()
        ))),
    }
}

/// Every built-in layer type.
pub fn layer_types() -> Vec<LayerType> {
    vec![
        layer_type::<input::ShardData>(),
        layer_type::<input::ImageData>(),
        layer_type::<input::TextData>(),
        layer_type::<inner_product::InnerProduct>(),
        layer_type::<embedding::Embedding>(),
        layer_type::<embedding::OneHot>(),
        layer_type::<recurrent::Gru>(),
        layer_type::<recurrent::Lstm>(),
        layer_type::<recurrent::RecurrentState>(),
        layer_type::<rbm::RbmVis>(),
        layer_type::<rbm::RbmHid>(),
        layer_type::<activation::Relu>(),
        layer_type::<activation::Sigmoid>(),
        layer_type::<activation::Tanh>(),
        layer_type::<activation::STanh>(),
        layer_type::<activation::Activation>(),
        layer_type::<dropout::Dropout>(),
        layer_type::<conv::Convolution>(),
        layer_type::<conv::Pooling>(),
        layer_type::<norm::Lrn>(),
        layer_type::<norm::BatchNorm>(),
        layer_type::<connection::Concat>(),
        layer_type::<connection::Slice>(),
        layer_type::<connection::Split>(),
        layer_type::<connection::Flatten>(),
        layer_type::<connection::Reshape>(),
        layer_type::<output::Softmax>(),
        layer_type::<output::ArgSort>(),
        layer_type::<output::Accuracy>(),
        layer_type::<loss::SoftmaxLoss>(),
        layer_type::<loss::EuclideanLoss>(),
    ]
}

/// Every built-in updater type.
pub fn updater_types() -> Vec<UpdaterType> {
    vec![
        updater_type::<updaters::Sgd>(),
        updater_type::<updaters::Nesterov>(),
        updater_type::<updaters::AdaGrad>(),
        updater_type::<updaters::RmsProp>(),
        updater_type::<updaters::Adam>(),
        updater_type::<updaters::AdamW>(),
        updater_type::<updaters::AdaDelta>(),
        updater_type::<updaters::AdaMax>(),
    ]
}
