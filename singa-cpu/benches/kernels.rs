//! Times the CPU device's operations on the shapes of the MNIST MLP benchmark (784-1000-500-10,
//! batch 64), at 1 and 2 threads. Run with `cargo bench -p singa-cpu --bench kernels`.
//!
//! Each operation runs `REPS` times per sample, 15 samples; the table shows the median time of
//! one call and, for matrix products, the GFLOP/s that time means. Each product is timed in
//! f32 and, right after, with bf16 inputs (`precision = "bf16"`).

use singa_core::{
    BinaryOp, DType, DeviceRef, Dims3, Precision, ReduceOp, SgdArgs, Shape, Tensor, UnaryOp,
};
use singa_cpu::CpuDevice;
use std::time::Instant;

const REPS: usize = 50;
const SAMPLES: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> f64 {
    for _ in 0..REPS {
        f();
    }
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let t = Instant::now();
        for _ in 0..REPS {
            f();
        }
        samples.push(t.elapsed().as_secs_f64() / REPS as f64);
    }
    median(samples)
}

fn t(dev: &DeviceRef, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_slice(dev, &data, Shape::new(shape).unwrap()).unwrap()
}

/// The multiply-add peak of one core, in GFLOP/s: (f32 FMA, bf16 pair dot products), from
/// loops of independent register-only instructions (`None` without AVX-512 / AVX-512 BF16).
#[cfg(target_arch = "x86_64")]
fn peaks() -> (Option<f64>, Option<f64>) {
    use std::arch::x86_64::*;
    const ITERS: usize = 20_000_000;
    #[target_feature(enable = "avx512f")]
    unsafe fn fma() -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        let (a, b) = (_mm512_set1_ps(1.0), _mm512_set1_ps(1e-9));
        for _ in 0..ITERS {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(a, b, *r);
            }
            std::arch::asm!("", options(nomem, nostack));
        }
        acc.iter().map(|&r| _mm512_reduce_add_ps(r)).sum()
    }
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dot() -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        let one: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        for _ in 0..ITERS {
            for r in acc.iter_mut() {
                *r = _mm512_dpbf16_ps(*r, one, one);
            }
            std::arch::asm!("", options(nomem, nostack));
        }
        acc.iter().map(|&r| _mm512_reduce_add_ps(r)).sum()
    }
    let rate = |flops_per_iter: f64, f: &dyn Fn() -> f32| {
        let t = Instant::now();
        std::hint::black_box(f());
        ITERS as f64 * flops_per_iter / t.elapsed().as_secs_f64() / 1e9
    };
    let f32_peak = std::arch::is_x86_feature_detected!("avx512f")
        // SAFETY: the CPU has AVX-512F.
        .then(|| rate(12.0 * 32.0, &|| unsafe { fma() }));
    let bf16_peak = std::arch::is_x86_feature_detected!("avx512bf16")
        // SAFETY: the CPU has AVX-512 BF16.
        .then(|| rate(12.0 * 64.0, &|| unsafe { dot() }));
    (f32_peak, bf16_peak)
}

#[cfg(not(target_arch = "x86_64"))]
fn peaks() -> (Option<f64>, Option<f64>) {
    (None, None)
}

