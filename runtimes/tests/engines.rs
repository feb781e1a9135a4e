//! Engine tests: drive `Runtime` directly and compare with Python onnxruntime (and
//! scikit-learn) outputs computed during this test run by tests/py/make_fixtures.py.
//! Needs python3 with onnxruntime, scikit-learn and skl2onnx (`.ci/run` installs them); fails,
//! never skips, when they are missing.

use ferry_runtimes::{
    DataType, LoadOptions, OnnxEngine, RuntimeError, Signature, Tensor, TensorData, load_onnx,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const TOLERANCE: f64 = 1e-5;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-engine-fixtures-{}", std::process::id()));
        let status = Command::new("python3")
            .arg(workspace_root().join("tests/py/make_fixtures.py"))
            .arg(&dir)
            .env("PYTHONWARNINGS", "ignore")
            .status()
            .expect("python3 must be installed (run .ci/run or scripts/setup-test-deps.sh)");
        assert!(status.success(), "tests/py/make_fixtures.py failed: install the Python test dependencies with scripts/setup-test-deps.sh");
        dir
    })
}

fn ort_library() -> PathBuf {
    if let Ok(p) = std::env::var("FERRY_ORT_LIB") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .arg(workspace_root().join("scripts/find-ort-lib.py"))
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "onnxruntime wheel not found: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn init_ort() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        ferry_runtimes::ort::init(&ort_library()).expect("ONNX Runtime library loads");
    });
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
        .unwrap()
}

fn signature(model: &str, version: u64) -> Signature {
    // make_fixtures.py writes model.yaml as JSON, which is valid YAML.
    let path = fixtures().join(format!("registry/{model}/{version}/model.yaml"));
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    Signature {
        inputs: serde_json::from_value(manifest["inputs"].clone()).unwrap(),
        outputs: serde_json::from_value(manifest["outputs"].clone()).unwrap(),
    }
}

fn tensor(json: &Value) -> Tensor {
    let dt = DataType::parse(json["datatype"].as_str().unwrap()).unwrap();
    let shape: Vec<usize> = serde_json::from_value(json["shape"].clone()).unwrap();
    let items = json["data"].as_array().unwrap();
    let data = match dt {
        DataType::Fp32 => {
            TensorData::Fp32(items.iter().map(|v| v.as_f64().unwrap() as f32).collect())
        }
        DataType::Fp64 => TensorData::Fp64(items.iter().map(|v| v.as_f64().unwrap()).collect()),
        DataType::Int32 => {
            TensorData::Int32(items.iter().map(|v| v.as_i64().unwrap() as i32).collect())
        }
        DataType::Int64 => TensorData::Int64(items.iter().map(|v| v.as_i64().unwrap()).collect()),
        DataType::Bool => TensorData::Bool(items.iter().map(|v| v.as_bool().unwrap()).collect()),
        other => panic!("fixture datatype {other} not handled"),
    };
    Tensor::new(json["name"].as_str().unwrap(), shape, data).unwrap()
}

fn as_f64(data: &TensorData) -> Vec<f64> {
    match data {
        TensorData::Fp32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::Fp64(v) => v.clone(),
        TensorData::Int32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        other => panic!("unexpected output {other:?}"),
    }
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOLERANCE, "{what}[{i}]: got {g}, want {w}");
    }
}

fn options(engine: OnnxEngine) -> LoadOptions {
    LoadOptions {
        onnx_engine: engine,
        ..LoadOptions::default()
    }
}

