//! The `Layer` trait: a node of a net that computes features forward and gradients backward.
//!
//! A layer's life: it is constructed from its validated [`Fields`]; `setup` sees
//! its inputs' shapes, creates its parameters through a [`ParamFactory`], allocates whatever
//! buffers it keeps, and declares its outputs; then `forward` and `backward` run once per step
//! on tensors the net allocated once. Nothing in that loop needs to allocate.
//!
//! The trait is ABI-stable so that layers can come from plugins; built-in layers implement it
//! the same way. Wrap an implementation with [`layer_box`], which turns panics into errors.

use crate::device::DeviceRef;
use crate::dtype::DType;
use crate::error::{catch_panic, Error, Guarded, Result};
use crate::fields::{FieldSpec, Fields};
use crate::param::{Param, ParamSpec};
use crate::shape::Shape;
use crate::tensor::Tensor;
use abi_stable::sabi_trait;
use abi_stable::sabi_trait::{TD_CanDowncast, TD_Opaque};
use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec};
use abi_stable::StableAbi;
use std::fmt;

/// Which pass a layer runs in, as SINGA's bit flags: the net's phase (`TRAIN`, `VAL`, `TEST`)
/// combined with the algorithm's sub-phase (`POSITIVE`/`NEGATIVE` for contrastive divergence).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Phase(u32);

impl Phase {
    /// Training.
    pub const TRAIN: Phase = Phase(1);
    /// Validation.
    pub const VAL: Phase = Phase(2);
    /// Testing.
    pub const TEST: Phase = Phase(4);
    /// The positive (data-driven) phase of contrastive divergence.
    pub const POSITIVE: Phase = Phase(8);
    /// The negative (model-driven) phase of contrastive divergence.
    pub const NEGATIVE: Phase = Phase(16);

    /// Whether every flag of `other` is set in `self`.
    pub fn contains(self, other: Phase) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the pass trains (gradients will follow).
    pub fn is_train(self) -> bool {
        self.contains(Phase::TRAIN)
    }

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for Phase {
    type Output = Phase;
    fn bitor(self, rhs: Phase) -> Phase {
        Phase(self.0 | rhs.0)
    }
}

impl fmt::Debug for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Phase::TRAIN, "train"),
            (Phase::VAL, "val"),
            (Phase::TEST, "test"),
            (Phase::POSITIVE, "positive"),
            (Phase::NEGATIVE, "negative"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(p, _)| self.contains(*p))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "Phase({})", set.join("|"))
    }
}

/// The name, shape and dtype of one of a layer's inputs or outputs.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// The output's name (`data`, `label`, ...); the first output of a layer is what
    /// `srclayers = ["layer"]` refers to, others are `"layer:name"`.
    pub name: RString,
    /// The shape, batch dimension first.
    pub shape: Shape,
    /// The element type.
    pub dtype: DType,
}

impl TensorSpec {
    /// A spec.
    pub fn new(name: &str, shape: impl Into<Shape>, dtype: DType) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.into(),
            dtype,
        }
    }
}

/// What a layer learns about its place in the net during setup.
#[repr(C)]
#[derive(StableAbi)]
pub struct SetupContext<'a> {
    /// The layer's name.
    pub layer: RStr<'a>,
    /// The device it runs on.
    pub device: &'a DeviceRef,
    /// Its inputs, in `srclayers` order.
    pub inputs: RSlice<'a, TensorSpec>,
    /// The phase of the net being built (`TRAIN`, `TEST`, ...).
    pub phase: Phase,
    /// The directory relative paths in the layer's fields are resolved against (the job
    /// file's directory).
    pub base_dir: RStr<'a>,
    /// A seed for the layer's own randomness (dropout masks, data order), derived from the
    /// job's seed and the layer's name.
    pub seed: u64,
    /// Which part of the layer this instance computes when the layer is partitioned over the
    /// workers of a group (SINGA's `partition_id`): `0` when it is not.
    pub partition_id: u32,
    /// How many parts the layer is split into (`1`: not partitioned). An input layer reads
    /// part `partition_id` of every batch: `batch_size / num_partitions` records.
    pub num_partitions: u32,
}

impl SetupContext<'_> {
    /// The only input, or an error naming the layer if it has another number of inputs.
    pub fn single_input(&self) -> crate::Result<&TensorSpec> {
        self.expect_inputs(1).map(|i| &i[0])
    }

    /// All inputs, or an error naming the layer if there are not exactly `n`.
    pub fn expect_inputs(&self, n: usize) -> crate::Result<&[TensorSpec]> {
        if self.inputs.len() != n {
            return Err(Error::shape(
                format!("layer {}", self.layer),
                format!(
                    "expected {n} source layer{}, got {}",
                    if n == 1 { "" } else { "s" },
                    self.inputs.len()
                ),
            ));
        }
        Ok(self.inputs.as_slice())
    }
}

