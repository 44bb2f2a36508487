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

// Kernels take their operands one by one so the ABI stays flat; the macro-generated vtable
// inherits the long signatures.
#![allow(clippy::too_many_arguments)]

use crate::dtype::DType;
use crate::error::Error;
use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RSlice, RSliceMut};
use abi_stable::StableAbi;
use std::sync::atomic::{AtomicU64, Ordering};

mod args;
mod nn;

pub use args::*;
pub use nn::*;

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

    /// `y[o, m, i] *= v[m]`: scales along the middle axis (a per-channel factor).
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn mul_broadcast(&self, dims: Dims3, v: BufView, y: BufView) -> RResult<(), Error>;

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

    /// 2-D convolution `y = x ⊛ w` (no bias; add one with [`Device::add_broadcast`]).
    ///
    /// # Safety
    /// See the trait documentation; lengths as [`ConvShape`] gives them.
    unsafe fn conv2d(
        &self,
        shape: &ConvShape,
        x: BufView,
        w: BufView,
        y: BufView,
    ) -> RResult<(), Error>;

    /// The gradient of [`Device::conv2d`] w.r.t. its input: `dx` from `dy` and `w`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn conv2d_backward_data(
        &self,
        shape: &ConvShape,
        dy: BufView,
        w: BufView,
        dx: BufView,
    ) -> RResult<(), Error>;

    /// The gradient of [`Device::conv2d`] w.r.t. its weights: `dw` from `x` and `dy`, summed
    /// over the batch.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn conv2d_backward_filter(
        &self,
        shape: &ConvShape,
        x: BufView,
        dy: BufView,
        dw: BufView,
    ) -> RResult<(), Error>;

    /// 2-D pooling. For [`PoolKind::Max`], `argmax` (`I32`, shaped like `y`) receives the index
    /// of each maximum within its channel's `height × width` plane, for the backward pass.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn pool2d(
        &self,
        shape: &PoolShape,
        x: BufView,
        y: BufView,
        argmax: ROption<BufView>,
    ) -> RResult<(), Error>;

    /// The gradient of [`Device::pool2d`]: `dx` (overwritten) from `dy` (and `argmax` for max
    /// pooling).
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn pool2d_backward(
        &self,
        shape: &PoolShape,
        dy: BufView,
        argmax: ROption<BufView>,
        dx: BufView,
    ) -> RResult<(), Error>;

    /// Local response normalisation; `scale` (shaped like `x`) keeps `k + α/n·Σx²` for the
    /// backward pass.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn lrn(
        &self,
        shape: &LrnShape,
        x: BufView,
        y: BufView,
        scale: BufView,
    ) -> RResult<(), Error>;

    /// The gradient of [`Device::lrn`].
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn lrn_backward(
        &self,
        shape: &LrnShape,
        x: BufView,
        y: BufView,
        scale: BufView,
        dy: BufView,
        dx: BufView,
    ) -> RResult<(), Error>;

    /// Batch normalisation `y = gamma · (x − mean) / √(var + eps) + beta` per channel. In
    /// training, `mean` and `inv_std` (per channel) receive the batch statistics and the running
    /// ones move towards them (the running variance is the unbiased one); in inference, the
    /// running statistics are used and `mean`/`inv_std` are not written.
    ///
    /// # Safety
    /// See the trait documentation.
    #[allow(clippy::too_many_arguments)]
    unsafe fn batch_norm(
        &self,
        args: &BatchNormArgs,
        x: BufView,
        gamma: BufView,
        beta: BufView,
        y: BufView,
        mean: BufView,
        inv_std: BufView,
        running_mean: BufView,
        running_var: BufView,
    ) -> RResult<(), Error>;

    /// The gradients of training-mode [`Device::batch_norm`] w.r.t. its input, `gamma` and
    /// `beta`, from the statistics it saved.
    ///
    /// # Safety
    /// See the trait documentation.
    #[allow(clippy::too_many_arguments)]
    unsafe fn batch_norm_backward(
        &self,
        args: &BatchNormArgs,
        x: BufView,
        dy: BufView,
        gamma: BufView,
        mean: BufView,
        inv_std: BufView,
        dx: BufView,
        dgamma: BufView,
        dbeta: BufView,
    ) -> RResult<(), Error>;

    /// The gradient of a row-wise softmax: `dx = y ⊙ (dy − Σ_row dy ⊙ y)`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        y: BufView,
        dy: BufView,
        dx: BufView,
    ) -> RResult<(), Error>;

    /// The indices (`I32`, `rows × k`) of the `k` largest values of each row, largest first
    /// (ties: lower index first).
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn top_k(
        &self,
        rows: usize,
        cols: usize,
        k: usize,
        x: BufView,
        indices: BufView,
    ) -> RResult<(), Error>;

    /// Adds to `stats` (2 elements) the number of rows whose label (`I32`) is among the `k`
    /// largest values (ties resolved as in [`Device::top_k`]), and the number of rows.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn top_k_accuracy(
        &self,
        rows: usize,
        cols: usize,
        k: usize,
        x: BufView,
        labels: BufView,
        stats: BufView,
    ) -> RResult<(), Error>;

    /// `out[i, :] = table[ids[i], :]` for the `n` ids (`I32`) into a `rows × cols` table: an
    /// embedding lookup. An id outside `0..rows` is an error naming it and its position.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn gather_rows(
        &self,
        rows: usize,
        cols: usize,
        n: usize,
        table: BufView,
        ids: BufView,
        out: BufView,
    ) -> RResult<(), Error>;

    /// `table[ids[i], :] += src[i, :]` for the `n` ids (`I32`) into a `rows × cols` table: the
    /// backward pass of [`Device::gather_rows`] (the rows of repeated ids add up). An id
    /// outside `0..rows` is an error naming it and its position.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn scatter_add_rows(
        &self,
        rows: usize,
        cols: usize,
        n: usize,
        ids: BufView,
        src: BufView,
        table: BufView,
    ) -> RResult<(), Error>;

    /// The elementwise part of one LSTM step, fused (the products come before it): `gates`
    /// (`[batch, 4·hidden]`, gates i, f, o, g side by side) holds the pre-activations and
    /// receives the activations, after adding `bias` (`4·hidden`) to every row when given:
    /// σ for i, f and o, tanh for g. Then `c = f ⊙ c_prev + i ⊙ g`, `tanh_c = tanh(c)` and
    /// `h = o ⊙ tanh_c` (`[batch, hidden]` each).
    ///
    /// # Safety
    /// See the trait documentation; no output overlaps another view.
    unsafe fn lstm_cell(
        &self,
        batch: usize,
        hidden: usize,
        gates: BufView,
        bias: ROption<BufView>,
        c_prev: BufView,
        c: BufView,
        tanh_c: BufView,
        h: BufView,
    ) -> RResult<(), Error>;

    /// The gradient of [`Device::lstm_cell`]: from its activations `gates`, `c_prev` and
    /// `tanh_c`, and the gradients `dh` and `dc` reaching `h` and `c`, writes the
    /// pre-activations' gradients `d_gates` (`[batch, 4·hidden]`) and, when given, the
    /// gradient reaching `c_prev`.
    ///
    /// # Safety
    /// See the trait documentation; no output overlaps another view.
    unsafe fn lstm_cell_backward(
        &self,
        batch: usize,
        hidden: usize,
        gates: BufView,
        c_prev: BufView,
        tanh_c: BufView,
        dh: BufView,
        dc: BufView,
        d_gates: BufView,
        dc_prev: ROption<BufView>,
    ) -> RResult<(), Error>;
}

