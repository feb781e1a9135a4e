//! Candle engine tests: drive `Runtime` directly against references computed at test time by
//! tests/py/make_candle_fixtures.py (scikit-learn for the MLP, numpy for the embedding MLP and
//! for all-MiniLM-L6-v2). The same MLP, exported to ONNX and to safetensors, must give the
//! same outputs in ort, tract and candle. Fails, never skips, when Python deps are missing.
#![cfg(all(feature = "candle", feature = "ort", feature = "tract"))]

use ferry_runtimes::{
    LoadOptions, OnnxEngine, Runtime, RuntimeError, Signature, Tensor, TensorData, load_onnx,
    load_safetensors,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

const TOLERANCE: f32 = 1e-5;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("ferry-candle-fixtures-{}", std::process::id()));
        let status = Command::new("python3")
            .arg(workspace_root().join("tests/py/make_candle_fixtures.py"))
            .arg(&dir)
            .env("PYTHONWARNINGS", "ignore")
            .status()
            .expect("python3 must be installed (scripts/setup-test-deps.sh)");
        assert!(
            status.success(),
            "tests/py/make_candle_fixtures.py failed: run scripts/setup-test-deps.sh"
        );
        dir
    })
}

fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        serde_json::from_slice(&std::fs::read(fixtures().join("candle_reference.json")).unwrap())
            .unwrap()
    })
}

fn init_ort() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let lib = match std::env::var("FERRY_ORT_LIB") {
            Ok(p) => PathBuf::from(p),
            Err(_) => {
                let out = Command::new("python3")
                    .arg(workspace_root().join("scripts/find-ort-lib.py"))
                    .output()
                    .expect("python3 must be installed");
                PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
            }
        };
        ferry_runtimes::ort::init(&lib).expect("ONNX Runtime library loads");
    });
}

struct Version {
    dir: PathBuf,
    manifest: Value,
}

impl Version {
    fn open(model: &str, version: u64) -> Version {
        let dir = fixtures().join(format!("registry/{model}/{version}"));
        let manifest = serde_json::from_slice(&std::fs::read(dir.join("model.yaml")).unwrap())
            .expect("fixture manifests are JSON (valid YAML)");
        Version { dir, manifest }
    }

    fn signature(&self) -> Signature {
        serde_json::from_value(serde_json::json!({
            "inputs": self.manifest["inputs"], "outputs": self.manifest["outputs"],
        }))
        .unwrap()
    }

    fn load(&self, engine: OnnxEngine) -> Result<Arc<dyn Runtime>, RuntimeError> {
        let options = LoadOptions {
            onnx_engine: engine,
            intra_op_threads: 2,
            ..LoadOptions::default()
        };
        let artifact = self.manifest["artifact"].as_str().unwrap();
        match self.manifest["format"].as_str().unwrap() {
            "onnx" => load_onnx(&self.dir.join(artifact), &self.signature(), &options),
            _ => load_safetensors(
                &self.dir,
                artifact,
                &self.manifest["architecture"],
                &self.signature(),
                &options,
            ),
        }
    }
}

fn matrix_f32(v: &Value) -> (Vec<usize>, Vec<f32>) {
    let rows = v.as_array().unwrap();
    let cols = rows[0].as_array().map_or(1, |r| r.len());
    let data = rows
        .iter()
        .flat_map(|r| match r.as_array() {
            Some(r) => r.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            None => vec![r.as_f64().unwrap() as f32],
        })
        .collect();
    (vec![rows.len(), cols], data)
}

fn fp32(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::Fp32(v) => v,
        other => panic!("expected FP32, got {:?}", other.datatype()),
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOLERANCE,
            "{what}: element {i} is {g}, expected {w} (tolerance {TOLERANCE})"
        );
    }
}

#[test]
fn the_same_mlp_gives_the_same_outputs_in_ort_tract_and_candle() {
    init_ort();
    let r = &reference()["tabmlp"];
    let (shape, x) = matrix_f32(&r["inputs"]["X"]);
    let (_, want) = matrix_f32(&r["probabilities"]);
    let input = Tensor::new("X", shape.clone(), TensorData::Fp32(x)).unwrap();
    let onnx = Version::open("tabmlp", 1);
    let candle = Version::open("tabmlp", 2);
    let mut outputs = Vec::new();
    for (name, rt) in [
        ("ort", onnx.load(OnnxEngine::Ort).unwrap()),
        ("tract", onnx.load(OnnxEngine::Tract).unwrap()),
        ("candle", candle.load(OnnxEngine::Auto).unwrap()),
    ] {
        let out = rt.run(std::slice::from_ref(&input)).unwrap();
        assert_eq!(out[0].name, "probabilities");
        assert_eq!(out[0].shape, vec![shape[0], 3], "{name}");
        assert_close(&format!("{name} vs scikit-learn"), fp32(&out[0]), &want);
        outputs.push((name, fp32(&out[0]).to_vec()));
    }
    for (name, out) in &outputs[1..] {
        assert_close(&format!("{name} vs ort"), out, &outputs[0].1);
    }
}

