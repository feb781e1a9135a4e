//! Business endpoints (`POST /v1/endpoints/{endpoint}/predict`) and features as a service
//! (`POST /v1/features`). Handlers decode, call the pipeline / online store, encode.

use crate::http::error::ApiError;
use crate::http::{AppState, RequestId, read_body, request_timeout};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferry_features::{FeatureRef, OnMissing};
use ferry_pipeline::PredictOptions;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::Instant;

pub const VARIANT_HEADER: &str = "x-ferry-variant";
pub const VERSION_HEADER: &str = "x-ferry-model-version";
/// Present (with the count) when some feature values were defaulted.
pub const DEFAULTED_HEADER: &str = "x-ferry-features-defaulted";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointRequest {
    instances: Vec<Value>,
}

/// Decodes a business endpoint request body into its rows (one JSON object per instance).
pub fn decode_request(body: &[u8]) -> Result<Vec<Map<String, Value>>, ApiError> {
    let request: EndpointRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the request is not a valid endpoint request: {e}; expected {{\"instances\": [{{\"<entity key>\": ..., \"<field>\": ...}}, ...]}}"
        ))
    })?;
    request
        .instances
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(m) => Ok(m),
            other => Err(ApiError::InvalidInput(format!(
                "instances[{i}] must be an object of entity key and request fields, got {other}"
            ))),
        })
        .collect()
}

pub async fn predict(
    State(state): State<AppState>,
    Path(endpoint): Path<String>,
    request_id: Option<Extension<RequestId>>,
    request: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    // Moved out rather than cloned by the `HeaderMap` extractor.
    let (axum::http::request::Parts { headers, .. }, body) = request.into_parts();
    let result: Result<Response, ApiError> = async {
        let body = read_body(&headers, body, state.max_body_bytes).await?;
        let rows = ferry_pipeline::stage_span("decode").in_scope(|| decode_request(&body))?;
        let forced_variant = match headers.get(VARIANT_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "the {VARIANT_HEADER} header must be a variant name in ASCII"
                        ))
                    })?
                    .to_string(),
            ),
        };
        let options = PredictOptions {
            timeout: request_timeout(&headers)?.or(state.request_timeout),
            forced_variant,
            request_id: request_id
                .map(|Extension(RequestId(id))| id)
                .unwrap_or_default(),
        };
        let p = state.pipeline.predict(&endpoint, rows, &options).await?;
        let common = p
            .common()
            .map(|(v, m, n)| (v.to_string(), m.to_string(), n.to_string()));
        crate::telemetry::access::record_endpoint(
            &p.endpoint,
            common.as_ref().map(|c| c.0.as_str()),
        );
        if let Some((_, model, version)) = &common {
            let span = tracing::Span::current();
            span.record("model", model.as_str());
            span.record("version", version.as_str());
            crate::telemetry::access::record_model(model, version);
            state
                .metrics
                .request_duration
                .with_label_values(&[model, version])
                .observe(started.elapsed().as_secs_f64());
        }
        let encode = ferry_pipeline::stage_span("encode");
        let _encode = encode.enter();
        let versions: Vec<String> = p.versions.iter().map(u64::to_string).collect();
        let body = json!({
            "predictions": p.predictions,
            "endpoint": p.endpoint,
            "variant": common.as_ref().map(|c| &c.0),
            "model": common.as_ref().map(|c| &c.1),
            "version": common.as_ref().map(|c| &c.2),
            "variants": p.variants,
            "versions": versions,
        });
        let mut response = Json(body).into_response();
        let h = response.headers_mut();
        if let Some((variant, _, version)) = &common {
            if let Ok(v) = HeaderValue::from_str(variant) {
                h.insert(VARIANT_HEADER, v);
            }
            if let Ok(v) = HeaderValue::from_str(version) {
                h.insert(VERSION_HEADER, v);
            }
        }
        if p.defaulted > 0 {
            h.insert(DEFAULTED_HEADER, HeaderValue::from(p.defaulted));
        }
        Ok(response)
    }
    .await;
    result.unwrap_or_else(|e| {
        state
            .metrics
            .request_errors
            .with_label_values(&[
                &format!("endpoint:{}", endpoint_label(&state, &endpoint)),
                e.error_type(),
            ])
            .inc();
        e.into_response()
    })
}

