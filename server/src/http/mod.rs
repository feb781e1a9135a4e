//! The HTTP API (axum). Handlers only convert wire formats to and from model calls; errors
//! become responses in `error.rs` alone.

pub mod auth;
pub mod control;
pub mod endpoints;
pub mod error;
pub mod oip;
mod oip_v2;
pub(crate) use oip_v2::{platform, with_model_metrics};
mod openapi;
pub mod v1;

use crate::telemetry::metrics::Metrics;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use error::ApiError;
use ferry_models::ModelManager;
use ferry_pipeline::Pipeline;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;

pub use openapi::OPENAPI_JSON;

pub const REQUEST_ID: &str = "x-request-id";
/// Request header: this request's deadline in milliseconds, queue wait included.
pub const TIMEOUT_HEADER: &str = "x-ferry-timeout-ms";
const MAX_TIMEOUT_MS: u64 = 600_000;

/// The server's shared state. Every middleware layer and handler clones it per request, so it
/// is one `Arc` (one reference count to touch) rather than a struct of many.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    pub fn new(inner: AppStateInner) -> AppState {
        AppState(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// Changing a field (tests, start-up) copies the state when it is shared.
impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut AppStateInner {
        Arc::make_mut(&mut self.0)
    }
}

#[derive(Clone)]
pub struct AppStateInner {
    pub models: Arc<ModelManager>,
    /// resolve variant → features → model, for business endpoints.
    pub pipeline: Arc<Pipeline>,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    /// Largest gRPC request message.
    pub grpc_max_message_bytes: usize,
    /// Set when shutdown begins: readiness turns false so load balancers stop sending.
    pub shutting_down: Arc<AtomicBool>,
    /// Enables the model control API when set.
    pub admin_token: control::AdminToken,
    /// Inference requests being handled; when none is free, new ones get 429 at once.
    pub inflight: Arc<tokio::sync::Semaphore>,
    /// The semaphore's size, `max_concurrent_requests`.
    pub max_concurrent_requests: usize,
    /// Required on inference routes when set.
    pub api_keys: auth::ApiKeys,
    /// `request_timeout_ms`: the deadline of a request that sends no `x-ferry-timeout-ms`.
    pub request_timeout: Option<std::time::Duration>,
    /// The access log's line budget; `None` when `access_log.enabled` is false.
    pub access_log: Option<Arc<crate::telemetry::access::Sampler>>,
}

