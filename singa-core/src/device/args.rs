//! The plain data the `Device` methods take: views of device memory, and the descriptions
//! of matrix products, elementwise functions, reductions, draws and parameter updates.

use crate::dtype::DType;
use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// An opaque handle to one allocation of a device. Only the device that made it can use it.
pub type BufHandle = u64;

/// A contiguous run of elements inside one allocation.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufView {
    /// The allocation.
    pub handle: BufHandle,
    /// The first element, counted from the start of the allocation.
    pub offset: usize,
    /// The number of elements.
    pub len: usize,
    /// The element type.
    pub dtype: DType,
}

impl BufView {
    /// Whether two views share at least one element.
    pub fn overlaps(&self, other: &BufView) -> bool {
        if self.handle != other.handle || self.len == 0 || other.len == 0 {
            return false;
        }
        let (a0, a1) = (
            self.offset * self.dtype.size(),
            (self.offset + self.len) * self.dtype.size(),
        );
        let (b0, b1) = (
            other.offset * other.dtype.size(),
            (other.offset + other.len) * other.dtype.size(),
        );
        a0 < b1 && b0 < a1
    }

    /// Whether two views are exactly the same elements (an in-place operation).
    pub fn same_region(&self, other: &BufView) -> bool {
        self == other
    }

    /// Fails unless a host buffer of `host_len` bytes holds exactly this view's elements:
    /// the check every device's `write` and `read` make (`op` names which).
    pub fn check_host_len(&self, host_len: usize, op: &str) -> crate::Result<()> {
        let want = self.len * self.dtype.size();
        if host_len != want {
            return Err(crate::Error::invalid(format!(
                "{op}: host buffer of {host_len} bytes for {} elements of {} ({want} bytes)",
                self.len, self.dtype
            )));
        }
        Ok(())
    }
}

/// What kind of device, and how it is set up. Returned by [`Device::info`](crate::Device::info).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    /// The device family: `cpu`, `reference`, `cuda`, ...
    pub kind: RString,
    /// The index of the device among those of its kind (GPU number); 0 for CPUs.
    pub ordinal: u32,
    /// A one-line description for logs, e.g. `cpu (2 threads, avx512)`.
    pub description: RString,
    /// Where its buffers live. Devices that name the same memory space can use each other's
    /// buffers (every CPU and reference device allocates `host` memory, so the workers of one
    /// process can read each other's tensors without copies); a GPU names its own. In the
    /// [`HOST_MEMORY`](crate::device::HOST_MEMORY) space a handle is the address of its
    /// allocation in this process, which transports may read and write directly.
    pub memory_space: RString,
}

/// The shape of a (possibly batched) matrix multiply:
/// for each `p < batch`, `C_p = alpha · op(A_p) · op(B_p) + beta · C_p`.
///
/// Matrices are row-major. `op(A)` is `m × k`: without `trans_a`, element `(i, l)` of `A_p` is at
/// `a[p·stride_a + i·lda + l]`; with `trans_a`, at `a[p·stride_a + l·lda + i]`. `B` likewise with
/// `k × n`. `C_p` is `m × n` at `c[p·stride_c + i·ldc + j]`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmLayout {
    /// Rows of `op(A)` and `C`.
    pub m: usize,
    /// Columns of `op(B)` and `C`.
    pub n: usize,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: usize,
    /// Row stride of `A` as stored.
    pub lda: usize,
    /// Whether `A` is stored transposed.
    pub trans_a: bool,
    /// Row stride of `B` as stored.
    pub ldb: usize,
    /// Whether `B` is stored transposed.
    pub trans_b: bool,
    /// Row stride of `C`.
    pub ldc: usize,
    /// Number of independent products (1 for a plain gemm).
    pub batch: usize,
    /// Element distance between consecutive `A_p`.
    pub stride_a: usize,
    /// Element distance between consecutive `B_p`.
    pub stride_b: usize,
    /// Element distance between consecutive `C_p`.
    pub stride_c: usize,
}

