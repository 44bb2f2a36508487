//! Connection layers: they move features between layers without computing on them (concat,
//! slice, split) or give them another shape (flatten, reshape).
//!
//! Concatenation and slicing along any axis are column copies: seen as a matrix
//! `[before axis, axis × after axis]`, each part is a block of columns of the whole.

use crate::operator::{Describe, Operator};
use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    DeviceRef, Error, FieldKind, FieldSpec, FieldValue, Fields, Layer, LayerDef, ParamFactoryMut,
    Phase, Result, SetupContext, Shape, Tensor, TensorSpec,
};

fn context(ctx: &SetupContext<'_>) -> String {
    format!("layer {}", ctx.layer)
}

fn not_set_up(ty: &str) -> Error {
    Error::invalid(format!("{ty} used before setup"))
}

/// Checks `axis` against `shape`: it must name one of its dimensions.
fn check_axis(ctx: &SetupContext<'_>, axis: usize, shape: Shape) -> Result<()> {
    if axis >= shape.rank() {
        return Err(Error::shape(
            context(ctx),
            format!("axis {axis} does not exist in an input of shape {shape}"),
        ));
    }
    Ok(())
}

/// `(before, after)`: the products of the dimensions before and after `axis`.
fn around(shape: Shape, axis: usize) -> (usize, usize) {
    let d = shape.dims();
    (d[..axis].iter().product(), d[axis + 1..].iter().product())
}

/// `t` seen as the matrix `[rows, numel / rows]`.
fn as_rows(t: &Tensor, rows: usize) -> Result<Tensor> {
    t.reshape([rows, t.numel().checked_div(rows).unwrap_or(0)])
}

/// Where each part lies along the axis: its start and extent, in elements of the matrix view.
#[derive(Clone, Debug)]
struct Blocks {
    rows: usize,
    /// (first column, columns) of every part.
    parts: Vec<(usize, usize)>,
}

impl Blocks {
    fn new(rows: usize, inner: usize, extents: impl IntoIterator<Item = usize>) -> Blocks {
        let mut start = 0;
        let parts = extents
            .into_iter()
            .map(|e| {
                let part = (start * inner, e * inner);
                start += e;
                part
            })
            .collect();
        Blocks { rows, parts }
    }

    /// Copies every part into its columns of `whole`.
    fn gather<'t>(
        &self,
        dev: &DeviceRef,
        parts: impl IntoIterator<Item = &'t Tensor>,
        whole: &mut Tensor,
    ) -> Result<()> {
        let mut w = as_rows(whole, self.rows)?;
        for (p, &(col, cols)) in parts.into_iter().zip(&self.parts) {
            dev.copy_columns(&as_rows(p, self.rows)?, 0, &mut w, col, cols)?;
        }
        Ok(())
    }

    /// Copies part `i`'s columns of `whole` into `part`.
    fn scatter_one(
        &self,
        dev: &DeviceRef,
        whole: &Tensor,
        i: usize,
        part: &mut Tensor,
    ) -> Result<()> {
        let (col, cols) = self.parts[i];
        let mut p = as_rows(part, self.rows)?;
        dev.copy_columns(&as_rows(whole, self.rows)?, col, &mut p, 0, cols)
    }
}

/// Concatenates its sources along `axis` (SINGA's `Concate`); all other dimensions must agree.
pub struct Concat {
    axis: usize,
    state: Option<(DeviceRef, Blocks)>,
}

impl LayerDef for Concat {
    const TYPE: &'static str = "concat";
    const DOC: &'static str = "Concatenates its sources along `axis` (1: features or channels; 0: the batch). All other dimensions must agree.";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new("axis", FieldKind::Int, "the dimension to join along").default(1)]
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(Concat {
            axis: f.usize("axis")?,
            state: None,
        })
    }
}

