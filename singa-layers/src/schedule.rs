//! Learning-rate schedules (SINGA's `LRGenerator`s, plus warm-up and cosine decay): the
//! learning rate as a function of the step.

use singa_core::{Error, FieldKind, FieldSpec, FieldValue, Fields, Result};

/// How the learning rate changes over training. `step` counts from 0.
#[derive(Clone, Debug, PartialEq)]
pub enum Curve {
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
    /// SINGA's fixed-step table: `values[i]` once `step ≥ boundaries[i-1]` (and `values[0]`
    /// before the first boundary).
    FixedStep {
        /// Increasing steps where the rate changes.
        boundaries: Vec<u64>,
        /// One more value than boundaries.
        values: Vec<f32>,
    },
    /// From `base` to `final_lr` in a straight line over `change_freq` steps, then constant.
    Linear {
        /// Initial learning rate.
        base: f32,
        /// Learning rate from `change_freq` on.
        final_lr: f32,
        /// Steps of the ramp.
        change_freq: u64,
    },
    /// Half a cosine from `base` down to `final_lr` over `change_freq` steps, then constant.
    Cosine {
        /// Initial learning rate.
        base: f32,
        /// Learning rate from `change_freq` on.
        final_lr: f32,
        /// Steps of the decay.
        change_freq: u64,
    },
}

impl Curve {
    fn lr(&self, step: u64) -> f32 {
        match self {
            Curve::Fixed { base } => *base,
            Curve::Step {
                base,
                gamma,
                change_freq,
            } => base * gamma.powi((step / change_freq) as i32),
            Curve::Exponential { base, change_freq } => {
                base / 2f32.powi((step / change_freq) as i32)
            }
            Curve::Inverse { base, gamma, pow } => base * (1.0 + gamma * step as f32).powf(-pow),
            Curve::FixedStep { boundaries, values } => {
                values[boundaries.iter().filter(|&&b| step >= b).count()]
            }
            Curve::Linear {
                base,
                final_lr,
                change_freq,
            } => {
                let t = step.min(*change_freq) as f32 / *change_freq as f32;
                base + (final_lr - base) * t
            }
            Curve::Cosine {
                base,
                final_lr,
                change_freq,
            } => {
                let t = step.min(*change_freq) as f32 / *change_freq as f32;
                final_lr + 0.5 * (base - final_lr) * (1.0 + (std::f32::consts::PI * t).cos())
            }
        }
    }
}

/// A curve, optionally preceded by a linear warm-up.
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// The curve.
    pub curve: Curve,
    /// Steps over which the rate ramps up linearly from `lr/warmup` to the curve (0: none).
    pub warmup: u64,
}

impl LrSchedule {
    /// The schedule names a job file can use.
    pub const KINDS: [&'static str; 7] = [
        "fixed",
        "step",
        "exponential",
        "inverse",
        "fixed_step",
        "linear",
        "cosine",
    ];

    /// A fixed rate.
    pub fn fixed(base: f32) -> LrSchedule {
        LrSchedule {
            curve: Curve::Fixed { base },
            warmup: 0,
        }
    }

    /// The learning rate at `step`.
    pub fn lr(&self, step: u64) -> f32 {
        let lr = self.curve.lr(step);
        if step < self.warmup {
            lr * (step + 1) as f32 / self.warmup as f32
        } else {
            lr
        }
    }

