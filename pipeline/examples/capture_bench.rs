//! Cost of prediction capture, without HTTP: what `sample()` + `record()` add to a request,
//! and how many records per second the writer encodes and writes to a local directory.
//!
//! `cargo run --release -p ferry-pipeline --example capture_bench [records]`

use ferry_pipeline::PipelineMetrics;
use ferry_pipeline::capture::{Capture, CaptureConfig, CaptureFormat, CaptureRecord, now_ms};
use ferry_registry::S3Options;
use serde_json::json;
use std::time::{Duration, Instant};

fn record(i: u64) -> CaptureRecord {
    CaptureRecord {
        request_id: format!("0b6f3c1e-5d7a-4c1b-9f0e-{i:012}"),
        timestamp_ms: now_ms(),
        endpoint: "churn".into(),
        variant: "champion".into(),
        model: "churn".into(),
        version: 7,
        shadow: false,
        input: json!({"customer_id": format!("c{i}"), "tenure": 14, "plan": "pro", "country": "DE"}),
        features: json!({"customer.spend_30d": 121.5, "customer.orders_90d": 4, "customer.tickets_30d": 0}),
        output: json!({"label": 1, "probabilities": [0.31, 0.69]}),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        dir_bytes(&path)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("records: a number"))
        .unwrap_or(200_000);
    for format in [CaptureFormat::Jsonl, CaptureFormat::Parquet] {
        let dir = tempfile::tempdir().unwrap();
        let config = CaptureConfig {
            sample_percent: 100.0,
            destination: dir.path().to_str().unwrap().into(),
            format,
            max_batch_rows: 1000,
            flush_interval: "5s".into(),
            queue_capacity: n as usize,
        };
        let metrics = PipelineMetrics::new();
        let capture = Capture::start("churn", &config, &S3Options::default(), metrics.clone())
            .await
            .unwrap();
        let records: Vec<CaptureRecord> = (0..n).map(record).collect();
        let mut calls = Vec::with_capacity(n as usize);
        let started = Instant::now();
        for r in records {
            let t = Instant::now();
            if capture.sample() {
                capture.record(vec![r]);
            }
            calls.push(t.elapsed());
        }
        capture.shutdown().await;
        let total = started.elapsed();
        calls.sort();
        let written = metrics
            .capture_records
            .with_label_values(&["churn", "written"])
            .get();
        assert_eq!(written, n, "every record written");
        println!(
            "{format:?}: sample()+record() per 1-row request p50 {:?} p99 {:?} max {:?}; \
             {n} records written in {total:.2?} ({:.0} records/s), {:.0} bytes/record on disk",
            percentile(&calls, 0.5),
            percentile(&calls, 0.99),
            calls.last().unwrap(),
            n as f64 / total.as_secs_f64(),
            dir_bytes(dir.path()) as f64 / n as f64,
        );
    }
}