impl AppStateInner {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// The inference routes: behind the optional API keys and the one in-flight limit (see
/// `admit`); health, metadata and metrics stay outside so probes and scrapes answer under
/// overload. All are POST-only.
const INFERENCE_ROUTES: [&str; 5] = [
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
    // `{model}:predict` is one path segment: the handler splits off the verb.
    "/v1/models/{model_verb}",
    "/v1/endpoints/{endpoint}/predict",
    "/v1/features",
];

pub fn app(state: AppState) -> Router {
    let [
        v2_infer,
        v2_version_infer,
        v1_predict,
        endpoint_predict,
        features,
    ] = INFERENCE_ROUTES;
    Router::new()
        .route(v2_infer, post(oip_v2::infer))
        .route(v2_version_infer, post(oip_v2::infer))
        .route(v1_predict, post(oip_v2::v1_predict))
        .route(endpoint_predict, post(endpoints::predict))
        .route(features, post(endpoints::features))
        .route("/v2/health/live", get(oip_v2::live))
        .route("/v2/health/ready", get(oip_v2::ready))
        .route("/v2", get(oip_v2::server_metadata))
        .route("/v2/models/{model}", get(oip_v2::model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(oip_v2::model_metadata),
        )
        .route("/v2/models/stats", get(oip_v2::stats_all))
        .route("/v2/models/{model}/stats", get(oip_v2::stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(oip_v2::stats),
        )
        .route("/v2/models/{model}/ready", get(oip_v2::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(oip_v2::model_ready),
        )
        .route("/v2/repository/index", post(oip_v2::repository_index))
        .route("/v2/repository/models/{model}/load", post(control::load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(control::unload),
        )
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// Admits an inference request: its API key when keys are configured (401/403 otherwise),
/// then a slot under `max_concurrent_requests`. Beyond it the answer is an immediate 429,
/// shedding load before any work so accepted requests keep their latency. The permit is held
/// until the response is ready.
fn admit(
    state: &AppState,
    request: &Request,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state.api_keys.authorize(request.headers())?;
    state.inflight.clone().try_acquire_owned().map_err(|_| {
        ApiError::Overloaded(
            "the server is at its limit of concurrent inference requests (`max_concurrent_requests`)".into(),
        )
    })
}

async fn metrics(State(state): State<AppState>) -> Response {
    let limit = state.max_concurrent_requests;
    let in_flight = limit.saturating_sub(state.inflight.available_permits());
    state.metrics.inflight.set(in_flight as i64);
    state.metrics.inflight_limit.set(limit as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("A request handler panicked. This is a bug.");
    ApiError::Internal("internal error: the request handler failed; this is a bug in ferry".into())
        .into_response()
}

/// The request's id (the client's `x-request-id`, or a new one), for handlers.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A request id the client sent, if it is short printable ASCII; otherwise a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The one middleware of every route (each `from_fn` layer boxes a future and clones the inner
/// service per request): request span with request id, admission of inference requests
/// (`admit`), the `x-request-id` response header, response counts, the access log line, and
/// `Connection: close` while draining.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    use crate::telemetry::access;
    let started = std::time::Instant::now();
    let id = request_id(request.headers());
    request.extensions_mut().insert(RequestId(id.clone()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // Debug-level: at the default `info` the log formatter would format its fields for every
    // request (~18% of a 1-row request's CPU). Trace export (a debug-level filter) and
    // FERRY_LOG=debug still get it; a 5xx is logged below with the request's id.
    let span = tracing::debug_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        route = %route,
        model = tracing::field::Empty,
        version = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        http.response.status_code = tracing::field::Empty,
    );
    let tracing_on = crate::telemetry::otel::start_server_span(
        &span,
        || format!("{} {route}", request.method()),
        request.headers(),
    );
    // Kept only when the access log is on: the hot path pays nothing for it otherwise.
    let line = state.access_log.as_ref().map(|_| {
        (
            request.method().clone(),
            request.uri().path().to_string(),
            request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
            access::trace_id(&span, request.headers()),
            request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        )
    });
    let inference = request.method() == Method::POST && INFERENCE_ROUTES.contains(&route.as_str());
    let (mut response, labels) = match inference.then(|| admit(&state, &request)) {
        Some(Err(refused)) => (refused.into_response(), access::Labels::default()),
        admitted => {
            let _permit = admitted;
            access::labelled(line.is_some(), next.run(request).instrument(span.clone())).await
        }
    };
    if tracing_on {
        span.record(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        );
    }
    state
        .metrics
        .http_responses
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    if let (Some(sampler), Some((method, path, bytes_in, trace_id, client))) =
        (&state.access_log, line)
    {
        let status = response.status().as_u16();
        if sampler.admit_now(status, &state.metrics.access_log_lines) {
            let bytes_out = axum::body::HttpBody::size_hint(response.body()).exact();
            tracing::info!(
                target: "ferry::access",
                method = %method,
                path = %path,
                status,
                latency_us = started.elapsed().as_micros() as u64,
                bytes_in = bytes_in.unwrap_or(0),
                bytes_out,
                request_id = %id,
                trace_id = trace_id.as_deref(),
                model = labels.model.as_deref(),
                version = labels.version.as_deref(),
                endpoint = labels.endpoint.as_deref(),
                variant = labels.variant.as_deref(),
                client = client.map(|c| c.to_string()),
                "access"
            );
        }
    }
    if let Some(fault) = response.extensions_mut().remove::<error::ServerFault>() {
        tracing::warn!(
            request_id = %id,
            route = %route,
            model = labels.model.as_deref(),
            version = labels.version.as_deref(),
            endpoint = labels.endpoint.as_deref(),
            error_type = fault.error_type,
            error = %fault.error,
            "Request failed."
        );
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    // While draining, every response tells the client to close its connection: keep-alive
    // clients (a proxy's upstream pool, a kube-proxy'd client) open a new one, which a load
    // balancer that took this replica out of rotation sends elsewhere, and no idle connection
    // is left to race against the close when accepting stops.
    if state.is_shutting_down() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads a request body up to `limit` bytes; larger bodies are a 413 before or while reading.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
}

/// The deadline a request asks for with `x-ferry-timeout-ms`, if any.
pub fn request_timeout(headers: &HeaderMap) -> Result<Option<std::time::Duration>, ApiError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| (1..=MAX_TIMEOUT_MS).contains(&ms))
        .map(|ms| Some(std::time::Duration::from_millis(ms)))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "header {TIMEOUT_HEADER} must be a whole number of milliseconds between 1 and {MAX_TIMEOUT_MS}, got {value:?}"
            ))
        })
}
