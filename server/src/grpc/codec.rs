//! Protobuf messages to and from the core's types: tensors for models, rows for business
//! endpoints, statistics.

use super::proto::{
    InferParameter, InferStatistics, InferTensorContents, ModelInferRequest, ModelInferResponse,
    ModelStatistics, StatisticDuration, infer_parameter::ParameterChoice,
    model_infer_response::InferOutputTensor,
};
use crate::http::error::ApiError;
use crate::http::oip::{append_binary, decode_binary};
use crate::telemetry::stats;
use ferry_pipeline::Predictions;
use ferry_pipeline::arrow_rows::float;
use ferry_runtimes::{DataType, Tensor, TensorData, element_count};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The request's input tensors, from `raw_input_contents` (one entry per input, Triton's
/// little-endian layout) or from each input's typed `contents`.
pub fn decode_inputs(request: &ModelInferRequest) -> Result<Vec<Tensor>, ApiError> {
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(ApiError::BadRequest(format!(
            "raw_input_contents has {} entries but the request has {} inputs; send one raw entry per input, in the inputs' order, or use each input's contents",
            raw.len(),
            request.inputs.len()
        )));
    }
    request
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let name = &input.name;
            let bad = |m: String| ApiError::BadRequest(format!("input `{name}`: {m}"));
            let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
                bad(format!(
                    "unsupported datatype {:?}; use one of {}",
                    input.datatype,
                    DataType::ALL.map(|d| d.as_str()).join(", ")
                ))
            })?;
            let shape = input
                .shape
                .iter()
                .map(|&d| {
                    usize::try_from(d).map_err(|_| {
                        bad(format!("shape {:?} has a negative dimension", input.shape))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let count = element_count(&shape)
                .ok_or_else(|| bad(format!("shape {:?} has too many elements", input.shape)))?;
            let data = match (raw.get(i), &input.contents) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "has both contents and a raw_input_contents entry; send one of them".into(),
                    ));
                }
                (Some(bytes), None) => decode_binary(datatype, bytes, count).map_err(bad)?,
                (None, Some(contents)) => typed(datatype, contents).map_err(bad)?,
                (None, None) if count == 0 => empty(datatype),
                (None, None) => {
                    return Err(bad(
                        "has no data: set its contents or send raw_input_contents".into(),
                    ));
                }
            };
            Tensor::new(name.clone(), shape, data).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

fn empty(datatype: DataType) -> TensorData {
    typed(datatype, &InferTensorContents::default()).expect("empty contents always decode")
}

/// Typed contents: each datatype reads the field the protocol assigns it (8/16/32-bit integers
/// share `int_contents` / `uint_contents`, so they are range-checked).
fn typed(datatype: DataType, c: &InferTensorContents) -> Result<TensorData, String> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        v: &[S],
        datatype: DataType,
    ) -> Result<Vec<T>, String> {
        v.iter()
            .map(|&x| T::try_from(x).map_err(|_| format!("{x} does not fit {datatype}")))
            .collect()
    }
    let field = match datatype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
    };
    let data = match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents.clone()),
        DataType::Int8 => TensorData::Int8(narrow(&c.int_contents, datatype)?),
        DataType::Int16 => TensorData::Int16(narrow(&c.int_contents, datatype)?),
        DataType::Int32 => TensorData::Int32(c.int_contents.clone()),
        DataType::Int64 => TensorData::Int64(c.int64_contents.clone()),
        DataType::Uint8 => TensorData::Uint8(narrow(&c.uint_contents, datatype)?),
        DataType::Uint16 => TensorData::Uint16(narrow(&c.uint_contents, datatype)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents.clone()),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents.clone()),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents.clone()),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents.clone()),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents.clone()),
    };
    if data.is_empty() {
        let others = [
            ("bool_contents", c.bool_contents.len()),
            ("int_contents", c.int_contents.len()),
            ("int64_contents", c.int64_contents.len()),
            ("uint_contents", c.uint_contents.len()),
            ("uint64_contents", c.uint64_contents.len()),
            ("fp32_contents", c.fp32_contents.len()),
            ("fp64_contents", c.fp64_contents.len()),
            ("bytes_contents", c.bytes_contents.len()),
        ];
        if let Some((other, _)) = others.iter().find(|(f, n)| *n > 0 && *f != field) {
            return Err(format!(
                "datatype {datatype} is read from {field}, but the data is in {other}"
            ));
        }
    }
    Ok(data)
}

