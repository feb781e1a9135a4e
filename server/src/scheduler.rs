//! Compute off the executor: each loaded model version gets a bounded job queue and named OS
//! threads that run the engine. The async side only `try_send`s and awaits a oneshot, so slow
//! inference never stalls I/O, health checks or metrics, and a full queue is an immediate 429.
//!
//! Dynamic batching (issue 9) slots in between `submit` and the workers: the workers already
//! take one job at a time from a multi-consumer queue and skip jobs whose caller went away.

use crate::telemetry::metrics::Metrics;
use ferry_runtimes::{Runtime, RuntimeError, Tensor};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;
use tracing::Span;

/// Why a job did not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScheduleError {
    #[error("the compute queue of {model} is full ({capacity} requests waiting)")]
    QueueFull { model: String, capacity: usize },
    #[error("{model} is shutting down")]
    Closed { model: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

struct Job {
    inputs: Vec<Tensor>,
    reply: oneshot::Sender<Result<Vec<Tensor>, RuntimeError>>,
    span: Span,
    enqueued: Instant,
}

/// The compute queue and threads of one model version. Dropping it closes the queue and joins
/// the threads once they have answered what was queued.
pub struct ComputeQueue {
    label: String,
    capacity: usize,
    job_tx: Option<crossbeam_channel::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    labels: [String; 2],
    metrics: Metrics,
}

impl ComputeQueue {
    pub fn start(
        model: &str,
        version: u64,
        runtime: Arc<dyn Runtime>,
        threads: usize,
        capacity: usize,
        metrics: Metrics,
    ) -> std::io::Result<ComputeQueue> {
        let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(capacity);
        let labels = [model.to_string(), version.to_string()];
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let job_rx = job_rx.clone();
            let runtime = runtime.clone();
            let metrics = metrics.clone();
            let labels = labels.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ferry-compute-{model}-{version}-{i}"))
                .spawn(move || compute_worker(job_rx, runtime, metrics, labels))?;
            workers.push(handle);
        }
        Ok(ComputeQueue {
            label: format!("{model}@{version}"),
            capacity,
            job_tx: Some(job_tx),
            workers,
            labels,
            metrics,
        })
    }

    /// Queues `inputs` (validated, in signature order) and waits for the outputs.
    pub async fn submit(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ScheduleError> {
        let (reply, reply_rx) = oneshot::channel();
        let job = Job {
            inputs,
            reply,
            span: Span::current(),
            enqueued: Instant::now(),
        };
        let labels = [self.labels[0].as_str(), self.labels[1].as_str()];
        let Some(job_tx) = &self.job_tx else {
            return Err(ScheduleError::Closed {
                model: self.label.clone(),
            });
        };
        match job_tx.try_send(job) {
            Ok(()) => {
                self.metrics.queue_pushed.with_label_values(&labels).inc();
                self.metrics.queue_depth.with_label_values(&labels).inc();
            }
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                self.metrics.queue_rejected.with_label_values(&labels).inc();
                return Err(ScheduleError::QueueFull {
                    model: self.label.clone(),
                    capacity: self.capacity,
                });
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                return Err(ScheduleError::Closed {
                    model: self.label.clone(),
                });
            }
        }
        match reply_rx.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ScheduleError::Closed {
                model: self.label.clone(),
            }),
        }
    }
}

