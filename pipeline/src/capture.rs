//! Prediction capture: a sampled share of an endpoint's requests (input rows, features used,
//! outputs, variant, model version) written in batches as JSONL or Parquet files to a local
//! directory or an S3 prefix, for monitoring, drift analysis and building training sets.
//!
//! The request path only does a random draw ([`Capture::sample`]) and a non-blocking hand-off
//! ([`Capture::record`]); one background task per endpoint batches, encodes and writes. A
//! full queue or a failing destination drops records and counts them in
//! `ferry_capture_records_total`: capture never slows down or fails a request.
//!
//! Layout, one file per batch, each written atomically (local: temp file + rename; S3: one
//! PutObject), Hive-style partitions so Spark, DuckDB and pyarrow datasets read it as is:
//! ```text
//! <destination>/<endpoint>/date=YYYY-MM-DD/hour=HH/<unix_ms>-<replica>-<seq>.jsonl|.parquet
//! ```
//! The date and hour (UTC) and `unix_ms` are the time the batch is written; `replica` is random
//! per process, so replicas sharing a destination never overwrite each other's files.

use crate::metrics::PipelineMetrics;
use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use ferry_registry::{S3Options, S3Store, parse_s3_uri};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use prometheus::{IntCounter, IntGauge};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Attempts per batch before its records are counted as failed and dropped.
const WRITE_ATTEMPTS: u32 = 3;
/// Wait before the second attempt; multiplied by 4 for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long shutdown may spend writing what is left: an unreachable destination (an S3
/// connect timeout is 5 s, with the SDK's own retries) must not hold the process past its
/// termination grace period. Batches not written by then are counted as failed.
const SHUTDOWN_WRITE_BUDGET: Duration = Duration::from_secs(10);

/// The `capture:` section of an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Share of requests captured, 0..=100; a sampled request is captured with all its rows.
    pub sample_percent: f64,
    /// A local directory, a `file://` URI or `s3://bucket/prefix`.
    pub destination: String,
    #[serde(default)]
    pub format: CaptureFormat,
    /// A batch is written once this many records are buffered...
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    /// ...or once its first record has waited this long (humantime, e.g. `5s`).
    #[serde(default = "default_flush_interval")]
    pub flush_interval: String,
    /// Records accepted but not yet written; a request whose records do not fit is dropped
    /// from capture (and counted), never delayed.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

fn default_max_batch_rows() -> usize {
    1000
}

fn default_flush_interval() -> String {
    "5s".to_string()
}

fn default_queue_capacity() -> usize {
    10_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureFormat {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// Snappy-compressed Parquet; `input`, `features`, `output` are UTF-8 columns of JSON text.
    Parquet,
}

impl CaptureFormat {
    fn extension(self) -> &'static str {
        match self {
            CaptureFormat::Jsonl => "jsonl",
            CaptureFormat::Parquet => "parquet",
        }
    }
}

impl CaptureConfig {
    /// Checks every key; the message names the bad one as `{key_prefix}.<key>`.
    pub fn validate(&self, key_prefix: &str) -> Result<(), String> {
        if !(self.sample_percent.is_finite() && (0.0..=100.0).contains(&self.sample_percent)) {
            return Err(format!(
                "{key_prefix}.sample_percent must be within 0..=100, got {}",
                self.sample_percent
            ));
        }
        Destination::parse(&self.destination)
            .map_err(|reason| format!("{key_prefix}.destination: {reason}"))?;
        if self.max_batch_rows == 0 {
            return Err(format!("{key_prefix}.max_batch_rows must be at least 1"));
        }
        self.flush_interval()
            .map_err(|reason| format!("{key_prefix}.flush_interval: {reason}"))?;
        if self.queue_capacity < self.max_batch_rows {
            return Err(format!(
                "{key_prefix}.queue_capacity ({}) must be at least max_batch_rows ({}), or no batch could fill up",
                self.queue_capacity, self.max_batch_rows
            ));
        }
        Ok(())
    }

    fn flush_interval(&self) -> Result<Duration, String> {
        let interval = humantime::parse_duration(&self.flush_interval).map_err(|e| {
            format!(
                "`{}` is not a duration ({e}); write e.g. `5s` or `500ms`",
                self.flush_interval
            )
        })?;
        if interval.is_zero() {
            return Err("must be longer than 0s".to_string());
        }
        Ok(interval)
    }
}

