//! The typed prediction columns of a batch job's output.
//!
//! Without a `postprocess`, the columns come from the model's output signature: one per output,
//! named by it, typed by its datatype, with `[-1]` and `[-1, 1]` as plain columns, `[-1, k]` as
//! `fixed_size_list<k>` (`list` when `k` is -1) and more dimensions as nested lists. Every
//! variant of the endpoint must give the same columns, checked before any row is scored.
//!
//! A `postprocess` turns predictions into arbitrary objects, so the columns are then fixed by
//! the first scored chunk of the job (and kept in the output's `_schema.json` for later runs):
//! each field becomes a column, typed by the output signature when a model output has its name
//! and every value fits it, else by its JSON values (integers int64, other numbers float64,
//! booleans, strings, arrays `list<..>`; objects and mixed kinds as their JSON text). Later
//! rows must fit those columns.

use arrow_array::builder::{BooleanBuilder, PrimitiveBuilder, StringBuilder};
use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{ArrayRef, FixedSizeListArray, ListArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field};
pub use ferry_pipeline::VariantOutputs;
use ferry_runtimes::{DataType as TensorType, TensorSpec};
use serde_json::Value;
use std::sync::Arc;

/// The element type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Elem {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    /// Strings; any other JSON value as its JSON text.
    Utf8,
}

impl Elem {
    fn of(t: TensorType) -> Elem {
        match t {
            TensorType::Bool => Elem::Bool,
            TensorType::Uint8 => Elem::UInt8,
            TensorType::Uint16 => Elem::UInt16,
            TensorType::Uint32 => Elem::UInt32,
            TensorType::Uint64 => Elem::UInt64,
            TensorType::Int8 => Elem::Int8,
            TensorType::Int16 => Elem::Int16,
            TensorType::Int32 => Elem::Int32,
            TensorType::Int64 => Elem::Int64,
            TensorType::Fp32 => Elem::Float32,
            TensorType::Fp64 => Elem::Float64,
            TensorType::Bytes => Elem::Utf8,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Elem::Bool => DataType::Boolean,
            Elem::Int8 => DataType::Int8,
            Elem::Int16 => DataType::Int16,
            Elem::Int32 => DataType::Int32,
            Elem::Int64 => DataType::Int64,
            Elem::UInt8 => DataType::UInt8,
            Elem::UInt16 => DataType::UInt16,
            Elem::UInt32 => DataType::UInt32,
            Elem::UInt64 => DataType::UInt64,
            Elem::Float32 => DataType::Float32,
            Elem::Float64 => DataType::Float64,
            Elem::Utf8 => DataType::Utf8,
        }
    }
}

/// A column's type: a scalar, or a list (of fixed `size` when the signature fixes it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Scalar(Elem),
    List {
        item: Box<ColumnType>,
        size: Option<usize>,
    },
}

impl ColumnType {
    pub fn data_type(&self) -> DataType {
        match self {
            ColumnType::Scalar(e) => e.data_type(),
            ColumnType::List { item, size } => {
                let field = Arc::new(Field::new_list_field(item.data_type(), true));
                match size {
                    Some(k) => DataType::FixedSizeList(field, *k as i32),
                    None => DataType::List(field),
                }
            }
        }
    }
}

/// One prediction column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// The prediction holds `[x]` per row (a `[-1, 1]` output); the column holds `x`.
    #[serde(default)]
    pub squeeze: bool,
}

impl Column {
    /// The column of a model output.
    pub fn of_output(spec: &TensorSpec) -> Column {
        let dims = spec.shape.get(1..).unwrap_or_default();
        let squeeze = dims == [1];
        let mut ty = ColumnType::Scalar(Elem::of(spec.datatype));
        if !squeeze {
            for &d in dims.iter().rev() {
                ty = ColumnType::List {
                    item: Box::new(ty),
                    size: (d >= 0).then_some(d as usize),
                };
            }
        }
        Column {
            name: spec.name.clone(),
            ty,
            squeeze,
        }
    }

    pub fn field(&self) -> Field {
        Field::new(&self.name, self.ty.data_type(), true)
    }
}

/// How a row's prediction maps to the columns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// A single-output model without postprocess: the prediction is that output's value.
    Bare,
    /// An object keyed by column name (several outputs, or a postprocess).
    Object,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PredictionColumns {
    pub layout: Layout,
    pub columns: Vec<Column>,
}

