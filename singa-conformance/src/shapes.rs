//! Random convolution shapes: general ones, and the families that fast implementations
//! special-case, so that a backend's own checks of its fast paths draw from the same shapes
//! the suite does.
//!
//! Some of the shapes are invalid (an empty input): callers skip those with
//! `prop_assume!(s.problem().is_none())`.

use proptest::prelude::*;
use singa_core::ConvShape;

prop_compose! {
    /// Any convolution: odd sizes, padding, strides above 1, non-square kernels and inputs,
    /// groups.
    pub fn conv_shape()(batch in 1usize..5, g in 1usize..3, cpg in 1usize..4, fpg in 1usize..5,
                        height in 1usize..11, width in 1usize..11, kh in 1usize..5, kw in 1usize..5,
                        sh in 1usize..3, sw in 1usize..3, ph in 0usize..3, pw in 0usize..3) -> ConvShape {
        ConvShape {
            batch, channels: g * cpg, height: height.max(kh), width: width.max(kw), filters: g * fpg,
            kernel_h: kh, kernel_w: kw, stride_h: sh, stride_w: sw, pad_h: ph.min(kh - 1), pad_w: pw.min(kw - 1), groups: g,
        }
    }
}

prop_compose! {
    /// Shapes that take the CPU device's fast paths: unit strides, output rows of whole groups
    /// of 8 (patches packed straight from the image for the filter gradient, over one or more
    /// depth blocks, some not multiples of 8), and 16+ channels per group (the input gradient
    /// as a convolution with flipped filters).
    pub fn fast_path_conv_shape()(batch in 1usize..3, g in 1usize..3, cpg in 14usize..19, fpg in 1usize..12,
                                  out_h in 1usize..40, row_groups in 1usize..3, kh in 1usize..4, kw in 1usize..4,
                                  ph in 0usize..3, pw in 0usize..3) -> ConvShape {
        // Padding below the kernel, and small enough to leave a non-empty input.
        let (pad_h, pad_w) = (ph.min(kh - 1).min((out_h + kh - 2) / 2), pw.min(kw - 1));
        ConvShape {
            batch, channels: g * cpg, filters: g * fpg, groups: g,
            height: out_h + kh - 1 - 2 * pad_h, width: 8 * row_groups + kw - 1 - 2 * pad_w,
            kernel_h: kh, kernel_w: kw, stride_h: 1, stride_w: 1, pad_h, pad_w,
        }
    }
}

prop_compose! {
    /// Shapes of a Winograd path (the CPU device's): 5×5 kernels with unit stride over
    /// multiples of 16 channels and filters, on even and odd sizes (edge tiles cut off), with
    /// any padding up to 4, and batches of several blocks of tiles over the threads.
    pub fn winograd_conv_shape()(batch in 1usize..20, cpg in 1usize..3, fpg in 1usize..4,
                                 height in 1usize..18, width in 1usize..18, ph in 0usize..5, pw in 0usize..5) -> ConvShape {
        ConvShape {
            batch, channels: 16 * cpg, filters: 16 * fpg, groups: 1,
            height: height.max(5 - 2 * ph.min(2)), width: width.max(5 - 2 * pw.min(2)),
            kernel_h: 5, kernel_w: 5, stride_h: 1, stride_w: 1, pad_h: ph, pad_w: pw,
        }
    }
}
