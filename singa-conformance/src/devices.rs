//! The devices a backend puts under test, with the reference devices they are compared against.

use singa_core::{ConvShape, DeviceRef, Precision, Result};
use singa_cpu::ReferenceDevice;

/// The largest relative difference [`Devices::with_gaussian_tolerance`] accepts. Gaussian
/// draws go through `ln`, `sqrt` and `cos` (in f64, see [`singa_core::rng::normal_at`]); a
/// device whose functions are off by a few units in the last place of f64, or that evaluates
/// them in f32, differs from the host by well under this. More is a wrong formula, not rounding.
pub const MAX_GAUSSIAN_TOLERANCE: f32 = 1e-6;

/// The device under test and the reference devices it is compared against: f32 products
/// always, bf16 and f16 products when the backend has them.
#[derive(Clone, Debug)]
pub struct Devices {
    device: DeviceRef,
    reference: DeviceRef,
    bf16: Option<(DeviceRef, DeviceRef)>,
    f16: Option<(DeviceRef, DeviceRef)>,
    rounded_convolutions_in_f32: fn(&ConvShape) -> bool,
    gaussian_tolerance: f32,
}

impl Devices {
    /// `device` (with f32 products) against a [`ReferenceDevice`]. Properties of bf16 or f16
    /// products skip, saying so, unless [`Devices::with_bf16`] or [`Devices::with_f16`] adds
    /// a device for them.
    pub fn new(device: DeviceRef) -> Devices {
        Devices {
            device,
            reference: DeviceRef::new(ReferenceDevice::new()),
            bf16: None,
            f16: None,
            rounded_convolutions_in_f32: |_| false,
            gaussian_tolerance: 0.0,
        }
    }

    /// Adds the backend's device with bf16 products (inputs rounded to bf16, sums in f32),
    /// compared against a reference device that rounds the same way.
    pub fn with_bf16(self, device: DeviceRef) -> Devices {
        let reference = DeviceRef::new(ReferenceDevice::with_precision(Precision::BF16));
        Devices {
            bf16: Some((device, reference)),
            ..self
        }
    }

    /// Adds the backend's device with f16 products (inputs rounded to f16, sums in f32),
    /// compared against a reference device that rounds the same way.
    pub fn with_f16(self, device: DeviceRef) -> Devices {
        let reference = DeviceRef::new(ReferenceDevice::with_precision(Precision::F16));
        Devices {
            f16: Some((device, reference)),
            ..self
        }
    }

    /// Says which convolutions the bf16 and f16 devices compute in f32 all the same (the CPU's
    /// Winograd transforms have no bf16 or f16 form): against a reference that rounds the
    /// inputs, those differ by the rounding, and are held to bf16's tolerance instead of f32's.
    pub fn with_rounded_convolutions_in_f32(
        self,
        computes_in_f32: fn(&ConvShape) -> bool,
    ) -> Devices {
        Devices {
            rounded_convolutions_in_f32: computes_in_f32,
            ..self
        }
    }

    /// Lets Gaussian draws differ from the reference's by `relative` (at most
    /// [`MAX_GAUSSIAN_TOLERANCE`]) of `|draw| + |mean| + std`, for a device whose `ln`, `sqrt` or `cos`
    /// differ from the host's in the last bits. Without it every draw must be bit-identical;
    /// uniform and Bernoulli draws always must.
    ///
    /// # Panics
    /// If `relative` is negative, not a number, or above [`MAX_GAUSSIAN_TOLERANCE`].
    pub fn with_gaussian_tolerance(self, relative: f32) -> Devices {
        assert!(
            (0.0..=MAX_GAUSSIAN_TOLERANCE).contains(&relative),
            "a Gaussian tolerance of {relative} is outside 0 ..= {MAX_GAUSSIAN_TOLERANCE}"
        );
        Devices {
            gaussian_tolerance: relative,
            ..self
        }
    }

    /// The device under test, with f32 products.
    pub fn device(&self) -> &DeviceRef {
        &self.device
    }

    /// The reference device for f32 products.
    pub fn reference(&self) -> &DeviceRef {
        &self.reference
    }