impl PredictionColumns {
    /// The columns of an endpoint without postprocess; variants that disagree are refused.
    pub fn from_signatures(variants: &[VariantOutputs]) -> Result<PredictionColumns, String> {
        let of = |v: &VariantOutputs| PredictionColumns {
            layout: if v.outputs.len() == 1 {
                Layout::Bare
            } else {
                Layout::Object
            },
            columns: v.outputs.iter().map(Column::of_output).collect(),
        };
        let first = variants
            .first()
            .ok_or_else(|| "the endpoint has no variants".to_string())?;
        let columns = of(first);
        for v in &variants[1..] {
            if of(v) != columns {
                return Err(format!(
                    "the variants' models answer with different outputs, so one output schema cannot hold both: variant `{}` ({}) has {}, variant `{}` ({}) has {}; give them the same outputs, or add a `postprocess` that maps both to the same fields",
                    first.variant,
                    first.model,
                    describe(&first.outputs),
                    v.variant,
                    v.model,
                    describe(&v.outputs)
                ));
            }
        }
        Ok(columns)
    }

    /// The columns of an endpoint with a postprocess, from a first chunk of its predictions.
    /// `outputs` are the model outputs whose names type a field of the same name.
    pub fn infer(
        outputs: &[TensorSpec],
        predictions: &[&Value],
    ) -> Result<PredictionColumns, String> {
        let mut names: Vec<&String> = Vec::new();
        for p in predictions {
            let Value::Object(m) = p else {
                return Err(format!(
                    "the postprocess answered {p}, not an object; batch writes one column per field"
                ));
            };
            for k in m.keys() {
                if !names.contains(&k) {
                    names.push(k);
                }
            }
        }
        let mut columns = Vec::with_capacity(names.len());
        for name in names {
            let values: Vec<Option<&Value>> = predictions
                .iter()
                .map(|p| p.get(name.as_str()).filter(|v| !v.is_null()))
                .collect();
            let typed = outputs
                .iter()
                .find(|o| &o.name == name)
                .map(Column::of_output)
                .filter(|c| build(c, &values).is_ok());
            let column = typed.unwrap_or_else(|| {
                let ty = settle(
                    values
                        .iter()
                        .flatten()
                        .fold(None, |acc, v| merge(acc, seen(v))),
                );
                Column {
                    name: name.clone(),
                    ty,
                    squeeze: false,
                }
            });
            columns.push(column);
        }
        Ok(PredictionColumns {
            layout: Layout::Object,
            columns,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }

    /// The prediction columns of `predictions` (one per row).
    pub fn arrays(&self, predictions: &[&Value]) -> Result<Vec<ArrayRef>, String> {
        if self.layout == Layout::Object {
            for p in predictions {
                match p {
                    Value::Object(m) => {
                        if let Some(k) = m.keys().find(|k| !self.names().any(|n| n == *k)) {
                            return Err(format!(
                                "the prediction has a field `{k}` that is not one of the job's columns {:?} (fixed by the job's first scored chunk and kept in `_schema.json`); make the postprocess answer the same fields for every row",
                                self.names().collect::<Vec<_>>()
                            ));
                        }
                    }
                    other => {
                        return Err(format!(
                            "the prediction {other} is not an object with the fields {:?}",
                            self.names().collect::<Vec<_>>()
                        ));
                    }
                }
            }
        }
        self.columns
            .iter()
            .map(|c| {
                let values: Vec<Option<&Value>> = predictions
                    .iter()
                    .map(|p| match self.layout {
                        Layout::Bare => Some(*p),
                        Layout::Object => p.get(c.name.as_str()),
                    })
                    .map(|v| v.filter(|v| !v.is_null()))
                    .collect();
                build(c, &values)
            })
            .collect()
    }
}

fn describe(outputs: &[TensorSpec]) -> String {
    let parts: Vec<String> = outputs
        .iter()
        .map(|o| format!("{} {} {:?}", o.name, o.datatype, o.shape))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// What the values of a field were, as far as seen: None for nulls only.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Int,
    Float,
    Bool,
    /// Strings, objects, or values of mixed kinds: written as text.
    Text,
    /// Arrays, with what their items were (None: only empty arrays or null items).
    List(Option<Box<Seen>>),
}

fn seen(v: &Value) -> Option<Seen> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(_) => Seen::Bool,
        Value::Number(n) if n.is_i64() => Seen::Int,
        Value::Number(_) => Seen::Float,
        Value::String(_) | Value::Object(_) => Seen::Text,
        Value::Array(items) => Seen::List(
            items
                .iter()
                .fold(None, |acc, v| merge(acc, seen(v)))
                .map(Box::new),
        ),
    })
}

