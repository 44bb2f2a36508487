//! The tensor operations: products, elementwise maps, reductions, softmax, updates, copies
//! and casts, random draws, and the errors misuse gets.
//!
//! The strategies list their parts in the order the `proptest!` tests these came from listed
//! their arguments, so the seeds saved for those tests replay the same cases here.

use crate::compare::{assert_close, assert_identical, tensor as t, values};
use crate::runner::check;
use crate::{Devices, Pair};
use proptest::prelude::*;
use singa_core::{
    AdaptiveArgs, AdaptiveRule, BinaryOp, DType, Dims3, Distribution, GemmLayout, Precision,
    ReduceOp, SgdArgs, Tensor, UnaryOp,
};

/// This module's source, which names its file of saved failing seeds.
const SOURCE: &str = file!();

const UNARY: [UnaryOp; 15] = [
    UnaryOp::Identity,
    UnaryOp::Relu,
    UnaryOp::LeakyRelu { slope: 0.1 },
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
    UnaryOp::ScaledTanh,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Square,
    UnaryOp::Abs,
    UnaryOp::Sign,
    UnaryOp::Neg,
    UnaryOp::Clamp {
        min: -0.5,
        max: 0.25,
    },
    UnaryOp::Clamp {
        min: f32::NEG_INFINITY,
        max: 0.0,
    },
];

const BINARY: [BinaryOp; 6] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
];

/// Lengths: mostly small and odd, sometimes big enough to split across threads.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 1usize..300, 1 => 100_000usize..300_000]
}

/// Inputs where `op` is defined and its result finite.
fn domain(op: UnaryOp) -> (f32, f32) {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt => (0.05, 4.0),
        UnaryOp::Exp => (-20.0, 20.0),
        _ => (-6.0, 6.0),
    }
}

/// One case of [`gemm_matches`], [`gemm_bf16_matches`] and [`gemm_f16_products_match`]: `m, n, k`, whether to make the
/// product big, which operands are transposed, the padding of the rows, the batch size,
/// `alpha, beta`, and the seed.
type GemmCase = (
    usize,
    usize,
    usize,
    bool,
    (bool, bool),
    usize,
    usize,
    f32,
    f32,
    u64,
);

/// Random [`GemmCase`]s.
fn gemm_case() -> impl Strategy<Value = GemmCase> {
    (
        1usize..48,
        1usize..48,
        0usize..48,
        prop::bool::weighted(0.15),
        any::<(bool, bool)>(),
        0usize..3,
        1usize..4,
        prop_oneof![Just(1.0f32), Just(-0.5)],
        prop_oneof![Just(0.0f32), Just(1.0), Just(0.25)],
        any::<u64>(),
    )
}

/// A batched, strided product on both devices of `pair`, compared.
fn check_gemm(
    pair: Pair<'_>,
    (m, n, k, big, (trans_a, trans_b), pad, batch, alpha, beta, seed): GemmCase,
) {
    // Big enough to be split over threads, several depth blocks deep (blocks hold ≤ 256).
    let (m, n, k) = if big {
        (m * 5, n * 5, k * 13)
    } else {
        (m, n, k)
    };
    let mut l = GemmLayout::dense(m, n, k, trans_a, trans_b);
    let (ar, ac) = l.a_stored();
    let (br, bc) = l.b_stored();
    l.lda = ac + pad;
    l.ldb = bc + pad;
    l.ldc = n + pad;
    l.batch = batch;
    l.stride_a = ar * l.lda + pad;
    l.stride_b = br * l.ldb;
    l.stride_c = m * l.ldc + pad;
    let a = values(seed, batch * l.stride_a, -1.0, 1.0);
    let b = values(seed ^ 1, batch * l.stride_b, -1.0, 1.0);
    let c = values(seed ^ 2, batch * l.stride_c, -1.0, 1.0);
    let (got, want) = pair.both(|d| {
        let ta = t(d, &a, &[a.len()])?;
        let tb = t(d, &b, &[b.len()])?;
        let mut tc = t(d, &c, &[c.len()])?;
        d.gemm(l, alpha, &ta, &tb, beta, &mut tc)?;
        tc.to_vec::<f32>()
    });
    let what = format!("gemm in {}", pair.precision);
    assert_close(&got, &want, 1e-5 * (k as f32 + 1.0), 1e-5, &what);
}

