//! # singa-conformance
//!
//! The one suite every [`Device`](singa_core::Device) implementation passes: each property
//! builds the same inputs on the device under test and on the
//! [`ReferenceDevice`](singa_cpu::ReferenceDevice) (the plainest loops, in f64), runs one
//! operation on each, and compares the results within a tolerance that fits the operation.
//! Shapes are random (proptest), with odd sizes, sizes that split across threads or blocks,
//! transposed and strided operands, and in-place calls.
//!
//! It exists so that a new backend (the CPU device, a CUDA device, a plugin's device) is held to
//! exactly the checks the existing ones pass, and gains every property added later, without
//! copying a test file: a backend author writes one function that makes the devices and calls
//! one macro, [`device_tests!`], which expands into one `#[test]` per property.
//!
//! ```
//! use singa_conformance::{Devices, Unavailable};
//! use singa_core::{DeviceRef, Precision};
//! use singa_cpu::CpuDevice;
//! use std::sync::OnceLock;
//!
//! /// The CPU device (2 threads) with f32 products, and with bf16 products for the properties
//! /// of mixed precision; made once for all the tests of the binary.
//! fn cpu() -> Result<&'static Devices, Unavailable> {
//!     static DEVICES: OnceLock<Devices> = OnceLock::new();
//!     Ok(DEVICES.get_or_init(|| {
//!         let bf16 = CpuDevice::with_precision(2, Precision::BF16).unwrap();
//!         Devices::new(DeviceRef::new(CpuDevice::new(2).unwrap())).with_bf16(DeviceRef::new(bf16))
//!     }))
//! }
//!
//! singa_conformance::device_tests!(cpu);
//! # fn main() {}
//! ```
//!
//! A backend that may be missing on the machine running the tests (no GPU, no driver) returns
//! the reason instead of devices, and each test prints `skipped: <reason>` and passes:
//!
//! ```ignore
//! fn cuda() -> Result<&'static Devices, Unavailable> {
//!     static DEVICES: OnceLock<Result<Devices, Unavailable>> = OnceLock::new();
//!     DEVICES
//!         .get_or_init(|| match CudaDevice::new(0) {
//!             Ok(device) => Ok(Devices::new(DeviceRef::new(device))),
//!             Err(e) => Err(Unavailable::new(format!("no CUDA device: {e}"))),
//!         })
//!         .as_ref()
//!         .map_err(Clone::clone)
//! }
//!
//! singa_conformance::device_tests!(cuda);
//! ```
//!
//! Each property is also a `pub fn` taking [`&Devices`](Devices) (for example
//! [`gemm_matches`]), so a backend can run one on its own, and the pieces the properties are
//! built from ([`compare`], [`shapes`], [`compare_convolution`]) are public for the checks
//! only one backend needs (the CPU's Winograd shapes, say).
//!
//! ## Cases and failures
//!
//! Each property runs as many random cases as it did in the CPU device's tests (48 or 32);
//! `SINGA_CONFORMANCE_CASES` multiplies that (`0.25` for a quick run on a slow emulator, `10` for
//! a soak). A failing property panics with proptest's message: the shrunk, minimal failing input
//! and the error. The seed of that failure is saved next to this crate's sources
//! (`proptest-regressions/<module>.txt`, when the sources are writable) and replayed first on
//! every later run, on every backend: a case that broke one device is a regression case for all.
//!
//! ## Tolerances
//!
//! Tolerances are fixed by the suite, per operation: a backend cannot loosen them, with two
//! declared exceptions. A backend that computes some convolutions in f32 even at bf16 or
//! f16 precision (the CPU's Winograd path) says which with
//! [`Devices::with_rounded_convolutions_in_f32`], and those are held to bf16's rounding instead
//! of f32's. Random draws must be bit-identical to the reference, except that a backend whose
//! `ln`/`cos`/`sqrt` differ from the host's in the last bits may declare a relative tolerance
//! `r` (at most [`MAX_GAUSSIAN_TOLERANCE`]) with [`Devices::with_gaussian_tolerance`], and its
//! Gaussian draws then agree within `r·(|draw| + |mean| + std)`. Uniform and Bernoulli draws involve no such
//! function and stay identical: a GPU reproduces them by computing `low + (high − low)·u` as
//! the host does, a rounded product then a rounded sum (in CUDA `__fadd_rn(low,
//! __fmul_rn(high − low, u))`, not the fused multiply-add `nvcc` makes of it by default).
//!
//! `SINGA_CONFORMANCE_REQUIRE=1` turns a skip (an unavailable backend) into a failure, for the
//! machines where the backend must be there.