fn merge(a: Option<Seen>, b: Option<Seen>) -> Option<Seen> {
    let (a, b) = match (a, b) {
        (None, b) => return b,
        (a, None) => return a,
        (Some(a), Some(b)) => (a, b),
    };
    Some(match (a, b) {
        (a, b) if a == b => a,
        (Seen::Int, Seen::Float) | (Seen::Float, Seen::Int) => Seen::Float,
        (Seen::List(x), Seen::List(y)) => {
            Seen::List(merge(x.map(|x| *x), y.map(|y| *y)).map(Box::new))
        }
        _ => Seen::Text,
    })
}

fn settle(s: Option<Seen>) -> ColumnType {
    match s {
        Some(Seen::Int) => ColumnType::Scalar(Elem::Int64),
        Some(Seen::Float) => ColumnType::Scalar(Elem::Float64),
        Some(Seen::Bool) => ColumnType::Scalar(Elem::Bool),
        Some(Seen::Text) | None => ColumnType::Scalar(Elem::Utf8),
        Some(Seen::List(item)) => ColumnType::List {
            item: Box::new(settle(item.map(|i| *i))),
            size: None,
        },
    }
}

/// The column `c` of these values (None = null), or why a value does not fit it.
fn build(c: &Column, values: &[Option<&Value>]) -> Result<ArrayRef, String> {
    let unwrapped: Vec<Option<&Value>>;
    let values = if c.squeeze {
        unwrapped = values
            .iter()
            .map(|v| match v {
                None => Ok(None),
                Some(Value::Array(items)) if items.len() == 1 => {
                    Ok(Some(&items[0]).filter(|v| !v.is_null()))
                }
                Some(other) => Err(format!(
                    "column `{}`: expected a one-element array per row, got {other}",
                    c.name
                )),
            })
            .collect::<Result<_, _>>()?;
        &unwrapped
    } else {
        values
    };
    build_type(&c.ty, values)
        .map_err(|e| format!("column `{}` ({}): {e}", c.name, c.ty.data_type()))
}

fn build_type(ty: &ColumnType, values: &[Option<&Value>]) -> Result<ArrayRef, String> {
    match ty {
        ColumnType::Scalar(e) => scalar(*e, values),
        ColumnType::List { item, size } => {
            let mut children: Vec<Option<&Value>> = Vec::new();
            let mut lengths = Vec::with_capacity(values.len());
            let mut valid = Vec::with_capacity(values.len());
            for v in values {
                match v {
                    None => {
                        // A null fixed-size entry still occupies `size` child slots.
                        let n = size.unwrap_or(0);
                        children.extend(std::iter::repeat_n(None, n));
                        lengths.push(n);
                        valid.push(false);
                    }
                    Some(Value::Array(items)) => {
                        if let Some(k) = size
                            && items.len() != *k
                        {
                            return Err(format!(
                                "expected {k} values per row, got {}",
                                items.len()
                            ));
                        }
                        children.extend(items.iter().map(|x| Some(x).filter(|x| !x.is_null())));
                        lengths.push(items.len());
                        valid.push(true);
                    }
                    Some(other) => return Err(format!("expected an array, got {other}")),
                }
            }
            let child = build_type(item, &children)?;
            let field = Arc::new(Field::new_list_field(item.data_type(), true));
            let nulls = valid.iter().any(|v| !v).then(|| NullBuffer::from(valid));
            Ok(match size {
                Some(k) => Arc::new(
                    FixedSizeListArray::try_new(field, *k as i32, child, nulls)
                        .map_err(|e| e.to_string())?,
                ),
                None => Arc::new(
                    ListArray::try_new(field, OffsetBuffer::from_lengths(lengths), child, nulls)
                        .map_err(|e| e.to_string())?,
                ),
            })
        }
    }
}

fn primitive<T: ArrowPrimitiveType>(
    values: &[Option<&Value>],
    convert: impl Fn(&Value) -> Option<T::Native>,
    what: &str,
) -> Result<ArrayRef, String> {
    let mut b = PrimitiveBuilder::<T>::with_capacity(values.len());
    for v in values {
        match v {
            None => b.append_null(),
            Some(v) => {
                b.append_value(convert(v).ok_or_else(|| format!("expected {what}, got {v}"))?)
            }
        }
    }
    Ok(Arc::new(b.finish()))
}

fn int<T>(v: &Value) -> Option<T>
where
    T: TryFrom<i64> + TryFrom<u64>,
{
    match v.as_i64() {
        Some(i) => T::try_from(i).ok(),
        None => T::try_from(v.as_u64()?).ok(),
    }
}

