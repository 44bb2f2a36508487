//! Operations from several threads on one allocation: refused where they would race, run at
//! once where they use disjoint parts.
//!
//! The bookkeeping is singa-core's ([`Access`]), but every device runs under it: these check
//! that a backend's operations go through it and that the backend itself runs operations from
//! many threads at once on disjoint parts of one allocation (the servers of a group update
//! their slices of a parameter in place) without mixing them up.

use crate::Devices;
use singa_core::tensor::MAX_REGIONS;
use singa_core::{Access, DType, Tensor, UnaryOp};

/// Tensors are shared handles; an operation that would write memory another operation is
/// using fails instead of racing.
pub fn memory_in_use_elsewhere_is_not_written(devices: &Devices) {
    let dev = devices.device();
    let t = Tensor::zeros(dev, [8], DType::F32).unwrap();
    let mut alias = t.clone();
    {
        let _reading = Access::new("test", &[], &[&t]).unwrap();
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
pub fn disjoint_parts_of_memory_are_written_independently(devices: &Devices) {
    let dev = devices.device();
    let t = Tensor::zeros(dev, [10], DType::F32).unwrap();
    let (left, right) = (t.narrow(0, 5).unwrap(), t.narrow(5, 5).unwrap());
    {
        let _writing_left = Access::new("test", &[&left], &[]).unwrap();
        dev.fill(&mut right.clone(), 2.0).unwrap();
        assert!(
            dev.fill(&mut t.narrow(4, 2).unwrap(), 1.0).is_err(),
            "overlaps the left part"
        );
        assert!(
            t.to_vec::<f32>().is_err(),
            "reading the whole overlaps a write"
        );
        let _reading_right = Access::new("test", &[], &[&right]).unwrap();
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

/// More operations than an allocation has regions may use disjoint parts of it at once (the
/// servers of a 64-worker group update their slices of one parameter): the ones beyond the
/// limit wait for a region instead of failing as if they raced.
pub fn many_threads_use_disjoint_parts_of_one_tensor_at_once(devices: &Devices) {
    let dev = devices.device();
    let threads = 4 * MAX_REGIONS;
    let t = Tensor::zeros(dev, [threads * 8], DType::F32).unwrap();
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        for i in 0..threads {
            let (t, start) = (&t, &start);
            s.spawn(move || {
                let mut part = t.narrow(i * 8, 8).unwrap();
                start.wait();
                // Holds its part a while, as a paused thread would mid-operation.
                let held = Access::new("test", &[&part], &[]).unwrap();
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