impl Concat {
    fn setup_impl(&mut self, ctx: &SetupContext<'_>) -> Result<RVec<TensorSpec>> {
        let inputs = ctx.inputs.as_slice();
        let first = inputs
            .first()
            .ok_or_else(|| Error::shape(context(ctx), "expected at least 1 source layer, got 0"))?;
        check_axis(ctx, self.axis, first.shape)?;
        let mut dims = first.shape.dims().to_vec();
        dims[self.axis] = 0;
        for x in inputs {
            let d = x.shape.dims();
            let fits = d.len() == dims.len()
                && d.iter()
                    .zip(&dims)
                    .enumerate()
                    .all(|(i, (a, b))| i == self.axis || a == b);
            if !fits || x.dtype != first.dtype {
                let all: Vec<String> = inputs
                    .iter()
                    .map(|x| format!("{} {}", x.shape, x.dtype))
                    .collect();
                return Err(Error::shape(
                    context(ctx),
                    format!("cannot concatenate along axis {} sources of shapes {}: all other dimensions and the dtypes must agree", self.axis, all.join(", ")),
                ));
            }
            dims[self.axis] += d[self.axis];
        }
        let (rows, inner) = around(first.shape, self.axis);
        self.state = Some((
            ctx.device.clone(),
            Blocks::new(rows, inner, inputs.iter().map(|x| x.shape.dim(self.axis))),
        ));
        Ok(vec![TensorSpec::new("output", Shape::new(&dims)?, first.dtype)].into())
    }
}

impl Describe for Concat {
    fn operator(&self) -> Option<Operator> {
        self.state.as_ref()?;
        Some(Operator::Concat { axis: self.axis })
    }
}

impl Layer for Concat {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        self.setup_impl(ctx).into()
    }

    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let (dev, blocks) = self.state.as_ref().ok_or_else(|| not_set_up(Self::TYPE))?;
            blocks.gather(dev, inputs.iter(), &mut outputs[0])
        })()
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
            let (dev, blocks) = self.state.as_ref().ok_or_else(|| not_set_up(Self::TYPE))?;
            for (i, dx) in grad_inputs.iter_mut().enumerate() {
                if let ROption::RSome(dx) = dx {
                    blocks.scatter_one(dev, &grad_outputs[0], i, dx)?;
                }
            }
            Ok(())
        })()
        .into()
    }
}

/// Cuts its source along `axis` into parts (SINGA's `Slice`): `num_slices` equal parts, or
/// parts ending at `slice_points` (Caffe). The outputs are named `0`, `1`, ... (`"slice:1"`).
pub struct Slice {
    axis: usize,
    num_slices: Option<usize>,
    points: Option<Vec<usize>>,
    state: Option<(DeviceRef, Blocks)>,
}

impl LayerDef for Slice {
    const TYPE: &'static str = "slice";
    const DOC: &'static str = "Cuts its source along `axis` into num_slices equal parts, or at slice_points. Outputs are named 0, 1, ... (read them as \"layer:0\").";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("axis", FieldKind::Int, "the dimension to cut").default(1),
            FieldSpec::new(
                "num_slices",
                FieldKind::Int,
                "number of equal parts (or give slice_points)",
            ),
            FieldSpec::new(
                "slice_points",
                FieldKind::List,
                "where parts start, after the first: [2, 5] cuts 0..2, 2..5, 5..end",
            ),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let num_slices = f.opt_i64("num_slices")?;
        let points = match f.opt_list("slice_points")? {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|v| match v {
                        FieldValue::Int(i) if *i > 0 => Ok(*i as usize),
                        other => Err(Error::invalid(format!(
                            "slice_points must be positive integers, got {other}"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let num_slices = match (num_slices, &points) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid("give num_slices or slice_points, not both"))
            }
            (None, None) => return Err(Error::invalid("num_slices or slice_points is required")),
            (Some(n), None) if n < 1 => {
                return Err(Error::invalid(format!(
                    "num_slices must be at least 1, got {n}"
                )))
            }
            (n, _) => n.map(|n| n as usize),
        };
        if let Some(p) = &points {
            if p.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::invalid(format!(
                    "slice_points must increase, got {p:?}"
                )));
            }
        }
        Ok(Slice {
            axis: f.usize("axis")?,
            num_slices,
            points,
            state: None,
        })
    }
}

