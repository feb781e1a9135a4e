//! Open Inference Protocol v2 handlers (and v1 predict, which shares the model path).

use crate::http::error::ApiError;
use crate::http::{AppState, oip, read_body, request_timeout, v1};
use crate::telemetry::metrics::UNKNOWN_MODEL;
use axum::Json;
use axum::extract::Request;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_models::LoadedModel;
use ferry_models::metrics::Protocol;
use ferry_pipeline::rows;
use ferry_pipeline::stage_span;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

type PathParams = Result<Path<HashMap<String, String>>, PathRejection>;

fn params(path: PathParams) -> Result<HashMap<String, String>, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::BadRequest(format!("invalid path: {e}")))
}

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    if state.is_shutting_down() {
        return ApiError::ShuttingDown.into_response();
    }
    if state.models.is_ready() {
        Json(json!({ "ready": true })).into_response()
    } else {
        let waiting: Vec<String> = state
            .models
            .index()
            .into_iter()
            .filter(|e| e.state != "READY")
            .map(|e| match e.version {
                Some(v) => format!(
                    "{}@{v}: {}",
                    e.name,
                    if e.reason.is_empty() {
                        e.state.to_lowercase()
                    } else {
                        e.reason
                    }
                ),
                None => format!("{}: {}", e.name, e.reason),
            })
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({
                "ready": false,
                "error": format!("not ready: configured models not loaded: {}", waiting.join("; ")),
            })),
        )
            .into_response()
    }
}

pub async fn server_metadata(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "name": "ferry",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository"],
        "devices": state.models.devices(),
    }))
}

pub(crate) fn platform(model: &LoadedModel) -> &'static str {
    match model.manifest.format {
        // Tree-ensemble graphs that `auto` (or `onnx_engine: trees`) put on the trees engine.
        ferry_registry::ModelFormat::Onnx
            if model.runtime.engine() == ferry_runtimes::Engine::Trees =>
        {
            "onnx_trees"
        }
        ferry_registry::ModelFormat::Onnx => "onnx_onnxv1",
        ferry_registry::ModelFormat::Safetensors => "safetensors_candle",
        ferry_registry::ModelFormat::Xgboost => "xgboost_trees",
        ferry_registry::ModelFormat::Lightgbm => "lightgbm_trees",
    }
}

pub async fn model_metadata(
    State(state): State<AppState>,
    path: PathParams,
) -> Result<Response, ApiError> {
    let p = params(path)?;
    let model = state
        .models
        .lookup(&p["model"], p.get("version").map(String::as_str))?;
    let versions: Vec<String> = state
        .models
        .ready_versions(&model.name)
        .iter()
        .map(u64::to_string)
        .collect();
    let mut body = json!({
        "name": model.name,
        "versions": versions,
        "platform": platform(&model),
        "inputs": model.manifest.inputs,
        "outputs": model.manifest.outputs,
        "parameters": {
            "version": model.version.to_string(),
            "engine": model.runtime.engine().as_str(),
            "device": model.runtime.device().to_string(),
            "intra_op_threads": model.intra_op_threads,
            "metadata": model.manifest.metadata,
        },
    });
    if let Some(n) = model.ort_sessions {
        body["parameters"]["onnxruntime_sessions"] = n.into();
    }
    Ok(Json(body).into_response())
}

pub async fn model_ready(
    State(state): State<AppState>,
    path: PathParams,
) -> Result<Response, ApiError> {
    let p = params(path)?;
    let model = state
        .models
        .lookup(&p["model"], p.get("version").map(String::as_str))?;
    Ok(
        Json(json!({ "name": model.name, "version": model.version.to_string(), "ready": true }))
            .into_response(),
    )
}

/// Triton's statistics extension: `GET /v2/models/stats`.
pub async fn stats_all(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all = crate::telemetry::stats::model_stats(&state.models, &state.metrics, None, None)?;
    Ok(Json(json!({ "model_stats": all })).into_response())
}

/// `GET /v2/models/{model}[/versions/{version}]/stats`.
pub async fn stats(State(state): State<AppState>, path: PathParams) -> Result<Response, ApiError> {
    let p = params(path)?;
    let all = crate::telemetry::stats::model_stats(
        &state.models,
        &state.metrics,
        Some(&p["model"]),
        p.get("version").map(String::as_str),
    )?;
    Ok(Json(json!({ "model_stats": all })).into_response())
}

pub async fn repository_index(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(state.models.index()).unwrap_or_default())
}

