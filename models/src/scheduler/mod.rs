//! Compute off the executor: each loaded model version gets a bounded job queue and named OS
//! threads that run the engine. The async side only `try_send`s and awaits a oneshot, so slow
//! inference never stalls I/O, health checks or metrics, and a full queue is an immediate 429.
//!
//! With dynamic batching on, each compute thread merges what is queued along the batch
//! dimension (policy in `planner.rs`) before it runs the engine; requests that arrive while a
//! batch runs wait in the queue and form the next one. Without it, compute threads take
//! requests one by one. Either way a request wakes one thread. See README.md here.

mod merge;
mod planner;
mod queue;

pub use planner::BatchPolicy;

use crate::metrics::ModelMetrics;
use ferry_runtimes::{Runtime, RuntimeError, Tensor};
use planner::{BatchPlanner, Batchable};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::Span;

/// Why a job did not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScheduleError {
    #[error("the compute queue of {model} is full ({capacity} requests waiting)")]
    QueueFull { model: String, capacity: usize },
    #[error("{model} did not answer within the request deadline of {timeout:?}")]
    DeadlineExceeded { model: String, timeout: Duration },
    #[error(
        "{model} is overloaded: this request waited {waited:?} in its queue, more than {limit:?} ({calls} of its recent engine calls); retry later or on another replica"
    )]
    Shed {
        model: String,
        waited: Duration,
        limit: Duration,
        calls: u32,
    },
    #[error("{model} is shutting down")]
    Closed { model: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    shape_key: Vec<Vec<usize>>,
    reply: oneshot::Sender<Result<Vec<Tensor>, ScheduleError>>,
    span: Span,
    /// Open from submission until the job's batch starts: the `queue` stage of its trace.
    queue_span: Span,
    enqueued: Instant,
}

impl Batchable for Job {
    fn rows(&self) -> usize {
        self.rows
    }
    fn shape_key(&self) -> &[Vec<usize>] {
        &self.shape_key
    }
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
    fn enqueued(&self) -> Instant {
        self.enqueued
    }
}

/// How a model version's queue and compute threads are set up.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Compute threads sharing the loaded model.
    pub threads: usize,
    /// Requests that may wait; more get `QueueFull` (429).
    pub capacity: usize,
    /// Dynamic batching; `None` runs every request on its own.
    pub batching: Option<BatchPolicy>,
    /// Deadline for requests that do not set their own.
    pub default_timeout: Option<Duration>,
    /// Requests predicted to take the engine less than this run on the submitting thread
    /// when nothing is queued; `None` always queues.
    pub inline_below: Option<Duration>,
    /// Sheds a queued request (`ScheduleError::Shed`, 429) that has waited longer than this
    /// many of the model's recent engine calls, and at least `shed_min_wait`, when a compute
    /// thread reaches it; `None` never sheds.
    pub shed_after_calls: Option<u32>,
    /// The shortest wait that is shed: a stall (a model loading beside it, a noisy
    /// neighbour) must not turn a short queue into refusals.
    pub shed_min_wait: Duration,
}

/// An exponentially weighted mean of nanoseconds, 0 until the first sample. Racing updates
/// may drop a sample; the mean moves by 1/8 per sample, so that is noise.
#[derive(Default)]
struct Ewma(AtomicU64);

impl Ewma {
    fn record(&self, ns: u64) {
        let sample = ns.max(1);
        let old = self.0.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.0.store(new, Ordering::Relaxed);
    }

