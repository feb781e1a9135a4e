//! `Pipeline::predict` (rows) and `Pipeline::predict_columns` (Arrow) over models defined in
//! code: each model's forward function is a Rust closure (`ferry_models::testing::FnRuntime`),
//! published into a local registry in a tempdir and loaded through the real `ModelManager`
//! (resolve, verify, feature check, warm-up, compute queue). Features come from the in-process
//! online store. No sockets, no model files, no engines.
//!
//! Every expected value is computed here from the same functions the fake models run.

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use ferry_features::online::{MemoryStore, RowKey, StoredRow, now_ms};
use ferry_features::{FeatureError, FeatureRepo, FeatureValue, OnMissing, OnlineFeatures};
use ferry_models::testing::{FnRuntime, Forward};
use ferry_models::{ModelManager, ModelMetrics, ModelsConfig};
use ferry_pipeline::assign::{Split, bucket};
use ferry_pipeline::config::{EndpointConfig, VariantConfig};
use ferry_pipeline::{
    Pipeline, PipelineMetrics, PipelineOptions, PredictError, PredictOptions, Predictions,
};
use ferry_registry::{Registry, RegistryOptions};
use ferry_runtimes::{Runtime, RuntimeError, Tensor, TensorData};
use ferry_transforms::{ErrorKind, Row};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------------------------------------
// The fake models' arithmetic, shared by their closures and the expectations.

/// `alpha` and `beta`: `score = w·x + b`, different per model so a prediction says who made it.
fn linear(w: [f32; 2], b: f32, x: [f32; 2]) -> f32 {
    w[0] * x[0] + w[1] * x[1] + b
}
const ALPHA: ([f32; 2], f32) = ([1.0, 2.0], 0.5);
const BETA: ([f32; 2], f32) = ([-3.0, 0.25], 10.0);

/// `pair`: `y = 3·amount + age`.
fn pair(amount: f32, age: f32) -> f32 {
    3.0 * amount + age
}

fn floats(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::Fp32(v) => v,
        other => panic!("the fake models take FP32, got {:?}", other.datatype()),
    }
}

fn fp32(name: &str, shape: Vec<usize>, data: Vec<f32>) -> Tensor {
    Tensor::new(name, shape, TensorData::Fp32(data)).expect("shape and data agree")
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// A model version to publish: its manifest (without the fields `publish` fills in) and the
/// closure that runs it.
struct FakeModel {
    name: &'static str,
    manifest: Value,
    forward: Arc<Forward>,
}

/// Counts the engine calls a fake model gets after load (the warm-up is one row of zeros).
#[derive(Default, Clone)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// `x` FP32 [-1, 2] → `score` FP32 [-1], `score = linear(w, b, x)`.
fn linear_model(name: &'static str, (w, b): ([f32; 2], f32), calls: &Calls) -> FakeModel {
    let calls = calls.clone();
    FakeModel {
        name,
        manifest: json!({
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}],
        }),
        forward: Arc::new(move |inputs: &[Tensor]| {
            calls.0.fetch_add(1, Ordering::SeqCst);
            let x = floats(&inputs[0]);
            let scores: Vec<f32> = x.chunks(2).map(|r| linear(w, b, [r[0], r[1]])).collect();
            Ok(vec![fp32("score", vec![scores.len()], scores)])
        }),
    }
}

/// `amount`, `age` FP32 [-1] → `y` FP32 [-1], `y = pair(amount, age)`; `preprocess` is the
/// version's own transform steps.
fn pair_model(name: &'static str, preprocess: Value) -> FakeModel {
    FakeModel {
        name,
        manifest: json!({
            "inputs": [
                {"name": "amount", "datatype": "FP32", "shape": [-1]},
                {"name": "age", "datatype": "FP32", "shape": [-1]},
            ],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
            "preprocess": preprocess,
        }),
        forward: Arc::new(|inputs: &[Tensor]| {
            let y: Vec<f32> = floats(&inputs[0])
                .iter()
                .zip(floats(&inputs[1]))
                .map(|(&a, &g)| pair(a, g))
                .collect();
            Ok(vec![fp32("y", vec![y.len()], y)])
        }),
    }
}

/// The joined feature columns of `joiner`, in manifest order (not the view's declared order).
const JOIN_COLUMNS: [&str; 3] = [
    "user_stats.spend_30d",
    "request.amount",
    "user_stats.visits_7d",
];

