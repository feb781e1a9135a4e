//! Rows ↔ tensors, in TF-Serving's row format: JSON rows (the v1 API's `instances`, an
//! endpoint's rows) become one tensor per model input, and model outputs become one prediction
//! per row (a model with several outputs gives one object per row, keyed by output name).
//!
//! Shared by the pipeline and the v1 HTTP handler. The errors say whose fault a failure is
//! (the rows' or the model's) and carry no HTTP status: `http::error` maps them.

use super::json_tensor::decode_json_missing_as_nan;
use ferry_runtimes::{Signature, Tensor, TensorData, element_count};
use serde_json::{Map, Value};

/// Rows that do not fit the model's inputs: the caller's mistake, fixed in the rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRows(pub String);

/// Model outputs that do not have one row per instance: the model's fault, never the rows'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidOutputs(pub String);

/// One row as the codec reads it: an object keyed by input name, or (for a model with one
/// input) the input's value itself.
enum Instance<'a> {
    Object(&'a Map<String, Value>),
    Bare(&'a Value),
}

/// Builds one tensor per signature input from `instances` (objects keyed by input name, or
/// bare values when the model has one input).
pub fn instances_to_tensors(
    instances: &[Value],
    signature: &Signature,
) -> Result<Vec<Tensor>, InvalidRows> {
    to_tensors(
        instances.len(),
        |i| match &instances[i] {
            Value::Object(map) => Instance::Object(map),
            other => Instance::Bare(other),
        },
        signature,
    )
}

/// `instances_to_tensors` for rows that are already objects (an endpoint's rows), without
/// moving them into `Value`s and back.
pub fn rows_to_tensors(
    rows: &[Map<String, Value>],
    signature: &Signature,
) -> Result<Vec<Tensor>, InvalidRows> {
    to_tensors(rows.len(), |i| Instance::Object(&rows[i]), signature)
}

fn to_tensors<'a>(
    rows: usize,
    instance: impl Fn(usize) -> Instance<'a>,
    signature: &Signature,
) -> Result<Vec<Tensor>, InvalidRows> {
    if rows == 0 {
        return Err(InvalidRows(
            "`instances` is empty: send at least one instance".into(),
        ));
    }
    let single = signature.inputs.len() == 1;
    let input_names = || signature.inputs.iter().map(|s| &s.name).collect::<Vec<_>>();
    let mut tensors = Vec::with_capacity(signature.inputs.len());
    for spec in &signature.inputs {
        let mut values: Vec<&Value> = Vec::with_capacity(rows);
        for i in 0..rows {
            let value = match instance(i) {
                Instance::Object(map) => map.get(&spec.name).ok_or_else(|| {
                    InvalidRows(format!(
                        "instances[{i}] has no key `{}`; instances that are objects are keyed by input name ({:?})",
                        spec.name,
                        input_names()
                    ))
                })?,
                Instance::Bare(row) if single => row,
                Instance::Bare(_) => {
                    return Err(InvalidRows(format!(
                        "this model has {} inputs, so each instance must be an object keyed by input name ({:?})",
                        signature.inputs.len(),
                        input_names()
                    )));
                }
            };
            values.push(value);
        }
        let inner = nested_shape(values[0]);
        let too_large = || InvalidRows(format!("input `{}` is too large", spec.name));
        let per_row = element_count(&inner).ok_or_else(too_large)?;
        let mut shape = Vec::with_capacity(inner.len() + 1);
        shape.push(rows);
        shape.extend_from_slice(&inner);
        let total = per_row.checked_mul(rows).ok_or_else(too_large)?;
        let all = Value::Array(values.into_iter().cloned().collect());
        let data = decode_json_missing_as_nan(spec.datatype, &all, total).map_err(|e| {
            InvalidRows(format!(
                "input `{}`: {e} (every instance must have shape {inner:?}, like instances[0], and the model expects {:?} per instance)",
                spec.name,
                spec.shape.get(1..).unwrap_or_default()
            ))
        })?;
        tensors.push(
            Tensor::new(spec.name.clone(), shape, data).map_err(|e| InvalidRows(e.to_string()))?,
        );
    }
    Ok(tensors)
}