/// Batched, strided, transposed f32 products, some split over threads and depth blocks.
pub fn gemm_matches(devices: &Devices) {
    check("gemm_matches", devices, SOURCE, 48, gemm_case(), |case| {
        check_gemm(devices.f32(), case);
        Ok(())
    });
}

/// bf16 products against the reference on bf16-rounded inputs: both multiply the same rounded
/// values, so they differ only by the f32 sums, as in f32. Skips without a bf16 device.
pub fn gemm_bf16_matches(devices: &Devices) {
    rounded_gemm_matches(devices, Precision::BF16, "gemm_bf16_matches");
}

/// As [`gemm_bf16_matches`], with f16 products (f32 tensors whose products round their inputs
/// to f16; [`gemm_f16_matches`] is about f16 tensors). Skips without an f16 device.
pub fn gemm_f16_products_match(devices: &Devices) {
    rounded_gemm_matches(devices, Precision::F16, "gemm_f16_products_match");
}

fn rounded_gemm_matches(devices: &Devices, precision: Precision, name: &str) {
    let Some(pair) = devices.pair_or_skip(precision, name) else {
        return;
    };
    check(name, devices, SOURCE, 48, gemm_case(), |case| {
        check_gemm(pair, case);
        Ok(())
    });
}

/// Products of f16 tensors (f16 in, f16 out).
pub fn gemm_f16_matches(devices: &Devices) {
    let strategy = (
        1usize..40,
        1usize..40,
        1usize..40,
        any::<bool>(),
        any::<u64>(),
    );
    check(
        "gemm_f16_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(m, n, k, trans_b, seed)| {
            let a = values(seed, m * k, -1.0, 1.0);
            let b = values(seed ^ 1, k * n, -1.0, 1.0);
            let (got, want) = devices.both(|d| {
                let ta = t(d, &a, &[m, k])?;
                let tb = t(d, &b, if trans_b { [n, k] } else { [k, n] }.as_slice())?;
                let mut ha = Tensor::zeros(d, [m, k], DType::F16)?;
                let mut hb = Tensor::zeros(d, tb.shape(), DType::F16)?;
                d.cast(&ta, &mut ha)?;
                d.cast(&tb, &mut hb)?;
                let mut hc = Tensor::zeros(d, [m, n], DType::F16)?;
                d.matmul(1.0, &ha, false, &hb, trans_b, 0.0, &mut hc)?;
                let mut c = Tensor::zeros(d, [m, n], DType::F32)?;
                d.cast(&hc, &mut c)?;
                c.to_vec::<f32>()
            });
            // f16 keeps 11 bits; sums of k products round at every step on some paths.
            assert_close(
                &got,
                &want,
                2e-3 * (k as f32).sqrt() + 2e-3,
                4e-3,
                "gemm f16",
            );
            Ok(())
        },
    );
}

/// Every unary map, in place and not, on its domain.
pub fn unary_matches(devices: &Devices) {
    let strategy = (
        length(),
        prop::sample::select(UNARY.to_vec()),
        any::<bool>(),
        any::<u64>(),
    );
    check(
        "unary_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(len, op, inplace, seed)| {
            let (lo, hi) = domain(op);
            let x = values(seed, len, lo, hi);
            let (got, want) = devices.both(|d| {
                let tx = t(d, &x, &[len])?;
                let mut y = if inplace {
                    tx.clone()
                } else {
                    Tensor::zeros(d, [len], DType::F32)?
                };
                d.unary(op, &tx, &mut y)?;
                y.to_vec::<f32>()
            });
            assert_close(&got, &want, 1e-6, 2e-6, &format!("{op:?}"));
            Ok(())
        },
    );
}