/// One captured prediction: one row of a request, as served by one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureRecord {
    pub request_id: String,
    /// Milliseconds since the Unix epoch when the prediction was served.
    pub timestamp_ms: i64,
    pub endpoint: String,
    pub variant: String,
    pub model: String,
    pub version: u64,
    /// A shadow variant's answer (never returned to the caller).
    pub shadow: bool,
    /// The request row as received (an object).
    pub input: serde_json::Value,
    /// Feature values used, `"view.feature" -> value`, or null.
    pub features: serde_json::Value,
    /// The prediction as returned (or the shadow's answer).
    pub output: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture for endpoint `{endpoint}`: {message}")]
    Config { endpoint: String, message: String },
    #[error("capture for endpoint `{endpoint}`: {source}")]
    Store {
        endpoint: String,
        source: ferry_registry::RegistryError,
    },
}

/// Where batches go.
enum Destination {
    Local(PathBuf),
    S3(S3Store),
}

/// A parsed but not yet opened destination.
enum DestinationSpec {
    Local(PathBuf),
    S3(String),
}

impl Destination {
    fn parse(destination: &str) -> Result<DestinationSpec, String> {
        if destination.trim().is_empty() {
            return Err(
                "must not be empty: write a directory, file:///path or s3://bucket/prefix".into(),
            );
        }
        if destination.starts_with("s3://") {
            parse_s3_uri(destination).map_err(|e| e.to_string())?;
            return Ok(DestinationSpec::S3(destination.to_string()));
        }
        if let Some(path) = destination.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// needs a path, e.g. file:///var/lib/ferry/capture".into());
            }
            return Ok(DestinationSpec::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = destination.split_once("://") {
            return Err(format!(
                "unsupported scheme `{scheme}://`: write a directory, file:///path or s3://bucket/prefix"
            ));
        }
        Ok(DestinationSpec::Local(PathBuf::from(destination)))
    }

    /// Writes `bytes` as `key` so that no reader ever sees a partial file.
    async fn put(&self, key: &str, bytes: Arc<Vec<u8>>) -> Result<(), String> {
        match self {
            Destination::Local(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || {
                    write_local_atomic(&path, &bytes)
                        .map_err(|e| format!("{}: {e}", path.display()))
                })
                .await
                .map_err(|e| format!("the write task failed: {e}"))?
            }
            Destination::S3(store) => store.write(key, &bytes).await.map_err(|e| e.to_string()),
        }
    }
}

/// One encode job for the background encoder.
type EncodeJob = (
    Vec<CaptureRecord>,
    CaptureFormat,
    tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>,
);

/// Encodes on the process's capture encoder thread. Encoding a 1000-record batch takes
/// milliseconds of CPU; on a small machine a normal-priority thread doing it takes that time
/// from the requests being served (p99 grew 3-6x at 100% sampling). The encoder runs at a
/// lower OS priority so it only uses CPU the serving threads leave idle.
async fn encode_in_background(
    batch: Vec<CaptureRecord>,
    format: CaptureFormat,
) -> Result<Vec<u8>, String> {
    static ENCODER: std::sync::OnceLock<Option<crossbeam_channel::Sender<EncodeJob>>> =
        std::sync::OnceLock::new();
    let sender = ENCODER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<EncodeJob>();
        std::thread::Builder::new()
            .name("ferry-capture-encode".into())
            .spawn(move || {
                lower_this_threads_priority();
                for (batch, format, reply) in rx {
                    let _ = reply.send(encode(&batch, format));
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "Could not start the capture encoder thread; encoding on the blocking pool."))
            .ok()
            .map(|_| tx)
    });
    let Some(sender) = sender else {
        return tokio::task::spawn_blocking(move || encode(&batch, format))
            .await
            .unwrap_or_else(|e| Err(format!("the encoder failed: {e}")));
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    sender
        .send((batch, format, reply))
        .map_err(|_| "the capture encoder thread is gone".to_string())?;
    answer
        .await
        .unwrap_or_else(|_| Err("the capture encoder thread failed".into()))
}

fn encode(batch: &[CaptureRecord], format: CaptureFormat) -> Result<Vec<u8>, String> {
    match format {
        CaptureFormat::Jsonl => encode_jsonl(batch),
        CaptureFormat::Parquet => encode_parquet(batch),
    }
}

/// Nice 10 for the calling thread (on Linux `setpriority(PRIO_PROCESS, 0, ..)` applies to the
/// calling thread only). Raising niceness needs no privilege; a failure only costs latency.
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "Could not lower the capture encoder's priority.");
        }
    }
}