/// Creates parameters for a layer during setup. The runtime implements it: it allocates the
/// value and gradient, applies the init the job file asks for (or the layer's default), and
/// makes shared parameters (`share_from`) point at the same values.
#[sabi_trait]
pub trait ParamFactory {
    /// Creates (or, for a shared parameter, looks up) the parameter `spec` describes.
    fn param(&mut self, spec: ParamSpec) -> RResult<Param, Error>;
}

/// The factory argument of [`Layer::setup`].
pub type ParamFactoryMut<'a> = ParamFactory_TO<'a, RMut<'a, ()>>;

/// Erases a factory into the argument [`Layer::setup`] takes.
pub fn param_factory<P: ParamFactory>(factory: &mut P) -> ParamFactoryMut<'_> {
    ParamFactory_TO::from_ptr(factory, TD_Opaque)
}

/// A node of a net: computes features forward and gradients backward (SINGA's layer abstraction).
///
/// Methods are added only at the end (ABI rule of `#[sabi_trait]`); all return `RResult` so
/// that a wrapper can turn any panic into an error.
#[sabi_trait]
pub trait Layer: Send {
    /// Validates the input shapes, creates parameters and buffers, and returns the outputs.
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error>;

    /// Computes the outputs from the inputs (SINGA's `ComputeFeature`).
    fn forward(
        &mut self,
        phase: Phase,
        inputs: RSlice<'_, Tensor>,
        outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error>;

    /// Computes parameter gradients and, for each input whose slot is `Some`, the gradient
    /// w.r.t. that input (SINGA's `ComputeGradient`). `grad_outputs` is empty for a loss layer.
    /// It overwrites `param.grad` of its trainable parameters and the input gradients: they
    /// hold the last step's values, and the runtime never zeroes them.
    fn backward(
        &mut self,
        phase: Phase,
        inputs: RSlice<'_, Tensor>,
        outputs: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error>;

    /// The names of the metrics the layer reports (a loss layer: `loss`, `accuracy`).
    fn metric_names(&self) -> RResult<RVec<RString>, Error> {
        RResult::ROk(RVec::new())
    }

    /// Writes the metrics averaged since the last call into `out` (one per name) and resets
    /// them. Called at display and test time, not every step.
    fn read_metrics(&mut self, _out: RSliceMut<'_, f64>) -> RResult<(), Error> {
        RResult::ROk(())
    }

    /// State other than parameters to keep in checkpoints (a data layer's position).
    fn state(&self) -> RResult<RVec<u64>, Error> {
        RResult::ROk(RVec::new())
    }

    /// Restores what [`Layer::state`] returned.
    fn restore_state(&mut self, _state: RSlice<'_, u64>) -> RResult<(), Error> {
        RResult::ROk(())
    }
}

/// An owned, type-erased layer.
pub type LayerBox = Layer_TO<'static, RBox<()>>;

/// Boxes a layer behind the ABI-stable trait object, catching panics in every method.
pub fn layer_box<L: Layer + 'static>(type_name: &str, layer: L) -> LayerBox {
    Layer_TO::from_value(
        Guarded::new(format!("layer type {type_name}"), layer),
        TD_CanDowncast,
    )
}

/// The layer of type `L` inside `layer`, if `layer` is one, boxed by [`layer_box`] in this
/// binary. This is how a crate reaches optional capabilities of its own layer types that are
/// not part of the plugin interface; a layer from a plugin library is never an `L` of the
/// host (abi_stable's type ids tell the libraries apart), so it has none of them.
pub fn downcast_layer_mut<L: Layer + 'static>(layer: &mut LayerBox) -> Option<&mut L> {
    let guarded = layer.obj.downcast_as_mut::<Guarded<L>>().ok()?;
    Some(&mut guarded.inner)
}

/// The layer of type `L` inside `layer`, read-only: see [`downcast_layer_mut`].
pub fn downcast_layer<L: Layer + 'static>(layer: &LayerBox) -> Option<&L> {
    let guarded = layer.obj.downcast_as::<Guarded<L>>().ok()?;
    Some(&guarded.inner)
}

