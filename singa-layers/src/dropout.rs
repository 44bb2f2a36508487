//! Dropout.

use crate::operator::{Describe, Operator};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    BinaryOp, DType, DeviceRef, Distribution, Error, FieldKind, FieldSpec, Fields, Layer, LayerDef,
    ParamFactoryMut, Phase, Result, SetupContext, Tensor, TensorSpec,
};

/// Inverted dropout: in training, each value is kept with probability `1 − dropout_ratio` and
/// scaled by `1 / (1 − dropout_ratio)`; in testing the layer passes values through.
///
/// The mask of every step is a pure function of the layer's seed and a draw counter, which the
/// layer saves in checkpoints, so a resumed run drops the same units as an uninterrupted one.
pub struct Dropout {
    ratio: f32,
    state: Option<State>,
    /// Random numbers drawn so far (the stream position of the next mask).
    draws: u64,
}

struct State {
    dev: DeviceRef,
    mask: Tensor,
    seed: u64,
}

impl LayerDef for Dropout {
    const TYPE: &'static str = "dropout";
    const DOC: &'static str = "Inverted dropout: zeroes each value with probability dropout_ratio during training and scales the rest by 1/(1 - dropout_ratio).";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new(
            "dropout_ratio",
            FieldKind::Float,
            "probability of dropping a value, in [0, 1)",
        )
        .default(0.5)]
    }

    fn new(f: &Fields) -> Result<Self> {
        let ratio = f.f32("dropout_ratio")?;
        if !(0.0..1.0).contains(&ratio) {
            return Err(Error::invalid(format!(
                "dropout_ratio must be in [0, 1), got {ratio}"
            )));
        }
        Ok(Dropout {
            ratio,
            state: None,
            draws: 0,
        })
    }
}

impl Dropout {
    fn st(&mut self) -> Result<&mut State> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("dropout used before setup"))
    }
}

impl Describe for Dropout {
    /// Dropout is the identity in testing (inverted dropout scales in training).
    fn operator(&self) -> Option<Operator> {
        self.state.as_ref()?;
        Some(Operator::Identity)
    }
}

impl Layer for Dropout {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let input = ctx.single_input()?;
            self.state = Some(State {
                dev: ctx.device.clone(),
                mask: Tensor::zeros(ctx.device, input.shape, DType::F32)?,
                // Each part of a partitioned layer draws its own masks (its rows or columns
                // are not its peers'); the data layers keep one shared order instead.
                seed: match ctx.num_partitions {
                    0 | 1 => ctx.seed,
                    _ => singa_core::rng::derive_seed(ctx.seed, &ctx.partition_id.to_string()),
                },
            });
            Ok(vec![TensorSpec::new("output", input.shape, DType::F32)].into())
        })()
        .into()
    }

    fn forward(
        &mut self,
        phase: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let keep = 1.0 - self.ratio;
        let draws = self.draws;
        (|| {
            let s = self.st()?;
            if !phase.is_train() {
                return s.dev.copy(&inputs[0], &mut outputs[0]).map(|_| 0);
            }
            let dist = Distribution::Bernoulli {
                p: keep,
                scale: 1.0 / keep,
            };
            s.dev.random(&mut s.mask, dist, s.seed, draws)?;
            s.dev
                .binary(BinaryOp::Mul, &inputs[0], &s.mask, &mut outputs[0])?;
            Ok(s.mask.numel() as u64)
        })()
        .map(|n| self.draws += n)
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.st()?;
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                s.dev.binary(BinaryOp::Mul, &grad_outputs[0], &s.mask, dx)?;
            }
            Ok(())
        })()
        .into()
    }

    fn state(&self) -> RResult<RVec<u64>, Error> {
        RResult::ROk(vec![self.draws].into())
    }

    fn restore_state(&mut self, state: RSlice<'_, u64>) -> RResult<(), Error> {
        crate::single_state("dropout", state.as_slice())
            .map(|v| self.draws = v)
            .into()
    }
}