fn contents(data: &TensorData) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v.clone(),
        TensorData::Int8(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::Int16(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::Int32(v) => c.int_contents = v.clone(),
        TensorData::Int64(v) => c.int64_contents = v.clone(),
        TensorData::Uint8(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::Uint16(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::Uint32(v) => c.uint_contents = v.clone(),
        TensorData::Uint64(v) => c.uint64_contents = v.clone(),
        TensorData::Fp32(v) => c.fp32_contents = v.clone(),
        TensorData::Fp64(v) => c.fp64_contents = v.clone(),
        TensorData::Bytes(v) => c.bytes_contents = v.clone(),
    }
    c
}

/// Indices into `available` of the outputs to return: the requested ones in request order, or
/// all of them.
pub fn select_outputs(
    request: &ModelInferRequest,
    available: &[String],
) -> Result<Vec<usize>, ApiError> {
    if request.outputs.is_empty() {
        return Ok((0..available.len()).collect());
    }
    request
        .outputs
        .iter()
        .map(|o| {
            available.iter().position(|n| *n == o.name).ok_or_else(|| {
                ApiError::InvalidInput(format!(
                    "unknown output `{}` requested; this model's outputs are {available:?}",
                    o.name
                ))
            })
        })
        .collect()
}

/// A response holding `outputs[selected]`: in `raw_output_contents` when the request sent raw
/// inputs (as Triton answers `tritonclient`), else as typed contents.
fn response(
    model: &str,
    version: String,
    request: &ModelInferRequest,
    outputs: &[&Tensor],
    parameters: HashMap<String, InferParameter>,
) -> ModelInferResponse {
    let raw = !request.raw_input_contents.is_empty();
    let mut raw_output_contents = Vec::new();
    let outputs = outputs
        .iter()
        .map(|t| {
            let contents = if raw {
                let mut bytes = Vec::new();
                append_binary(&mut bytes, &t.data);
                raw_output_contents.push(bytes);
                None
            } else {
                Some(contents(&t.data))
            };
            InferOutputTensor {
                name: t.name.clone(),
                datatype: t.data.datatype().as_str().into(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents,
            }
        })
        .collect();
    ModelInferResponse {
        model_name: model.into(),
        model_version: version,
        id: request.id.clone(),
        parameters,
        outputs,
        raw_output_contents,
    }
}

pub fn encode_response(
    model: &str,
    version: u64,
    request: &ModelInferRequest,
    outputs: &[Tensor],
    selected: &[usize],
) -> ModelInferResponse {
    let chosen: Vec<&Tensor> = selected.iter().filter_map(|&i| outputs.get(i)).collect();
    response(model, version.to_string(), request, &chosen, HashMap::new())
}

pub fn string_param(
    params: &HashMap<String, InferParameter>,
    key: &str,
) -> Result<Option<String>, ApiError> {
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::StringParam(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::BadRequest(format!(
            "parameter `{key}` must be a string"
        ))),
    }
}

fn string(s: impl Into<String>) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(s.into())),
    }
}

/// Rows for a business endpoint: every input is one field, its first dimension the rows (all
/// inputs agree on it); a row's value is the element (rank 1) or the nested array below it.
/// BYTES elements are UTF-8 strings.
pub fn endpoint_rows(request: &ModelInferRequest) -> Result<Vec<Map<String, Value>>, ApiError> {
    let tensors = decode_inputs(request)?;
    let Some(first) = tensors.first() else {
        return Err(ApiError::BadRequest(
            "an endpoint request needs at least one input: one tensor per instance field, shaped [rows] or [rows, ...]".into(),
        ));
    };
    let rows = *first.shape.first().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "input `{}` is a scalar; endpoint inputs are shaped [rows] or [rows, ...], one row per instance",
            first.name
        ))
    })?;
    let mut out = vec![Map::new(); rows];
    for t in &tensors {
        if t.shape.first() != Some(&rows) {
            return Err(ApiError::BadRequest(format!(
                "input `{}` has shape {:?} but `{}` has {rows} rows; every input's first dimension is the row count",
                t.name, t.shape, first.name
            )));
        }
        if t.data.is_empty() && rows > 0 {
            return Err(ApiError::BadRequest(format!(
                "input `{}` has shape {:?}, which holds no values for its {rows} rows",
                t.name, t.shape
            )));
        }
        let values = element_values(t)?;
        let per_row = values.len().checked_div(rows).unwrap_or(0);
        let inner = &t.shape[1..];
        for (row, chunk) in out.iter_mut().zip(values.chunks(per_row.max(1))) {
            let value = if inner.is_empty() {
                chunk.first().cloned().unwrap_or(Value::Null)
            } else {
                nest(chunk, inner)
            };
            row.insert(t.name.clone(), value);
        }
    }
    Ok(out)
}