impl Slice {
    fn setup_impl(&mut self, ctx: &SetupContext<'_>) -> Result<RVec<TensorSpec>> {
        let x = ctx.single_input()?;
        check_axis(ctx, self.axis, x.shape)?;
        let len = x.shape.dim(self.axis);
        let extents: Vec<usize> = match (&self.points, self.num_slices) {
            (Some(points), _) => {
                if points.last().is_some_and(|&p| p >= len) {
                    return Err(Error::shape(
                        context(ctx),
                        format!(
                            "slice_points {points:?} must lie inside axis {} of {} (length {len})",
                            self.axis, x.shape
                        ),
                    ));
                }
                let mut bounds = vec![0];
                bounds.extend(points);
                bounds.push(len);
                bounds.windows(2).map(|w| w[1] - w[0]).collect()
            }
            (None, Some(n)) => {
                if !len.is_multiple_of(n) {
                    return Err(Error::shape(
                        context(ctx),
                        format!(
                            "axis {} of {} (length {len}) does not split into {n} equal parts",
                            self.axis, x.shape
                        ),
                    ));
                }
                vec![len / n; n]
            }
            (None, None) => unreachable!("checked in new"),
        };
        let (rows, inner) = around(x.shape, self.axis);
        let specs = extents
            .iter()
            .enumerate()
            .map(|(i, &e)| {
                let mut dims = x.shape.dims().to_vec();
                dims[self.axis] = e;
                Ok(TensorSpec::new(&i.to_string(), Shape::new(&dims)?, x.dtype))
            })
            .collect::<Result<Vec<_>>>()?;
        self.state = Some((ctx.device.clone(), Blocks::new(rows, inner, extents)));
        Ok(specs.into())
    }
}

impl Describe for Slice {
    fn operator(&self) -> Option<Operator> {
        self.state.as_ref()?;
        Some(Operator::Slice { axis: self.axis })
    }
}

impl Layer for Slice {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        self.setup_impl(ctx).into()
    }

    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let (dev, blocks) = self.state.as_ref().ok_or_else(|| not_set_up(Self::TYPE))?;
            for (i, y) in outputs.iter_mut().enumerate() {
                blocks.scatter_one(dev, &inputs[0], i, y)?;
            }
            Ok(())
        })()
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
            let (dev, blocks) = self.state.as_ref().ok_or_else(|| not_set_up(Self::TYPE))?;
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                blocks.gather(dev, grad_outputs.iter(), dx)?;
            }
            Ok(())
        })()
        .into()
    }
}

/// Copies its source to `num_splits` outputs named `0`, `1`, ... (SINGA's `Split`); the
/// gradient is the sum of theirs. (The runtime already sums the gradients of an output read by
/// several layers; this layer makes the fan-out explicit, as in SINGA's job files.)
pub struct Split {
    splits: usize,
    dev: Option<DeviceRef>,
}

impl LayerDef for Split {
    const TYPE: &'static str = "split";
    const DOC: &'static str =
        "Copies its source to num_splits outputs named 0, 1, ...; backward sums their gradients.";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new("num_splits", FieldKind::Int, "number of copies").default(2)]
    }

    fn new(f: &Fields) -> Result<Self> {
        let splits = f.usize("num_splits")?;
        if splits == 0 {
            return Err(Error::invalid("num_splits must be at least 1"));
        }
        Ok(Split { splits, dev: None })
    }
}

impl Describe for Split {
    fn operator(&self) -> Option<Operator> {
        self.dev.as_ref()?;
        Some(Operator::Identity)
    }
}