/// `features` FP32 [-1, 3] (joined from `JOIN_COLUMNS`) → `joined` FP32 [-1, 3], the row as it
/// reached the model.
fn joiner_model() -> FakeModel {
    FakeModel {
        name: "joiner",
        manifest: json!({
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "joined", "datatype": "FP32", "shape": [-1, 3]}],
            "features": {"entity": "user", "columns": JOIN_COLUMNS},
        }),
        forward: Arc::new(|inputs: &[Tensor]| {
            let t = &inputs[0];
            Ok(vec![fp32("joined", t.shape.clone(), floats(t).to_vec())])
        }),
    }
}

/// Like `alpha`, but answers one row more than it was given.
fn extra_row_model() -> FakeModel {
    FakeModel {
        name: "liar",
        manifest: json!({
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}],
        }),
        forward: Arc::new(|inputs: &[Tensor]| {
            let n = inputs[0].shape[0] + 1;
            Ok(vec![fp32("score", vec![n], vec![0.0; n])])
        }),
    }
}

const FEATURE_REPO: &str = r#"
project: shop
entities:
  - {name: user, join_key: user_id, dtype: string}
views:
  - name: user_stats
    entity: user
    features:
      - {name: visits_7d, dtype: float32, default: 0}
      - {name: spend_30d, dtype: float32, default: -1}
    source: {path: user_stats/, format: parquet, timestamp: event_ts}
"#;

/// `visits_7d`, `spend_30d` of the users the store knows.
const STORED: [(&str, f32, f32); 3] = [("u1", 3.0, 120.5), ("u2", 0.0, 7.25), ("u3", 11.0, 0.5)];
const VISITS_DEFAULT: f32 = 0.0;
const SPEND_DEFAULT: f32 = -1.0;

/// The feature repo and an in-process store holding `STORED`.
fn online_features(on_missing: OnMissing) -> OnlineFeatures {
    let repo = FeatureRepo::parse(FEATURE_REPO, std::path::Path::new("features.yaml")).unwrap();
    let view = repo.view_index("user_stats").unwrap();
    let mut store = MemoryStore::default();
    for (user, visits, spend) in STORED {
        store.insert(
            RowKey {
                view,
                key: user.into(),
            },
            StoredRow {
                ts_ms: now_ms(),
                values: vec![
                    Some(FeatureValue::Float(visits.into())),
                    Some(FeatureValue::Float(spend.into())),
                ],
            },
        );
    }
    OnlineFeatures {
        repo: Arc::new(repo),
        store: Arc::new(store),
        // Generous: the in-process store answers at once; this only bounds a hang.
        timeout: std::time::Duration::from_secs(30),
        on_missing,
    }
}

struct Harness {
    pipeline: Pipeline,
    _models: Arc<ModelManager>,
    _registry: tempfile::TempDir,
}

/// Publishes `models` as version 1 each into a local registry, and builds the pipeline over
/// `endpoints` (which loads every variant's model through the fake loader).
async fn harness(
    models: Vec<FakeModel>,
    endpoints: Vec<EndpointConfig>,
    features: Option<OnlineFeatures>,
) -> Harness {
    let root = tempfile::tempdir().unwrap();
    let registry = Registry::open(&RegistryOptions::new(root.path().to_str().unwrap()))
        .await
        .unwrap();
    let mut forwards: HashMap<String, Arc<Forward>> = HashMap::new();
    for model in models {
        let src = tempfile::tempdir().unwrap();
        // The registry verifies the artifact's digest; its content is never read.
        std::fs::write(src.path().join("model.bin"), model.name).unwrap();
        let mut manifest = model.manifest;
        manifest["format"] = json!("onnx");
        manifest["artifact"] = json!("model.bin");
        std::fs::write(src.path().join("model.yaml"), manifest.to_string()).unwrap();
        registry
            .publish(src.path(), model.name, Some(1))
            .await
            .unwrap();
        forwards.insert(model.name.to_string(), model.forward);
    }
    let features = features.map(Arc::new);
    let models = Arc::new(
        ModelManager::new(registry, ModelsConfig::new(vec![]), ModelMetrics::new())
            .with_feature_repo(features.as_ref().map(|f| f.repo.clone()))
            .with_runtime_loader(move |manifest| {
                let forward =
                    forwards
                        .get(&manifest.name)
                        .ok_or_else(|| RuntimeError::Inference {
                            engine: ferry_runtimes::Engine::Tract,
                            message: format!("no fake model `{}`", manifest.name),
                        })?;
                Ok(
                    Arc::new(FnRuntime::new(manifest.signature(), forward.clone()))
                        as Arc<dyn Runtime>,
                )
            }),
    );
    let pipeline = Pipeline::build(
        models.clone(),
        features,
        PipelineOptions::default(),
        &endpoints,
        PipelineMetrics::new(),
        ferry_transforms::Registry::new(),
    )
    .await
    .unwrap();
    assert!(models.is_ready(), "{:?}", models.index());
    Harness {
        pipeline,
        _models: models,
        _registry: root,
    }
}

