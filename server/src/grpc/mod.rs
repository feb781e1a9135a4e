//! The gRPC API: `inference.GRPCInferenceService` (the Open Inference Protocol v2 service as
//! Triton's `grpc_service.proto` defines it, so `tritonclient.grpc` and KServe clients work
//! unchanged), `grpc.health.v1.Health` and server reflection, on a second listener.
//!
//! Like the HTTP handlers, these only convert wire formats: tensors go to the same model queues,
//! business endpoints (`endpoint/<name>` as the model name) to the same pipeline, and errors
//! become statuses through `ApiError::grpc_code`.

#[doc(hidden)]
pub mod codec;

#[allow(clippy::all, clippy::pedantic, rustdoc::all, missing_docs)]
pub mod proto {
    include!("generated/inference.rs");
}

/// Descriptor of the vendored protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/inference_descriptor.bin");

/// Model names starting with this reach a business endpoint: `endpoint/risk`.
pub const ENDPOINT_PREFIX: &str = "endpoint/";

use crate::http::error::ApiError;
use crate::http::{AppState, REQUEST_ID, request_timeout};
use crate::telemetry::stats;
use axum::http::HeaderMap;
use ferry_models::LoadedModel;
use ferry_pipeline::PredictOptions;
use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use tracing::Instrument;

type Answer<T> = Result<Response<T>, Status>;

/// The inference service over the server's shared state.
#[derive(Clone)]
pub struct InferenceService {
    state: AppState,
}

/// The gRPC router: the inference service (requests up to `grpc_max_message_bytes`), health and
/// reflection; the reporter is for [`track_health`].
pub fn routes(state: AppState) -> (axum::Router, tonic_health::server::HealthReporter) {
    let inference = GrpcInferenceServiceServer::new(InferenceService {
        state: state.clone(),
    })
    .max_decoding_message_size(state.grpc_max_message_bytes)
    .max_encoding_message_size(usize::MAX);
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .expect("the vendored descriptor set is valid. This is a bug.");
    let v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .expect("the vendored descriptor set is valid. This is a bug.");
    let router = tonic::service::Routes::new(inference)
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .into_axum_router()
        .layer(axum::middleware::map_response_with_state(
            state.grpc_max_message_bytes,
            oversized_is_resource_exhausted,
        ));
    (router, reporter)
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE before any handler runs;
/// gRPC's convention (and Triton's answer) is RESOURCE_EXHAUSTED, with a message that says
/// what to change.
async fn oversized_is_resource_exhausted(
    axum::extract::State(limit): axum::extract::State<usize>,
    response: axum::response::Response,
) -> axum::response::Response {
    let h = response.headers();
    let oversized = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message").is_some_and(|m| {
            // grpc-message is percent-encoded (tonic encodes spaces too).
            String::from_utf8_lossy(m.as_bytes())
                .replace("%20", " ")
                .contains("message length too large")
        });
    if !oversized {
        return response;
    }
    Status::resource_exhausted(format!(
        "the request message is larger than the limit of {limit} bytes; send fewer rows per request or raise `grpc_max_message_bytes`"
    ))
    .into_http()
}

/// Keeps `grpc.health.v1` in step with readiness: the overall service (`""`) and the inference
/// service report `SERVING` exactly when `/v2/health/ready` would answer 200.
pub async fn track_health(state: AppState, health: tonic_health::server::HealthReporter) {
    let service =
        <GrpcInferenceServiceServer<InferenceService> as tonic::server::NamedService>::NAME;
    let mut last = None;
    loop {
        let ready = !state.is_shutting_down() && state.models.is_ready();
        if last != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health.set_service_status(service, status).await;
            last = Some(ready);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn headers<T>(request: &Request<T>) -> HeaderMap {
    request.metadata().clone().into_headers()
}

/// The request's deadline: the earlier of the gRPC deadline (`grpc-timeout`) and
/// `x-ferry-timeout-ms` metadata; without either, the server's `request_timeout_ms`.
fn deadline(state: &AppState, headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let grpc = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let ferry = request_timeout(headers)?;
    Ok(match (grpc, ferry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b).or(state.request_timeout),
    })
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn version_arg(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented by ferry; it serves ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, ModelStatistics, RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload"
    ))
}