impl Layer for Split {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let x = ctx.single_input()?;
            self.dev = Some(ctx.device.clone());
            Ok((0..self.splits)
                .map(|i| TensorSpec::new(&i.to_string(), x.shape, x.dtype))
                .collect::<Vec<_>>()
                .into())
        })()
        .into()
    }

    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let dev = self.dev.as_ref().ok_or_else(|| not_set_up(Self::TYPE))?;
            outputs.iter_mut().try_for_each(|y| dev.copy(&inputs[0], y))
        })()
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
            let dev = self.dev.as_ref().ok_or_else(|| not_set_up(Self::TYPE))?;
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                dev.copy(&grad_outputs[0], dx)?;
                for dy in &grad_outputs[1..] {
                    dev.axpby(1.0, dy, 1.0, dx)?;
                }
            }
            Ok(())
        })()
        .into()
    }
}

/// How a shape-only layer ([`Reshaping`]) gets its output shape from its input's.
pub trait ShapeRule: Send + Sync + Sized + 'static {
    /// The layer type's name in job files.
    const TYPE: &'static str;
    /// One paragraph of help.
    const DOC: &'static str;
    /// The fields the rule takes.
    fn fields() -> Vec<FieldSpec>;
    /// The rule, from its validated fields.
    fn new(f: &Fields) -> Result<Self>;
    /// The output shape for an input of shape `source`.
    fn target(&self, ctx: &SetupContext<'_>, source: Shape) -> Result<Shape>;
}

/// A layer whose output is its input with another shape (the rule `R` says which): the
/// elements are copied unchanged, and so are the gradients.
pub struct Reshaping<R> {
    rule: R,
    dev: Option<DeviceRef>,
}

/// Flattens the dimensions from `axis` to `end_axis` (default: the last) into one: `[n, c, h, w]`
/// becomes `[n, c·h·w]`.
pub type Flatten = Reshaping<FlattenRule>;

/// Gives its source a new shape of the same size (Caffe's `Reshape`): in `shape`, 0 keeps the
/// source's dimension at that place and -1 (at most once) takes what is left.
pub type Reshape = Reshaping<ReshapeRule>;

impl<R: ShapeRule> LayerDef for Reshaping<R> {
    const TYPE: &'static str = R::TYPE;
    const DOC: &'static str = R::DOC;

    fn fields() -> Vec<FieldSpec> {
        R::fields()
    }

    fn new(f: &Fields) -> Result<Self> {
        Ok(Reshaping {
            rule: R::new(f)?,
            dev: None,
        })
    }
}

impl<R: ShapeRule> Reshaping<R> {
    fn dev(&self) -> Result<&DeviceRef> {
        self.dev.as_ref().ok_or_else(|| not_set_up(R::TYPE))
    }
}

impl<R: ShapeRule> Describe for Reshaping<R> {
    fn operator(&self) -> Option<Operator> {
        self.dev.as_ref()?;
        Some(Operator::Reshape)
    }
}

impl<R: ShapeRule> Layer for Reshaping<R> {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| {
            let x = ctx.single_input()?;
            let shape = self.rule.target(ctx, x.shape)?;
            self.dev = Some(ctx.device.clone());
            Ok(vec![TensorSpec::new("output", shape, x.dtype)].into())
        })()
        .into()
    }

    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| self.dev()?.copy(&inputs[0], &mut outputs[0]))().into()
    }

    fn backward(
        &mut self,
        _: Phase,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| match &mut grad_inputs[0] {
            ROption::RSome(dx) => self.dev()?.copy(&grad_outputs[0], dx),
            ROption::RNone => Ok(()),
        })()
        .into()
    }
}

/// The rule of [`Flatten`].
pub struct FlattenRule {
    axis: usize,
    /// The last dimension to flatten; `None`: the last of the source.
    end_axis: Option<usize>,
}