/// The gradients of every unary map, in place and not.
pub fn unary_backward_matches(devices: &Devices) {
    let strategy = (
        length(),
        prop::sample::select(UNARY.to_vec()),
        any::<bool>(),
        any::<u64>(),
    );
    check(
        "unary_backward_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(len, op, inplace, seed)| {
            let (lo, hi) = domain(op);
            let x = values(seed, len, lo, hi);
            let dy = values(seed ^ 7, len, -1.0, 1.0);
            // Both devices get the same forward output (the reference's), so only the backward
            // kernel is compared.
            let reference = devices.reference();
            let mut y_reference = Tensor::zeros(reference, [len], DType::F32).unwrap();
            reference
                .unary(op, &t(reference, &x, &[len]).unwrap(), &mut y_reference)
                .unwrap();
            let y = y_reference.to_vec::<f32>().unwrap();
            let (got, want) = devices.both(|d| {
                let tx = t(d, &x, &[len])?;
                let ty = t(d, &y, &[len])?;
                let tdy = t(d, &dy, &[len])?;
                let mut dx = if inplace {
                    tdy.clone()
                } else {
                    Tensor::zeros(d, [len], DType::F32)?
                };
                d.unary_backward(op, &tx, &ty, &tdy, &mut dx)?;
                dx.to_vec::<f32>()
            });
            assert_close(&got, &want, 1e-6, 2e-6, &format!("{op:?} backward"));
            Ok(())
        },
    );
}

/// Every binary map, with the output a fresh tensor or exactly one of the inputs, and with
/// both inputs the same tensor.
pub fn binary_matches(devices: &Devices) {
    let strategy = (
        length(),
        prop::sample::select(BINARY.to_vec()),
        0u8..4,
        any::<u64>(),
    );
    check(
        "binary_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(len, op, alias, seed)| {
            let a = values(seed, len, -3.0, 3.0);
            let b = values(seed ^ 3, len, 0.5, 3.0);
            let (got, want) = devices.both(|d| {
                let ta = t(d, &a, &[len])?;
                let tb = t(d, &b, &[len])?;
                let mut y = match alias {
                    0 => Tensor::zeros(d, [len], DType::F32)?,
                    2 => tb.clone(),
                    _ => ta.clone(),
                };
                let second = if alias == 3 { ta.clone() } else { tb };
                d.binary(op, &ta, &second, &mut y)?;
                y.to_vec::<f32>()
            });
            assert_close(&got, &want, 1e-6, 1e-6, &format!("{op:?}"));
            Ok(())
        },
    );
}

/// `y = αx + βy` (in place too, and with `β = 0`, where `y` is not read) and `z = βy + α`.
pub fn axpby_and_affine_match(devices: &Devices) {
    let strategy = (
        length(),
        -2.0f32..2.0,
        prop_oneof![Just(0.0f32), -2.0f32..2.0],
        any::<bool>(),
        any::<u64>(),
    );
    check(
        "axpby_and_affine_match",
        devices,
        SOURCE,
        48,
        strategy,
        |(len, alpha, beta, inplace, seed)| {
            let x = values(seed, len, -3.0, 3.0);
            let y0 = values(seed ^ 5, len, -3.0, 3.0);
            let (got, want) = devices.both(|d| {
                let tx = t(d, &x, &[len])?;
                let mut y = if inplace {
                    tx.clone()
                } else {
                    t(d, &y0, &[len])?
                };
                d.axpby(alpha, &tx, beta, &mut y)?;
                let mut z = Tensor::zeros(d, [len], DType::F32)?;
                d.affine(&y, &mut z, beta, alpha)?;
                Ok([y.to_vec::<f32>()?, z.to_vec::<f32>()?].concat())
            });
            assert_close(&got, &want, 1e-5, 1e-6, "axpby/affine");
            Ok(())
        },
    );
}

