//! The one place where errors become HTTP responses: status, `{"error": …}` body, and the
//! stable `error_type` used in logs and `ferry_request_errors_total`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_features::FeatureError;
use ferry_models::LookupError;
use ferry_models::ScheduleError;
use ferry_pipeline::PredictError;
use ferry_pipeline::rows::{InvalidOutputs, InvalidRows};
use ferry_runtimes::{InputError, RuntimeError};

/// Seconds a client should wait before retrying a 429 or 503.
pub const RETRY_AFTER_SECONDS: u64 = 1;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The body is not what the endpoint reads (malformed JSON, bad binary framing).
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but its tensors do not fit the model.
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    UnknownModel(String),
    #[error("{0}")]
    UnknownVersion(String),
    #[error("no route for {method} {path}; see GET /openapi.json for the API")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}; see GET /openapi.json for the API")]
    MethodNotAllowed { method: String, path: String },
    #[error(
        "request body is larger than the limit of {limit} bytes; send less data per request or raise `max_body_bytes`"
    )]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnknownEndpoint(String),
    /// `on_missing: error` and an entity had no (fresh) feature values.
    #[error("{0}")]
    FeaturesMissing(String),
    /// `on_missing: error` and the online store did not answer within `features.timeout`.
    #[error("{0}")]
    FeatureStoreUnavailable(String),
    #[error("{0}")]
    ModelNotReady(String),
    #[error("{0}; retry after {RETRY_AFTER_SECONDS} s")]
    Overloaded(String),
    /// The request waited longer than its deadline (`request_timeout_ms` or
    /// `x-ferry-timeout-ms`): the server is behind.
    #[error("{0}; retry after {RETRY_AFTER_SECONDS} s or on another replica")]
    DeadlineExceeded(String),
    #[error("the server is shutting down; retry on another replica")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
    /// Control API: missing or wrong admin token.
    #[error("{0}")]
    Unauthorized(String),
    /// Control API without an admin token configured.
    #[error(
        "model control is disabled: set the FERRY_ADMIN_TOKEN environment variable or `admin_token_file` in the config to enable POST /v2/repository/models/{{model}}/load and /unload"
    )]
    ControlDisabled,
    /// Control API: the model version could not be fetched, verified or loaded.
    #[error("{0}")]
    LoadFailed(String),
    #[error("{0}; the loaded models keep serving")]
    RegistryUnavailable(String),
    /// A script or Rust transform failed or ran past its limits: a server-side fault.
    #[error("{0}")]
    TransformFailed(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownModel(_)
            | ApiError::UnknownVersion(_)
            | ApiError::UnknownEndpoint(_)
            | ApiError::FeaturesMissing(_)
            | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ModelNotReady(_)
            | ApiError::ShuttingDown
            | ApiError::DeadlineExceeded(_)
            | ApiError::FeatureStoreUnavailable(_)
            | ApiError::RegistryUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::LoadFailed(_) | ApiError::TransformFailed(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::ControlDisabled => StatusCode::FORBIDDEN,
        }
    }

    /// The gRPC status code of the same error (the gRPC service answers with it; the message
    /// is the same text as the HTTP body's `error`).
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidInput(_) => Code::InvalidArgument,
            ApiError::UnknownModel(_)
            | ApiError::UnknownVersion(_)
            | ApiError::UnknownEndpoint(_)
            | ApiError::FeaturesMissing(_)
            | ApiError::RouteNotFound { .. } => Code::NotFound,
            ApiError::MethodNotAllowed { .. } => Code::Unimplemented,
            ApiError::PayloadTooLarge { .. } | ApiError::Overloaded(_) => Code::ResourceExhausted,
            ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ApiError::ModelNotReady(_)
            | ApiError::ShuttingDown
            | ApiError::FeatureStoreUnavailable(_)
            | ApiError::RegistryUnavailable(_) => Code::Unavailable,
            ApiError::Internal(_) | ApiError::LoadFailed(_) | ApiError::TransformFailed(_) => {
                Code::Internal
            }
            // Missing or wrong credentials; a control API nobody may use is a permission.
            ApiError::Unauthorized(_) => Code::Unauthenticated,
            ApiError::ControlDisabled => Code::PermissionDenied,
        }
    }

    /// Stable snake_case name for logs and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidInput(_) => "invalid_input",
            ApiError::UnknownModel(_) => "unknown_model",
            ApiError::UnknownVersion(_) => "unknown_version",
            ApiError::RouteNotFound { .. } => "route_not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnknownEndpoint(_) => "unknown_endpoint",
            ApiError::FeaturesMissing(_) => "features_missing",
            ApiError::FeatureStoreUnavailable(_) => "feature_store_unavailable",
            ApiError::ModelNotReady(_) => "model_not_ready",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::DeadlineExceeded(_) => "deadline_exceeded",
            ApiError::Internal(_) => "internal",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::ControlDisabled => "control_disabled",
            ApiError::LoadFailed(_) => "load_failed",
            ApiError::RegistryUnavailable(_) => "registry_unavailable",
            ApiError::TransformFailed(_) => "transform_failed",
        }
    }

    /// Every status `ApiError` can produce (the OpenAPI document is tested against it).
    pub const STATUSES: [u16; 9] = [400, 401, 403, 404, 405, 413, 429, 500, 503];

    /// Statuses only the model control API produces.
    pub const CONTROL_STATUSES: [u16; 2] = [401, 403];
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let code = e.grpc_code();
        // A server fault is logged by the gRPC request wrapper, with the request's id.
        tracing::debug!(error_type = e.error_type(), error = %e, protocol = "grpc", "Request answered with an error.");
        tonic::Status::new(code, e.to_string())
    }
}

