//! What a built-in layer computes in the test phase, in a vocabulary an exporter maps to
//! another framework's operators (ONNX, say) without knowing the layer types.
//!
//! A layer describes itself once it is set up, from the values it computes with (its window
//! geometry, its constants), so nothing here re-reads a job file. The shapes of its inputs and
//! outputs are the net's; its parameters are the ones it created, in that order.

use singa_core::{ConvShape, PoolShape, UnaryOp};
use std::fmt;

/// A layer's computation in the test phase.
#[derive(Clone, Debug, PartialEq)]
pub enum Operator {
    /// An input layer: output 0 is the prepared data, output 1 the labels.
    Input(Preprocessing),
    /// Every output is a copy of the only input (dropout in testing, split).
    Identity,
    /// `y = x·W (+ b)` with the input seen as `[rows, features]`, the features its dimensions
    /// from `axis` on; params `weight` (`[in, out]`, or `[out, in]` when `transposed`) and,
    /// with `bias`, `bias` `[out]`.
    InnerProduct {
        /// Whether the weight is stored as `[out, in]`.
        transposed: bool,
        /// Whether a bias is added.
        bias: bool,
        /// The input's first feature dimension (1: `[batch, features]`).
        axis: usize,
    },
    /// 2-D convolution; params `weight` `[filters, channels/groups, kh, kw]` and, with `bias`,
    /// `bias` `[filters]`.
    Convolution {
        /// The geometry (the batch is the net's).
        shape: ConvShape,
        /// Whether a bias is added.
        bias: bool,
    },
    /// 2-D max or average pooling with Caffe's output size and divisor (see [`PoolShape`]).
    Pooling(PoolShape),
    /// Local response normalisation across channels: `y = x · (k + alpha/size · Σ x²)^(−beta)`
    /// over the `size` channels around each.
    Lrn {
        /// Channels in a window (odd).
        size: usize,
        /// Scale of the sum of squares.
        alpha: f32,
        /// The exponent.
        beta: f32,
        /// The offset.
        k: f32,
    },
    /// Batch normalisation with the running statistics: params `gamma`, `beta`, `mean`, `var`,
    /// per channel (axis 1).
    BatchNorm {
        /// Added to the variance.
        eps: f32,
    },
    /// An elementwise function.
    Unary(UnaryOp),
    /// Softmax over each sample's values (the input seen as `[batch, features]`).
    Softmax,
    /// The inputs joined along `axis`.
    Concat {
        /// The dimension joined along.
        axis: usize,
    },
    /// The input cut along `axis` into the outputs (their sizes are the outputs' shapes).
    Slice {
        /// The dimension cut.
        axis: usize,
    },
    /// The same values in the output's shape (flatten, reshape).
    Reshape,
    /// The indices (`i32`) of the `k` largest values of each sample, largest first, the lower
    /// index first on ties.
    TopK {
        /// How many.
        k: usize,
    },
    /// Softmax cross-entropy of the scores (input 0) against labels (input 1): no output; its
    /// prediction is the softmax of the scores.
    SoftmaxLoss,
    /// Euclidean loss of a prediction (input 0) against a target (input 1): no output.
    EuclideanLoss,
    /// A metric (accuracy): reports a value, produces nothing that other layers read.
    Metric,
}

/// How an input layer turns stored values into its data output in testing:
/// `((value − mean image) · scale − mean) / std`, then a centre crop.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessing {
    /// Multiplies each stored value.
    pub scale: f32,
    /// Subtracted after scaling: one value, or one per channel (none when empty).
    pub mean: Vec<f32>,
    /// A mean image (its file) subtracted before scaling, instead of `mean`.
    pub mean_file: Option<String>,
    /// Divides after the mean: one value, or one per channel.
    pub std: Vec<f32>,
    /// The centre `[height, width]` kept of each image, if cropped.
    pub crop: Option<(usize, usize)>,
}

impl fmt::Display for Preprocessing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[f32]| -> String {
            match v {
                [x] => format!("{x}"),
                _ => format!("{v:?} per channel"),
            }
        };
        let mut steps = Vec::new();
        if let Some(file) = &self.mean_file {
            steps.push(format!("minus the mean image {file}"));
        }
        if self.scale != 1.0 {
            steps.push(format!("times {}", self.scale));
        }
        if !self.mean.is_empty() && self.mean.iter().any(|&m| m != 0.0) {
            steps.push(format!("minus {}", list(&self.mean)));
        }
        if self.std.iter().any(|&s| s != 1.0) {
            steps.push(format!("divided by {}", list(&self.std)));
        }
        if let Some((h, w)) = self.crop {
            steps.push(format!("the centre {h}x{w} of each image"));
        }
        if steps.is_empty() {
            write!(f, "the stored values as they are")
        } else {
            write!(f, "the stored values {}", steps.join(", "))
        }
    }
}

/// A layer type that can say what it computes in testing.
pub trait Describe {
    /// The layer's computation; `None` before it is set up (a shape is not known yet).
    fn operator(&self) -> Option<Operator>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocessing_reads_as_a_sentence() {
        let p = Preprocessing {
            scale: 0.5,
            mean: vec![0.1, 0.2, 0.3],
            mean_file: None,
            std: vec![2.0],
            crop: Some((24, 24)),
        };
        assert_eq!(
            p.to_string(),
            "the stored values times 0.5, minus [0.1, 0.2, 0.3] per channel, divided by 2, the centre 24x24 of each image"
        );
        let plain = Preprocessing {
            scale: 1.0,
            mean: vec![],
            mean_file: None,
            std: vec![1.0],
            crop: None,
        };
        assert_eq!(plain.to_string(), "the stored values as they are");
    }
}