impl GemmLayout {
    /// A single product of dense matrices: `op(A)` is `m × k`, `op(B)` is `k × n`.
    pub fn dense(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> GemmLayout {
        GemmLayout {
            m,
            n,
            k,
            lda: if trans_a { m } else { k },
            trans_a,
            ldb: if trans_b { k } else { n },
            trans_b,
            ldc: n,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        }
    }

    /// The stored (rows, columns) of `A`.
    pub fn a_stored(&self) -> (usize, usize) {
        if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }

    /// The stored (rows, columns) of `B`.
    pub fn b_stored(&self) -> (usize, usize) {
        if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }
}

/// A matrix multiply to run: its layout, operands and scales. When `beta == 0`, `C` is not read.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct GemmArgs {
    /// Shapes and strides.
    pub layout: GemmLayout,
    /// Left operand.
    pub a: BufView,
    /// Right operand.
    pub b: BufView,
    /// Output.
    pub c: BufView,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old `C`.
    pub beta: f32,
}

/// An elementwise function `y = f(x)`.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `x`.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x > 0`, else `slope · x`.
    LeakyRelu {
        /// The slope for negative inputs.
        slope: f32,
    },
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// SINGA's scaled tanh, `1.7159 · tanh(2x / 3)` (LeCun's choice for MLPs).
    ScaledTanh,
    /// `e^x`.
    Exp,
    /// Natural logarithm.
    Log,
    /// Square root.
    Sqrt,
    /// `x²`.
    Square,
    /// `|x|`.
    Abs,
    /// `-1`, `0` or `1`.
    Sign,
    /// `-x`.
    Neg,
    /// `x` held to `[min, max]` (a bound of ±∞ clamps one side only); the gradient passes
    /// where `min ≤ x ≤ max`, as in PyTorch.
    Clamp {
        /// The lower bound.
        min: f32,
        /// The upper bound.
        max: f32,
    },
}

impl UnaryOp {
    /// The amplitude of [`UnaryOp::ScaledTanh`].
    pub const STANH_A: f32 = 1.7159;
    /// The input scale of [`UnaryOp::ScaledTanh`].
    pub const STANH_B: f32 = 2.0 / 3.0;
}

/// An elementwise function `y = f(a, b)` of two tensors of the same length.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b`.
    Div,
    /// `max(a, b)`.
    Max,
    /// `min(a, b)`.
    Min,
}

/// How [`Device::reduce`](crate::Device::reduce) combines values.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Maximum.
    Max,
}

/// A tensor seen as `outer × mid × inner` (row-major), the layout every broadcast and reduction
/// works on. A bias over the columns of a `rows × cols` matrix is `(rows, cols, 1)`; over the
/// channels of an NCHW tensor, `(n, c, h·w)`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims3 {
    /// Product of the dimensions before the middle one.
    pub outer: usize,
    /// The middle dimension.
    pub mid: usize,
    /// Product of the dimensions after the middle one.
    pub inner: usize,
}

impl Dims3 {
    /// `outer · mid · inner`.
    pub fn numel(&self) -> usize {
        self.outer * self.mid * self.inner
    }
}