fn variant(name: &str, model: &str, weight: u32) -> VariantConfig {
    VariantConfig {
        name: name.into(),
        model: model.into(),
        weight,
    }
}

fn endpoint(name: &str, model: &str) -> EndpointConfig {
    EndpointConfig::new(name, vec![variant("main", model, 100)])
}

/// `ab`: `control` → alpha (70), `treatment` → beta (30), sticky on `user_id`.
const AB_WEIGHTS: [u32; 2] = [70, 30];
fn ab_endpoint(name: &str) -> EndpointConfig {
    let mut e = EndpointConfig::new(
        name,
        vec![
            variant("control", "alpha@1", AB_WEIGHTS[0]),
            variant("treatment", "beta@1", AB_WEIGHTS[1]),
        ],
    );
    e.sticky_key = Some("user_id".into());
    e
}

async fn ab_harness(calls: &Calls) -> Harness {
    harness(
        vec![
            linear_model("alpha", ALPHA, calls),
            linear_model("beta", BETA, calls),
        ],
        vec![ab_endpoint("ab")],
        None,
    )
    .await
}

fn rows(values: &[Value]) -> Vec<Row> {
    values
        .iter()
        .map(|v| v.as_object().expect("rows are objects").clone())
        .collect()
}

fn x_of(i: usize) -> [f32; 2] {
    [i as f32 * 0.5 - 3.0, (i % 7) as f32]
}

fn ab_row(user: &str, i: usize) -> Value {
    json!({"user_id": user, "x": x_of(i)})
}

async fn predict(
    h: &Harness,
    endpoint: &str,
    values: &[Value],
) -> Result<Predictions, PredictError> {
    h.pipeline
        .predict(endpoint, rows(values), &PredictOptions::default())
        .await
}

fn as_f32(v: &Value) -> f32 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number")) as f32
}

/// The score the variant's own model gives `x`.
fn ab_score(variant: &str, x: [f32; 2]) -> f32 {
    match variant {
        "control" => linear(ALPHA.0, ALPHA.1, x),
        "treatment" => linear(BETA.0, BETA.1, x),
        other => panic!("no variant {other}"),
    }
}

