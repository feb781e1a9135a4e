//! The signature an ONNX graph declares (graph inputs that are not initializers, graph
//! outputs, their element types and shapes), for model files that come without a model.yaml:
//! `ferry serve --model-dir` (KServe's `/mnt/models`) and `ferry models push`.

use crate::{DataType, Signature, TensorSpec};
use std::path::Path;
use tract_onnx::pb::tensor_proto::DataType as PbType;
use tract_onnx::pb::type_proto::Value as TypeValue;
use tract_onnx::pb::{ValueInfoProto, tensor_shape_proto::dimension::Value as Dim};

/// Why a graph's signature cannot be read; the message names the input or output.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct OnnxSignatureError {
    pub path: String,
    pub message: String,
}

/// Reads the signature of the ONNX model at `path`. A named dimension (`N`, `batch_size`) or
/// one without a value is variable (-1).
pub fn onnx_graph_signature(path: &Path) -> Result<Signature, OnnxSignatureError> {
    use tract_onnx::prelude::Framework;
    let err = |message: String| OnnxSignatureError {
        path: path.display().to_string(),
        message,
    };
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| err(format!("not a readable ONNX model: {e:#}")))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| err("the model has no graph".into()))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name.as_str()))
        .map(|v| spec(v, "input").map_err(&err))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = graph
        .output
        .iter()
        .map(|v| spec(v, "output").map_err(&err))
        .collect::<Result<Vec<_>, _>>()?;
    if inputs.is_empty() || outputs.is_empty() {
        return Err(err("the graph declares no inputs or no outputs".into()));
    }
    Ok(Signature { inputs, outputs })
}

fn spec(value: &ValueInfoProto, role: &str) -> Result<TensorSpec, String> {
    let name = &value.name;
    let tensor = match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t,
        _ => {
            return Err(format!(
                "{role} `{name}` is not a tensor (a sequence or map, e.g. skl2onnx's ZipMap \
                 output): convert with `options={{id(model): {{'zipmap': False}}}}`, or write a \
                 model.yaml naming tensor outputs"
            ));
        }
    };
    let datatype = match PbType::try_from(tensor.elem_type) {
        Ok(PbType::Float) => DataType::Fp32,
        Ok(PbType::Double) => DataType::Fp64,
        Ok(PbType::Int64) => DataType::Int64,
        Ok(PbType::Int32) => DataType::Int32,
        Ok(PbType::Int16) => DataType::Int16,
        Ok(PbType::Int8) => DataType::Int8,
        Ok(PbType::Uint8) => DataType::Uint8,
        Ok(PbType::Uint16) => DataType::Uint16,
        Ok(PbType::Uint32) => DataType::Uint32,
        Ok(PbType::Uint64) => DataType::Uint64,
        Ok(PbType::Bool) => DataType::Bool,
        Ok(PbType::String) => DataType::Bytes,
        other => {
            return Err(format!(
                "{role} `{name}` has ONNX element type {other:?}, which ferry does not serve"
            ));
        }
    };
    let shape = match &tensor.shape {
        Some(shape) => shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Dim::DimValue(v)) if v > 0 => v,
                _ => -1,
            })
            .collect(),
        None => {
            return Err(format!(
                "{role} `{name}` declares no shape: write a model.yaml with its shape"
            ));
        }
    };
    Ok(TensorSpec {
        name: name.clone(),
        datatype,
        shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_demo_churn_graph() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../server/demo/registry/churn/1/model.onnx");
        let s = onnx_graph_signature(&path).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(path.with_file_name("model.yaml")).unwrap(),
        )
        .unwrap();
        let declared: Signature = Signature {
            inputs: serde_json::from_value(manifest["inputs"].clone()).unwrap(),
            outputs: serde_json::from_value(manifest["outputs"].clone()).unwrap(),
        };
        assert_eq!(s, declared);
    }

    #[test]
    fn garbage_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, b"not onnx at all").unwrap();
        let e = onnx_graph_signature(&path).unwrap_err().to_string();
        assert!(
            e.contains("model.onnx") && e.contains("not a readable ONNX model"),
            "{e}"
        );
    }
}
