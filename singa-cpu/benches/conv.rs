//! Times the CPU device's operations on the shapes of the CIFAR-10 convnet benchmark (conv5x5
//! 3→32, 32→32, 32→64 with pad 2 on 32×32, 16×16 and 8×8 images; 2×2 max pools; batch 64), at
//! 1 and 2 threads, and at 2 threads with bf16 products. Run with
//! `cargo bench -p singa-cpu --bench conv`.
//!
//! Each operation runs `REPS` times per sample, 9 samples; the table shows the median time of
//! one call and, for convolutions, the GFLOP/s that time means.

use singa_core::{
    ConvShape, DType, DeviceRef, PoolKind, PoolShape, Precision, Shape, Tensor, UnaryOp,
};
use singa_cpu::CpuDevice;
use std::time::Instant;

const REPS: usize = 10;
const SAMPLES: usize = 9;
const BATCH: usize = 64;

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..REPS {
                f();
            }
            t.elapsed().as_secs_f64() / REPS as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[SAMPLES / 2]
}

fn t(dev: &DeviceRef, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_slice(dev, &data, Shape::new(shape).unwrap()).unwrap()
}

fn conv(channels: usize, size: usize, filters: usize) -> ConvShape {
    ConvShape {
        batch: BATCH,
        channels,
        height: size,
        width: size,
        filters,
        kernel_h: 5,
        kernel_w: 5,
        stride_h: 1,
        stride_w: 1,
        pad_h: 2,
        pad_w: 2,
        groups: 1,
    }
}

fn pool(channels: usize, size: usize) -> PoolShape {
    PoolShape {
        kind: PoolKind::Max,
        batch: BATCH,
        channels,
        height: size,
        width: size,
        kernel_h: 2,
        kernel_w: 2,
        stride_h: 2,
        stride_w: 2,
        pad_h: 0,
        pad_w: 0,
        ceil: true,
    }
}

/// A named pass of a convolution, timed as a closure.
type Pass<'a> = (&'static str, Box<dyn FnMut() + 'a>);

fn measure(dev: &DeviceRef) -> Vec<(String, f64, Option<f64>)> {
    let mut out = Vec::new();
    let mut total = (0.0, 0.0);
    for (name, s) in [
        ("conv1 3→32 32×32", conv(3, 32, 32)),
        ("conv2 32→32 16×16", conv(32, 16, 32)),
        ("conv3 32→64 8×8", conv(32, 8, 64)),
    ] {
        let x = t(dev, &[BATCH, s.channels, s.height, s.width]);
        let w = t(dev, &[s.filters, s.channels, 5, 5]);
        let mut y = t(dev, &[BATCH, s.filters, s.out_h(), s.out_w()]);
        let mut dx = t(dev, &[BATCH, s.channels, s.height, s.width]);
        let mut dw = t(dev, &[s.filters, s.channels, 5, 5]);
        let dy = t(dev, &[BATCH, s.filters, s.out_h(), s.out_w()]);
        let flops = 2.0 * (BATCH * s.filters * s.out_h() * s.out_w() * s.channels * 25) as f64;
        let passes: [Pass<'_>; 3] = [
            (
                "forward",
                Box::new(|| dev.conv2d(&s, &x, &w, &mut y).unwrap()),
            ),
            (
                "input gradient",
                Box::new(|| dev.conv2d_backward_data(&s, &dy, &w, &mut dx).unwrap()),
            ),
            (
                "filter gradient",
                Box::new(|| dev.conv2d_backward_filter(&s, &x, &dy, &mut dw).unwrap()),
            ),
        ];
        for (pass, mut f) in passes {
            let secs = time(&mut f);
            if !(name.starts_with("conv1") && pass == "input gradient") {
                total.0 += secs;
                total.1 += flops;
            }
            out.push((format!("{name} {pass}"), secs, Some(flops / secs / 1e9)));
        }
    }
    out.push((
        "all convolutions of a step (no conv1 input gradient)".into(),
        total.0,
        Some(total.1 / total.0 / 1e9),
    ));
    for (name, s) in [
        ("max pool 2×2 on 32×32×32", pool(32, 32)),
        ("max pool 2×2 on 32×16×16", pool(32, 16)),
        ("max pool 2×2 on 64×8×8", pool(64, 8)),
    ] {
        let x = t(dev, &[BATCH, s.channels, s.height, s.width]);
        let mut y = t(dev, &[BATCH, s.channels, s.out_h(), s.out_w()]);
        let mut arg =
            Tensor::zeros(dev, [BATCH, s.channels, s.out_h(), s.out_w()], DType::I32).unwrap();
        let mut dx = t(dev, &[BATCH, s.channels, s.height, s.width]);
        out.push((
            format!("{name} forward"),
            time(|| dev.pool2d(&s, &x, &mut y, Some(&mut arg)).unwrap()),
            None,
        ));
        let dy = y.clone();
        out.push((
            format!("{name} backward"),
            time(|| dev.pool2d_backward(&s, &dy, Some(&arg), &mut dx).unwrap()),
            None,
        ));
    }
    let x = t(dev, &[BATCH, 32, 32, 32]);
    let mut y = t(dev, &[BATCH, 32, 32, 32]);
    out.push((
        "relu 64×32×32×32".into(),
        time(|| dev.unary(UnaryOp::Relu, &x, &mut y).unwrap()),
        None,
    ));
    out
}

fn main() {
    let columns = [
        ("1 thread", 1, Precision::F32),
        ("2 threads", 2, Precision::F32),
        ("2 threads, bf16 products", 2, Precision::BF16),
    ];
    let results: Vec<Vec<(String, f64, Option<f64>)>> = columns
        .iter()
        .map(|&(_, n, p)| measure(&DeviceRef::new(CpuDevice::with_precision(n, p).unwrap())))
        .collect();
    let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
    println!("| operation | {} |", names.join(" | "));
    println!("| --- |{}", " ---: |".repeat(columns.len()));
    let cell = |r: &(String, f64, Option<f64>)| match r.2 {
        Some(g) => format!("{:.1} µs ({g:.0} GFLOP/s)", r.1 * 1e6),
        None => format!("{:.1} µs", r.1 * 1e6),
    };
    for (i, row) in results[0].iter().enumerate() {
        let cells: Vec<String> = results.iter().map(|r| cell(&r[i])).collect();
        println!("| {} | {} |", row.0, cells.join(" | "));
    }
}
