//! The RBM pair: one step of CD-1 against the formulas computed on the host in f64, on the
//! reference and the CPU device alike, and the hidden units' sampling.

mod common;

use common::{cpu, f32_spec, reference, ty};
use singa_core::abi::{ROption, RSlice, RSliceMut};
use singa_core::rng::SplitMix64;
use singa_core::{DeviceRef, Fields, Phase, Tensor};
use singa_layers::gradcheck::{build, Built};

const B: usize = 8;
const V: usize = 12;
const H: usize = 16;

fn uniform(seed: u64, n: usize, low: f32, high: f32) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| low + (high - low) * r.below(1 << 20) as f32 / (1 << 20) as f32)
        .collect()
}

fn read(t: &Tensor) -> Vec<f32> {
    let mut v = vec![0f32; t.numel()];
    t.read_into(&mut v).unwrap();
    v
}

/// Which units are linear with Gaussian noise instead of binary.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Gaussian {
    visible: bool,
    hidden: bool,
}

const BINARY: Gaussian = Gaussian {
    visible: false,
    hidden: false,
};

fn pair(dev: &DeviceRef, batch: usize, gaussian: Gaussian) -> (Built, Built) {
    let mut f = Fields::new();
    f.set("hdim", H as i64);
    f.set("gaussian", gaussian.visible);
    let vis = build(&ty("rbm_vis"), &f, dev, &[f32_spec(&[batch, V])], 3).unwrap();
    f.set("gaussian", gaussian.hidden);
    let hid = build(&ty("rbm_hid"), &f, dev, &[f32_spec(&[batch, V])], 3).unwrap();
    // The net shares the weight; here the hidden layer gets a copy, and both biases are
    // made non-zero so that they are checked.
    let w = uniform(1, V * H, -0.5, 0.5);
    for p in [&vis.params[0], &hid.params[0]] {
        p.value.clone().write_from(&w).unwrap();
    }
    vis.params[1]
        .value
        .clone()
        .write_from(&uniform(2, V, -0.3, 0.3))
        .unwrap();
    hid.params[1]
        .value
        .clone()
        .write_from(&uniform(4, H, -0.3, 0.3))
        .unwrap();
    (vis, hid)
}

/// What one CD-1 step leaves: the units of both phases, the sample, gradients and the error.
#[derive(Debug, Clone)]
struct Step {
    v0: Vec<f32>,
    h0: Vec<f32>,
    sample: Vec<f32>,
    v1: Vec<f32>,
    h1: Vec<f32>,
    grads: [Vec<f32>; 4],
    error: f64,
    w: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

fn forward(l: &mut Built, phase: Phase, inputs: &[Tensor], outputs: &mut [Tensor]) {
    l.layer
        .forward(phase, RSlice::from(inputs), RSliceMut::from(outputs))
        .into_result()
        .unwrap();
}

fn backward(l: &mut Built, inputs: &[Tensor], outputs: &[Tensor]) {
    let mut none = [ROption::RNone];
    l.layer
        .backward(
            Phase::TRAIN,
            inputs.into(),
            outputs.into(),
            RSlice::from(&[][..]),
            RSliceMut::from(&mut none[..]),
        )
        .into_result()
        .unwrap();
}

fn cd1(dev: &DeviceRef, gaussian: Gaussian) -> Step {
    let (mut vis, mut hid) = pair(dev, B, gaussian);
    let v0 = uniform(5, B * V, 0.0, 1.0);
    let data = Tensor::from_slice(dev, &v0, [B, V]).unwrap();
    let zeros = |n: usize| Tensor::zeros(dev, [B, n], singa_core::DType::F32).unwrap();
    let mut v = [zeros(V)];
    let mut h = [zeros(H), zeros(H)];
    let pos = Phase::TRAIN | Phase::POSITIVE;
    let neg = Phase::TRAIN | Phase::NEGATIVE;
    forward(&mut vis, pos, std::slice::from_ref(&data), &mut v);
    forward(&mut hid, pos, &v, &mut h);
    let (h0, sample) = (read(&h[0]), read(&h[1]));
    let back = [data.clone(), h[1].clone()];
    forward(&mut vis, neg, &back, &mut v);
    forward(&mut hid, neg, &v, &mut h);
    // Gradient buffers hold the last step's values: the layers overwrite them.
    for p in vis.params.iter_mut().chain(hid.params.iter_mut()) {
        dev.fill(&mut p.grad, 7.0).unwrap();
    }
    backward(&mut hid, &v, &h);
    backward(&mut vis, &back, &v);
    let mut error = [0f64];
    vis.layer
        .read_metrics(RSliceMut::from(&mut error[..]))
        .into_result()
        .unwrap();
    Step {
        v0,
        h0,
        sample,
        v1: read(&v[0]),
        h1: read(&h[0]),
        grads: [
            read(&vis.params[0].grad),
            read(&vis.params[1].grad),
            read(&hid.params[0].grad),
            read(&hid.params[1].grad),
        ],
        error: error[0],
        w: read(&vis.params[0].value),
        b: read(&vis.params[1].value),
        c: read(&hid.params[1].value),
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `act(x·W + bias)` for `x` `[B, n]` and `W` `[V, H]` (`forward`: x has V columns).
fn units(x: &[f32], w: &[f32], bias: &[f32], forward: bool, logistic: bool) -> Vec<f64> {
    let (n_in, n_out) = if forward { (V, H) } else { (H, V) };
    let mut y = vec![0f64; B * n_out];
    for r in 0..B {
        for o in 0..n_out {
            let mut s = bias[o] as f64;
            for i in 0..n_in {
                let wv = if forward { w[i * H + o] } else { w[o * H + i] };
                s += x[r * n_in + i] as f64 * wv as f64;
            }
            y[r * n_out + o] = if logistic { sigmoid(s) } else { s };
        }
    }
    y
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} against {w}"
        );
    }
}