/// The type-erased device behind a [`DeviceRef`].
pub type DynDevice = Device_TO<'static, RBox<()>>;

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// The memory space of devices whose buffers are this process's heap memory, their handles
/// its addresses (the CPU and reference devices).
pub const HOST_MEMORY: &str = "host";

/// A shared handle to a device. Cheap to clone; compare devices with [`DeviceRef::id`].
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct DeviceRef {
    id: u64,
    /// A hash of the device's memory space: operations accept tensors whose device has the
    /// same one.
    memory: u64,
    obj: RArc<DynDevice>,
}

impl DeviceRef {
    /// Wraps a device implementation.
    pub fn new<D: Device + 'static>(device: D) -> DeviceRef {
        let memory = crate::rng::derive_seed(0, device.info().memory_space.as_str());
        DeviceRef {
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            memory,
            obj: RArc::new(Device_TO::from_value(
                device,
                abi_stable::sabi_trait::TD_Opaque,
            )),
        }
    }

    /// Whether this device can use buffers of `other` (they share a memory space).
    pub fn shares_memory_with(&self, other: &DeviceRef) -> bool {
        self.memory == other.memory
    }

    /// Whether this device's buffers are host memory, their handles addresses (see
    /// [`HOST_MEMORY`]).
    pub fn is_host(&self) -> bool {
        static HOST: std::sync::LazyLock<u64> =
            std::sync::LazyLock::new(|| crate::rng::derive_seed(0, HOST_MEMORY));
        self.memory == *HOST
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