    fn ns(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the engine's calls cost, learned from the calls the model makes: per row, so a
/// 1-row request is predicted from recent 1-row calls and a large one is never predicted
/// cheap by them; and per call, the unit of the shedding limit.
#[derive(Default)]
struct CostEstimate {
    per_row: Ewma,
    per_call: Ewma,
}

impl CostEstimate {
    fn record(&self, rows: usize, elapsed: Duration) {
        let ns = elapsed.as_nanos() as u64;
        self.per_row.record(ns / rows.max(1) as u64);
        self.per_call.record(ns);
    }

    /// Whether `rows` rows are predicted to take less than `limit`; unknown is not cheap.
    fn cheaper_than(&self, rows: usize, limit: Duration) -> bool {
        let per_row = self.per_row.ns();
        per_row > 0 && (per_row as u128) * (rows as u128) < limit.as_nanos()
    }

    /// The recent mean duration of one engine call (zero before the first).
    fn call(&self) -> Duration {
        Duration::from_nanos(self.per_call.ns())
    }
}

/// The compute queue and threads of one model version. Dropping it closes the queue and joins
/// the threads once they have answered what was queued.
pub struct ComputeQueue {
    label: String,
    options: QueueOptions,
    job_tx: Option<queue::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    context: WorkerContext,
}

/// Metric handles of one model version, resolved once so the hot path does no label lookups.
#[derive(Clone)]
struct QueueMetrics {
    pushed: prometheus::IntCounter,
    popped: prometheus::IntCounter,
    depth: prometheus::IntGauge,
    rejected: prometheus::IntCounter,
    queue_time: prometheus::Histogram,
    infer_time: prometheus::Histogram,
    batch_rows: prometheus::Histogram,
    inline_runs: prometheus::IntCounter,
}

impl QueueMetrics {
    fn new(metrics: &ModelMetrics, model: &str, version: &str) -> QueueMetrics {
        let labels = [model, version];
        QueueMetrics {
            pushed: metrics.queue_pushed.with_label_values(&labels),
            popped: metrics.queue_popped.with_label_values(&labels),
            depth: metrics.queue_depth.with_label_values(&labels),
            rejected: metrics.queue_rejected.with_label_values(&labels),
            queue_time: metrics
                .stage_duration
                .with_label_values(&[model, version, "queue"]),
            infer_time: metrics
                .stage_duration
                .with_label_values(&[model, version, "infer"]),
            batch_rows: metrics.batch_rows.with_label_values(&labels),
            inline_runs: metrics.inline_runs.with_label_values(&labels),
        }
    }
}

#[derive(Clone)]
struct WorkerContext {
    label: Arc<str>,
    runtime: Arc<dyn Runtime>,
    metrics: QueueMetrics,
    cost: Arc<CostEstimate>,
    shed_after_calls: Option<u32>,
    shed_min_wait: Duration,
}

impl WorkerContext {
    /// Records one engine call of `rows` rows: the cost estimate and the `infer` stage.
    fn engine_call_took(&self, rows: usize, elapsed: Duration) {
        self.cost.record(rows, elapsed);
        self.metrics.infer_time.observe(elapsed.as_secs_f64());
    }

    /// How long a request may have waited before it is shed: `shed_after_calls` engine calls
    /// at their recent mean, at least `shed_min_wait`. Past that the queue is standing
    /// rather than absorbing a burst: serving the request anyway only makes every request
    /// behind it wait as long (Little's law), while its client can retry elsewhere.
    fn shed_limit(&self) -> Option<Duration> {
        let calls = self.shed_after_calls?;
        Some(self.shed_min_wait.max(self.cost.call() * calls))
    }

    /// Answers a job that waited too long with `Shed`.
    fn shed(&self, job: Job, limit: Duration) {
        self.metrics.rejected.inc();
        let waited = job.enqueued.elapsed();
        let _ = job.reply.send(Err(ScheduleError::Shed {
            model: self.label.to_string(),
            waited,
            limit,
            calls: self.shed_after_calls.unwrap_or_default(),
        }));
    }

    /// Counts a job as leaving the queue.
    fn popped(&self, job: &Job) {
        self.metrics.popped.inc();
        self.metrics.depth.dec();
        self.metrics
            .queue_time
            .observe(job.enqueued.elapsed().as_secs_f64());
    }
}

impl ComputeQueue {
    pub fn start(
        model: &str,
        version: u64,
        runtime: Arc<dyn Runtime>,
        mut options: QueueOptions,
        metrics: ModelMetrics,
    ) -> std::io::Result<ComputeQueue> {
        // GPU engines keep to their compute threads: a CUDA context is bound per thread, and
        // a GPU call's launch and copy cost is not what the hand-off saving is sized for.
        if runtime.device() != ferry_runtimes::Device::Cpu {
            options.inline_below = None;
        }
        let (job_tx, job_rx) = queue::bounded::<Job>(options.capacity.max(1));
        let queue_metrics = QueueMetrics::new(&metrics, model, &version.to_string());
        let context = WorkerContext {
            label: format!("{model}@{version}").into(),
            runtime,
            metrics: queue_metrics,
            cost: Arc::default(),
            shed_after_calls: options.shed_after_calls.filter(|&n| n > 0),
            shed_min_wait: options.shed_min_wait,
        };
        let mut threads = Vec::new();
        let batching = options
            .batching
            .clone()
            .filter(|p| p.max_batch_rows > 1 && context.runtime.signature().has_batch_dim());
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name).spawn(f)
        };
        match batching {
            Some(policy) => {
                // Each compute thread assembles its own batches from the shared queue: a
                // request costs one thread wake-up, not two (a separate batcher thread handing
                // batches to compute threads cost ~14% of a 1-row request's CPU at c=1).
                // Requests that arrive while a batch runs wait in the queue and form the next.
                for i in 0..options.threads.max(1) {
                    let (rx, ctx, policy) = (job_rx.clone(), context.clone(), policy.clone());
                    threads.push(spawn(
                        format!("ferry-compute-{model}-{version}-{i}"),
                        Box::new(move || batching_worker(rx, policy, ctx)),
                    )?);
                }
            }
            None => {
                for i in 0..options.threads.max(1) {
                    let (rx, ctx) = (job_rx.clone(), context.clone());
                    threads.push(spawn(
                        format!("ferry-compute-{model}-{version}-{i}"),
                        Box::new(move || {
                            while let Ok(job) = rx.recv() {
                                ctx.popped(&job);
                                if job.abandoned() {
                                    continue;
                                }
                                match ctx.shed_limit() {
                                    Some(limit) if job.enqueued.elapsed() > limit => {
                                        ctx.shed(job, limit)
                                    }
                                    _ => run_batch(&ctx, vec![job]),
                                }
                            }
                        }),
                    )?);
                }
            }
        }
        Ok(ComputeQueue {
            label: format!("{model}@{version}"),
            options,
            job_tx: Some(job_tx),
            threads,
            context,
        })
    }

