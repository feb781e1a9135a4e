//! Business endpoints through the router (no socket): A/B assignment, forcing, reweighting,
//! transforms (built-in, script, Rust). Models: the embedded demo registry on tract; features:
//! the demo's in-process store.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferry_runtimes::OnnxEngine;
use ferry_server::config::{EndpointConfig, VariantConfig};
use ferry_server::http::AppState;
use ferry_server::{app, build_state_with, demo};
use ferry_transforms::{Context, ErrorKind, Registry, Row, Transform, TransformError};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tower::ServiceExt;

fn variant(name: &str, weight: u32) -> VariantConfig {
    VariantConfig {
        name: name.into(),
        model: "risk@1".into(),
        weight,
    }
}

fn ab(name: &str, weights: (u32, u32)) -> EndpointConfig {
    let mut e = EndpointConfig::new(
        name,
        vec![
            variant("control", weights.0),
            variant("treatment", weights.1),
        ],
    );
    e.sticky_key = Some("customer".into());
    e
}

async fn state(
    endpoints: Vec<EndpointConfig>,
    transforms: Registry,
) -> (AppState, tempfile::TempDir) {
    let dir = demo::extract().unwrap();
    let mut config = demo::config(dir.path().to_str().unwrap());
    config.onnx_engine = OnnxEngine::Tract;
    config.endpoints.extend(endpoints);
    let state = build_state_with(&config, transforms).await.unwrap();
    state.models.load_configured().await;
    assert!(state.models.is_ready(), "{:?}", state.models.index());
    (state, dir)
}

async fn predict(
    state: &AppState,
    endpoint: &str,
    rows: &[Value],
    forced: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::post(format!("/v1/endpoints/{endpoint}/predict"));
    if let Some(v) = forced {
        req = req.header("x-ferry-variant", v);
    }
    let req = req
        .body(Body::from(json!({ "instances": rows }).to_string()))
        .unwrap();
    let response = app(state.clone()).oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&body).expect("JSON body"),
    )
}

fn rows(keys: impl IntoIterator<Item = String>) -> Vec<Value> {
    keys.into_iter()
        .map(|k| json!({"user_id": k, "customer": k, "amount": 10.0}))
        .collect()
}

/// The documented formula (README "A/B experiments"), written out independently of ferry.
fn documented_variant(salt: &str, key: &str, weights: &[u64]) -> usize {
    let d = Sha256::digest(format!("{salt}:{key}").as_bytes());
    let bucket = u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000;
    let total: u64 = weights.iter().sum();
    let mut cumulative = 0;
    for (i, w) in weights.iter().enumerate() {
        cumulative += w;
        if bucket < cumulative * 10_000 / total {
            return i;
        }
    }
    unreachable!()
}