/// Random draws at any offset of the stream: uniform and Bernoulli draws bit-identical to the
/// reference's; Gaussian ones too, unless the backend declared a tolerance `r`
/// ([`Devices::with_gaussian_tolerance`]): then within `r·(|draw| + |mean| + std)`, the
/// distribution's scale keeping draws near 0 (which come from cancelling terms of that size)
/// to the same absolute error as the rest.
pub fn random_matches(devices: &Devices) {
    let strategy = (length(), 0u64..1000, any::<u64>(), 0u8..3);
    check(
        "random_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(len, offset, seed, which)| {
            let dist = match which {
                0 => Distribution::Uniform {
                    low: -0.3,
                    high: 0.7,
                },
                1 => Distribution::Gaussian {
                    mean: 1.0,
                    std: 0.5,
                },
                _ => Distribution::Bernoulli {
                    p: 0.8,
                    scale: 1.25,
                },
            };
            let (got, want) = devices.both(|d| {
                let mut x = Tensor::zeros(d, [len], DType::F32)?;
                d.random(&mut x, dist, seed, offset)?;
                x.to_vec::<f32>()
            });
            let tolerance = devices.gaussian_tolerance();
            match dist {
                Distribution::Gaussian { mean, std } if tolerance > 0.0 => {
                    let scale = mean.abs() + std;
                    assert_close(
                        &got,
                        &want,
                        tolerance * scale,
                        tolerance,
                        "random (Gaussian)",
                    );
                }
                _ => assert_identical(&got, &want, &format!("random ({dist:?})")),
            }
            Ok(())
        },
    );
}

/// Adding and multiplying a vector along the middle axis, then every reduction over it with
/// `β` 0 (where `y` is not read), 1 and -0.5.
pub fn broadcast_and_reduce_match(devices: &Devices) {
    let strategy = (
        1usize..9,
        1usize..70,
        1usize..300,
        prop::sample::select(vec![ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max]),
        prop_oneof![Just(0.0f32), Just(1.0), Just(-0.5)],
        any::<u64>(),
    );
    check(
        "broadcast_and_reduce_match",
        devices,
        SOURCE,
        48,
        strategy,
        |(outer, mid, inner, op, beta, seed)| {
            let dims = Dims3 { outer, mid, inner };
            let x = values(seed, dims.numel(), -2.0, 2.0);
            let v = values(seed ^ 9, mid, -1.0, 1.0);
            let y0 = values(seed ^ 11, outer * inner, -1.0, 1.0);
            let (got, want) = devices.both(|d| {
                let mut tx = t(d, &x, &[dims.numel()])?;
                d.add_broadcast(dims, &t(d, &v, &[mid])?, &mut tx)?;
                d.mul_broadcast(dims, &t(d, &v, &[mid])?, &mut tx)?;
                let mut y = t(d, &y0, &[outer * inner])?;
                d.reduce(op, dims, &tx, &mut y, 0.75, beta)?;
                Ok([tx.to_vec::<f32>()?, y.to_vec::<f32>()?].concat())
            });
            assert_close(
                &got,
                &want,
                1e-5 * mid as f32,
                1e-5,
                &format!("broadcast+{op:?}"),
            );
            Ok(())
        },
    );
}

