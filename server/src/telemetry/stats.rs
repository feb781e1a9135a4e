//! Triton's per-model statistics (`GET /v2/models/{m}/stats`, gRPC `ModelStatistics`), read
//! from the Prometheus families ferry already keeps, so the two views never disagree.
//!
//! What each field counts in ferry:
//! - `success`: inference requests answered, with their handler latency
//!   (`ferry_request_duration_seconds`);
//! - `fail`: requests that failed after the model resolved (`ferry_request_errors_total`; ferry
//!   keeps no latency for them, so `ns` is 0, and no version label, so every version of a model
//!   reports the model's count);
//! - `queue`, `compute_infer`: the `queue` and `infer` stages of `ferry_stage_duration_seconds`;
//! - `compute_input`, `compute_output`: the `features` + `preprocess` and `postprocess` stages
//!   (business endpoints only; plain model requests have none);
//! - `inference_count` / `execution_count`: rows scored and engine calls
//!   (`ferry_batch_size_rows`).

use super::metrics::Metrics;
use ferry_models::ModelManager;
use prometheus::core::Collector;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Duration {
    pub count: u64,
    pub ns: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct InferenceStats {
    pub success: Duration,
    pub fail: Duration,
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
    pub cache_hit: Duration,
    pub cache_miss: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelStats {
    pub name: String,
    pub version: String,
    /// Milliseconds since the epoch of the last engine call; 0 when unknown.
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferenceStats,
    pub batch_stats: Vec<serde_json::Value>,
}

/// Statistics of the READY versions of `name` (every model when None), `version` narrowing to
/// one. An unknown model or version is an error naming it.
pub fn model_stats(
    models: &ModelManager,
    metrics: &Metrics,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<ModelStats>, ferry_models::LookupError> {
    let mut targets: Vec<(String, u64)> = Vec::new();
    match name {
        Some(name) => {
            let model = models.lookup(name, version)?;
            match version {
                Some(_) => targets.push((model.name.clone(), model.version)),
                None => targets.extend(
                    models
                        .ready_versions(name)
                        .into_iter()
                        .map(|v| (model.name.clone(), v)),
                ),
            }
        }
        None => {
            let mut names: Vec<String> = models.index().into_iter().map(|e| e.name).collect();
            names.sort();
            names.dedup();
            for n in names {
                targets.extend(
                    models
                        .ready_versions(&n)
                        .into_iter()
                        .map(|v| (n.clone(), v)),
                );
            }
        }
    }
    Ok(targets
        .into_iter()
        .map(|(name, version)| stats_of(metrics, &name, &version.to_string()))
        .collect())
}

fn stats_of(metrics: &Metrics, name: &str, version: &str) -> ModelStats {
    let stage = |s: &str| {
        histogram(
            &metrics.models.stage_duration,
            &[("model", name), ("version", version), ("stage", s)],
        )
    };
    let add = |a: Duration, b: Duration| Duration {
        count: a.count + b.count,
        ns: a.ns + b.ns,
    };
    let rows = histogram_raw(
        &metrics.models.batch_rows,
        &[("model", name), ("version", version)],
    );
    let fail = counter_sum(&metrics.request_errors, &[("model", name)]);
    ModelStats {
        name: name.to_string(),
        version: version.to_string(),
        last_inference: 0,
        inference_count: rows.1 as u64,
        execution_count: rows.0,
        inference_stats: InferenceStats {
            success: histogram(
                &metrics.request_duration,
                &[("model", name), ("version", version)],
            ),
            fail: Duration { count: fail, ns: 0 },
            queue: stage("queue"),
            compute_input: add(stage("features"), stage("preprocess")),
            compute_infer: stage("infer"),
            compute_output: stage("postprocess"),
            ..InferenceStats::default()
        },
        batch_stats: Vec::new(),
    }
}

fn matches(metric: &prometheus::proto::Metric, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(k, v)| {
        metric
            .get_label()
            .iter()
            .any(|l| l.name() == *k && l.value() == *v)
    })
}

/// Sample count and sum of the series of `vec` with `labels`, without creating a series.
fn histogram_raw(vec: &prometheus::HistogramVec, labels: &[(&str, &str)]) -> (u64, f64) {
    let mut out = (0u64, 0f64);
    for family in vec.collect() {
        for m in family.get_metric() {
            if matches(m, labels) {
                let h = m.get_histogram();
                out.0 += h.get_sample_count();
                out.1 += h.get_sample_sum();
            }
        }
    }
    out
}

/// A seconds histogram as a count and nanoseconds.
fn histogram(vec: &prometheus::HistogramVec, labels: &[(&str, &str)]) -> Duration {
    let (count, seconds) = histogram_raw(vec, labels);
    Duration {
        count,
        ns: (seconds * 1e9) as u64,
    }
}

fn counter_sum(vec: &prometheus::IntCounterVec, labels: &[(&str, &str)]) -> u64 {
    vec.collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .filter(|m| matches(m, labels))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}
