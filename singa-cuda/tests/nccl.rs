//! NCCL: found under the name its packages install, its ids made and carried as bytes (no GPU
//! needed), and sums over every GPU of the machine.
//!
//! Without NCCL each test prints why it skipped; `SINGA_REQUIRE_NCCL=1` (CI, which installs
//! the `nvidia-nccl-cu13` package) makes that a failure. The sums need a GPU as well, which
//! `SINGA_REQUIRE_GPU=1` requires.

use singa_core::{DeviceRef, Precision, Tensor};
use singa_cpu::CpuDevice;
use singa_cuda::{nccl_present, nccl_version, Communicator, CudaDevice, NcclId};

fn required(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}

/// Whether NCCL can be used here; otherwise prints why the test skipped.
fn nccl_or_skip(test: &str) -> bool {
    if nccl_present() {
        return true;
    }
    let why = nccl_version().expect_err("NCCL is missing").to_string();
    assert!(
        !required("SINGA_REQUIRE_NCCL"),
        "{test}: SINGA_REQUIRE_NCCL=1 but {why}"
    );
    println!("{test}: skipped: {why}");
    false
}

/// The GPUs of this machine, or why there are none (printed as a skip).
fn gpus_or_skip(test: &str) -> Option<usize> {
    if let Some(why) = singa_cuda::unavailable_reason() {
        assert!(
            !required("SINGA_REQUIRE_GPU"),
            "{test}: SINGA_REQUIRE_GPU=1 but {why}"
        );
        println!("{test}: skipped: no CUDA GPU: {why}");
        return None;
    }
    Some(singa_cuda::device_count().expect("counted before"))
}

#[test]
fn a_missing_library_is_an_error_that_names_it() {
    match nccl_version() {
        Ok(v) => {
            assert!(v.starts_with("2."), "NCCL version {v}");
            println!("NCCL {v}");
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                !required("SINGA_REQUIRE_NCCL"),
                "SINGA_REQUIRE_NCCL=1 but {text}"
            );
            assert!(text.contains("libnccl.so.2"), "{text}");
            assert!(text.contains("LD_LIBRARY_PATH"), "{text}");
            assert!(NcclId::new().is_err(), "an id without NCCL");
        }
    }
}

#[test]
fn ids_cross_as_bytes() {
    if !nccl_or_skip("ids_cross_as_bytes") {
        return;
    }
    let (a, b) = (NcclId::new().unwrap(), NcclId::new().unwrap());
    assert!(a != b, "two fresh ids are equal: {a:?}");
    assert!(a.as_bytes().iter().any(|&x| x != 0), "an empty id");
    assert_eq!(NcclId::from_bytes(a.as_bytes()).unwrap(), a);
    let short = NcclId::from_bytes(&a.as_bytes()[..100]).unwrap_err();
    assert!(short.to_string().contains("128 bytes"), "{short}");
}

