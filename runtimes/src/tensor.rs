//! The tensor vocabulary shared by engines, registry and server: datatypes named as in the
//! Open Inference Protocol, flat row-major buffers, and model signatures.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element types, spelled as the Open Inference Protocol spells them (`FP32`, `INT64`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    Uint8,
    #[serde(rename = "UINT16")]
    Uint16,
    #[serde(rename = "UINT32")]
    Uint32,
    #[serde(rename = "UINT64")]
    Uint64,
    #[serde(rename = "INT8")]
    Int8,
    #[serde(rename = "INT16")]
    Int16,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    #[serde(rename = "BYTES")]
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 12] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses an OIP datatype name; `None` for names ferry does not support.
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Size of one element in the binary tensor extension; `None` for BYTES, whose elements
    /// are length-prefixed.
    pub fn fixed_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A flat, row-major element buffer. The variant is the datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the vector inside any `TensorData` variant.
#[macro_export]
macro_rules! with_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::Uint8($v) => $body,
            $crate::TensorData::Uint16($v) => $body,
            $crate::TensorData::Uint32($v) => $body,
            $crate::TensorData::Uint64($v) => $body,
            $crate::TensorData::Int8($v) => $body,
            $crate::TensorData::Int16($v) => $body,
            $crate::TensorData::Int32($v) => $body,
            $crate::TensorData::Int64($v) => $body,
            $crate::TensorData::Fp32($v) => $body,
            $crate::TensorData::Fp64($v) => $body,
            $crate::TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        with_tensor_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty buffer of `datatype` with room for `capacity` elements.
    pub fn with_capacity(datatype: DataType, capacity: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(capacity)),
            DataType::Uint16 => TensorData::Uint16(Vec::with_capacity(capacity)),
            DataType::Uint32 => TensorData::Uint32(Vec::with_capacity(capacity)),
            DataType::Uint64 => TensorData::Uint64(Vec::with_capacity(capacity)),
            DataType::Int8 => TensorData::Int8(Vec::with_capacity(capacity)),
            DataType::Int16 => TensorData::Int16(Vec::with_capacity(capacity)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(capacity)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(capacity)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(capacity)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(capacity)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(capacity)),
        }
    }
}

/// A named tensor: shape plus flat data. `shape.iter().product() == data.len()` holds for
/// every tensor built with [`Tensor::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that the shape describes exactly `data.len()` elements.
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        data: TensorData,
    ) -> Result<Tensor, ShapeMismatch> {
        let name = name.into();
        let expected = element_count(&shape);
        if expected != Some(data.len()) {
            return Err(ShapeMismatch {
                name,
                shape,
                elements: data.len(),
            });
        }
        Ok(Tensor { name, shape, data })
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// The number of elements a shape describes, or `None` when it overflows `usize`.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tensor `{name}` has {elements} elements but shape {shape:?} needs {}", element_count(shape).map_or("more than usize::MAX".to_string(), |n| n.to_string()))]
pub struct ShapeMismatch {
    pub name: String,
    pub shape: Vec<usize>,
    pub elements: usize,
}

/// One declared input or output: name, datatype and shape, where `-1` is a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// True when `shape` fits this spec: same rank, and every fixed dimension equal.
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        self.shape.len() == shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&want, &got)| want < 0 || want as u64 == got as u64)
    }
}

/// What a model takes and returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Why a set of input tensors does not fit a signature; each message says how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("input `{name}` is missing: this model needs inputs {expected:?}")]
    Missing { name: String, expected: Vec<String> },
    #[error("unknown input `{name}`: this model's inputs are {expected:?}")]
    Unknown { name: String, expected: Vec<String> },
    #[error("input `{name}` is given twice")]
    Duplicate { name: String },
    #[error("input `{name}` has datatype {given} but the model expects {expected}")]
    Datatype {
        name: String,
        given: DataType,
        expected: DataType,
    },
    #[error(
        "input `{name}` has shape {given:?} but the model expects {expected:?} (-1 = any size)"
    )]
    Shape {
        name: String,
        given: Vec<usize>,
        expected: Vec<i64>,
    },
    #[error(
        "inputs disagree on the batch size: `{first}` has {first_rows} rows, `{name}` has {rows}"
    )]
    BatchMismatch {
        first: String,
        first_rows: usize,
        name: String,
        rows: usize,
    },
    #[error("input `{name}`: {message}")]
    Value { name: String, message: String },
}