/// Temp file in the target directory, then rename. The temp name starts with `.` so dataset
/// readers (pyarrow, Spark) skip it if they list the directory mid-write.
fn write_local_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .expect("capture keys always have a directory. This is a bug.");
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .expect("capture keys always end in a file name. This is a bug.")
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Short random id of this process, part of every file name.
fn replica_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_string())
}

/// Per process, not per endpoint writer: an old and a new writer of the same endpoint (config
/// reload) may write in the same millisecond.
static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// The key of a batch file relative to the destination.
fn object_key(
    endpoint: &str,
    unix_ms: i64,
    replica: &str,
    seq: u64,
    format: CaptureFormat,
) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    // "YYYY-MM-DDTHH:MM:SSZ"
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    let (date, hour) = (&stamp[..10], &stamp[11..13]);
    format!(
        "{endpoint}/date={date}/hour={hour}/{unix_ms}-{replica}-{seq:06}.{}",
        format.extension()
    )
}

/// Milliseconds since the Unix epoch, for [`CaptureRecord::timestamp_ms`].
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One JSON object per line, the fields of [`CaptureRecord`].
pub fn encode_jsonl(records: &[CaptureRecord]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(records.len() * 256);
    for record in records {
        serde_json::to_writer(&mut out, record).map_err(|e| e.to_string())?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The Parquet schema of capture files. `input`, `features` and `output` hold JSON text
/// (null when the value is JSON null); `version` is int64.
pub fn parquet_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("shadow", DataType::Boolean, false),
        Field::new("input", DataType::Utf8, true),
        Field::new("features", DataType::Utf8, true),
        Field::new("output", DataType::Utf8, true),
    ]))
}

/// One snappy-compressed row group holding `records`.
pub fn encode_parquet(records: &[CaptureRecord]) -> Result<Vec<u8>, String> {
    let text = |f: fn(&CaptureRecord) -> &str| -> ArrayRef {
        Arc::new(records.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let json = |f: fn(&CaptureRecord) -> &serde_json::Value| -> ArrayRef {
        Arc::new(
            records
                .iter()
                .map(|r| match f(r) {
                    serde_json::Value::Null => None,
                    v => Some(v.to_string()),
                })
                .collect::<StringArray>(),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        text(|r| &r.request_id),
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| r.timestamp_ms),
        )),
        text(|r| &r.endpoint),
        text(|r| &r.variant),
        text(|r| &r.model),
        Arc::new(Int64Array::from_iter_values(
            records
                .iter()
                .map(|r| i64::try_from(r.version).unwrap_or(i64::MAX)),
        )),
        Arc::new(BooleanArray::from_iter(
            records.iter().map(|r| Some(r.shadow)),
        )),
        json(|r| &r.input),
        json(|r| &r.features),
        json(|r| &r.output),
    ];
    let batch = RecordBatch::try_new(parquet_schema(), columns).map_err(|e| e.to_string())?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(out)
}

enum Message {
    Records(Vec<CaptureRecord>),
    Shutdown,
}

/// Handle to one endpoint's capture; cheap to clone. The writer stops (after a last flush)
/// on [`Capture::shutdown`] or when every handle is dropped.
#[derive(Clone)]
pub struct Capture {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("endpoint", &self.shared.endpoint)
            .field("sample_percent", &self.shared.sample_percent)
            .finish_non_exhaustive()
    }
}

struct Shared {
    endpoint: String,
    sample_percent: f64,
    queue_capacity: usize,
    /// Records accepted and not yet written or given up on (shared with the writer).
    pending: Arc<AtomicUsize>,
    closed: AtomicBool,
    /// Set while requests are being dropped, so the warning is logged once per episode.
    dropping: AtomicBool,
    tx: mpsc::UnboundedSender<Message>,
    /// Set by shutdown: when writes still running must give up.
    give_up_at: watch::Sender<Option<Instant>>,
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    dropped: IntCounter,
    queued: IntGauge,
}