impl ShapeRule for FlattenRule {
    const TYPE: &'static str = "flatten";
    const DOC: &'static str =
        "Flattens the dimensions from `axis` to `end_axis` (default: the last): [n, c, h, w] becomes [n, c·h·w] (axis 1); a sequence [batch, time, features] becomes [batch·time, features] with axis 0, end_axis 1.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("axis", FieldKind::Int, "the first dimension to flatten").default(1),
            FieldSpec::new(
                "end_axis",
                FieldKind::Int,
                "the last dimension to flatten (-1: the last one)",
            )
            .default(-1),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let end_axis = match f.i64("end_axis")? {
            -1 => None,
            e if e >= 0 => Some(e as usize),
            e => {
                return Err(Error::invalid(format!(
                    "end_axis must be -1 (the last dimension) or a dimension, got {e}"
                )))
            }
        };
        Ok(FlattenRule {
            axis: f.usize("axis")?,
            end_axis,
        })
    }

    fn target(&self, ctx: &SetupContext<'_>, source: Shape) -> Result<Shape> {
        check_axis(ctx, self.axis, source)?;
        let d = source.dims();
        let end = self.end_axis.unwrap_or(d.len() - 1);
        if end < self.axis || end >= d.len() {
            return Err(Error::shape(
                format!("layer {}", ctx.layer),
                format!(
                    "end_axis {end} must lie between axis {} and the last dimension of {source}",
                    self.axis
                ),
            ));
        }
        let mut dims = d[..self.axis].to_vec();
        dims.push(d[self.axis..=end].iter().product());
        dims.extend_from_slice(&d[end + 1..]);
        Shape::new(&dims)
    }
}

/// The rule of [`Reshape`].
pub struct ReshapeRule {
    shape: Vec<i64>,
}

impl ShapeRule for ReshapeRule {
    const TYPE: &'static str = "reshape";
    const DOC: &'static str = "Gives its source a new shape of the same size: `shape = [0, -1]` keeps the batch (0 copies a dimension) and infers the rest (-1).";

    fn fields() -> Vec<FieldSpec> {
        vec![FieldSpec::new(
            "shape",
            FieldKind::List,
            "the new dimensions; 0 copies the source's, -1 is inferred",
        )
        .required()]
    }

    fn new(f: &Fields) -> Result<Self> {
        let list = f.opt_list("shape")?.unwrap_or(&[]);
        let shape = list
            .iter()
            .map(|v| match v {
                FieldValue::Int(i) if *i >= -1 => Ok(*i),
                other => Err(Error::invalid(format!(
                    "shape holds dimensions, 0 or -1; got {other}"
                ))),
            })
            .collect::<Result<Vec<i64>>>()?;
        if shape.is_empty() || shape.iter().filter(|&&d| d == -1).count() > 1 {
            return Err(Error::invalid(format!(
                "shape must list at least one dimension and at most one -1, got {shape:?}"
            )));
        }
        Ok(ReshapeRule { shape })
    }

    fn target(&self, ctx: &SetupContext<'_>, source: Shape) -> Result<Shape> {
        let problem = |why: &str| {
            Error::shape(
                context(ctx),
                format!("cannot reshape {source} to {:?}: {why}", self.shape),
            )
        };
        let mut dims = Vec::with_capacity(self.shape.len());
        for (i, &d) in self.shape.iter().enumerate() {
            dims.push(match d {
                0 if i < source.rank() => source.dim(i),
                0 => return Err(problem("0 copies a dimension the source does not have")),
                d => d.max(0) as usize,
            });
        }
        if let Some(free) = self.shape.iter().position(|&d| d == -1) {
            let known: usize = dims
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != free)
                .map(|(_, d)| *d)
                .product();
            if known == 0 || !source.numel().is_multiple_of(known) {
                return Err(problem("no whole number fits the -1"));
            }
            dims[free] = source.numel() / known;
        }
        let shape = Shape::new(&dims).map_err(|e| problem(&e.to_string()))?;
        if shape.numel() != source.numel() {
            return Err(problem("the sizes differ"));
        }
        Ok(shape)
    }
}
