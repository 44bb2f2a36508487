//! A singa plugin with one updater type, `lion` (Chen et al., "Symbolic discovery of
//! optimization algorithms", 2023): the step is the sign of an interpolated momentum, so every
//! coordinate moves by exactly the learning rate.
//!
//! ```text
//! c = β₁·m + (1 − β₁)·g
//! w ← w − lr·(sign(c) + wd·w)      (decoupled weight decay, as AdamW)
//! m ← β₂·m + (1 − β₂)·g
//! ```
//! Lion wants a learning rate 3-10x smaller than Adam's and a weight decay 3-10x larger.

use singa_core::abi::{RResult, RSliceMut, RString, RVec};
use singa_core::{
    Error, FieldKind, FieldSpec, Fields, Result, Tensor, UnaryOp, UpdateArgs, Updater, UpdaterDef,
};

/// The Lion updater.
pub struct Lion {
    beta1: f32,
    beta2: f32,
}

impl UpdaterDef for Lion {
    const TYPE: &'static str = "lion";
    const DOC: &'static str = "Lion: w -= lr·(sign(β₁·m + (1−β₁)·g) + wd·w), m = β₂·m + (1−β₂)·g; use a learning rate 3-10x below Adam's.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new(
                "beta1",
                FieldKind::Float,
                "interpolation for the step's sign, in [0, 1)",
            )
            .default(0.9),
            FieldSpec::new("beta2", FieldKind::Float, "momentum decay, in [0, 1)").default(0.99),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let beta1 = f.f32("beta1")?;
        let beta2 = f.f32("beta2")?;
        for (name, v) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::invalid(format!("{name} must be in [0, 1), got {v}")));
            }
        }
        Ok(Lion { beta1, beta2 })
    }
}

impl Updater for Lion {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        // `direction` holds sign(c) during a step; kept as state so that a step allocates nothing.
        RResult::ROk(vec![RString::from("momentum"), RString::from("direction")].into())
    }

    fn update(
        &mut self,
        _step: u64,
        a: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        mut state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let (b1, b2, gs) = (self.beta1, self.beta2, a.grad_scale);
        (|| {
            let [m, direction] = &mut state[..] else {
                return Err(Error::invalid("lion needs its two state tensors"));
            };
            let dev = value.device().clone();
            // direction ← c = β₁·m + (1 − β₁)·g, then its sign, in place.
            dev.axpby((1.0 - b1) * gs, grad, 0.0, direction)?;
            dev.axpby(b1, m, 1.0, direction)?;
            let c = direction.clone(); // a second handle, to read and write it in place
            dev.unary(UnaryOp::Sign, &c, direction)?;
            dev.axpby((1.0 - b2) * gs, grad, b2, m)?;
            dev.axpby(-a.lr, direction, 1.0 - a.lr * a.weight_decay, value)
        })()
        .into()
    }
}

singa_core::export_plugin! {
    layers: [],
    updaters: [Lion],
}

#[cfg(test)]
mod tests {
    use super::*;
    use singa_core::{DeviceRef, Tensor};

    /// Three steps on the CPU device against the formulas, computed here in f64.
    #[test]
    fn matches_the_formulas() {
        let dev = DeviceRef::new(singa_cpu::ReferenceDevice::new());
        let (b1, b2, lr, wd) = (0.9f64, 0.99f64, 0.01f64, 0.1f64);
        let mut lion = Lion::new(&Fields::new().with("beta1", b1).with("beta2", b2)).unwrap();
        let w0 = [0.5f32, -1.0, 2.0, 0.0];
        let grads = [
            [0.2f32, -0.3, 0.0, 1.0],
            [-0.4, 0.1, 0.5, -2.0],
            [0.3, 0.3, -0.1, 0.2],
        ];
        let mut value = Tensor::from_slice(&dev, &w0, [4]).unwrap();
        let mut state = vec![
            Tensor::zeros(&dev, [4], singa_core::DType::F32).unwrap(),
            Tensor::zeros(&dev, [4], singa_core::DType::F32).unwrap(),
        ];
        let (mut w, mut m) = (w0.map(f64::from), [0.0f64; 4]);
        for (step, g) in grads.iter().enumerate() {
            let grad = Tensor::from_slice(&dev, g, [4]).unwrap();
            let args = UpdateArgs {
                lr: lr as f32,
                weight_decay: wd as f32,
                grad_scale: 1.0,
            };
            lion.update(
                step as u64,
                &args,
                &mut value,
                &grad,
                state.as_mut_slice().into(),
            )
            .unwrap();
            for i in 0..4 {
                let g = g[i] as f64;
                let c = b1 * m[i] + (1.0 - b1) * g;
                let sign = if c > 0.0 {
                    1.0
                } else if c < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                w[i] -= lr * (sign + wd * w[i]);
                m[i] = b2 * m[i] + (1.0 - b2) * g;
            }
            let got = value.to_vec::<f32>().unwrap();
            let got_m = state[0].to_vec::<f32>().unwrap();
            for i in 0..4 {
                assert!(
                    (got[i] as f64 - w[i]).abs() < 1e-6,
                    "step {step} w[{i}]: {} vs {}",
                    got[i],
                    w[i]
                );
                assert!(
                    (got_m[i] as f64 - m[i]).abs() < 1e-6,
                    "step {step} m[{i}]: {} vs {}",
                    got_m[i],
                    m[i]
                );
            }
        }
    }
}
