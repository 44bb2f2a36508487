//! Seeded inputs and the comparisons of the device under test's results with the reference's.

use singa_core::rng::SplitMix64;
use singa_core::{DeviceRef, Result, Shape, Tensor};

/// `n` values uniform on `[lo, hi)` from `seed`: the same on every device and every run.
pub fn values(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| lo + (hi - lo) * ((r.next_u64() >> 40) as f32 / (1u64 << 24) as f32))
        .collect()
}

/// An f32 tensor of shape `shape` holding `data` on `device`.
pub fn tensor(device: &DeviceRef, data: &[f32], shape: &[usize]) -> Result<Tensor> {
    Tensor::from_slice(device, data, Shape::new(shape)?)
}

/// Fails unless `got` (the device's) and `want` (the reference's) agree element by element
/// within `atol + rtol·|want|` (NaN matches NaN).
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i}: device {g}, reference {w}");
    }
}

/// Fails unless `got` (the device's) and `want` (the reference's) are the same bits.
pub fn assert_identical(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} of {}: device {}, reference {}",
            got.len(),
            got[i],
            want[i]
        );
    }
}
