//! Helpers shared by the layer tests: building a layer by name, inputs away from kinks, the
//! gradient check, and one forward + backward pass whose results can be compared across devices.

#![allow(dead_code)]

use singa_core::{DType, DeviceRef, Fields, LayerType, Precision, Shape, Tensor, TensorSpec};
use singa_cpu::{CpuDevice, ReferenceDevice};
use singa_layers::gradcheck::{
    build, check_gradients, forward_backward, random_away_from_zero, GradCheckOptions,
};
use singa_layers::layer_types;

/// The built-in layer type called `name`.
pub fn ty(name: &str) -> LayerType {
    layer_types().into_iter().find(|t| t.name == name).unwrap()
}

/// The plain reference device.
pub fn reference() -> DeviceRef {
    DeviceRef::new(ReferenceDevice::new())
}

/// The CPU device with `threads` threads.
pub fn cpu(threads: usize) -> DeviceRef {
    DeviceRef::new(CpuDevice::new(threads).unwrap())
}

/// The CUDA device (GPU 0) with products in `precision`, when this machine has one; without,
/// `None`, or a failure naming why when `SINGA_REQUIRE_GPU=1`.
pub fn cuda(precision: Precision) -> Option<DeviceRef> {
    match singa_cuda::CudaDevice::new(0, precision) {
        Ok(device) => Some(DeviceRef::new(device)),
        Err(why) => {
            assert!(
                std::env::var("SINGA_REQUIRE_GPU").as_deref() != Ok("1"),
                "SINGA_REQUIRE_GPU=1 but the CUDA device cannot run: {why}"
            );
            None
        }
    }
}

/// An f32 tensor spec.
pub fn f32_spec(shape: &[usize]) -> TensorSpec {
    TensorSpec::new("x", Shape::new(shape).unwrap(), DType::F32)
}

/// How f32 inputs are drawn.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Values {
    /// Uniform in [-1, 1], at least 0.05 away from 0 (away from ReLU's kink).
    AwayFromZero,
    /// A shuffled ladder with steps of 0.02, so no two values tie within a finite-difference
    /// step (max pooling's argmax must not flip).
    Distinct,
}

/// Inputs for `specs`: f32 values as `values` says, labels uniform over `classes`.
pub fn inputs(
    dev: &DeviceRef,
    specs: &[TensorSpec],
    classes: usize,
    seed: u64,
    values: Values,
) -> Vec<Tensor> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| match s.dtype {
            DType::F32 => {
                let n = s.shape.numel();
                let v = match values {
                    Values::AwayFromZero => random_away_from_zero(seed + i as u64, n, 0.05),
                    Values::Distinct => distinct(seed + i as u64, n),
                };
                Tensor::from_slice(dev, &v, s.shape).unwrap()
            }
            _ => {
                let labels: Vec<i32> = (0..s.shape.numel())
                    .map(|j| ((seed as usize + j * 7) % classes) as i32)
                    .collect();
                Tensor::from_slice(dev, &labels, s.shape).unwrap()
            }
        })
        .collect()
}

fn distinct(seed: u64, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.02).collect();
    let mut r = singa_core::rng::SplitMix64::new(seed);
    for i in (1..n).rev() {
        v.swap(i, r.below(i as u64 + 1) as usize);
    }
    v
}

/// How far a layer's outputs and gradients with bf16 products may be from its f32 ones,
/// relative to each tensor's largest magnitude: eight units of bf16's last place (2⁻⁸ each),
/// room for the rounding of both inputs of products a few dozen terms deep.
pub const BF16_TOLERANCE: f32 = 8.0 / 256.0;

/// One layer under test: its type, fields, input specs and how its inputs are drawn.
pub struct Case {
    /// The layer type.
    pub name: &'static str,
    /// The layer's fields.
    pub fields: Fields,
    /// The inputs' specs.
    pub specs: Vec<TensorSpec>,
    /// Labels are drawn from `0..classes`.
    pub classes: usize,
    /// Seeds the inputs, the parameters and the gradient check.
    pub seed: u64,
    /// How f32 inputs are drawn.
    pub values: Values,
}

impl Case {
    /// A case with f32 inputs away from zero and no labels.
    pub fn new(name: &'static str, fields: Fields, specs: Vec<TensorSpec>, seed: u64) -> Case {
        Case {
            name,
            fields,
            specs,
            classes: 0,
            seed,
            values: Values::AwayFromZero,
        }
    }

