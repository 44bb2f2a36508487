//! What the CPU-versus-reference tests share: the two devices, seeded inputs, and comparison.

use singa_core::rng::SplitMix64;
use singa_core::{DeviceRef, Precision, Result};
use singa_cpu::{CpuDevice, ReferenceDevice};
use std::sync::OnceLock;

/// The CPU device (2 threads) and the reference device, made once.
pub fn devices() -> &'static [DeviceRef; 2] {
    devices_in(Precision::F32)
}

/// The CPU device (2 threads) and the reference device with products in `precision` (f32 or
/// bf16), made once.
#[allow(dead_code)]
pub fn devices_in(precision: Precision) -> &'static [DeviceRef; 2] {
    static F32: OnceLock<[DeviceRef; 2]> = OnceLock::new();
    static BF16: OnceLock<[DeviceRef; 2]> = OnceLock::new();
    let cell = match precision {
        Precision::BF16 => &BF16,
        _ => &F32,
    };
    cell.get_or_init(|| {
        [
            DeviceRef::new(CpuDevice::with_precision(2, precision).unwrap()),
            DeviceRef::new(ReferenceDevice::with_precision(precision)),
        ]
    })
}

/// Values uniform on `[lo, hi)` from `seed`.
pub fn values(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| lo + (hi - lo) * ((r.next_u64() >> 40) as f32 / (1u64 << 24) as f32))
        .collect()
}

/// Runs `f` on the CPU and the reference device and returns both results.
pub fn both<T>(f: impl Fn(&DeviceRef) -> Result<T>) -> (T, T) {
    both_in(Precision::F32, f)
}

/// [`both`] on the devices of [`devices_in`]`(precision)`.
pub fn both_in<T>(precision: Precision, f: impl Fn(&DeviceRef) -> Result<T>) -> (T, T) {
    let [cpu, reference] = devices_in(precision);
    (
        f(cpu).expect("cpu device"),
        f(reference).expect("reference device"),
    )
}

/// Fails unless `got` (the CPU's) and `want` (the reference's) agree element by element
/// within `atol + rtol·|want|` (NaN matches NaN).
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i}: cpu {g}, reference {w}");
    }
}
