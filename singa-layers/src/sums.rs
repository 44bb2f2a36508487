//! Metric sums kept on the device and moved to the host now and then.

use singa_core::{DType, DeviceRef, Result, Tensor};

/// Steps after which device sums move to the host: f32 sums of about 1000 batches stay exact
/// enough, and a read every 1000 steps costs nothing.
const FLUSH_EVERY: u32 = 1024;

/// Sums a loss layer adds to on its device every step, moved into `f64` on the host every
/// [`FLUSH_EVERY`] steps and when metrics are read, so that no long run overflows an `f32`.
pub(crate) struct Sums {
    /// The sums on the device, added to by kernels.
    pub(crate) device: Tensor,
    host: [f64; 3],
    steps: u32,
}

impl Sums {
    /// `n` (at most 3) sums on `dev`, all zero.
    pub(crate) fn new(dev: &DeviceRef, n: usize) -> Result<Sums> {
        Ok(Sums {
            device: Tensor::zeros(dev, [n], DType::F32)?,
            host: [0.0; 3],
            steps: 0,
        })
    }

    /// Notes that a step added to the device sums.
    pub(crate) fn stepped(&mut self, dev: &DeviceRef) -> Result<()> {
        self.steps += 1;
        if self.steps >= FLUSH_EVERY {
            self.flush(dev)?;
        }
        Ok(())
    }

    fn flush(&mut self, dev: &DeviceRef) -> Result<()> {
        let mut v = [0.0f32; 3];
        let n = self.device.numel();
        self.device.read_into(&mut v[..n])?;
        dev.fill(&mut self.device, 0.0)?;
        for (h, x) in self.host.iter_mut().zip(&v[..n]) {
            *h += *x as f64;
        }
        self.steps = 0;
        Ok(())
    }

    /// The totals since the last call, and a fresh start.
    pub(crate) fn take(&mut self, dev: &DeviceRef) -> Result<[f64; 3]> {
        self.flush(dev)?;
        Ok(std::mem::take(&mut self.host))
    }
}