/// The endpoint name if it exists (bounded label values), else `_unknown`.
pub(crate) fn endpoint_label<'a>(state: &AppState, endpoint: &'a str) -> &'a str {
    if state.pipeline.has_endpoint(endpoint) {
        endpoint
    } else {
        crate::telemetry::metrics::UNKNOWN_MODEL
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeaturesRequest {
    /// `{"<join key>": [key, ...]}`.
    entities: Map<String, Value>,
    /// `view.feature` references.
    features: Vec<String>,
}

pub async fn features(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<Response, ApiError> = async {
        let Some(online) = state.pipeline.features().cloned() else {
            return Err(ApiError::RouteNotFound {
                method: "POST".into(),
                path: "/v1/features (this server has no `features` config)".into(),
            });
        };
        let body = read_body(&headers, body, state.max_body_bytes).await?;
        let request: FeaturesRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the request is not a valid features request: {e}; expected {{\"entities\": {{\"user_id\": [\"u1\", ...]}}, \"features\": [\"view.feature\", ...]}}"
            ))
        })?;
        if request.entities.is_empty() {
            return Err(ApiError::BadRequest(
                "`entities` is empty: give each join key's values, e.g. {\"user_id\": [\"u1\"]}".into(),
            ));
        }
        // One column of key texts per join key (several for compound keys, as in Feast's
        // feature server), all of one length.
        let mut columns: Vec<(&String, Vec<String>)> = Vec::with_capacity(request.entities.len());
        for (join_key, keys) in &request.entities {
            let keys: Vec<String> = keys
                .as_array()
                .ok_or_else(|| ApiError::BadRequest(format!("`entities.{join_key}` must be an array of keys")))?
                .iter()
                .map(|k| match k {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
                    other => Err(ApiError::BadRequest(format!(
                        "`entities.{join_key}` holds {other}; keys are strings or integers"
                    ))),
                })
                .collect::<Result<_, _>>()?;
            if let Some((first, column)) = columns.first()
                && column.len() != keys.len()
            {
                return Err(ApiError::BadRequest(format!(
                    "`entities.{join_key}` has {} keys but `entities.{first}` has {}; give every join key one value per entity",
                    keys.len(),
                    column.len()
                )));
            }
            columns.push((join_key, keys));
        }
        let rows = columns[0].1.len();
        if request.features.is_empty() {
            return Err(ApiError::BadRequest("`features` is empty: list `view.feature` references".into()));
        }
        let refs: Vec<FeatureRef> = request
            .features
            .iter()
            .map(|r| online.repo.resolve(r))
            .collect::<Result<_, _>>()?;
        // Each view's key text per row: its join key's value, or a compound key's values.
        let mut view_keys: HashMap<usize, Vec<String>> = HashMap::new();
        for (r, name) in refs.iter().zip(&request.features) {
            if view_keys.contains_key(&r.view) {
                continue;
            }
            let view = &online.repo.views[r.view];
            let mut parts = Vec::with_capacity(view.entities.len());
            for jk in view.join_keys() {
                let column = columns.iter().find(|(k, _)| k.as_str() == jk).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "feature {name:?} is keyed by {:?}; `entities` has {:?}",
                        view.join_keys(),
                        columns.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
                    ))
                })?;
                parts.push(&column.1);
            }
            let keys = (0..rows)
                .map(|row| {
                    if parts.len() == 1 {
                        parts[0][row].clone()
                    } else {
                        let values: Vec<&str> = parts.iter().map(|p| p[row].as_str()).collect();
                        ferry_features::repo::compound_key(&values)
                    }
                })
                .collect();
            view_keys.insert(r.view, keys);
        }
        // A join key no requested view uses is a mistake (a typo would silently ask for
        // nothing); with one join key the old message says which key the features need.
        for (join_key, _) in &columns {
            let used = view_keys
                .keys()
                .any(|&v| online.repo.views[v].join_keys().contains(&join_key.as_str()));
            if !used {
                return Err(ApiError::BadRequest(format!(
                    "`entities.{join_key}` is not a join key of the requested features' views; ask for one entity's features per request"
                )));
            }
        }
        // Statuses say what is missing; only an unavailable store fails (per `on_missing`).
        let table = online
            .lookup_keyed(rows, &|view, row| view_keys[&view][row].as_str(), &refs, OnMissing::Default)
            .await?;
        if online.on_missing == OnMissing::Error
            && table
                .cells
                .iter()
                .flatten()
                .any(|c| c.status == ferry_features::Status::Unavailable)
        {
            return Err(ApiError::FeatureStoreUnavailable(format!(
                "the online feature store did not answer within {:?}",
                online.timeout
            )));
        }
        let results: Vec<Value> = table
            .cells
            .iter()
            .enumerate()
            .map(|(row, cells)| {
                let mut result = Map::new();
                for (join_key, keys) in &columns {
                    result.insert((*join_key).clone(), Value::from(keys[row].as_str()));
                }
                result.insert("values".into(), cells.iter().map(|c| c.value.as_ref().map(|v| v.to_json()).unwrap_or(Value::Null)).collect());
                result.insert("statuses".into(), cells.iter().map(|c| Value::from(c.status.as_str())).collect());
                result.insert("event_timestamps".into(), cells.iter().map(|c| c.ts_ms.map(Value::from).unwrap_or(Value::Null)).collect());
                Value::Object(result)
            })
            .collect();
        Ok(Json(json!({ "features": request.features, "results": results })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
