//! TEMPORARY stand-in for the prediction capture module (being written on branch `capture`);
//! replaced at merge.
use crate::telemetry::metrics::Metrics;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    pub sample_percent: f64,
    pub destination: String,
}

impl CaptureConfig {
    pub fn validate(&self, _at: &str) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct CaptureRecord {
    pub request_id: String,
    pub timestamp_ms: i64,
    pub endpoint: String,
    pub variant: String,
    pub model: String,
    pub version: u64,
    pub shadow: bool,
    pub input: serde_json::Value,
    pub features: serde_json::Value,
    pub output: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CaptureError(String);

#[derive(Clone)]
pub struct Capture;

impl Capture {
    pub async fn start(
        _endpoint: &str,
        _config: &CaptureConfig,
        _s3: &ferry_registry::S3Options,
        _metrics: Metrics,
    ) -> Result<Capture, CaptureError> {
        Ok(Capture)
    }
    pub fn sample(&self) -> bool {
        false
    }
    pub fn record(&self, _records: Vec<CaptureRecord>) {}
    pub async fn shutdown(&self) {}
}