/// Runs a handler body that infers on one model, recording request metrics with the model's
/// labels (or `_unknown` when the model did not resolve). HTTP and gRPC share it.
pub(crate) async fn with_model_metrics<T, F>(
    state: &AppState,
    protocol: Protocol,
    work: F,
) -> Result<T, ApiError>
where
    F: AsyncFnOnce(&mut Option<Arc<LoadedModel>>) -> Result<T, ApiError>,
{
    let started = Instant::now();
    let mut model = None;
    let result = work(&mut model).await;
    let (name, version) = match &model {
        Some(m) => (m.name.as_str(), m.version.to_string()),
        None => (UNKNOWN_MODEL, String::new()),
    };
    if let Some(m) = &model {
        let span = tracing::Span::current();
        span.record("model", name);
        span.record("version", version.as_str());
        crate::telemetry::access::record_model(name, &version);
        m.request_metrics.requests(protocol).inc();
    }
    match &result {
        Ok(_) => {
            let seconds = started.elapsed().as_secs_f64();
            match &model {
                Some(m) => m.request_metrics.duration().observe(seconds),
                None => state
                    .metrics
                    .request_duration
                    .with_label_values(&[name, &version])
                    .observe(seconds),
            }
        }
        Err(e) => state
            .metrics
            .request_errors
            .with_label_values(&[name, e.error_type()])
            .inc(),
    }
    result
}

/// [`with_model_metrics`] for HTTP handlers: an error becomes its response.
async fn with_metrics<F>(state: &AppState, protocol: Protocol, work: F) -> Response
where
    F: AsyncFnOnce(&mut Option<Arc<LoadedModel>>) -> Result<Response, ApiError>,
{
    with_model_metrics(state, protocol, work)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Runs `inputs` on `model` with the request's own deadline when it sent one.
async fn submit(
    model: &LoadedModel,
    inputs: Vec<ferry_runtimes::Tensor>,
    headers: &HeaderMap,
) -> Result<Vec<ferry_runtimes::Tensor>, ApiError> {
    Ok(match request_timeout(headers)? {
        Some(timeout) => {
            model
                .queue
                .submit_with_timeout(inputs, Some(timeout))
                .await?
        }
        None => model.queue.submit(inputs).await?,
    })
}

pub async fn infer(State(state): State<AppState>, path: PathParams, request: Request) -> Response {
    // The request's own headers, moved out: the `HeaderMap` extractor clones them (~2% of a
    // 1-row request's CPU at c=64).
    let (Parts { headers, .. }, body) = request.into_parts();
    with_metrics(&state, Protocol::V2, async |slot| {
        let p = params(path)?;
        let model = state
            .models
            .lookup(&p["model"], p.get("version").map(String::as_str))?;
        *slot = Some(model.clone());
        let body = read_body(&headers, body, state.max_body_bytes).await?;
        let header_length = headers
            .get(oip::HEADER_LENGTH)
            .map(|v| v.to_str().unwrap_or("invalid"));
        let (request, inputs) = stage_span("decode").in_scope(|| {
            let (json, binary) = oip::split_body(&body, header_length)?;
            let request = oip::parse_request(json)?;
            let inputs = oip::decode_inputs(&request, binary)?;
            let inputs = model.signature().validate_inputs(inputs)?;
            Ok::<_, ApiError>((request, inputs))
        })?;
        let output_names: Vec<String> = model
            .signature()
            .outputs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let selected = oip::select_outputs(&request, &output_names)?;
        let outputs = submit(&model, inputs, &headers).await?;
        let encoded = stage_span("encode").in_scope(|| {
            oip::encode_response(
                &model.name,
                model.version,
                request.id.as_deref(),
                &outputs,
                &selected,
            )
        });
        let mut response = encoded.body.into_response();
        let h = response.headers_mut();
        match encoded.json_length {
            Some(n) => {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(oip::HEADER_LENGTH, HeaderValue::from(n));
            }
            None => {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
        }
        Ok(response)
    })
    .await
}

pub async fn v1_predict(
    State(state): State<AppState>,
    path: PathParams,
    request: Request,
) -> Response {
    // The request's own headers, moved out: the `HeaderMap` extractor clones them (~2% of a
    // 1-row request's CPU at c=64).
    let (Parts { headers, .. }, body) = request.into_parts();
    with_metrics(&state, Protocol::V1, async |slot| {
        let p = params(path)?;
        let target = &p["model_verb"];
        let Some(name) = target.strip_suffix(":predict") else {
            return Err(ApiError::RouteNotFound {
                method: "POST".into(),
                path: format!("/v1/models/{target}; use /v1/models/{{model}}:predict"),
            });
        };
        let model = state.models.lookup(name, None)?;
        *slot = Some(model.clone());
        let body = read_body(&headers, body, state.max_body_bytes).await?;
        let request = v1::parse_request(&body)?;
        let inputs = rows::instances_to_tensors(&request.instances, model.signature())?;
        let inputs = model.signature().validate_inputs(inputs)?;
        let outputs = submit(&model, inputs, &headers).await?;
        // Rows are zipped with the outputs: a model answering outside its signature must not
        // shift predictions onto the wrong instances.
        ferry_pipeline::check_outputs(&model, &outputs, request.instances.len())?;
        Ok(Json(json!({ "predictions": rows::predictions(&outputs)? })).into_response())
    })
    .await
}