/// A 5xx's cause, left on the response for the request middleware (`http::observe`), which
/// logs it with the request's id, route and model: the request span is debug-level (an
/// info-level span cost ~18% of a 1-row request's CPU), so a line logged here at the default
/// level would carry none of them.
#[derive(Debug, Clone)]
pub struct ServerFault {
    pub error_type: &'static str,
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        let fault = status.is_server_error().then(|| ServerFault {
            error_type: self.error_type(),
            error: message.clone(),
        });
        if fault.is_none() {
            tracing::debug!(error_type = self.error_type(), error = %message, "Request rejected.");
        }
        let body = serde_json::json!({ "error": message }).to_string();
        let mut response = (status, body).into_response();
        if let Some(fault) = fault {
            response.extensions_mut().insert(fault);
        }
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
            .extensions_mut()
            .insert(ErrorType(self.error_type()));
        response
    }
}

/// Carried on error responses so the metrics middleware can count by error type.
#[derive(Debug, Clone, Copy)]
pub struct ErrorType(pub &'static str);

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::UnknownModel { .. } => ApiError::UnknownModel(e.to_string()),
            LookupError::UnknownVersion { .. } => ApiError::UnknownVersion(e.to_string()),
            LookupError::NotReady { .. } => ApiError::ModelNotReady(e.to_string()),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::InvalidInput(e.to_string())
    }
}

impl From<InvalidRows> for ApiError {
    fn from(e: InvalidRows) -> Self {
        ApiError::InvalidInput(e.0)
    }
}

/// Outputs the row codec cannot split into one prediction per row: the model's fault.
impl From<InvalidOutputs> for ApiError {
    fn from(e: InvalidOutputs) -> Self {
        ApiError::Internal(e.0)
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Input(e) => e.into(),
            // Inputs were validated against the signature; an engine that still refuses them
            // is a server-side fault, reported as such.
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::QueueFull { .. } | ScheduleError::Shed { .. } => {
                ApiError::Overloaded(e.to_string())
            }
            ScheduleError::DeadlineExceeded { .. } => ApiError::DeadlineExceeded(e.to_string()),
            ScheduleError::Closed { .. } => ApiError::ModelNotReady(e.to_string()),
            ScheduleError::Runtime(e) => e.into(),
        }
    }
}