#[test]
fn sums_over_every_gpu() {
    if !nccl_or_skip("sums_over_every_gpu") {
        return;
    }
    let Some(n) = gpus_or_skip("sums_over_every_gpu") else {
        return;
    };
    let devices: Vec<CudaDevice> = (0..n)
        .map(|g| CudaDevice::new(g, Precision::F32).unwrap())
        .collect();
    let mut comms = Communicator::group(&devices).unwrap();
    // Rank r holds r + 1 + i / 8 at i: the sum is n(n+1)/2 + n·i/8 (exact in f32).
    let len = 1000;
    let values =
        |r: usize| -> Vec<f32> { (0..len).map(|i| (r + 1) as f32 + i as f32 / 8.0).collect() };
    let mut tensors: Vec<Tensor> = (0..n)
        .map(|r| {
            let dev = DeviceRef::new(CudaDevice::new(r, Precision::F32).unwrap());
            Tensor::from_slice(&dev, &values(r), [len]).unwrap()
        })
        .collect();
    Communicator::all_reduce_sum_group(&mut comms, &mut tensors).unwrap();
    let want: Vec<f32> = (0..len)
        .map(|i| (n * (n + 1) / 2) as f32 + (n * i) as f32 / 8.0)
        .collect();
    for (r, t) in tensors.iter().enumerate() {
        assert_eq!(t.to_vec::<f32>().unwrap(), want, "rank {r} of {n}");
    }
    println!(
        "sums_over_every_gpu: {n} GPU(s), NCCL {}",
        nccl_version().unwrap()
    );

    // A tensor of another memory space is refused, naming both.
    let cpu = DeviceRef::new(CpuDevice::new(1).unwrap());
    let mut on_cpu = Tensor::from_slice(&cpu, &values(0), [len]).unwrap();
    let err = comms[0]
        .all_reduce_sum(&mut on_cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cuda:0") && err.contains("host"), "{err}");
}

#[test]
fn one_rank_joins_through_an_id() {
    if !nccl_or_skip("one_rank_joins_through_an_id")
        || gpus_or_skip("one_rank_joins_through_an_id").is_none()
    {
        return;
    }
    // The way one rank per process joins (the id would come from rank 0 over the transport).
    let device = CudaDevice::new(0, Precision::F32).unwrap();
    let id = NcclId::from_bytes(NcclId::new().unwrap().as_bytes()).unwrap();
    let mut comm = Communicator::new(&device, 0, 1, &id).unwrap();
    assert_eq!((comm.rank(), comm.ranks()), (0, 1));
    let dev = DeviceRef::new(device);
    let mut t = Tensor::from_slice(&dev, &[1.5f32, -2.0, 3.25], [3]).unwrap();
    comm.all_reduce_sum(&mut t).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.5, -2.0, 3.25]);
    let bad = Communicator::new(&CudaDevice::new(0, Precision::F32).unwrap(), 1, 1, &id);
    assert!(bad.unwrap_err().to_string().contains("rank 1 of 1"));
}

#[test]
fn sums_at_a_root_and_broadcasts_from_it_one_thread_per_gpu() {
    let test = "sums_at_a_root_and_broadcasts_from_it_one_thread_per_gpu";
    if !nccl_or_skip(test) {
        return;
    }
    let Some(n) = gpus_or_skip(test) else {
        return;
    };
    // As the runtime's workers join: a thread per GPU, with rank 0's id.
    let id = NcclId::new().unwrap();
    let len = 777;
    let values =
        move |r: usize| -> Vec<f32> { (0..len).map(|i| (r + 1) as f32 * i as f32).collect() };
    let threads: Vec<_> = (0..n)
        .map(|r| {
            std::thread::spawn(move || {
                let device = CudaDevice::new(r, Precision::F32).unwrap();
                let mut comm = Communicator::new(&device, r, n, &id).unwrap();
                let dev = DeviceRef::new(device);
                let root = n - 1;
                let mut t = Tensor::from_slice(&dev, &values(r), [len]).unwrap();
                comm.reduce_sum(&mut t, root).unwrap();
                let reduced = t.to_vec::<f32>().unwrap();
                let mut b = Tensor::from_slice(&dev, &values(r), [len]).unwrap();
                comm.broadcast(&mut b, root).unwrap();
                let bad = comm.broadcast(&mut b, n).unwrap_err().to_string();
                assert!(bad.contains(&format!("NCCL root {n}")), "{bad}");
                (reduced, b.to_vec::<f32>().unwrap())
            })
        })
        .collect();
    let sum: Vec<f32> = (0..len)
        .map(|i| (n * (n + 1) / 2) as f32 * i as f32)
        .collect();
    for (r, t) in threads.into_iter().enumerate() {
        let (reduced, broadcast) = t.join().unwrap();
        match r == n - 1 {
            true => assert_eq!(reduced, sum, "root {r} of {n}"),
            false => assert_eq!(reduced, values(r), "rank {r} of {n}"),
        }
        assert_eq!(broadcast, values(n - 1), "rank {r} of {n}");
    }
    println!("{test}: {n} GPU(s)");
}
