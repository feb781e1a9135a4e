//! The metrics of endpoints, feature lookups, shadows and prediction capture. Like
//! `ferry_models::ModelMetrics`, they are registered into the Prometheus registry of whoever
//! serves them (the server's `/metrics`), under the same `ferry_<name>_<unit>[_total]`
//! catalogue. The pipeline's stages (`features`, `preprocess`, `postprocess`) go to the model
//! manager's `ferry_stage_duration_seconds`, beside its `queue` and `infer`.

use ferry_models::metrics::{LATENCY_BUCKETS, counter, gauge, histogram};
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};

/// Cheap to clone (each family is a shared handle): endpoints, shadow workers and capture
/// writers use the same families.
#[derive(Clone)]
pub struct PipelineMetrics {
    /// Endpoint requests by endpoint, variant, model and version.
    pub endpoint_requests: IntCounterVec,
    /// Feature values looked up, by view and status (present, missing, stale, unavailable).
    pub feature_values: IntCounterVec,
    /// Feature values served as defaults (missing, stale or store unavailable), by endpoint.
    pub features_defaulted: IntCounterVec,
    /// Endpoint predict failures by variant and error type.
    pub endpoint_errors: IntCounterVec,
    /// Rows scored per endpoint by path: `columns` (Arrow frames) or `rows` (JSON rows).
    pub endpoint_rows: IntCounterVec,
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

impl PipelineMetrics {
    /// The families, not registered anywhere yet (`register` exposes them; tests may skip it).
    pub fn new() -> PipelineMetrics {
        PipelineMetrics {
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
            endpoint_rows: counter(
                "ferry_endpoint_rows_total",
                "Rows scored by endpoint and path: columns (Arrow frames: Parquet batches, JSON requests whose fields map exactly onto columns) or rows (JSON rows: shadows, capture, scripts, forced variants, anything else).",
                &["endpoint", "path"],
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
        }
    }

    /// Adds every family to `registry`; fails when one of the names is registered already.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.endpoint_requests.clone()))?;
        registry.register(Box::new(self.feature_values.clone()))?;
        registry.register(Box::new(self.features_defaulted.clone()))?;
        registry.register(Box::new(self.endpoint_errors.clone()))?;
        registry.register(Box::new(self.endpoint_rows.clone()))?;
        registry.register(Box::new(self.endpoint_variant_duration.clone()))?;
        registry.register(Box::new(self.shadow_requests.clone()))?;
        registry.register(Box::new(self.shadow_duration.clone()))?;
        registry.register(Box::new(self.capture_records.clone()))?;
        registry.register(Box::new(self.capture_queue.clone()))?;
        Ok(())
    }
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        PipelineMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_families_are_exposed_under_their_names() {
        let registry = Registry::new();
        let metrics = PipelineMetrics::new();
        metrics.register(&registry).unwrap();
        metrics.capture_queue.with_label_values(&["churn"]).set(0);
        metrics
            .endpoint_requests
            .with_label_values(&["risk", "main", "risk", "1"])
            .inc();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for name in [
            "ferry_capture_queue_records",
            "ferry_endpoint_requests_total",
        ] {
            assert!(names.contains(&name.to_string()), "{names:?}");
        }
        assert!(
            metrics.register(&registry).is_err(),
            "registering twice must fail, not expose duplicates"
        );
    }
}