impl From<FeatureError> for ApiError {
    fn from(e: FeatureError) -> Self {
        match e {
            FeatureError::UnknownFeature(_) => ApiError::BadRequest(e.to_string()),
            FeatureError::InvalidRow(_) => ApiError::InvalidInput(e.to_string()),
            FeatureError::Missing(_) => ApiError::FeaturesMissing(e.to_string()),
            FeatureError::Unavailable(_) => ApiError::FeatureStoreUnavailable(e.to_string()),
            // A model whose `features` section does not fit the repo, unreadable offline data:
            // deployment faults, not client mistakes.
            FeatureError::Plan(_)
            | FeatureError::Repo { .. }
            | FeatureError::Offline { .. }
            | FeatureError::Write(_)
            | FeatureError::Io(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<PredictError> for ApiError {
    fn from(e: PredictError) -> Self {
        match e {
            PredictError::UnknownEndpoint { .. } => ApiError::UnknownEndpoint(e.to_string()),
            PredictError::Lookup(e) => e.into(),
            PredictError::Features(e) => e.into(),
            PredictError::Schedule(e) => e.into(),
            PredictError::Input(e) => e.into(),
            PredictError::UnknownVariant { .. } => ApiError::BadRequest(e.to_string()),
            PredictError::Transform { ref error, .. } => match error.kind {
                ferry_transforms::ErrorKind::Input => ApiError::InvalidInput(e.to_string()),
                ferry_transforms::ErrorKind::Limit | ferry_transforms::ErrorKind::Fault => {
                    ApiError::TransformFailed(e.to_string())
                }
            },
            PredictError::Misconfigured(m) | PredictError::ModelOutput(m) => ApiError::Internal(m),
            PredictError::DeadlineExceeded { .. } => ApiError::DeadlineExceeded(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_pipeline::rows;
    use ferry_runtimes::{DataType, Signature, Tensor, TensorData, TensorSpec};

    #[test]
    fn rows_that_do_not_fit_are_a_400_with_the_codecs_words() {
        let signature = Signature {
            inputs: vec![TensorSpec {
                name: "X".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 2],
            }],
            outputs: vec![],
        };
        let rows = [serde_json::json!({"y": [1.0, 2.0]})];
        let codec = rows::instances_to_tensors(&rows, &signature).unwrap_err();
        let message = codec.to_string();
        // The v1 handler converts the codec's error directly, the pipeline through
        // `PredictError`: both give the same answer.
        for e in [
            ApiError::from(codec.clone()),
            ApiError::from(PredictError::from(codec)),
        ] {
            assert!(matches!(e, ApiError::InvalidInput(_)), "{e:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert_eq!(e.error_type(), "invalid_input");
            assert_eq!(e.to_string(), message);
        }
    }

    #[test]
    fn model_output_faults_are_a_500_not_the_rows_fault() {
        let label = Tensor::new("label", vec![2], TensorData::Int64(vec![1, 0])).unwrap();
        let proba = Tensor::new("p", vec![1, 2], TensorData::Fp32(vec![0.5, 0.5])).unwrap();
        let codec = rows::predictions(&[label, proba]).unwrap_err();
        let pipeline = PredictError::ModelOutput("model m@1 answered 1 outputs".into());
        for (e, message) in [
            (ApiError::from(codec.clone()), codec.to_string()),
            (
                ApiError::from(pipeline),
                "model m@1 answered 1 outputs".into(),
            ),
        ] {
            assert!(matches!(e, ApiError::Internal(_)), "{e:?}");
            assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(e.to_string(), message);
        }
    }

    #[test]
    fn a_shed_request_is_a_429_with_retry_after_saying_why() {
        let shed = ScheduleError::Shed {
            model: "wide@1".into(),
            waited: std::time::Duration::from_millis(60),
            limit: std::time::Duration::from_millis(48),
            calls: 6,
        };
        for e in [
            ApiError::from(shed.clone()),
            ApiError::from(PredictError::Schedule(shed)),
        ] {
            assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(e.error_type(), "overloaded");
            let message = e.to_string();
            assert!(
                message.contains("wide@1") && message.contains("waited 60ms"),
                "{message}"
            );
            let response = e.into_response();
            assert!(
                response.headers().contains_key(header::RETRY_AFTER),
                "{:?}",
                response.headers()
            );
        }
    }
}