    /// The device under test and its reference with products in `precision`: always for f32,
    /// for bf16 and f16 when [`Devices::with_bf16`] and [`Devices::with_f16`] gave a device.
    pub fn in_precision(&self, precision: Precision) -> Option<Pair<'_>> {
        let (device, reference) = match precision {
            Precision::F32 => (&self.device, &self.reference),
            Precision::BF16 => self.bf16.as_ref().map(|(d, r)| (d, r))?,
            Precision::F16 => self.f16.as_ref().map(|(d, r)| (d, r))?,
        };
        Some(Pair {
            device,
            reference,
            precision,
        })
    }

    /// The f32 pair of [`Devices::in_precision`].
    pub fn f32(&self) -> Pair<'_> {
        Pair {
            device: &self.device,
            reference: &self.reference,
            precision: Precision::F32,
        }
    }

    /// [`Pair::both`] on the f32 devices.
    pub fn both<T>(&self, f: impl Fn(&DeviceRef) -> Result<T>) -> (T, T) {
        self.f32().both(f)
    }

    /// Whether the bf16 and f16 devices compute the convolution `s` in f32 (see
    /// [`Devices::with_rounded_convolutions_in_f32`]).
    pub fn rounded_convolution_in_f32(&self, s: &ConvShape) -> bool {
        (self.rounded_convolutions_in_f32)(s)
    }

    /// The relative tolerance of Gaussian draws (see [`Devices::with_gaussian_tolerance`]); 0
    /// when they must be identical.
    pub fn gaussian_tolerance(&self) -> f32 {
        self.gaussian_tolerance
    }

    /// Prints that `property` skipped for want of a device with `precision` products and
    /// returns `None`, or returns that pair.
    pub(crate) fn pair_or_skip(&self, precision: Precision, property: &str) -> Option<Pair<'_>> {
        let pair = self.in_precision(precision);
        if pair.is_none() {
            eprintln!(
                "skipped: {property}: {} has no {precision} products here (Devices::with_{precision})",
                self.device.info().description
            );
        }
        pair
    }
}

/// A device under test and the reference device it is compared against, both with products
/// in `precision`.
#[derive(Clone, Copy, Debug)]
pub struct Pair<'a> {
    /// The device under test.
    pub device: &'a DeviceRef,
    /// The reference device.
    pub reference: &'a DeviceRef,
    /// The precision of both devices' products.
    pub precision: Precision,
}

impl Pair<'_> {
    /// Runs `f` on the device under test and on the reference device and returns both results
    /// (in that order). An error on either fails the check, saying which device gave it.
    pub fn both<T>(&self, f: impl Fn(&DeviceRef) -> Result<T>) -> (T, T) {
        let on_device = f(self.device).unwrap_or_else(|e| {
            panic!(
                "device under test ({}): {e}",
                self.device.info().description
            )
        });
        let on_reference = f(self.reference).unwrap_or_else(|e| panic!("reference device: {e}"));
        (on_device, on_reference)
    }
}

/// Why a backend's devices are not there to test (no GPU, no driver): each test prints
/// `skipped: <reason>` and passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable(String);

impl Unavailable {
    /// The reason, as the skipped tests print it.
    pub fn new(reason: impl Into<String>) -> Unavailable {
        Unavailable(reason.into())
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 pair is always there, the bf16 and f16 ones when given.
    #[test]
    fn precisions_have_pairs_as_given() {
        let plain = || DeviceRef::new(ReferenceDevice::new());
        let devices = Devices::new(plain());
        assert!(devices.in_precision(Precision::F32).is_some());
        assert!(devices.in_precision(Precision::BF16).is_none());
        assert!(devices.in_precision(Precision::F16).is_none());
        let devices = devices.with_bf16(DeviceRef::new(ReferenceDevice::with_precision(
            Precision::BF16,
        )));
        assert_eq!(
            devices.in_precision(Precision::BF16).unwrap().precision,
            Precision::BF16
        );
        assert!(devices.in_precision(Precision::F16).is_none());
        let devices = devices.with_f16(DeviceRef::new(ReferenceDevice::with_precision(
            Precision::F16,
        )));
        assert_eq!(
            devices.in_precision(Precision::F16).unwrap().precision,
            Precision::F16
        );
    }

    #[test]
    #[should_panic(expected = "outside 0 ..= 0.000001")]
    fn gaussian_tolerances_are_bounded() {
        let _ = Devices::new(DeviceRef::new(ReferenceDevice::new())).with_gaussian_tolerance(1e-4);
    }
}
