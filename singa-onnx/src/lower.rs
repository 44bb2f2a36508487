//! One layer's computation as ONNX nodes.

use crate::graph::{float, int, ints, Graph};
use singa_core::{Error, PoolKind, PoolShape, Result, TensorSpec, UnaryOp};
use singa_layers::operator::Operator;

/// A layer being written: its name, its inputs and outputs as graph values, its parameters.
pub(crate) struct Layer<'a> {
    /// The layer's name (its nodes are named after it).
    pub name: &'a str,
    /// The values it reads, with their specs.
    pub inputs: Vec<(String, TensorSpec)>,
    /// The values it writes (named by the caller), with their specs.
    pub outputs: Vec<(String, TensorSpec)>,
    /// The initialisers of its parameters, in the order the layer created them.
    pub params: Vec<String>,
    /// Whether the batch is a free dimension of the model.
    pub free_batch: bool,
}

impl Layer<'_> {
    fn input(&self) -> &str {
        &self.inputs[0].0
    }

    fn output(&self) -> &str {
        &self.outputs[0].0
    }

    fn refuse(&self, why: String) -> Error {
        Error::invalid(format!("layer {} has no exact ONNX form: {why}", self.name))
    }

    /// `value` (of `spec`) seen as `[batch, features]`: a Flatten node when it has more
    /// dimensions.
    fn as_matrix(&self, g: &mut Graph, value: &str, spec: &TensorSpec) -> String {
        if spec.shape.rank() <= 2 {
            value.to_string()
        } else {
            g.step(
                "Flatten",
                &format!("{}_flat", self.name),
                &[value],
                vec![int("axis", 1)],
            )
        }
    }

    /// The target of a Reshape to `spec`: its dimensions, with the batch inferred when free.
    fn shape_of(&self, spec: &TensorSpec) -> Vec<i64> {
        let mut dims: Vec<i64> = spec.shape.dims().iter().map(|&d| d as i64).collect();
        if self.free_batch && !dims.is_empty() {
            dims[0] = -1;
        }
        dims
    }
}

/// Writes the nodes of `op` (anything but inputs, losses and metrics, which the caller
/// handles: they are graph inputs and outputs rather than nodes).
pub(crate) fn lower(g: &mut Graph, op: &Operator, l: &Layer<'_>) -> Result<()> {
    let params: Vec<&str> = l.params.iter().map(String::as_str).collect();
    match op {
        Operator::Identity => {
            for (k, (out, _)) in l.outputs.iter().enumerate() {
                g.node(
                    "Identity",
                    &format!("{}_{k}", l.name),
                    &[l.input()],
                    &[out],
                    vec![],
                );
            }
        }
        Operator::InnerProduct {
            transposed,
            bias,
            axis,
        } => {
            if *axis != 1 {
                return Err(Error::invalid(format!(
                    "layer {}: an inner_product over axis {axis} (a sequence's steps) has no \
                     ONNX form in singa yet; only axis = 1",
                    l.name
                )));
            }
            let x = l.as_matrix(g, l.input(), &l.inputs[0].1);
            let mut inputs = vec![x.as_str(), params[0]];
            if *bias {
                inputs.push(params[1]);
            }
            let trans_b = vec![int("transB", *transposed as i64)];
            g.node("Gemm", l.name, &inputs, &[l.output()], trans_b);
        }
        Operator::Convolution { shape: s, bias } => {
            let mut inputs = vec![l.input(), params[0]];
            if *bias {
                inputs.push(params[1]);
            }
            let attributes = vec![
                ints("kernel_shape", &[s.kernel_h, s.kernel_w]),
                ints("strides", &[s.stride_h, s.stride_w]),
                ints("pads", &[s.pad_h, s.pad_w, s.pad_h, s.pad_w]),
                ints("dilations", &[1, 1]),
                int("group", s.groups as i64),
            ];
            g.node("Conv", l.name, &inputs, &[l.output()], attributes);
        }
        Operator::Pooling(s) => pooling(g, s, l)?,
        Operator::Lrn {
            size,
            alpha,
            beta,
            k,
        } => {
            let attributes = vec![
                int("size", *size as i64),
                float("alpha", *alpha),
                float("beta", *beta),
                float("bias", *k),
            ];
            g.node("LRN", l.name, &[l.input()], &[l.output()], attributes);
        }
        Operator::BatchNorm { eps } => {
            // gamma, beta, running mean, running var: ONNX's scale, B, input_mean, input_var.
            let inputs = [l.input(), params[0], params[1], params[2], params[3]];
            let attributes = vec![float("epsilon", *eps)];
            g.node(
                "BatchNormalization",
                l.name,
                &inputs,
                &[l.output()],
                attributes,
            );
        }
        Operator::Unary(u) => unary(g, *u, l)?,
        Operator::Softmax => {
            let spec = &l.inputs[0].1;
            if spec.shape.rank() <= 2 {
                let axis = vec![int("axis", 1)];
                g.node("Softmax", l.name, &[l.input()], &[l.output()], axis);
            } else {
                let x = l.as_matrix(g, l.input(), spec);
                let p = g.step("Softmax", l.name, &[&x], vec![int("axis", 1)]);
                let shape = g.int64s(&format!("{}_shape", l.name), &l.shape_of(spec));
                let name = format!("{}_reshape", l.name);
                g.node("Reshape", &name, &[&p, &shape], &[l.output()], vec![]);
            }
        }
        Operator::Concat { axis } => {
            let inputs: Vec<&str> = l.inputs.iter().map(|(v, _)| v.as_str()).collect();
            let axis = vec![int("axis", *axis as i64)];
            g.node("Concat", l.name, &inputs, &[l.output()], axis);
        }
        Operator::Slice { axis } => {
            let sizes: Vec<i64> = l
                .outputs
                .iter()
                .map(|(_, s)| s.shape.dims()[*axis] as i64)
                .collect();
            let split = g.int64s(&format!("{}_sizes", l.name), &sizes);
            let outputs: Vec<&str> = l.outputs.iter().map(|(v, _)| v.as_str()).collect();
            let axis = vec![int("axis", *axis as i64)];
            g.node("Split", l.name, &[l.input(), &split], &outputs, axis);
        }
        Operator::Reshape => {
            let shape = l.shape_of(&l.outputs[0].1);
            let shape = g.int64s(&format!("{}_shape", l.name), &shape);
            g.node(
                "Reshape",
                l.name,
                &[l.input(), &shape],
                &[l.output()],
                vec![],
            );
        }
        Operator::TopK { k } => {
            let x = l.as_matrix(g, l.input(), &l.inputs[0].1);
            let k = g.int64s(&format!("{}_k", l.name), &[*k as i64]);
            let values = g.fresh(&format!("{}_values", l.name));
            let indices = g.fresh(&format!("{}_indices", l.name));
            let attributes = vec![int("axis", -1), int("largest", 1), int("sorted", 1)];
            g.node("TopK", l.name, &[&x, &k], &[&values, &indices], attributes);
            let to = vec![int(
                "to",
                crate::graph::element_type(singa_core::DType::I32) as i64,
            )];
            let name = format!("{}_cast", l.name);
            g.node("Cast", &name, &[&indices], &[l.output()], to);
        }
        Operator::Input(_) | Operator::SoftmaxLoss | Operator::EuclideanLoss | Operator::Metric => {
            return Err(Error::invalid(format!(
                "layer {}: {op:?} is written by the exporter, not lowered",
                l.name
            )))
        }
    }
    Ok(())
}

