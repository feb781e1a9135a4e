//! Open Inference Protocol v2 wire format: JSON tensors and the binary tensor extension
//! (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`,
//! `binary_data_output`). Every length and count a client sends is checked against the bytes
//! actually received before anything is allocated from it.

use crate::http::error::ApiError;
use ferry_pipeline::json_tensor::decode_json;
use ferry_runtimes::{DataType, Tensor, TensorData, element_count};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Deserialize)]
pub struct InferRequest<'a> {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    pub inputs: Vec<InputWire<'a>>,
    #[serde(default)]
    pub outputs: Option<Vec<OutputWire>>,
}

#[derive(Debug, Deserialize)]
pub struct InputWire<'a> {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct OutputWire {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// Splits a body into its JSON header and binary tail.
pub fn split_body<'a>(
    body: &'a [u8],
    header_length: Option<&str>,
) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    let Some(raw) = header_length else {
        return Ok((body, &[]));
    };
    let n: usize = raw.trim().parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "header Inference-Header-Content-Length must be a byte count, got {raw:?}"
        ))
    })?;
    if n > body.len() {
        return Err(ApiError::BadRequest(format!(
            "header Inference-Header-Content-Length says the JSON part is {n} bytes but the body has only {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(n))
}

pub fn parse_request(json: &[u8]) -> Result<InferRequest<'_>, ApiError> {
    serde_json::from_slice(json).map_err(|e| {
        ApiError::BadRequest(format!(
            "the request is not a valid inference request: {e}; expected {{\"inputs\": [{{\"name\", \"shape\", \"datatype\", \"data\"}}]}}"
        ))
    })
}

fn bool_param(params: &Option<Map<String, Value>>, key: &str) -> Result<Option<bool>, ApiError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::BadRequest(format!(
            "parameter `{key}` must be true or false, got {other}"
        ))),
    }
}

/// Decodes every input, consuming `binary` in input order.
pub fn decode_inputs(request: &InferRequest<'_>, binary: &[u8]) -> Result<Vec<Tensor>, ApiError> {
    let mut offset = 0usize;
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        tensors.push(decode_input(input, binary, &mut offset)?);
    }
    if offset != binary.len() {
        return Err(ApiError::BadRequest(format!(
            "the body has {} bytes of binary data after the JSON header but the inputs' binary_data_size add up to {offset}",
            binary.len()
        )));
    }
    Ok(tensors)
}

fn decode_input(
    input: &InputWire<'_>,
    binary: &[u8],
    offset: &mut usize,
) -> Result<Tensor, ApiError> {
    let name = &input.name;
    let bad = |m: String| ApiError::BadRequest(format!("input `{name}`: {m}"));
    let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
        bad(format!(
            "unsupported datatype {:?}; use one of {}",
            input.datatype,
            DataType::ALL.map(|d| d.as_str()).join(", ")
        ))
    })?;
    let mut shape = Vec::with_capacity(input.shape.len());
    for &d in &input.shape {
        if d < 0 {
            return Err(bad(format!(
                "shape {:?} has a negative dimension",
                input.shape
            )));
        }
        shape.push(usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large")))?);
    }
    let count = element_count(&shape)
        .ok_or_else(|| bad(format!("shape {:?} has too many elements", input.shape)))?;
    let binary_size = match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            bad(format!(
                "parameter binary_data_size must be a byte count, got {v}"
            ))
        })?),
    };
    let data = match (binary_size, &input.data) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "has both `data` and binary_data_size; send one of them".into(),
            ));
        }
        (None, None) => {
            return Err(bad(
                "has no `data` (and no binary_data_size parameter)".into()
            ));
        }
        (Some(size), None) => {
            let available = binary.len() - *offset;
            let size = usize::try_from(size)
                .ok()
                .filter(|&s| s <= available)
                .ok_or_else(|| {
                    bad(format!(
                        "binary_data_size is {size} but only {available} bytes of binary data remain in the body"
                    ))
                })?;
            let bytes = &binary[*offset..*offset + size];
            *offset += size;
            decode_binary(datatype, bytes, count).map_err(bad)?
        }
        (None, Some(data)) => {
            let mut de = serde_json::Deserializer::from_str(data.get());
            decode_json(datatype, &mut de, count).map_err(bad)?
        }
    };
    Tensor::new(name.clone(), shape, data).map_err(|e| bad(e.to_string()))
}

