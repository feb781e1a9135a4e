//! Reads the few fields of an ONNX model file that a registry needs when no `model.yaml`
//! describes it (MLflow versions): the graph's input and output tensors, and the external data
//! files its tensors live in (`onnx.save_model(..., save_as_external_data=True)`, which
//! `mlflow.onnx.log_model` does by default).
//!
//! The messages below declare only those fields of `onnx.proto` (same field numbers); prost
//! skips every other field, so weights are never copied out of the file's bytes.

use ferry_runtimes::{DataType, Signature, TensorSpec};
use prost::Message;
use std::collections::{BTreeSet, HashSet};

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

/// Node attributes can hold tensors (constants, which may be external too) and subgraphs
/// (`If`, `Loop`, `Scan` bodies) with initializers of their own.
#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(message, optional, tag = "5")]
    t: Option<TensorProto>,
    #[prost(message, optional, boxed, tag = "6")]
    g: Option<Box<GraphProto>>,
    #[prost(message, repeated, tag = "10")]
    tensors: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    graphs: Vec<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(string, tag = "8")]
    name: String,
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<StringStringEntryProto>,
    /// 1 = EXTERNAL.
    #[prost(int32, tag = "14")]
    data_location: i32,
}

#[derive(Clone, PartialEq, Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TypeTensor>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeTensor {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    /// Unset (symbolic `dim_param` or unknown) means a variable size.
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
}

const EXTERNAL: i32 = 1;

/// What ferry needs to know about an ONNX file.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxInfo {
    /// The graph's inputs (initializers excluded) and outputs, as OIP tensors.
    pub signature: Result<Signature, String>,
    /// Files the tensors' external data live in, relative to the model file's directory.
    pub external_files: BTreeSet<String>,
}

/// Parses an ONNX model file's bytes; `Err` when they are not an ONNX model.
pub(crate) fn inspect(bytes: &[u8]) -> Result<OnnxInfo, String> {
    let model = ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model ({e})"))?;
    let graph = model
        .graph
        .ok_or_else(|| "not an ONNX model (it has no graph)".to_string())?;
    let mut external_files = BTreeSet::new();
    collect_external(&graph, &mut external_files);
    Ok(OnnxInfo {
        signature: signature(&graph),
        external_files,
    })
}

/// The signature (or why there is none) and external data files of the ONNX model at `path`,
/// read without an engine: for plain model files that come without a model.yaml
/// (`ferry serve --model-dir`, KServe's `/mnt/models`).
/// `Err` when the file cannot be read or is not an ONNX model.
pub fn onnx_file_info(path: &std::path::Path) -> Result<OnnxInfo, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut info = inspect(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    info.signature = info
        .signature
        .map_err(|e| format!("{}: {e}", path.display()));
    Ok(info)
}

fn collect_external(graph: &GraphProto, out: &mut BTreeSet<String>) {
    let mut tensor = |t: &TensorProto| {
        if t.data_location == EXTERNAL
            && let Some(entry) = t.external_data.iter().find(|e| e.key == "location")
        {
            out.insert(entry.value.clone());
        }
    };
    graph.initializer.iter().for_each(&mut tensor);
    let mut subgraphs = Vec::new();
    for attribute in graph.node.iter().flat_map(|n| &n.attribute) {
        attribute.t.iter().for_each(&mut tensor);
        attribute.tensors.iter().for_each(&mut tensor);
        subgraphs.extend(attribute.g.as_deref());
        subgraphs.extend(&attribute.graphs);
    }
    for sub in subgraphs {
        collect_external(sub, out);
    }
}

fn signature(graph: &GraphProto) -> Result<Signature, String> {
    // Before IR version 4, every initializer was also listed as a graph input.
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .map(|i| tensor_spec("input", i))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = graph
        .output
        .iter()
        .map(|o| tensor_spec("output", o))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Signature {
        outputs: batch_first_outputs(&inputs, outputs),
        inputs,
    })
}

/// When every input is batch-first (a variable first dimension), an output whose first
/// dimension is the fixed size 1 answers one row per input row too: onnxmltools' LightGBM
/// converter declares `label` as `[1]` whatever the batch, and onnxruntime returns `[rows]`
/// (logging that the graph's shape is wrong). Taken literally, `[1]` would fail every batch of
/// more than one row.
fn batch_first_outputs(inputs: &[TensorSpec], mut outputs: Vec<TensorSpec>) -> Vec<TensorSpec> {
    let batched = !inputs.is_empty() && inputs.iter().all(|i| i.shape.first() == Some(&-1));
    if batched {
        for output in &mut outputs {
            if output.shape.first() == Some(&1) {
                output.shape[0] = -1;
            }
        }
    }
    outputs
}

fn tensor_spec(kind: &str, value: &ValueInfoProto) -> Result<TensorSpec, String> {
    let Some(tensor) = value.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) else {
        return Err(format!(
            "the graph's {kind} `{}` is not a tensor (a sequence or map, such as the ZipMap output of a scikit-learn classifier); ferry serves tensors: export with skl2onnx options={{'zipmap': False}}",
            value.name
        ));
    };
    let datatype = onnx_datatype(tensor.elem_type).ok_or_else(|| {
        format!(
            "the graph's {kind} `{}` has ONNX element type {}, which ferry does not serve",
            value.name, tensor.elem_type
        )
    })?;
    let shape = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| d.dim_value.filter(|v| *v >= 0).unwrap_or(-1))
                .collect()
        })
        .unwrap_or_default();
    Ok(TensorSpec {
        name: value.name.clone(),
        datatype,
        shape,
    })
}