fn check_engine(engine: OnnxEngine, name: &str) {
    if engine == OnnxEngine::Ort {
        init_ort();
    }
    let reference = reference();
    let mut checked = 0;
    for case in reference["cases"].as_array().unwrap() {
        if !case["engines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == name)
        {
            continue;
        }
        let model = case["model"].as_str().unwrap();
        let version = case["version"].as_u64().unwrap();
        let path = fixtures().join(format!("registry/{model}/{version}/model.onnx"));
        let runtime = load_onnx(&path, &signature(model, version), &options(engine))
            .unwrap_or_else(|e| panic!("{name} loads {model}: {e}"));
        assert_eq!(runtime.engine().as_str(), name);
        let inputs: Vec<Tensor> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(tensor)
            .collect();
        let inputs = runtime.signature().validate_inputs(inputs).unwrap();
        let outputs = runtime
            .run(&inputs)
            .unwrap_or_else(|e| panic!("{name} runs {model}: {e}"));
        for want in case["outputs"].as_array().unwrap() {
            let want = tensor(want);
            let got = outputs
                .iter()
                .find(|t| t.name == want.name)
                .expect("output present");
            assert_eq!(got.datatype(), want.datatype(), "{model}/{}", want.name);
            assert_eq!(got.shape, want.shape, "{model}/{}", want.name);
            assert_close(
                &format!("{name} {model}/{}", want.name),
                &as_f64(&got.data),
                &as_f64(&want.data),
            );
        }
        if let Some(proba) = case.get("sklearn_predict_proba") {
            let want: Vec<f64> = serde_json::from_value(proba.clone()).unwrap();
            let got = outputs.iter().find(|t| t.name == "probabilities").unwrap();
            assert_close(
                &format!("{name} {model} vs sklearn"),
                &as_f64(&got.data),
                &want,
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "{name}: only {checked} reference cases ran");
}

#[test]
fn ort_matches_python_onnxruntime_and_sklearn() {
    check_engine(OnnxEngine::Ort, "ort");
}

#[test]
fn tract_matches_python_onnxruntime_and_sklearn() {
    check_engine(OnnxEngine::Tract, "tract");
}

#[test]
fn tract_refuses_missing_operator_at_load_and_names_it() {
    let reference = reference();
    let refused = reference["refused"].as_array().unwrap();
    assert!(!refused.is_empty());
    for case in refused {
        let model = case["model"].as_str().unwrap();
        let path = fixtures().join(format!("registry/{model}/1/model.onnx"));
        let err = match load_onnx(&path, &signature(model, 1), &options(OnnxEngine::Tract)) {
            Ok(_) => panic!("tract loaded {model}, which uses an operator it lacks"),
            Err(e) => e,
        };
        let operator = case["operator"].as_str().unwrap();
        assert!(
            matches!(&err, RuntimeError::UnsupportedOperator { operator: op, .. } if op == operator),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(operator) && message.contains("onnx_engine: ort"),
            "{message}"
        );
    }
}

#[test]
fn manifest_that_disagrees_with_the_model_is_refused_by_both_engines() {
    init_ort();
    let mut sig = signature("mlp", 1);
    sig.inputs[0].datatype = DataType::Fp64;
    let path = fixtures().join("registry/mlp/1/model.onnx");
    for engine in [OnnxEngine::Ort, OnnxEngine::Tract] {
        let mut wrong_name = signature("mlp", 1);
        wrong_name.outputs[0].name = "nope".into();
        let err = load_onnx(&path, &wrong_name, &options(engine))
            .err()
            .expect("refused");
        assert!(
            matches!(err, RuntimeError::SignatureMismatch { .. }),
            "{engine:?}: {err}"
        );
        assert!(err.to_string().contains("nope"), "{err}");
    }
    let err = load_onnx(&path, &sig, &options(OnnxEngine::Ort))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("FP64"), "{err}");
}

#[test]
fn ort_init_with_a_missing_library_is_an_error_not_a_panic() {
    // A separate process: the first init outcome is kept for the process lifetime.
    if std::env::var("FERRY_CHILD_MISSING_LIB").is_ok() {
        let err =
            ferry_runtimes::ort::init(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/libonnxruntime.so"),
            "{err}"
        );
        assert!(!ferry_runtimes::ort::is_available());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new(exe)
        .args([
            "--exact",
            "ort_init_with_a_missing_library_is_an_error_not_a_panic",
            "--nocapture",
        ])
        .env("FERRY_CHILD_MISSING_LIB", "1")
        .status()
        .unwrap();
    assert!(status.success());
}

/// The tree-ensemble fixtures (skl2onnx's RandomForest `churn`) run on the trees engine, under
/// `auto` too, and answer what onnxruntime does; other graphs are refused when it is forced
/// and left to ONNX Runtime / tract under `auto`.
#[test]
fn trees_serves_the_tree_graphs_and_refuses_the_others() {
    init_ort();
    let reference = reference();
    let mut served = Vec::new();
    for case in reference["cases"].as_array().unwrap() {
        let model = case["model"].as_str().unwrap();
        let version = case["version"].as_u64().unwrap();
        let path = fixtures().join(format!("registry/{model}/{version}/model.onnx"));
        let sig = signature(model, version);
        let runtime = match load_onnx(&path, &sig, &options(OnnxEngine::Trees)) {
            Ok(runtime) => runtime,
            Err(err) => {
                assert!(
                    matches!(&err, RuntimeError::ModelFile { .. })
                        && err.to_string().contains("tree-ensemble ONNX-ML"),
                    "{model}: {err}"
                );
                let auto = load_onnx(&path, &sig, &options(OnnxEngine::Auto))
                    .unwrap_or_else(|e| panic!("auto loads {model}: {e}"));
                assert_ne!(auto.engine().as_str(), "trees", "{model}");
                continue;
            }
        };
        assert_eq!(runtime.engine().as_str(), "trees");
        let auto = load_onnx(&path, &sig, &options(OnnxEngine::Auto)).unwrap();
        assert_eq!(auto.engine().as_str(), "trees", "{model} under auto");
        let inputs: Vec<Tensor> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(tensor)
            .collect();
        let inputs = runtime.signature().validate_inputs(inputs).unwrap();
        let outputs = runtime.run(&inputs).unwrap();
        for want in case["outputs"].as_array().unwrap() {
            let want = tensor(want);
            let got = outputs.iter().find(|t| t.name == want.name).unwrap();
            assert_eq!(got.datatype(), want.datatype(), "{model}/{}", want.name);
            assert_eq!(got.shape, want.shape, "{model}/{}", want.name);
            assert_close(
                &format!("trees {model}/{}", want.name),
                &as_f64(&got.data),
                &as_f64(&want.data),
            );
        }
        served.push(model.to_string());
    }
    assert!(served.iter().any(|m| m == "churn"), "{served:?}");
    assert!(!served.iter().any(|m| m == "mlp"), "{served:?}");
}
