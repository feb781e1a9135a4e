//! HTTP behaviour without a socket: the router is driven with `oneshot` over the embedded demo
//! registry on tract (no external library needed).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferry_runtimes::OnnxEngine;
use ferry_server::http::{AppState, OPENAPI_JSON};
use ferry_server::{app, build_state, demo};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn state_with(max_body_bytes: usize) -> (AppState, tempfile::TempDir) {
    let dir = demo::extract().unwrap();
    let mut config = demo::config(dir.path().to_str().unwrap());
    config.onnx_engine = OnnxEngine::Tract;
    config.max_body_bytes = max_body_bytes;
    let state = build_state(&config).await.unwrap();
    state.models.load_configured().await;
    assert!(state.models.is_ready(), "{:?}", state.models.index());
    (state, dir)
}

async fn send(
    state: &AppState,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app(state.clone()).oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri).body(body.into()).unwrap()
}

fn churn_request(rows: usize) -> String {
    json!({"inputs": [{"name": "X", "shape": [rows, 30], "datatype": "FP32", "data": vec![0.5f32; rows * 30]}]}).to_string()
}

fn error_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).expect("error bodies are JSON");
    v["error"]
        .as_str()
        .expect("error bodies have an `error` string")
        .to_string()
}

#[tokio::test]
async fn every_documented_route_exists() {
    let (state, _dir) = state_with(1 << 20).await;
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 13);
    for (path, ops) in paths {
        let concrete = path.replace("{model}", "churn").replace("{version}", "1");
        for method in ops.as_object().unwrap().keys() {
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&concrete)
                .body(Body::from(churn_request(1)))
                .unwrap();
            let (status, _, body) = send(&state, req).await;
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

#[tokio::test]
async fn documented_error_statuses_match_the_error_mapping() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let infer = &doc["paths"]["/v2/models/{model}/infer"]["post"]["responses"];
    for status in ferry_server::http::error::ApiError::STATUSES {
        // 405 is answered for any documented path with another method; 403 only by the
        // control API (401 by both: the admin token there, API keys here).
        if status == 405 || status == 403 {
            continue;
        }
        assert!(
            infer.get(status.to_string()).is_some(),
            "status {status} is not documented for infer"
        );
    }
}

#[tokio::test]
async fn routes_behind_api_keys_document_the_401_and_the_others_do_not_ask() {
    let (mut state, _dir) = state_with(1 << 20).await;
    state.api_keys = ferry_server::http::auth::ApiKeys::parse("key-1");
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let mut keyed = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{model}", "churn")
            .replace("{version}", "1")
            .replace("{endpoint}", "risk");
        for (method, op) in ops.as_object().unwrap() {
            let req = || {
                Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&concrete)
                    .body(Body::from(churn_request(1)))
                    .unwrap()
            };
            let (status, _, body) = send(&state, req()).await;
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_object()?.keys().next().map(String::as_str))
                .collect();
            let wants_key = schemes.contains(&"apiKey");
            if status == StatusCode::UNAUTHORIZED && !schemes.contains(&"adminToken") {
                keyed += 1;
                assert!(
                    wants_key && schemes.contains(&"apiKeyHeader"),
                    "{method} {path} asks for an API key, but its security is {schemes:?}"
                );
                assert!(
                    op["responses"].get("401").is_some(),
                    "{method} {path} answers 401 without a key, undocumented"
                );
                assert!(error_message(&body).contains("API key"));
                // `{}` first: the route is open when no keys are configured.
                assert_eq!(op["security"][0], json!({}), "{method} {path}");
            } else {
                assert!(
                    !wants_key,
                    "{method} {path} documents an API key it does not ask for"
                );
            }
        }
    }
    assert_eq!(
        keyed, 5,
        "infer (2), v1 predict, endpoint predict, features"
    );
}

#[tokio::test]
async fn infer_json_returns_every_output() {
    let (state, _dir) = state_with(1 << 20).await;
    let (status, headers, body) =
        send(&state, post("/v2/models/churn/infer", churn_request(3))).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("x-request-id"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["model_name"], "churn");
    assert_eq!(v["model_version"], "1");
    assert_eq!(v["outputs"][0]["name"], "label");
    assert_eq!(v["outputs"][0]["shape"], json!([3]));
    assert_eq!(v["outputs"][1]["shape"], json!([3, 2]));
    let p: Vec<f64> = serde_json::from_value(v["outputs"][1]["data"].clone()).unwrap();
    for row in p.chunks(2) {
        assert!(
            (row[0] + row[1] - 1.0).abs() < 1e-5,
            "probabilities sum to 1: {row:?}"
        );
    }
}

