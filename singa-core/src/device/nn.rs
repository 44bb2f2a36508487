//! The shapes and settings of the convolutional-network operations of a device: convolution,
//! pooling, local response normalisation and batch normalisation. Tensors are NCHW.

use super::args::Dims3;
use abi_stable::StableAbi;

/// A 2-D convolution of an NCHW input with `filters` kernels of `kernel_h × kernel_w`, in
/// `groups` groups (each output channel sees `channels / groups` input channels).
///
/// The weights are `[filters, channels / groups, kernel_h, kernel_w]`; the output is
/// `[batch, filters, out_h, out_w]` with `out = (in + 2·pad − kernel) / stride + 1`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Output channels.
    pub filters: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Rows of zeros added above and below.
    pub pad_h: usize,
    /// Columns of zeros added left and right.
    pub pad_w: usize,
    /// Channel groups.
    pub groups: usize,
}

impl ConvShape {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.height + 2 * self.pad_h - self.kernel_h) / self.stride_h + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.width + 2 * self.pad_w - self.kernel_w) / self.stride_w + 1
    }

    /// Input channels each group (and each filter) sees.
    pub fn group_channels(&self) -> usize {
        self.channels / self.groups
    }

    /// Filters per group.
    pub fn group_filters(&self) -> usize {
        self.filters / self.groups
    }

    /// Elements of the input.
    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    /// Elements of the weights.
    pub fn weight_len(&self) -> usize {
        self.filters * self.group_channels() * self.kernel_h * self.kernel_w
    }

    /// Elements of the output.
    pub fn output_len(&self) -> usize {
        self.batch * self.filters * self.out_h() * self.out_w()
    }

    /// Why the shape cannot be computed, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.kernel_h == 0 || self.kernel_w == 0 || self.stride_h == 0 || self.stride_w == 0 {
            return Some("kernel and stride must be at least 1".into());
        }
        if self.height == 0 || self.width == 0 {
            return Some(format!("an empty {}x{} input", self.height, self.width));
        }
        if self.groups == 0
            || !self.channels.is_multiple_of(self.groups)
            || !self.filters.is_multiple_of(self.groups)
        {
            return Some(format!(
                "{} groups must divide both the {} input channels and the {} filters",
                self.groups, self.channels, self.filters
            ));
        }
        if self.height + 2 * self.pad_h < self.kernel_h
            || self.width + 2 * self.pad_w < self.kernel_w
        {
            return Some(format!(
                "a {}x{} kernel does not fit a {}x{} input padded by {}x{}",
                self.kernel_h, self.kernel_w, self.height, self.width, self.pad_h, self.pad_w
            ));
        }
        None
    }
}

/// Maximum or average pooling.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// The largest value of each window.
    Max,
    /// The mean of each window; the divisor counts padding inside the padded input but not
    /// beyond it (Caffe's and SINGA's convention).
    Avg,
}

/// 2-D pooling of an NCHW input, per channel, with Caffe's output size: rounded up when `ceil`
/// (the last window may hang over the edge, but must start inside the input or its top/left
/// padding), down otherwise.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    /// Max or average.
    pub kind: PoolKind,
    /// Images.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Window height.
    pub kernel_h: usize,
    /// Window width.
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Rows of padding above and below.
    pub pad_h: usize,
    /// Columns of padding left and right.
    pub pad_w: usize,
    /// Round the output size up (Caffe) rather than down.
    pub ceil: bool,
}

impl PoolShape {
    fn out(len: usize, kernel: usize, stride: usize, pad: usize, ceil: bool) -> usize {
        let span = len + 2 * pad - kernel;
        let mut out = if ceil {
            span.div_ceil(stride) + 1
        } else {
            span / stride + 1
        };
        // The last window must start inside the input or its leading padding (Caffe applies
        // this only with padding; without, it rejects such shapes instead).
        if (out - 1) * stride >= len + pad {
            out -= 1;
        }
        out
    }

    /// Output height.
    pub fn out_h(&self) -> usize {
        Self::out(
            self.height,
            self.kernel_h,
            self.stride_h,
            self.pad_h,
            self.ceil,
        )
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        Self::out(
            self.width,
            self.kernel_w,
            self.stride_w,
            self.pad_w,
            self.ceil,
        )
    }

    /// Elements of the input.
    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    /// Elements of the output.
    pub fn output_len(&self) -> usize {
        self.batch * self.channels * self.out_h() * self.out_w()
    }

    /// Why the shape cannot be computed, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.kernel_h == 0 || self.kernel_w == 0 || self.stride_h == 0 || self.stride_w == 0 {
            return Some("kernel and stride must be at least 1".into());
        }
        if self.pad_h >= self.kernel_h || self.pad_w >= self.kernel_w {
            return Some("padding must be smaller than the kernel".into());
        }
        if self.height + 2 * self.pad_h < self.kernel_h
            || self.width + 2 * self.pad_w < self.kernel_w
        {
            return Some(format!(
                "a {}x{} window does not fit a {}x{} input padded by {}x{}",
                self.kernel_h, self.kernel_w, self.height, self.width, self.pad_h, self.pad_w
            ));
        }
        None
    }

    /// The window of output `(oh, ow)`: input rows `h0..h1`, columns `w0..w1` (clipped to the
    /// input), and the divisor of an average (the window clipped to the padded input).
    pub fn window(&self, oh: usize, ow: usize) -> (usize, usize, usize, usize, usize) {
        let hs = (oh * self.stride_h) as isize - self.pad_h as isize;
        let ws = (ow * self.stride_w) as isize - self.pad_w as isize;
        let he = (hs + self.kernel_h as isize).min((self.height + self.pad_h) as isize);
        let we = (ws + self.kernel_w as isize).min((self.width + self.pad_w) as isize);
        let divisor = ((he - hs) * (we - ws)) as usize;
        let (h0, w0) = (hs.max(0) as usize, ws.max(0) as usize);
        let (h1, w1) = (
            (he as usize).min(self.height),
            (we as usize).min(self.width),
        );
        (h0, h1, w0, w1, divisor)
    }
}

/// Local response normalisation across channels (AlexNet, Caffe):
/// `scale = k + (alpha / size) · Σ x²` over the `size` channels around each one, and
/// `y = x · scale^(−beta)`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct LrnShape {
    /// Images.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Height × width.
    pub spatial: usize,
    /// Channels in a window (odd).
    pub size: usize,
    /// Scale of the sum of squares.
    pub alpha: f32,
    /// Exponent.
    pub beta: f32,
    /// Offset.
    pub k: f32,
}

impl LrnShape {
    /// Elements of the input (and output).
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    /// Whether the input is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The channels of the window around channel `c`: `c − (size−1)/2 ..= c + size/2`,
    /// clipped to the channels.
    pub fn window(&self, c: usize) -> (usize, usize) {
        let lo = c.saturating_sub((self.size - 1) / 2);
        let hi = (c + self.size / 2 + 1).min(self.channels);
        (lo, hi)
    }
}

/// Batch normalisation over the `mid` (channel) axis of a `Dims3` view: statistics over
/// `outer` (the batch) and `inner` (the spatial positions) for each channel.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct BatchNormArgs {
    /// The input seen as batch × channels × positions.
    pub dims: Dims3,
    /// Added to the variance.
    pub eps: f32,
    /// Weight of the batch statistics in the running ones (PyTorch's momentum, e.g. 0.1).
    pub momentum: f32,
    /// Training: normalise with the batch statistics and update the running ones; else
    /// normalise with the running statistics.
    pub training: bool,
}
