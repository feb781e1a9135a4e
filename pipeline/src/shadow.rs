//! Shadow variants: a sampled copy of an endpoint's requests goes, through a bounded queue, to
//! a background task that runs the shadow models with a timeout. The caller never waits for
//! it: a full queue drops the copy (counted), a slow or failing shadow is counted and, when
//! the endpoint captures, recorded.

use super::{Core, now_ms};
use crate::capture::{Capture, CaptureRecord};
use crate::config::EndpointConfig;
use ferry_registry::ModelRef;
use ferry_transforms::{Chain, Row};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

struct Target {
    label: String,
    model: ModelRef,
    sample: f64,
    timeout: Duration,
}

struct Job {
    target: usize,
    rows: Vec<Row>,
    request_id: String,
}

/// The sending side, owned by the endpoint; dropping it lets the worker finish its queue and
/// exit.
pub(crate) struct Shadows {
    endpoint: String,
    targets: Vec<(String, f64)>,
    tx: mpsc::Sender<Job>,
    core: Arc<Core>,
}

impl Shadows {
    pub(crate) fn start(
        core: Arc<Core>,
        at: &str,
        config: &EndpointConfig,
        pre: Arc<Chain>,
        post: Arc<Chain>,
        capture: Option<Capture>,
    ) -> Result<Shadows, String> {
        let mut targets = Vec::new();
        for (j, s) in config.shadow.iter().enumerate() {
            targets.push(Target {
                label: s.label(),
                model: ModelRef::parse(&s.model)
                    .map_err(|e| format!("`{at}.shadow[{j}].model`: {e}"))?,
                sample: s.sample,
                timeout: s
                    .timeout()
                    .map_err(|e| format!("`{at}.shadow[{j}].timeout`: {e}"))?,
            });
        }
        let (tx, rx) = mpsc::channel(config.shadow_queue_capacity);
        let shadows = Shadows {
            endpoint: config.name.clone(),
            targets: targets
                .iter()
                .map(|t| (t.label.clone(), t.sample))
                .collect(),
            tx,
            core: core.clone(),
        };
        tokio::spawn(worker(
            core,
            config.name.clone(),
            targets,
            pre,
            post,
            capture,
            rx,
        ));
        Ok(shadows)
    }

    /// Queues a copy of `rows` for each shadow whose sample draw hits; never waits.
    pub(crate) fn offer(&self, rows: &[Row], request_id: &str) {
        for (target, (label, sample)) in self.targets.iter().enumerate() {
            if *sample <= 0.0 || fastrand::f64() >= *sample {
                continue;
            }
            let job = Job {
                target,
                rows: rows.to_vec(),
                request_id: request_id.to_string(),
            };
            if self.tx.try_send(job).is_err() {
                self.core
                    .metrics
                    .shadow_requests
                    .with_label_values(&[&self.endpoint, label, "dropped"])
                    .inc();
            }
        }
    }
}

async fn worker(
    core: Arc<Core>,
    endpoint: String,
    targets: Vec<Target>,
    pre: Arc<Chain>,
    post: Arc<Chain>,
    capture: Option<Capture>,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(job) = rx.recv().await {
        let target = &targets[job.target];
        let received = capture.as_ref().map(|_| job.rows.clone());
        let started = Instant::now();
        let run = tokio::time::timeout(
            target.timeout,
            core.run_variant(
                &endpoint,
                &target.label,
                &target.model,
                job.rows,
                &pre,
                &post,
                capture.is_some(),
                None,
            ),
        )
        .await;
        let outcome = match run {
            Ok(Ok(run)) => {
                if let (Some(capture), Some(received)) = (&capture, received) {
                    let timestamp_ms = now_ms();
                    let features = run.features.unwrap_or_default();
                    capture.record(
                        received
                            .into_iter()
                            .zip(run.predictions)
                            .enumerate()
                            .map(|(i, (input, output))| CaptureRecord {
                                request_id: job.request_id.clone(),
                                timestamp_ms,
                                endpoint: endpoint.clone(),
                                variant: target.label.clone(),
                                model: run.model.clone(),
                                version: run.version,
                                shadow: true,
                                input: Value::Object(input),
                                features: features.get(i).cloned().unwrap_or(Value::Null),
                                output,
                            })
                            .collect(),
                    );
                }
                "ok"
            }
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %endpoint, shadow = %target.label, error = %e, "Shadow prediction failed.");
                "error"
            }
            Err(_) => {
                tracing::debug!(endpoint = %endpoint, shadow = %target.label, timeout = ?target.timeout, "Shadow prediction timed out.");
                "timeout"
            }
        };
        core.metrics
            .shadow_requests
            .with_label_values(&[&endpoint, &target.label, outcome])
            .inc();
        core.metrics
            .shadow_duration
            .with_label_values(&[&endpoint, &target.label])
            .observe(started.elapsed().as_secs_f64());
    }
}