#[tokio::test]
async fn client_mistakes_are_json_4xx_naming_the_problem() {
    let (state, _dir) = state_with(4096).await;
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (post("/v2/models/churn/infer", "{not json"), StatusCode::BAD_REQUEST, "not a valid inference request"),
        (post("/v2/models/churn/infer", json!({"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP64", "data": vec![0.0; 30]}]}).to_string()), StatusCode::BAD_REQUEST, "FP64"),
        (post("/v2/models/churn/infer", json!({"inputs": [{"name": "X", "shape": [1, 29], "datatype": "FP32", "data": vec![0.0; 29]}]}).to_string()), StatusCode::BAD_REQUEST, "shape"),
        (post("/v2/models/churn/infer", json!({"inputs": []}).to_string()), StatusCode::BAD_REQUEST, "input `X` is missing"),
        (post("/v2/models/churn/infer", json!({"inputs": [{"name": "Y", "shape": [1], "datatype": "FP32", "data": [1]}]}).to_string()), StatusCode::BAD_REQUEST, "unknown input `Y`"),
        (post("/v2/models/nope/infer", churn_request(1)), StatusCode::NOT_FOUND, "unknown model `nope`"),
        (post("/v2/models/churn/versions/9/infer", churn_request(1)), StatusCode::NOT_FOUND, "no version 9"),
        (post("/v2/models/churn/infer", churn_request(100)), StatusCode::PAYLOAD_TOO_LARGE, "4096 bytes"),
        (Request::get("/v2/models/churn/infer").body(Body::empty()).unwrap(), StatusCode::METHOD_NOT_ALLOWED, "GET"),
        (Request::get("/nowhere").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND, "/nowhere"),
        (post("/v1/models/churn:predict", "{}"), StatusCode::BAD_REQUEST, "instances"),
        (post("/v1/models/churn:explain", "{}"), StatusCode::NOT_FOUND, ":predict"),
        (post("/v2/models/churn/infer", json!({"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": vec![0.0; 30]}], "outputs": [{"name": "nope"}]}).to_string()), StatusCode::BAD_REQUEST, "unknown output `nope`"),
    ];
    for (req, want, needle) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, headers, body) = send(&state, req).await;
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
        assert_eq!(headers["content-type"], "application/json", "{what}");
        let message = error_message(&body);
        assert!(
            message.contains(needle),
            "{what}: {needle:?} not in {message:?}"
        );
    }
    // Still serving.
    let (status, _, _) = send(&state, post("/v2/models/churn/infer", churn_request(1))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let (state, _dir) = state_with(1 << 20).await;
    let req = Request::get("/v2/health/live")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = send(&state, req).await;
    assert_eq!(headers["x-request-id"], "abc-123");
    let (_, a, _) = send(
        &state,
        Request::get("/v2/health/live").body(Body::empty()).unwrap(),
    )
    .await;
    let (_, b, _) = send(
        &state,
        Request::get("/v2/health/live").body(Body::empty()).unwrap(),
    )
    .await;
    assert_ne!(a["x-request-id"], b["x-request-id"]);
}

#[tokio::test]
async fn metrics_count_requests_by_model_and_version() {
    let (state, _dir) = state_with(1 << 20).await;
    for _ in 0..3 {
        send(&state, post("/v2/models/churn/infer", churn_request(2))).await;
    }
    send(&state, post("/v2/models/churn/infer", "garbage")).await;
    send(&state, post("/v2/models/unknown-model/infer", "garbage")).await;
    let (_, _, body) = send(
        &state,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    let text = String::from_utf8(body).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} missing in\n{text}"))
            .to_string()
    };
    assert!(
        line("ferry_requests_total{model=\"churn\",protocol=\"v2\",version=\"1\"}").ends_with(" 4")
    );
    assert!(
        line("ferry_request_errors_total{error_type=\"bad_request\",model=\"churn\"}")
            .ends_with(" 1")
    );
    assert!(
        line("ferry_request_errors_total{error_type=\"unknown_model\",model=\"_unknown\"}")
            .ends_with(" 1")
    );
    assert!(
        line("ferry_stage_duration_seconds_count{model=\"churn\",stage=\"infer\",version=\"1\"}")
            .ends_with(" 3")
    );
    assert!(
        !text.contains("unknown-model"),
        "client-chosen names never become label values"
    );
}

#[tokio::test]
async fn readiness_turns_false_on_shutdown() {
    let (state, _dir) = state_with(1 << 20).await;
    let ready = || {
        Request::get("/v2/health/ready")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&state, ready()).await.0, StatusCode::OK);
    state
        .shutting_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (status, headers, body) = send(&state, ready()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert!(error_message(&body).contains("shutting down"));
    assert_eq!(
        send(
            &state,
            Request::get("/v2/health/live").body(Body::empty()).unwrap()
        )
        .await
        .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn model_control_is_off_without_a_token_and_checks_the_token() {
    let (mut state, _dir) = state_with(1 << 20).await;
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    for action in ["load", "unload"] {
        let responses =
            &doc["paths"][format!("/v2/repository/models/{{model}}/{action}")]["post"]["responses"];
        for status in ferry_server::http::error::ApiError::CONTROL_STATUSES {
            assert!(
                responses.get(status.to_string()).is_some(),
                "{status} undocumented for {action}"
            );
        }
    }
    let (status, _, body) = send(&state, post("/v2/repository/models/churn/load", "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("FERRY_ADMIN_TOKEN"));

    state.admin_token = ferry_server::http::control::AdminToken::new(Some("s3cret"));
    let with_token = |path: &str, token: &str| {
        Request::post(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let (status, headers, _) = send(&state, post("/v2/repository/models/churn/unload", "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = send(
        &state,
        with_token("/v2/repository/models/churn/unload", "wrong"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = send(
        &state,
        with_token("/v2/repository/models/nope/load", "s3cret"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );

    let (status, _, body) = send(
        &state,
        with_token("/v2/repository/models/churn/unload", "s3cret"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = send(&state, post("/v2/models/churn/infer", churn_request(1))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = send(
        &state,
        with_token("/v2/repository/models/churn/load", "s3cret"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["version"], "1");
    let (status, _, _) = send(&state, post("/v2/models/churn/infer", churn_request(1))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn inference_beyond_the_inflight_limit_is_shed_but_probes_answer() {
    let (mut state, _dir) = state_with(1 << 20).await;
    state.inflight = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let (status, headers, body) =
        send(&state, post("/v2/models/churn/infer", churn_request(1))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    assert!(error_message(&body).contains("max_concurrent_requests"));
    let (status, _, _) = send(
        &state,
        post("/v1/models/churn:predict", r#"{"instances": []}"#),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    for probe in [
        "/v2/health/live",
        "/v2/health/ready",
        "/metrics",
        "/v2/models/churn",
    ] {
        let (status, _, _) = send(&state, Request::get(probe).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{probe}");
    }
}