impl InferenceService {
    /// Runs one RPC in a span with the request id (continuing the caller's `traceparent`
    /// metadata when traces are exported), counting its outcome in
    /// `ferry_grpc_responses_total` and writing its access log line.
    async fn observed<T>(
        &self,
        rpc: &'static str,
        request_id: String,
        headers: &HeaderMap,
        client: Option<std::net::SocketAddr>,
        work: impl Future<Output = Answer<T>>,
    ) -> Answer<T> {
        use crate::telemetry::{access, otel};
        let started = Instant::now();
        // Debug-level for the same reason as the HTTP request span (`http::observe`).
        let span = tracing::debug_span!(
            "request",
            request_id = %request_id,
            protocol = "grpc",
            rpc,
            model = tracing::field::Empty,
            version = tracing::field::Empty,
            otel.name = tracing::field::Empty,
            otel.kind = "server",
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let tracing_on = otel::start_server_span(
            &span,
            || format!("inference.GRPCInferenceService/{rpc}"),
            headers,
        );
        let trace_id = self
            .state
            .access_log
            .is_some()
            .then(|| access::trace_id(&span, headers))
            .flatten();
        let (result, labels) = access::labelled(
            self.state.access_log.is_some(),
            work.instrument(span.clone()),
        )
        .await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        if let Err(status) = &result
            && matches!(code, tonic::Code::Internal | tonic::Code::Unavailable)
        {
            tracing::warn!(
                request_id = %request_id,
                protocol = "grpc",
                rpc,
                model = labels.model.as_deref(),
                version = labels.version.as_deref(),
                grpc_code = ?code,
                error = %status.message(),
                "Request failed."
            );
        }
        if tracing_on {
            span.record("rpc.grpc.status_code", code as i64);
        }
        self.state
            .metrics
            .grpc_responses
            .with_label_values(&[rpc, &format!("{code:?}")])
            .inc();
        if let Some(sampler) = &self.state.access_log {
            let server_fault = matches!(
                code,
                tonic::Code::Internal
                    | tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::DataLoss
            );
            // The sampler's budget is by HTTP status class: a server fault is always written.
            let status = if server_fault { 500 } else { 200 };
            if sampler.admit_now(status, &self.state.metrics.access_log_lines) {
                tracing::info!(
                    target: "ferry::access",
                    protocol = "grpc",
                    rpc,
                    grpc_code = ?code,
                    latency_us = started.elapsed().as_micros() as u64,
                    request_id = %request_id,
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
        result.map(|mut r| {
            if let Ok(v) = request_id.parse() {
                r.metadata_mut().insert(REQUEST_ID, v);
            }
            r
        })
    }

    async fn infer_model(
        &self,
        request: ModelInferRequest,
        headers: &HeaderMap,
        slot: &mut Option<Arc<LoadedModel>>,
    ) -> Result<ModelInferResponse, ApiError> {
        let state = &self.state;
        let model = state
            .models
            .lookup(&request.model_name, version_arg(&request.model_version))?;
        *slot = Some(model.clone());
        let inputs = codec::decode_inputs(&request)?;
        let inputs = model.signature().validate_inputs(inputs)?;
        let names: Vec<String> = model
            .signature()
            .outputs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let selected = codec::select_outputs(&request, &names)?;
        let timeout = deadline(state, headers)?;
        let outputs = model.queue.submit_with_timeout(inputs, timeout).await?;
        Ok(codec::encode_response(
            &model.name,
            model.version,
            &request,
            &outputs,
            &selected,
        ))
    }

    async fn infer_endpoint(
        &self,
        endpoint: &str,
        request: ModelInferRequest,
        headers: &HeaderMap,
        request_id: String,
    ) -> Result<ModelInferResponse, ApiError> {
        let started = Instant::now();
        let rows = codec::endpoint_rows(&request)?;
        let options = PredictOptions {
            timeout: deadline(&self.state, headers)?,
            forced_variant: codec::string_param(&request.parameters, "variant")?,
            request_id,
        };
        let p = self
            .state
            .pipeline
            .predict(endpoint, rows, &options)
            .await?;
        crate::telemetry::access::record_endpoint(endpoint, p.common().map(|c| c.0));
        if let Some((_, model, version)) = p.common() {
            crate::telemetry::access::record_model(model, &version.to_string());
            self.state
                .metrics
                .request_duration
                .with_label_values(&[model, &version.to_string()])
                .observe(started.elapsed().as_secs_f64());
        }
        codec::encode_endpoint(&request, &p)
    }

    fn check_api_key(&self, headers: &HeaderMap) -> Result<(), Status> {
        self.state.api_keys.authorize(headers).map_err(Status::from)
    }
}

fn request_id_of(headers: &HeaderMap) -> String {
    crate::http::request_id(headers)
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        let ready = !self.state.is_shutting_down() && self.state.models.is_ready();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        let r = request.into_inner();
        if let Some(endpoint) = r.name.strip_prefix(ENDPOINT_PREFIX) {
            self.state
                .pipeline
                .check_endpoint(endpoint)
                .map_err(ApiError::from)?;
            return Ok(Response::new(ModelReadyResponse {
                ready: self.state.models.is_ready(),
            }));
        }
        // Like Triton: a known model that is not ready answers `ready: false`, an unknown one
        // is NOT_FOUND.
        match self.state.models.lookup(&r.name, version_arg(&r.version)) {
            Ok(_) => Ok(Response::new(ModelReadyResponse { ready: true })),
            Err(e) => {
                let e = ApiError::from(e);
                if e.grpc_code() == tonic::Code::Unavailable {
                    Ok(Response::new(ModelReadyResponse { ready: false }))
                } else {
                    Err(e.into())
                }
            }
        }
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Answer<ServerMetadataResponse> {
        Ok(Response::new(ServerMetadataResponse {
            name: "ferry".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![
                "model_repository".into(),
                "statistics".into(),
                "binary_tensor_data".into(),
            ],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Answer<ModelMetadataResponse> {
        let r = request.into_inner();
        if let Some(endpoint) = r.name.strip_prefix(ENDPOINT_PREFIX) {
            self.state
                .pipeline
                .check_endpoint(endpoint)
                .map_err(ApiError::from)?;
            return Ok(Response::new(ModelMetadataResponse {
                name: r.name.clone(),
                versions: Vec::new(),
                platform: "ferry_endpoint".into(),
                inputs: Vec::new(),
                outputs: Vec::new(),
            }));
        }
        let model = self
            .state
            .models
            .lookup(&r.name, version_arg(&r.version))
            .map_err(ApiError::from)?;
        let tensor = |s: &ferry_runtimes::TensorSpec| model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().into(),
            shape: s.shape.clone(),
        };
        Ok(Response::new(ModelMetadataResponse {
            name: model.name.clone(),
            versions: self
                .state
                .models
                .ready_versions(&model.name)
                .iter()
                .map(u64::to_string)
                .collect(),
            platform: crate::http::platform(&model).into(),
            inputs: model.manifest.inputs.iter().map(tensor).collect(),
            outputs: model.manifest.outputs.iter().map(tensor).collect(),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        let headers = headers(&request);
        let id = request_id_of(&headers);
        let client = request.remote_addr().or_else(|| {
            request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0)
        });
        self.observed("ModelInfer", id.clone(), &headers, client, async {
            self.check_api_key(&headers)?;
            // One in-flight limit for both protocols.
            let Ok(_permit) = self.state.inflight.clone().try_acquire_owned() else {
                return Err(ApiError::Overloaded(
                    "the server is at its limit of concurrent inference requests (`max_concurrent_requests`)".into(),
                )
                .into());
            };
            let request = request.into_inner();
            if let Some(endpoint) = request.model_name.strip_prefix(ENDPOINT_PREFIX) {
                let endpoint = endpoint.to_string();
                return match self.infer_endpoint(&endpoint, request, &headers, id.clone()).await {
                    Ok(r) => Ok(Response::new(r)),
                    Err(e) => {
                        let label = format!(
                            "endpoint:{}",
                            crate::http::endpoints::endpoint_label(&self.state, &endpoint)
                        );
                        self.state
                            .metrics
                            .request_errors
                            .with_label_values(&[&label, e.error_type()])
                            .inc();
                        Err(e.into())
                    }
                };
            }
            crate::http::with_model_metrics(&self.state, ferry_models::metrics::Protocol::Grpc, async |slot| {
                self.infer_model(request, &headers, slot).await
            })
            .await
            .map(Response::new)
            .map_err(Status::from)
        })
        .await
    }

    type ModelStreamInferStream = tokio_stream::Empty<Result<ModelStreamInferResponse, Status>>;

    async fn model_stream_infer(
        &self,
        _: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        Err(unimplemented("ModelStreamInfer (decoupled streaming)"))
    }

    async fn model_config(&self, _: Request<ModelConfigRequest>) -> Answer<ModelConfigResponse> {
        Err(unimplemented(
            "ModelConfig (ferry's model description is ModelMetadata and the manifest)",
        ))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Answer<ModelStatisticsResponse> {
        let r = request.into_inner();
        let name = (!r.name.is_empty()).then_some(r.name.as_str());
        let all = stats::model_stats(
            &self.state.models,
            &self.state.metrics,
            name,
            version_arg(&r.version),
        )
        .map_err(ApiError::from)?;
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: all.into_iter().map(codec::stats_message).collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Answer<RepositoryIndexResponse> {
        let ready_only = request.get_ref().ready;
        let models = self
            .state
            .models
            .index()
            .into_iter()
            .filter(|e| !ready_only || e.state == "READY")
            .map(|e| repository_index_response::ModelIndex {
                name: e.name,
                version: e.version.unwrap_or_default(),
                state: e.state.into(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Answer<RepositoryModelLoadResponse> {
        let headers = headers(&request);
        self.state
            .admin_token
            .authorize(&headers)
            .map_err(Status::from)?;
        let name = &request.get_ref().model_name;
        self.state
            .models
            .control_load(name)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Answer<RepositoryModelUnloadResponse> {
        let headers = headers(&request);
        self.state
            .admin_token
            .authorize(&headers)
            .map_err(Status::from)?;
        let name = &request.get_ref().model_name;
        self.state
            .models
            .control_unload(name)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<SystemSharedMemoryStatusRequest>,
    ) -> Answer<SystemSharedMemoryStatusResponse> {
        Err(unimplemented("SystemSharedMemoryStatus"))
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Answer<SystemSharedMemoryRegisterResponse> {
        Err(unimplemented("SystemSharedMemoryRegister"))
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Answer<SystemSharedMemoryUnregisterResponse> {
        Err(unimplemented("SystemSharedMemoryUnregister"))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> Answer<CudaSharedMemoryStatusResponse> {
        Err(unimplemented("CudaSharedMemoryStatus"))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Answer<CudaSharedMemoryRegisterResponse> {
        Err(unimplemented("CudaSharedMemoryRegister"))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Answer<CudaSharedMemoryUnregisterResponse> {
        Err(unimplemented("CudaSharedMemoryUnregister"))
    }

    async fn trace_setting(&self, _: Request<TraceSettingRequest>) -> Answer<TraceSettingResponse> {
        Err(unimplemented("TraceSetting"))
    }

    async fn log_settings(&self, _: Request<LogSettingsRequest>) -> Answer<LogSettingsResponse> {
        Err(unimplemented("LogSettings (set FERRY_LOG at start)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }
}