    /// Queues `inputs` (validated, in signature order) and waits for the outputs, at most
    /// until the queue's default deadline.
    pub async fn submit(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ScheduleError> {
        self.submit_with_timeout(inputs, self.options.default_timeout)
            .await
    }

    /// Like `submit`, with a deadline of the caller's choosing (`None`: wait as long as it takes).
    pub async fn submit_with_timeout(
        &self,
        inputs: Vec<Tensor>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Tensor>, ScheduleError> {
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first().copied())
            .unwrap_or(1);
        let Some(job_tx) = &self.job_tx else {
            return Err(ScheduleError::Closed {
                model: self.label.clone(),
            });
        };
        if let Some(limit) = self.options.inline_below
            && self.context.cost.cheaper_than(rows, limit)
            && job_tx.is_empty()
            && let Some(result) = self.run_inline(&inputs, rows)
        {
            return result.map_err(Into::into);
        }
        let (reply, reply_rx) = oneshot::channel();
        let shape_key = inputs
            .iter()
            .map(|t| t.shape.get(1..).unwrap_or_default().to_vec())
            .collect();
        let job = Job {
            inputs,
            rows,
            shape_key,
            reply,
            span: Span::current(),
            queue_span: tracing::debug_span!(target: "ferry::stage", "stage", otel.name = "queue"),
            enqueued: Instant::now(),
        };
        match job_tx.try_send(job) {
            Ok(()) => {
                self.context.metrics.pushed.inc();
                self.context.metrics.depth.inc();
            }
            Err(queue::TrySendError::Full(_)) => {
                self.context.metrics.rejected.inc();
                return Err(ScheduleError::QueueFull {
                    model: self.label.clone(),
                    capacity: self.options.capacity,
                });
            }
            Err(queue::TrySendError::Disconnected(_)) => {
                return Err(ScheduleError::Closed {
                    model: self.label.clone(),
                });
            }
        }
        let closed = || ScheduleError::Closed {
            model: self.label.clone(),
        };
        match timeout {
            None => reply_rx.await.map_err(|_| closed())?,
            // Dropping the receiver on timeout marks the job abandoned: it is skipped if it
            // has not started.
            Some(limit) => match tokio::time::timeout(limit, reply_rx).await {
                Ok(reply) => reply.map_err(|_| closed())?,
                Err(_) => Err(ScheduleError::DeadlineExceeded {
                    model: self.label.clone(),
                    timeout: limit,
                }),
            },
        }
    }

    /// Runs a request on the submitting thread: for a model this cheap, the hand-off to a
    /// compute thread and back (two wake-ups, ~20–40 µs of CPU) costs more than the call.
    /// `None` when the engine is busy with another call; the request then queues.
    fn run_inline(
        &self,
        inputs: &[Tensor],
        rows: usize,
    ) -> Option<Result<Vec<Tensor>, RuntimeError>> {
        let ctx = &self.context;
        let _span =
            tracing::debug_span!(target: "ferry::stage", "stage", otel.name = "model", rows)
                .entered();
        let started = Instant::now();
        let result = ctx.runtime.try_run_now(inputs)?;
        ctx.engine_call_took(rows, started.elapsed());
        ctx.metrics.inline_runs.inc();
        ctx.metrics.queue_time.observe(0.0);
        ctx.metrics.batch_rows.observe(rows as f64);
        Some(result)
    }
}

impl Drop for ComputeQueue {
    fn drop(&mut self) {
        self.job_tx.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn batching_worker(job_rx: queue::Receiver<Job>, policy: BatchPolicy, ctx: WorkerContext) {
    let mut planner = BatchPlanner::new(policy);
    let mut open = true;
    while open || !planner.is_empty() {
        if planner.is_empty() {
            match job_rx.recv() {
                Ok(job) => planner.push(job),
                Err(_) => break,
            }
        }
        // Take what is already waiting, up to a full batch.
        while !planner.has_full_batch() {
            match job_rx.try_recv() {
                Some(job) => planner.push(job),
                None => break,
            }
        }
        for job in planner.drain_abandoned() {
            ctx.popped(&job);
        }
        if let Some(limit) = ctx.shed_limit() {
            for job in planner.drain_waited_longer(Instant::now(), limit) {
                ctx.popped(&job);
                ctx.shed(job, limit);
            }
        }
        if let Some(batch) = planner.take(Instant::now(), !open) {
            for job in &batch {
                ctx.popped(job);
            }
            run_batch(&ctx, batch);
            continue;
        }
        let Some(deadline) = planner.flush_deadline() else {
            continue;
        };
        match job_rx.recv_deadline(deadline) {
            Ok(job) => planner.push(job),
            Err(queue::RecvTimeoutError::Timeout) => {}
            Err(queue::RecvTimeoutError::Disconnected) => open = false,
        }
    }
}

/// Runs one batch: merges inputs along axis 0 when there are several jobs, runs the engine
/// once, and answers each job with exactly its own rows.
fn run_batch(ctx: &WorkerContext, mut jobs: Vec<Job>) {
    let rows: usize = jobs.iter().map(|j| j.rows).sum();
    // Each request's trace: its queue wait ends here, and its `model` stage is this call.
    let _model_spans: Vec<Span> = jobs
        .iter_mut()
        .map(|job| {
            drop(std::mem::replace(&mut job.queue_span, Span::none()));
            tracing::debug_span!(target: "ferry::stage", parent: &job.span, "stage", otel.name = "model", rows)
        })
        .collect();
    ctx.metrics.batch_rows.observe(rows as f64);
    let batch_span = tracing::debug_span!("batch", rows, jobs = jobs.len());
    for job in &jobs {
        batch_span.follows_from(&job.span);
    }
    let _entered = batch_span.enter();
    let started = Instant::now();
    if let [_] = jobs.as_slice() {
        let job = jobs.into_iter().next().expect("one job. This is a bug.");
        let result = job.span.in_scope(|| ctx.runtime.run(&job.inputs));
        ctx.engine_call_took(rows, started.elapsed());
        let _ = job.reply.send(result.map_err(Into::into));
        return;
    }
    let inputs: Option<Vec<Tensor>> = (0..jobs[0].inputs.len())
        .map(|i| merge::concat(&jobs.iter().map(|j| &j.inputs[i]).collect::<Vec<_>>()))
        .collect();
    let result = match inputs {
        Some(inputs) => ctx.runtime.run(&inputs),
        None => Err(RuntimeError::Inference {
            engine: ctx.runtime.engine(),
            message:
                "requests in one batch have different shapes. This is a bug in ferry's batcher."
                    .into(),
        }),
    };
    ctx.engine_call_took(rows, started.elapsed());
    let outputs = match result {
        Ok(outputs) => outputs,
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone().into()));
            }
            return;
        }
    };
    if let Some(bad) = outputs.iter().find(|t| t.shape.first() != Some(&rows)) {
        let e = RuntimeError::Inference {
            engine: ctx.runtime.engine(),
            message: format!(
                "output `{}` has shape {:?} for a batch of {rows} rows, so it cannot be split per request; disable batching for this model",
                bad.name, bad.shape
            ),
        };
        for job in jobs {
            let _ = job.reply.send(Err(e.clone().into()));
        }
        return;
    }
    let mut offset = 0;
    for job in jobs {
        let own = outputs
            .iter()
            .map(|t| merge::slice_rows(t, offset, job.rows))
            .collect();
        offset += job.rows;
        let _ = job.reply.send(Ok(own));
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

    /// FP32 `x` of any length in, the same `x` out.
    fn echo_signature() -> Signature {
        let spec = TensorSpec {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![-1],
        };
        Signature {
            inputs: vec![spec.clone()],
            outputs: vec![spec],
        }
    }

    fn gated() -> (Arc<GatedRuntime>, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let runtime = Arc::new(GatedRuntime {
            signature: echo_signature(),
            started: Mutex::new(started_tx),
            release: Mutex::new(release_rx),
            calls: Default::default(),
        });
        (runtime, started_rx, release_tx)
    }

    /// Submits `x(v)` in a task and returns it once the gated engine has started the call,
    /// with `started` back for the next call.
    async fn start_gated_call(
        queue: &Arc<ComputeQueue>,
        started: mpsc::Receiver<()>,
        v: f32,
    ) -> (
        tokio::task::JoinHandle<Result<Vec<Tensor>, ScheduleError>>,
        mpsc::Receiver<()>,
    ) {
        let call = tokio::spawn({
            let q = queue.clone();
            async move { q.submit(x(v)).await }
        });
        let started = tokio::task::spawn_blocking(move || {
            started.recv().unwrap();
            started
        })
        .await
        .unwrap();
        (call, started)
    }

    fn opts(capacity: usize, batching: Option<BatchPolicy>) -> QueueOptions {
        QueueOptions {
            threads: 1,
            capacity,
            batching,
            default_timeout: None,
            inline_below: None,
            shed_after_calls: None,
            shed_min_wait: Duration::from_millis(100),
        }
    }

    fn x(v: f32) -> Vec<Tensor> {
        vec![Tensor::new("x", vec![1], TensorData::Fp32(vec![v])).unwrap()]
    }

    /// Echoes its input and records the name of the thread each call ran on; `busy` makes
    /// `try_run_now` answer that the engine would have to wait.
    struct ThreadRecorder {
        signature: Signature,
        threads: Mutex<Vec<String>>,
        busy: std::sync::atomic::AtomicBool,
        device: ferry_runtimes::Device,
    }

    impl Runtime for ThreadRecorder {
        fn engine(&self) -> Engine {
            Engine::Tract
        }
        fn signature(&self) -> &Signature {
            &self.signature
        }
        fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.threads.lock().unwrap().push(name);
            Ok(inputs.to_vec())
        }
        fn try_run_now(&self, inputs: &[Tensor]) -> Option<Result<Vec<Tensor>, RuntimeError>> {
            (!self.busy.load(std::sync::atomic::Ordering::SeqCst)).then(|| self.run(inputs))
        }
        fn device(&self) -> ferry_runtimes::Device {
            self.device
        }
    }

    fn recorder() -> Arc<ThreadRecorder> {
        recorder_on(ferry_runtimes::Device::Cpu)
    }

    fn recorder_on(device: ferry_runtimes::Device) -> Arc<ThreadRecorder> {
        Arc::new(ThreadRecorder {
            signature: echo_signature(),
            threads: Mutex::default(),
            busy: Default::default(),
            device,
        })
    }

    fn rows(n: usize) -> Vec<Tensor> {
        vec![Tensor::new("x", vec![n], TensorData::Fp32(vec![1.5; n])).unwrap()]
    }

    #[test]
    fn cost_estimate_is_unknown_until_a_call_and_scales_with_rows() {
        let cost = CostEstimate::default();
        assert!(!cost.cheaper_than(1, Duration::from_secs(1)));
        cost.record(10, Duration::from_micros(20));
        assert!(cost.cheaper_than(1, Duration::from_micros(50)));
        assert!(cost.cheaper_than(24, Duration::from_micros(50)));
        assert!(!cost.cheaper_than(25, Duration::from_micros(50)));
        // Slower calls move the mean up by an eighth of the difference each.
        for _ in 0..64 {
            cost.record(1, Duration::from_micros(100));
        }
        assert!(!cost.cheaper_than(1, Duration::from_micros(50)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cheap_idle_model_runs_on_the_submitting_thread_until_it_is_busy() {
        let runtime = recorder();
        let options = QueueOptions {
            inline_below: Some(Duration::from_millis(5)),
            ..opts(
                8,
                Some(BatchPolicy {
                    max_batch_rows: 64,
                    max_delay: Duration::ZERO,
                    preferred_rows: Vec::new(),
                }),
            )
        };
        let queue =
            ComputeQueue::start("m", 1, runtime.clone(), options, ModelMetrics::new()).unwrap();
        // The first call has no cost estimate yet, so it queues; the second is predicted cheap.
        assert_eq!(queue.submit(rows(1)).await.unwrap(), rows(1));
        assert_eq!(queue.submit(rows(2)).await.unwrap(), rows(2));
        // A request predicted to take longer than the limit queues.
        assert_eq!(queue.submit(rows(100_000)).await.unwrap(), rows(100_000));
        // So does one arriving while the engine is busy with another call.
        runtime
            .busy
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(queue.submit(rows(3)).await.unwrap(), rows(3));
        let threads = runtime.threads.lock().unwrap().clone();
        let compute = |name: &String| name.starts_with("ferry-compute-m-1");
        assert!(compute(&threads[0]), "{threads:?}");
        assert!(!compute(&threads[1]), "{threads:?}");
        assert!(compute(&threads[2]), "{threads:?}");
        assert!(compute(&threads[3]), "{threads:?}");
        assert_eq!(queue.context.metrics.inline_runs.get(), 1);
        assert_eq!(queue.context.metrics.pushed.get(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_an_inline_limit_every_request_queues() {
        every_request_queues(recorder(), opts(8, None)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gpu_model_never_runs_inline() {
        let options = QueueOptions {
            inline_below: Some(Duration::from_secs(1)),
            ..opts(8, None)
        };
        every_request_queues(recorder_on(ferry_runtimes::Device::Cuda(0)), options).await;
    }

    async fn every_request_queues(runtime: Arc<ThreadRecorder>, options: QueueOptions) {
        let queue =
            ComputeQueue::start("m", 1, runtime.clone(), options, ModelMetrics::new()).unwrap();
        for n in 1..4 {
            assert_eq!(queue.submit(rows(n)).await.unwrap(), rows(n));
        }
        let threads = runtime.threads.lock().unwrap().clone();
        assert!(
            threads.iter().all(|t| t.starts_with("ferry-compute-m-1")),
            "{threads:?}"
        );
        assert_eq!(queue.context.metrics.inline_runs.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_rejects_at_once_and_queued_work_still_completes() {
        let (runtime, started, release) = gated();
        let queue = Arc::new(
            ComputeQueue::start("m", 1, runtime.clone(), opts(1, None), ModelMetrics::new())
                .unwrap(),
        );
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
        while queue.context.metrics.depth.get() != 1 {
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
        assert_eq!(queue.context.metrics.rejected.get(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_whose_caller_left_are_skipped() {
        let (runtime, started, release) = gated();
        let queue = Arc::new(
            ComputeQueue::start("m", 1, runtime.clone(), opts(4, None), ModelMetrics::new())
                .unwrap(),
        );
        let (first, started) = start_gated_call(&queue, started, 1.0).await;
        // Queue a job, then drop its caller before the worker gets to it.
        let abandoned = tokio::spawn({
            let q = queue.clone();
            async move { q.submit(x(2.0)).await }
        });
        while queue.context.metrics.depth.get() != 1 {
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

    /// y = x + 1, element-wise, any batch; counts engine calls and rows seen.
    struct AddOne {
        signature: Signature,
        calls: std::sync::atomic::AtomicUsize,
        max_rows: std::sync::atomic::AtomicUsize,
    }

    impl Runtime for AddOne {
        fn engine(&self) -> Engine {
            Engine::Tract
        }
        fn signature(&self) -> &Signature {
            &self.signature
        }
        fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.max_rows
                .fetch_max(inputs[0].shape[0], std::sync::atomic::Ordering::SeqCst);
            // Slow enough that concurrent callers pile up behind a running batch.
            std::thread::sleep(std::time::Duration::from_millis(2));
            let TensorData::Fp32(v) = &inputs[0].data else {
                unreachable!()
            };
            Ok(vec![
                Tensor::new(
                    "y",
                    inputs[0].shape.clone(),
                    TensorData::Fp32(v.iter().map(|x| x + 1.0).collect()),
                )
                .unwrap(),
            ])
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_each_get_exactly_their_own_rows() {
        callers_get_their_own_rows(1).await;
    }

    /// Several compute threads each assemble batches from the one queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batching_compute_threads_share_the_queue_and_keep_rows_apart() {
        callers_get_their_own_rows(3).await;
    }

    async fn callers_get_their_own_rows(threads: usize) {
        let runtime = Arc::new(AddOne {
            signature: Signature {
                inputs: vec![TensorSpec {
                    name: "x".into(),
                    datatype: DataType::Fp32,
                    shape: vec![-1, 3],
                }],
                outputs: vec![TensorSpec {
                    name: "y".into(),
                    datatype: DataType::Fp32,
                    shape: vec![-1, 3],
                }],
            },
            calls: Default::default(),
            max_rows: Default::default(),
        });
        let policy = BatchPolicy {
            max_batch_rows: 16,
            max_delay: Duration::from_millis(2),
            preferred_rows: vec![],
        };
        let queue = Arc::new(
            ComputeQueue::start(
                "m",
                1,
                runtime.clone(),
                QueueOptions {
                    threads,
                    ..opts(1024, Some(policy))
                },
                ModelMetrics::new(),
            )
            .unwrap(),
        );
        let callers = 200usize;
        let mut tasks = Vec::new();
        for c in 0..callers {
            let q = queue.clone();
            tasks.push(tokio::spawn(async move {
                let rows = 1 + c % 5;
                let data: Vec<f32> = (0..rows * 3).map(|k| (c * 1000 + k) as f32).collect();
                let input =
                    Tensor::new("x", vec![rows, 3], TensorData::Fp32(data.clone())).unwrap();
                let out = q.submit(vec![input]).await.unwrap();
                assert_eq!(out[0].shape, vec![rows, 3], "caller {c}");
                let want: Vec<f32> = data.iter().map(|x| x + 1.0).collect();
                assert_eq!(out[0].data, TensorData::Fp32(want), "caller {c}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let calls = runtime.calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            calls < callers,
            "requests were merged: {calls} engine calls for {callers} requests"
        );
        assert!(
            runtime.max_rows.load(std::sync::atomic::Ordering::SeqCst) <= 16 + 4,
            "batches respect max_batch_rows"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadline_expiry_answers_the_caller_and_skips_the_work() {
        let (runtime, started, release) = gated();
        let queue = Arc::new(
            ComputeQueue::start("m", 1, runtime.clone(), opts(4, None), ModelMetrics::new())
                .unwrap(),
        );
        let (first, started) = start_gated_call(&queue, started, 1.0).await;
        // The engine is busy: this request waits in the queue past its deadline.
        let late = queue
            .submit_with_timeout(x(2.0), Some(Duration::from_millis(20)))
            .await;
        assert!(
            matches!(late, Err(ScheduleError::DeadlineExceeded { .. })),
            "{late:?}"
        );
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        let third = tokio::spawn({
            let q = queue.clone();
            async move { q.submit(x(3.0)).await }
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        release.send(()).unwrap();
        third.await.unwrap().unwrap();
        assert_eq!(
            runtime.calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the expired request never ran"
        );
    }

    /// A request queued behind a long engine call, with and without batching: past the shed
    /// limit (here one recent call, at least 10 ms) it is answered `Shed` and never runs;
    /// with shedding off the same request runs.
    #[tokio::test]
    async fn a_request_queued_past_the_shed_limit_is_shed_and_never_runs() {
        let batching = BatchPolicy {
            max_batch_rows: 64,
            max_delay: Duration::ZERO,
            preferred_rows: Vec::new(),
        };
        for (policy, shed_after_calls) in [
            (None, Some(1)),
            (Some(batching.clone()), Some(1)),
            (None, None),
            (Some(batching), None),
        ] {
            let (runtime, started, release) = gated();
            let options = QueueOptions {
                shed_after_calls,
                shed_min_wait: Duration::from_millis(10),
                ..opts(4, policy.clone())
            };
            let queue = Arc::new(
                ComputeQueue::start("m", 1, runtime.clone(), options, ModelMetrics::new()).unwrap(),
            );
            // A quick call first, so the recent-call mean is small and the 10 ms floor is
            // the limit even after the long call below.
            release.send(()).unwrap();
            queue.submit(x(0.0)).await.unwrap();
            started.recv().unwrap();
            let (first, started) = start_gated_call(&queue, started, 1.0).await;
            let second = tokio::spawn({
                let q = queue.clone();
                async move { q.submit(x(2.0)).await }
            });
            // The second request waits behind the running call, well past 10 ms.
            tokio::time::sleep(Duration::from_millis(60)).await;
            release.send(()).unwrap();
            first.await.unwrap().unwrap();
            let case = format!("batching {policy:?}, shed_after_calls {shed_after_calls:?}");
            if shed_after_calls.is_some() {
                // A request that was not shed would block on the gate: fail, do not hang.
                let shed = tokio::time::timeout(Duration::from_secs(10), second)
                    .await
                    .unwrap_or_else(|_| panic!("{case}: the late request ran"))
                    .unwrap();
                assert!(
                    matches!(shed, Err(ScheduleError::Shed { .. })),
                    "{case}: {shed:?}"
                );
                assert_eq!(runtime.calls.load(Ordering::SeqCst), 2, "{case}");
            } else {
                tokio::task::spawn_blocking(move || started.recv().unwrap())
                    .await
                    .unwrap();
                release.send(()).unwrap();
                let out = second.await.unwrap().unwrap();
                assert_eq!(out[0].data, TensorData::Fp32(vec![2.0]), "{case}");
                assert_eq!(runtime.calls.load(Ordering::SeqCst), 3, "{case}");
            }
        }
    }
}
