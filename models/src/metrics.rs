//! The metrics of model versions, compute queues and engine calls. They are registered into
//! the Prometheus registry of whoever serves them (the server's `/metrics`), so the names
//! follow the same `ferry_<name>_<unit>[_total]` catalogue; labels are model and version as
//! the registry knows them, never a client string.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Buckets of every latency histogram ferry exports, so stages and requests compare.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const ROWS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Cheap to clone (each family is a shared handle): the manager, every compute queue and the
/// pipeline use the same families.
#[derive(Clone)]
pub struct ModelMetrics {
    /// Latency of one pipeline stage (`queue` and `infer` here; the pipeline adds its own
    /// stages to the same family).
    pub stage_duration: HistogramVec,
    /// Rows per engine call.
    pub batch_rows: HistogramVec,
    /// Jobs put into / taken out of a model's compute queue; depth = pushed - popped.
    pub queue_pushed: IntCounterVec,
    pub queue_popped: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    /// Requests turned away because a compute queue was full.
    pub queue_rejected: IntCounterVec,
    /// Requests run on the thread that received them, without queueing (a cheap, idle model).
    pub inline_runs: IntCounterVec,
    /// Inference requests received, by protocol (`v1`, `v2`, `grpc`); the server counts them
    /// through each version's [`RequestMetrics`].
    pub requests: IntCounterVec,
    /// End-to-end inference request latency in the server's handler.
    pub request_duration: HistogramVec,
    /// Model version loads by outcome (`ready`, `failed`).
    pub model_loads: IntCounterVec,
    /// 1 when a model version is loaded and warmed up.
    pub model_ready: IntGaugeVec,
    /// Devices found at start-up: usable CPU cores (`kind="cpu"`), CUDA devices (`kind="cuda"`).
    pub devices: IntGaugeVec,
    /// Engine intra-op threads of a loaded model version, by the device it runs on.
    pub model_threads: IntGaugeVec,
}

fn valid<T>(metric: prometheus::Result<T>) -> T {
    metric.expect("metric definitions are valid. This is a bug.")
}

/// A counter family; names and labels are literals, so an invalid one is a bug. The other
/// crates' families (`ferry_pipeline::PipelineMetrics`) are made with the same three helpers.
pub fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    valid(IntCounterVec::new(Opts::new(name, help), labels))
}

pub fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    valid(IntGaugeVec::new(Opts::new(name, help), labels))
}

pub fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    valid(HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    ))
}

impl ModelMetrics {
    /// The families, not registered anywhere yet (`register` exposes them; tests may skip it).
    pub fn new() -> ModelMetrics {
        ModelMetrics {
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
            inline_runs: counter(
                "ferry_inline_runs_total",
                "Requests run on the I/O thread that received them, skipping the compute queue (the model is cheap and nothing was queued).",
                &["model", "version"],
            ),
            requests: counter(
                "ferry_requests_total",
                "Inference requests received.",
                &["protocol", "model", "version"],
            ),
            request_duration: histogram(
                "ferry_request_duration_seconds",
                "Inference request latency from decoded request to encoded response.",
                &["model", "version"],
                LATENCY_BUCKETS,
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
        }
    }

    /// Adds every family to `registry`; fails when one of the names is registered already.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.stage_duration.clone()))?;
        registry.register(Box::new(self.batch_rows.clone()))?;
        registry.register(Box::new(self.queue_pushed.clone()))?;
        registry.register(Box::new(self.queue_popped.clone()))?;
        registry.register(Box::new(self.queue_depth.clone()))?;
        registry.register(Box::new(self.queue_rejected.clone()))?;
        registry.register(Box::new(self.inline_runs.clone()))?;
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.request_duration.clone()))?;
        registry.register(Box::new(self.model_loads.clone()))?;
        registry.register(Box::new(self.model_ready.clone()))?;
        registry.register(Box::new(self.devices.clone()))?;
        registry.register(Box::new(self.model_threads.clone()))?;
        Ok(())
    }
}

/// The protocol an inference request came in on: the `protocol` label of `ferry_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1,
    V2,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V1 => "v1",
            Protocol::V2 => "v2",
            Protocol::Grpc => "grpc",
        }
    }
}

/// One model version's request metrics, resolved at load: the request path increments them
/// without a label lookup (three `with_label_values` per request were ~1.5% of a 1-row
/// request's CPU, most of it contended atomics on the families' locks).
#[derive(Clone)]
pub struct RequestMetrics {
    v1: prometheus::IntCounter,
    v2: prometheus::IntCounter,
    grpc: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

impl RequestMetrics {
    pub fn new(metrics: &ModelMetrics, model: &str, version: &str) -> RequestMetrics {
        let requests = |protocol: Protocol| {
            metrics
                .requests
                .with_label_values(&[protocol.as_str(), model, version])
        };
        RequestMetrics {
            v1: requests(Protocol::V1),
            v2: requests(Protocol::V2),
            grpc: requests(Protocol::Grpc),
            duration: metrics
                .request_duration
                .with_label_values(&[model, version]),
        }
    }

    pub fn requests(&self, protocol: Protocol) -> &prometheus::IntCounter {
        match protocol {
            Protocol::V1 => &self.v1,
            Protocol::V2 => &self.v2,
            Protocol::Grpc => &self.grpc,
        }
    }

    pub fn duration(&self) -> &prometheus::Histogram {
        &self.duration
    }
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_families_are_exposed_under_their_names() {
        let registry = Registry::new();
        let metrics = ModelMetrics::new();
        metrics.register(&registry).unwrap();
        metrics.devices.with_label_values(&["cpu"]).set(2);
        metrics.queue_depth.with_label_values(&["m", "1"]).set(0);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"ferry_devices".to_string()), "{names:?}");
        assert!(
            names.contains(&"ferry_queue_depth".to_string()),
            "{names:?}"
        );
        assert!(
            metrics.register(&registry).is_err(),
            "registering twice must fail, not expose duplicates"
        );
    }
}
