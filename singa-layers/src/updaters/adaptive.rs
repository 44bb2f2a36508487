//! Updaters that scale each parameter's step by statistics of its past gradients.

use singa_core::abi::{RResult, RSliceMut, RString, RVec};
use singa_core::{
    AdaptiveArgs, AdaptiveRule, Error, FieldKind, FieldSpec, Fields, Result, Tensor, UpdateArgs,
    Updater, UpdaterDef,
};

fn eps_field() -> FieldSpec {
    FieldSpec::new(
        "eps",
        FieldKind::Float,
        "added to the root for stability (SINGA's delta)",
    )
    .default(1e-8)
}

fn positive(f: &Fields, name: &str) -> Result<f32> {
    let v = f.f32(name)?;
    if v.is_nan() || v <= 0.0 {
        return Err(Error::invalid(format!("{name} must be positive, got {v}")));
    }
    Ok(v)
}

fn fraction(f: &Fields, name: &str) -> Result<f32> {
    let v = f.f32(name)?;
    if !(0.0..1.0).contains(&v) {
        return Err(Error::invalid(format!("{name} must be in [0, 1), got {v}")));
    }
    Ok(v)
}

fn names(n: &[&str]) -> RResult<RVec<RString>, Error> {
    RResult::ROk(n.iter().map(|s| RString::from(*s)).collect())
}

/// Runs one adaptive step on `value` with the state slots `state`.
fn step(
    rule: AdaptiveRule,
    a: &UpdateArgs,
    value: &mut Tensor,
    grad: &Tensor,
    mut state: RSliceMut<'_, Tensor>,
) -> Result<()> {
    let dev = value.device().clone();
    let args = AdaptiveArgs {
        rule,
        lr: a.lr,
        weight_decay: a.weight_decay,
        grad_scale: a.grad_scale,
    };
    match state.as_mut_slice() {
        [s1] => dev.adaptive_update(value, grad, s1, None, args),
        [s1, s2] => dev.adaptive_update(value, grad, s1, Some(s2), args),
        other => Err(Error::invalid(format!(
            "expected 1 or 2 state tensors, got {}",
            other.len()
        ))),
    }
}

/// AdaGrad (Duchi et al. 2011): `s += g²`, `w -= lr·g / (√s + eps)`.
pub struct AdaGrad {
    eps: f32,
}

impl UpdaterDef for AdaGrad {
    const TYPE: &'static str = "adagrad";
    const DOC: &'static str =
        "AdaGrad: divides each step by the root of the summed squared gradients.";

    fn fields() -> Vec<FieldSpec> {
        vec![eps_field()]
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(AdaGrad {
            eps: positive(f, "eps")?,
        })
    }
}

impl Updater for AdaGrad {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        names(&["sum_sq"])
    }

    fn update(
        &mut self,
        _: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        step(
            AdaptiveRule::AdaGrad { eps: self.eps },
            a,
            value,
            grad,
            state,
        )
        .into()
    }
}

/// RMSProp (Hinton): `s = rho·s + (1−rho)·g²`, `w -= lr·g / (√s + eps)`.
pub struct RmsProp {
    rho: f32,
    eps: f32,
}

impl UpdaterDef for RmsProp {
    const TYPE: &'static str = "rmsprop";
    const DOC: &'static str =
        "RMSProp: divides each step by the root of a running average of squared gradients.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new(
                "rho",
                FieldKind::Float,
                "decay of the squared-gradient average",
            )
            .default(0.9),
            eps_field(),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(RmsProp {
            rho: fraction(f, "rho")?,
            eps: positive(f, "eps")?,
        })
    }
}

impl Updater for RmsProp {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        names(&["mean_sq"])
    }

    fn update(
        &mut self,
        _: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        step(
            AdaptiveRule::RmsProp {
                rho: self.rho,
                eps: self.eps,
            },
            a,
            value,
            grad,
            state,
        )
        .into()
    }
}

/// Adam (Kingma and Ba 2015), with bias correction; as AdamW (Loshchilov and Hutter 2019) the
/// weight decay shrinks the weights directly instead of joining the gradient.
pub struct Adam {
    beta1: f32,
    beta2: f32,
    eps: f32,
    decoupled: bool,
}

fn adam_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::new("beta1", FieldKind::Float, "decay of the gradient average").default(0.9),
        FieldSpec::new(
            "beta2",
            FieldKind::Float,
            "decay of the squared-gradient average",
        )
        .default(0.999),
        eps_field(),
    ]
}