impl Capture {
    /// Validates `config`, opens the destination (S3 through the registry's client setup, so
    /// `endpoint`, path-style and the AWS environment work the same) and starts the writer
    /// task. Does not touch the destination: an unreachable one fails (and counts) writes
    /// later rather than the server start.
    pub async fn start(
        endpoint: &str,
        config: &CaptureConfig,
        s3: &S3Options,
        metrics: PipelineMetrics,
    ) -> Result<Capture, CaptureError> {
        let config_error = |message: String| CaptureError::Config {
            endpoint: endpoint.to_string(),
            message,
        };
        if endpoint.is_empty()
            || endpoint.contains(['/', '\\'])
            || endpoint.starts_with('.')
            || endpoint.contains("..")
        {
            return Err(config_error(
                "the endpoint name cannot be used as a directory name".into(),
            ));
        }
        config.validate("capture").map_err(config_error)?;
        let flush_interval = config.flush_interval().map_err(config_error)?;
        let destination = match Destination::parse(&config.destination).map_err(config_error)? {
            DestinationSpec::Local(root) => {
                let dir = root.join(endpoint);
                if let Err(e) = tokio::fs::create_dir_all(&dir).await {
                    tracing::warn!(
                        endpoint,
                        "Capture directory {} cannot be created ({e}); captured batches will fail until it can.",
                        dir.display()
                    );
                }
                Destination::Local(root)
            }
            DestinationSpec::S3(uri) => {
                Destination::S3(S3Store::connect(&uri, s3).await.map_err(|source| {
                    CaptureError::Store {
                        endpoint: endpoint.to_string(),
                        source,
                    }
                })?)
            }
        };
        let records = |outcome: &str| {
            metrics
                .capture_records
                .with_label_values(&[endpoint, outcome])
        };
        let queued = metrics.capture_queue.with_label_values(&[endpoint]);
        let pending = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let (give_up_tx, give_up_rx) = watch::channel(None);
        let writer = Writer {
            endpoint: endpoint.to_string(),
            format: config.format,
            max_batch_rows: config.max_batch_rows,
            flush_interval,
            destination,
            pending: pending.clone(),
            written: records("written"),
            failed: records("failed"),
            queued: queued.clone(),
            give_up_at: give_up_rx,
        };
        let handle = tokio::spawn(writer.run(rx));
        Ok(Capture {
            shared: Arc::new(Shared {
                endpoint: endpoint.to_string(),
                sample_percent: config.sample_percent,
                queue_capacity: config.queue_capacity,
                pending,
                closed: AtomicBool::new(false),
                dropping: AtomicBool::new(false),
                tx,
                give_up_at: give_up_tx,
                writer: tokio::sync::Mutex::new(Some(handle)),
                dropped: records("dropped"),
                queued,
            }),
        })
    }

    /// Whether to capture this request: a random draw against `sample_percent`.
    pub fn sample(&self) -> bool {
        let percent = self.shared.sample_percent;
        percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
    }

    /// Hands records to the writer. Never blocks and never fails: when the queue cannot take
    /// all of them (or capture is shut down) they are all dropped and counted.
    pub fn record(&self, records: Vec<CaptureRecord>) {
        let s = &*self.shared;
        let n = records.len();
        if n == 0 {
            return;
        }
        if s.closed.load(Ordering::Acquire) {
            s.dropped.inc_by(n as u64);
            return;
        }
        let before = s.pending.fetch_add(n, Ordering::AcqRel);
        if before + n > s.queue_capacity {
            s.pending.fetch_sub(n, Ordering::AcqRel);
            s.dropped.inc_by(n as u64);
            if !s.dropping.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    endpoint = %s.endpoint,
                    "Capture queue full ({} records waiting): dropping captured records until the writer catches up (counted in ferry_capture_records_total{{outcome=\"dropped\"}}).",
                    before
                );
            }
            return;
        }
        s.queued.add(n as i64);
        match s.tx.send(Message::Records(records)) {
            Ok(()) => {
                if s.dropping.load(Ordering::Relaxed) {
                    s.dropping.store(false, Ordering::Relaxed);
                }
            }
            Err(_) => {
                // The writer has stopped (shut down, or it panicked).
                s.pending.fetch_sub(n, Ordering::AcqRel);
                s.queued.sub(n as i64);
                s.dropped.inc_by(n as u64);
            }
        }
    }

    /// Writes everything accepted so far and stops the writer; returns after the last write
    /// (including its retries, 10 s at most in all). Later `record` calls drop and count.
    /// Idempotent.
    pub async fn shutdown(&self) {
        let s = &*self.shared;
        s.closed.store(true, Ordering::Release);
        s.give_up_at.send_if_modified(|at| {
            at.is_none()
                .then(|| *at = Some(Instant::now() + SHUTDOWN_WRITE_BUDGET))
                .is_some()
        });
        let _ = s.tx.send(Message::Shutdown);
        let mut writer = s.writer.lock().await;
        if let Some(handle) = writer.take()
            && let Err(e) = handle.await
        {
            tracing::error!(endpoint = %s.endpoint, "The capture writer failed: {e}");
        }
    }
}

