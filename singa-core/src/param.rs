//! Trainable parameters and how they are initialised.

use crate::device::{DeviceRef, Distribution};
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;
use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// How a parameter's values are drawn before training (SINGA's `ParamGenProto`, plus the
/// fan-scaled methods every modern framework offers).
///
/// `fan_in` and `fan_out` come from the layer: for an inner product they are its input and
/// output sizes; for a convolution, `channels · kernel area` and `filters · kernel area`.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every value is `value`.
    Constant {
        /// The value.
        value: f32,
    },
    /// Uniform on `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f32,
        /// Upper bound.
        high: f32,
    },
    /// Normal with `mean` and `std`.
    Gaussian {
        /// Mean.
        mean: f32,
        /// Standard deviation.
        std: f32,
    },
    /// SINGA's `kGaussianSqrtFanIn`: `N(mean, std) / sqrt(fan_in)`.
    GaussianSqrtFanIn {
        /// Mean before scaling.
        mean: f32,
        /// Standard deviation before scaling.
        std: f32,
    },
    /// SINGA's `kUniformSqrtFanIn`: uniform on `±scale · sqrt(3 / fan_in)`.
    UniformSqrtFanIn {
        /// Multiplies the range.
        scale: f32,
    },
    /// Glorot/Xavier uniform (SINGA's `kUniformSqrtFanInOut`): `±scale · sqrt(6 / (fan_in + fan_out))`.
    XavierUniform {
        /// Multiplies the range.
        scale: f32,
    },
    /// Glorot/Xavier normal: `N(0, scale · sqrt(2 / (fan_in + fan_out)))`.
    XavierNormal {
        /// Multiplies the standard deviation.
        scale: f32,
    },
    /// He/Kaiming uniform: `±scale · sqrt(6 / fan_in)`.
    HeUniform {
        /// Multiplies the range.
        scale: f32,
    },
    /// He/Kaiming normal: `N(0, scale · sqrt(2 / fan_in))`.
    HeNormal {
        /// Multiplies the standard deviation.
        scale: f32,
    },
}

impl Init {
    /// The names accepted in job files, in the order of the enum.
    pub const NAMES: [&'static str; 9] = [
        "constant",
        "uniform",
        "gaussian",
        "gaussian_sqrt_fan_in",
        "uniform_sqrt_fan_in",
        "xavier_uniform",
        "xavier_normal",
        "he_uniform",
        "he_normal",
    ];

    /// What to draw for a tensor with these fans: a constant or a distribution.
    pub fn resolve(&self, fan_in: usize, fan_out: usize) -> Result<Draw> {
        let need = |fan: usize, what: &str| {
            if fan == 0 {
                Err(Error::invalid(format!(
                    "init {self:?} needs a non-zero {what}, which this parameter does not have"
                )))
            } else {
                Ok(fan as f32)
            }
        };
        Ok(match *self {
            Init::Constant { value } => Draw::Constant(value),
            Init::Uniform { low, high } => Draw::Random(Distribution::Uniform { low, high }),
            Init::Gaussian { mean, std } => Draw::Random(Distribution::Gaussian { mean, std }),
            Init::GaussianSqrtFanIn { mean, std } => {
                let s = need(fan_in, "fan-in")?.sqrt();
                Draw::Random(Distribution::Gaussian {
                    mean: mean / s,
                    std: std / s,
                })
            }
            Init::UniformSqrtFanIn { scale } => {
                let r = scale * (3.0 / need(fan_in, "fan-in")?).sqrt();
                Draw::Random(Distribution::Uniform { low: -r, high: r })
            }
            Init::XavierUniform { scale } => {
                let r = scale * (6.0 / need(fan_in + fan_out, "fan-in + fan-out")?).sqrt();
                Draw::Random(Distribution::Uniform { low: -r, high: r })
            }
            Init::XavierNormal { scale } => {
                let std = scale * (2.0 / need(fan_in + fan_out, "fan-in + fan-out")?).sqrt();
                Draw::Random(Distribution::Gaussian { mean: 0.0, std })
            }
            Init::HeUniform { scale } => {
                let r = scale * (6.0 / need(fan_in, "fan-in")?).sqrt();
                Draw::Random(Distribution::Uniform { low: -r, high: r })
            }
            Init::HeNormal { scale } => {
                let std = scale * (2.0 / need(fan_in, "fan-in")?).sqrt();
                Draw::Random(Distribution::Gaussian { mean: 0.0, std })
            }
        })
    }

    /// Initialises `t` on its device; `seed` makes the draw reproducible.
    pub fn apply(
        &self,
        device: &DeviceRef,
        t: &mut Tensor,
        fan_in: usize,
        fan_out: usize,
        seed: u64,
    ) -> Result<()> {
        match self.resolve(fan_in, fan_out)? {
            Draw::Constant(v) => device.fill(t, v as f64),
            Draw::Random(d) => device.random(t, d, seed, 0),
        }
    }
}

/// What an [`Init`] resolves to for a given tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Draw {
    /// Every value the same.
    Constant(f32),
    /// Independent draws.
    Random(Distribution),
}

/// What a layer asks for when it creates a parameter during setup.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// The parameter's name within its layer, e.g. `weight`.
    pub name: RString,
    /// The shape.
    pub shape: Shape,
    /// Inputs feeding each output (for fan-scaled inits).
    pub fan_in: usize,
    /// Outputs fed by each input (for fan-scaled inits).
    pub fan_out: usize,
    /// The layer's default init; the job file may override it.
    pub init: Init,
    /// Whether the updater changes it (false for running statistics and the like).
    pub trainable: bool,
}

impl ParamSpec {
    /// A trainable parameter.
    pub fn new(
        name: &str,
        shape: impl Into<Shape>,
        fan_in: usize,
        fan_out: usize,
        init: Init,
    ) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            shape: shape.into(),
            fan_in,
            fan_out,
            init,
            trainable: true,
        }
    }
}

/// A parameter as a layer holds it: its value and the gradient the layer writes in backward.
///
/// The runtime owns the bookkeeping (learning-rate multipliers, sharing, updater state); the
/// layer sees only tensors. Two layers sharing a parameter (`share_from`) see the same `value`
/// and each has its own `grad`; the runtime sums them before the update.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct Param {
    /// The full name, `<layer>/<param>`.
    pub name: RString,
    /// The current values.
    pub value: Tensor,
    /// The gradient, overwritten by every backward pass.
    pub grad: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_scaled_ranges() {
        let d = Init::XavierUniform { scale: 1.0 }
            .resolve(784, 1000)
            .unwrap();
        let r = (6.0f32 / 1784.0).sqrt();
        assert_eq!(d, Draw::Random(Distribution::Uniform { low: -r, high: r }));
        let d = Init::HeNormal { scale: 1.0 }.resolve(50, 0).unwrap();
        assert_eq!(
            d,
            Draw::Random(Distribution::Gaussian {
                mean: 0.0,
                std: (2.0f32 / 50.0).sqrt()
            })
        );
        assert!(Init::HeNormal { scale: 1.0 }.resolve(0, 10).is_err());
    }
}