/// A distribution for [`Device::random`](crate::Device::random).
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Uniform on `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f32,
        /// Upper bound.
        high: f32,
    },
    /// Normal.
    Gaussian {
        /// Mean.
        mean: f32,
        /// Standard deviation.
        std: f32,
    },
    /// `scale` with probability `p`, else 0 (a dropout mask with `scale = 1/p`).
    Bernoulli {
        /// Probability of `scale`.
        p: f32,
        /// The value drawn with probability `p`.
        scale: f32,
    },
}

/// Hyper-parameters of one fused SGD step, see [`Device::sgd_update`](crate::Device::sgd_update).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct SgdArgs {
    /// Learning rate (already multiplied by the parameter's `lr_mult` and the schedule).
    pub lr: f32,
    /// Momentum (ignored without a momentum buffer).
    pub momentum: f32,
    /// L2 weight decay (already multiplied by the parameter's `wd_mult`).
    pub weight_decay: f32,
    /// Nesterov's variant of momentum.
    pub nesterov: bool,
    /// Multiplies the gradient first (e.g. `1 / number of workers`).
    pub grad_scale: f32,
}

/// An adaptive update rule. With `d = grad_scale·g` (plus `weight_decay·w` unless the decay
/// is decoupled):
/// - AdaGrad: `s1 += d²`, `w -= lr·d / (√s1 + eps)`;
/// - RMSProp: `s1 = rho·s1 + (1−rho)·d²`, `w -= lr·d / (√s1 + eps)`;
/// - Adam: `s1 = β1·s1 + (1−β1)·d`, `s2 = β2·s2 + (1−β2)·d²`,
///   `w -= lr·(s1/c1) / (√(s2/c2) + eps)` with the bias corrections `c1 = 1−β1ᵗ`,
///   `c2 = 1−β2ᵗ`; with decoupled decay (AdamW), first `w -= lr·weight_decay·w`.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub enum AdaptiveRule {
    /// Duchi et al.'s AdaGrad.
    AdaGrad {
        /// Added to the root for stability.
        eps: f32,
    },
    /// Hinton's RMSProp.
    RmsProp {
        /// Decay of the squared-gradient average.
        rho: f32,
        /// Added to the root for stability.
        eps: f32,
    },
    /// Kingma and Ba's Adam, or Loshchilov and Hutter's AdamW.
    Adam {
        /// Decay of the gradient average.
        beta1: f32,
        /// Decay of the squared-gradient average.
        beta2: f32,
        /// Added to the root for stability.
        eps: f32,
        /// `1 − beta1^t` at step `t` (counted from 1).
        correction1: f32,
        /// `1 − beta2^t` at step `t`.
        correction2: f32,
        /// Weight decay applied to the weights directly (AdamW) instead of to the gradient.
        decoupled: bool,
    },
    /// Zeiler's AdaDelta: the first state is the average of squared gradients, the second
    /// the average of squared steps.
    AdaDelta {
        /// Decay of both averages.
        rho: f32,
        /// Added under both roots.
        eps: f32,
    },
    /// Kingma and Ba's AdaMax (Adam with the infinity norm): the first state is the gradient
    /// average, the second the decayed largest gradient magnitude.
    AdaMax {
        /// Decay of the gradient average.
        beta1: f32,
        /// Decay of the largest magnitude.
        beta2: f32,
        /// Added to the largest magnitude.
        eps: f32,
        /// `1 − beta1^t` at step `t` (counted from 1).
        correction1: f32,
    },
}

impl AdaptiveRule {
    /// Whether the rule keeps a second state tensor.
    pub fn needs_second_state(&self) -> bool {
        matches!(
            self,
            AdaptiveRule::Adam { .. } | AdaptiveRule::AdaDelta { .. } | AdaptiveRule::AdaMax { .. }
        )
    }
}

/// The arguments of [`Device::adaptive_update`](crate::Device::adaptive_update).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveArgs {
    /// The rule and its constants.
    pub rule: AdaptiveRule,
    /// Learning rate.
    pub lr: f32,
    /// Weight decay.
    pub weight_decay: f32,
    /// Multiplies the gradient first.
    pub grad_scale: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(handle: u64, offset: usize, len: usize) -> BufView {
        BufView {
            handle,
            offset,
            len,
            dtype: DType::F32,
        }
    }

    #[test]
    fn overlap() {
        assert!(v(1, 0, 10).overlaps(&v(1, 9, 2)));
        assert!(!v(1, 0, 10).overlaps(&v(1, 10, 2)));
        assert!(!v(1, 0, 10).overlaps(&v(2, 0, 10)));
        assert!(!v(1, 0, 0).overlaps(&v(1, 0, 10)));
        assert!(v(1, 3, 4).same_region(&v(1, 3, 4)));
    }
}
