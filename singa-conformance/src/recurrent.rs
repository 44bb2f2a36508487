//! The recurrent cells' fused operations: an LSTM step's elementwise part and its gradient.

use crate::compare::{assert_close, tensor, values};
use crate::runner::check;
use crate::Devices;
use proptest::prelude::*;
use singa_core::{DType, DeviceRef, Result, Tensor};

/// This module's source, which names its file of saved failing seeds.
const SOURCE: &str = file!();

/// One LSTM step's forward and backward pass on `d`: the activations, `c`, `tanh(c)`, `h`,
/// the gates' gradients and (when `cell_grad`) the previous cell's, one after the other.
fn lstm_step(
    d: &DeviceRef,
    (batch, hidden): (usize, usize),
    (bias, cell_grad): (bool, bool),
    seed: u64,
) -> Result<Vec<f32>> {
    let n = batch * hidden;
    let input = |k: u64, len: usize, r: f32| tensor(d, &values(seed ^ k, len, -r, r), &[len]);
    let mut gates = input(1, 4 * n, 4.0)?.reshape([batch, 4 * hidden])?;
    let b = if bias {
        Some(input(2, 4 * hidden, 1.0)?)
    } else {
        None
    };
    let c_prev = input(3, n, 2.0)?;
    let zeros = || Tensor::zeros(d, [n], DType::F32);
    let (mut c, mut tanh_c, mut h) = (zeros()?, zeros()?, zeros()?);
    d.lstm_cell(&mut gates, b.as_ref(), &c_prev, &mut c, &mut tanh_c, &mut h)?;
    let (dh, dc) = (input(4, n, 1.0)?, input(5, n, 1.0)?);
    let mut d_gates = Tensor::zeros(d, [batch, 4 * hidden], DType::F32)?;
    let mut dc_prev = zeros()?;
    let dc_prev_out = cell_grad.then_some(&mut dc_prev);
    d.lstm_cell_backward(
        &gates,
        &c_prev,
        &tanh_c,
        &dh,
        &dc,
        &mut d_gates,
        dc_prev_out,
    )?;
    let mut out = Vec::new();
    for t in [&gates, &c, &tanh_c, &h, &d_gates] {
        out.extend(t.to_vec::<f32>()?);
    }
    if cell_grad {
        out.extend(dc_prev.to_vec::<f32>()?);
    }
    Ok(out)
}

/// An LSTM step's fused forward and backward passes, with and without a bias and the previous
/// cell's gradient, on odd shapes and on one big enough for a device to split across threads.
pub fn lstm_cell_matches(devices: &Devices) {
    let strategy = (
        1usize..12,
        1usize..40,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    check(
        "lstm_cell_matches",
        devices,
        SOURCE,
        48,
        strategy,
        |(batch, hidden, bias, cell_grad, seed)| {
            let (got, want) =
                devices.both(|d| lstm_step(d, (batch, hidden), (bias, cell_grad), seed));
            assert_close(&got, &want, 2e-6, 1e-5, "lstm cell");
            Ok(())
        },
    );
    let (got, want) = devices.both(|d| lstm_step(d, (64, 600), (true, true), 7));
    assert_close(&got, &want, 2e-6, 1e-5, "lstm cell (64 × 600)");
}

/// Gates whose width is not four hidden widths, and outputs that overlap, are errors.
pub fn lstm_cell_misuse_is_refused(devices: &Devices) {
    let d = devices.device();
    let zeros = |shape: &[usize]| {
        Tensor::zeros(d, singa_core::Shape::new(shape).unwrap(), DType::F32).unwrap()
    };
    let (c_prev, mut c, mut tanh_c, mut h) = (
        zeros(&[2, 3]),
        zeros(&[2, 3]),
        zeros(&[2, 3]),
        zeros(&[2, 3]),
    );
    let mut odd = zeros(&[2, 10]);
    let e = d
        .lstm_cell(&mut odd, None, &c_prev, &mut c, &mut tanh_c, &mut h)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4·hidden columns"), "{e}");
    let mut gates = zeros(&[2, 12]);
    let both = zeros(&[12]);
    let (mut c2, mut t2) = (both.narrow(0, 6).unwrap(), both.narrow(0, 6).unwrap());
    let e = d
        .lstm_cell(&mut gates, None, &c_prev, &mut c2, &mut t2, &mut h)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlaps"), "{e}");
    let short = zeros(&[5]);
    let e = d
        .lstm_cell(
            &mut gates,
            Some(&short),
            &c_prev,
            &mut c,
            &mut tanh_c,
            &mut h,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias"), "{e}");
}