pub(crate) fn decode_binary(
    datatype: DataType,
    bytes: &[u8],
    count: usize,
) -> Result<TensorData, String> {
    let Some(size) = datatype.fixed_size() else {
        // BYTES: each element is a 4-byte little-endian length, then that many bytes.
        let mut items = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            if items.len() == count {
                return Err(format!(
                    "binary BYTES data holds more than the {count} elements of the shape"
                ));
            }
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or("binary BYTES data ends inside an element's 4-byte length prefix")?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > tail.len() {
                return Err(format!(
                    "a BYTES element claims {len} bytes but only {} remain",
                    tail.len()
                ));
            }
            items.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        if items.len() != count {
            return Err(format!(
                "binary BYTES data holds {} elements but the shape needs {count}",
                items.len()
            ));
        }
        return Ok(TensorData::Bytes(items));
    };
    let expected = count.checked_mul(size);
    if expected != Some(bytes.len()) {
        return Err(format!(
            "binary_data_size is {} bytes but shape and datatype {datatype} need {}",
            bytes.len(),
            expected.map_or("more than usize::MAX".into(), |n| n.to_string())
        ));
    }
    macro_rules! le {
        ($t:ty, $variant:ident) => {
            TensorData::$variant(
                bytes
                    .chunks_exact(size)
                    .map(|c| {
                        <$t>::from_le_bytes(
                            c.try_into().expect("chunk size matches. This is a bug."),
                        )
                    })
                    .collect(),
            )
        };
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(
            bytes
                .iter()
                .map(|&b| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    other => Err(format!(
                        "binary BOOL elements are bytes 0 or 1, found {other}"
                    )),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
        DataType::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
        DataType::Uint16 => le!(u16, Uint16),
        DataType::Uint32 => le!(u32, Uint32),
        DataType::Uint64 => le!(u64, Uint64),
        DataType::Int16 => le!(i16, Int16),
        DataType::Int32 => le!(i32, Int32),
        DataType::Int64 => le!(i64, Int64),
        DataType::Fp32 => le!(f32, Fp32),
        DataType::Fp64 => le!(f64, Fp64),
        DataType::Bytes => unreachable!("BYTES has no fixed size. This is a bug."),
    })
}

/// Which outputs to return, and whether each goes in the binary tail.
pub fn select_outputs(
    request: &InferRequest<'_>,
    available: &[String],
) -> Result<Vec<(usize, bool)>, ApiError> {
    let default_binary = bool_param(&request.parameters, "binary_data_output")?.unwrap_or(false);
    match &request.outputs {
        None => Ok((0..available.len()).map(|i| (i, default_binary)).collect()),
        Some(wanted) => wanted
            .iter()
            .map(|o| {
                let ix = available.iter().position(|n| *n == o.name).ok_or_else(|| {
                    ApiError::InvalidInput(format!(
                        "unknown output `{}` requested; this model's outputs are {available:?}",
                        o.name
                    ))
                })?;
                let binary = bool_param(&o.parameters, "binary_data")?.unwrap_or(default_binary);
                Ok((ix, binary))
            })
            .collect(),
    }
}

struct JsonData<'a>(&'a TensorData);

impl Serialize for JsonData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::Bool(v) => v.serialize(s),
            TensorData::Uint8(v) => v.serialize(s),
            TensorData::Uint16(v) => v.serialize(s),
            TensorData::Uint32(v) => v.serialize(s),
            TensorData::Uint64(v) => v.serialize(s),
            TensorData::Int8(v) => v.serialize(s),
            TensorData::Int16(v) => v.serialize(s),
            TensorData::Int32(v) => v.serialize(s),
            TensorData::Int64(v) => v.serialize(s),
            TensorData::Fp32(v) => v.serialize(s),
            TensorData::Fp64(v) => v.serialize(s),
            TensorData::Bytes(v) => s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputTensor<'a>>,
}

