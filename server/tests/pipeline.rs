//! `ferry_pipeline::Pipeline::predict` over the embedded demo registry on tract (no sockets,
//! no HTTP): which failures are the rows' fault (`PredictError::Input`) and which the model's
//! (`PredictError::ModelOutput`). Statuses are `http::error`'s business and tested there.
//! The demo registry lives with the server (it is embedded in the binary), so these tests do
//! too, through the pipeline crate's public API.

use ferry_models::ModelManager;
use ferry_pipeline::config::{EndpointConfig, VariantConfig};
use ferry_pipeline::rows::{self, InvalidRows};
use ferry_pipeline::{Pipeline, PredictError, PredictOptions, Predictions};
use ferry_runtimes::OnnxEngine;
use ferry_server::telemetry::metrics::Metrics;
use ferry_transforms::Row;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

fn endpoint(name: &str, model: &str) -> EndpointConfig {
    EndpointConfig::new(
        name,
        vec![VariantConfig {
            name: "main".into(),
            model: model.into(),
            weight: 100,
        }],
    )
}

/// A pipeline over the demo registry with `endpoints`; `edit` may change the extracted
/// registry before anything loads.
async fn pipeline(
    endpoints: Vec<EndpointConfig>,
    edit: impl FnOnce(&Path),
) -> (Arc<Pipeline>, Arc<ModelManager>, tempfile::TempDir) {
    let dir = ferry_server::demo::extract().unwrap();
    edit(dir.path());
    let mut config = ferry_server::demo::config(dir.path().to_str().unwrap());
    config.onnx_engine = OnnxEngine::Tract;
    config.endpoints.extend(endpoints);
    let metrics = Metrics::new();
    let served = ferry_pipeline::Setup {
        registry: config.registry.options(),
        models: config.models_config(),
        features: config.features.as_ref(),
        endpoints: &config.endpoints,
        options: ferry_server::pipeline_options(&config),
        transforms: ferry_transforms::Registry::new(),
        model_metrics: metrics.models.clone(),
        pipeline_metrics: metrics.pipeline.clone(),
    }
    .build()
    .await
    .unwrap();
    let (pipeline, models) = (served.pipeline, served.models);
    models.load_configured().await;
    assert!(models.is_ready(), "{:?}", models.index());
    (pipeline, models, dir)
}

fn objects(rows: &[Value]) -> Vec<Row> {
    rows.iter()
        .map(|r| r.as_object().expect("rows are objects").clone())
        .collect()
}

fn churn_row(seed: usize) -> Value {
    json!({"X": (0..30).map(|i| ((seed * 31 + i) % 7) as f64 - 3.0).collect::<Vec<_>>()})
}

async fn predict(
    pipeline: &Pipeline,
    endpoint: &str,
    rows: &[Value],
) -> Result<Predictions, PredictError> {
    pipeline
        .predict(endpoint, objects(rows), &PredictOptions::default())
        .await
}

#[tokio::test]
async fn rows_that_do_not_fit_the_model_are_input_errors() {
    let (pipeline, _models, _dir) = pipeline(vec![endpoint("plain", "churn@1")], |_| {}).await;
    let short: Vec<f64> = vec![0.5; 29];
    for (rows, says) in [
        (vec![], "`instances` is empty: send at least one instance"),
        (
            vec![churn_row(0), json!({"x": [1.0]})],
            "instances[1] has no key `X`; instances that are objects are keyed by input name ([\"X\"])",
        ),
        (
            vec![json!({"X": short})],
            "input `X` has shape [1, 29] but the model expects [-1, 30] (-1 = any size)",
        ),
        (
            vec![churn_row(0), json!({"X": [short, short]})],
            "input `X`: `data` has more than the 60 elements the shape describes (every instance must have shape [30], like instances[0]",
        ),
        (
            vec![json!({"X": vec!["one"; 30]})],
            "input `X`: `data[0]` is \"one\", which is not a FP32 value",
        ),
    ] {
        let err = predict(&pipeline, "plain", &rows).await.unwrap_err();
        assert!(matches!(err, PredictError::Input(_)), "{err:?}");
        assert_eq!(err.error_type(), "invalid_input");
        assert!(err.to_string().starts_with(says), "{err}");
    }
}