    /// Labels drawn from `0..classes`.
    pub fn classes(mut self, classes: usize) -> Case {
        self.classes = classes;
        self
    }

    /// f32 inputs drawn as `values` says.
    pub fn values(mut self, values: Values) -> Case {
        self.values = values;
        self
    }

    /// Checks the layer's backward against finite differences on the reference device.
    pub fn gradcheck(&self) {
        self.gradcheck_with(GradCheckOptions {
            seed: self.seed,
            ..Default::default()
        })
    }

    /// [`Case::gradcheck`] with explicit tolerances.
    pub fn gradcheck_with(&self, opts: GradCheckOptions) {
        let dev = reference();
        let mut built = build(&ty(self.name), &self.fields, &dev, &self.specs, self.seed).unwrap();
        let xs = inputs(&dev, &self.specs, self.classes, self.seed, self.values);
        let report = check_gradients(&dev, &mut built, &xs, &opts).unwrap();
        assert!(report.checked > 0, "{}: nothing was checked", self.name);
        assert!(
            report.passed(),
            "{} {}: {} (ratio {:.2})",
            self.name,
            self.fields,
            report.worst,
            report.worst_ratio
        );
    }

    /// One training forward and backward pass of a fresh layer: its outputs, input gradients,
    /// parameter gradients and metrics, in that order.
    pub fn forward_backward(&self, dev: &DeviceRef) -> Vec<Vec<f32>> {
        let mut built = build(&ty(self.name), &self.fields, dev, &self.specs, self.seed).unwrap();
        let xs = inputs(dev, &self.specs, self.classes, self.seed, self.values);
        forward_backward(&mut built, dev, &xs, self.seed ^ 5).unwrap()
    }

    /// The layer on the CPU device (with `threads`), and on the CUDA device when this machine
    /// has a GPU, gives what it gives on the reference device, within `tol` relative to the
    /// largest magnitude of each tensor (at least 1); and so it does with bf16 products on each
    /// (`precision = "bf16"`: all multiply the same rounded values). The cases' convolutions
    /// are too small for the CPU's Winograd path, which stays f32 in bf16 (singa-conformance's
    /// `bf16_convolution_matches` checks that path with bf16's tolerance).
    ///
    /// And the gradient check under bf16: the layer's outputs and gradients with bf16 products
    /// are its f32 ones (which [`Case::gradcheck`] checks against finite differences) to bf16's
    /// precision, within [`BF16_TOLERANCE`] of each tensor's largest magnitude (finite
    /// differences of a forward whose product inputs are rounded to 8 bits would measure the
    /// rounding's steps, not the derivative).
    pub fn assert_devices_match_reference(&self, threads: usize, tol: f32) {
        self.assert_devices_match_reference_in(Precision::F32, threads, tol);
        self.assert_devices_match_reference_in(Precision::BF16, threads, tol);
        let f32s = self.forward_backward(&reference());
        let bf16 = DeviceRef::new(ReferenceDevice::with_precision(Precision::BF16));
        let got = self.forward_backward(&bf16);
        self.assert_close(&got, &f32s, BF16_TOLERANCE, "with bf16 products, in f32");
    }

    /// Each tensor of `got` is `want`'s within `tol` of the latter's largest magnitude (at
    /// least 1); `what` names the two sides in the message.
    fn assert_close(&self, got: &[Vec<f32>], want: &[Vec<f32>], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len());
        for (k, (c, r)) in got.iter().zip(want).enumerate() {
            assert_eq!(c.len(), r.len());
            let scale = r.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (i, (x, y)) in c.iter().zip(r).enumerate() {
                assert!(
                    (x - y).abs() <= tol * scale,
                    "{} {}: tensor {k}[{i}] {what}: {x} vs {y}",
                    self.name,
                    self.fields
                );
            }
        }
    }

    /// [`Case::assert_devices_match_reference`] for one precision of the products.
    pub fn assert_devices_match_reference_in(
        &self,
        precision: Precision,
        threads: usize,
        tol: f32,
    ) {
        let reference =
            self.forward_backward(&DeviceRef::new(ReferenceDevice::with_precision(precision)));
        let cpu = DeviceRef::new(CpuDevice::with_precision(threads, precision).unwrap());
        for device in std::iter::once(cpu).chain(cuda(precision)) {
            let got = self.forward_backward(&device);
            let what = format!("in {precision}, {} vs reference", device.info().kind);
            self.assert_close(&got, &reference, tol, &what);
        }
    }
}