fn nest(values: &[Value], shape: &[usize]) -> Value {
    match shape {
        [] | [_] => Value::Array(values.to_vec()),
        [_, rest @ ..] => {
            let step = rest.iter().product::<usize>().max(1);
            Value::Array(values.chunks(step).map(|c| nest(c, rest)).collect())
        }
    }
}

fn element_values(t: &Tensor) -> Result<Vec<Value>, ApiError> {
    Ok(match &t.data {
        TensorData::Bool(v) => v.iter().map(|&b| Value::Bool(b)).collect(),
        TensorData::Uint8(v) => v.iter().map(|&x| Value::from(x)).collect(),
        TensorData::Uint16(v) => v.iter().map(|&x| Value::from(x)).collect(),
        TensorData::Uint32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        TensorData::Uint64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        TensorData::Int8(v) => v.iter().map(|&x| Value::from(x)).collect(),
        TensorData::Int16(v) => v.iter().map(|&x| Value::from(x)).collect(),
        TensorData::Int32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        TensorData::Int64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        TensorData::Fp32(v) => v.iter().map(|&x| float(f64::from(x))).collect(),
        TensorData::Fp64(v) => v.iter().map(|&x| float(x)).collect(),
        TensorData::Bytes(v) => v
            .iter()
            .map(|b| {
                String::from_utf8(b.clone())
                    .map(Value::String)
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "input `{}`: BYTES elements of an endpoint request are UTF-8 text",
                            t.name
                        ))
                    })
            })
            .collect::<Result<_, _>>()?,
    })
}

/// An endpoint's answer as tensors: one output per prediction field (a prediction that is not
/// an object is the output `prediction`), plus `variant`, `model` (BYTES) and `version`
/// (INT64) per row. Request `outputs` pick among them.
pub fn encode_endpoint(
    request: &ModelInferRequest,
    p: &Predictions,
) -> Result<ModelInferResponse, ApiError> {
    let mut names: Vec<String> = Vec::new();
    let objects = p.predictions.iter().all(Value::is_object);
    if objects {
        for pred in &p.predictions {
            for k in pred.as_object().into_iter().flat_map(|m| m.keys()) {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
    } else {
        names.push("prediction".into());
    }
    let mut tensors: Vec<Tensor> = names
        .iter()
        .map(|name| {
            let column: Vec<&Value> = p
                .predictions
                .iter()
                .map(|pred| {
                    if objects {
                        pred.get(name).unwrap_or(&Value::Null)
                    } else {
                        pred
                    }
                })
                .collect();
            column_tensor(name, &column)
        })
        .collect();
    let rows = p.predictions.len();
    let text = |name: &str, v: &[String]| Tensor {
        name: name.into(),
        shape: vec![rows],
        data: TensorData::Bytes(v.iter().map(|s| s.as_bytes().to_vec()).collect()),
    };
    for extra in ["variant", "model", "version"] {
        if names.iter().any(|n| n == extra) {
            continue;
        }
        tensors.push(match extra {
            "variant" => text(extra, &p.variants),
            "model" => text(extra, &p.models),
            _ => Tensor {
                name: extra.into(),
                shape: vec![rows],
                data: TensorData::Int64(p.versions.iter().map(|&v| v as i64).collect()),
            },
        });
    }
    let available: Vec<String> = tensors.iter().map(|t| t.name.clone()).collect();
    let selected = select_outputs(request, &available)?;
    let chosen: Vec<&Tensor> = selected.iter().map(|&i| &tensors[i]).collect();
    let mut parameters = HashMap::new();
    parameters.insert("endpoint".into(), string(p.endpoint.clone()));
    if let Some((variant, model, version)) = p.common() {
        parameters.insert("variant".into(), string(variant));
        parameters.insert("model".into(), string(model));
        parameters.insert("version".into(), string(version.to_string()));
    }
    if p.defaulted > 0 {
        parameters.insert(
            "features_defaulted".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(p.defaulted as i64)),
            },
        );
    }
    let version = p
        .common()
        .map(|(_, _, v)| v.to_string())
        .unwrap_or_default();
    Ok(response(
        &request.model_name,
        version,
        request,
        &chosen,
        parameters,
    ))
}

