//! The state of loss scaling between steps (see [`LossScaling`]): the scale the next step's
//! loss gradient is multiplied by, how it changes after a step, and the steps skipped.

use crate::checkpoint::Loaded;
use crate::config::LossScaling;
use singa_core::{DType, DeviceRef, Dims3, Error, ReduceOp, Result, Tensor};

/// The name of the scaler's state in a checkpoint.
const CHECKPOINT_NAME: &str = "loss_scaler";

/// The smallest scale: below it the gradients overflow even when the loss is scaled down by
/// 2^24, so the step would not be saved by any scale and training has diverged.
const MIN_SCALE: f32 = 1.0 / (1u32 << 24) as f32;

/// Steps in a row whose gradients overflowed at a fixed scale after which training has
/// diverged (at a dynamic scale: as many halvings as lead from 2^16 to [`MIN_SCALE`]).
const MAX_OVERFLOWS_IN_A_ROW: u64 = 40;

/// Where a run's loss scaling stands.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    scale: f32,
    /// Steps without overflow since the scale last changed (dynamic scaling only).
    good_steps: u64,
    /// `None` for a fixed scale.
    growth_interval: Option<u64>,
    /// Steps skipped since the metrics were last read.
    skipped: u64,
    /// Steps skipped since the last step applied.
    overflows_in_a_row: u64,
}

impl LossScaler {
    /// The scaler of `scaling`; `None` when it is off.
    pub fn new(scaling: LossScaling) -> Option<LossScaler> {
        let (scale, growth_interval) = match scaling {
            LossScaling::Off => return None,
            LossScaling::Fixed(s) => (s, None),
            LossScaling::Dynamic {
                init,
                growth_interval,
            } => (init, Some(growth_interval)),
        };
        Some(LossScaler {
            scale,
            good_steps: 0,
            growth_interval,
            skipped: 0,
            overflows_in_a_row: 0,
        })
    }

    /// The scale of the next step's loss gradient.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Records whether step `step`'s gradients were all finite (the step is applied) or not
    /// (it is skipped, and a dynamic scale halves). Overflows that no scale would avoid (a
    /// dynamic scale down to its smallest, a fixed scale many steps in a row) are divergence.
    pub fn record(&mut self, step: u64, finite: bool) -> Result<()> {
        if self.advance(finite) {
            return Ok(());
        }
        Err(Error::diverged(format!(
            "the gradients of step {} are not finite with the loss scaled by {} ({} steps in a \
             row overflowed{})",
            step + 1,
            show(self.scale),
            self.overflows_in_a_row,
            match self.growth_interval {
                Some(_) => ", down to the smallest scale",
                None => " at this fixed loss_scale: try \"dynamic\"",
            }
        )))
    }

    /// [`LossScaler::record`] without the error: whether a scale may still avoid overflow.
    pub fn advance(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            self.overflows_in_a_row = 0;
            if let Some(interval) = self.growth_interval {
                if self.good_steps >= interval && (self.scale * 2.0).is_finite() {
                    self.scale *= 2.0;
                    self.good_steps = 0;
                }
            }
            return true;
        }
        self.skipped += 1;
        self.overflows_in_a_row += 1;
        self.good_steps = 0;
        let hopeless = match self.growth_interval {
            Some(_) => self.scale / 2.0 < MIN_SCALE,
            None => self.overflows_in_a_row >= MAX_OVERFLOWS_IN_A_ROW,
        };
        if !hopeless && self.growth_interval.is_some() {
            self.scale /= 2.0;
        }
        !hopeless
    }

    /// The metrics of the steps since the last call: the current scale and the steps skipped.
    pub fn read_metrics(&mut self) -> [(String, f64); 2] {
        [
            ("loss_scale".to_string(), self.scale as f64),
            (
                "skipped_steps".to_string(),
                std::mem::take(&mut self.skipped) as f64,
            ),
        ]
    }

    /// The state a checkpoint keeps: the scale and the good steps since it changed.
    pub fn state(&self) -> [f32; 2] {
        [self.scale, self.good_steps as f32]
    }

    /// The state as a checkpoint's tensor (made on `dev`), with its name.
    pub fn checkpoint_entry(&self, dev: &DeviceRef) -> Result<(String, Tensor)> {
        let state = self.state();
        let mut t = Tensor::zeros(dev, [state.len()], DType::F32)?;
        t.write_from(&state)?;
        Ok((CHECKPOINT_NAME.to_string(), t))
    }

    /// Restores the state `loaded` keeps; a checkpoint of a run without loss scaling leaves
    /// the scale where it starts.
    pub fn restore_from(&mut self, loaded: &Loaded) -> Result<()> {
        match loaded.tensor(CHECKPOINT_NAME) {
            Some(state) => self
                .restore(state)
                .map_err(|e| Error::checkpoint(&loaded.path, e)),
            None => Ok(()),
        }
    }

    /// Restores what [`LossScaler::state`] returned. A fixed scale stays the job's (a checkpoint
    /// of another run does not change it); a dynamic one takes the saved scale and count.
    pub fn restore(&mut self, state: &[f32]) -> Result<()> {
        const MAX_COUNT: f32 = (1u64 << 53) as f32;
        match *state {
            [scale, good]
                if scale > 0.0 && scale.is_finite() && (0.0..MAX_COUNT).contains(&good) =>
            {
                if self.growth_interval.is_some() {
                    self.scale = scale;
                    self.good_steps = good as u64;
                }
                Ok(())
            }
            _ => Err(Error::invalid(format!(
                "the loss scaler's state {state:?} is not [scale > 0, good steps >= 0]"
            ))),
        }
    }
}

