//! OpenTelemetry traces. With `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, every HTTP request becomes a trace: a server span
//! continuing the caller's W3C `traceparent`, with child spans per stage (decode, assign,
//! features, transforms, queue, model, encode), exported over OTLP — HTTP protobuf to
//! `/v1/traces` by default, gRPC with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`. `OTEL_SERVICE_NAME`
//! (default `ferry`) and `OTEL_TRACES_SAMPLER[_ARG]` are read as the SDK reads them. Unset: off,
//! and the stage spans (DEBUG level) cost nothing.
//!
//! Export never blocks a request: finished spans go into a bounded queue
//! ([`QUEUE_CAPACITY`]); when it is full they are dropped and counted
//! (`ferry_otel_spans_total{outcome="dropped"}`). One thread sends them in batches.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Finished spans waiting for export; beyond it spans are dropped, never waited for.
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export call, and the longest a finished span waits before it is sent.
const BATCH_SPANS: usize = 512;
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// Span counts since start, by outcome; `/metrics` reports them as `ferry_otel_spans_total`.
pub static EXPORTED: AtomicU64 = AtomicU64::new(0);
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
pub static FAILED: AtomicU64 = AtomicU64::new(0);

static ENABLED: OnceLock<bool> = OnceLock::new();

/// Whether traces are exported (set once by [`provider_from_env`]).
pub fn enabled() -> bool {
    ENABLED.get().copied().unwrap_or(false)
}

/// Why the exporter could not start; the server does not start either, rather than run
/// without the traces its operator asked for.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry: {0}")]
pub struct OtelError(String);

/// The tracer provider the OTEL_* variables ask for, or `None` when no OTLP endpoint is set.
pub fn provider_from_env() -> Result<Option<SdkTracerProvider>, OtelError> {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        let _ = ENABLED.set(false);
        return Ok(None);
    }
    let mut resource = Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("ferry");
    }
    let resource = resource.build();
    let processor = BoundedExport::start(resource.clone())?;
    // The sampler comes from OTEL_TRACES_SAMPLER[_ARG] (the SDK's default config reads them).
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let _ = ENABLED.set(true);
    Ok(Some(provider))
}

/// The `tracing` layer that turns spans into OpenTelemetry spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("ferry"))
        .with_tracked_inactivity(false)
}

/// When traces are exported: names the server span `span` (its `otel.name` field) and makes
/// the caller's `traceparent` its parent. Returns whether traces are on.
pub fn start_server_span(
    span: &tracing::Span,
    name: impl FnOnce() -> String,
    headers: &axum::http::HeaderMap,
) -> bool {
    if !enabled() {
        return false;
    }
    span.record("otel.name", name());
    continue_trace(span, headers);
    true
}

/// Continues the caller's trace: the `traceparent` of `headers` becomes the parent of `span`.
fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
}

/// The trace id of `span` (hex), when traces are exported.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let id = context.span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

enum Message {
    Span(Box<SpanData>),
    Flush(std::sync::mpsc::Sender<()>),
    Shutdown,
}

/// A span processor with a bounded queue and one export thread.
#[derive(Debug)]
struct BoundedExport {
    queue: tokio::sync::mpsc::Sender<Message>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl BoundedExport {
    fn start(resource: Resource) -> Result<BoundedExport, OtelError> {
        let (queue, rx) = tokio::sync::mpsc::channel(QUEUE_CAPACITY);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("ferry-otel".into())
            .spawn(move || {
                // The exporters (hyper, tonic) run on a Tokio runtime of their own: export
                // I/O never runs on the request threads.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("could not start a runtime: {e}")));
                        return;
                    }
                };
                let exporter = runtime.block_on(async {
                    opentelemetry_otlp::SpanExporter::builder()
                        .build()
                        .map_err(|e| format!("could not build the OTLP exporter: {e}"))
                });
                let mut exporter = match exporter {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                exporter.set_resource(&resource);
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(export_loop(exporter, rx));
            })
            .map_err(|e| OtelError(format!("could not start the export thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(BoundedExport {
                queue,
                worker: Mutex::new(Some(worker)),
            }),
            Ok(Err(e)) => Err(OtelError(e)),
            Err(_) => Err(OtelError("the export thread stopped".into())),
        }
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: tokio::sync::mpsc::Receiver<Message>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH_SPANS);
    let mut oldest: Option<Instant> = None;
    loop {
        let wait = oldest.map_or(BATCH_DELAY, |t| BATCH_DELAY.saturating_sub(t.elapsed()));
        let (flush, closed) = match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Message::Span(span))) => {
                oldest.get_or_insert_with(Instant::now);
                batch.push(*span);
                (None, false)
            }
            Ok(Some(Message::Flush(ack))) => (Some(ack), false),
            Ok(Some(Message::Shutdown)) | Ok(None) => (None, true),
            Err(_elapsed) => (None, false),
        };
        let due = oldest.is_some_and(|t| t.elapsed() >= BATCH_DELAY);
        if !batch.is_empty() && (batch.len() >= BATCH_SPANS || due || flush.is_some() || closed) {
            let n = batch.len() as u64;
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_SPANS));
            oldest = None;
            match exporter.export(spans).await {
                Ok(()) => EXPORTED.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!(error = %e, spans = n, "OTLP export failed.");
                    FAILED.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        if let Some(ack) = flush {
            let _ = ack.send(());
        }
        if closed {
            let _ = exporter.shutdown();
            return;
        }
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(Message::Span(Box::new(span))).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (ack, done) = std::sync::mpsc::channel();
        // try_send: never block (or panic) on a caller's runtime; a full queue is flushing.
        if self.queue.try_send(Message::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(5));
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _ = self.queue.try_send(Message::Shutdown);
        let worker = self.worker.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(worker) = worker {
            let deadline = Instant::now() + timeout;
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}