/// Every prediction is its variant's model applied to its row, and names that model.
fn assert_each_row_answered_by_its_variant(p: &Predictions, xs: &[[f32; 2]]) {
    assert_eq!(p.predictions.len(), xs.len());
    for (i, x) in xs.iter().enumerate() {
        let model = match p.variants[i].as_str() {
            "control" => "alpha",
            _ => "beta",
        };
        assert_eq!(p.models[i], model, "row {i}");
        assert_eq!(p.versions[i], 1, "row {i}");
        assert_eq!(
            as_f32(&p.predictions[i]),
            ab_score(&p.variants[i], *x),
            "row {i} ({})",
            p.variants[i]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Variant assignment.

#[tokio::test]
async fn the_same_sticky_key_gets_the_same_variant_in_any_request() {
    let h = ab_harness(&Calls::default()).await;
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let all: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| ab_row(u, i))
        .collect();
    let together = predict(&h, "ab", &all).await.unwrap();
    let xs: Vec<[f32; 2]> = (0..users.len()).map(x_of).collect();
    assert_each_row_answered_by_its_variant(&together, &xs);
    assert!(
        together.variants.iter().any(|v| v == "control")
            && together.variants.iter().any(|v| v == "treatment"),
        "60 keys at 70/30 reach both variants: {:?}",
        together.variants
    );
    // Alone, reversed, and with other x values: the key alone decides.
    for (i, u) in users.iter().enumerate().rev() {
        let alone = predict(&h, "ab", &[ab_row(u, i + 1)]).await.unwrap();
        assert_eq!(alone.variants, vec![together.variants[i].clone()], "{u}");
        assert_each_row_answered_by_its_variant(&alone, &[x_of(i + 1)]);
    }
}

#[tokio::test]
async fn assignment_is_the_documented_hash_of_salt_and_key_and_follows_the_weights() {
    let h = ab_harness(&Calls::default()).await;
    let n = 2000;
    let users: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let all: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| ab_row(u, i))
        .collect();
    let p = predict(&h, "ab", &all).await.unwrap();
    // The salt defaults to the endpoint name (assign.rs documents the hash for analysts).
    let split = Split::new(&AB_WEIGHTS);
    let names = ["control", "treatment"];
    for (i, u) in users.iter().enumerate() {
        assert_eq!(
            p.variants[i],
            names[split.variant_of(bucket("ab", u))],
            "{u}"
        );
    }
    let control = p.variants.iter().filter(|v| *v == "control").count() as f64 / n as f64;
    assert!(
        (0.66..=0.74).contains(&control),
        "70/30 weights gave {control:.3} to control"
    );
    assert_eq!(p.common(), None, "a split request has no common variant");
}

#[tokio::test]
async fn a_forced_variant_takes_every_row() {
    let h = ab_harness(&Calls::default()).await;
    let all: Vec<Value> = (0..40).map(|i| ab_row(&format!("k{i}"), i)).collect();
    for forced in ["control", "treatment"] {
        let options = PredictOptions {
            forced_variant: Some(forced.into()),
            ..PredictOptions::default()
        };
        let p = h
            .pipeline
            .predict("ab", rows(&all), &options)
            .await
            .unwrap();
        assert!(p.variants.iter().all(|v| v == forced), "{:?}", p.variants);
        assert_each_row_answered_by_its_variant(&p, &(0..40).map(x_of).collect::<Vec<_>>());
        let model = if forced == "control" { "alpha" } else { "beta" };
        assert_eq!(p.common(), Some((forced, model, 1)));
    }
    let options = PredictOptions {
        forced_variant: Some("nope".into()),
        ..PredictOptions::default()
    };
    let err = h
        .pipeline
        .predict("ab", rows(&all), &options)
        .await
        .unwrap_err();
    match &err {
        PredictError::UnknownVariant {
            asked, available, ..
        } => {
            assert_eq!(asked, "nope");
            assert_eq!(available, &["control", "treatment"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.error_type(), "unknown_variant");
}

#[tokio::test]
async fn rows_without_the_sticky_key_share_one_variant_per_request() {
    let h = ab_harness(&Calls::default()).await;
    let keyless: Vec<Value> = (0..30).map(|i| json!({"x": x_of(i)})).collect();
    for _ in 0..10 {
        let p = predict(&h, "ab", &keyless).await.unwrap();
        assert!(
            p.variants.iter().all(|v| *v == p.variants[0]),
            "{:?}",
            p.variants
        );
        assert_each_row_answered_by_its_variant(&p, &(0..30).map(x_of).collect::<Vec<_>>());
    }
}

// ---------------------------------------------------------------------------------------------
// Row path and column path.

fn xs_column(xs: &[[f32; 2]]) -> ArrayRef {
    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 2);
    for x in xs {
        b.values().append_slice(x);
        b.append(true);
    }
    Arc::new(b.finish())
}

/// The column path's answer laid out per row: (variant, model, version, prediction).
async fn by_columns(
    h: &Harness,
    endpoint: &str,
    batch: &RecordBatch,
) -> Vec<(String, String, u64, Value)> {
    let groups = h
        .pipeline
        .predict_columns(endpoint, batch)
        .await
        .unwrap()
        .expect("the column path takes this endpoint and batch");
    let mut out = vec![None; batch.num_rows()];
    for g in groups {
        let predictions = ferry_pipeline::rows::predictions(&g.outputs).unwrap();
        assert_eq!(predictions.len(), g.rows.len());
        for (&row, p) in g.rows.iter().zip(predictions) {
            assert!(out[row].is_none(), "row {row} is in two groups");
            out[row] = Some((g.variant.clone(), g.model.clone(), g.version, p));
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| panic!("row {i} is in no group")))
        .collect()
}

/// The row path's answer for the same batch, read as the batch job reads it.
async fn by_rows(
    h: &Harness,
    endpoint: &str,
    batch: &RecordBatch,
) -> Vec<(String, String, u64, Value)> {
    let rows = ferry_pipeline::arrow_rows::batch_to_rows(batch).unwrap();
    let p = h
        .pipeline
        .predict(endpoint, rows, &PredictOptions::default())
        .await
        .unwrap();
    (0..p.predictions.len())
        .map(|i| {
            (
                p.variants[i].clone(),
                p.models[i].clone(),
                p.versions[i],
                p.predictions[i].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn columns_and_rows_give_the_same_assignment_and_predictions() {
    let h = ab_harness(&Calls::default()).await;
    let n = 50;
    let xs: Vec<[f32; 2]> = (0..n).map(x_of).collect();
    let users: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let batch = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(StringArray::from(users.clone())) as ArrayRef,
        ),
        ("x", xs_column(&xs)),
    ])
    .unwrap();
    let columns = by_columns(&h, "ab", &batch).await;
    assert_eq!(columns, by_rows(&h, "ab", &batch).await);
    for (i, (variant, _, _, p)) in columns.iter().enumerate() {
        assert_eq!(as_f32(p), ab_score(variant, xs[i]), "row {i}");
    }
    let variants: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
    assert!(
        variants.contains(&"control") && variants.contains(&"treatment"),
        "{variants:?}"
    );
}

#[tokio::test]
async fn columns_and_rows_join_the_same_features() {
    let h = harness(
        vec![joiner_model()],
        vec![endpoint("joined", "joiner@1")],
        Some(online_features(OnMissing::Default)),
    )
    .await;
    let users = ["u3", "stranger", "u1", "u2"];
    let amounts = [1.5, 2.0, -4.0, 1e3];
    let batch = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(StringArray::from(users.to_vec())) as ArrayRef,
        ),
        (
            "amount",
            Arc::new(Float64Array::from(amounts.to_vec())) as ArrayRef,
        ),
    ])
    .unwrap();
    let columns = by_columns(&h, "joined", &batch).await;
    assert_eq!(columns, by_rows(&h, "joined", &batch).await);
    for (i, (.., p)) in columns.iter().enumerate() {
        let got: Vec<f32> = p.as_array().unwrap().iter().map(as_f32).collect();
        assert_eq!(got, expected_join(users[i], amounts[i] as f32), "row {i}");
    }
}

#[tokio::test]
async fn endpoints_with_a_step_lacking_a_column_form_are_left_to_the_row_path() {
    let mut e = ab_endpoint("ab");
    e.postprocess = vec![
        json!({"rename": {"score": "s"}}),
        json!({"script": {"source": "fn transform(row, input) { row }"}}),
    ];
    let calls = Calls::default();
    let h = harness(
        vec![
            linear_model("alpha", ALPHA, &calls),
            linear_model("beta", BETA, &calls),
        ],
        vec![e],
        None,
    )
    .await;
    let before = calls.get();
    let batch = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
        ),
        ("x", xs_column(&[[1.0, 2.0]])),
    ])
    .unwrap();
    assert!(
        h.pipeline
            .predict_columns("ab", &batch)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(calls.get(), before, "a fallback costs no model call");
}

