//! The convolutional-network operations of the CPU device against the reference device, on
//! random shapes: odd sizes, padding, strides above 1, non-square kernels and inputs, groups.

use proptest::prelude::*;
use singa_core::{
    BatchNormArgs, ConvShape, DType, DeviceRef, Dims3, LrnShape, PoolKind, PoolShape, Precision,
    Result, Shape, Tensor,
};
mod common;

use common::{assert_close, both, both_in, devices, values};

fn t(d: &DeviceRef, v: &[f32]) -> Result<Tensor> {
    Tensor::from_slice(d, v, Shape::new(&[v.len()])?)
}

prop_compose! {
    fn conv_shape()(batch in 1usize..5, g in 1usize..3, cpg in 1usize..4, fpg in 1usize..5,
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
    fn fast_conv_shape()(batch in 1usize..3, g in 1usize..3, cpg in 14usize..19, fpg in 1usize..12,
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
    /// Shapes of the Winograd path: 5×5 kernels with unit stride over multiples of 16 channels
    /// and filters, on even and odd sizes (edge tiles cut off), with any padding up to 4, and
    /// batches of several blocks of tiles over the threads.
    fn winograd_shape()(batch in 1usize..20, cpg in 1usize..3, fpg in 1usize..4,
                        height in 1usize..18, width in 1usize..18, ph in 0usize..5, pw in 0usize..5) -> ConvShape {
        ConvShape {
            batch, channels: 16 * cpg, filters: 16 * fpg, groups: 1,
            height: height.max(5 - 2 * ph.min(2)), width: width.max(5 - 2 * pw.min(2)),
            kernel_h: 5, kernel_w: 5, stride_h: 1, stride_w: 1, pad_h: ph, pad_w: pw,
        }
    }
}

/// Runs the three passes of `s` on both devices and compares.
fn check_convolution(s: &ConvShape, seed: u64) {
    check_convolution_in(Precision::F32, s, seed)
}

/// [`check_convolution`] with the products in `precision`.
fn check_convolution_in(precision: Precision, s: &ConvShape, seed: u64) {
    let x = values(seed, s.input_len(), -1.0, 1.0);
    let w = values(seed ^ 1, s.weight_len(), -1.0, 1.0);
    let dy = values(seed ^ 2, s.output_len(), -1.0, 1.0);
    let (got, want) = both_in(precision, |d| {
        let (tx, tw, tdy) = (t(d, &x)?, t(d, &w)?, t(d, &dy)?);
        let mut y = Tensor::zeros(d, [s.output_len()], DType::F32)?;
        let mut dx = t(d, &values(9, s.input_len(), -1.0, 1.0))?;
        let mut dw = t(d, &values(8, s.weight_len(), -1.0, 1.0))?;
        d.conv2d(s, &tx, &tw, &mut y)?;
        d.conv2d_backward_data(s, &tdy, &tw, &mut dx)?;
        d.conv2d_backward_filter(s, &tx, &tdy, &mut dw)?;
        Ok([y.to_vec::<f32>()?, dx.to_vec()?, dw.to_vec()?].concat())
    });
    // Each output's tolerance grows with the depth of its sums: taps for y and dx, positions
    // of the batch for dw.
    let taps = s.kernel_h * s.kernel_w;
    let depths = [
        s.group_channels() * taps,
        s.group_filters() * taps,
        s.batch * s.out_h() * s.out_w(),
    ];
    let lens = [s.output_len(), s.input_len(), s.weight_len()];
    // The CPU's Winograd passes compute in f32 whatever the precision: against a reference
    // that rounds the inputs to bf16 they differ by bf16's rounding (relative 2^-8 per
    // product, random signs).
    let winograd = precision != Precision::F32 && singa_cpu::cpu::convolution_uses_winograd(s);
    let (mut g, mut w) = (&got[..], &want[..]);
    for (what, (depth, len)) in ["y", "dx", "dw"].iter().zip(depths.iter().zip(lens)) {
        let ((g0, g1), (w0, w1)) = (g.split_at(len), w.split_at(len));
        let atol = if winograd {
            1e-2 * (*depth as f32).sqrt()
        } else {
            1e-5 * *depth as f32
        };
        assert_close(
            g0,
            w0,
            atol,
            1e-5,
            &format!("{what} of {s:?} in {precision}"),
        );
        (g, w) = (g1, w1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn convolution_fast_paths_match(s in fast_conv_shape(), seed: u64) {
        prop_assume!(s.problem().is_none());
        prop_assert_eq!(s.out_w() % 8, 0);
        check_convolution(&s, seed);
    }

    #[test]
    fn winograd_convolution_matches(s in winograd_shape(), seed: u64) {
        prop_assume!(s.problem().is_none());
        if !singa_cpu::cpu::convolution_uses_winograd(&s) {
            // No AVX-512 here (or SINGA_NO_WINOGRAD is set): the direct path is checked instead.
            eprintln!("skipped the Winograd path: this CPU does not take it for {s:?}");
        }
        check_convolution(&s, seed);
    }

    #[test]
    fn convolution_matches(s in conv_shape(), seed: u64) {
        prop_assume!(s.problem().is_none());
        check_convolution(&s, seed);
    }

    /// bf16 products (every path: im2col, patches packed from the image, the direct 1 × 1
    /// products, Winograd's f32) against the reference on bf16-rounded inputs.
    #[test]
    fn bf16_convolution_matches(
        s in prop_oneof![conv_shape(), fast_conv_shape(), winograd_shape()],
        seed: u64,
    ) {
        prop_assume!(s.problem().is_none());
        check_convolution_in(Precision::BF16, &s, seed);
    }

    #[test]
    fn pooling_matches(batch in 1usize..4, channels in 1usize..4, height in 1usize..12, width in 1usize..12,
                       kh in 1usize..4, kw in 1usize..4, sh in 1usize..4, sw in 1usize..4, ph in 0usize..2, pw in 0usize..2,
                       max: bool, ceil: bool, halving: bool, ties: bool, seed: u64) {
        // The common 2×2/2 pool has its own path: draw it often.
        let (kh, kw, sh, sw, ph, pw) = if halving { (2, 2, 2, 2, 0, 0) } else { (kh, kw, sh, sw, ph, pw) };
        let s = PoolShape {
            kind: if max { PoolKind::Max } else { PoolKind::Avg },
            batch, channels, height: height.max(kh), width: width.max(kw), kernel_h: kh, kernel_w: kw,
            stride_h: sh, stride_w: sw, pad_h: ph.min(kh - 1), pad_w: pw.min(kw - 1), ceil,
        };
        prop_assume!(s.problem().is_none());
        let mut x = values(seed, s.input_len(), -1.0, 1.0);
        if ties {
            // Few distinct values: the first maximum in row-major order must win everywhere.
            x.iter_mut().for_each(|v| *v = (*v * 2.0).round());
        }
        let dy = values(seed ^ 1, s.output_len(), -1.0, 1.0);
        let (got, want) = both(|d| {
            let tx = t(d, &x)?;
            let mut y = Tensor::zeros(d, [s.output_len()], DType::F32)?;
            let mut arg = Tensor::zeros(d, [s.output_len()], DType::I32)?;
            let mut dx = t(d, &values(7, s.input_len(), -1.0, 1.0))?;
            d.pool2d(&s, &tx, &mut y, max.then_some(&mut arg))?;
            d.pool2d_backward(&s, &t(d, &dy)?, max.then_some(&arg), &mut dx)?;
            let args: Vec<f32> = arg.to_vec::<i32>()?.into_iter().map(|v| v as f32).collect();
            Ok([y.to_vec::<f32>()?, dx.to_vec()?, args].concat())
        });
        assert_close(&got, &want, 1e-5, 1e-5, &format!("{s:?}"));
    }

    #[test]
    fn lrn_matches(batch in 1usize..3, channels in 1usize..9, spatial in 1usize..20, half in 0usize..3, seed: u64) {
        let s = LrnShape { batch, channels, spatial, size: 2 * half + 1, alpha: 0.0001 * 1000.0, beta: 0.75, k: 1.0 };
        let n = s.len();
        let x = values(seed, n, -2.0, 2.0);
        let dy = values(seed ^ 1, n, -1.0, 1.0);
        let (got, want) = both(|d| {
            let tx = t(d, &x)?;
            let mut y = Tensor::zeros(d, [n], DType::F32)?;
            let mut sc = Tensor::zeros(d, [n], DType::F32)?;
            let mut dx = Tensor::zeros(d, [n], DType::F32)?;
            d.lrn(&s, &tx, &mut y, &mut sc)?;
            d.lrn_backward(&s, &tx, &y, &sc, &t(d, &dy)?, &mut dx)?;
            Ok([y.to_vec::<f32>()?, sc.to_vec()?, dx.to_vec()?].concat())
        });
        assert_close(&got, &want, 1e-5, 1e-4, &format!("{s:?}"));
    }

    #[test]
    fn batch_norm_matches(outer in 1usize..6, mid in 1usize..6, inner in 1usize..30, training: bool, seed: u64) {
        let a = BatchNormArgs { dims: Dims3 { outer, mid, inner }, eps: 1e-5, momentum: 0.1, training };
        let n = a.dims.numel();
        let x = values(seed, n, -2.0, 3.0);
        let dy = values(seed ^ 1, n, -1.0, 1.0);
        let (gamma, beta) = (values(seed ^ 2, mid, 0.5, 1.5), values(seed ^ 3, mid, -0.5, 0.5));
        let (rm, rv) = (values(seed ^ 4, mid, -0.2, 0.2), values(seed ^ 5, mid, 0.5, 1.5));
        let (got, want) = both(|d| {
            let (tx, tg, tb) = (t(d, &x)?, t(d, &gamma)?, t(d, &beta)?);
            let mut y = Tensor::zeros(d, [n], DType::F32)?;
            let (mut mean, mut inv) = (Tensor::zeros(d, [mid], DType::F32)?, Tensor::zeros(d, [mid], DType::F32)?);
            let (mut trm, mut trv) = (t(d, &rm)?, t(d, &rv)?);
            d.batch_norm(&a, &tx, &tg, &tb, &mut y, &mut mean, &mut inv, &mut trm, &mut trv)?;
            let mut out = [y.to_vec::<f32>()?, trm.to_vec()?, trv.to_vec()?].concat();
            if training {
                let mut dx = Tensor::zeros(d, [n], DType::F32)?;
                let (mut dg, mut db) = (Tensor::zeros(d, [mid], DType::F32)?, Tensor::zeros(d, [mid], DType::F32)?);
                d.batch_norm_backward(&a, &tx, &t(d, &dy)?, &tg, &mean, &inv, &mut dx, &mut dg, &mut db)?;
                out.extend([mean.to_vec::<f32>()?, inv.to_vec()?, dx.to_vec()?, dg.to_vec()?, db.to_vec()?].concat());
            }
            Ok(out)
        });
        assert_close(&got, &want, 1e-4, 1e-4, &format!("{a:?}"));
    }

    #[test]
    fn softmax_backward_and_top_k_match(rows in 1usize..20, cols in 1usize..30, k in 1usize..6, seed: u64) {
        let k = k.min(cols);
        // Values on a coarse grid so that ties happen.
        let x: Vec<f32> = values(seed, rows * cols, 0.0, 8.0).iter().map(|v| v.floor()).collect();
        let dy = values(seed ^ 1, rows * cols, -1.0, 1.0);
        let labels: Vec<i32> = values(seed ^ 2, rows, 0.0, cols as f32).iter().map(|v| *v as i32).collect();
        let (got, want) = both(|d| {
            let tx = Tensor::from_slice(d, &x, [rows, cols])?;
            let mut y = Tensor::zeros(d, [rows, cols], DType::F32)?;
            d.softmax(&tx, &mut y)?;
            let mut dx = Tensor::zeros(d, [rows, cols], DType::F32)?;
            d.softmax_backward(&y, &Tensor::from_slice(d, &dy, [rows, cols])?, &mut dx)?;
            let mut idx = Tensor::zeros(d, [rows, k], DType::I32)?;
            d.top_k(&tx, k, &mut idx)?;
            let mut stats = Tensor::zeros(d, [2], DType::F32)?;
            d.top_k_accuracy(&tx, &Tensor::from_slice(d, &labels, [rows])?, k, &mut stats)?;
            let idx: Vec<f32> = idx.to_vec::<i32>()?.into_iter().map(|v| v as f32).collect();
            Ok([dx.to_vec::<f32>()?, idx, stats.to_vec()?].concat())
        });
        assert_close(&got, &want, 1e-6, 1e-5, "softmax backward / top-k");
    }

    /// Embedding lookups and their backward pass, with repeated ids adding up.
    #[test]
    fn gather_and_scatter_rows_match(rows in 1usize..20, cols in 1usize..40, n in 1usize..50, seed: u64) {
        let table = values(seed, rows * cols, -1.0, 1.0);
        let src = values(seed ^ 1, n * cols, -1.0, 1.0);
        let ids: Vec<i32> = values(seed ^ 2, n, 0.0, rows as f32).iter().map(|v| (*v as i32).min(rows as i32 - 1)).collect();
        let (got, want) = both(|d| {
            let tt = Tensor::from_slice(d, &table, [rows, cols])?;
            let ti = Tensor::from_slice(d, &ids, [n])?;
            let mut out = Tensor::zeros(d, [n, cols], DType::F32)?;
            d.gather_rows(&tt, &ti, &mut out)?;
            let mut grad = Tensor::from_slice(d, &table, [rows, cols])?;
            d.scatter_add_rows(&ti, &Tensor::from_slice(d, &src, [n, cols])?, &mut grad)?;
            Ok([out.to_vec::<f32>()?, grad.to_vec()?].concat())
        });
        assert_close(&got, &want, 1e-6, 1e-6, "gather / scatter rows");
    }
}

/// An id outside the table is an error naming it and its position, on both devices.
#[test]
fn row_ids_outside_the_table_are_refused() {
    for d in devices() {
        let table = Tensor::zeros(d, [3, 2], DType::F32).unwrap();
        let ids = Tensor::from_slice(d, &[0i32, 3], [2]).unwrap();
        let mut out = Tensor::zeros(d, [2, 2], DType::F32).unwrap();
        let e = d
            .gather_rows(&table, &ids, &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("id 3 at position 1 is outside the 3 rows"),
            "{e}"
        );
        let mut grad = Tensor::zeros(d, [3, 2], DType::F32).unwrap();
        let neg = Tensor::from_slice(d, &[-1i32, 0], [2]).unwrap();
        let e = d
            .scatter_add_rows(&neg, &out, &mut grad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("id -1 at position 0"), "{e}");
    }
}

#[test]
fn caffe_pool_output_sizes() {
    let s = |h: usize, k: usize, st: usize, p: usize, ceil: bool| {
        PoolShape {
            kind: PoolKind::Max,
            batch: 1,
            channels: 1,
            height: h,
            width: h,
            kernel_h: k,
            kernel_w: k,
            stride_h: st,
            stride_w: st,
            pad_h: p,
            pad_w: p,
            ceil,
        }
        .out_h()
    };
    // The CIFAR-10 "quick" net: 32 → 16 → 8 → 4 with 3x3/2 ceil pooling.
    assert_eq!(
        (
            s(32, 3, 2, 0, true),
            s(16, 3, 2, 0, true),
            s(8, 3, 2, 0, true)
        ),
        (16, 8, 4)
    );
    assert_eq!(s(32, 3, 2, 0, false), 15);
    // With padding, the last window must start inside the input or its leading padding.
    assert_eq!(s(5, 2, 2, 1, true), 3);
}

#[test]
fn bad_conv_shapes_are_errors() {
    let dev = &devices()[0];
    let s = ConvShape {
        batch: 1,
        channels: 3,
        height: 4,
        width: 4,
        filters: 4,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 1,
        pad_h: 0,
        pad_w: 0,
        groups: 2,
    };
    let x = Tensor::zeros(dev, [48], DType::F32).unwrap();
    let w = Tensor::zeros(dev, [54], DType::F32).unwrap();
    let mut y = Tensor::zeros(dev, [16], DType::F32).unwrap();
    let e = dev.conv2d(&s, &x, &w, &mut y).unwrap_err();
    assert!(
        e.to_string()
            .contains("2 groups must divide both the 3 input channels"),
        "{e}"
    );
}