/// Softmax, softmax cross-entropy (probabilities and the statistics added to `stats`) and its
/// gradient, in place and not.
pub fn softmax_and_cross_entropy_match(devices: &Devices) {
    let strategy = (
        1usize..70,
        1usize..40,
        any::<bool>(),
        0.01f32..2.0,
        any::<u64>(),
    );
    check(
        "softmax_and_cross_entropy_match",
        devices,
        SOURCE,
        48,
        strategy,
        |(rows, cols, inplace, scale, seed)| {
            let x = values(seed, rows * cols, -8.0, 8.0);
            let labels: Vec<i32> = values(seed ^ 13, rows, 0.0, cols as f32)
                .iter()
                .map(|v| *v as i32)
                .collect();
            let (got, want) = devices.both(|d| {
                let tx = t(d, &x, &[rows, cols])?;
                // In place, the outputs start as copies of the inputs they overwrite.
                let fresh = || {
                    if inplace {
                        t(d, &x, &[rows, cols])
                    } else {
                        Tensor::zeros(d, [rows, cols], DType::F32)
                    }
                };
                let mut sm = fresh()?;
                let src = if inplace { sm.clone() } else { tx.clone() };
                d.softmax(&src, &mut sm)?;
                let tl = Tensor::from_slice(d, &labels, [rows])?;
                let mut probs = fresh()?;
                let logits = if inplace { probs.clone() } else { tx.clone() };
                let mut stats = t(d, &[1.0, 2.0, 3.0], &[3])?;
                d.softmax_cross_entropy(&logits, &tl, &mut probs, &mut stats)?;
                let mut dx = if inplace {
                    probs.clone()
                } else {
                    Tensor::zeros(d, [rows, cols], DType::F32)?
                };
                let p = probs.clone();
                d.softmax_cross_entropy_backward(&p, &tl, &mut dx, scale)?;
                // In place, the gradient overwrote the probabilities.
                let probs_out = if inplace {
                    Vec::new()
                } else {
                    probs.to_vec::<f32>()?
                };
                Ok([
                    sm.to_vec::<f32>()?,
                    probs_out,
                    stats.to_vec::<f32>()?,
                    dx.to_vec::<f32>()?,
                ]
                .concat())
            });
            assert_close(
                &got,
                &want,
                2e-5 * rows as f32,
                1e-5,
                "softmax/cross-entropy",
            );
            Ok(())
        },
    );
}

/// The fused SGD step: plain, with momentum, and Nesterov's, with and without weight decay.
pub fn sgd_matches(devices: &Devices) {
    let strategy = (
        length(),
        0u8..3,
        0.001f32..0.5,
        prop_oneof![Just(0.0f32), 0.0f32..0.01],
        0.1f32..1.0,
        any::<u64>(),
    );
    check(
        "sgd_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(len, kind, lr, wd, gs, seed)| {
            let w = values(seed, len, -1.0, 1.0);
            let g = values(seed ^ 1, len, -1.0, 1.0);
            let m = values(seed ^ 2, len, -1.0, 1.0);
            let args = SgdArgs {
                lr,
                momentum: 0.9,
                weight_decay: wd,
                nesterov: kind == 2,
                grad_scale: gs,
            };
            let (got, want) = devices.both(|d| {
                let mut tw = t(d, &w, &[len])?;
                let tg = t(d, &g, &[len])?;
                let mut tm = t(d, &m, &[len])?;
                let momentum = if kind == 0 { None } else { Some(&mut tm) };
                d.sgd_update(&mut tw, &tg, momentum, args)?;
                Ok([tw.to_vec::<f32>()?, tm.to_vec::<f32>()?].concat())
            });
            assert_close(&got, &want, 1e-6, 1e-6, "sgd");
            Ok(())
        },
    );
}

/// Every adaptive rule (AdaGrad, RMSProp, Adam, AdamW, AdaDelta, AdaMax) at steps 1 to 49.
pub fn adaptive_updates_match(devices: &Devices) {
    let strategy = (
        length(),
        0u8..6,
        0.0001f32..0.1,
        prop_oneof![Just(0.0f32), 0.0f32..0.01],
        1i32..50,
        any::<u64>(),
    );
    check(
        "adaptive_updates_match",
        devices,
        SOURCE,
        32,
        strategy,
        |(len, which, lr, wd, step, seed)| {
            let rule = match which {
                0 => AdaptiveRule::AdaGrad { eps: 1e-7 },
                1 => AdaptiveRule::RmsProp {
                    rho: 0.9,
                    eps: 1e-7,
                },
                4 => AdaptiveRule::AdaDelta {
                    rho: 0.9,
                    eps: 1e-6,
                },
                5 => AdaptiveRule::AdaMax {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-7,
                    correction1: 1.0 - 0.9f32.powi(step),
                },
                k => AdaptiveRule::Adam {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-7,
                    correction1: 1.0 - 0.9f32.powi(step),
                    correction2: 1.0 - 0.999f32.powi(step),
                    decoupled: k == 3,
                },
            };
            let args = AdaptiveArgs {
                rule,
                lr,
                weight_decay: wd,
                grad_scale: 0.5,
            };
            let w = values(seed, len, -1.0, 1.0);
            let g = values(seed ^ 1, len, -1.0, 1.0);
            let s1 = values(seed ^ 2, len, 0.0, 1.0);
            let s2 = values(seed ^ 3, len, 0.0, 1.0);
            let (got, want) = devices.both(|d| {
                let mut tw = t(d, &w, &[len])?;
                let tg = t(d, &g, &[len])?;
                let mut ts1 = t(d, &s1, &[len])?;
                let mut ts2 = t(d, &s2, &[len])?;
                let second = if rule.needs_second_state() {
                    Some(&mut ts2)
                } else {
                    None
                };
                d.adaptive_update(&mut tw, &tg, &mut ts1, second, args)?;
                Ok([
                    tw.to_vec::<f32>()?,
                    ts1.to_vec::<f32>()?,
                    ts2.to_vec::<f32>()?,
                ]
                .concat())
            });
            assert_close(&got, &want, 2e-6, 2e-5, &format!("{rule:?}"));
            Ok(())
        },
    );
}