impl Drop for ComputeQueue {
    fn drop(&mut self) {
        self.job_tx.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn compute_worker(
    job_rx: crossbeam_channel::Receiver<Job>,
    runtime: Arc<dyn Runtime>,
    metrics: Metrics,
    labels: [String; 2],
) {
    let labels = [labels[0].as_str(), labels[1].as_str()];
    let queue_time = metrics
        .stage_duration
        .with_label_values(&[labels[0], labels[1], "queue"]);
    let infer_time = metrics
        .stage_duration
        .with_label_values(&[labels[0], labels[1], "infer"]);
    let rows = metrics.batch_rows.with_label_values(&labels);
    while let Ok(job) = job_rx.recv() {
        metrics.queue_popped.with_label_values(&labels).inc();
        metrics.queue_depth.with_label_values(&labels).dec();
        queue_time.observe(job.enqueued.elapsed().as_secs_f64());
        // The caller gave up (timeout, disconnect): do not spend compute on it.
        if job.reply.is_closed() {
            continue;
        }
        let _entered = job.span.enter();
        if let Some(first) = job.inputs.first() {
            rows.observe(first.shape.first().copied().unwrap_or(1) as f64);
        }
        let started = Instant::now();
        let result = runtime.run(&job.inputs);
        infer_time.observe(started.elapsed().as_secs_f64());
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_runtimes::{DataType, Engine, Signature, TensorData, TensorSpec};
    use std::sync::Mutex;
    use std::sync::mpsc;

    /// Blocks in `run` until the test releases it; counts calls.
    struct GatedRuntime {
        signature: Signature,
        started: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Runtime for GatedRuntime {
        fn engine(&self) -> Engine {
            Engine::Tract
        }
        fn signature(&self) -> &Signature {
            &self.signature
        }
        fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = self.started.lock().unwrap().send(());
            let _ = self.release.lock().unwrap().recv();
            Ok(inputs.to_vec())
        }
    }

    fn gated() -> (Arc<GatedRuntime>, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let spec = TensorSpec {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![-1],
        };
        let runtime = Arc::new(GatedRuntime {
            signature: Signature {
                inputs: vec![spec.clone()],
                outputs: vec![spec],
            },
            started: Mutex::new(started_tx),
            release: Mutex::new(release_rx),
            calls: Default::default(),
        });
        (runtime, started_rx, release_tx)
    }

    fn x(v: f32) -> Vec<Tensor> {
        vec![Tensor::new("x", vec![1], TensorData::Fp32(vec![v])).unwrap()]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_rejects_at_once_and_queued_work_still_completes() {
        let (runtime, started, release) = gated();
        let queue =
            Arc::new(ComputeQueue::start("m", 1, runtime.clone(), 1, 1, Metrics::new()).unwrap());
        let first = tokio::spawn({
            let q = queue.clone();
            async move { q.submit(x(1.0)).await }
        });
        // The worker is now busy with the first job, so the queue's one slot is free.
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        let second = tokio::spawn({
            let q = queue.clone();
            async move { q.submit(x(2.0)).await }
        });
        // Wait until the second job sits in the queue.
        while queue
            .metrics
            .queue_depth
            .with_label_values(&["m", "1"])
            .get()
            != 1
        {
            tokio::task::yield_now().await;
        }
        let third = queue.submit(x(3.0)).await;
        assert!(
            matches!(third, Err(ScheduleError::QueueFull { capacity: 1, .. })),
            "{third:?}"
        );
        release.send(()).unwrap();
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), x(1.0));
        assert_eq!(second.await.unwrap().unwrap(), x(2.0));
        assert_eq!(runtime.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(
            queue
                .metrics
                .queue_rejected
                .with_label_values(&["m", "1"])
                .get(),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_whose_caller_left_are_skipped() {
        let (runtime, started, release) = gated();
        let queue =
            Arc::new(ComputeQueue::start("m", 1, runtime.clone(), 1, 4, Metrics::new()).unwrap());
        let first = tokio::spawn({
            let q = queue.clone();
            async move { q.submit(x(1.0)).await }
        });
        let started = tokio::task::spawn_blocking(move || {
            started.recv().unwrap();
            started
        })
        .await
        .unwrap();
        // Queue a job, then drop its caller before the worker gets to it.
        let abandoned = tokio::spawn({
            let q = queue.clone();
            async move { q.submit(x(2.0)).await }
        });
        while queue
            .metrics
            .queue_depth
            .with_label_values(&["m", "1"])
            .get()
            != 1
        {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        // A third job runs; the abandoned one in between never reached the engine.
        let third = tokio::spawn({
            let q = queue.clone();
            async move { q.submit(x(3.0)).await }
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        release.send(()).unwrap();
        assert_eq!(third.await.unwrap().unwrap(), x(3.0));
        assert_eq!(runtime.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