/// One prediction field over the rows as the narrowest tensor that holds it exactly: BOOL,
/// INT64, FP64 (nulls among numbers are NaN), BYTES for text, `[rows, k]` for equal-length
/// number arrays; anything else is BYTES holding each value's JSON text.
fn column_tensor(name: &str, column: &[&Value]) -> Tensor {
    let rows = column.len();
    let tensor = |shape: Vec<usize>, data| Tensor {
        name: name.into(),
        shape,
        data,
    };
    if column.iter().all(|v| v.is_boolean()) {
        return tensor(
            vec![rows],
            TensorData::Bool(column.iter().map(|v| v.as_bool() == Some(true)).collect()),
        );
    }
    if column.iter().all(|v| v.is_i64()) {
        return tensor(
            vec![rows],
            TensorData::Int64(column.iter().filter_map(|v| v.as_i64()).collect()),
        );
    }
    if column.iter().all(|v| v.is_number() || v.is_null()) && column.iter().any(|v| v.is_number()) {
        return tensor(
            vec![rows],
            TensorData::Fp64(
                column
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(f64::NAN))
                    .collect(),
            ),
        );
    }
    if column.iter().all(|v| v.is_string()) {
        return tensor(
            vec![rows],
            TensorData::Bytes(
                column
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().as_bytes().to_vec())
                    .collect(),
            ),
        );
    }
    let arrays: Option<Vec<&Vec<Value>>> = column.iter().map(|v| v.as_array()).collect();
    if let Some(arrays) = arrays {
        let k = arrays.first().map_or(0, |a| a.len());
        let numbers = arrays
            .iter()
            .all(|a| a.len() == k && a.iter().all(Value::is_number));
        if numbers && k > 0 {
            let flat = arrays.iter().flat_map(|a| a.iter());
            return if arrays.iter().all(|a| a.iter().all(Value::is_i64)) {
                tensor(
                    vec![rows, k],
                    TensorData::Int64(flat.filter_map(Value::as_i64).collect()),
                )
            } else {
                tensor(
                    vec![rows, k],
                    TensorData::Fp64(flat.map(|v| v.as_f64().unwrap_or(f64::NAN)).collect()),
                )
            };
        }
    }
    tensor(
        vec![rows],
        TensorData::Bytes(column.iter().map(|v| v.to_string().into_bytes()).collect()),
    )
}