#[tokio::test]
async fn a_model_answering_outside_its_signature_is_a_model_output_fault() {
    // The declared width is checked against the model only when it answers (the engine
    // check at load compares ranks): the model then breaks its own signature.
    let (pipeline, _models, _dir) = pipeline(vec![endpoint("wide", "mlp@1")], |root| {
        let path = root.join("mlp/1/model.yaml");
        let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        manifest["outputs"][0]["shape"] = json!([-1, 2]);
        std::fs::write(&path, manifest.to_string()).unwrap();
    })
    .await;
    let rows = vec![json!({"X": vec![0.25; 64]}); 3];
    let err = predict(&pipeline, "wide", &rows).await.unwrap_err();
    assert!(matches!(err, PredictError::ModelOutput(_)), "{err:?}");
    assert_eq!(err.error_type(), "model_output");
    let message = err.to_string();
    assert!(
        message.starts_with("model mlp@1 answered output `variable` with shape [3, 1] for 3 rows")
            && message.contains("(a model fault, not the rows')"),
        "{message}"
    );
}

#[tokio::test]
async fn endpoint_rows_score_as_the_same_instances_sent_to_the_model() {
    let (pipeline, models, _dir) = pipeline(vec![endpoint("plain", "churn@1")], |_| {}).await;
    let rows: Vec<Value> = (0..5).map(churn_row).collect();
    let p = predict(&pipeline, "plain", &rows).await.unwrap();
    assert_eq!(p.common(), Some(("main", "churn", 1)));
    // The v1 path: instances → model → predictions, without the pipeline.
    let model = models.lookup("churn", Some("1")).unwrap();
    let inputs = rows::instances_to_tensors(&rows, model.signature()).unwrap();
    let inputs = model.signature().validate_inputs(inputs).unwrap();
    let outputs = model.queue.submit(inputs).await.unwrap();
    assert_eq!(p.predictions, rows::predictions(&outputs).unwrap());
    assert!(
        p.predictions[0]["probabilities"].is_array(),
        "{:?}",
        p.predictions[0]
    );
}

#[test]
fn codec_errors_keep_their_side() {
    let e: PredictError = InvalidRows("input `X`: expected 30 values".into()).into();
    assert!(matches!(e, PredictError::Input(_)));
    assert_eq!(e.error_type(), "invalid_input");
    assert_eq!(e.to_string(), "input `X`: expected 30 values");
    let e = PredictError::ModelOutput("model m@1 answered ...".into());
    assert_eq!(e.error_type(), "model_output");
}

/// The column-wise path and the row path over the same random rows: the same variant for
/// every row (sticky hash of integer and string keys, rows without a key), and the same
/// predictions, bit for bit.
#[tokio::test]
async fn column_and_row_paths_agree_on_random_rows() {
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};

    let mut split = EndpointConfig::new(
        "ab",
        vec![
            VariantConfig {
                name: "a".into(),
                model: "churn@1".into(),
                weight: 55,
            },
            VariantConfig {
                name: "b".into(),
                model: "churn@champion".into(),
                weight: 45,
            },
        ],
    );
    split.sticky_key = Some("user".into());
    let (pipeline, _models, _dir) = pipeline(vec![split], |_| {}).await;
    let mut rng = fastrand::Rng::with_seed(16);
    for round in 0..12 {
        let n = rng.usize(1..150);
        let mut x = FixedSizeListBuilder::new(Float32Builder::new(), 30);
        for _ in 0..n {
            for _ in 0..30 {
                x.values().append_value(rng.f32() * 20.0 - 10.0);
            }
            x.append(true);
        }
        let user: ArrayRef = if round % 2 == 0 {
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|_| rng.i64(-1_000_000..1_000_000)),
            ))
        } else {
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|_| format!("user-{}", rng.u32(..))),
            ))
        };
        let mut columns: Vec<(&str, ArrayRef)> = vec![("X", Arc::new(x.finish()))];
        // Every third round has no key column: all rows get one random variant per call.
        if round % 3 != 2 {
            columns.push(("user", user));
        }
        let batch = RecordBatch::try_from_iter(columns).unwrap();

        let rows = ferry_pipeline::arrow_rows::batch_to_rows(&batch).unwrap();
        let by_rows = pipeline
            .predict("ab", rows, &PredictOptions::default())
            .await
            .unwrap();
        let groups = pipeline
            .predict_columns("ab", &batch)
            .await
            .unwrap()
            .expect("a plain split over numeric columns goes column-wise");
        let mut variants = vec![String::new(); n];
        let mut predictions = vec![Value::Null; n];
        for g in &groups {
            let answers = rows::predictions(&g.outputs).unwrap();
            for (&row, p) in g.rows.iter().zip(answers) {
                variants[row] = g.variant.clone();
                predictions[row] = p;
            }
        }
        if round % 3 == 2 {
            // Keyless rows share one random draw per call, on either path.
            assert_eq!(groups.len(), 1, "round {round}");
            assert!(by_rows.variants.iter().all(|v| v == &by_rows.variants[0]));
            assert_eq!(predictions, by_rows.predictions, "round {round}");
            continue;
        }
        assert_eq!(variants, by_rows.variants, "round {round}");
        assert_eq!(predictions, by_rows.predictions, "round {round}");
    }
}