fn scalar(e: Elem, values: &[Option<&Value>]) -> Result<ArrayRef, String> {
    match e {
        Elem::Bool => {
            let mut b = BooleanBuilder::with_capacity(values.len());
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(v) => b.append_value(
                        v.as_bool()
                            .ok_or_else(|| format!("expected a boolean, got {v}"))?,
                    ),
                }
            }
            Ok(Arc::new(b.finish()))
        }
        Elem::Int8 => primitive::<Int8Type>(values, int, "an int8"),
        Elem::Int16 => primitive::<Int16Type>(values, int, "an int16"),
        Elem::Int32 => primitive::<Int32Type>(values, int, "an int32"),
        Elem::Int64 => primitive::<Int64Type>(values, int, "an int64"),
        Elem::UInt8 => primitive::<UInt8Type>(values, int, "a uint8"),
        Elem::UInt16 => primitive::<UInt16Type>(values, int, "a uint16"),
        Elem::UInt32 => primitive::<UInt32Type>(values, int, "a uint32"),
        Elem::UInt64 => primitive::<UInt64Type>(values, int, "a uint64"),
        // An FP32 output reaches JSON as the f64 of an f32, so this cast is exact.
        Elem::Float32 => {
            primitive::<Float32Type>(values, |v| v.as_f64().map(|x| x as f32), "a number")
        }
        Elem::Float64 => primitive::<Float64Type>(values, Value::as_f64, "a number"),
        Elem::Utf8 => {
            let mut b = StringBuilder::with_capacity(values.len(), values.len() * 8);
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(Value::String(s)) => b.append_value(s),
                    Some(other) => b.append_value(other.to_string()),
                }
            }
            Ok(Arc::new(b.finish()))
        }
    }
}

impl PredictionColumns {
    /// The prediction columns straight from a model's output tensors (one row per tensor row),
    /// typed exactly as `arrays` would type the same predictions after their JSON form: non-finite
    /// floats become nulls, as JSON has no NaN. None for a layout or type this does not cover
    /// (the caller then goes through the JSON predictions).
    pub fn tensor_arrays(&self, outputs: &[ferry_runtimes::Tensor]) -> Option<Vec<ArrayRef>> {
        self.columns
            .iter()
            .map(|c| {
                let t = match self.layout {
                    Layout::Bare if outputs.len() == 1 => &outputs[0],
                    Layout::Bare => return None,
                    Layout::Object => outputs.iter().find(|t| t.name == c.name)?,
                };
                tensor_column(c, t)
            })
            .collect()
    }
}

impl PredictionColumns {
    /// The job's columns from a postprocess's answer held as columns, where every field is a
    /// job column and already has its exact type; None: take the answer's JSON form.
    pub fn frame_arrays(&self, answer: &ferry_pipeline::Frame) -> Option<Vec<ArrayRef>> {
        if self.layout != Layout::Object || answer.names().any(|n| !self.names().any(|c| c == n)) {
            return None;
        }
        self.columns
            .iter()
            .map(|c| {
                let a = answer.column(&c.name)?;
                (a.data_type() == &c.ty.data_type()).then(|| a.clone())
            })
            .collect()
    }
}

