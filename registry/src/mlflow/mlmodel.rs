//! The `MLmodel` file at the root of an MLflow model's artifacts: which file holds the ONNX
//! graph (`flavors.onnx.data`) and, when the model was logged with one, its signature.

use ferry_runtimes::{DataType, Signature, TensorSpec};
use serde_yaml::Value;

pub(crate) const MLMODEL_FILE: &str = "MLmodel";

/// What ferry reads from `MLmodel`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MlModel {
    /// `flavors.onnx.data`: the ONNX file, relative to the artifact root.
    pub onnx_data: String,
    /// The logged signature when it names every tensor (what an ONNX graph needs); otherwise
    /// why it cannot be used, and the graph's own signature is served.
    pub signature: Result<Signature, String>,
}

/// Parses `MLmodel`; `Err` names the key at fault (no ONNX flavor, no `data`).
pub(crate) fn parse(text: &str) -> Result<MlModel, String> {
    let doc: Value =
        serde_yaml::from_str(text).map_err(|e| format!("{MLMODEL_FILE} is not YAML: {e}"))?;
    let flavors = doc
        .get("flavors")
        .and_then(Value::as_mapping)
        .ok_or_else(|| format!("{MLMODEL_FILE} has no `flavors` mapping"))?;
    let Some(onnx) = flavors.get("onnx") else {
        let names: Vec<&str> = flavors.keys().filter_map(Value::as_str).collect();
        return Err(format!(
            "it is not an ONNX model: {MLMODEL_FILE} lists the flavors {names:?} but no `onnx`; ferry serves MLflow models logged with mlflow.onnx.log_model"
        ));
    };
    let onnx_data = onnx
        .get("data")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| format!("{MLMODEL_FILE} `flavors.onnx.data` must name the ONNX file"))?
        .to_string();
    let signature = match doc.get("signature") {
        None | Some(Value::Null) => Err("MLmodel has no signature".to_string()),
        Some(sig) => parse_signature(sig),
    };
    Ok(MlModel {
        onnx_data,
        signature,
    })
}

/// `signature: {inputs: '<JSON list>', outputs: '<JSON list>'}` → a tensor signature, when
/// it is tensor-based and names each tensor (a column-based or unnamed signature describes
/// the pyfunc wrapper, not the graph's tensors).
fn parse_signature(sig: &Value) -> Result<Signature, String> {
    let list = |key: &str| -> Result<Vec<TensorSpec>, String> {
        let text = sig
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("MLmodel `signature.{key}` is missing"))?;
        let items: Vec<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| format!("MLmodel `signature.{key}` is not a JSON list: {e}"))?;
        if items.is_empty() {
            return Err(format!("MLmodel `signature.{key}` is empty"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| tensor_spec(key, i, item))
            .collect()
    };
    Ok(Signature {
        inputs: list("inputs")?,
        outputs: list("outputs")?,
    })
}

fn tensor_spec(key: &str, i: usize, item: &serde_json::Value) -> Result<TensorSpec, String> {
    let at = format!("MLmodel `signature.{key}[{i}]`");
    if item.get("type").and_then(|t| t.as_str()) != Some("tensor") {
        return Err(format!("{at} is a column, not a tensor"));
    }
    let name = item
        .get("name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{at} has no name"))?;
    let spec = item
        .get("tensor-spec")
        .ok_or_else(|| format!("{at} has no `tensor-spec`"))?;
    let dtype = spec.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
    let datatype = numpy_datatype(dtype)
        .ok_or_else(|| format!("{at} has dtype {dtype:?}, which ferry does not serve"))?;
    let shape = spec
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| format!("{at} has no `tensor-spec.shape`"))?
        .iter()
        .map(|d| d.as_i64().filter(|d| *d >= -1))
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| format!("{at} has a shape that is not a list of sizes or -1"))?;
    Ok(TensorSpec {
        name: name.to_string(),
        datatype,
        shape,
    })
}

/// numpy dtype names, as MLflow writes them in tensor specs → OIP datatypes.
fn numpy_datatype(dtype: &str) -> Option<DataType> {
    Some(match dtype {
        "bool" => DataType::Bool,
        "uint8" => DataType::Uint8,
        "uint16" => DataType::Uint16,
        "uint32" => DataType::Uint32,
        "uint64" => DataType::Uint64,
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "float32" => DataType::Fp32,
        "float64" => DataType::Fp64,
        "str" | "object" | "bytes" => DataType::Bytes,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What mlflow.onnx.log_model (MLflow 3.18) writes, with a named tensor signature.
    const LOGGED: &str = r#"
artifact_path: mlflow-artifacts:/0/models/m-cbebd04a01c7474a929668f89de97fba/artifacts
flavors:
  onnx:
    code: null
    data: model.onnx
    onnx_session_options: null
    onnx_version: 1.23.2
    providers:
    - CUDAExecutionProvider
    - CPUExecutionProvider
  python_function:
    data: model.onnx
    loader_module: mlflow.onnx
mlflow_version: 3.18.0
model_id: m-cbebd04a01c7474a929668f89de97fba
signature:
  inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}, "name": "X"}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}, "name": "label"}, {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2]}, "name": "probabilities"}]'
  params: null
"#;

    #[test]
    fn reads_the_onnx_flavor_and_a_named_tensor_signature() {
        let m = parse(LOGGED).unwrap();
        assert_eq!(m.onnx_data, "model.onnx");
        let sig = m.signature.unwrap();
        assert_eq!(sig.inputs[0].name, "X");
        assert_eq!(sig.inputs[0].datatype, DataType::Fp32);
        assert_eq!(sig.inputs[0].shape, vec![-1, 4]);
        assert_eq!(sig.outputs[0].datatype, DataType::Int64);
        assert_eq!(sig.outputs[1].name, "probabilities");
    }

    #[test]
    fn signatures_that_do_not_name_graph_tensors_are_not_used() {
        let no_sig = LOGGED.split("signature:").next().unwrap();
        assert!(parse(no_sig).unwrap().signature.is_err());
        let unnamed = LOGGED.replace(r#", "name": "X""#, "");
        assert!(
            parse(&unnamed)
                .unwrap()
                .signature
                .unwrap_err()
                .contains("has no name")
        );
        let columns = LOGGED.replace(
            r#"'[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}, "name": "X"}]'"#,
            r#"'[{"type": "double", "name": "x", "required": true}]'"#,
        );
        assert!(
            parse(&columns)
                .unwrap()
                .signature
                .unwrap_err()
                .contains("column")
        );
        let fp16 = LOGGED.replace(
            r#""dtype": "float32", "shape": [-1, 4]"#,
            r#""dtype": "float16", "shape": [-1, 4]"#,
        );
        assert!(parse(&fp16).unwrap().signature.is_err());
    }

    #[test]
    fn errors_name_the_flavor_or_key() {
        let sklearn = "flavors:\n  sklearn: {pickled_model: model.pkl}\n  python_function: {loader_module: mlflow.sklearn}\n";
        let err = parse(sklearn).unwrap_err();
        assert!(
            err.contains("not an ONNX model") && err.contains("sklearn"),
            "{err}"
        );
        let err = parse("flavors:\n  onnx: {onnx_version: 1.17}\n").unwrap_err();
        assert!(err.contains("`flavors.onnx.data`"), "{err}");
        assert!(parse("just: [text").unwrap_err().contains("not YAML"));
        assert!(parse("a: 1").unwrap_err().contains("`flavors`"));
    }
}
