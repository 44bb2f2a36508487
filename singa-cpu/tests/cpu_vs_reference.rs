//! The CPU device against the reference device: the conformance suite every device passes
//! (`singa-conformance`, one test per property), then what only the CPU device has: its fast
//! convolution paths and Winograd transforms, and memory it shares with the reference device.

use proptest::prelude::*;
use singa_conformance::shapes::{fast_path_conv_shape, winograd_conv_shape};
use singa_conformance::{compare_convolution, Devices, Unavailable};
use singa_core::{DType, DeviceRef, PoolKind, PoolShape, Precision, Tensor};
use singa_cpu::CpuDevice;
use std::sync::OnceLock;

/// The CPU device with 2 threads (so that work splits), with f32, bf16 and f16 products,
/// against the reference device; made once.
fn cpu() -> Result<&'static Devices, Unavailable> {
    static DEVICES: OnceLock<Devices> = OnceLock::new();
    Ok(DEVICES.get_or_init(|| {
        let products = |p| DeviceRef::new(CpuDevice::with_precision(2, p).unwrap());
        Devices::new(products(Precision::F32))
            .with_bf16(products(Precision::BF16))
            .with_f16(products(Precision::F16))
            // The Winograd transforms stay in f32 at bf16 and f16 precision.
            .with_rounded_convolutions_in_f32(singa_cpu::cpu::convolution_uses_winograd)
    }))
}

singa_conformance::device_tests!(cpu);

/// The devices, for the CPU's own checks below (always there).
fn devices() -> &'static Devices {
    cpu().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn convolution_fast_paths_match(s in fast_path_conv_shape(), seed: u64) {
        prop_assume!(s.problem().is_none());
        prop_assert_eq!(s.out_w() % 8, 0);
        compare_convolution(devices(), Precision::F32, &s, seed);
    }

    #[test]
    fn winograd_convolution_matches(s in winograd_conv_shape(), seed: u64) {
        prop_assume!(s.problem().is_none());
        if !singa_cpu::cpu::convolution_uses_winograd(&s) {
            // No AVX-512 here (or SINGA_NO_WINOGRAD is set): the direct path is checked instead.
            eprintln!("skipped the Winograd path: this CPU does not take it for {s:?}");
        }
        compare_convolution(devices(), Precision::F32, &s, seed);
    }
}

/// The CPU and reference devices both allocate host memory, so each runs on the other's
/// tensors (the workers of one process read each other's tensors without copies).
#[test]
fn cpu_and_reference_share_host_memory() {
    let (cpu, reference) = (devices().device(), devices().reference());
    assert!(cpu.shares_memory_with(reference));
    assert!(cpu.is_host() && reference.is_host());
    let a = Tensor::from_slice(cpu, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap();
    let b = Tensor::from_slice(reference, &[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], [3, 2]).unwrap();
    let mut c = Tensor::zeros(cpu, [2, 2], DType::F32).unwrap();
    cpu.matmul(1.0, &a, false, &b, false, 0.0, &mut c).unwrap();
    assert_eq!(c.to_vec::<f32>().unwrap(), [4.0, 5.0, 10.0, 11.0]);
}

#[test]
fn caffe_pool_output_sizes() {
    let s = |h: usize, k: usize, st: usize, p: usize, ceil: bool| {
        PoolShape {
            kind: PoolKind::Max,
            batch: 1,
            channels: 1,
            height: h,
            width: h,
            kernel_h: k,
            kernel_w: k,
            stride_h: st,
            stride_w: st,
            pad_h: p,
            pad_w: p,
            ceil,
        }
        .out_h()
    };
    // The CIFAR-10 "quick" net: 32 → 16 → 8 → 4 with 3x3/2 ceil pooling.
    assert_eq!(
        (
            s(32, 3, 2, 0, true),
            s(16, 3, 2, 0, true),
            s(8, 3, 2, 0, true)
        ),
        (16, 8, 4)
    );
    assert_eq!(s(32, 3, 2, 0, false), 15);
    // With padding, the last window must start inside the input or its leading padding.
    assert_eq!(s(5, 2, 2, 1, true), 3);
}

/// The device says in which precision its products run, and f16 names what it really does.
#[test]
fn the_description_names_the_precision_of_the_products() {
    let describe = |p| {
        CpuDevice::with_precision(1, p).map(|d| DeviceRef::new(d).info().description.to_string())
    };
    let f32_products = describe(Precision::F32).unwrap();
    assert!(!f32_products.contains("products"), "{f32_products}");
    assert!(describe(Precision::BF16).unwrap().contains("bf16 products"));
    match describe(Precision::F16) {
        Ok(d) => assert!(
            d.contains("f16 products (f32 kernels on rounded inputs"),
            "{d}"
        ),
        // Only a CPU without AVX2 refuses f16.
        Err(e) => assert!(e.to_string().contains("without AVX2"), "{e}"),
    }
}