pub(crate) fn append_binary(out: &mut Vec<u8>, data: &TensorData) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Int8(v) => out.extend(v.iter().map(|&b| b as u8)),
        TensorData::Uint16(v) => le!(v),
        TensorData::Uint32(v) => le!(v),
        TensorData::Uint64(v) => le!(v),
        TensorData::Int16(v) => le!(v),
        TensorData::Int32(v) => le!(v),
        TensorData::Int64(v) => le!(v),
        TensorData::Fp32(v) => le!(v),
        TensorData::Fp64(v) => le!(v),
        TensorData::Bytes(v) => {
            for item in v {
                out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                out.extend_from_slice(item);
            }
        }
    }
}

/// An encoded response body; `json_length` is set when a binary tail follows the JSON.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_length: Option<usize>,
}

pub fn encode_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[Tensor],
    selected: &[(usize, bool)],
) -> EncodedResponse {
    let mut binary = Vec::new();
    let mut wire = Vec::with_capacity(selected.len());
    for &(ix, as_binary) in selected {
        let t = &outputs[ix];
        let (parameters, data) = if as_binary {
            let start = binary.len();
            append_binary(&mut binary, &t.data);
            (
                Some(BinaryParams {
                    binary_data_size: binary.len() - start,
                }),
                None,
            )
        } else {
            (None, Some(JsonData(&t.data)))
        };
        wire.push(OutputTensor {
            name: &t.name,
            datatype: t.datatype().as_str(),
            shape: &t.shape,
            parameters,
            data,
        });
    }
    let response = InferResponse {
        model_name: model,
        model_version: version.to_string(),
        id,
        outputs: wire,
    };
    let mut body =
        serde_json::to_vec(&response).expect("responses serialize to JSON. This is a bug.");
    if selected.iter().any(|&(_, b)| b) {
        let json_length = body.len();
        body.extend_from_slice(&binary);
        EncodedResponse {
            body,
            json_length: Some(json_length),
        }
    } else {
        EncodedResponse {
            body,
            json_length: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> InputWire<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn decodes_flat_and_nested_json() {
        let mut off = 0;
        let flat = decode_input(
            &input(r#"{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]}"#),
            &[],
            &mut off,
        )
        .unwrap();
        let nested = decode_input(
            &input(r#"{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}"#),
            &[],
            &mut off,
        )
        .unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.5]));
    }

    #[test]
    fn json_mistakes_are_named() {
        let cases = [
            (
                r#"{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}"#,
                "has 2 elements but the shape needs 3",
            ),
            (
                r#"{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}"#,
                "more than the 1 elements",
            ),
            (
                r#"{"name":"x","shape":[1],"datatype":"INT32","data":[3000000000]}"#,
                "not a INT32 value",
            ),
            (
                r#"{"name":"x","shape":[1],"datatype":"INT64","data":[1.5]}"#,
                "not a INT64 value",
            ),
            (
                r#"{"name":"x","shape":[1],"datatype":"BOOL","data":[1]}"#,
                "not a BOOL value",
            ),
            (
                r#"{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}"#,
                "not a FP32 value",
            ),
            (
                r#"{"name":"x","shape":[1],"datatype":"FP16","data":[1]}"#,
                "unsupported datatype",
            ),
            (
                r#"{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}"#,
                "negative dimension",
            ),
            (
                r#"{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[1]}"#,
                "too many elements",
            ),
            (
                r#"{"name":"x","shape":[1],"datatype":"FP32"}"#,
                "has no `data`",
            ),
        ];
        for (json, needle) in cases {
            let err = decode_input(&input(json), &[], &mut 0)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle) && err.contains("input `x`"),
                "{needle:?} not in {err:?}"
            );
        }
    }

    #[test]
    fn binary_round_trips_every_fixed_type_and_bytes() {
        let tensors = [
            Tensor::new("a", vec![2], TensorData::Fp32(vec![1.5, -2.0])).unwrap(),
            Tensor::new("b", vec![2], TensorData::Int64(vec![i64::MIN, 7])).unwrap(),
            Tensor::new("c", vec![3], TensorData::Bool(vec![true, false, true])).unwrap(),
            Tensor::new(
                "d",
                vec![2],
                TensorData::Bytes(vec![b"hi".to_vec(), vec![]]),
            )
            .unwrap(),
            Tensor::new("e", vec![1], TensorData::Fp64(vec![0.1])).unwrap(),
            Tensor::new("f", vec![1], TensorData::Int32(vec![-3])).unwrap(),
        ];
        let selected: Vec<_> = (0..tensors.len()).map(|i| (i, true)).collect();
        let encoded = encode_response("m", 1, None, &tensors, &selected);
        let json_len = encoded.json_length.unwrap();
        let header: Value = serde_json::from_slice(&encoded.body[..json_len]).unwrap();
        let mut off = 0;
        for (i, t) in tensors.iter().enumerate() {
            let out = &header["outputs"][i];
            let wire = InputWire {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                datatype: out["datatype"].as_str().unwrap().into(),
                parameters: Some(out["parameters"].as_object().unwrap().clone()),
                data: None,
            };
            assert_eq!(
                &decode_input(&wire, &encoded.body[json_len..], &mut off).unwrap(),
                t
            );
        }
        assert_eq!(off, encoded.body.len() - json_len);
    }

    #[test]
    fn lying_binary_sizes_are_refused_without_allocating() {
        let wire = |size: u64, shape: i64, dt: &str| InputWire {
            name: "x".into(),
            shape: vec![shape],
            datatype: dt.into(),
            parameters: Some(
                serde_json::from_str(&format!(r#"{{"binary_data_size":{size}}}"#)).unwrap(),
            ),
            data: None,
        };
        let body = [0u8; 8];
        let err = |w: InputWire| decode_input(&w, &body, &mut 0).unwrap_err().to_string();
        assert!(err(wire(u64::MAX, 2, "FP32")).contains("only 8 bytes"));
        assert!(err(wire(8, 3, "FP32")).contains("need 12"));
        assert!(err(wire(8, 1 << 62, "FP64")).contains("need"));
        let bools = [0u8, 1, 2];
        let w = InputWire {
            parameters: Some(serde_json::from_str(r#"{"binary_data_size":3}"#).unwrap()),
            ..wire(0, 3, "BOOL")
        };
        assert!(
            decode_input(&w, &bools, &mut 0)
                .unwrap_err()
                .to_string()
                .contains("0 or 1")
        );
        // BYTES element claiming more than is there.
        let bytes_body = [255u8, 255, 255, 255, 1];
        let w = InputWire {
            parameters: Some(serde_json::from_str(r#"{"binary_data_size":5}"#).unwrap()),
            ..wire(0, 1, "BYTES")
        };
        assert!(
            decode_input(&w, &bytes_body, &mut 0)
                .unwrap_err()
                .to_string()
                .contains("claims")
        );
    }

    #[test]
    fn header_length_beyond_body_is_refused() {
        assert!(split_body(b"{}", Some("10")).is_err());
        assert!(split_body(b"{}", Some("x")).is_err());
        assert_eq!(
            split_body(b"{}ab", Some("2")).unwrap(),
            (&b"{}"[..], &b"ab"[..])
        );
    }

    #[test]
    fn leftover_binary_is_refused() {
        let req =
            parse_request(br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#)
                .unwrap();
        assert!(
            decode_inputs(&req, b"junk")
                .unwrap_err()
                .to_string()
                .contains("binary data")
        );
    }

    #[test]
    fn deep_json_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let body =
            format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":{deep}}}]}}"#);
        let decoded = parse_request(body.as_bytes()).and_then(|r| decode_inputs(&r, &[]));
        assert!(decoded.is_err());
    }
}