// ---------------------------------------------------------------------------------------------
// Feature join.

/// What `joiner` answers for a row of `user` with `amount`: the joined row in `JOIN_COLUMNS`
/// order, store values for known users, defaults for others.
fn expected_join(user: &str, amount: f32) -> Vec<f32> {
    let (visits, spend) = STORED
        .iter()
        .find(|(u, ..)| *u == user)
        .map(|&(_, v, s)| (v, s))
        .unwrap_or((VISITS_DEFAULT, SPEND_DEFAULT));
    vec![spend, amount, visits]
}

fn joined_rows(p: &Predictions) -> Vec<Vec<f32>> {
    p.predictions
        .iter()
        .map(|v| v.as_array().unwrap().iter().map(as_f32).collect())
        .collect()
}

#[tokio::test]
async fn features_are_joined_by_entity_key_with_request_columns_in_manifest_order() {
    let h = harness(
        vec![joiner_model()],
        vec![endpoint("joined", "joiner@1")],
        Some(online_features(OnMissing::Default)),
    )
    .await;
    let rows = [("u2", 5.0), ("u1", 0.25), ("u3", -2.0), ("u1", 9.0)];
    let values: Vec<Value> = rows
        .iter()
        .map(|(u, a)| json!({"user_id": u, "amount": a}))
        .collect();
    let p = predict(&h, "joined", &values).await.unwrap();
    let expected: Vec<Vec<f32>> = rows.iter().map(|&(u, a)| expected_join(u, a)).collect();
    assert_eq!(joined_rows(&p), expected);
    assert_eq!(p.defaulted, 0);
}

