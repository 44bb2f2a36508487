//! Stochastic gradient descent with momentum and weight decay.

use singa_core::abi::{RResult, RSliceMut, RString, RVec};
use singa_core::{
    Error, FieldKind, FieldSpec, Fields, Result, SgdArgs, Tensor, UpdateArgs, Updater, UpdaterDef,
};

/// SGD: `d = g + wd·w`; with momentum `m = μ·m + d`, `w −= lr·m` (Nesterov: `w −= lr·(d + μ·m)`).
pub struct Sgd {
    momentum: f32,
    nesterov: bool,
}

impl UpdaterDef for Sgd {
    const TYPE: &'static str = "sgd";
    const DOC: &'static str = "Stochastic gradient descent with optional (Nesterov) momentum; L2 weight decay is added to the gradient.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new(
                "momentum",
                FieldKind::Float,
                "momentum coefficient μ in [0, 1)",
            )
            .default(0.0),
            FieldSpec::new("nesterov", FieldKind::Bool, "use Nesterov's momentum").default(false),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let momentum = f.f32("momentum")?;
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::invalid(format!(
                "momentum must be in [0, 1), got {momentum}"
            )));
        }
        let nesterov = f.bool("nesterov")?;
        if nesterov && momentum == 0.0 {
            return Err(Error::invalid("nesterov needs a non-zero momentum"));
        }
        Ok(Sgd { momentum, nesterov })
    }
}

impl Updater for Sgd {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        let names = if self.momentum > 0.0 {
            vec![RString::from("momentum")]
        } else {
            vec![]
        };
        RResult::ROk(names.into())
    }

    fn update(
        &mut self,
        _step: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        mut state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let args = SgdArgs {
            lr: a.lr,
            momentum: self.momentum,
            weight_decay: a.weight_decay,
            nesterov: self.nesterov,
            grad_scale: a.grad_scale,
        };
        let dev = value.device().clone();
        dev.sgd_update(value, grad, state.first_mut(), args).into()
    }
}

/// Nesterov's accelerated gradient: SGD with Nesterov momentum (SINGA's `kNesterov`).
pub struct Nesterov(Sgd);

impl UpdaterDef for Nesterov {
    const TYPE: &'static str = "nesterov";
    const DOC: &'static str =
        "SGD with Nesterov momentum: the step looks ahead along the momentum.";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new(
            "momentum",
            FieldKind::Float,
            "momentum coefficient μ in (0, 1)",
        )
        .default(0.9)]
    }

    fn new(f: &Fields) -> Result<Self> {
        Sgd::new(&f.clone().with("nesterov", true)).map(Nesterov)
    }
}

impl Updater for Nesterov {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        self.0.state_names()
    }

    fn update(
        &mut self,
        step: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        self.0.update(step, a, value, grad, state)
    }
}
