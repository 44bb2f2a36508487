//! The `Device` trait: where tensors live and kernels run.
//!
//! Device memory is opaque: a device hands out [`BufHandle`]s and takes [`BufView`]s (a handle,
//! an element offset and a length) in every operation. Nothing outside the device ever sees a
//! pointer or a `&[f32]` into its memory; data moves between host and device only through
//! [`Device::write`] and [`Device::read`]. That keeps a CUDA device, whose memory the host cannot
//! touch, a drop-in for the CPU one.
//!
//! The trait is ABI-stable (`#[sabi_trait]`) so that plugins built as separate shared libraries
//! can run kernels on whatever device the host chose. Its methods are `unsafe` because views are
//! trusted: the safe, checked entry points are the methods of [`DeviceRef`] in [`crate::ops`].
//! Implementations must not panic across the boundary; wrap bodies in
//! [`catch_panic`](crate::catch_panic).

use crate::dtype::DType;
use crate::error::Error;
use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RSlice, RSliceMut, RString};
use abi_stable::StableAbi;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// What kind of device, and how it is set up. Returned by [`Device::info`].
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    /// The device family: `cpu`, `reference`, `cuda`, ...
    pub kind: RString,
    /// The index of the device among those of its kind (GPU number); 0 for CPUs.
    pub ordinal: u32,
    /// A one-line description for logs, e.g. `cpu (2 threads, avx512)`.
    pub description: RString,
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

/// How [`Device::reduce`] combines values.
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

/// A distribution for [`Device::random`].
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

/// Hyper-parameters of one fused SGD step, see [`Device::sgd_update`].
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
}

/// The arguments of [`Device::adaptive_update`].
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

/// A place where tensors live and kernels run.
///
/// Every method that takes views is `unsafe`: the caller promises the views come from this
/// device's own allocations, lie inside them, and have the dtypes and lengths the method
/// documents; output views do not overlap input views unless the method allows it (elementwise
/// methods allow an output that is *exactly* an input). [`DeviceRef`]'s safe methods check all
/// of that. Unless a method says otherwise, its tensors are `F32`.
///
/// Methods are added only at the end (ABI rule of `#[sabi_trait]`).
#[sabi_trait]
pub trait Device: Send + Sync {
    /// What this device is.
    fn info(&self) -> DeviceInfo;

    /// Allocates `len` zeroed elements of `dtype`.
    fn alloc(&self, dtype: DType, len: usize) -> RResult<BufHandle, Error>;

    /// Returns an allocation made by [`Device::alloc`] with the same `dtype` and `len`.
    ///
    /// # Safety
    /// `handle` came from this device's `alloc(dtype, len)` and is not used afterwards.
    unsafe fn free(&self, handle: BufHandle, dtype: DType, len: usize);

    /// Copies host bytes into `dst` (`src.len() == dst.len · dtype size`). Any dtype.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn write(&self, dst: BufView, src: RSlice<'_, u8>) -> RResult<(), Error>;

    /// Copies `src` into host bytes (`dst.len() == src.len · dtype size`). Any dtype.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn read(&self, src: BufView, dst: RSliceMut<'_, u8>) -> RResult<(), Error>;

    /// Copies `src` into `dst` (same dtype and length). Any dtype.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn copy(&self, src: BufView, dst: BufView) -> RResult<(), Error>;