/// The background task: batches, encodes and writes.
struct Writer {
    endpoint: String,
    format: CaptureFormat,
    max_batch_rows: usize,
    flush_interval: Duration,
    destination: Destination,
    pending: Arc<AtomicUsize>,
    written: IntCounter,
    failed: IntCounter,
    queued: IntGauge,
    /// Set on shutdown (also while a write is in flight): writes still running then are
    /// abandoned.
    give_up_at: watch::Receiver<Option<Instant>>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Message>) {
        let mut buffer: Vec<CaptureRecord> = Vec::new();
        // When the oldest buffered record must be written by.
        let mut deadline: Option<Instant> = None;
        loop {
            let message = match deadline {
                Some(at) => tokio::select! {
                    m = rx.recv() => m,
                    () = tokio::time::sleep_until(at) => {
                        self.write(std::mem::take(&mut buffer)).await;
                        deadline = None;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            match message {
                Some(Message::Records(records)) => {
                    if buffer.is_empty() {
                        deadline = Some(Instant::now() + self.flush_interval);
                    }
                    buffer.extend(records);
                    while buffer.len() >= self.max_batch_rows {
                        let rest = buffer.split_off(self.max_batch_rows);
                        let batch = std::mem::replace(&mut buffer, rest);
                        self.write(batch).await;
                        deadline =
                            (!buffer.is_empty()).then(|| Instant::now() + self.flush_interval);
                    }
                }
                Some(Message::Shutdown) => {
                    // No sends after this; take what is already queued.
                    rx.close();
                    while let Some(message) = rx.recv().await {
                        if let Message::Records(records) = message {
                            buffer.extend(records);
                        }
                    }
                    break;
                }
                None => break,
            }
        }
        while !buffer.is_empty() {
            let rest = buffer.split_off(self.max_batch_rows.min(buffer.len()));
            let batch = std::mem::replace(&mut buffer, rest);
            self.write(batch).await;
        }
    }

    /// Encodes and writes one batch, retrying with backoff; counts the outcome.
    async fn write(&self, batch: Vec<CaptureRecord>) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        let format = self.format;
        let encoded = encode_in_background(batch, format).await;
        let outcome = match encoded {
            Ok(bytes) => self.put_with_retries(Arc::new(bytes)).await,
            Err(e) => Err(format!("encoding {n} records as {format:?}: {e}")),
        };
        match outcome {
            Ok(()) => self.written.inc_by(n as u64),
            Err(e) => {
                tracing::warn!(
                    endpoint = %self.endpoint,
                    "Dropped {n} captured records: {e}"
                );
                self.failed.inc_by(n as u64);
            }
        }
        self.pending.fetch_sub(n, Ordering::AcqRel);
        self.queued.sub(n as i64);
    }

    /// Resolves when shutdown's write budget is spent; never before shutdown.
    async fn shutdown_deadline(&self) {
        let mut give_up_at = self.give_up_at.clone();
        loop {
            let at = *give_up_at.borrow_and_update();
            if let Some(at) = at {
                tokio::time::sleep_until(at).await;
                return;
            }
            if give_up_at.changed().await.is_err() {
                // Every handle is gone without a shutdown: keep trying as usual.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn put_with_retries(&self, bytes: Arc<Vec<u8>>) -> Result<(), String> {
        let key = object_key(
            &self.endpoint,
            now_ms(),
            replica_id(),
            FILE_SEQ.fetch_add(1, Ordering::Relaxed),
            self.format,
        );
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let result = tokio::select! {
                r = self.destination.put(&key, bytes.clone()) => r,
                () = self.shutdown_deadline() => Err("not written before the shutdown deadline".into()),
            };
            let out_of_time = self
                .give_up_at
                .borrow()
                .is_some_and(|at| Instant::now() + backoff >= at);
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= WRITE_ATTEMPTS || out_of_time => {
                    return Err(format!("writing {key} failed {attempt} times, last: {e}"));
                }
                Err(e) => {
                    tracing::debug!(endpoint = %self.endpoint, "Capture write attempt {attempt} of {key} failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> CaptureConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_apply_and_unknown_keys_are_rejected() {
        let c = config("{sample_percent: 10, destination: /tmp/x}");
        assert_eq!(c.format, CaptureFormat::Jsonl);
        assert_eq!(c.max_batch_rows, 1000);
        assert_eq!(c.flush_interval, "5s");
        assert_eq!(c.queue_capacity, 10_000);
        assert!(c.validate("capture").is_ok());
        let c = config("{sample_percent: 1, destination: s3://b-1/p, format: parquet}");
        assert_eq!(c.format, CaptureFormat::Parquet);
        let err = serde_yaml::from_str::<CaptureConfig>(
            "{sample_percent: 10, destination: /tmp/x, sample_pct: 3}",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sample_pct"), "{err}");
        let err = serde_yaml::from_str::<CaptureConfig>(
            "{sample_percent: 10, destination: /tmp/x, format: csv}",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("csv"), "{err}");
    }

    #[test]
    fn validation_messages_name_the_bad_key() {
        let base = config("{sample_percent: 10, destination: /tmp/x}");
        let p = "endpoints[0].capture";
        let check = |c: CaptureConfig, key: &str| {
            let err = c.validate(p).unwrap_err();
            assert!(err.starts_with(&format!("{p}.{key}")), "{key}: {err}");
        };
        for bad in [-0.5, 100.5, f64::NAN] {
            let err = CaptureConfig {
                sample_percent: bad,
                ..base.clone()
            }
            .validate(p)
            .unwrap_err();
            assert!(
                err.starts_with("endpoints[0].capture.sample_percent must be within 0..=100"),
                "{err}"
            );
        }
        for ok in [0.0, 100.0, 0.01] {
            assert!(
                CaptureConfig {
                    sample_percent: ok,
                    ..base.clone()
                }
                .validate(p)
                .is_ok()
            );
        }
        for bad in ["", "s3://B/x", "s3://ab", "gs://bucket/x", "file://"] {
            check(
                CaptureConfig {
                    destination: bad.into(),
                    ..base.clone()
                },
                "destination",
            );
        }
        for ok in [
            "relative/dir",
            "file:///var/x",
            "s3://bucket",
            "s3://bucket/a/b/",
        ] {
            assert!(
                CaptureConfig {
                    destination: ok.into(),
                    ..base.clone()
                }
                .validate(p)
                .is_ok(),
                "{ok}"
            );
        }
        check(
            CaptureConfig {
                max_batch_rows: 0,
                ..base.clone()
            },
            "max_batch_rows",
        );
        for bad in ["5", "soon", "0s"] {
            check(
                CaptureConfig {
                    flush_interval: bad.into(),
                    ..base.clone()
                },
                "flush_interval",
            );
        }
        check(
            CaptureConfig {
                max_batch_rows: 100,
                queue_capacity: 99,
                ..base.clone()
            },
            "queue_capacity",
        );
    }

    #[test]
    fn keys_partition_by_utc_date_and_hour() {
        // 1_700_000_000 s is 2023-11-14 22:13:20 UTC.
        assert_eq!(
            object_key(
                "churn",
                1_700_000_000_123,
                "ab12cd34",
                7,
                CaptureFormat::Parquet
            ),
            "churn/date=2023-11-14/hour=22/1700000000123-ab12cd34-000007.parquet"
        );
        // 2024-02-29 03:00:00 UTC = 1_709_175_600 s.
        assert_eq!(
            object_key("e", 1_709_175_600_000, "r", 0, CaptureFormat::Jsonl),
            "e/date=2024-02-29/hour=03/1709175600000-r-000000.jsonl"
        );
    }

    #[test]
    fn the_sample_rate_is_respected() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            for (percent, lo, hi) in [(0.0, 0, 0), (100.0, 20_000, 20_000), (25.0, 4_700, 5_300)] {
                let c = CaptureConfig {
                    sample_percent: percent,
                    ..config(&format!(
                        "{{sample_percent: 0, destination: '{}'}}",
                        dir.path().display()
                    ))
                };
                let capture =
                    Capture::start("e", &c, &S3Options::default(), PipelineMetrics::new())
                        .await
                        .unwrap();
                // Binomial(20000, 0.25): sd ~61, so +-300 is ~5 sd.
                let hits = (0..20_000).filter(|_| capture.sample()).count();
                assert!((lo..=hi).contains(&hits), "{percent}%: {hits}");
                capture.shutdown().await;
            }
        });
    }
}