#![warn(missing_docs)]

pub mod compare;
mod devices;
mod memory;
mod nn;
mod ops;
mod recurrent;
mod runner;
pub mod shapes;

pub use devices::{Devices, Pair, Unavailable, MAX_GAUSSIAN_TOLERANCE};
pub use memory::{
    disjoint_parts_of_memory_are_written_independently,
    many_threads_use_disjoint_parts_of_one_tensor_at_once, memory_in_use_elsewhere_is_not_written,
};
pub use nn::{
    bad_conv_shapes_are_errors, batch_norm_matches, bf16_convolution_matches, compare_convolution,
    convolution_matches, f16_convolution_matches, gather_and_scatter_rows_match, lrn_matches,
    pooling_matches, row_ids_outside_the_table_are_refused, softmax_backward_and_top_k_match,
};
pub use ops::{
    adaptive_updates_match, axpby_and_affine_match, bad_labels_are_errors_not_panics,
    binary_matches, broadcast_and_reduce_match, copies_casts_and_fills_match, gemm_bf16_matches,
    gemm_f16_matches, gemm_f16_products_match, gemm_matches, host_round_trip_for_every_dtype,
    misuse_is_rejected_with_errors, mlp_shaped_products_match, random_matches, sgd_matches,
    softmax_and_cross_entropy_match, unary_backward_matches, unary_matches,
};
pub use recurrent::{lstm_cell_matches, lstm_cell_misuse_is_refused};

/// Runs `property` on the devices `devices` gives, or prints `skipped: <why>` when the backend
/// is unavailable (a failure instead when `SINGA_CONFORMANCE_REQUIRE` is set). What each test
/// [`device_tests!`] writes calls.
pub fn run_or_skip(
    name: &str,
    devices: Result<&'static Devices, Unavailable>,
    property: fn(&Devices),
) {
    match devices {
        Ok(devices) => property(devices),
        Err(why) => {
            assert!(
                std::env::var_os("SINGA_CONFORMANCE_REQUIRE").is_none(),
                "{name}: SINGA_CONFORMANCE_REQUIRE is set but the backend is unavailable: {why}"
            );
            eprintln!("skipped: {why}");
        }
    }
}

/// Expands into one `#[test]` per property of the suite, each running that property on the
/// devices a function gives: `device_tests!(path::to::devices)`, where
/// `fn devices() -> Result<&'static Devices, Unavailable>` (see the crate documentation for an
/// example). The tests are named after the properties (`gemm_matches`, ...); invoke it inside a
/// `mod` to keep them apart from the backend's own tests.
#[macro_export]
macro_rules! device_tests {
    ($devices:path) => {
        $crate::device_tests! {@list tests [$devices]}
    };
    // The one list of properties, handed to the arm named by `$mode`: every other arm and the
    // check that each public property is listed go through it.
    (@list $mode:ident [$($arg:tt)*]) => {
        $crate::device_tests! {@$mode [$($arg)*]
            gemm_matches,
            gemm_bf16_matches,
            gemm_f16_products_match,
            gemm_f16_matches,
            unary_matches,
            unary_backward_matches,
            binary_matches,
            axpby_and_affine_match,
            random_matches,
            broadcast_and_reduce_match,
            softmax_and_cross_entropy_match,
            sgd_matches,
            adaptive_updates_match,
            copies_casts_and_fills_match,
            host_round_trip_for_every_dtype,
            bad_labels_are_errors_not_panics,
            misuse_is_rejected_with_errors,
            mlp_shaped_products_match,
            memory_in_use_elsewhere_is_not_written,
            disjoint_parts_of_memory_are_written_independently,
            many_threads_use_disjoint_parts_of_one_tensor_at_once,
            convolution_matches,
            bf16_convolution_matches,
            f16_convolution_matches,
            pooling_matches,
            lrn_matches,
            batch_norm_matches,
            softmax_backward_and_top_k_match,
            gather_and_scatter_rows_match,
            row_ids_outside_the_table_are_refused,
            bad_conv_shapes_are_errors,
            lstm_cell_matches,
            lstm_cell_misuse_is_refused,
        }
    };
    (@tests [$devices:path] $($property:ident,)*) => {
        $(
            #[test]
            fn $property() {
                $crate::run_or_skip(stringify!($property), $devices(), $crate::$property);
            }
        )*
    };
    (@names [] $($property:ident,)*) => {
        [$(stringify!($property)),*]
    };
}

/// The names of the properties [`device_tests!`] runs, in its order.
pub const PROPERTIES: &[&str] = &device_tests!(@list names []);
