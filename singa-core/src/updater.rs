//! The `Updater` trait: turns a gradient into a new parameter value.
//!
//! An updater is stateless across parameters: the per-parameter state it needs (a momentum
//! buffer, Adam's moments) lives in tensors the caller allocates from [`Updater::state_names`]
//! and passes back every step. That lets a server hold only a slice of a parameter, and lets
//! checkpoints save the state by name.

use crate::error::{catch_panic, Error, Guarded, Result};
use crate::fields::{FieldSpec, Fields};
use crate::tensor::Tensor;
use abi_stable::sabi_trait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RBox, RResult, RSliceMut, RString, RVec};
use abi_stable::StableAbi;
use std::fmt;

/// The hyper-parameters of one update of one parameter, with the learning-rate schedule and
/// the parameter's multipliers already applied.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct UpdateArgs {
    /// The learning rate for this parameter at this step.
    pub lr: f32,
    /// The L2 weight decay for this parameter.
    pub weight_decay: f32,
    /// A factor applied to the gradient first (e.g. `1 / number of gradients summed`).
    pub grad_scale: f32,
}

/// Applies gradients to parameters (SINGA's `Updater`, run by servers).
#[sabi_trait]
pub trait Updater: Send {
    /// The names of the state tensors (each shaped like the parameter) this updater keeps per
    /// parameter, e.g. `["momentum"]`. The caller allocates them, zeroed.
    fn state_names(&self) -> RResult<RVec<RString>, Error>;

    /// Updates `value` in place from `grad` at training step `step` (counted from 0).
    fn update(
        &mut self,
        step: u64,
        args: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error>;
}

/// An owned, type-erased updater.
pub type UpdaterBox = Updater_TO<'static, RBox<()>>;

/// Boxes an updater behind the ABI-stable trait object, catching panics in every method.
pub fn updater_box<U: Updater + 'static>(type_name: &str, updater: U) -> UpdaterBox {
    Updater_TO::from_value(
        Guarded::new(format!("updater type {type_name}"), updater),
        TD_Opaque,
    )
}

impl<U: Updater> Updater for Guarded<U> {
    fn state_names(&self) -> RResult<RVec<RString>, Error> {
        catch_panic(&self.what, || self.inner.state_names().into_result()).into()
    }

    fn update(
        &mut self,
        step: u64,
        args: &UpdateArgs,
        value: &mut Tensor,
        grad: &Tensor,
        state: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let inner = &mut self.inner;
        catch_panic(&self.what, || {
            inner.update(step, args, value, grad, state).into_result()
        })
        .into()
    }
}

/// An updater type as the registry knows it: name, help, fields and constructor.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct UpdaterType {
    /// The `type` a job file's `[updater]` names.
    pub name: RString,
    /// One paragraph of help.
    pub doc: RString,
    /// The updater's own fields (besides the common ones: learning rate and weight decay).
    pub fields: RVec<FieldSpec>,
    /// Builds an updater from validated fields.
    pub create: extern "C" fn(&Fields) -> RResult<UpdaterBox, Error>,
}

impl fmt::Debug for UpdaterType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpdaterType({})", self.name)
    }
}

/// What an updater implementation declares to become an [`UpdaterType`].
pub trait UpdaterDef: Updater + Sized + 'static {
    /// The type name in job files, e.g. `sgd`.
    const TYPE: &'static str;
    /// One paragraph of help.
    const DOC: &'static str;
    /// The fields the updater takes.
    fn fields() -> Vec<FieldSpec>;
    /// Builds the updater from its validated fields.
    fn new(fields: &Fields) -> Result<Self>;
}

/// The registry entry of an [`UpdaterDef`].
pub fn updater_type<U: UpdaterDef>() -> UpdaterType {
    UpdaterType {
        name: U::TYPE.into(),
        doc: U::DOC.into(),
        fields: U::fields().into(),
        create: create_updater::<U>,
    }
}

extern "C" fn create_updater<U: UpdaterDef>(fields: &Fields) -> RResult<UpdaterBox, Error> {
    catch_panic(format_args!("updater type {}", U::TYPE), || {
        Ok(updater_box(U::TYPE, U::new(fields)?))
    })
    .into()
}