impl Signature {
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|s| s.name == name)
    }

    /// True when every input's first dimension is variable: requests can then be merged and
    /// split along that axis.
    pub fn has_batch_dim(&self) -> bool {
        !self.inputs.is_empty()
            && self
                .inputs
                .iter()
                .chain(&self.outputs)
                .all(|s| s.shape.first().is_some_and(|&d| d < 0))
    }

    /// Checks names, datatypes and shapes of `inputs`, and puts them in signature order.
    pub fn validate_inputs(&self, mut inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InputError> {
        let expected = || self.inputs.iter().map(|s| s.name.clone()).collect();
        for (i, t) in inputs.iter().enumerate() {
            if inputs[..i].iter().any(|o| o.name == t.name) {
                return Err(InputError::Duplicate {
                    name: t.name.clone(),
                });
            }
            let Some(spec) = self.input(&t.name) else {
                return Err(InputError::Unknown {
                    name: t.name.clone(),
                    expected: expected(),
                });
            };
            if t.datatype() != spec.datatype {
                return Err(InputError::Datatype {
                    name: t.name.clone(),
                    given: t.datatype(),
                    expected: spec.datatype,
                });
            }
            if !spec.accepts_shape(&t.shape) {
                return Err(InputError::Shape {
                    name: t.name.clone(),
                    given: t.shape.clone(),
                    expected: spec.shape.clone(),
                });
            }
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let Some(pos) = inputs.iter().position(|t| t.name == spec.name) else {
                return Err(InputError::Missing {
                    name: spec.name.clone(),
                    expected: expected(),
                });
            };
            ordered.push(inputs.swap_remove(pos));
        }
        if self.has_batch_dim() {
            let first = &ordered[0];
            for t in &ordered[1..] {
                if t.shape[0] != first.shape[0] {
                    return Err(InputError::BatchMismatch {
                        first: first.name.clone(),
                        first_rows: first.shape[0],
                        name: t.name.clone(),
                        rows: t.shape[0],
                    });
                }
            }
        }
        Ok(ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        Signature {
            inputs: vec![
                TensorSpec {
                    name: "a".into(),
                    datatype: DataType::Fp32,
                    shape: vec![-1, 2],
                },
                TensorSpec {
                    name: "b".into(),
                    datatype: DataType::Int64,
                    shape: vec![-1],
                },
            ],
            outputs: vec![TensorSpec {
                name: "y".into(),
                datatype: DataType::Fp32,
                shape: vec![-1],
            }],
        }
    }

    fn a(rows: usize) -> Tensor {
        Tensor::new("a", vec![rows, 2], TensorData::Fp32(vec![0.0; rows * 2])).unwrap()
    }

    fn b(rows: usize) -> Tensor {
        Tensor::new("b", vec![rows], TensorData::Int64(vec![0; rows])).unwrap()
    }

    #[test]
    fn tensor_new_rejects_shape_that_does_not_match_data() {
        let err = Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 5])).unwrap_err();
        assert_eq!(err.elements, 5);
        assert!(err.to_string().contains("needs 6"), "{err}");
    }

    #[test]
    fn tensor_new_survives_overflowing_shape() {
        let err =
            Tensor::new("x", vec![usize::MAX, 3], TensorData::Fp32(vec![0.0; 3])).unwrap_err();
        assert!(err.to_string().contains("usize::MAX"), "{err}");
    }

    #[test]
    fn validate_orders_inputs_like_the_signature() {
        let out = sig().validate_inputs(vec![b(3), a(3)]).unwrap();
        assert_eq!(out[0].name, "a");
        assert_eq!(out[1].name, "b");
    }

    #[test]
    fn validate_reports_each_kind_of_mistake() {
        let s = sig();
        assert!(matches!(
            s.validate_inputs(vec![a(1)]),
            Err(InputError::Missing { name, .. }) if name == "b"
        ));
        let mut wrong_type = b(1);
        wrong_type.name = "a".into();
        assert!(matches!(
            s.validate_inputs(vec![wrong_type, b(1)]),
            Err(InputError::Datatype {
                expected: DataType::Fp32,
                given: DataType::Int64,
                ..
            })
        ));
        let wide = Tensor::new("a", vec![1, 3], TensorData::Fp32(vec![0.0; 3])).unwrap();
        assert!(matches!(
            s.validate_inputs(vec![wide, b(1)]),
            Err(InputError::Shape { .. })
        ));
        let mut extra = b(1);
        extra.name = "c".into();
        assert!(matches!(
            s.validate_inputs(vec![a(1), b(1), extra]),
            Err(InputError::Unknown { name, .. }) if name == "c"
        ));
        assert!(matches!(
            s.validate_inputs(vec![a(1), a(1), b(1)]),
            Err(InputError::Duplicate { .. })
        ));
        assert!(matches!(
            s.validate_inputs(vec![a(2), b(3)]),
            Err(InputError::BatchMismatch {
                first_rows: 2,
                rows: 3,
                ..
            })
        ));
    }

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("FP16"), None);
    }
}
