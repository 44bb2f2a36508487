//! The convolutional-network operations: convolution, pooling, LRN, batch normalisation,
//! softmax's gradient, top-k, and embedding rows.
//!
//! The strategies list their parts in the order the `proptest!` tests these came from listed
//! their arguments, so the seeds saved for those tests replay the same cases here.

use crate::compare::{assert_close, tensor, values};
use crate::runner::check;
use crate::shapes::{conv_shape, fast_path_conv_shape, winograd_conv_shape};
use crate::Devices;
use proptest::prelude::*;
use singa_core::{
    BatchNormArgs, ConvShape, DType, DeviceRef, Dims3, LrnShape, PoolKind, PoolShape, Precision,
    Result, Tensor,
};

/// This module's source, which names its file of saved failing seeds.
const SOURCE: &str = file!();

/// A flat f32 tensor holding `v`.
fn t(d: &DeviceRef, v: &[f32]) -> Result<Tensor> {
    tensor(d, v, &[v.len()])
}

/// Runs the three passes of `s` (output, input gradient, filter gradient) on the device under
/// test and the reference with products in `precision`, and compares them within a tolerance
/// that grows with the depth of each output's sums.
///
/// # Panics
/// On a difference, or when `devices` has no pair for `precision`.
pub fn compare_convolution(devices: &Devices, precision: Precision, s: &ConvShape, seed: u64) {
    let pair = devices
        .in_precision(precision)
        .unwrap_or_else(|| panic!("no devices with {precision} products to compare"));
    let x = values(seed, s.input_len(), -1.0, 1.0);
    let w = values(seed ^ 1, s.weight_len(), -1.0, 1.0);
    let dy = values(seed ^ 2, s.output_len(), -1.0, 1.0);
    let (got, want) = pair.both(|d| {
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
    // A device that computes this convolution in f32 whatever the precision, against a
    // reference that rounds the inputs, differs by the rounding (relative 2^-8 per product in
    // bf16, 2^-11 in f16; random signs).
    let in_f32 = precision != Precision::F32 && devices.rounded_convolution_in_f32(s);
    let (mut g, mut w) = (&got[..], &want[..]);
    for (what, (depth, len)) in ["y", "dx", "dw"].iter().zip(depths.iter().zip(lens)) {
        let ((g0, g1), (w0, w1)) = (g.split_at(len), w.split_at(len));
        let atol = if in_f32 {
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

/// Convolutions of any shape (odd sizes, padding, strides, groups): output and both gradients.
pub fn convolution_matches(devices: &Devices) {
    let strategy = (conv_shape(), any::<u64>());
    check(
        "convolution_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(s, seed)| {
            prop_assume!(s.problem().is_none());
            compare_convolution(devices, Precision::F32, &s, seed);
            Ok(())
        },
    );
}

/// Convolutions with bf16 products against the reference on bf16-rounded inputs, over general
/// shapes and the fast-path and Winograd families of [`crate::shapes`]. Skips without a bf16
/// device.
pub fn bf16_convolution_matches(devices: &Devices) {
    rounded_convolution_matches(devices, Precision::BF16, "bf16_convolution_matches");
}

/// As [`bf16_convolution_matches`], with f16 products. Skips without an f16 device.
pub fn f16_convolution_matches(devices: &Devices) {
    rounded_convolution_matches(devices, Precision::F16, "f16_convolution_matches");
}

fn rounded_convolution_matches(devices: &Devices, precision: Precision, name: &str) {
    if devices.pair_or_skip(precision, name).is_none() {
        return;
    }
    let strategy = (
        prop_oneof![conv_shape(), fast_path_conv_shape(), winograd_conv_shape()],
        any::<u64>(),
    );
    check(name, devices, SOURCE, 48, strategy, |(s, seed)| {
        prop_assume!(s.problem().is_none());
        compare_convolution(devices, precision, &s, seed);
        Ok(())
    });
}

/// Max and average pooling, floor and ceil output sizes, forward and backward, with ties
/// (the first maximum in row-major order wins) and the common 2×2/2 pool drawn often.
pub fn pooling_matches(devices: &Devices) {
    let strategy = (
        (1usize..4, 1usize..4, 1usize..12, 1usize..12),
        (
            1usize..4,
            1usize..4,
            1usize..4,
            1usize..4,
            0usize..2,
            0usize..2,
        ),
        any::<(bool, bool, bool, bool)>(),
        any::<u64>(),
    );
    check(
        "pooling_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(
            (batch, channels, height, width),
            (kh, kw, sh, sw, ph, pw),
            (max, ceil, halving, ties),
            seed,
        )| {
            // The common 2×2/2 pool has its own path: draw it often.
            let (kh, kw, sh, sw, ph, pw) = if halving {
                (2, 2, 2, 2, 0, 0)
            } else {
                (kh, kw, sh, sw, ph, pw)
            };
            let s = PoolShape {
                kind: if max { PoolKind::Max } else { PoolKind::Avg },
                batch,
                channels,
                height: height.max(kh),
                width: width.max(kw),
                kernel_h: kh,
                kernel_w: kw,
                stride_h: sh,
                stride_w: sw,
                pad_h: ph.min(kh - 1),
                pad_w: pw.min(kw - 1),
                ceil,
            };
            prop_assume!(s.problem().is_none());
            let mut x = values(seed, s.input_len(), -1.0, 1.0);
            if ties {
                // Few distinct values: the first maximum in row-major order must win everywhere.
                x.iter_mut().for_each(|v| *v = (*v * 2.0).round());
            }
            let dy = values(seed ^ 1, s.output_len(), -1.0, 1.0);
            let (got, want) = devices.both(|d| {
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
            Ok(())
        },
    );
}

/// Local response normalisation over windows of 1, 3 and 5 channels, forward and backward.
pub fn lrn_matches(devices: &Devices) {
    let strategy = (1usize..3, 1usize..9, 1usize..20, 0usize..3, any::<u64>());
    check(
        "lrn_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(batch, channels, spatial, half, seed)| {
            let s = LrnShape {
                batch,
                channels,
                spatial,
                size: 2 * half + 1,
                alpha: 0.0001 * 1000.0,
                beta: 0.75,
                k: 1.0,
            };
            let n = s.len();
            let x = values(seed, n, -2.0, 2.0);
            let dy = values(seed ^ 1, n, -1.0, 1.0);
            let (got, want) = devices.both(|d| {
                let tx = t(d, &x)?;
                let mut y = Tensor::zeros(d, [n], DType::F32)?;
                let mut sc = Tensor::zeros(d, [n], DType::F32)?;
                let mut dx = Tensor::zeros(d, [n], DType::F32)?;
                d.lrn(&s, &tx, &mut y, &mut sc)?;
                d.lrn_backward(&s, &tx, &y, &sc, &t(d, &dy)?, &mut dx)?;
                Ok([y.to_vec::<f32>()?, sc.to_vec()?, dx.to_vec()?].concat())
            });
            assert_close(&got, &want, 1e-5, 1e-4, &format!("{s:?}"));
            Ok(())
        },
    );
}

/// Batch normalisation in training (statistics, running statistics, gradients) and in
/// inference.
pub fn batch_norm_matches(devices: &Devices) {
    let strategy = (
        1usize..6,
        1usize..6,
        1usize..30,
        any::<bool>(),
        any::<u64>(),
    );
    check(
        "batch_norm_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(outer, mid, inner, training, seed)| {
            let a = BatchNormArgs {
                dims: Dims3 { outer, mid, inner },
                eps: 1e-5,
                momentum: 0.1,
                training,
            };
            let n = a.dims.numel();
            let x = values(seed, n, -2.0, 3.0);
            let dy = values(seed ^ 1, n, -1.0, 1.0);
            let (gamma, beta) = (
                values(seed ^ 2, mid, 0.5, 1.5),
                values(seed ^ 3, mid, -0.5, 0.5),
            );
            let (rm, rv) = (
                values(seed ^ 4, mid, -0.2, 0.2),
                values(seed ^ 5, mid, 0.5, 1.5),
            );
            let (got, want) = devices.both(|d| {
                let (tx, tg, tb) = (t(d, &x)?, t(d, &gamma)?, t(d, &beta)?);
                let zeros = |len| Tensor::zeros(d, [len], DType::F32);
                let mut y = zeros(n)?;
                let (mut mean, mut inv) = (zeros(mid)?, zeros(mid)?);
                let (mut trm, mut trv) = (t(d, &rm)?, t(d, &rv)?);
                d.batch_norm(
                    &a, &tx, &tg, &tb, &mut y, &mut mean, &mut inv, &mut trm, &mut trv,
                )?;
                let mut out = [y.to_vec::<f32>()?, trm.to_vec()?, trv.to_vec()?].concat();
                if training {
                    let mut dx = zeros(n)?;
                    let (mut dg, mut db) = (zeros(mid)?, zeros(mid)?);
                    d.batch_norm_backward(
                        &a,
                        &tx,
                        &t(d, &dy)?,
                        &tg,
                        &mean,
                        &inv,
                        &mut dx,
                        &mut dg,
                        &mut db,
                    )?;
                    out.extend(
                        [
                            mean.to_vec::<f32>()?,
                            inv.to_vec()?,
                            dx.to_vec()?,
                            dg.to_vec()?,
                            db.to_vec()?,
                        ]
                        .concat(),
                    );
                }
                Ok(out)
            });
            assert_close(&got, &want, 1e-4, 1e-4, &format!("{a:?}"));
            Ok(())
        },
    );
}

/// Softmax's gradient, and top-k indices and accuracy with ties (lower index first).
pub fn softmax_backward_and_top_k_match(devices: &Devices) {
    let strategy = (1usize..20, 1usize..30, 1usize..6, any::<u64>());
    check(
        "softmax_backward_and_top_k_match",
        devices,
        SOURCE,
        48,
        strategy,
        |(rows, cols, k, seed)| {
            let k = k.min(cols);
            // Values on a coarse grid so that ties happen.
            let x: Vec<f32> = values(seed, rows * cols, 0.0, 8.0)
                .iter()
                .map(|v| v.floor())
                .collect();
            let dy = values(seed ^ 1, rows * cols, -1.0, 1.0);
            let labels: Vec<i32> = values(seed ^ 2, rows, 0.0, cols as f32)
                .iter()
                .map(|v| *v as i32)
                .collect();
            let (got, want) = devices.both(|d| {
                let tx = Tensor::from_slice(d, &x, [rows, cols])?;
                let mut y = Tensor::zeros(d, [rows, cols], DType::F32)?;
                d.softmax(&tx, &mut y)?;
                let mut dx = Tensor::zeros(d, [rows, cols], DType::F32)?;
                d.softmax_backward(&y, &Tensor::from_slice(d, &dy, [rows, cols])?, &mut dx)?;
                let mut idx = Tensor::zeros(d, [rows, k], DType::I32)?;
                d.top_k(&tx, k, &mut idx)?;
                let mut stats = Tensor::zeros(d, [2], DType::F32)?;
                let tl = Tensor::from_slice(d, &labels, [rows])?;
                d.top_k_accuracy(&tx, &tl, k, &mut stats)?;
                let idx: Vec<f32> = idx.to_vec::<i32>()?.into_iter().map(|v| v as f32).collect();
                Ok([dx.to_vec::<f32>()?, idx, stats.to_vec()?].concat())
            });
            assert_close(&got, &want, 1e-6, 1e-5, "softmax backward / top-k");
            Ok(())
        },
    );
}

/// Embedding lookups and their backward pass, with repeated ids adding up.
pub fn gather_and_scatter_rows_match(devices: &Devices) {
    let strategy = (1usize..20, 1usize..40, 1usize..50, any::<u64>());
    check(
        "gather_and_scatter_rows_match",
        devices,
        SOURCE,
        48,
        strategy,
        |(rows, cols, n, seed)| {
            let table = values(seed, rows * cols, -1.0, 1.0);
            let src = values(seed ^ 1, n * cols, -1.0, 1.0);
            let ids: Vec<i32> = values(seed ^ 2, n, 0.0, rows as f32)
                .iter()
                .map(|v| (*v as i32).min(rows as i32 - 1))
                .collect();
            let (got, want) = devices.both(|d| {
                let tt = Tensor::from_slice(d, &table, [rows, cols])?;
                let ti = Tensor::from_slice(d, &ids, [n])?;
                let mut out = Tensor::zeros(d, [n, cols], DType::F32)?;
                d.gather_rows(&tt, &ti, &mut out)?;
                let mut grad = Tensor::from_slice(d, &table, [rows, cols])?;
                d.scatter_add_rows(&ti, &Tensor::from_slice(d, &src, [n, cols])?, &mut grad)?;
                Ok([out.to_vec::<f32>()?, grad.to_vec()?].concat())
            });
            assert_close(&got, &want, 1e-6, 1e-6, "gather / scatter rows");
            Ok(())
        },
    );
}

/// An id outside the table is an error naming it and its position, on both devices.
pub fn row_ids_outside_the_table_are_refused(devices: &Devices) {
    for d in [devices.device(), devices.reference()] {
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

/// A convolution whose groups do not divide its channels is an error saying so.
pub fn bad_conv_shapes_are_errors(devices: &Devices) {
    let dev = devices.device();
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