/// Adds the sum of `grad`'s values to the one-element `total` (kept on `grad`'s device,
/// made there at the first call), starting it over when `first`. The sum is not finite once
/// one value is not (an overflow, a NaN), so one read of `total` after a step's gradients
/// says whether they overflowed, without bringing them to the host. (A sum of finite values
/// too large for f32 counts as an overflow too.)
pub fn add_sum(grad: &Tensor, total: &mut Option<Tensor>, first: bool) -> Result<()> {
    let dev = grad.device();
    let total = match total {
        Some(t) => t,
        None => total.insert(Tensor::zeros(dev, [1], DType::F32)?),
    };
    let dims = Dims3 {
        outer: 1,
        mid: grad.numel(),
        inner: 1,
    };
    let beta = if first { 0.0 } else { 1.0 };
    dev.reduce(ReduceOp::Sum, dims, grad, total, 1.0, beta)
}

/// The value of what [`add_sum`] added up (0 before any call).
pub fn read_sum(total: &Option<Tensor>) -> Result<f32> {
    let mut v = [0.0f32];
    if let Some(t) = total {
        t.read_into(&mut v)?;
    }
    Ok(v[0])
}

/// A scale as people write it: a power of two as `2^k`.
fn show(scale: f32) -> String {
    let k = scale.log2();
    if k.fract() == 0.0 {
        format!("2^{k}")
    } else {
        scale.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(init: f32, growth_interval: u64) -> LossScaler {
        LossScaler::new(LossScaling::Dynamic {
            init,
            growth_interval,
        })
        .unwrap()
    }

    #[test]
    fn a_dynamic_scale_halves_on_overflow_and_doubles_after_good_steps() {
        let mut s = dynamic(1024.0, 3);
        s.record(0, true).unwrap();
        s.record(1, true).unwrap();
        assert_eq!(s.scale(), 1024.0);
        s.record(2, true).unwrap();
        assert_eq!(s.scale(), 2048.0);
        s.record(3, true).unwrap();
        s.record(4, false).unwrap();
        assert_eq!(s.scale(), 1024.0);
        // The count of good steps starts over after an overflow.
        s.record(5, true).unwrap();
        s.record(6, true).unwrap();
        assert_eq!(s.scale(), 1024.0);
        let [(_, scale), (_, skipped)] = s.read_metrics();
        assert_eq!((scale, skipped), (1024.0, 1.0));
        assert_eq!(
            s.read_metrics()[1].1,
            0.0,
            "skipped steps are counted per reading"
        );
    }

    #[test]
    fn the_state_round_trips_and_bad_state_is_refused() {
        let mut s = dynamic(8.0, 5);
        s.record(0, true).unwrap();
        s.record(1, true).unwrap();
        let mut t = dynamic(65536.0, 5);
        t.restore(&s.state()).unwrap();
        assert_eq!((t.scale, t.good_steps), (8.0, 2));
        assert!(t.restore(&[0.0, 1.0]).is_err());
        assert!(t.restore(&[1.0]).is_err());
        assert!(t.restore(&[1.0, f32::INFINITY]).is_err());
        let mut fixed = LossScaler::new(LossScaling::Fixed(1024.0)).unwrap();
        fixed.restore(&s.state()).unwrap();
        assert_eq!(fixed.scale(), 1024.0, "a fixed scale stays the job's");
    }

    #[test]
    fn overflow_at_a_fixed_or_the_smallest_scale_is_divergence() {
        let mut fixed = LossScaler::new(LossScaling::Fixed(128.0)).unwrap();
        fixed.record(0, false).unwrap();
        fixed.record(1, true).unwrap();
        assert_eq!((fixed.scale(), fixed.read_metrics()[1].1), (128.0, 1.0));
        let e = (2..).find_map(|step| fixed.record(step, false).err());
        let e = e.unwrap().to_string();
        assert!(
            e.contains("step 42 are not finite with the loss scaled by 2^7 (40 steps in a row"),
            "{e}"
        );
        let mut s = dynamic(1.0, 2000);
        let mut step = 0;
        let e = loop {
            if let Err(e) = s.record(step, false) {
                break e.to_string();
            }
            step += 1;
        };
        assert_eq!(step, 24, "{e}");
        assert!(
            e.contains("step 25 are not finite with the loss scaled by 2^-24 (25 steps in a row overflowed, down to the smallest scale)"),
            "{e}"
        );
        assert!(LossScaler::new(LossScaling::Off).is_none());
    }
}