pub fn stats_message(s: stats::ModelStats) -> ModelStatistics {
    let d = |d: stats::Duration| {
        Some(StatisticDuration {
            count: d.count,
            ns: d.ns,
        })
    };
    let i = s.inference_stats;
    ModelStatistics {
        name: s.name,
        version: s.version,
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(InferStatistics {
            success: d(i.success),
            fail: d(i.fail),
            queue: d(i.queue),
            compute_input: d(i.compute_input),
            compute_infer: d(i.compute_infer),
            compute_output: d(i.compute_output),
            cache_hit: d(i.cache_hit),
            cache_miss: d(i.cache_miss),
        }),
        ..ModelStatistics::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::proto::model_infer_request::InferInputTensor;

    fn input(
        name: &str,
        datatype: &str,
        shape: &[i64],
        c: InferTensorContents,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: HashMap::new(),
            contents: Some(c),
        }
    }

    #[test]
    fn raw_and_typed_inputs_decode_to_the_same_tensor() {
        let values = [1.5f32, -2.0, 0.25, 8.0];
        let typed_request = ModelInferRequest {
            inputs: vec![input(
                "X",
                "FP32",
                &[2, 2],
                InferTensorContents {
                    fp32_contents: values.to_vec(),
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        let mut raw_request = typed_request.clone();
        raw_request.inputs[0].contents = None;
        raw_request.raw_input_contents =
            vec![values.iter().flat_map(|x| x.to_le_bytes()).collect()];
        let a = decode_inputs(&typed_request).unwrap();
        let b = decode_inputs(&raw_request).unwrap();
        assert_eq!(a[0].data, TensorData::Fp32(values.to_vec()));
        assert_eq!(a[0].data, b[0].data);
        assert_eq!(a[0].shape, vec![2, 2]);
    }

    #[test]
    fn inputs_in_the_wrong_field_or_count_are_errors_that_say_so() {
        let wrong_field = ModelInferRequest {
            inputs: vec![input(
                "X",
                "FP32",
                &[1],
                InferTensorContents {
                    int_contents: vec![1],
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        let e = decode_inputs(&wrong_field).unwrap_err();
        assert!(e.to_string().contains("fp32_contents"), "{e}");
        assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument);

        let mut missing_raw = wrong_field.clone();
        missing_raw.inputs[0].contents = None;
        missing_raw.raw_input_contents = vec![vec![0; 4], vec![0; 4]];
        let e = decode_inputs(&missing_raw).unwrap_err();
        assert!(e.to_string().contains("2 entries"), "{e}");

        let mut short = wrong_field.clone();
        short.inputs[0].contents = None;
        short.raw_input_contents = vec![vec![0; 3]];
        assert!(decode_inputs(&short).is_err());

        let mut int8 = wrong_field;
        int8.inputs[0].datatype = "INT8".into();
        int8.inputs[0].contents = Some(InferTensorContents {
            int_contents: vec![300],
            ..Default::default()
        });
        let e = decode_inputs(&int8).unwrap_err();
        assert!(e.to_string().contains("300 does not fit INT8"), "{e}");
    }

    #[test]
    fn endpoint_rows_take_one_field_per_input_and_rows_from_the_first_dimension() {
        let request = ModelInferRequest {
            inputs: vec![
                input(
                    "user_id",
                    "BYTES",
                    &[2],
                    InferTensorContents {
                        bytes_contents: vec![b"u1".to_vec(), b"u2".to_vec()],
                        ..Default::default()
                    },
                ),
                input(
                    "amount",
                    "FP64",
                    &[2],
                    InferTensorContents {
                        fp64_contents: vec![12.5, 3.0],
                        ..Default::default()
                    },
                ),
                input(
                    "v",
                    "INT64",
                    &[2, 2],
                    InferTensorContents {
                        int64_contents: vec![1, 2, 3, 4],
                        ..Default::default()
                    },
                ),
            ],
            ..Default::default()
        };
        let rows = endpoint_rows(&request).unwrap();
        assert_eq!(
            Value::Array(rows.into_iter().map(Value::Object).collect()),
            serde_json::json!([
                {"user_id": "u1", "amount": 12.5, "v": [1, 2]},
                {"user_id": "u2", "amount": 3.0, "v": [3, 4]},
            ])
        );
        let mut ragged = request.clone();
        ragged.inputs[1].shape = vec![1];
        ragged.inputs[1].contents = Some(InferTensorContents {
            fp64_contents: vec![1.0],
            ..Default::default()
        });
        let e = endpoint_rows(&ragged).unwrap_err();
        assert!(e.to_string().contains("first dimension"), "{e}");
    }

    #[test]
    fn prediction_fields_become_the_narrowest_exact_tensor() {
        use serde_json::json;
        let col = |vs: &[Value]| column_tensor("c", &vs.iter().collect::<Vec<_>>());
        assert_eq!(
            col(&[json!(1), json!(2)]).data,
            TensorData::Int64(vec![1, 2])
        );
        assert_eq!(
            col(&[json!(1), json!(0.5)]).data,
            TensorData::Fp64(vec![1.0, 0.5])
        );
        let probs = col(&[json!([0.1, 0.9]), json!([0.7, 0.3])]);
        assert_eq!(probs.shape, vec![2, 2]);
        assert_eq!(probs.data, TensorData::Fp64(vec![0.1, 0.9, 0.7, 0.3]));
        assert_eq!(
            col(&[json!("a"), json!("b")]).data,
            TensorData::Bytes(vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert_eq!(
            col(&[json!({"a": 1}), json!(null)]).data,
            TensorData::Bytes(vec![b"{\"a\":1}".to_vec(), b"null".to_vec()])
        );
    }
}
