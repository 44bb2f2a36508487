//! Learning-rate schedules (SINGA's `LRGenerator`s): the learning rate as a function of the step.

use singa_core::{Error, FieldKind, FieldSpec, Fields, Result};

/// How the learning rate changes over training. `step` counts from 0.
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// `base` throughout.
    Fixed {
        /// The learning rate.
        base: f32,
    },
    /// `base · gamma^⌊step / change_freq⌋`.
    Step {
        /// Initial learning rate.
        base: f32,
        /// Factor applied every `change_freq` steps.
        gamma: f32,
        /// Steps between changes.
        change_freq: u64,
    },
    /// SINGA's exponential schedule: `base / 2^⌊step / change_freq⌋`.
    Exponential {
        /// Initial learning rate.
        base: f32,
        /// Steps between halvings.
        change_freq: u64,
    },
    /// Caffe's and SINGA's inverse decay: `base · (1 + gamma · step)^(−pow)`.
    Inverse {
        /// Initial learning rate.
        base: f32,
        /// Decay speed.
        gamma: f32,
        /// Decay exponent.
        pow: f32,
    },
}

impl LrSchedule {
    /// The schedule names a job file can use.
    pub const KINDS: [&'static str; 4] = ["fixed", "step", "exponential", "inverse"];

    /// The learning rate at `step`.
    pub fn lr(&self, step: u64) -> f32 {
        match *self {
            LrSchedule::Fixed { base } => base,
            LrSchedule::Step {
                base,
                gamma,
                change_freq,
            } => base * gamma.powi((step / change_freq) as i32),
            LrSchedule::Exponential { base, change_freq } => {
                base / 2f32.powi((step / change_freq) as i32)
            }
            LrSchedule::Inverse { base, gamma, pow } => {
                base * (1.0 + gamma * step as f32).powf(-pow)
            }
        }
    }

    /// The fields of schedule `kind` (besides `type`).
    pub fn fields(kind: &str) -> Result<Vec<FieldSpec>> {
        let base = FieldSpec::new("base", FieldKind::Float, "the initial learning rate").required();
        let freq =
            FieldSpec::new("change_freq", FieldKind::Int, "steps between changes").required();
        Ok(match kind {
            "fixed" => vec![base],
            "step" => vec![
                base,
                FieldSpec::new(
                    "gamma",
                    FieldKind::Float,
                    "factor applied every change_freq steps",
                )
                .required(),
                freq,
            ],
            "exponential" => vec![base, freq],
            "inverse" => vec![
                base,
                FieldSpec::new("gamma", FieldKind::Float, "decay speed").required(),
                FieldSpec::new("pow", FieldKind::Float, "decay exponent").required(),
            ],
            other => {
                let hint = singa_core::fields::nearest(other, &Self::KINDS)
                    .map(|k| format!("; did you mean {k:?}?"))
                    .unwrap_or_default();
                return Err(Error::invalid(format!(
                    "unknown learning-rate schedule {other:?} (known: {}){hint}",
                    Self::KINDS.join(", ")
                )));
            }
        })
    }

    /// Builds schedule `kind` from fields validated against [`LrSchedule::fields`].
    pub fn new(kind: &str, f: &Fields) -> Result<LrSchedule> {
        let base = f.f32("base")?;
        let freq = || -> Result<u64> {
            let n = f.usize("change_freq")? as u64;
            if n == 0 {
                return Err(Error::invalid("change_freq must be at least 1"));
            }
            Ok(n)
        };
        Ok(match kind {
            "fixed" => LrSchedule::Fixed { base },
            "step" => LrSchedule::Step {
                base,
                gamma: f.f32("gamma")?,
                change_freq: freq()?,
            },
            "exponential" => LrSchedule::Exponential {
                base,
                change_freq: freq()?,
            },
            "inverse" => LrSchedule::Inverse {
                base,
                gamma: f.f32("gamma")?,
                pow: f.f32("pow")?,
            },
            other => return Err(Self::fields(other).unwrap_err()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas() {
        assert_eq!(LrSchedule::Fixed { base: 0.1 }.lr(1000), 0.1);
        let s = LrSchedule::Step {
            base: 0.1,
            gamma: 0.5,
            change_freq: 10,
        };
        assert_eq!(
            (s.lr(0), s.lr(9), s.lr(10), s.lr(25)),
            (0.1, 0.1, 0.05, 0.025)
        );
        let e = LrSchedule::Exponential {
            base: 1.0,
            change_freq: 3,
        };
        assert_eq!((e.lr(2), e.lr(3), e.lr(7)), (1.0, 0.5, 0.25));
        let i = LrSchedule::Inverse {
            base: 0.01,
            gamma: 1e-4,
            pow: 0.75,
        };
        assert!((i.lr(10_000) - 0.01 * 2f32.powf(-0.75)).abs() < 1e-9);
    }

    #[test]
    fn unknown_kind_is_suggested() {
        let e = LrSchedule::fields("stpe").unwrap_err();
        assert!(e.to_string().contains("did you mean \"step\""), "{e}");
    }
}
