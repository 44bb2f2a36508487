//! # singa-core
//!
//! The small core every other singa crate builds on: [`Tensor`], [`DType`], [`Shape`], the one
//! [`Error`] type, and the four ABI-stable traits that separate the parts of the system —
//! [`Device`] (where memory lives and kernels run), [`Layer`] (a node of a net), [`Updater`]
//! (how gradients change parameters) and [`Transport`] (how workers and servers talk).
//!
//! The traits are declared with `abi_stable`'s `#[sabi_trait]`, so a layer or updater compiled
//! into a separate shared library (a plugin) works with the host exactly like a built-in one.
//! This crate has no kernels, no I/O and no backend.
//!
//! A tour: a device allocates tensors; [`DeviceRef`]'s methods (in [`ops`]) run checked
//! operations on them; a layer holds [`Param`]s and implements `setup`, `forward` and
//! `backward` with those operations.

#![warn(missing_docs)]
// `#[sabi_trait]` expands to impls inside a const block, which this lint flags; nothing to fix here.
#![allow(non_local_definitions)]

pub mod device;
pub mod dtype;
pub mod error;
pub mod fields;
pub mod layer;
pub mod ops;
pub mod param;
pub mod park;
pub mod plugin;
pub mod rng;
pub mod shape;
pub mod tensor;
pub mod transport;
pub mod updater;

pub use device::{
    AdaptiveArgs, AdaptiveRule, BatchNormArgs, BinaryOp, BufHandle, BufView, ConvShape, Device,
    DeviceInfo, DeviceRef, Dims3, Distribution, DynDevice, GemmArgs, GemmLayout, LrnShape,
    PoolKind, PoolShape, ReduceOp, SgdArgs, UnaryOp,
};
pub use dtype::{bf16_bits, DType, Element, Precision};
pub use error::{catch_panic, Error, Result, ResultExt};
pub use fields::{validate_fields, FieldError, FieldKind, FieldSpec, FieldValue, Fields};
pub use layer::{
    downcast_layer, downcast_layer_mut, layer_box, layer_type, param_factory, Layer, LayerBox,
    LayerDef, LayerExample, LayerRole, LayerType, ParamFactory, ParamFactoryMut, Phase,
    SetupContext, TensorSpec,
};
pub use param::{Init, Param, ParamSpec};
pub use plugin::INTERFACE_VERSION;
pub use shape::{Shape, MAX_DIMS};
pub use tensor::{Access, Tensor};
pub use transport::{Addr, Msg, MsgKind, Role, Transport};
pub use updater::{
    updater_box, updater_type, UpdateArgs, Updater, UpdaterBox, UpdaterDef, UpdaterType,
};

/// Re-exports of the `abi_stable` types that appear in the traits' signatures, so that layer
/// and device authors need no direct dependency on `abi_stable`.
pub mod abi {
    pub use crate::device::Device_TO;
    pub use crate::layer::{Layer_TO, ParamFactory_TO};
    pub use crate::transport::Transport_TO;
    pub use crate::updater::Updater_TO;
    pub use abi_stable::sabi_trait::TD_Opaque;
    pub use abi_stable::sabi_types::RMut;
    pub use abi_stable::std_types::{
        RBox, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec, Tuple2,
    };
    pub use abi_stable::StableAbi;
}
