//! Naming what stopped being a finite number when training diverges.
//!
//! Detection is cheap and happens elsewhere: the net reads each step's loss before any gradient
//! comes of it ([`NeuralNet::read_step_metrics`](crate::net::NeuralNet::read_step_metrics)),
//! and the trainer checks the parameters before it writes a checkpoint. The scans here run only
//! once something is wrong, or once per checkpoint, so they may copy tensors to the host.

use crate::params::ParamStore;
use singa_core::abi::RBox;
use singa_core::{DType, Error, Result, Tensor};

/// The first element of `t` that is not finite (its index and value); `None` when all are, or
/// when `t` does not hold `f32` values (integers are always finite; half floats are checked
/// where they are converted).
pub(crate) fn first_nonfinite(t: &Tensor) -> Result<Option<(usize, f32)>> {
    if t.dtype() != DType::F32 {
        return Ok(None);
    }
    let values = t.to_vec::<f32>()?;
    Ok(values
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, values[i])))
}

/// Describes the first parameter of `store` that holds a value that is not finite, if any.
pub(crate) fn nonfinite_param(store: &ParamStore) -> Result<Option<String>> {
    for e in store.entries() {
        if let Some((i, v)) = first_nonfinite(&e.value)? {
            return Ok(Some(format!(
                "parameter {} (shape {}) holds {v} at element {i}",
                e.name,
                e.shape()
            )));
        }
    }
    Ok(None)
}

/// `err` with the parameters of `store` described when it says that training diverged: the
/// first one that is not finite, or that every one still is (the forward pass overflowed).
pub(crate) fn explain(err: Error, store: &ParamStore) -> Error {
    if !matches!(err.root(), Error::Diverged { .. }) {
        return err;
    }
    let params = match nonfinite_param(store) {
        Ok(Some(p)) => p,
        Ok(None) => "every parameter is still finite".to_string(),
        Err(e) => format!("the parameters could not be read ({e})"),
    };
    append(err, &params)
}

/// `err` with `note` added to the end of its message when it says that training diverged
/// (inside whatever context wraps it); any other error unchanged.
pub(crate) fn append(err: Error, note: &str) -> Error {
    match err {
        Error::Diverged { message } => Error::diverged(format!("{message}; {note}")),
        Error::Context { context, inner } => append(RBox::into_inner(inner), note).context(context),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use singa_core::{DeviceRef, Shape};

    fn tensor(values: &[f32]) -> Tensor {
        let dev = DeviceRef::new(singa_cpu::ReferenceDevice::new());
        let mut t = Tensor::zeros(&dev, Shape::from([values.len()]), DType::F32).unwrap();
        t.write_from(values).unwrap();
        t
    }

    #[test]
    fn the_first_value_that_is_not_finite_is_found() {
        assert_eq!(first_nonfinite(&tensor(&[1.0, 2.0])).unwrap(), None);
        let (i, v) = first_nonfinite(&tensor(&[1.0, f32::INFINITY, f32::NAN]))
            .unwrap()
            .unwrap();
        assert_eq!((i, v), (1, f32::INFINITY));
    }

    #[test]
    fn only_divergence_is_explained() {
        let store = ParamStore::new();
        let other = explain(Error::invalid("x"), &store);
        assert_eq!(other.to_string(), "x");
        let diverged = explain(Error::diverged("the loss is NaN"), &store);
        assert_eq!(
            diverged.to_string(),
            "training diverged: the loss is NaN; every parameter is still finite"
        );
        let wrapped = append(Error::diverged("x").context("step 3"), "kept");
        assert_eq!(wrapped.to_string(), "step 3: training diverged: x; kept");
    }
}