/// Shape of a nested JSON array, following first elements (`[[1,2],[3,4]]` → `[2, 2]`).
fn nested_shape(value: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    let mut v = value;
    while let Value::Array(items) = v {
        shape.push(items.len());
        match items.first() {
            Some(first) => v = first,
            None => break,
        }
    }
    shape
}

fn element(data: &TensorData, i: usize) -> Value {
    match data {
        TensorData::Bool(v) => Value::from(v[i]),
        TensorData::Uint8(v) => Value::from(v[i]),
        TensorData::Uint16(v) => Value::from(v[i]),
        TensorData::Uint32(v) => Value::from(v[i]),
        TensorData::Uint64(v) => Value::from(v[i]),
        TensorData::Int8(v) => Value::from(v[i]),
        TensorData::Int16(v) => Value::from(v[i]),
        TensorData::Int32(v) => Value::from(v[i]),
        TensorData::Int64(v) => Value::from(v[i]),
        TensorData::Fp32(v) => Value::from(v[i] as f64),
        TensorData::Fp64(v) => Value::from(v[i]),
        TensorData::Bytes(v) => Value::from(String::from_utf8_lossy(&v[i]).into_owned()),
    }
}

fn nested(data: &TensorData, start: usize, shape: &[usize]) -> Value {
    match shape.split_first() {
        None => element(data, start),
        Some((&n, rest)) => {
            let stride: usize = rest.iter().product();
            Value::Array(
                (0..n)
                    .map(|k| nested(data, start + k * stride, rest))
                    .collect(),
            )
        }
    }
}

