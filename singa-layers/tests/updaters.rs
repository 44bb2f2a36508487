//! Every updater against a hand-written reference over a few steps, and learning-rate
//! schedules as the runtime builds them.

use singa_core::{DType, DeviceRef, Fields, Tensor, UpdateArgs, UpdaterBox};
use singa_cpu::CpuDevice;
use singa_layers::updater_types;

fn updater(name: &str, fields: Fields) -> UpdaterBox {
    let ty = updater_types()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap();
    let fields = singa_core::validate_fields(&ty.fields, &fields).unwrap();
    (ty.create)(&fields).into_result().unwrap()
}

/// Runs `steps` updates with the gradients `grads[step]`; returns the weights after each step.
fn run(
    name: &str,
    fields: Fields,
    w0: &[f32],
    grads: &[Vec<f32>],
    lr: f32,
    wd: f32,
) -> Vec<Vec<f32>> {
    let dev = DeviceRef::new(CpuDevice::new(1).unwrap());
    let mut u = updater(name, fields);
    let slots = u.state_names().into_result().unwrap().len();
    let mut w = Tensor::from_slice(&dev, w0, [w0.len()]).unwrap();
    let mut state: Vec<Tensor> = (0..slots)
        .map(|_| Tensor::zeros(&dev, [w0.len()], DType::F32).unwrap())
        .collect();
    let mut out = Vec::new();
    for (step, g) in grads.iter().enumerate() {
        let g = Tensor::from_slice(&dev, g, [g.len()]).unwrap();
        let args = UpdateArgs {
            lr,
            weight_decay: wd,
            grad_scale: 1.0,
        };
        u.update(step as u64, &args, &mut w, &g, state.as_mut_slice().into())
            .into_result()
            .unwrap();
        out.push(w.to_vec::<f32>().unwrap());
    }
    out
}

fn close(got: &[Vec<f32>], want: &[Vec<f64>]) {
    for (s, (g, w)) in got.iter().zip(want).enumerate() {
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 1e-6 + 1e-5 * b.abs(),
                "step {s}, element {i}: got {a}, want {b}"
            );
        }
    }
}

const W0: [f32; 3] = [1.0, -2.0, 0.5];

fn grads() -> Vec<Vec<f32>> {
    vec![
        vec![0.5, -1.0, 0.25],
        vec![0.4, 0.3, -0.2],
        vec![-0.1, 0.6, 0.0],
    ]
}

#[test]
fn sgd_with_momentum_and_weight_decay() {
    let (lr, wd, mu) = (0.1, 0.01, 0.9);
    let mut w: Vec<f64> = W0.iter().map(|&x| x as f64).collect();
    let mut m = [0.0f64; 3];
    let mut want = Vec::new();
    for g in grads() {
        for i in 0..3 {
            let d = g[i] as f64 + wd * w[i];
            m[i] = mu * m[i] + d;
            w[i] -= lr * m[i];
        }
        want.push(w.clone());
    }
    close(
        &run(
            "sgd",
            Fields::new().with("momentum", mu),
            &W0,
            &grads(),
            lr as f32,
            wd as f32,
        ),
        &want,
    );
    // By hand, the first step of the first weight: d = 0.5 + 0.01·1 = 0.51, w = 1 − 0.1·0.51.
    assert!((want[0][0] - 0.949).abs() < 1e-12);
}

#[test]
fn nesterov() {
    let (lr, mu) = (0.1, 0.9);
    let mut w: Vec<f64> = W0.iter().map(|&x| x as f64).collect();
    let mut m = [0.0f64; 3];
    let mut want = Vec::new();
    for g in grads() {
        for i in 0..3 {
            let d = g[i] as f64;
            m[i] = mu * m[i] + d;
            w[i] -= lr * (d + mu * m[i]);
        }
        want.push(w.clone());
    }
    close(
        &run("nesterov", Fields::new(), &W0, &grads(), lr as f32, 0.0),
        &want,
    );
}