#[test]
fn embeddings_layer_norm_and_sigmoid_match_numpy() {
    let r = &reference()["catmlp"];
    let (shape, x) = matrix_f32(&r["inputs"]["x"]);
    let country: Vec<i64> = r["inputs"]["country"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let rt = Version::open("catmlp", 1).load(OnnxEngine::Auto).unwrap();
    let inputs = [
        Tensor::new("x", shape.clone(), TensorData::Fp32(x)).unwrap(),
        Tensor::new("country", vec![country.len()], TensorData::Int64(country)).unwrap(),
    ];
    let out = rt.run(&inputs).unwrap();
    let (_, want) = matrix_f32(&r["score"]);
    assert_eq!(out[0].shape, vec![shape[0], 1]);
    assert_close("catmlp vs numpy", fp32(&out[0]), &want);

    // A category outside the embedding table is the client's mistake, not an engine fault.
    let bad = [
        inputs[0].clone(),
        Tensor::new(
            "country",
            vec![shape[0]],
            TensorData::Int64(vec![9; shape[0]]),
        )
        .unwrap(),
    ];
    let err = rt.run(&bad).unwrap_err();
    assert!(matches!(err, RuntimeError::Input(_)), "{err}");
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn weights_are_checked_against_the_architecture_at_load() {
    let v = Version::open("tabmlp", 2);
    let arch = v.manifest["architecture"].clone();
    let load = |arch: Value| {
        load_safetensors(
            &v.dir,
            "model.safetensors",
            &arch,
            &v.signature(),
            &LoadOptions::default(),
        )
        .err()
        .expect("the load must fail")
        .to_string()
    };
    let mut wrong_units = arch.clone();
    wrong_units["layers"][0]["units"] = 17.into();
    let e = load(wrong_units);
    assert!(
        e.contains("`fc1.weight`") && e.contains("[16, 4]") && e.contains("[17, 4]"),
        "{e}"
    );
    let mut wrong_name = arch.clone();
    wrong_name["layers"][4]["name"] = "out".into();
    let e = load(wrong_name);
    assert!(
        e.contains("no tensor `out.weight`") && e.contains("head.weight"),
        "{e}"
    );
    let mut unused = arch.clone();
    unused["layers"].as_array_mut().unwrap().truncate(2);
    let e = load(unused);
    assert!(
        e.contains("does not use") || e.contains("gives FP32"),
        "{e}"
    );
    let e = load(serde_json::json!({"kind": "transformer-xl"}));
    assert!(
        e.contains("feed-forward") && e.contains("bert-sentence-embedding"),
        "{e}"
    );
    let e = load(
        serde_json::json!({"kind": "feed-forward", "layers": [{"type": "dense", "name": "fc1"}]}),
    );
    assert!(e.contains("units"), "{e}");
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_embeddings_match_the_numpy_reference() {
    let r = &reference()["minilm"];
    let sentences: Vec<Vec<u8>> = r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().as_bytes().to_vec())
        .collect();
    let (_, want) = matrix_f32(&r["embedding"]);
    let rt = Version::open("minilm", 1).load(OnnxEngine::Auto).unwrap();
    let n = sentences.len();
    let out = rt
        .run(&[Tensor::new("text", vec![n], TensorData::Bytes(sentences.clone())).unwrap()])
        .unwrap();
    assert_eq!(out[0].name, "embedding");
    assert_eq!(out[0].shape, vec![n, 384]);
    let got = fp32(&out[0]);
    for i in 0..n {
        let c = cosine(&got[i * 384..(i + 1) * 384], &want[i * 384..(i + 1) * 384]);
        assert!(c >= 0.999, "sentence {i}: cosine {c}");
    }
    // One sentence alone (no padding) gives the same vector as inside the padded batch.
    let one = rt
        .run(&[Tensor::new(
            "text",
            vec![1],
            TensorData::Bytes(vec![sentences[2].clone()]),
        )
        .unwrap()])
        .unwrap();
    assert!(cosine(fp32(&one[0]), &got[2 * 384..3 * 384]) >= 0.9999);
    // Text that is not UTF-8 is the client's mistake.
    let err = rt
        .run(&[Tensor::new("text", vec![1], TensorData::Bytes(vec![vec![0xff, 0xfe]])).unwrap()])
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Input(_)), "{err}");
}
