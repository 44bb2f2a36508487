//! An ONNX graph under construction: nodes in order, initialisers, value names kept unique.

use crate::onnx::attribute_proto::AttributeType;
use crate::onnx::tensor_proto::DataType;
use crate::onnx::{
    tensor_shape_proto, type_proto, AttributeProto, NodeProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use singa_core::DType;
use std::collections::HashSet;

/// The nodes and initialisers of a graph being written.
#[derive(Default)]
pub(crate) struct Graph {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    /// Every value name in use (inputs, node outputs, initialisers).
    names: HashSet<String>,
}

impl Graph {
    /// `base` if no value has that name yet, else `base` with the first free suffix; taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Takes `name` as it is (a graph input or a layer's output, named by the net).
    pub fn claim(&mut self, name: &str) {
        self.names.insert(name.to_string());
    }

    /// Appends a node of type `op` named `name`.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: name.to_string(),
            op_type: op.to_string(),
            attribute: attributes,
            ..Default::default()
        });
    }

    /// A node of type `op` with one output, a fresh value named after `base`; returns it.
    pub fn step(
        &mut self,
        op: &str,
        base: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(base);
        self.node(op, &out.clone(), inputs, &[&out], attributes);
        out
    }

    /// An f32 initialiser named `name` (exactly, as the checkpoint names the tensor).
    pub fn weights(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.claim(name);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            name: name.to_string(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.to_string()
    }

    /// A constant f32 scalar, named after `base`.
    pub fn scalar(&mut self, base: &str, value: f32) -> String {
        let name = self.fresh(base);
        self.initializers.push(TensorProto {
            data_type: DataType::Float as i32,
            name: name.clone(),
            raw_data: value.to_le_bytes().to_vec(),
            ..Default::default()
        });
        name
    }

    /// A constant list of int64 (a shape, split sizes), named after `base`.
    pub fn int64s(&mut self, base: &str, values: &[i64]) -> String {
        let name = self.fresh(base);
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }
}

/// An integer attribute.
pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: Some(value),
        ..Default::default()
    }
}

/// A list-of-integers attribute.
pub(crate) fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

/// A float attribute.
pub(crate) fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: Some(value),
        ..Default::default()
    }
}

/// The ONNX element type of `dtype`.
pub(crate) fn element_type(dtype: DType) -> i32 {
    let t = match dtype {
        DType::F32 => DataType::Float,
        DType::I32 => DataType::Int32,
        DType::F16 => DataType::Float16,
        DType::BF16 => DataType::Bfloat16,
        DType::U8 => DataType::Uint8,
    };
    t as i32
}

/// A typed value: `dims` with `None` for the batch (a named, free dimension).
pub(crate) fn value_info(
    name: &str,
    dtype: DType,
    dims: &[Option<usize>],
    doc: String,
) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                None => tensor_shape_proto::dimension::Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: element_type(dtype),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        doc_string: doc,
    }
}