#[test]
fn adagrad_and_rmsprop() {
    let (lr, eps) = (0.1, 1e-8);
    for (name, rho) in [("adagrad", None), ("rmsprop", Some(0.9f64))] {
        let mut w: Vec<f64> = W0.iter().map(|&x| x as f64).collect();
        let mut s = [0.0f64; 3];
        let mut want = Vec::new();
        for g in grads() {
            for i in 0..3 {
                let d = g[i] as f64;
                s[i] = match rho {
                    None => s[i] + d * d,
                    Some(r) => r * s[i] + (1.0 - r) * d * d,
                };
                w[i] -= lr * d / (s[i].sqrt() + eps);
            }
            want.push(w.clone());
        }
        close(
            &run(name, Fields::new(), &W0, &grads(), lr as f32, 0.0),
            &want,
        );
    }
    // AdaGrad's first step is lr·sign(g) (for g ≠ 0): 1 − 0.1.
    let first = run("adagrad", Fields::new(), &W0, &grads()[..1], 0.1, 0.0);
    assert!((first[0][0] - 0.9).abs() < 1e-6);
}

#[test]
fn adam_and_adamw() {
    let (lr, wd, b1, b2, eps) = (0.01, 0.1, 0.9f64, 0.999f64, 1e-8);
    for (name, decoupled) in [("adam", false), ("adamw", true)] {
        let mut w: Vec<f64> = W0.iter().map(|&x| x as f64).collect();
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        let mut want = Vec::new();
        for (t, g) in grads().into_iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..3 {
                let mut d = g[i] as f64;
                if decoupled {
                    w[i] -= lr * wd * w[i];
                } else {
                    d += wd * w[i];
                }
                m[i] = b1 * m[i] + (1.0 - b1) * d;
                v[i] = b2 * v[i] + (1.0 - b2) * d * d;
                let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
                w[i] -= lr * mh / (vh.sqrt() + eps);
            }
            want.push(w.clone());
        }
        close(
            &run(name, Fields::new(), &W0, &grads(), lr as f32, wd as f32),
            &want,
        );
    }
    // With bias correction, Adam's first step is lr·sign(g): 1 − 0.01 for the first weight.
    let first = run("adam", Fields::new(), &W0, &grads()[..1], 0.01, 0.0);
    assert!((first[0][0] - 0.99).abs() < 1e-6);
}

#[test]
fn adadelta_and_adamax() {
    let (lr, wd) = (1.0f64, 0.01f64);
    let (rho, eps) = (0.9f64, 1e-6f64);
    let mut w: Vec<f64> = W0.iter().map(|&x| x as f64).collect();
    let (mut s, mut d) = ([0.0f64; 3], [0.0f64; 3]);
    let mut want = Vec::new();
    for g in grads() {
        for i in 0..3 {
            let gi = g[i] as f64 + wd * w[i];
            s[i] = rho * s[i] + (1.0 - rho) * gi * gi;
            let step = (d[i] + eps).sqrt() / (s[i] + eps).sqrt() * gi;
            d[i] = rho * d[i] + (1.0 - rho) * step * step;
            w[i] -= lr * step;
        }
        want.push(w.clone());
    }
    close(
        &run(
            "adadelta",
            Fields::new(),
            &W0,
            &grads(),
            lr as f32,
            wd as f32,
        ),
        &want,
    );

    let (lr, b1, b2, eps) = (0.002f64, 0.9f64, 0.999f64, 1e-8f64);
    let mut w: Vec<f64> = W0.iter().map(|&x| x as f64).collect();
    let (mut m, mut u) = ([0.0f64; 3], [0.0f64; 3]);
    let mut want = Vec::new();
    for (t, g) in grads().into_iter().enumerate() {
        let t = t as i32 + 1;
        for i in 0..3 {
            let gi = g[i] as f64 + wd * w[i];
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            u[i] = (b2 * u[i]).max(gi.abs() + eps);
            w[i] -= lr / (1.0 - b1.powi(t)) * m[i] / u[i];
        }
        want.push(w.clone());
    }
    close(
        &run("adamax", Fields::new(), &W0, &grads(), lr as f32, wd as f32),
        &want,
    );
}

#[test]
fn bad_updater_fields_are_rejected() {
    let ty = updater_types()
        .into_iter()
        .find(|t| t.name == "adam")
        .unwrap();
    let f = singa_core::validate_fields(&ty.fields, &Fields::new().with("beta1", 1.5)).unwrap();
    let e = (ty.create)(&f).into_result().err().unwrap();
    assert!(
        e.to_string().contains("beta1 must be in [0, 1), got 1.5"),
        "{e}"
    );
}