impl<L: Layer> Layer for Guarded<L> {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        let inner = &mut self.inner;
        catch_panic(&self.what, || inner.setup(ctx, params).into_result()).into()
    }

    fn forward(
        &mut self,
        phase: Phase,
        inputs: RSlice<'_, Tensor>,
        outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        let inner = &mut self.inner;
        catch_panic(&self.what, || {
            inner.forward(phase, inputs, outputs).into_result()
        })
        .into()
    }

    fn backward(
        &mut self,
        phase: Phase,
        inputs: RSlice<'_, Tensor>,
        outputs: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        let inner = &mut self.inner;
        catch_panic(&self.what, || {
            inner
                .backward(phase, inputs, outputs, grad_outputs, grad_inputs)
                .into_result()
        })
        .into()
    }

    fn metric_names(&self) -> RResult<RVec<RString>, Error> {
        catch_panic(&self.what, || self.inner.metric_names().into_result()).into()
    }

    fn read_metrics(&mut self, out: RSliceMut<'_, f64>) -> RResult<(), Error> {
        let inner = &mut self.inner;
        catch_panic(&self.what, || inner.read_metrics(out).into_result()).into()
    }

    fn state(&self) -> RResult<RVec<u64>, Error> {
        catch_panic(&self.what, || self.inner.state().into_result()).into()
    }

    fn restore_state(&mut self, state: RSlice<'_, u64>) -> RResult<(), Error> {
        let inner = &mut self.inner;
        catch_panic(&self.what, || inner.restore_state(state).into_result()).into()
    }
}

/// What a training algorithm must know of a layer type beyond the [`Layer`] trait (SINGA's
/// layer categories): the two halves of an RBM, which contrastive divergence pairs and runs
/// through its phases. A plugin's layers can take these roles as built-in ones do.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerRole {
    /// Any other layer.
    #[default]
    Plain,
    /// The visible units of an RBM: reads the data and the RBM's hidden layer.
    RbmVisible,
    /// The hidden units of an RBM: reads the RBM's visible layer.
    RbmHidden,
}

/// A layer type as the registry knows it: name, help, fields and constructor. ABI-stable, so a
/// plugin hands its layer types to the host in this form.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct LayerType {
    /// The `type` a job file names.
    pub name: RString,
    /// One paragraph of help.
    pub doc: RString,
    /// Its role in training algorithms.
    pub role: LayerRole,
    /// The layer's own fields (besides the common ones every layer has).
    pub fields: RVec<FieldSpec>,
    /// Builds a layer from validated fields.
    pub create: extern "C" fn(&Fields) -> RResult<LayerBox, Error>,
    /// Configurations to check the layer with (`singa plugin check`): fields and inputs.
    pub examples: RVec<LayerExample>,
}

/// One configuration a layer can be checked with: its fields and the inputs it takes.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct LayerExample {
    /// The layer's fields (validated against its schema before use).
    pub fields: Fields,
    /// The inputs' specs, batch dimension first; `i32` inputs are labels.
    pub inputs: RVec<TensorSpec>,
}

impl LayerExample {
    /// An example with these fields and inputs.
    pub fn new(fields: Fields, inputs: Vec<TensorSpec>) -> LayerExample {
        LayerExample {
            fields,
            inputs: inputs.into(),
        }
    }
}

impl fmt::Debug for LayerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LayerType({})", self.name)
    }
}

/// What a layer implementation declares to become a [`LayerType`] (see [`layer_type`]).
pub trait LayerDef: Layer + Sized + 'static {
    /// The type name in job files, e.g. `inner_product`.
    const TYPE: &'static str;
    /// One paragraph of help.
    const DOC: &'static str;
    /// Its role in training algorithms (most layers have none).
    const ROLE: LayerRole = LayerRole::Plain;
    /// The fields the layer takes.
    fn fields() -> Vec<FieldSpec>;
    /// Builds the layer from its validated fields.
    fn new(fields: &Fields) -> Result<Self>;
    /// Configurations `singa plugin check` (and any other checker) exercises the layer with;
    /// without any, a checker falls back to a 2-d `f32` input and the default fields.
    fn examples() -> Vec<LayerExample> {
        Vec::new()
    }
}

/// The registry entry of a [`LayerDef`].
pub fn layer_type<L: LayerDef>() -> LayerType {
    LayerType {
        name: L::TYPE.into(),
        doc: L::DOC.into(),
        role: L::ROLE,
        fields: L::fields().into(),
        create: create_layer::<L>,
        examples: L::examples().into(),
    }
}

extern "C" fn create_layer<L: LayerDef>(fields: &Fields) -> RResult<LayerBox, Error> {
    catch_panic(format_args!("layer type {}", L::TYPE), || {
        Ok(layer_box(L::TYPE, L::new(fields)?))
    })
    .into()
}