fn variants_of(body: &Value) -> Vec<String> {
    body["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_80_20_split_is_sticky_reproducible_and_forcible() {
    let (state, _dir) = state(vec![ab("exp", (80, 20))], Registry::new()).await;
    let keys: Vec<String> = (0..5000).map(|i| format!("user-{i}")).collect();
    let (status, headers, body) = predict(&state, "exp", &rows(keys.clone()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = variants_of(&body);
    let control = first.iter().filter(|v| *v == "control").count() as f64 / 5000.0;
    assert!((0.77..=0.83).contains(&control), "control share {control}");
    // Rows of one request went to both variants: no common variant, no variant header.
    assert!(
        body["variant"].is_null() && body["version"].is_null(),
        "{}",
        body["variant"]
    );
    assert!(headers.get("x-ferry-variant").is_none());
    assert_eq!(body["versions"].as_array().unwrap().len(), 5000);
    for (key, v) in keys.iter().zip(&first) {
        let expected = ["control", "treatment"][documented_variant("exp", key, &[80, 20])];
        assert_eq!(v, expected, "key {key}");
    }
    // The same key gets the same variant in another request, in another order.
    let reversed: Vec<String> = keys.iter().rev().take(700).cloned().collect();
    let (_, _, again) = predict(&state, "exp", &rows(reversed.clone()), None).await;
    for (key, v) in reversed.iter().zip(variants_of(&again)) {
        let i: usize = key.trim_start_matches("user-").parse().unwrap();
        assert_eq!(v, first[i], "key {key} changed variant");
    }
    // Forcing sends every row to the named variant; an unknown name is a 400 listing them.
    let (status, headers, forced) =
        predict(&state, "exp", &rows(keys[..50].to_vec()), Some("treatment")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(variants_of(&forced).iter().all(|v| v == "treatment"));
    assert_eq!(forced["variant"], "treatment");
    assert_eq!(forced["model"], "risk");
    assert_eq!(headers["x-ferry-variant"], "treatment");
    assert_eq!(headers["x-ferry-model-version"], "1");
    let (status, _, err) = predict(&state, "exp", &rows(keys[..1].to_vec()), Some("nope")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = err["error"].as_str().unwrap();
    assert!(
        message.contains("nope") && message.contains("treatment"),
        "{message}"
    );
    // Rows without the sticky key share one random draw per request.
    let keyless: Vec<Value> = (0..20)
        .map(|i| json!({"user_id": format!("u{i}"), "amount": 1.0}))
        .collect();
    let (status, _, body) = predict(&state, "exp", &keyless, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = variants_of(&body);
    assert!(v.iter().all(|x| *x == v[0]), "{v:?}");
    // Per-variant metrics.
    let metrics = state.metrics.render();
    for variant in ["control", "treatment"] {
        assert!(
            metrics.contains(&format!(
                "ferry_endpoint_requests_total{{endpoint=\"exp\",model=\"risk\",variant=\"{variant}\",version=\"1\"}}"
            )),
            "{variant}"
        );
        assert!(metrics.contains(&format!(
            "ferry_endpoint_variant_duration_seconds_count{{endpoint=\"exp\",variant=\"{variant}\"}}"
        )));
    }
}

#[tokio::test]
async fn reweighting_80_20_to_50_50_keeps_keys_in_the_overlap() {
    let (state, _dir) = state(vec![ab("exp", (80, 20))], Registry::new()).await;
    let keys: Vec<String> = (0..5000).map(|i| format!("user-{i}")).collect();
    let (_, _, before) = predict(&state, "exp", &rows(keys.clone()), None).await;
    let mut endpoints = state_endpoints();
    endpoints.push(ab("exp", (50, 50)));
    let summary = state.pipeline.reload(&endpoints).await.unwrap();
    assert_eq!(summary.changed, vec!["exp".to_string()]);
    let (_, _, after) = predict(&state, "exp", &rows(keys.clone()), None).await;
    let (before, after) = (variants_of(&before), variants_of(&after));
    let share = after.iter().filter(|v| *v == "control").count() as f64 / 5000.0;
    assert!(
        (0.47..=0.53).contains(&share),
        "control share after {share}"
    );
    let mut stayed = 0;
    for ((key, b), a) in keys.iter().zip(&before).zip(&after) {
        // Control's buckets shrink from [0, 8000) to [0, 5000) and treatment's grow from
        // [8000, 10000) to [5000, 10000): nobody moves into control, nobody leaves treatment.
        if a == "control" {
            assert_eq!(b, "control", "{key} moved into control");
        }
        if b == "treatment" {
            assert_eq!(a, "treatment", "{key} left treatment");
        }
        stayed += usize::from(a == b);
    }
    // Keys in [0, 5000) ∪ [8000, 10000), about 70%, keep their variant.
    assert!(
        (3350..=3650).contains(&stayed),
        "{stayed} of 5000 kept their variant"
    );
}

/// The demo endpoint, as `demo::config` defines it (reload replaces the whole list).
fn state_endpoints() -> Vec<EndpointConfig> {
    demo::config("/unused").endpoints
}

#[tokio::test]
async fn built_in_steps_change_what_the_model_sees_and_returns() {
    let mut scaled = EndpointConfig::new("scaled", vec![variant("only", 1)]);
    scaled.preprocess =
        serde_yaml::from_str("[{scale: {amount: {factor: 2.0, offset: 0}}}]").unwrap();
    scaled.postprocess = serde_yaml::from_str(
        "[{threshold: {field: probabilities, index: 1, threshold: 0.5, labels: [low, high], output: risk}}, {select: [risk, probabilities]}]",
    )
    .unwrap();
    let plain = EndpointConfig::new("plain", vec![variant("only", 1)]);
    let (state, _dir) = state(vec![scaled, plain], Registry::new()).await;
    let sent: Vec<Value> = ["u1", "u2", "u3", "nobody"]
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"user_id": u, "amount": 20.0 * i as f64 + 5.0}))
        .collect();
    let doubled: Vec<Value> = sent
        .iter()
        .map(|r| json!({"user_id": r["user_id"], "amount": r["amount"].as_f64().unwrap() * 2.0}))
        .collect();
    let (status, _, got) = predict(&state, "scaled", &sent, None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let (_, _, reference) = predict(&state, "plain", &doubled, None).await;
    for (g, r) in got["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["predictions"].as_array().unwrap())
    {
        // The plain endpoint answers with the model's outputs; the scaled one kept only
        // `probabilities` and added the thresholded label.
        assert_eq!(g["probabilities"], r["probabilities"]);
        let p1 = r["probabilities"][1].as_f64().unwrap();
        assert_eq!(g["risk"], if p1 >= 0.5 { "high" } else { "low" });
        assert_eq!(g.as_object().unwrap().len(), 2, "{g}");
    }
    // A step that cannot read a row is the client's mistake: a 400 naming the step and row.
    let (status, _, err) = predict(
        &state,
        "scaled",
        &[json!({"user_id": "u1", "amount": "lots"})],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let message = err["error"].as_str().unwrap();
    assert!(
        message.contains("scale") && message.contains("row 0"),
        "{message}"
    );
}

#[tokio::test]
async fn a_script_past_its_operation_limit_is_a_500_naming_it_and_serving_continues() {
    let mut looping = EndpointConfig::new("looping", vec![variant("only", 1)]);
    looping.postprocess = serde_yaml::from_str(
        "[{script: {name: spin, max_operations: 10000, source: 'fn transform(row, input) { if input.amount > 100.0 { loop { } } row }'}}]",
    )
    .unwrap();
    let (state, _dir) = state(vec![looping], Registry::new()).await;
    let (status, _, body) = predict(
        &state,
        "looping",
        &[json!({"user_id": "u1", "amount": 500.0})],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("spin"), "{message}");
    let (status, _, body) = predict(
        &state,
        "looping",
        &[json!({"user_id": "u1", "amount": 5.0})],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = predict(
        &state,
        "risk",
        &[json!({"user_id": "u1", "amount": 5.0})],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// A rule a team writes in Rust: a floor on `probabilities[1]` for rows from one country.
struct FloorForCountry;

impl Transform for FloorForCountry {
    fn name(&self) -> &str {
        "rust:floor_for_country"
    }
    fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError> {
        let inputs = ctx.inputs.expect("post steps see the request rows");
        for (i, row) in rows.iter_mut().enumerate() {
            if inputs[i].get("country").and_then(Value::as_str) != Some("DE") {
                continue;
            }
            let p = row
                .get_mut("probabilities")
                .and_then(|p| p.get_mut(1))
                .ok_or_else(|| TransformError {
                    step: self.name().into(),
                    position: 0,
                    row: Some(i),
                    kind: ErrorKind::Fault,
                    message: "no probabilities[1]".into(),
                })?;
            *p = json!(p.as_f64().unwrap_or(0.0).max(0.9));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_rust_transform_registered_by_a_custom_build_runs_in_the_pipeline() {
    let mut transforms = Registry::new();
    transforms.register(
        "floor_for_country",
        Arc::new(|_params: &Value| Ok(Box::new(FloorForCountry) as Box<dyn Transform>)),
    );
    let mut floored = EndpointConfig::new("floored", vec![variant("only", 1)]);
    floored.postprocess = serde_yaml::from_str("[{rust: {name: floor_for_country}}]").unwrap();
    let (state, _dir) = state(vec![floored], transforms).await;
    let sent = [
        json!({"user_id": "u1", "amount": 5.0, "country": "DE"}),
        json!({"user_id": "u1", "amount": 5.0, "country": "FR"}),
    ];
    let (status, _, body) = predict(&state, "floored", &sent, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, plain) = predict(&state, "risk", &sent, None).await;
    let p = &body["predictions"];
    let raw = plain["predictions"][0]["probabilities"][1]
        .as_f64()
        .unwrap();
    assert_eq!(p[0]["probabilities"][1].as_f64().unwrap(), raw.max(0.9));
    assert_eq!(
        p[1]["probabilities"],
        plain["predictions"][1]["probabilities"]
    );
    // An unknown Rust transform is a start-up error naming the registered ones.
    let mut bad = EndpointConfig::new("bad", vec![variant("only", 1)]);
    bad.postprocess = serde_yaml::from_str("[{rust: {name: nope}}]").unwrap();
    let dir = demo::extract().unwrap();
    let mut config = demo::config(dir.path().to_str().unwrap());
    config.endpoints.push(bad);
    let err = build_state_with(&config, Registry::new())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("endpoints[1].postprocess"),
        "{err}"
    );
}

/// A pre step that takes longer than the callers below allow.
struct Slow(std::time::Duration);

impl Transform for Slow {
    fn name(&self) -> &str {
        "rust:slow"
    }
    fn apply(&self, _rows: &mut [Row], _ctx: &Context<'_>) -> Result<(), TransformError> {
        std::thread::sleep(self.0);
        Ok(())
    }
}

#[tokio::test]
async fn endpoints_honour_the_timeout_header_and_request_timeout_ms() {
    let mut transforms = Registry::new();
    transforms.register(
        "slow",
        Arc::new(|_params: &Value| {
            Ok(Box::new(Slow(std::time::Duration::from_millis(300))) as Box<dyn Transform>)
        }),
    );
    let mut slow = EndpointConfig::new("slow", vec![variant("only", 1)]);
    slow.preprocess = serde_yaml::from_str("[{rust: {name: slow}}]").unwrap();
    let dir = demo::extract().unwrap();
    let mut config = demo::config(dir.path().to_str().unwrap());
    config.onnx_engine = OnnxEngine::Tract;
    config.request_timeout_ms = 100;
    config.endpoints.push(slow);
    let state = build_state_with(&config, transforms).await.unwrap();
    state.models.load_configured().await;
    assert!(state.models.is_ready(), "{:?}", state.models.index());

    let send = |timeout_header: Option<&str>| {
        let mut req = Request::post("/v1/endpoints/slow/predict");
        if let Some(ms) = timeout_header {
            req = req.header("x-ferry-timeout-ms", ms);
        }
        let req = req
            .body(Body::from(
                json!({"instances": [{"user_id": "u1", "amount": 1.0}]}).to_string(),
            ))
            .unwrap();
        let app = app(state.clone());
        async move {
            let response = app.oneshot(req).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    // The header's deadline.
    let (status, body) = send(Some("50")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("50 ms"), "{body}");
    // No header: `request_timeout_ms`.
    let (status, body) = send(None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("100 ms"), "{body}");
    // A header longer than `request_timeout_ms` wins, as on the model routes.
    let (status, body) = send(Some("10000")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A malformed header is the client's mistake.
    let (status, body) = send(Some("soon")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