fn check_against_formulas(s: &Step, gaussian: Gaussian) {
    let logistic_h = !gaussian.hidden;
    assert_close(
        "h0",
        &s.h0,
        &units(&s.v0, &s.w, &s.c, true, logistic_h),
        1e-5,
    );
    if gaussian.hidden {
        assert!(s.sample.iter().all(|v| v.is_finite()));
    } else {
        assert!(
            s.sample.iter().all(|&v| v == 0.0 || v == 1.0),
            "{:?}",
            s.sample
        );
    }
    let v1 = units(&s.sample, &s.w, &s.b, false, !gaussian.visible);
    assert_close("v1", &s.v1, &v1, 1e-5);
    let h1 = units(&s.v1, &s.w, &s.c, true, logistic_h);
    assert_close("h1", &s.h1, &h1, 1e-5);
    let mut gw = vec![0f64; V * H];
    for r in 0..B {
        for i in 0..V {
            for o in 0..H {
                let neg = s.v1[r * V + i] as f64 * s.h1[r * H + o] as f64;
                let pos = s.v0[r * V + i] as f64 * s.h0[r * H + o] as f64;
                gw[i * H + o] += (neg - pos) / B as f64;
            }
        }
    }
    let mean_diff = |a: &[f32], b: &[f32], n: usize| -> Vec<f64> {
        (0..n)
            .map(|j| {
                (0..B)
                    .map(|r| (a[r * n + j] - b[r * n + j]) as f64)
                    .sum::<f64>()
                    / B as f64
            })
            .collect()
    };
    assert_close("vis ∂W", &s.grads[0], &vec![0.0; V * H], 0.0);
    assert_close("∂b", &s.grads[1], &mean_diff(&s.v1, &s.v0, V), 1e-5);
    assert_close("∂W", &s.grads[2], &gw, 1e-5);
    assert_close("∂c", &s.grads[3], &mean_diff(&s.h1, &s.h0, H), 1e-5);
    let error: f64 =
        s.v1.iter()
            .zip(&s.v0)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / B as f64;
    assert!(
        (s.error - error).abs() < 1e-4 * (1.0 + error),
        "{} {error}",
        s.error
    );
}

#[test]
fn one_cd_step_computes_the_cd_gradient_on_every_device() {
    for (visible, hidden) in [(false, false), (false, true), (true, false)] {
        let gaussian = Gaussian { visible, hidden };
        let on_reference = cd1(&reference(), gaussian);
        check_against_formulas(&on_reference, gaussian);
        let on_cpu = cd1(&cpu(2), gaussian);
        check_against_formulas(&on_cpu, gaussian);
        // The same draws on both devices: the same sample (Gaussian units add the noise to
        // means that may differ in the last bit).
        let reference_sample: Vec<f64> = on_reference.sample.iter().map(|&v| v as f64).collect();
        assert_close("sample", &on_cpu.sample, &reference_sample, 1e-6);
    }
}

