//! ferry's Prometheus metrics, in one registry: the HTTP families defined here, the endpoint,
//! feature, shadow and capture families of `ferry_pipeline::PipelineMetrics`, and the model,
//! queue and engine families of `ferry_models::ModelMetrics`. Names follow
//! `ferry_<name>_<unit>[_total]`; labels stay bounded (model and version come from the
//! registry, never from a client string that did not resolve to a served model).

use ferry_models::ModelMetrics;
use ferry_pipeline::PipelineMetrics;
use prometheus::{HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

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
    /// Inference requests by protocol (`v2`, `v1`, `grpc`), model and version.
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
    /// gRPC inference-service answers by RPC and status code.
    pub grpc_responses: IntCounterVec,
    /// Endpoint, feature, shadow and capture families (`ferry-pipeline` defines them).
    pub pipeline: PipelineMetrics,
    /// Inference requests (HTTP and gRPC) being served now, set at each scrape. It moves with
    /// load where CPU does not (compute threads are fixed), so the HPA scales on it.
    pub inflight: IntGauge,
    /// `max_concurrent_requests`: beyond it requests are shed with 429.
    pub inflight_limit: IntGauge,
    /// Access log lines by outcome: `written`, or `skipped` by the per-second budget;
    /// resolved once, as every request counts in one of them.
    pub access_log_lines: AccessLogLines,
    /// OpenTelemetry spans by outcome (`exported`, `dropped` by the full queue, `failed` to
    /// send), brought up to date at each scrape.
    pub otel_spans: IntCounterVec,
}

/// `ferry_access_log_lines_total`'s two series.
pub struct AccessLogLines {
    pub written: prometheus::IntCounter,
    pub skipped: prometheus::IntCounter,
}

impl AccessLogLines {
    fn of(family: &IntCounterVec) -> AccessLogLines {
        AccessLogLines {
            written: family.with_label_values(&["written"]),
            skipped: family.with_label_values(&["skipped"]),
        }
    }
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
        let gauge = |name: &str, help: &str| {
            let g =
                IntGauge::new(name, help).expect("metric definitions are valid. This is a bug.");
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique. This is a bug.");
            g
        };
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_start_time_seconds, ... as every Prometheus client exports them (Linux).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique. This is a bug.");
        let models = ModelMetrics::new();
        models
            .register(&registry)
            .expect("metric names are unique. This is a bug.");
        let pipeline = PipelineMetrics::new();
        pipeline
            .register(&registry)
            .expect("metric names are unique. This is a bug.");
        Metrics(std::sync::Arc::new(MetricFamilies {
            // Defined and registered by `ferry-models`, which resolves them per loaded version.
            requests: models.requests.clone(),
            request_duration: models.request_duration.clone(),
            models,
            pipeline,
            request_errors: counter(
                "ferry_request_errors_total",
                "Inference requests that failed, by error type.",
                &["model", "error_type"],
            ),
            http_responses: counter(
                "ferry_http_responses_total",
                "HTTP responses by route and status code.",
                &["route", "status"],
            ),
            grpc_responses: counter(
                "ferry_grpc_responses_total",
                "gRPC inference-service answers by RPC and status code.",
                &["rpc", "code"],
            ),
            inflight: gauge(
                "ferry_inflight_requests",
                "Inference requests (HTTP and gRPC) in flight at scrape time.",
            ),
            inflight_limit: gauge(
                "ferry_inflight_requests_limit",
                "max_concurrent_requests: in-flight inference requests beyond it are shed (429).",
            ),
            access_log_lines: AccessLogLines::of(&counter(
                "ferry_access_log_lines_total",
                "Access log lines written, and skipped under load (access_log.max_lines_per_second).",
                &["outcome"],
            )),
            otel_spans: counter(
                "ferry_otel_spans_total",
                "OpenTelemetry spans exported, dropped (export queue full) or failed to send.",
                &["outcome"],
            ),
            registry,
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if super::otel::enabled() {
            use std::sync::atomic::Ordering::Relaxed;
            for (outcome, total) in [
                ("exported", &super::otel::EXPORTED),
                ("dropped", &super::otel::DROPPED),
                ("failed", &super::otel::FAILED),
            ] {
                let c = self.otel_spans.with_label_values(&[outcome]);
                c.inc_by(total.load(Relaxed).saturating_sub(c.get()));
            }
        }
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