fn main() {
    // `cargo bench` passes --bench; accept and ignore arguments.
    let show = |p: Option<f64>| p.map_or("not measured".to_string(), |g| format!("{g:.0} GFLOP/s"));
    let (f32_peak, bf16_peak) = peaks();
    println!(
        "peak of one core: f32 FMA {}, bf16 dot products {}\n",
        show(f32_peak),
        show(bf16_peak)
    );
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let configs = [1usize, 2];
    let mut results: Vec<Vec<(String, f64, Option<f64>)>> = Vec::new();
    for &n in &configs {
        let dev = DeviceRef::new(CpuDevice::new(n).unwrap());
        let bf16 = DeviceRef::new(CpuDevice::with_precision(n, Precision::BF16).unwrap());
        let mut out = Vec::new();
        // (name, m, n, k, trans_a, trans_b): forward x·W, weight gradient xᵀ·dy, input gradient dy·Wᵀ.
        let gemms = [
            (
                "fc1 forward  64x784 · 784x1000",
                64,
                1000,
                784,
                false,
                false,
            ),
            ("fc1 dW  784x64 · 64x1000", 784, 1000, 64, true, false),
            (
                "fc2 forward  64x1000 · 1000x500",
                64,
                500,
                1000,
                false,
                false,
            ),
            ("fc2 dW  1000x64 · 64x500", 1000, 500, 64, true, false),
            ("fc2 dX  64x500 · 500x1000", 64, 1000, 500, false, true),
            ("fc3 forward  64x500 · 500x10", 64, 10, 500, false, false),
            ("fc3 dW  500x64 · 64x10", 500, 10, 64, true, false),
            ("fc3 dX  64x10 · 10x500", 64, 500, 10, false, true),
        ];
        let mut total_gemm = [0.0; 2];
        let mut total_flops = 0.0;
        let mut bf16_rows = Vec::new();
        for (name, m, nn, k, ta, tb) in gemms {
            let flops = 2.0 * (m * nn * k) as f64;
            total_flops += flops;
            for (p, d) in [&dev, &bf16].into_iter().enumerate() {
                let a = if ta { t(d, &[k, m]) } else { t(d, &[m, k]) };
                let b = if tb { t(d, &[nn, k]) } else { t(d, &[k, nn]) };
                let mut c = t(d, &[m, nn]);
                let secs = time(|| d.matmul(1.0, &a, ta, &b, tb, 0.0, &mut c).unwrap());
                total_gemm[p] += secs;
                let row = (name.to_string(), secs, Some(flops / secs / 1e9));
                if p == 0 {
                    out.push(row);
                } else {
                    bf16_rows.push((format!("{name} (bf16)"), secs, row.2));
                }
            }
        }
        out.push((
            "all matrix products of a step".into(),
            total_gemm[0],
            Some(total_flops / total_gemm[0] / 1e9),
        ));
        out.extend(bf16_rows);
        out.push((
            "all matrix products of a step (bf16)".into(),
            total_gemm[1],
            Some(total_flops / total_gemm[1] / 1e9),
        ));
        let x = t(&dev, &[64, 1000]);
        let mut y = t(&dev, &[64, 1000]);
        let d = dev.clone();
        out.push((
            "relu 64x1000".into(),
            time(|| d.unary(UnaryOp::Relu, &x, &mut y).unwrap()),
            None,
        ));
        let dy = t(&dev, &[64, 1000]);
        let mut dx = t(&dev, &[64, 1000]);
        out.push((
            "relu backward 64x1000".into(),
            time(|| {
                d.unary_backward(UnaryOp::Relu, &x, &y, &dy, &mut dx)
                    .unwrap()
            }),
            None,
        ));
        let bias = t(&dev, &[1000]);
        let dims = Dims3 {
            outer: 64,
            mid: 1000,
            inner: 1,
        };
        out.push((
            "bias add 64x1000".into(),
            time(|| d.add_broadcast(dims, &bias, &mut y).unwrap()),
            None,
        ));
        let mut db = t(&dev, &[1000]);
        let rdims = Dims3 {
            outer: 1,
            mid: 64,
            inner: 1000,
        };
        out.push((
            "bias gradient 64x1000".into(),
            time(|| {
                d.reduce(ReduceOp::Sum, rdims, &dy, &mut db, 1.0, 0.0)
                    .unwrap()
            }),
            None,
        ));
        let logits = t(&dev, &[64, 10]);
        let labels =
            Tensor::from_slice(&dev, &(0..64).map(|i| i % 10).collect::<Vec<i32>>(), [64]).unwrap();
        let mut probs = t(&dev, &[64, 10]);
        let mut stats = Tensor::zeros(&dev, [3], DType::F32).unwrap();
        out.push((
            "softmax cross-entropy 64x10".into(),
            time(|| {
                d.softmax_cross_entropy(&logits, &labels, &mut probs, &mut stats)
                    .unwrap()
            }),
            None,
        ));
        let mut w = t(&dev, &[784, 1000]);
        let g = t(&dev, &[784, 1000]);
        let mut m = Tensor::zeros(&dev, [784, 1000], DType::F32).unwrap();
        let args = SgdArgs {
            lr: 1e-6,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
            grad_scale: 1.0,
        };
        out.push((
            "sgd 784x1000".into(),
            time(|| d.sgd_update(&mut w, &g, None, args).unwrap()),
            None,
        ));
        out.push((
            "sgd + momentum 784x1000".into(),
            time(|| d.sgd_update(&mut w, &g, Some(&mut m), args).unwrap()),
            None,
        ));
        let mut big = t(&dev, &[784, 1000]);
        out.push((
            "add 784x1000".into(),
            time(|| d.binary(BinaryOp::Add, &g, &g, &mut big).unwrap()),
            None,
        ));
        let mut host = vec![0.0f32; 64 * 784];
        let input = t(&dev, &[64, 784]);
        let mut input2 = input.clone();
        out.push((
            "host->device 64x784".into(),
            time(|| input2.write_from(&host).unwrap()),
            None,
        ));
        out.push((
            "device->host 64x784".into(),
            time(|| input.read_into(&mut host).unwrap()),
            None,
        ));
        results.push(out);
    }
    for (i, (name, _, _)) in results[0].iter().enumerate() {
        let cells = results
            .iter()
            .map(|r| {
                let (_, secs, gflops) = &r[i];
                match gflops {
                    Some(g) => format!("{:.1} µs ({g:.0} GFLOP/s)", secs * 1e6),
                    None => format!("{:.1} µs", secs * 1e6),
                }
            })
            .collect();
        rows.push((name.clone(), cells));
    }
    println!("| operation | 1 thread | 2 threads |");
    println!("| --- | ---: | ---: |");
    for (name, cells) in rows {
        println!("| {name} | {} |", cells.join(" | "));
    }
}