    /// The fields of schedule `kind` (besides `type`).
    pub fn fields(kind: &str) -> Result<Vec<FieldSpec>> {
        let base =
            || FieldSpec::new("base", FieldKind::Float, "the initial learning rate").required();
        let freq = || {
            FieldSpec::new(
                "change_freq",
                FieldKind::Int,
                "steps between changes (or of the whole ramp)",
            )
            .required()
        };
        let final_lr = || {
            FieldSpec::new("final", FieldKind::Float, "the learning rate at the end").default(0.0)
        };
        let mut f = match kind {
            "fixed" => vec![base()],
            "step" => vec![
                base(),
                FieldSpec::new(
                    "gamma",
                    FieldKind::Float,
                    "factor applied every change_freq steps",
                )
                .required(),
                freq(),
            ],
            "exponential" => vec![base(), freq()],
            "inverse" => vec![
                base(),
                FieldSpec::new("gamma", FieldKind::Float, "decay speed").required(),
                FieldSpec::new("pow", FieldKind::Float, "decay exponent").required(),
            ],
            "fixed_step" => vec![
                FieldSpec::new(
                    "boundaries",
                    FieldKind::List,
                    "increasing steps where the rate changes",
                )
                .required(),
                FieldSpec::new(
                    "values",
                    FieldKind::List,
                    "the rates: one before the first boundary and one after each",
                )
                .required(),
            ],
            "linear" | "cosine" => vec![base(), final_lr(), freq()],
            other => {
                let hint = singa_core::fields::nearest(other, &Self::KINDS)
                    .map(|k| format!("; did you mean {k:?}?"))
                    .unwrap_or_default();
                return Err(Error::invalid(format!(
                    "unknown learning-rate schedule {other:?} (known: {}){hint}",
                    Self::KINDS.join(", ")
                )));
            }
        };
        f.push(
            FieldSpec::new(
                "warmup",
                FieldKind::Int,
                "steps of linear warm-up before the schedule",
            )
            .default(0),
        );
        Ok(f)
    }

    /// Builds schedule `kind` from fields validated against [`LrSchedule::fields`].
    pub fn new(kind: &str, f: &Fields) -> Result<LrSchedule> {
        let freq = || -> Result<u64> {
            let n = f.usize("change_freq")? as u64;
            if n == 0 {
                return Err(Error::invalid("change_freq must be at least 1"));
            }
            Ok(n)
        };
        // A rate below 0 would climb the loss; a factor of 0 or less would stop or flip it.
        let at_least = |name: &str, min: f32, inclusive: bool| -> Result<f32> {
            let v = f.f32(name)?;
            if v > min || (inclusive && v == min) {
                Ok(v)
            } else {
                let bound = if inclusive { "at least" } else { "more than" };
                Err(Error::invalid(format!(
                    "{name} must be {bound} {min}, got {v}"
                )))
            }
        };
        let base = || at_least("base", 0.0, true);
        let curve = match kind {
            "fixed" => Curve::Fixed { base: base()? },
            "step" => Curve::Step {
                base: base()?,
                gamma: at_least("gamma", 0.0, false)?,
                change_freq: freq()?,
            },
            "exponential" => Curve::Exponential {
                base: base()?,
                change_freq: freq()?,
            },
            "inverse" => Curve::Inverse {
                base: base()?,
                gamma: at_least("gamma", 0.0, true)?,
                pow: f.f32("pow")?,
            },
            "fixed_step" => {
                let boundaries = list(f, "boundaries", |v| match v {
                    FieldValue::Int(i) if *i >= 0 => Some(*i as u64),
                    _ => None,
                })?;
                let values = list(f, "values", |v| match v {
                    FieldValue::Float(x) => Some(*x as f32),
                    FieldValue::Int(i) => Some(*i as f32),
                    _ => None,
                })?;
                if values.len() != boundaries.len() + 1 {
                    return Err(Error::invalid(format!(
                        "fixed_step needs one more value than boundaries, got {} values for {} boundaries",
                        values.len(),
                        boundaries.len()
                    )));
                }
                if let Some(v) = values.iter().find(|v| **v < 0.0) {
                    return Err(Error::invalid(format!(
                        "values must be at least 0, got {v}"
                    )));
                }
                if boundaries.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::invalid(format!(
                        "boundaries must increase, got {boundaries:?}"
                    )));
                }
                Curve::FixedStep { boundaries, values }
            }
            "linear" => Curve::Linear {
                base: base()?,
                final_lr: at_least("final", 0.0, true)?,
                change_freq: freq()?,
            },
            "cosine" => Curve::Cosine {
                base: base()?,
                final_lr: at_least("final", 0.0, true)?,
                change_freq: freq()?,
            },
            other => return Err(Self::fields(other).unwrap_err()),
        };
        Ok(LrSchedule {
            curve,
            warmup: f.opt_i64("warmup")?.unwrap_or(0).max(0) as u64,
        })
    }
}

