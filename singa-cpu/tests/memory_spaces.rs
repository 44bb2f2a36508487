//! Moving tensors between memory spaces (a GPU's and the host's) without a GPU: the reference
//! device can claim a memory space of its own (`ReferenceDevice::apart`).

use singa_core::{DType, DeviceRef, Tensor};
use singa_cpu::{CpuDevice, ReferenceDevice};

fn values(n: usize, k: f32) -> Vec<f32> {
    (0..n).map(|i| i as f32 * k - 3.0).collect()
}

#[test]
fn copies_cross_between_host_and_device_memory_and_between_two_devices() {
    let host = DeviceRef::new(CpuDevice::new(1).unwrap());
    let gpu0 = DeviceRef::new(ReferenceDevice::apart("test:0"));
    let gpu1 = DeviceRef::new(ReferenceDevice::apart("test:1"));
    assert!(!gpu0.shares_memory_with(&host) && !gpu0.shares_memory_with(&gpu1));
    let v = values(37, 0.5);
    let on_host = Tensor::from_slice(&host, &v, [37]).unwrap();
    // The devices refuse each other's tensors ...
    let mut on_gpu0 = Tensor::zeros(&gpu0, [37], DType::F32).unwrap();
    let refused = gpu0.copy(&on_host, &mut on_gpu0).unwrap_err().to_string();
    assert!(refused.contains("which device"), "{refused}");
    // ... and `copy_from` moves them all the same, every way.
    on_gpu0.copy_from(&on_host).unwrap();
    let mut on_gpu1 = Tensor::zeros(&gpu1, [37], DType::F32).unwrap();
    on_gpu1.copy_from(&on_gpu0).unwrap();
    let mut back = Tensor::zeros(&host, [37], DType::F32).unwrap();
    back.copy_from(&on_gpu1).unwrap();
    assert_eq!(back.to_vec::<f32>().unwrap(), v);
    let mut wrong = Tensor::zeros(&gpu1, [36], DType::F32).unwrap();
    let e = wrong.copy_from(&on_host).unwrap_err().to_string();
    assert!(e.contains("copy_from"), "{e}");
}

#[test]
fn a_tensor_is_made_usable_on_another_device_in_one_reused_copy() {
    let host = DeviceRef::new(CpuDevice::new(1).unwrap());
    let gpu = DeviceRef::new(ReferenceDevice::apart("test:0"));
    let mut staged = None;
    let first = Tensor::from_slice(&host, &values(6, 1.0), [2, 3]).unwrap();
    let a = first.usable_on(&gpu, &mut staged).unwrap();
    assert!(a.device().shares_memory_with(&gpu));
    assert_eq!(a.to_vec::<f32>().unwrap(), values(6, 1.0));
    let second = Tensor::from_slice(&host, &values(6, 2.0), [2, 3]).unwrap();
    let b = second.usable_on(&gpu, &mut staged).unwrap();
    assert!(b.same_view(&a), "the copy is made once and reused");
    assert_eq!(b.to_vec::<f32>().unwrap(), values(6, 2.0));
    // A tensor the device can use already is itself.
    let mine = Tensor::zeros(&gpu, [4], DType::F32).unwrap();
    assert!(mine
        .clone()
        .usable_on(&gpu, &mut staged)
        .unwrap()
        .same_view(&mine));
}