/// `TensorProto.DataType` → OIP datatype.
fn onnx_datatype(elem_type: i32) -> Option<DataType> {
    Some(match elem_type {
        1 => DataType::Fp32,
        2 => DataType::Uint8,
        3 => DataType::Int8,
        4 => DataType::Uint16,
        5 => DataType::Int16,
        6 => DataType::Int32,
        7 => DataType::Int64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        11 => DataType::Fp64,
        12 => DataType::Uint32,
        13 => DataType::Uint64,
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn value(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeTensor {
                    elem_type,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&dim_value| Dimension { dim_value })
                            .collect(),
                    }),
                }),
            }),
        }
    }

    fn external(name: &str, location: &str) -> TensorProto {
        TensorProto {
            name: name.into(),
            external_data: vec![StringStringEntryProto {
                key: "location".into(),
                value: location.into(),
            }],
            data_location: EXTERNAL,
        }
    }

    /// An ONNX file's bytes: input `X` FP32 [N, 4] (plus an initializer that IR < 4 lists as
    /// an input too), outputs `label` INT64 [N] and `probabilities` FP32 [N, 2]; `coef` lives
    /// in `weights.data`, a subgraph constant in `sub.data`.
    pub(crate) fn sample_model() -> Vec<u8> {
        let sub = GraphProto {
            initializer: vec![external("c", "sub.data")],
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    attribute: vec![AttributeProto {
                        g: Some(Box::new(sub)),
                        ..Default::default()
                    }],
                }],
                initializer: vec![
                    external("coef", "weights.data"),
                    TensorProto {
                        name: "bias".into(),
                        ..Default::default()
                    },
                ],
                input: vec![
                    value("X", 1, &[None, Some(4)]),
                    value("bias", 1, &[Some(2)]),
                ],
                output: vec![
                    value("label", 7, &[None]),
                    value("probabilities", 1, &[None, Some(2)]),
                ],
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn reads_signature_and_external_files() {
        let info = inspect(&sample_model()).unwrap();
        let sig = info.signature.unwrap();
        assert_eq!(sig.inputs.len(), 1, "initializers are not inputs");
        assert_eq!(sig.inputs[0].name, "X");
        assert_eq!(sig.inputs[0].datatype, DataType::Fp32);
        assert_eq!(sig.inputs[0].shape, vec![-1, 4]);
        assert_eq!(sig.outputs[0].datatype, DataType::Int64);
        assert_eq!(sig.outputs[1].shape, vec![-1, 2]);
        assert_eq!(
            info.external_files.into_iter().collect::<Vec<_>>(),
            vec!["sub.data".to_string(), "weights.data".to_string()]
        );
    }

    #[test]
    fn a_fixed_first_dimension_of_1_on_a_batched_graph_is_the_batch() {
        let graph = |input: &[Option<i64>]| ModelProto {
            graph: Some(GraphProto {
                input: vec![value("input", 1, input)],
                output: vec![
                    value("label", 7, &[Some(1)]),
                    value("probabilities", 1, &[None, Some(2)]),
                    value("pair", 1, &[Some(2)]),
                ],
                ..Default::default()
            }),
        };
        let sig = inspect(&graph(&[None, Some(50)]).encode_to_vec())
            .unwrap()
            .signature
            .unwrap();
        let shapes: Vec<_> = sig.outputs.iter().map(|o| o.shape.clone()).collect();
        assert_eq!(shapes, vec![vec![-1], vec![-1, 2], vec![2]]);
        // A graph for exactly one row keeps its [1].
        let sig = inspect(&graph(&[Some(1), Some(50)]).encode_to_vec())
            .unwrap()
            .signature
            .unwrap();
        assert_eq!(sig.outputs[0].shape, vec![1]);
    }

    #[test]
    fn refuses_what_is_not_onnx_and_explains_maps() {
        assert!(inspect(b"this is a pickle, not ONNX").is_err());
        assert!(inspect(&[]).is_err(), "an empty file has no graph");
        let zipmap = ModelProto {
            graph: Some(GraphProto {
                input: vec![value("X", 1, &[None, Some(4)])],
                output: vec![ValueInfoProto {
                    name: "output_probability".into(),
                    r#type: Some(TypeProto { tensor_type: None }),
                }],
                ..Default::default()
            }),
        };
        let err = inspect(&zipmap.encode_to_vec())
            .unwrap()
            .signature
            .unwrap_err();
        assert!(err.contains("zipmap"), "{err}");
        let fp16 = ModelProto {
            graph: Some(GraphProto {
                input: vec![value("X", 10, &[None])],
                output: vec![value("y", 1, &[None])],
                ..Default::default()
            }),
        };
        let err = inspect(&fp16.encode_to_vec())
            .unwrap()
            .signature
            .unwrap_err();
        assert!(err.contains("element type 10"), "{err}");
    }
}
