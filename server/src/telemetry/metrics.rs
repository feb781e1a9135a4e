//! ferry's Prometheus metrics, in one registry: the HTTP, endpoint, feature, shadow and
//! capture families defined here, and the model, queue and engine families of
//! `ferry_models::ModelMetrics`. Names follow `ferry_<name>_<unit>[_total]`; labels stay
//! bounded (model and version come from the registry, never from a client string that did not
//! resolve to a served model).

use ferry_models::ModelMetrics;
use ferry_models::metrics::LATENCY_BUCKETS;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label value for requests whose model name did not resolve (keeps cardinality bounded).
pub const UNKNOWN_MODEL: &str = "_unknown";

/// Cheap to clone: handlers and threads share one set of metric families.
#[derive(Clone)]
pub struct Metrics(std::sync::Arc<MetricFamilies>);

impl std::ops::Deref for Metrics {
    type Target = MetricFamilies;
    fn deref(&self) -> &MetricFamilies {
        &self.0
    }
}

pub struct MetricFamilies {
    registry: Registry,
    /// Inference requests by protocol (`v2`, `v1`), model and version.
    pub requests: IntCounterVec,
    /// Failed inference requests by model and error type.
    pub request_errors: IntCounterVec,
    /// End-to-end inference request latency in the handler.
    pub request_duration: HistogramVec,
    /// Model versions, compute queues and engine calls (`ferry-models` defines them);
    /// `stage_duration` there is the pipeline's too.
    pub models: ModelMetrics,
    /// HTTP responses by matched route and status code.
    pub http_responses: IntCounterVec,
    /// Endpoint requests by endpoint, variant, model and version.
    pub endpoint_requests: IntCounterVec,
    /// Feature values looked up, by view and status (present, missing, stale, unavailable).
    pub feature_values: IntCounterVec,
    /// Feature values served as defaults (missing, stale or store unavailable), by endpoint.
    pub features_defaulted: IntCounterVec,
    /// Endpoint predict failures by variant and error type.
    pub endpoint_errors: IntCounterVec,
    /// Time one variant took for its share of a request.
    pub endpoint_variant_duration: HistogramVec,
    /// Shadow copies by outcome: ok, error, timeout, dropped (queue full).
    pub shadow_requests: IntCounterVec,
    pub shadow_duration: HistogramVec,
    /// Prediction capture records by endpoint and outcome (`written`, `dropped`, `failed`).
    pub capture_records: IntCounterVec,
    /// Capture records accepted but not yet written, by endpoint.
    pub capture_queue: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric definitions are valid. This is a bug.");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique. This is a bug.");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .expect("metric definitions are valid. This is a bug.");
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique. This is a bug.");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("metric definitions are valid. This is a bug.");
            registry
                .register(Box::new(h.clone()))
                .expect("metric names are unique. This is a bug.");
            h
        };
        let models = ModelMetrics::new();
        models
            .register(&registry)
            .expect("metric names are unique. This is a bug.");
        Metrics(std::sync::Arc::new(MetricFamilies {
            models,
            requests: counter(
                "ferry_requests_total",
                "Inference requests received.",
                &["protocol", "model", "version"],
            ),
            request_errors: counter(
                "ferry_request_errors_total",
                "Inference requests that failed, by error type.",
                &["model", "error_type"],
            ),
            request_duration: histogram(
                "ferry_request_duration_seconds",
                "Inference request latency from decoded request to encoded response.",
                &["model", "version"],
                LATENCY_BUCKETS,
            ),
            http_responses: counter(
                "ferry_http_responses_total",
                "HTTP responses by route and status code.",
                &["route", "status"],
            ),
            endpoint_requests: counter(
                "ferry_endpoint_requests_total",
                "Endpoint predict requests that succeeded, per variant that served rows of them.",
                &["endpoint", "variant", "model", "version"],
            ),
            feature_values: counter(
                "ferry_feature_values_total",
                "Feature values looked up at serving time, by view and status.",
                &["view", "status"],
            ),
            features_defaulted: counter(
                "ferry_features_defaulted_total",
                "Feature values replaced by their default (missing, stale, or store unavailable).",
                &["endpoint"],
            ),
            endpoint_errors: counter(
                "ferry_endpoint_errors_total",
                "Endpoint predict failures, by variant and error type.",
                &["endpoint", "variant", "error_type"],
            ),
            endpoint_variant_duration: histogram(
                "ferry_endpoint_variant_duration_seconds",
                "Time a variant took for its rows of an endpoint request (features, transforms, model).",
                &["endpoint", "variant"],
                LATENCY_BUCKETS,
            ),
            shadow_requests: counter(
                "ferry_shadow_requests_total",
                "Shadow copies of endpoint requests, by outcome (ok, error, timeout, dropped when the shadow queue is full).",
                &["endpoint", "variant", "outcome"],
            ),
            shadow_duration: histogram(
                "ferry_shadow_duration_seconds",
                "Time a shadow variant took (up to its timeout).",
                &["endpoint", "variant"],
                LATENCY_BUCKETS,
            ),
            capture_records: counter(
                "ferry_capture_records_total",
                "Prediction capture records by outcome: written, dropped (queue full or shut down), failed (write failed after retries).",
                &["endpoint", "outcome"],
            ),
            capture_queue: gauge(
                "ferry_capture_queue_records",
                "Prediction capture records accepted and waiting to be written.",
                &["endpoint"],
            ),
            registry,
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# failed to encode metrics: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
