//! `POST /v1/models/{model}:predict` in TF-Serving's row format: `{"instances": [...]}` →
//! `{"predictions": [...]}`; a model with several outputs gives one object per instance,
//! keyed by output name.

use crate::http::error::ApiError;
use crate::http::oip::decode_json;
use ferry_runtimes::{Signature, Tensor, TensorData, element_count};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    pub instances: Vec<Value>,
    #[serde(default)]
    pub signature_name: Option<String>,
}

pub fn parse_request(body: &[u8]) -> Result<PredictRequest, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the request is not a valid predict request: {e}; expected {{\"instances\": [row, row, ...]}}"
        ))
    })
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

/// Builds one tensor per signature input from the instances.
pub fn instances_to_tensors(
    request: &PredictRequest,
    signature: &Signature,
) -> Result<Vec<Tensor>, ApiError> {
    let rows = request.instances.len();
    if rows == 0 {
        return Err(ApiError::InvalidInput(
            "`instances` is empty: send at least one instance".into(),
        ));
    }
    let single = signature.inputs.len() == 1;
    let mut tensors = Vec::with_capacity(signature.inputs.len());
    for spec in &signature.inputs {
        let mut values: Vec<&Value> = Vec::with_capacity(rows);
        for (i, instance) in request.instances.iter().enumerate() {
            let value = match instance {
                Value::Object(map) => map.get(&spec.name).ok_or_else(|| {
                    ApiError::InvalidInput(format!(
                        "instances[{i}] has no key `{}`; instances that are objects are keyed by input name ({:?})",
                        spec.name,
                        signature.inputs.iter().map(|s| &s.name).collect::<Vec<_>>()
                    ))
                })?,
                row if single => row,
                _ => {
                    return Err(ApiError::InvalidInput(format!(
                        "this model has {} inputs, so each instance must be an object keyed by input name ({:?})",
                        signature.inputs.len(),
                        signature.inputs.iter().map(|s| &s.name).collect::<Vec<_>>()
                    )));
                }
            };
            values.push(value);
        }
        let inner = nested_shape(values[0]);
        let per_row = element_count(&inner)
            .ok_or_else(|| ApiError::InvalidInput(format!("input `{}` is too large", spec.name)))?;
        let mut shape = Vec::with_capacity(inner.len() + 1);
        shape.push(rows);
        shape.extend_from_slice(&inner);
        let total = per_row
            .checked_mul(rows)
            .ok_or_else(|| ApiError::InvalidInput(format!("input `{}` is too large", spec.name)))?;
        let all = Value::Array(values.into_iter().cloned().collect());
        let data = decode_json(spec.datatype, &all, total).map_err(|e| {
            ApiError::InvalidInput(format!(
                "input `{}`: {e} (every instance must have shape {inner:?}, like instances[0], and the model expects {:?} per instance)",
                spec.name,
                spec.shape.get(1..).unwrap_or_default()
            ))
        })?;
        tensors.push(
            Tensor::new(spec.name.clone(), shape, data)
                .map_err(|e| ApiError::InvalidInput(e.to_string()))?,
        );
    }
    Ok(tensors)
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
pub fn predictions(outputs: &[Tensor]) -> Result<Vec<Value>, ApiError> {
    let rows = outputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(0);
    for t in outputs {
        if t.shape.first() != Some(&rows) {
            return Err(ApiError::Internal(format!(
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

    #[test]
    fn rows_become_a_batch() {
        let req = parse_request(br#"{"instances": [[1, 2, 3], [4, 5, 6]]}"#).unwrap();
        let t = instances_to_tensors(&req, &sig(&[("x", DataType::Fp32, &[-1, 3])])).unwrap();
        assert_eq!(t[0].shape, vec![2, 3]);
        assert_eq!(t[0].data, TensorData::Fp32(vec![1., 2., 3., 4., 5., 6.]));
    }

    #[test]
    fn objects_are_keyed_by_input_name() {
        let req = parse_request(br#"{"instances": [{"a": [1.0], "b": 2}, {"a": [3.0], "b": 4}]}"#)
            .unwrap();
        let s = sig(&[
            ("a", DataType::Fp64, &[-1, 1]),
            ("b", DataType::Int64, &[-1]),
        ]);
        let t = instances_to_tensors(&req, &s).unwrap();
        assert_eq!(t[1].data, TensorData::Int64(vec![2, 4]));
        let missing = parse_request(br#"{"instances": [{"a": [1.0]}]}"#).unwrap();
        assert!(
            instances_to_tensors(&missing, &s)
                .unwrap_err()
                .to_string()
                .contains("no key `b`")
        );
    }

    #[test]
    fn ragged_instances_are_refused() {
        let req = parse_request(br#"{"instances": [[1, 2, 3], [4, 5]]}"#).unwrap();
        let err = instances_to_tensors(&req, &sig(&[("x", DataType::Fp32, &[-1, 3])])).unwrap_err();
        assert!(matches!(err, ApiError::InvalidInput(_)), "{err}");
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
        assert_eq!(
            p[0],
            serde_json::json!({"label": 1, "probabilities": [0.25, 0.75]})
        );
        assert_eq!(
            predictions(&[proba]).unwrap()[1],
            serde_json::json!([0.5, 0.5])
        );
        assert_eq!(
            predictions(&[label]).unwrap(),
            vec![serde_json::json!(1), serde_json::json!(0)]
        );
    }
}