/// One prediction per row: the row's value for a single output, else an object by name.
pub fn predictions(outputs: &[Tensor]) -> Result<Vec<Value>, InvalidOutputs> {
    let rows = outputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(0);
    for t in outputs {
        if t.shape.first() != Some(&rows) {
            return Err(InvalidOutputs(format!(
                "output `{}` has shape {:?}, which does not have one row per instance",
                t.name, t.shape
            )));
        }
    }
    let row = |t: &Tensor, r: usize| {
        let inner = &t.shape[1..];
        nested(&t.data, r * inner.iter().product::<usize>(), inner)
    };
    Ok((0..rows)
        .map(|r| {
            if outputs.len() == 1 {
                row(&outputs[0], r)
            } else {
                Value::Object(
                    outputs
                        .iter()
                        .map(|t| (t.name.clone(), row(t, r)))
                        .collect::<Map<String, Value>>(),
                )
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_runtimes::{DataType, TensorSpec};
    use serde_json::json;

    fn sig(inputs: &[(&str, DataType, &[i64])]) -> Signature {
        Signature {
            inputs: inputs
                .iter()
                .map(|(n, d, s)| TensorSpec {
                    name: n.to_string(),
                    datatype: *d,
                    shape: s.to_vec(),
                })
                .collect(),
            outputs: vec![],
        }
    }

    fn objects(rows: Value) -> Vec<Map<String, Value>> {
        let Value::Array(rows) = rows else {
            panic!("rows are an array")
        };
        rows.into_iter()
            .map(|r| match r {
                Value::Object(m) => m,
                other => panic!("{other} is not an object"),
            })
            .collect()
    }

    #[test]
    fn rows_become_a_batch() {
        let rows = [json!([1, 2, 3]), json!([4, 5, 6])];
        let t = instances_to_tensors(&rows, &sig(&[("x", DataType::Fp32, &[-1, 3])])).unwrap();
        assert_eq!(t[0].shape, vec![2, 3]);
        assert_eq!(t[0].data, TensorData::Fp32(vec![1., 2., 3., 4., 5., 6.]));
    }

    #[test]
    fn objects_are_keyed_by_input_name() {
        let rows = json!([{"a": [1.0], "b": 2}, {"a": [3.0], "b": 4}]);
        let s = sig(&[
            ("a", DataType::Fp64, &[-1, 1]),
            ("b", DataType::Int64, &[-1]),
        ]);
        let t = instances_to_tensors(rows.as_array().unwrap(), &s).unwrap();
        assert_eq!(t[1].data, TensorData::Int64(vec![2, 4]));
        let missing = [json!({"a": [1.0]})];
        assert!(
            instances_to_tensors(&missing, &s)
                .unwrap_err()
                .0
                .contains("no key `b`")
        );
    }

    #[test]
    fn object_rows_give_the_same_tensors_and_errors_as_instances() {
        let s = sig(&[
            ("a", DataType::Fp64, &[-1, 1]),
            ("b", DataType::Int64, &[-1]),
        ]);
        for rows in [
            json!([{"a": [1.0], "b": 2}, {"a": [3.0], "b": 4}]),
            json!([{"a": [1.0], "b": 2}, {"a": [3.0]}]),
            json!([{"a": [1.0], "b": 2}, {"a": [3.0, 5.0], "b": 4}]),
            json!([{"a": [1.0], "b": "two"}]),
            json!([]),
        ] {
            assert_eq!(
                rows_to_tensors(&objects(rows.clone()), &s),
                instances_to_tensors(rows.as_array().unwrap(), &s),
                "{rows}"
            );
        }
    }

    #[test]
    fn bare_rows_need_a_single_input_model() {
        let s = sig(&[
            ("a", DataType::Fp32, &[-1, 1]),
            ("b", DataType::Fp32, &[-1, 1]),
        ]);
        let err = instances_to_tensors(&[json!([1.0])], &s).unwrap_err();
        assert!(err.0.contains("this model has 2 inputs"), "{err}");
    }

    #[test]
    fn ragged_instances_are_refused() {
        let rows = [json!([1, 2, 3]), json!([4, 5])];
        let err =
            instances_to_tensors(&rows, &sig(&[("x", DataType::Fp32, &[-1, 3])])).unwrap_err();
        assert!(
            err.0.starts_with("input `x`: ") && err.0.contains("like instances[0]"),
            "{err}"
        );
    }

    #[test]
    fn no_rows_are_refused() {
        let err = instances_to_tensors(&[], &sig(&[("x", DataType::Fp32, &[-1, 3])])).unwrap_err();
        assert_eq!(err.0, "`instances` is empty: send at least one instance");
    }

    #[test]
    fn outputs_without_one_row_per_instance_are_the_models_fault() {
        let label = Tensor::new("label", vec![2], TensorData::Int64(vec![1, 0])).unwrap();
        let proba = Tensor::new(
            "probabilities",
            vec![1, 2],
            TensorData::Fp32(vec![0.25, 0.75]),
        )
        .unwrap();
        let err = predictions(&[label, proba]).unwrap_err();
        assert_eq!(
            err.0,
            "output `probabilities` has shape [1, 2], which does not have one row per instance"
        );
    }

    #[test]
    fn predictions_follow_tf_serving_row_format() {
        let label = Tensor::new("label", vec![2], TensorData::Int64(vec![1, 0])).unwrap();
        let proba = Tensor::new(
            "probabilities",
            vec![2, 2],
            TensorData::Fp32(vec![0.25, 0.75, 0.5, 0.5]),
        )
        .unwrap();
        let p = predictions(&[label.clone(), proba.clone()]).unwrap();
        assert_eq!(p[0], json!({"label": 1, "probabilities": [0.25, 0.75]}));
        assert_eq!(predictions(&[proba]).unwrap()[1], json!([0.5, 0.5]));
        assert_eq!(predictions(&[label]).unwrap(), vec![json!(1), json!(0)]);
    }
}