/// A list field whose items `item` accepts.
fn list<T>(f: &Fields, name: &str, item: impl Fn(&FieldValue) -> Option<T>) -> Result<Vec<T>> {
    let values = f.opt_list(name)?.unwrap_or(&[]);
    values
        .iter()
        .map(|v| item(v).ok_or_else(|| Error::invalid(format!("{name}: {v} is not a valid item"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(c: Curve) -> LrSchedule {
        LrSchedule {
            curve: c,
            warmup: 0,
        }
    }

    #[test]
    fn formulas() {
        assert_eq!(LrSchedule::fixed(0.1).lr(1000), 0.1);
        let s = curve(Curve::Step {
            base: 0.1,
            gamma: 0.5,
            change_freq: 10,
        });
        assert_eq!(
            (s.lr(0), s.lr(9), s.lr(10), s.lr(25)),
            (0.1, 0.1, 0.05, 0.025)
        );
        let e = curve(Curve::Exponential {
            base: 1.0,
            change_freq: 3,
        });
        assert_eq!((e.lr(2), e.lr(3), e.lr(7)), (1.0, 0.5, 0.25));
        let i = curve(Curve::Inverse {
            base: 0.01,
            gamma: 1e-4,
            pow: 0.75,
        });
        assert!((i.lr(10_000) - 0.01 * 2f32.powf(-0.75)).abs() < 1e-9);
        let t = curve(Curve::FixedStep {
            boundaries: vec![100, 200],
            values: vec![1.0, 0.1, 0.01],
        });
        assert_eq!(
            (
                t.lr(0),
                t.lr(99),
                t.lr(100),
                t.lr(199),
                t.lr(200),
                t.lr(10_000)
            ),
            (1.0, 1.0, 0.1, 0.1, 0.01, 0.01)
        );
        let l = curve(Curve::Linear {
            base: 1.0,
            final_lr: 0.0,
            change_freq: 100,
        });
        assert_eq!(
            (l.lr(0), l.lr(50), l.lr(100), l.lr(500)),
            (1.0, 0.5, 0.0, 0.0)
        );
        let c = curve(Curve::Cosine {
            base: 1.0,
            final_lr: 0.0,
            change_freq: 100,
        });
        assert!(
            (c.lr(0) - 1.0).abs() < 1e-6 && (c.lr(50) - 0.5).abs() < 1e-6 && c.lr(100).abs() < 1e-6
        );
        let w = LrSchedule {
            curve: Curve::Fixed { base: 1.0 },
            warmup: 4,
        };
        assert_eq!((w.lr(0), w.lr(1), w.lr(3), w.lr(4)), (0.25, 0.5, 1.0, 1.0));
    }

    #[test]
    fn fixed_step_from_fields() {
        let f = Fields::new()
            .with("boundaries", vec![10i64, 20])
            .with("values", vec![0.1f64, 0.01, 0.001]);
        let s = LrSchedule::new("fixed_step", &f).unwrap();
        assert_eq!(s.lr(15), 0.01);
        let bad = Fields::new()
            .with("boundaries", vec![10i64])
            .with("values", vec![0.1f64]);
        assert!(LrSchedule::new("fixed_step", &bad).is_err());
    }

    #[test]
    fn unknown_kind_is_suggested() {
        let e = LrSchedule::fields("stpe").unwrap_err();
        assert!(e.to_string().contains("did you mean \"step\""), "{e}");
    }
}