fn tensor_column(c: &Column, t: &ferry_runtimes::Tensor) -> Option<ArrayRef> {
    let rows = *t.shape.first()?;
    match (&c.ty, t.shape.len()) {
        (ColumnType::Scalar(e), 1) => tensor_values(*e, &t.data),
        (ColumnType::Scalar(e), 2) if c.squeeze && t.shape[1] == 1 => tensor_values(*e, &t.data),
        (ColumnType::List { item, size }, 2) => {
            let ColumnType::Scalar(e) = item.as_ref() else {
                return None;
            };
            let k = t.shape[1];
            let values = tensor_values(*e, &t.data)?;
            match (c.ty.data_type(), size) {
                (DataType::FixedSizeList(field, _), Some(want)) if *want == k => Some(Arc::new(
                    FixedSizeListArray::try_new(field, i32::try_from(k).ok()?, values, None)
                        .ok()?,
                )),
                (DataType::List(field), None) => {
                    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(k, rows));
                    Some(Arc::new(
                        ListArray::try_new(field, offsets, values, None).ok()?,
                    ))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn tensor_values(e: Elem, data: &ferry_runtimes::TensorData) -> Option<ArrayRef> {
    use arrow_array::{Float32Array, Float64Array, Int32Array, Int64Array};
    use ferry_runtimes::TensorData;
    Some(match (e, data) {
        (Elem::Float32, TensorData::Fp32(v)) => Arc::new(
            v.iter()
                .map(|x| x.is_finite().then_some(*x))
                .collect::<Float32Array>(),
        ),
        (Elem::Float64, TensorData::Fp64(v)) => Arc::new(
            v.iter()
                .map(|x| x.is_finite().then_some(*x))
                .collect::<Float64Array>(),
        ),
        (Elem::Int64, TensorData::Int64(v)) => Arc::new(Int64Array::from(v.clone())),
        (Elem::Int32, TensorData::Int32(v)) => Arc::new(Int32Array::from(v.clone())),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use serde_json::json;

    fn spec(name: &str, datatype: TensorType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn signature_shapes_become_column_types() {
        let label = Column::of_output(&spec("label", TensorType::Int64, &[-1]));
        assert_eq!(label.field().data_type(), &DataType::Int64);
        let score = Column::of_output(&spec("score", TensorType::Fp32, &[-1, 1]));
        assert!(score.squeeze);
        assert_eq!(score.field().data_type(), &DataType::Float32);
        let proba = Column::of_output(&spec("p", TensorType::Fp32, &[-1, 2]));
        assert_eq!(
            proba.field().data_type(),
            &DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), 2)
        );
        let ragged = Column::of_output(&spec("e", TensorType::Fp64, &[-1, -1, 3]));
        assert_eq!(
            ragged.field().data_type(),
            &DataType::List(Arc::new(Field::new_list_field(
                DataType::FixedSizeList(
                    Arc::new(Field::new_list_field(DataType::Float64, true)),
                    3
                ),
                true
            )))
        );
        let text = Column::of_output(&spec("t", TensorType::Bytes, &[-1]));
        assert_eq!(text.field().data_type(), &DataType::Utf8);
    }

    #[test]
    fn values_fill_typed_arrays_and_misfits_are_refused() {
        let cols = PredictionColumns::from_signatures(&[VariantOutputs {
            variant: "a".into(),
            model: "m@1".into(),
            outputs: vec![
                spec("label", TensorType::Int64, &[-1]),
                spec("probabilities", TensorType::Fp32, &[-1, 2]),
            ],
        }])
        .unwrap();
        let p1 = json!({"label": 1, "probabilities": [0.25, 0.75]});
        let p2 = json!({"label": 0, "probabilities": [0.5, 0.5]});
        let arrays = cols.arrays(&[&p1, &p2]).unwrap();
        assert_eq!(arrays[0].len(), 2);
        let p = arrays[1]
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        assert_eq!(p.value_length(), 2);
        let short = json!({"label": 0, "probabilities": [0.5]});
        let e = cols.arrays(&[&p1, &short]).unwrap_err();
        assert!(
            e.contains("probabilities") && e.contains("expected 2"),
            "{e}"
        );
        let extra = json!({"label": 0, "probabilities": [0.5, 0.5], "x": 1});
        assert!(cols.arrays(&[&extra]).unwrap_err().contains("`x`"));
    }

    #[test]
    fn variants_with_different_outputs_are_refused() {
        let v = |name: &str, shape: &[i64]| VariantOutputs {
            variant: name.into(),
            model: format!("{name}@1"),
            outputs: vec![spec("score", TensorType::Fp32, shape)],
        };
        assert!(PredictionColumns::from_signatures(&[v("a", &[-1, 1]), v("b", &[-1, 1])]).is_ok());
        let e =
            PredictionColumns::from_signatures(&[v("a", &[-1, 1]), v("b", &[-1, 3])]).unwrap_err();
        assert!(e.contains("`a`") && e.contains("`b`"), "{e}");
    }

    #[test]
    fn postprocess_fields_are_typed_by_signature_then_by_value() {
        let outputs = [
            spec("label", TensorType::Int64, &[-1]),
            spec("probabilities", TensorType::Fp32, &[-1, 2]),
        ];
        let a = json!({"probabilities": [0.2, 0.8], "decision": "yes", "score": 1, "top": [1, 2]});
        let b = json!({"probabilities": [0.6, 0.4], "decision": "no", "score": 0.5, "top": []});
        let cols = PredictionColumns::infer(&outputs, &[&a, &b]).unwrap();
        let ty = |n: &str| {
            cols.columns
                .iter()
                .find(|c| c.name == n)
                .unwrap()
                .field()
                .data_type()
                .clone()
        };
        assert!(matches!(ty("probabilities"), DataType::FixedSizeList(_, 2)));
        assert_eq!(ty("decision"), DataType::Utf8);
        assert_eq!(ty("score"), DataType::Float64);
        assert_eq!(
            ty("top"),
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
        );
        let arrays = cols.arrays(&[&a, &b]).unwrap();
        assert_eq!(arrays.len(), 4);
    }
}