/// Casts from f32 to every dtype (rounding, truncation, saturation), fills, copies of a block
/// of columns and whole copies in every dtype, and casts back: bit-identical.
pub fn copies_casts_and_fills_match(devices: &Devices) {
    let strategy = (
        1usize..40,
        1usize..40,
        0usize..10,
        any::<u64>(),
        -300.0f64..300.0,
    );
    check(
        "copies_casts_and_fills_match",
        devices,
        SOURCE,
        48,
        strategy,
        |(rows, cols, c0, seed, value)| {
            let x = values(seed, rows * cols, -300.0, 300.0);
            let c0 = c0.min(cols - 1);
            let width = cols - c0;
            let (got, want) = devices.both(|d| {
                let tx = t(d, &x, &[rows, cols])?;
                let mut out = Vec::new();
                for dtype in DType::ALL {
                    let mut a = Tensor::zeros(d, [rows, cols], dtype)?;
                    d.cast(&tx, &mut a)?;
                    let mut b = Tensor::zeros(d, [rows, cols + 3], dtype)?;
                    d.fill(&mut b, value)?;
                    d.copy_columns(&a, c0, &mut b, 3, width)?;
                    let mut c = Tensor::zeros(d, [rows, cols + 3], dtype)?;
                    d.copy(&b, &mut c)?;
                    let mut back = Tensor::zeros(d, [rows, cols + 3], DType::F32)?;
                    d.cast(&c, &mut back)?;
                    out.extend(back.to_vec::<f32>()?);
                }
                Ok(out)
            });
            assert_identical(&got, &want, "copies/casts/fills");
            Ok(())
        },
    );
}

/// Host data of every dtype comes back unchanged, and reading it as another dtype fails.
pub fn host_round_trip_for_every_dtype(devices: &Devices) {
    for dev in [devices.device(), devices.reference()] {
        let x = Tensor::from_slice(dev, &[1u8, 2, 250], [3]).unwrap();
        assert_eq!(x.to_vec::<u8>().unwrap(), vec![1, 2, 250]);
        let x = Tensor::from_slice(dev, &[-7i32, 9], [2]).unwrap();
        assert_eq!(x.to_vec::<i32>().unwrap(), vec![-7, 9]);
        let h = [half::f16::from_f32(0.5), half::f16::from_f32(-2.0)];
        assert_eq!(
            Tensor::from_slice(dev, &h, [2])
                .unwrap()
                .to_vec::<half::f16>()
                .unwrap(),
            h
        );
        let b = [half::bf16::from_f32(0.5), half::bf16::from_f32(-2.0)];
        assert_eq!(
            Tensor::from_slice(dev, &b, [2])
                .unwrap()
                .to_vec::<half::bf16>()
                .unwrap(),
            b
        );
        assert!(x.to_vec::<f32>().is_err(), "reading i32 as f32 must fail");
    }
}