/// A binary unit is on with its probability; outside training the sample is the mean.
#[test]
fn hidden_units_sample_with_their_probabilities() {
    let dev = cpu(2);
    let batch = 256;
    let (_, mut hid) = pair(&dev, batch, BINARY);
    let v = Tensor::from_slice(&dev, &uniform(9, batch * V, 0.0, 1.0), [batch, V]).unwrap();
    let zeros = || Tensor::zeros(&dev, [batch, H], singa_core::DType::F32).unwrap();
    let mut h = [zeros(), zeros()];
    forward(
        &mut hid,
        Phase::TRAIN | Phase::POSITIVE,
        std::slice::from_ref(&v),
        &mut h,
    );
    let (p, s) = (read(&h[0]), read(&h[1]));
    let mean = |x: &[f32]| x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    assert!(
        (mean(&p) - mean(&s)).abs() < 0.02,
        "{} {}",
        mean(&p),
        mean(&s)
    );
    // Units of low and high probability: their frequencies follow.
    let (low, high): (Vec<usize>, Vec<usize>) = (0..p.len()).partition(|&i| p[i] < 0.5);
    let freq = |idx: &[usize]| idx.iter().map(|&i| s[i] as f64).sum::<f64>() / idx.len() as f64;
    let prob = |idx: &[usize]| idx.iter().map(|&i| p[i] as f64).sum::<f64>() / idx.len() as f64;
    assert!((freq(&low) - prob(&low)).abs() < 0.03);
    assert!((freq(&high) - prob(&high)).abs() < 0.03);
    // The next step draws anew.
    forward(
        &mut hid,
        Phase::TRAIN | Phase::POSITIVE,
        std::slice::from_ref(&v),
        &mut h,
    );
    assert_ne!(read(&h[1]), s);
    forward(
        &mut hid,
        Phase::TEST | Phase::POSITIVE,
        std::slice::from_ref(&v),
        &mut h,
    );
    assert_eq!(read(&h[1]), read(&h[0]));
}

/// The draws of a worker holding part of the batch are those one worker makes for its rows.
#[test]
fn workers_splitting_the_batch_draw_what_one_worker_draws() {
    let dev = reference();
    let whole = {
        let (_, mut hid) = pair(&dev, B, BINARY);
        let v = Tensor::from_slice(&dev, &vec![0.5; B * V], [B, V]).unwrap();
        let z = || Tensor::zeros(&dev, [B, H], singa_core::DType::F32).unwrap();
        let mut h = [z(), z()];
        let mut samples = Vec::new();
        for _ in 0..2 {
            forward(&mut hid, Phase::TRAIN, std::slice::from_ref(&v), &mut h);
            samples.push(read(&h[1]));
        }
        samples
    };
    let mut f = Fields::new();
    f.set("hdim", H as i64);
    for part in 0..2u32 {
        let t = ty("rbm_hid");
        let fields = singa_core::validate_fields(&t.fields, &f).unwrap();
        let mut layer = (t.create)(&fields).into_result().unwrap();
        let mut params = singa_layers::gradcheck::SimpleParams::new(&dev, "layer", 3);
        let half = B / 2;
        let inputs = [f32_spec(&[half, V])];
        let ctx = singa_core::SetupContext {
            layer: "layer".into(),
            device: &dev,
            inputs: inputs.as_slice().into(),
            phase: Phase::TRAIN,
            base_dir: "".into(),
            seed: 3,
            partition_id: part,
            num_partitions: 2,
        };
        layer
            .setup(&ctx, singa_core::param_factory(&mut params))
            .into_result()
            .unwrap();
        let w = uniform(1, V * H, -0.5, 0.5);
        params.params[0].value.write_from(&w).unwrap();
        params.params[1]
            .value
            .write_from(&uniform(4, H, -0.3, 0.3))
            .unwrap();
        let v = Tensor::from_slice(&dev, &vec![0.5; half * V], [half, V]).unwrap();
        let z = || Tensor::zeros(&dev, [half, H], singa_core::DType::F32).unwrap();
        let mut h = [z(), z()];
        for whole_step in &whole {
            layer
                .forward(
                    Phase::TRAIN,
                    RSlice::from(std::slice::from_ref(&v)),
                    RSliceMut::from(&mut h[..]),
                )
                .into_result()
                .unwrap();
            let rows = part as usize * half * H..(part as usize + 1) * half * H;
            assert_eq!(read(&h[1]), whole_step[rows]);
        }
    }
}
