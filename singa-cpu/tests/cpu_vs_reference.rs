//! Every operation of the CPU device against the reference device, on random shapes.
//!
//! Each property builds the same inputs on both devices (from a seed proptest picks), runs the
//! operation on each, and compares the results within a tolerance that fits the operation.
//! Shapes include odd sizes, sizes that split across threads, transposed and strided operands,
//! and in-place calls.

use proptest::prelude::*;
use singa_core::{
    AdaptiveArgs, AdaptiveRule, BinaryOp, DType, DeviceRef, Dims3, Distribution, GemmLayout,
    Precision, ReduceOp, Result, SgdArgs, Tensor, UnaryOp,
};
mod common;

use common::{assert_close, both, both_in, devices, values};

fn t(dev: &DeviceRef, data: &[f32], shape: &[usize]) -> Result<Tensor> {
    Tensor::from_slice(dev, data, singa_core::Shape::new(shape)?)
}

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

fn domain(op: UnaryOp) -> (f32, f32) {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt => (0.05, 4.0),
        UnaryOp::Exp => (-20.0, 20.0),
        _ => (-6.0, 6.0),
    }
}

/// A batched, strided product on both devices in `precision`, compared.
fn check_gemm(
    precision: Precision,
    (m, n, k): (usize, usize, usize),
    big: bool,
    (trans_a, trans_b): (bool, bool),
    (pad, batch): (usize, usize),
    (alpha, beta): (f32, f32),
    seed: u64,
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
    let (got, want) = both_in(precision, |d| {
        let ta = t(d, &a, &[a.len()])?;
        let tb = t(d, &b, &[b.len()])?;
        let mut tc = t(d, &c, &[c.len()])?;
        d.gemm(l, alpha, &ta, &tb, beta, &mut tc)?;
        tc.to_vec::<f32>()
    });
    let what = format!("gemm in {precision}");
    assert_close(&got, &want, 1e-5 * (k as f32 + 1.0), 1e-5, &what);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn gemm_matches(
        m in 1usize..48, n in 1usize..48, k in 0usize..48,
        big in prop::bool::weighted(0.15),
        trans: (bool, bool),
        pad in 0usize..3, batch in 1usize..4,
        alpha in prop_oneof![Just(1.0f32), Just(-0.5)],
        beta in prop_oneof![Just(0.0f32), Just(1.0), Just(0.25)],
        seed: u64,
    ) {
        check_gemm(Precision::F32, (m, n, k), big, trans, (pad, batch), (alpha, beta), seed);
    }

    /// bf16 products against the reference on bf16-rounded inputs: both multiply the same
    /// rounded values, so they differ only by the f32 sums, as in f32.
    #[test]
    fn gemm_bf16_matches(
        m in 1usize..48, n in 1usize..48, k in 0usize..48,
        big in prop::bool::weighted(0.15),
        trans: (bool, bool),
        pad in 0usize..3, batch in 1usize..4,
        alpha in prop_oneof![Just(1.0f32), Just(-0.5)],
        beta in prop_oneof![Just(0.0f32), Just(1.0), Just(0.25)],
        seed: u64,
    ) {
        check_gemm(Precision::BF16, (m, n, k), big, trans, (pad, batch), (alpha, beta), seed);
    }

    #[test]
    fn gemm_f16_matches(m in 1usize..40, n in 1usize..40, k in 1usize..40, trans_b: bool, seed: u64) {
        let a = values(seed, m * k, -1.0, 1.0);
        let b = values(seed ^ 1, k * n, -1.0, 1.0);
        let (got, want) = both(|d| {
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
        assert_close(&got, &want, 2e-3 * (k as f32).sqrt() + 2e-3, 4e-3, "gemm f16");
    }

    #[test]
    fn unary_matches(len in length(), op in prop::sample::select(UNARY.to_vec()), inplace: bool, seed: u64) {
        let (lo, hi) = domain(op);
        let x = values(seed, len, lo, hi);
        let (got, want) = both(|d| {
            let tx = t(d, &x, &[len])?;
            if inplace {
                let mut y = tx.clone();
                d.unary(op, &tx, &mut y)?;
                y.to_vec::<f32>()
            } else {
                let mut y = Tensor::zeros(d, [len], DType::F32)?;
                d.unary(op, &tx, &mut y)?;
                y.to_vec::<f32>()
            }
        });
        assert_close(&got, &want, 1e-6, 2e-6, &format!("{op:?}"));
    }

    #[test]
    fn unary_backward_matches(len in length(), op in prop::sample::select(UNARY.to_vec()), inplace: bool, seed: u64) {
        let (lo, hi) = domain(op);
        let x = values(seed, len, lo, hi);
        let dy = values(seed ^ 7, len, -1.0, 1.0);
        let (got, want) = both(|d| {
            let tx = t(d, &x, &[len])?;
            let mut y = Tensor::zeros(d, [len], DType::F32)?;
            d.unary(op, &tx, &mut y)?;
            // Both devices get the same forward output (the reference's), so only the
            // backward kernel is compared.
            let yr = devices()[1].clone();
            let mut yref = Tensor::zeros(&yr, [len], DType::F32)?;
            yr.unary(op, &t(&yr, &x, &[len])?, &mut yref)?;
            let y = t(d, &yref.to_vec::<f32>()?, &[len])?;
            let tdy = t(d, &dy, &[len])?;
            let mut dx = if inplace { tdy.clone() } else { Tensor::zeros(d, [len], DType::F32)? };
            d.unary_backward(op, &tx, &y, &tdy, &mut dx)?;
            dx.to_vec::<f32>()
        });
        assert_close(&got, &want, 1e-6, 2e-6, &format!("{op:?} backward"));
    }

    #[test]
    fn binary_matches(len in length(), op in prop::sample::select(BINARY.to_vec()), alias in 0u8..4, seed: u64) {
        let a = values(seed, len, -3.0, 3.0);
        let b: Vec<f32> = values(seed ^ 3, len, 0.5, 3.0);
        let (got, want) = both(|d| {
            let ta = t(d, &a, &[len])?;
            let tb = t(d, &b, &[len])?;
            let mut y = match alias {
                0 => Tensor::zeros(d, [len], DType::F32)?,
                1 => ta.clone(),
                2 => tb.clone(),
                _ => ta.clone(),
            };
            let bb = if alias == 3 { ta.clone() } else { tb };
            d.binary(op, &ta, &bb, &mut y)?;
            y.to_vec::<f32>()
        });
        assert_close(&got, &want, 1e-6, 1e-6, &format!("{op:?}"));
    }

    #[test]
    fn axpby_and_affine_match(len in length(), alpha in -2.0f32..2.0, beta in prop_oneof![Just(0.0f32), -2.0f32..2.0], inplace: bool, seed: u64) {
        let x = values(seed, len, -3.0, 3.0);
        let y0 = values(seed ^ 5, len, -3.0, 3.0);
        let (got, want) = both(|d| {
            let tx = t(d, &x, &[len])?;
            let mut y = if inplace { tx.clone() } else { t(d, &y0, &[len])? };
            d.axpby(alpha, &tx, beta, &mut y)?;
            let mut z = Tensor::zeros(d, [len], DType::F32)?;
            d.affine(&y, &mut z, beta, alpha)?;
            Ok([y.to_vec::<f32>()?, z.to_vec::<f32>()?].concat())
        });
        assert_close(&got, &want, 1e-5, 1e-6, "axpby/affine");
    }

    #[test]
    fn random_is_identical(len in length(), offset in 0u64..1000, seed: u64, which in 0u8..3) {
        let dist = match which {
            0 => Distribution::Uniform { low: -0.3, high: 0.7 },
            1 => Distribution::Gaussian { mean: 1.0, std: 0.5 },
            _ => Distribution::Bernoulli { p: 0.8, scale: 1.25 },
        };
        let (got, want) = both(|d| {
            let mut x = Tensor::zeros(d, [len], DType::F32)?;
            d.random(&mut x, dist, seed, offset)?;
            x.to_vec::<f32>()
        });
        assert_identical(&got, &want, "random");
    }

    #[test]
    fn broadcast_and_reduce_match(
        outer in 1usize..9, mid in 1usize..70, inner in 1usize..300,
        op in prop::sample::select(vec![ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max]),
        beta in prop_oneof![Just(0.0f32), Just(1.0), Just(-0.5)],
        seed: u64,
    ) {
        let dims = Dims3 { outer, mid, inner };
        let x = values(seed, dims.numel(), -2.0, 2.0);
        let v = values(seed ^ 9, mid, -1.0, 1.0);
        let y0 = values(seed ^ 11, outer * inner, -1.0, 1.0);
        let (got, want) = both(|d| {
            let mut tx = t(d, &x, &[dims.numel()])?;
            d.add_broadcast(dims, &t(d, &v, &[mid])?, &mut tx)?;
            d.mul_broadcast(dims, &t(d, &v, &[mid])?, &mut tx)?;
            let mut y = t(d, &y0, &[outer * inner])?;
            d.reduce(op, dims, &tx, &mut y, 0.75, beta)?;
            Ok([tx.to_vec::<f32>()?, y.to_vec::<f32>()?].concat())
        });
        assert_close(&got, &want, 1e-5 * mid as f32, 1e-5, &format!("broadcast+{op:?}"));
    }

    #[test]
    fn softmax_and_cross_entropy_match(rows in 1usize..70, cols in 1usize..40, inplace: bool, scale in 0.01f32..2.0, seed: u64) {
        let x = values(seed, rows * cols, -8.0, 8.0);
        let labels: Vec<i32> = values(seed ^ 13, rows, 0.0, cols as f32).iter().map(|v| *v as i32).collect();
        let (got, want) = both(|d| {
            let tx = t(d, &x, &[rows, cols])?;
            let mut sm = if inplace { t(d, &x, &[rows, cols])? } else { Tensor::zeros(d, [rows, cols], DType::F32)? };
            let src = if inplace { sm.clone() } else { tx.clone() };
            d.softmax(&src, &mut sm)?;
            let tl = Tensor::from_slice(d, &labels, [rows])?;
            let mut probs = if inplace { t(d, &x, &[rows, cols])? } else { Tensor::zeros(d, [rows, cols], DType::F32)? };
            let logits = if inplace { probs.clone() } else { tx.clone() };
            let mut stats = t(d, &[1.0, 2.0, 3.0], &[3])?;
            d.softmax_cross_entropy(&logits, &tl, &mut probs, &mut stats)?;
            let mut dx = if inplace { probs.clone() } else { Tensor::zeros(d, [rows, cols], DType::F32)? };
            let p = probs.clone();
            d.softmax_cross_entropy_backward(&p, &tl, &mut dx, scale)?;
            let probs_out = if inplace { Vec::new() } else { probs.to_vec::<f32>()? };
            Ok([sm.to_vec::<f32>()?, probs_out, stats.to_vec::<f32>()?, dx.to_vec::<f32>()?].concat())
        });
        assert_close(&got, &want, 2e-5 * rows as f32, 1e-5, "softmax/cross-entropy");
    }

    #[test]
    fn sgd_matches(len in length(), kind in 0u8..3, lr in 0.001f32..0.5, wd in prop_oneof![Just(0.0f32), 0.0f32..0.01], gs in 0.1f32..1.0, seed: u64) {
        let w = values(seed, len, -1.0, 1.0);
        let g = values(seed ^ 1, len, -1.0, 1.0);
        let m = values(seed ^ 2, len, -1.0, 1.0);
        let args = SgdArgs { lr, momentum: 0.9, weight_decay: wd, nesterov: kind == 2, grad_scale: gs };
        let (got, want) = both(|d| {
            let mut tw = t(d, &w, &[len])?;
            let tg = t(d, &g, &[len])?;
            let mut tm = t(d, &m, &[len])?;
            d.sgd_update(&mut tw, &tg, if kind == 0 { None } else { Some(&mut tm) }, args)?;
            Ok([tw.to_vec::<f32>()?, tm.to_vec::<f32>()?].concat())
        });
        assert_close(&got, &want, 1e-6, 1e-6, "sgd");
    }

    #[test]
    fn copies_casts_and_fills_match(rows in 1usize..40, cols in 1usize..40, c0 in 0usize..10, seed: u64, value in -300.0f64..300.0) {
        let x = values(seed, rows * cols, -300.0, 300.0);
        let c0 = c0.min(cols - 1);
        let width = cols - c0;
        let (got, want) = both(|d| {
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
    }
}

fn assert_identical(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} of {}: cpu {}, reference {}",
            got.len(),
            got[i],
            want[i]
        );
    }
}

#[test]
fn host_round_trip_for_every_dtype() {
    for dev in devices() {
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

#[test]
fn bad_labels_are_errors_not_panics() {
    for dev in devices() {
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

#[test]
fn misuse_is_rejected_with_errors() {
    let [cpu, reference] = devices();
    let a = Tensor::zeros(cpu, [2, 3], DType::F32).unwrap();
    let b = Tensor::zeros(reference, [3, 2], DType::F32).unwrap();
    let mut c = Tensor::zeros(cpu, [2, 2], DType::F32).unwrap();
    // The CPU and reference devices share host memory: each runs on the other's tensors.
    assert!(cpu.shares_memory_with(reference));
    cpu.matmul(1.0, &a, false, &b, false, 0.0, &mut c).unwrap();
    // Shapes that do not chain.
    let b = Tensor::zeros(cpu, [2, 2], DType::F32).unwrap();
    let e = cpu
        .matmul(1.0, &a, false, &b, false, 0.0, &mut c)
        .unwrap_err();
    assert!(e.to_string().contains("shape mismatch in matmul"), "{e}");
    // Output overlapping an input in gemm.
    let sq = Tensor::zeros(cpu, [2, 2], DType::F32).unwrap();
    let mut alias = sq.clone();
    assert!(cpu
        .matmul(1.0, &sq, false, &b, false, 0.0, &mut alias)
        .is_err());
    // A partial overlap in an elementwise op.
    let big = Tensor::zeros(cpu, [10], DType::F32).unwrap();
    let mut shifted = big.narrow(1, 5).unwrap();
    assert!(cpu
        .unary(UnaryOp::Relu, &big.narrow(0, 5).unwrap(), &mut shifted)
        .is_err());
    // A wrong dtype.
    let ints = Tensor::zeros(cpu, [4], DType::I32).unwrap();
    let mut out = Tensor::zeros(cpu, [4], DType::F32).unwrap();
    assert!(cpu.unary(UnaryOp::Relu, &ints, &mut out).is_err());
}

/// The products of the MLP benchmark, each of which takes another split over threads (depth
/// with partial sums, rows, columns of a transposed B).
#[test]
fn mlp_shaped_products_match() {
    for (m, n, k, ta, tb) in [
        (64, 1000, 784, false, false),
        (784, 1000, 64, true, false),
        (64, 1000, 500, false, true),
    ] {
        let a = values(1, m * k, -1.0, 1.0);
        let b = values(2, k * n, -1.0, 1.0);
        let (got, want) = both(|d| {
            let ta_t = t(d, &a, if ta { [k, m] } else { [m, k] }.as_slice())?;
            let tb_t = t(d, &b, if tb { [n, k] } else { [k, n] }.as_slice())?;
            let mut c = t(d, &values(3, m * n, -1.0, 1.0), &[m, n])?;
            d.matmul(0.5, &ta_t, ta, &tb_t, tb, 1.0, &mut c)?;
            c.to_vec::<f32>()
        });
        assert_close(&got, &want, 1e-5 * k as f32, 1e-5, &format!("{m}x{n}x{k}"));
    }
}

/// Tensors are shared handles; an operation that would write memory another operation is using
/// fails instead of racing.
#[test]
fn memory_in_use_elsewhere_is_not_written() {
    let dev = &devices()[0];
    let t = Tensor::zeros(dev, [8], DType::F32).unwrap();
    let mut alias = t.clone();
    {
        let _reading = singa_core::Access::new("test", &[], &[&t]).unwrap();
        let e = dev.fill(&mut alias, 1.0).unwrap_err();
        assert!(
            e.to_string()
                .contains("being used by an operation on another thread"),
            "{e}"
        );
        // Reading alongside another reader is fine.
        assert!(alias.to_vec::<f32>().is_ok());
    }
    dev.fill(&mut alias, 1.0).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0; 8]);
    // An in-place operation takes the memory once, as its output.
    let x = t.clone();
    let mut y = t.clone();
    dev.unary(UnaryOp::Neg, &x, &mut y).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![-1.0; 8]);
}

/// Disjoint parts of one allocation can be written at once (the servers of a group update
/// their slices of a parameter in place); overlapping ones cannot.
#[test]
fn disjoint_parts_of_memory_are_written_independently() {
    let dev = &devices()[0];
    let t = Tensor::zeros(dev, [10], DType::F32).unwrap();
    let (left, right) = (t.narrow(0, 5).unwrap(), t.narrow(5, 5).unwrap());
    {
        let _writing_left = singa_core::Access::new("test", &[&left], &[]).unwrap();
        dev.fill(&mut right.clone(), 2.0).unwrap();
        assert!(
            dev.fill(&mut t.narrow(4, 2).unwrap(), 1.0).is_err(),
            "overlaps the left part"
        );
        assert!(
            t.to_vec::<f32>().is_err(),
            "reading the whole overlaps a write"
        );
        let _reading_right = singa_core::Access::new("test", &[], &[&right]).unwrap();
        assert!(right.to_vec::<f32>().is_ok(), "readers share");
    }
    assert_eq!(t.to_vec::<f32>().unwrap(), [[0.0; 5], [2.0; 5]].concat());
    // Threads writing their own halves, many times over, never collide.
    std::thread::scope(|s| {
        for (half, value) in [(left, 3.0), (right, 4.0)] {
            s.spawn(move || {
                let mut half = half;
                for _ in 0..2000 {
                    dev.fill(&mut half, value).unwrap();
                }
            });
        }
    });
    assert_eq!(t.to_vec::<f32>().unwrap(), [[3.0; 5], [4.0; 5]].concat());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn adaptive_updates_match(len in length(), which in 0u8..6, lr in 0.0001f32..0.1, wd in prop_oneof![Just(0.0f32), 0.0f32..0.01], t in 1i32..50, seed: u64) {
        let rule = match which {
            0 => AdaptiveRule::AdaGrad { eps: 1e-7 },
            1 => AdaptiveRule::RmsProp { rho: 0.9, eps: 1e-7 },
            4 => AdaptiveRule::AdaDelta { rho: 0.9, eps: 1e-6 },
            5 => AdaptiveRule::AdaMax { beta1: 0.9, beta2: 0.999, eps: 1e-7, correction1: 1.0 - 0.9f32.powi(t) },
            k => AdaptiveRule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-7,
                correction1: 1.0 - 0.9f32.powi(t),
                correction2: 1.0 - 0.999f32.powi(t),
                decoupled: k == 3,
            },
        };
        let args = AdaptiveArgs { rule, lr, weight_decay: wd, grad_scale: 0.5 };
        let w = values(seed, len, -1.0, 1.0);
        let g = values(seed ^ 1, len, -1.0, 1.0);
        let s1 = values(seed ^ 2, len, 0.0, 1.0);
        let s2 = values(seed ^ 3, len, 0.0, 1.0);
        let (got, want) = both(|d| {
            let mut tw = t_(d, &w, len)?;
            let tg = t_(d, &g, len)?;
            let mut ts1 = t_(d, &s1, len)?;
            let mut ts2 = t_(d, &s2, len)?;
            let second = if rule.needs_second_state() { Some(&mut ts2) } else { None };
            d.adaptive_update(&mut tw, &tg, &mut ts1, second, args)?;
            Ok([tw.to_vec::<f32>()?, ts1.to_vec::<f32>()?, ts2.to_vec::<f32>()?].concat())
        });
        assert_close(&got, &want, 2e-6, 2e-5, &format!("{rule:?}"));
    }
}

fn t_(d: &DeviceRef, v: &[f32], len: usize) -> Result<Tensor> {
    t(d, v, &[len])
}

/// More operations than an allocation has regions may use disjoint parts of it at once (the
/// servers of a 64-worker group update their slices of one parameter): the ones beyond the
/// limit wait for a region instead of failing as if they raced.
#[test]
fn many_threads_use_disjoint_parts_of_one_tensor_at_once() {
    let dev = &devices()[0];
    // Four times the regions an allocation has (`MAX_REGIONS`, 16).
    let threads = 64;
    let t = Tensor::zeros(dev, [threads * 8], DType::F32).unwrap();
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        for i in 0..threads {
            let (t, start) = (&t, &start);
            s.spawn(move || {
                let mut part = t.narrow(i * 8, 8).unwrap();
                start.wait();
                // Holds its part a while, as a paused thread would mid-operation.
                let held = singa_core::Access::new("test", &[&part], &[]).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
                drop(held);
                dev.fill(&mut part, i as f64).unwrap();
            });
        }
    });
    let values = t.to_vec::<f32>().unwrap();
    for i in 0..threads {
        assert_eq!(values[i * 8..(i + 1) * 8], [i as f32; 8]);
    }
}