    /// Copies a `rows × cols` block between row-major matrices with row strides `src_ld` and
    /// `dst_ld` (the views start at the block's first element). Any dtype.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn copy2d(
        &self,
        src: BufView,
        src_ld: usize,
        dst: BufView,
        dst_ld: usize,
        rows: usize,
        cols: usize,
    ) -> RResult<(), Error>;

    /// Converts `src` into `dst`'s dtype (same length). Floats round to nearest; floats to
    /// integers truncate toward zero and saturate.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn cast(&self, src: BufView, dst: BufView) -> RResult<(), Error>;

    /// Sets every element of `dst` to `value` (converted to `dst`'s dtype). Any dtype.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn fill(&self, dst: BufView, value: f64) -> RResult<(), Error>;

    /// Fills `dst` with draws from `dist`. Element `i` is a pure function of
    /// `(seed, offset + i)` (see [`crate::rng`]), so every device draws the same numbers.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn random(
        &self,
        dst: BufView,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> RResult<(), Error>;

    /// Matrix multiply, see [`GemmArgs`]. `F32`; devices may also accept `F16` operands.
    ///
    /// # Safety
    /// See the trait documentation; `c` overlaps neither `a` nor `b`.
    unsafe fn gemm(&self, args: &GemmArgs) -> RResult<(), Error>;

    /// `y = op(x)`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn unary(&self, op: UnaryOp, x: BufView, y: BufView) -> RResult<(), Error>;

    /// `dx = dy · op'(x)`, given the forward input `x` and output `y` (the device uses whichever
    /// is cheaper). `dx` may be exactly `dy`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn unary_backward(
        &self,
        op: UnaryOp,
        x: BufView,
        y: BufView,
        dy: BufView,
        dx: BufView,
    ) -> RResult<(), Error>;

    /// `y = op(a, b)`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn binary(&self, op: BinaryOp, a: BufView, b: BufView, y: BufView)
        -> RResult<(), Error>;

    /// `y = alpha · x + beta · y`. With `beta == 0`, `y` is not read.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn axpby(&self, alpha: f32, x: BufView, beta: f32, y: BufView) -> RResult<(), Error>;

    /// `y = scale · x + shift`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn affine(&self, x: BufView, y: BufView, scale: f32, shift: f32) -> RResult<(), Error>;

    /// `y[o, m, i] += v[m]`: adds a vector along the middle axis (a bias).
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn add_broadcast(&self, dims: Dims3, v: BufView, y: BufView) -> RResult<(), Error>;

    /// `y[o, i] = beta · y[o, i] + alpha · reduce_m x[o, m, i]`. With `beta == 0`, `y` is not read.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn reduce(
        &self,
        op: ReduceOp,
        dims: Dims3,
        x: BufView,
        y: BufView,
        alpha: f32,
        beta: f32,
    ) -> RResult<(), Error>;

    /// Row-wise softmax of a `rows × cols` matrix.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn softmax(
        &self,
        rows: usize,
        cols: usize,
        x: BufView,
        y: BufView,
    ) -> RResult<(), Error>;

    /// Softmax cross-entropy of `rows` samples over `cols` classes: writes the probabilities
    /// and adds to `stats` (3 elements) the summed loss `-ln p[label]`, the number of samples
    /// whose arg-max is their label, and the number of samples. `labels` is `I32`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn softmax_cross_entropy(
        &self,
        rows: usize,
        cols: usize,
        logits: BufView,
        labels: BufView,
        probs: BufView,
        stats: BufView,
    ) -> RResult<(), Error>;

    /// The gradient of the summed cross-entropy w.r.t. the logits, times `scale`:
    /// `dx = scale · (probs - onehot(labels))`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn softmax_cross_entropy_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: BufView,
        labels: BufView,
        dx: BufView,
        scale: f32,
    ) -> RResult<(), Error>;

    /// One fused SGD step on a parameter `w` with gradient `g` and optional momentum buffer `m`:
    /// `d = grad_scale·g + weight_decay·w`; with momentum, `m = momentum·m + d` and
    /// `d = m` (or `d + momentum·m` for Nesterov); then `w -= lr·d`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn sgd_update(
        &self,
        w: BufView,
        g: BufView,
        m: ROption<BufView>,
        args: SgdArgs,
    ) -> RResult<(), Error>;

    /// Waits until all work queued on this device has finished.
    fn synchronize(&self) -> RResult<(), Error>;

    /// One fused step of an adaptive rule (AdaGrad, RMSProp, Adam/AdamW) on a parameter `w`
    /// with gradient `g` and state `s1` (and `s2` for Adam), see [`AdaptiveRule`].
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn adaptive_update(
        &self,
        w: BufView,
        g: BufView,
        s1: BufView,
        s2: ROption<BufView>,
        args: AdaptiveArgs,
    ) -> RResult<(), Error>;
}

/// The type-erased device behind a [`DeviceRef`].
pub type DynDevice = Device_TO<'static, RBox<()>>;

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// A shared handle to a device. Cheap to clone; compare devices with [`DeviceRef::id`].
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct DeviceRef {
    id: u64,
    obj: RArc<DynDevice>,
}

impl DeviceRef {
    /// Wraps a device implementation.
    pub fn new<D: Device + 'static>(device: D) -> DeviceRef {
        DeviceRef {
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            obj: RArc::new(Device_TO::from_value(
                device,
                abi_stable::sabi_trait::TD_Opaque,
            )),
        }
    }

    /// A number that identifies this device within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The raw ABI-stable trait object (for implementers of new safe operations).
    pub fn raw(&self) -> &DynDevice {
        &self.obj
    }

    /// What this device is.
    pub fn info(&self) -> DeviceInfo {
        self.obj.info()
    }

    /// Waits for queued work to finish.
    pub fn synchronize(&self) -> crate::Result<()> {
        self.obj.synchronize().into_result()
    }
}

impl std::fmt::Debug for DeviceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceRef({}, {})", self.id, self.obj.info().description)
    }
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