/// An endpoint with built-in transforms around a `features` model (the demo `risk`: entity
/// join + request column): the column-wise path, transforms included, gives the row path's
/// predictions bit for bit, with the feature values named, filled and scaled as columns.
#[tokio::test]
async fn column_and_row_paths_agree_with_transforms_and_features() {
    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};

    let mut tf = endpoint("risk_tf", "risk@1");
    tf.preprocess = serde_json::from_value(json!([
        {"fill_missing": {"amount": 0}},
        {"clip": {"amount": {"min": 0, "max": 1000}}},
        {"standardize": {"user_stats.spend_30d": {"mean": 250, "std": 120}}},
        {"log1p": ["user_stats.visits_7d"]}
    ]))
    .unwrap();
    tf.postprocess = serde_json::from_value(json!([
        {"threshold": {"field": "probabilities", "index": 1, "threshold": 0.5,
                       "labels": ["approve", "review"], "output": "decision"}},
        {"calibrate": {"field": "probabilities", "index": 1,
                       "table": [[0, 0], [0.5, 0.4], [1, 1]], "output": "score"}},
        {"select": ["decision", "score", "label"]}
    ]))
    .unwrap();
    let mut scripted = endpoint("risk_script", "risk@1");
    scripted.postprocess = serde_json::from_value(json!([
        {"script": {"source": "fn transform(row, input) { row }"}}
    ]))
    .unwrap();
    let (pipeline, _models, _dir) = pipeline(vec![tf, scripted], |_| {}).await;
    let mut rng = fastrand::Rng::with_seed(21);
    for round in 0..10 {
        let n = rng.usize(1..120);
        // Known users, and some the store has no row for (their features get the default).
        let users: ArrayRef =
            Arc::new(StringArray::from_iter_values((0..n).map(
                |_| match rng.u8(..10) {
                    0 => "nobody".to_string(),
                    _ => format!("u{}", rng.u32(1..40)),
                },
            )));
        let amount: ArrayRef = if round % 2 == 0 {
            Arc::new(Float64Array::from_iter(
                (0..n).map(|_| (rng.u8(..10) > 0).then(|| rng.f64() * 1500.0 - 100.0)),
            ))
        } else {
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|_| rng.i64(-50..1500)),
            ))
        };
        let batch = RecordBatch::try_from_iter([("user_id", users), ("amount", amount)]).unwrap();
        let rows = ferry_pipeline::arrow_rows::batch_to_rows(&batch).unwrap();
        // Forcing the (only) variant keeps `predict` on the row path, the reference: without
        // it, JSON rows that map onto columns would take the column path too.
        let row_path = PredictOptions {
            forced_variant: Some("main".into()),
            ..PredictOptions::default()
        };
        let by_rows = pipeline.predict("risk_tf", rows, &row_path).await.unwrap();
        let groups = pipeline
            .predict_columns("risk_tf", &batch)
            .await
            .unwrap()
            .expect("built-in steps over numeric columns go column-wise");
        let mut predictions = vec![Value::Null; n];
        for g in &groups {
            let answer = g.post.as_ref().expect("the postprocess answers as columns");
            let objects =
                ferry_pipeline::arrow_rows::batch_to_rows(&answer.to_batch().unwrap()).unwrap();
            for (&row, p) in g.rows.iter().zip(objects) {
                predictions[row] = Value::Object(p);
            }
        }
        assert_eq!(predictions, by_rows.predictions, "round {round}");
        // A step without a column form (a script) leaves the batch to the row path.
        assert!(
            pipeline
                .predict_columns("risk_script", &batch)
                .await
                .unwrap()
                .is_none()
        );
    }
}