#[tokio::test]
async fn a_missing_entity_gets_the_defaults_under_on_missing_default() {
    let h = harness(
        vec![joiner_model()],
        vec![endpoint("joined", "joiner@1")],
        Some(online_features(OnMissing::Default)),
    )
    .await;
    let values = [
        json!({"user_id": "u1", "amount": 1.0}),
        json!({"user_id": "ghost", "amount": 2.0}),
    ];
    let p = predict(&h, "joined", &values).await.unwrap();
    assert_eq!(
        joined_rows(&p),
        vec![expected_join("u1", 1.0), expected_join("ghost", 2.0)]
    );
    assert_eq!(
        expected_join("ghost", 2.0),
        vec![SPEND_DEFAULT, 2.0, VISITS_DEFAULT]
    );
    assert_eq!(p.defaulted, 2, "both features of `ghost` were defaulted");
}

#[tokio::test]
async fn a_missing_entity_fails_the_request_under_on_missing_error() {
    let h = harness(
        vec![joiner_model()],
        vec![endpoint("joined", "joiner@1")],
        Some(online_features(OnMissing::Error)),
    )
    .await;
    let known = predict(&h, "joined", &[json!({"user_id": "u2", "amount": 1.0})])
        .await
        .unwrap();
    assert_eq!(joined_rows(&known), vec![expected_join("u2", 1.0)]);
    let err = predict(
        &h,
        "joined",
        &[
            json!({"user_id": "u2", "amount": 1.0}),
            json!({"user_id": "ghost", "amount": 2.0}),
        ],
    )
    .await
    .unwrap_err();
    match &err {
        PredictError::Features(FeatureError::Missing(m)) => {
            assert!(m.contains("`ghost`"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.error_type(), "features");
}

#[tokio::test]
async fn a_row_without_its_request_column_or_entity_key_is_an_invalid_row() {
    let h = harness(
        vec![joiner_model()],
        vec![endpoint("joined", "joiner@1")],
        Some(online_features(OnMissing::Default)),
    )
    .await;
    for (row, says) in [
        (json!({"user_id": "u1"}), "amount"),
        (json!({"amount": 1.0}), "user_id"),
    ] {
        let err = predict(
            &h,
            "joined",
            &[json!({"user_id": "u1", "amount": 3.0}), row],
        )
        .await
        .unwrap_err();
        match &err {
            PredictError::Features(FeatureError::InvalidRow(m)) => {
                assert!(m.contains("instances[1]") && m.contains(says), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Transforms.

/// `shaped`'s pre steps: `scale` doubles `amount`, then `clip` caps it at 10.
fn shaped_pre() -> Vec<Value> {
    vec![
        json!({"scale": {"amount": {"factor": 2.0, "offset": 0.0}}}),
        json!({"clip": {"amount": {"max": 10.0}}}),
    ]
}
fn shaped_amount(amount: f32) -> f32 {
    (amount * 2.0).min(10.0)
}

/// `shaped`'s post steps: `calibrate` maps y from [0, 40] onto p in [0, 1], then `threshold`
/// labels p (it reads the field `calibrate` wrote).
fn shaped_post() -> Vec<Value> {
    vec![
        json!({"calibrate": {"field": "y", "table": [[0.0, 0.0], [40.0, 1.0]], "output": "p"}}),
        json!({"threshold": {"field": "p", "threshold": 0.5, "labels": ["low", "high"], "output": "label"}}),
    ]
}

#[tokio::test]
async fn pre_and_post_steps_run_in_order_around_the_model() {
    let mut e = endpoint("shaped", "pair@1");
    e.preprocess = shaped_pre();
    e.postprocess = shaped_post();
    let h = harness(vec![pair_model("pair", json!([]))], vec![e], None).await;
    // 7 tells the order apart: 7·2 = 14 → 10, where clip first would give 14.
    let rows = [(7.0f32, 1.0f32), (1.0, 2.0), (4.5, 0.0), (3.0, 20.0)];
    let values: Vec<Value> = rows
        .iter()
        .map(|(a, g)| json!({"amount": a, "age": g}))
        .collect();
    let p = predict(&h, "shaped", &values).await.unwrap();
    for (i, &(amount, age)) in rows.iter().enumerate() {
        let y = pair(shaped_amount(amount), age);
        let prob = (f64::from(y) / 40.0).clamp(0.0, 1.0);
        let label = if prob >= 0.5 { "high" } else { "low" };
        let got = p.predictions[i].as_object().unwrap();
        assert_eq!(as_f32(&got["y"]), y, "row {i}: {got:?}");
        assert!(
            (got["p"].as_f64().unwrap() - prob).abs() < 1e-9,
            "row {i}: {got:?}"
        );
        assert_eq!(got["label"], label, "row {i}: {got:?}");
    }
    let labels: Vec<&Value> = p.predictions.iter().map(|p| &p["label"]).collect();
    assert!(
        labels.contains(&&json!("high")) && labels.contains(&&json!("low")),
        "the rows reach both labels: {labels:?}"
    );
}

#[tokio::test]
async fn the_model_versions_own_preprocess_runs_before_the_endpoints() {
    let mut e = endpoint("owned", "scaled@1");
    e.preprocess = vec![json!({"clip": {"amount": {"max": 50.0}}})];
    let h = harness(
        vec![pair_model(
            "scaled",
            json!([{"scale": {"amount": {"factor": 10.0}}}]),
        )],
        vec![e],
        None,
    )
    .await;
    // 7 → 70 (model) → 50 (endpoint); the other order would give 70.
    let p = predict(
        &h,
        "owned",
        &[
            json!({"amount": 7.0, "age": 1.0}),
            json!({"amount": 2.0, "age": 1.0}),
        ],
    )
    .await
    .unwrap();
    let got: Vec<f32> = p.predictions.iter().map(as_f32).collect();
    assert_eq!(
        got,
        vec![
            pair((7.0f32 * 10.0).min(50.0), 1.0),
            pair((2.0f32 * 10.0).min(50.0), 1.0)
        ]
    );
}

#[tokio::test]
async fn pre_steps_see_joined_features_by_name() {
    let mut e = endpoint("joined", "joiner@1");
    // Doubles the joined visits; the request's amount gets a default first.
    e.preprocess = vec![
        json!({"fill_missing": {"amount": 100.0}}),
        json!({"scale": {"user_stats.visits_7d": {"factor": 2.0}}}),
    ];
    let h = harness(
        vec![joiner_model()],
        vec![e],
        Some(online_features(OnMissing::Default)),
    )
    .await;
    let p = predict(
        &h,
        "joined",
        &[
            json!({"user_id": "u3", "amount": 1.0}),
            json!({"user_id": "u1"}),
        ],
    )
    .await
    .unwrap();
    let twice_visits = |mut row: Vec<f32>| {
        row[2] *= 2.0;
        row
    };
    assert_eq!(
        joined_rows(&p),
        vec![
            twice_visits(expected_join("u3", 1.0)),
            twice_visits(expected_join("u1", 100.0)),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Errors.

#[tokio::test]
async fn an_unknown_endpoint_is_named_with_the_known_ones() {
    let h = ab_harness(&Calls::default()).await;
    let err = predict(&h, "nope", &[ab_row("u", 0)]).await.unwrap_err();
    match &err {
        PredictError::UnknownEndpoint { name, available } => {
            assert_eq!(name, "nope");
            assert_eq!(available, &["ab"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.error_type(), "unknown_endpoint");
}

#[tokio::test]
async fn rows_the_model_cannot_take_are_input_errors_and_never_reach_it() {
    let calls = Calls::default();
    let h = ab_harness(&calls).await;
    let before = calls.get();
    for (values, says) in [
        (vec![], "`instances` is empty"),
        (vec![json!({"user_id": "a"})], "has no key `x`"),
        (
            vec![json!({"user_id": "a", "x": [1.0, 2.0, 3.0]})],
            "input `x`",
        ),
        (
            vec![json!({"user_id": "a", "x": ["one", "two"]})],
            "input `x`",
        ),
    ] {
        let err = predict(&h, "ab", &values).await.unwrap_err();
        assert!(matches!(err, PredictError::Input(_)), "{err:?}");
        assert_eq!(err.error_type(), "invalid_input");
        assert!(err.to_string().contains(says), "{err}");
    }
    assert_eq!(calls.get(), before, "no bad row reached a model");
}

#[tokio::test]
async fn a_model_answering_another_number_of_rows_is_a_model_output_fault() {
    let h = harness(
        vec![extra_row_model()],
        vec![endpoint("liar", "liar@1")],
        None,
    )
    .await;
    let values: Vec<Value> = (0..3).map(|i| json!({"x": x_of(i)})).collect();
    let err = predict(&h, "liar", &values).await.unwrap_err();
    match &err {
        PredictError::ModelOutput(m) => {
            assert!(m.contains("liar@1") && m.contains("3 rows"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.error_type(), "model_output");
    let batch =
        RecordBatch::try_from_iter([("x", xs_column(&[x_of(0), x_of(1), x_of(2)]))]).unwrap();
    let err = h
        .pipeline
        .predict_columns("liar", &batch)
        .await
        .unwrap_err();
    assert!(matches!(err, PredictError::ModelOutput(_)), "{err:?}");
}

#[tokio::test]
async fn a_pre_step_rejecting_a_row_names_the_step_and_the_row() {
    let mut e = endpoint("shaped", "pair@1");
    e.preprocess = vec![
        json!({"fill_missing": {"age": 0}}),
        json!({"log1p": ["amount"]}),
    ];
    let h = harness(vec![pair_model("pair", json!([]))], vec![e], None).await;
    let values = [
        json!({"amount": 1.0, "age": 1.0}),
        json!({"amount": 2.0}),
        json!({"amount": -5.0, "age": 3.0}),
    ];
    let err = predict(&h, "shaped", &values).await.unwrap_err();
    let PredictError::Transform {
        endpoint,
        variant,
        error,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((endpoint.as_str(), variant.as_str()), ("shaped", "main"));
    assert_eq!((error.position, error.step.as_str()), (2, "log1p"));
    assert_eq!(error.row, Some(2));
    assert_eq!(error.kind, ErrorKind::Input);
    assert_eq!(err.error_type(), "transform");
    assert!(
        err.to_string().contains("step 2 (log1p) failed on row 2"),
        "{err}"
    );
}

/// Users of `ab`'s control first, then one of treatment: the last is row `len - 1` of a
/// request but row 0 of the treatment group.
fn control_then_treatment(controls: usize) -> Vec<String> {
    let split = Split::new(&AB_WEIGHTS);
    let variant_of = |u: &String| split.variant_of(bucket("ab", u));
    (0..)
        .map(|i| format!("s{i}"))
        .filter(|u| variant_of(u) == 0)
        .take(controls)
        .chain(
            (0..)
                .map(|i| format!("t{i}"))
                .filter(|u| variant_of(u) == 1)
                .take(1),
        )
        .collect()
}

// Rows split across variants run in groups; an error must still point at the row the client
// sent, not at its position within its variant's group.

#[tokio::test]

async fn a_row_error_in_a_split_request_names_the_row_of_the_request() {
    let mut e = ab_endpoint("ab");
    e.preprocess = vec![json!({"log1p": ["amount"]})];
    let calls = Calls::default();
    let h = harness(
        vec![
            linear_model("alpha", ALPHA, &calls),
            linear_model("beta", BETA, &calls),
        ],
        vec![e],
        None,
    )
    .await;
    let users = control_then_treatment(3);
    let bad = users.len() - 1;
    let values: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let amount = if i == bad { -5.0 } else { 1.0 };
            json!({"user_id": u, "x": x_of(i), "amount": amount})
        })
        .collect();
    let err = predict(&h, "ab", &values).await.unwrap_err();
    let PredictError::Transform { variant, error, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(variant, "treatment");
    assert_eq!(error.step, "log1p");
    assert_eq!(error.row, Some(bad), "{err}");
}

#[tokio::test]

async fn a_row_the_model_cannot_take_in_a_split_request_is_named_by_its_request_index() {
    let h = ab_harness(&Calls::default()).await;
    let users = control_then_treatment(3);
    let bad = users.len() - 1;
    let values: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            if i == bad {
                json!({"user_id": u})
            } else {
                ab_row(u, i)
            }
        })
        .collect();
    let err = predict(&h, "ab", &values).await.unwrap_err();
    assert!(matches!(err, PredictError::Input(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("instances[{bad}] has no key `x`")),
        "{err}"
    );
}
