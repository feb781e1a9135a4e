//! The one catalogue of ferry's Prometheus metrics. Names follow `ferry_<name>_<unit>[_total]`;
//! labels stay bounded (model and version come from the registry, never from a client string
//! that did not resolve to a served model).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label value for requests whose model name did not resolve (keeps cardinality bounded).
pub const UNKNOWN_MODEL: &str = "_unknown";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const ROWS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

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
    /// Latency of one pipeline stage (`queue`, `infer`).
    pub stage_duration: HistogramVec,
    /// Rows per engine call.
    pub batch_rows: HistogramVec,
    /// Jobs put into / taken out of a model's compute queue; depth = pushed - popped.
    pub queue_pushed: IntCounterVec,
    pub queue_popped: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    /// Requests turned away because a compute queue was full.
    pub queue_rejected: IntCounterVec,
    /// Model version loads by outcome (`ready`, `failed`).
    pub model_loads: IntCounterVec,
    /// 1 when a model version is loaded and warmed up.
    pub model_ready: IntGaugeVec,
    /// Devices found at start-up: usable CPU cores (`kind="cpu"`), CUDA devices (`kind="cuda"`).
    pub devices: IntGaugeVec,
    /// Engine intra-op threads of a loaded model version, by the device it runs on.
    pub model_threads: IntGaugeVec,
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
        Metrics(std::sync::Arc::new(MetricFamilies {
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
            stage_duration: histogram(
                "ferry_stage_duration_seconds",
                "Time spent in one pipeline stage (features, preprocess, queue, infer, postprocess).",
                &["model", "version", "stage"],
                LATENCY_BUCKETS,
            ),
            batch_rows: histogram(
                "ferry_batch_size_rows",
                "Rows per engine call.",
                &["model", "version"],
                ROWS_BUCKETS,
            ),
            queue_pushed: counter(
                "ferry_queue_pushed_total",
                "Jobs put into a model's compute queue.",
                &["model", "version"],
            ),
            queue_popped: counter(
                "ferry_queue_popped_total",
                "Jobs taken out of a model's compute queue.",
                &["model", "version"],
            ),
            queue_depth: gauge(
                "ferry_queue_depth",
                "Jobs waiting in a model's compute queue.",
                &["model", "version"],
            ),
            queue_rejected: counter(
                "ferry_queue_rejected_total",
                "Requests answered 429 because the compute queue was full.",
                &["model", "version"],
            ),
            model_loads: counter(
                "ferry_model_loads_total",
                "Model version loads, by outcome.",
                &["model", "version", "outcome"],
            ),
            model_ready: gauge(
                "ferry_model_ready",
                "1 when the model version is loaded and warmed up.",
                &["model", "version"],
            ),
            devices: gauge(
                "ferry_devices",
                "Compute devices found at start-up: usable CPU cores (kind=cpu, cgroup quota applied) and CUDA devices (kind=cuda).",
                &["kind"],
            ),
            model_threads: gauge(
                "ferry_model_intra_op_threads",
                "Engine intra-op threads of a loaded model version, with the device it runs on (0 once unloaded).",
                &["model", "version", "device"],
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