/// Max or average pooling. Caffe's average divides by the window clipped to the padded input,
/// which is ONNX's `count_include_pad = 1` (checked against ONNX Runtime for windows that hang
/// over the edge). The output sizes must agree: where the last window would start in the
/// bottom or right padding, Caffe drops it and ONNX's shape rule does not.
fn pooling(g: &mut Graph, s: &PoolShape, l: &Layer<'_>) -> Result<()> {
    let onnx_size = |input: usize, k: usize, stride: usize, pad: usize| {
        let span = input + 2 * pad - k;
        let steps = if s.ceil {
            span.div_ceil(stride)
        } else {
            span / stride
        };
        steps + 1
    };
    let onnx = (
        onnx_size(s.height, s.kernel_h, s.stride_h, s.pad_h),
        onnx_size(s.width, s.kernel_w, s.stride_w, s.pad_w),
    );
    if onnx != (s.out_h(), s.out_w()) {
        return Err(l.refuse(format!(
            "its last window would start in the padding, which Caffe's rounding drops ({}x{} outputs) and ONNX's keeps ({}x{}); use pad = 0 or ceil = false",
            s.out_h(),
            s.out_w(),
            onnx.0,
            onnx.1
        )));
    }
    let mut attributes = vec![
        ints("kernel_shape", &[s.kernel_h, s.kernel_w]),
        ints("strides", &[s.stride_h, s.stride_w]),
        ints("pads", &[s.pad_h, s.pad_w, s.pad_h, s.pad_w]),
        int("ceil_mode", s.ceil as i64),
    ];
    let op = match s.kind {
        PoolKind::Max => "MaxPool",
        PoolKind::Avg => {
            attributes.push(int("count_include_pad", 1));
            "AveragePool"
        }
    };
    g.node(op, l.name, &[l.input()], &[l.output()], attributes);
    Ok(())
}

/// An elementwise function.
fn unary(g: &mut Graph, u: UnaryOp, l: &Layer<'_>) -> Result<()> {
    let (x, y) = (l.input(), l.output());
    let simple = match u {
        UnaryOp::Identity => Some("Identity"),
        UnaryOp::Relu => Some("Relu"),
        UnaryOp::Sigmoid => Some("Sigmoid"),
        UnaryOp::Tanh => Some("Tanh"),
        UnaryOp::Exp => Some("Exp"),
        UnaryOp::Log => Some("Log"),
        UnaryOp::Sqrt => Some("Sqrt"),
        UnaryOp::Abs => Some("Abs"),
        UnaryOp::Sign => Some("Sign"),
        UnaryOp::Neg => Some("Neg"),
        _ => None,
    };
    if let Some(op) = simple {
        g.node(op, l.name, &[x], &[y], vec![]);
        return Ok(());
    }
    match u {
        UnaryOp::LeakyRelu { slope } => {
            g.node("LeakyRelu", l.name, &[x], &[y], vec![float("alpha", slope)]);
        }
        UnaryOp::ScaledTanh => {
            let b = g.scalar(&format!("{}_b", l.name), UnaryOp::STANH_B);
            let a = g.scalar(&format!("{}_a", l.name), UnaryOp::STANH_A);
            let bx = g.step("Mul", &format!("{}_bx", l.name), &[x, &b], vec![]);
            let t = g.step("Tanh", &format!("{}_tanh", l.name), &[&bx], vec![]);
            g.node("Mul", l.name, &[&t, &a], &[y], vec![]);
        }
        UnaryOp::Square => g.node("Mul", l.name, &[x, x], &[y], vec![]),
        UnaryOp::Clamp { min, max } => {
            let lo = g.scalar(&format!("{}_min", l.name), min);
            let hi = g.scalar(&format!("{}_max", l.name), max);
            g.node("Clip", l.name, &[x, &lo, &hi], &[y], vec![]);
        }
        other => return Err(l.refuse(format!("the function {other:?}"))),
    }
    Ok(())
}