impl Adam {
    fn build(f: &Fields, decoupled: bool) -> Result<Adam> {
        Ok(Adam {
            beta1: fraction(f, "beta1")?,
            beta2: fraction(f, "beta2")?,
            eps: positive(f, "eps")?,
            decoupled,
        })
    }

    fn rule(&self, step: u64) -> AdaptiveRule {
        let t = (step + 1).min(i32::MAX as u64) as i32;
        AdaptiveRule::Adam {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            correction1: 1.0 - self.beta1.powi(t),
            correction2: 1.0 - self.beta2.powi(t),
            decoupled: self.decoupled,
        }
    }
}

impl UpdaterDef for Adam {
    const TYPE: &'static str = "adam";
    const DOC: &'static str =
        "Adam with bias correction; weight_decay is L2 (added to the gradient).";

    fn fields() -> Vec<FieldSpec> {
        adam_fields()
    }

    fn new(f: &Fields) -> Result<Self> {
        Adam::build(f, false)
    }
}

impl Updater for Adam {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        names(&["m", "v"])
    }

    fn update(
        &mut self,
        s: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        step(self.rule(s), a, value, grad, state).into()
    }
}

/// AdamW: Adam with decoupled weight decay.
pub struct AdamW(Adam);

impl UpdaterDef for AdamW {
    const TYPE: &'static str = "adamw";
    const DOC: &'static str = "AdamW: Adam whose weight_decay shrinks the weights directly (decoupled from the gradient).";

    fn fields() -> Vec<FieldSpec> {
        adam_fields()
    }

    fn new(f: &Fields) -> Result<Self> {
        Adam::build(f, true).map(AdamW)
    }
}

impl Updater for AdamW {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        self.0.state_names()
    }

    fn update(
        &mut self,
        s: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        self.0.update(s, a, value, grad, state)
    }
}

/// AdaDelta (Zeiler 2012): `s = rho·s + (1−rho)·g²`, `Δ = √(d + eps)/√(s + eps)·g`,
/// `d = rho·d + (1−rho)·Δ²`, `w −= lr·Δ`. It needs no learning rate of its own: keep
/// `learning_rate = 1.0` (PyTorch's default) unless a schedule should scale the steps.
pub struct AdaDelta {
    rho: f32,
    eps: f32,
}

impl UpdaterDef for AdaDelta {
    const TYPE: &'static str = "adadelta";
    const DOC: &'static str = "AdaDelta: steps scaled by the ratio of running averages of squared steps and squared gradients (use learning_rate = 1.0).";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("rho", FieldKind::Float, "decay of both running averages").default(0.9),
            FieldSpec::new("eps", FieldKind::Float, "added under both roots").default(1e-6),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(AdaDelta {
            rho: fraction(f, "rho")?,
            eps: positive(f, "eps")?,
        })
    }
}

impl Updater for AdaDelta {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        names(&["mean_sq", "mean_sq_step"])
    }

    fn update(
        &mut self,
        _: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let rule = AdaptiveRule::AdaDelta {
            rho: self.rho,
            eps: self.eps,
        };
        step(rule, a, value, grad, state).into()
    }
}

/// AdaMax (Kingma and Ba 2015): Adam with the infinity norm, `m = β1·m + (1−β1)·g`,
/// `u = max(β2·u, |g| + eps)`, `w −= lr/(1−β1^t)·m/u`.
pub struct AdaMax {
    beta1: f32,
    beta2: f32,
    eps: f32,
}

impl UpdaterDef for AdaMax {
    const TYPE: &'static str = "adamax";
    const DOC: &'static str = "AdaMax: Adam with steps scaled by a decayed maximum of gradient magnitudes instead of their root mean square.";

    fn fields() -> Vec<FieldSpec> {
        adam_fields()
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(AdaMax {
            beta1: fraction(f, "beta1")?,
            beta2: fraction(f, "beta2")?,
            eps: positive(f, "eps")?,
        })
    }
}

impl Updater for AdaMax {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        names(&["m", "u"])
    }

    fn update(
        &mut self,
        s: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let t = (s + 1).min(i32::MAX as u64) as i32;
        let rule = AdaptiveRule::AdaMax {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            correction1: 1.0 - self.beta1.powi(t),
        };
        step(rule, a, value, grad, state).into()
    }
}