/// A label outside the classes is an error naming it and its sample, not a panic or a read
/// out of bounds.
pub fn bad_labels_are_errors_not_panics(devices: &Devices) {
    for dev in [devices.device(), devices.reference()] {
        let x = Tensor::zeros(dev, [2, 3], DType::F32).unwrap();
        let l = Tensor::from_slice(dev, &[0i32, 3], [2]).unwrap();
        let mut p = Tensor::zeros(dev, [2, 3], DType::F32).unwrap();
        let mut s = Tensor::zeros(dev, [3], DType::F32).unwrap();
        let e = dev
            .softmax_cross_entropy(&x, &l, &mut p, &mut s)
            .unwrap_err();
        assert!(e.to_string().contains("label 3 of sample 1"), "{e}");
    }
}

/// Shapes that do not chain, outputs overlapping inputs, wrong dtypes, and tensors in memory
/// the device cannot use are errors.
pub fn misuse_is_rejected_with_errors(devices: &Devices) {
    let (device, reference) = (devices.device(), devices.reference());
    let a = Tensor::zeros(device, [2, 3], DType::F32).unwrap();
    let mut c = Tensor::zeros(device, [2, 2], DType::F32).unwrap();
    // A tensor of another device: usable when the two share memory (the CPU and the reference
    // device both use the host's), refused otherwise.
    let b = Tensor::zeros(reference, [3, 2], DType::F32).unwrap();
    let mixed = device.matmul(1.0, &a, false, &b, false, 0.0, &mut c);
    if device.shares_memory_with(reference) {
        mixed.unwrap();
    } else {
        let e = mixed.unwrap_err();
        assert!(e.to_string().contains("cannot use"), "{e}");
    }
    // Shapes that do not chain.
    let b = Tensor::zeros(device, [2, 2], DType::F32).unwrap();
    let e = device
        .matmul(1.0, &a, false, &b, false, 0.0, &mut c)
        .unwrap_err();
    assert!(e.to_string().contains("shape mismatch in matmul"), "{e}");
    // Output overlapping an input in gemm.
    let sq = Tensor::zeros(device, [2, 2], DType::F32).unwrap();
    let mut alias = sq.clone();
    assert!(device
        .matmul(1.0, &sq, false, &b, false, 0.0, &mut alias)
        .is_err());
    // A partial overlap in an elementwise op.
    let big = Tensor::zeros(device, [10], DType::F32).unwrap();
    let mut shifted = big.narrow(1, 5).unwrap();
    assert!(device
        .unary(UnaryOp::Relu, &big.narrow(0, 5).unwrap(), &mut shifted)
        .is_err());
    // A wrong dtype.
    let ints = Tensor::zeros(device, [4], DType::I32).unwrap();
    let mut out = Tensor::zeros(device, [4], DType::F32).unwrap();
    assert!(device.unary(UnaryOp::Relu, &ints, &mut out).is_err());
}

/// The products of the MLP benchmark, each of which the CPU device splits over threads its own
/// way (depth with partial sums, rows, columns of a transposed B).
pub fn mlp_shaped_products_match(devices: &Devices) {
    for (m, n, k, ta, tb) in [
        (64, 1000, 784, false, false),
        (784, 1000, 64, true, false),
        (64, 1000, 500, false, true),
    ] {
        let a = values(1, m * k, -1.0, 1.0);
        let b = values(2, k * n, -1.0, 1.0);
        let (got, want) = devices.both(|d| {
            let ta_t = t(d, &a, if ta { [k, m] } else { [m, k] }.as_slice())?;
            let tb_t = t(d, &b, if tb { [n, k] } else { [k, n] }.as_slice())?;
            let mut c = t(d, &values(3, m * n, -1.0, 1.0), &[m, n])?;
            d.matmul(0.5, &ta_t, ta, &tb_t, tb, 1.0, &mut c)?;
            c.to_vec::<f32>()
        });
        assert_close(&got, &want, 1e-5 * k as f32, 1e-5, &format!("{m}x{n}x{k}"));
    }
}
