//! The job's stages run at the same time, over unit boundaries: a reader thread decodes the
//! next chunks, up to `inflight` chunks are being scored, a writer thread encodes the output
//! of earlier ones, and a commit task commits finished units. The job loop (`run_units`) sees
//! every result in read order, so each output keeps its input's order, and units are committed
//! one after another with the protocol of `lib.rs` (output, error file, marker).
//!
//! Engine calls stay at `chunk_rows` rows: reading 65,536 rows per call (ONNX Runtime's batch in
//! `loadtests/batch_bench.py`) made the churn job slower, not faster — 3× the page faults on
//! buffers too large for the allocator to reuse, 2.6× the peak RSS (loadtests/RESULTS.md).

use super::columns::PredictionColumns;
use super::read::{self, RowError};
use super::score::{self, Scored, ScoredColumns, ScoredRow};
use super::storage::{self, LocalInput, Location};
use super::write::{self, OutputFormat, OutputWriter};
use super::{
    BatchError, BatchOptions, JobColumns, Marker, Reporter, Summary, Unit, clean_temps,
    commit_file, fix_columns, now_ms, output_uri_of_input, temp_dir_for,
};
use arrow_array::ArrayRef;
use arrow_schema::SchemaRef;
use ferry_pipeline::{Pipeline, PredictError};
use ferry_registry::Store;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot};

/// What the reader passes on, in read order.
enum ReadEvent {
    Open {
        unit: usize,
        ids_schema: SchemaRef,
    },
    Chunk {
        unit: usize,
        chunk: read::Chunk,
    },
    /// Every chunk of the unit was sent.
    End {
        unit: usize,
    },
    /// The unit could not be (fully) read; nothing more of it follows.
    Failed {
        unit: usize,
        error: BatchError,
    },
}

/// What the reader needs, owned: it outlives no job but runs beside it.
struct ReadPlan {
    units: Vec<Unit>,
    store: Store,
    single_download: Option<Arc<LocalInput>>,
    scratch: PathBuf,
    chunk_rows: usize,
    id_columns: Option<Vec<String>>,
    /// Set by the job loop for a unit it gave up on: the reader skips the rest of it.
    cancelled: Arc<[AtomicBool]>,
}

/// Reads the units in order; each is downloaded (S3) only once the one before is read, so the
/// disk holds one input at a time, and read on a thread of its own, a bounded channel ahead.
async fn read_units(plan: ReadPlan, tx: mpsc::Sender<ReadEvent>) {
    let plan = Arc::new(plan);
    for unit in 0..plan.units.len() {
        if tx.is_closed() {
            return;
        }
        let local = match &plan.single_download {
            Some(l) => l.clone(),
            None => {
                match storage::fetch(&plan.store, &plan.units[unit].file, &plan.scratch).await {
                    Ok(l) => Arc::new(l),
                    Err(error) => {
                        if tx.send(ReadEvent::Failed { unit, error }).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let (done_tx, done_rx) = oneshot::channel::<bool>();
        let (p, t) = (plan.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name("ferry-batch-read".into())
            .spawn(move || {
                let go_on = read_unit(&p, unit, local.path(), &t);
                drop(local);
                let _ = done_tx.send(go_on);
            });
        let go_on = match spawned {
            Ok(_) => done_rx.await.unwrap_or(false),
            Err(e) => {
                let error = BatchError::Io {
                    path: plan.units[unit].file.key.clone().into(),
                    message: format!("could not start a reader thread: {e}"),
                };
                tx.send(ReadEvent::Failed { unit, error }).await.is_ok()
            }
        };
        if !go_on {
            return;
        }
    }
}

/// Sends one unit's events; false when the job stopped listening.
fn read_unit(plan: &ReadPlan, unit: usize, path: &Path, tx: &mpsc::Sender<ReadEvent>) -> bool {
    let u = &plan.units[unit];
    let reader = match read::open(
        path,
        u.file.format,
        u.row_group,
        plan.chunk_rows,
        plan.id_columns.as_deref(),
    ) {
        Ok(r) => r,
        Err(error) => return tx.blocking_send(ReadEvent::Failed { unit, error }).is_ok(),
    };
    let ids_schema = reader.ids_schema.clone();
    if tx
        .blocking_send(ReadEvent::Open { unit, ids_schema })
        .is_err()
    {
        return false;
    }
    for chunk in reader {
        if plan.cancelled[unit].load(Ordering::Relaxed) {
            return true;
        }
        let chunk = match chunk {
            Ok(c) => c,
            Err(error) => return tx.blocking_send(ReadEvent::Failed { unit, error }).is_ok(),
        };
        if tx.blocking_send(ReadEvent::Chunk { unit, chunk }).is_err() {
            return false;
        }
    }
    tx.blocking_send(ReadEvent::End { unit }).is_ok()
}

/// Work for the writer thread, in output order.
enum WriteCmd {
    Open {
        path: PathBuf,
        format: OutputFormat,
        ids_schema: SchemaRef,
    },
    Columns {
        ids: Vec<ArrayRef>,
        scored: ScoredColumns,
        known: PredictionColumns,
        at: i64,
    },
    Rows {
        ids: Vec<ArrayRef>,
        scored: Vec<Option<ScoredRow>>,
        known: PredictionColumns,
        at: i64,
    },
    Flush(oneshot::Sender<Result<(), BatchError>>),
    /// Ends the open file; the answer says whether it holds every row sent for it.
    Finish {
        known: Option<PredictionColumns>,
        done: oneshot::Sender<Result<(), BatchError>>,
    },
    /// Drops the open file.
    Abort,
}

/// The file being written, or the first error writing it (kept for `Finish` to report, since
/// the job loop does not wait for each write).
struct Open {
    path: PathBuf,
    writer: Result<OutputWriter, BatchError>,
}

fn write_units(mut rx: mpsc::Receiver<WriteCmd>) {
    let mut open: Option<Open> = None;
    let discard = |o: Open| {
        drop(o.writer);
        let _ = std::fs::remove_file(&o.path);
    };
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            WriteCmd::Open {
                path,
                format,
                ids_schema,
            } => {
                if let Some(o) = open.take() {
                    discard(o);
                }
                let writer = OutputWriter::create(&path, format, ids_schema);
                open = Some(Open { path, writer });
            }
            WriteCmd::Columns {
                ids,
                scored,
                known,
                at,
            } => {
                if let Some(o) = &mut open
                    && let Ok(w) = &mut o.writer
                    && let Err(e) = w.write_columns(&ids, &scored, &known, at)
                {
                    o.writer = Err(e);
                }
            }
            WriteCmd::Rows {
                ids,
                scored,
                known,
                at,
            } => {
                if let Some(o) = &mut open
                    && let Ok(w) = &mut o.writer
                    && let Err(e) = w.write(&ids, &scored, &known, at)
                {
                    o.writer = Err(e);
                }
            }
            WriteCmd::Flush(done) => {
                let r = match &mut open {
                    Some(Open { writer: Ok(w), .. }) => w.flush(),
                    _ => Ok(()),
                };
                let _ = done.send(r);
            }
            WriteCmd::Finish { known, done } => {
                let r = match open.take() {
                    Some(Open {
                        path,
                        writer: Ok(w),
                    }) => {
                        let r = w.finish(known.as_ref());
                        if r.is_err() {
                            let _ = std::fs::remove_file(&path);
                        }
                        r
                    }
                    Some(Open {
                        path,
                        writer: Err(e),
                    }) => {
                        let _ = std::fs::remove_file(&path);
                        Err(e)
                    }
                    None => Err(BatchError::Input(
                        "a unit was finished without being opened. This is a bug.".into(),
                    )),
                };
                let _ = done.send(r);
            }
            WriteCmd::Abort => {
                if let Some(o) = open.take() {
                    discard(o);
                }
            }
        }
    }
    // The job stopped mid-unit: nothing of it is committed.
    if let Some(o) = open {
        discard(o);
    }
}

/// A unit whose every chunk was sent to the writer, to commit once its file is finished.
struct CommitJob {
    unit: usize,
    marker: Marker,
    finished: oneshot::Receiver<Result<(), BatchError>>,
    out_tmp: PathBuf,
    err_tmp: PathBuf,
    out_rel: String,
    err_rel: String,
    errors: Vec<RowError>,
}

type Outcome = (usize, Result<Marker, BatchError>);

/// Commits units in the order they come: the output, then the error file (or the removal of
/// a stale one), then the marker. A crash before the marker leaves the unit to be redone,
/// overwriting both.
async fn commit_units(
    output: Location,
    mut rx: mpsc::Receiver<CommitJob>,
    outcomes: mpsc::UnboundedSender<Outcome>,
) {
    while let Some(job) = rx.recv().await {
        let unit = job.unit;
        let result = commit(&output, job).await;
        if outcomes.send((unit, result)).is_err() {
            return;
        }
    }
}

async fn commit(output: &Location, job: CommitJob) -> Result<Marker, BatchError> {
    let CommitJob {
        mut marker,
        finished,
        out_tmp,
        err_tmp,
        out_rel,
        err_rel,
        mut errors,
        ..
    } = job;
    finished.await.map_err(|_| {
        BatchError::Input("the writer thread stopped before the unit was finished".into())
    })??;
    errors.sort_by_key(|e| e.row);
    commit_file(output, &out_tmp, &out_rel).await?;
    marker.errors = if errors.is_empty() {
        output.store.delete(&output.join(&err_rel)).await?;
        None
    } else {
        write::write_errors(&err_tmp, &errors)?;
        commit_file(output, &err_tmp, &err_rel).await?;
        Some(output.uri_of(&output.join(&err_rel)))
    };
    marker.committed_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let bytes = serde_json::to_vec_pretty(&marker).map_err(|e| BatchError::Input(e.to_string()))?;
    output
        .store
        .write(
            &output.join(&format!("_markers/{}.json", marker.unit)),
            &bytes,
        )
        .await?;
    Ok(marker)
}

type ScoreResult = Result<Scored, PredictError>;

/// Read events waiting for their turn; chunks with their scoring task.
enum Pending {
    Open {
        unit: usize,
        ids_schema: SchemaRef,
    },
    Chunk {
        unit: usize,
        chunk: read::Chunk,
        task: tokio::task::JoinHandle<ScoreResult>,
    },
    End {
        unit: usize,
    },
    Failed {
        unit: usize,
        error: BatchError,
    },
}

/// The unit whose results are being written.
struct Current {
    unit: usize,
    name: String,
    ids_schema: SchemaRef,
    out_tmp: PathBuf,
    err_tmp: PathBuf,
    errors: Vec<RowError>,
    rows: u64,
    scored: u64,
    chunks_written: usize,
    stall: bool,
}

/// What the job loop borrows from `run`.
pub(crate) struct Job<'a> {
    pub options: &'a BatchOptions,
    pub pipeline: &'a Arc<Pipeline>,
    pub input_store: &'a Store,
    pub output: &'a Location,
    pub single_download: Option<Arc<LocalInput>>,
    pub scratch: &'a Path,
    pub reporter: &'a Reporter,
}

/// Per-unit bookkeeping of finished units (committed or failed).
struct Settled {
    /// Units handed to the commit task.
    handed: usize,
    /// Outcomes received back.
    received: usize,
    committed: usize,
}

/// Scores `units` and commits each; unit failures are counted in `summary`, a `Config` error
/// stops the job.
pub(crate) async fn run_units(
    job: Job<'_>,
    units: Vec<Unit>,
    columns: &mut JobColumns,
    summary: &mut Summary,
) -> Result<(), BatchError> {
    let options = job.options;
    let chunk_rows = options.chunk_rows.max(1);
    let columnar_output = options.format == OutputFormat::Parquet;
    let cancelled: Arc<[AtomicBool]> = units.iter().map(|_| AtomicBool::new(false)).collect();
    let (read_tx, mut read_rx) = mpsc::channel::<ReadEvent>(2);
    let reader = tokio::spawn(read_units(
        ReadPlan {
            units: units.clone(),
            store: job.input_store.clone(),
            single_download: job.single_download.clone(),
            scratch: job.scratch.to_path_buf(),
            chunk_rows,
            id_columns: options.id_columns.clone(),
            cancelled: cancelled.clone(),
        },
        read_tx,
    ));
    let (write_tx, write_rx) = mpsc::channel::<WriteCmd>(2);
    let writer = std::thread::Builder::new()
        .name("ferry-batch-write".into())
        .spawn(move || write_units(write_rx))
        .map_err(|e| BatchError::Io {
            path: job.output.uri.clone().into(),
            message: format!("could not start the writer thread: {e}"),
        })?;
    let (commit_tx, commit_rx) = mpsc::channel::<CommitJob>(2);
    let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel::<Outcome>();
    let committer = tokio::spawn(commit_units(job.output.clone(), commit_rx, outcome_tx));

    let mut settled = Settled {
        handed: 0,
        received: 0,
        committed: 0,
    };
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut scoring = 0usize;
    let mut reading = true;
    let mut current: Option<Current> = None;
    let result: Result<(), BatchError> = async {
        loop {
            // Keep `inflight` chunks being scored while earlier ones are written.
            while reading && scoring < options.inflight.max(1) {
                let Some(event) = read_rx.recv().await else {
                    reading = false;
                    break;
                };
                let item = match event {
                    ReadEvent::Open { unit, ids_schema } => Pending::Open { unit, ids_schema },
                    ReadEvent::End { unit } => Pending::End { unit },
                    ReadEvent::Failed { unit, error } => Pending::Failed { unit, error },
                    ReadEvent::Chunk { unit, .. } if cancelled[unit].load(Ordering::Relaxed) => {
                        continue;
                    }
                    ReadEvent::Chunk { unit, mut chunk } => {
                        let rows = match chunk.batch.take() {
                            Some(b) => score::Rows::Arrow(b),
                            None => score::Rows::Json(std::mem::take(&mut chunk.rows)),
                        };
                        // Known columns and a Parquet output: the chunk may stay columnar.
                        let columnar = columns.known.clone().filter(|_| columnar_output);
                        let task = tokio::spawn(score_chunk(
                            job.pipeline.clone(),
                            options.endpoint.clone(),
                            rows,
                            columnar,
                        ));
                        scoring += 1;
                        Pending::Chunk { unit, chunk, task }
                    }
                };
                pending.push_back(item);
            }
            let Some(item) = pending.pop_front() else {
                break;
            };
            match item {
                Pending::Open { unit, ids_schema } => {
                    let opened = open_unit(
                        &job,
                        &units,
                        unit,
                        ids_schema,
                        columns,
                        summary,
                        &mut settled,
                        &mut outcome_rx,
                        &write_tx,
                    )
                    .await;
                    match opened {
                        Ok(c) => current = Some(c),
                        Err(e) => {
                            fail_unit(&job, &units[unit], unit, e, &cancelled, summary, &write_tx)
                                .await?
                        }
                    }
                }
                Pending::Chunk { unit, chunk, task } => {
                    scoring -= 1;
                    if cancelled[unit].load(Ordering::Relaxed) {
                        task.abort();
                        continue;
                    }
                    let Some(cur) = current.as_mut().filter(|c| c.unit == unit) else {
                        task.abort();
                        continue;
                    };
                    let scored = match task.await {
                        Ok(Ok(s)) => Ok(s),
                        Ok(Err(e)) => Err(BatchError::Predict(e)),
                        Err(e) => Err(BatchError::Input(format!("a scoring task failed: {e}"))),
                    };
                    let written = match scored {
                        Ok(scored) => {
                            write_chunk(&job, cur, chunk, scored, columns, summary, &write_tx).await
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = written {
                        current = None;
                        fail_unit(&job, &units[unit], unit, e, &cancelled, summary, &write_tx)
                            .await?;
                    }
                }
                Pending::End { unit } => {
                    // A unit given up on has no current state left to commit.
                    let Some(cur) = current.take_if(|c| c.unit == unit) else {
                        continue;
                    };
                    let (done, finished) = oneshot::channel();
                    send(
                        &write_tx,
                        WriteCmd::Finish {
                            known: columns.known.clone(),
                            done,
                        },
                    )
                    .await?;
                    let u = &units[unit];
                    let out_rel = format!("{}.{}", u.name, options.format.extension());
                    let err_rel = format!("_errors/{}.jsonl", u.name);
                    let marker = Marker {
                        unit: u.name.clone(),
                        input: output_uri_of_input(job.input_store, &u.file.key),
                        row_group: u.row_group,
                        fingerprint: u.file.fingerprint(),
                        endpoint: options.endpoint.clone(),
                        output: job.output.uri_of(&job.output.join(&out_rel)),
                        errors: None,
                        rows: cur.rows,
                        scored: cur.scored,
                        failed: cur.rows - cur.scored,
                        shard: options.shard.to_string(),
                        committed_at: String::new(),
                    };
                    let commit = CommitJob {
                        unit,
                        marker,
                        finished,
                        out_tmp: cur.out_tmp,
                        err_tmp: cur.err_tmp,
                        out_rel,
                        err_rel,
                        errors: cur.errors,
                    };
                    if commit_tx.send(commit).await.is_err() {
                        return Err(BatchError::Input(
                            "the commit task stopped. This is a bug.".into(),
                        ));
                    }
                    settled.handed += 1;
                }
                Pending::Failed { unit, error } => {
                    if current.as_ref().is_some_and(|c| c.unit == unit) {
                        current = None;
                    }
                    fail_unit(
                        &job,
                        &units[unit],
                        unit,
                        error,
                        &cancelled,
                        summary,
                        &write_tx,
                    )
                    .await?;
                }
            }
            while let Ok(outcome) = outcome_rx.try_recv() {
                settle(&job, &units, outcome, summary, &mut settled);
            }
        }
        Ok(())
    }
    .await;

    // Stop reading and scoring (a no-op after a full run), then let the units already handed
    // over commit: a stopped job still commits every unit it finished.
    drop(read_rx);
    for item in pending {
        if let Pending::Chunk { task, .. } = item {
            task.abort();
        }
    }
    drop(write_tx);
    drop(commit_tx);
    let _ = committer.await;
    while let Some(outcome) = outcome_rx.recv().await {
        settle(&job, &units, outcome, summary, &mut settled);
    }
    reader.abort();
    let _ = reader.await;
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    result
}

/// Sends to the writer thread; it only stops when its channel closes, so a failure is a bug.
async fn send(tx: &mpsc::Sender<WriteCmd>, cmd: WriteCmd) -> Result<(), BatchError> {
    tx.send(cmd)
        .await
        .map_err(|_| BatchError::Input("the writer thread stopped. This is a bug.".into()))
}

/// Scores one chunk: column-wise where the endpoint and columns allow it, else by rows.
async fn score_chunk(
    pipeline: Arc<Pipeline>,
    endpoint: String,
    rows: score::Rows,
    columnar: Option<PredictionColumns>,
) -> ScoreResult {
    if chunk_is_empty(&rows) {
        return Ok(Scored::Rows(Vec::new(), Vec::new()));
    }
    if let (score::Rows::Arrow(batch), Some(known)) = (&rows, &columnar)
        && let Some(scored) = score::score_columns(&pipeline, &endpoint, batch, known).await?
    {
        return Ok(scored);
    }
    let (scored, failed) = score::score_isolating(&pipeline, &endpoint, rows).await?;
    Ok(Scored::Rows(scored, failed))
}

fn chunk_is_empty(rows: &score::Rows) -> bool {
    match rows {
        score::Rows::Json(r) => r.is_empty(),
        score::Rows::Arrow(b) => b.num_rows() == 0,
    }
}

/// Starts writing a unit: its temporary files, and (test hook) whether it stalls.
#[allow(clippy::too_many_arguments)]
async fn open_unit(
    job: &Job<'_>,
    units: &[Unit],
    unit: usize,
    ids_schema: SchemaRef,
    columns: &JobColumns,
    summary: &mut Summary,
    settled: &mut Settled,
    outcome_rx: &mut mpsc::UnboundedReceiver<Outcome>,
    write_tx: &mpsc::Sender<WriteCmd>,
) -> Result<Current, BatchError> {
    if let Some(known) = &columns.known {
        write::check_clashes(&ids_schema, known)?;
    }
    let u = &units[unit];
    let tmp_dir = temp_dir_for(job.output, job.scratch)?;
    clean_temps(&tmp_dir, &u.name);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let out_tmp = tmp_dir.join(format!("{}.{tag}.out.tmp", u.name));
    let err_tmp = tmp_dir.join(format!("{}.{tag}.errors.tmp", u.name));
    // The hook counts committed units, so the ones before must have settled.
    let stall = match job.options.stall_after_units {
        Some(after) => {
            while settled.received < settled.handed {
                let Some(outcome) = outcome_rx.recv().await else {
                    break;
                };
                settle(job, units, outcome, summary, settled);
            }
            settled.committed == after
        }
        None => false,
    };
    send(
        write_tx,
        WriteCmd::Open {
            path: out_tmp.clone(),
            format: job.options.format,
            ids_schema: ids_schema.clone(),
        },
    )
    .await?;
    Ok(Current {
        unit,
        name: u.name.clone(),
        ids_schema,
        out_tmp,
        err_tmp,
        errors: Vec::new(),
        rows: 0,
        scored: 0,
        chunks_written: 0,
        stall,
    })
}

/// Hands a scored chunk to the writer and counts it.
#[allow(clippy::too_many_arguments)]
async fn write_chunk(
    job: &Job<'_>,
    cur: &mut Current,
    chunk: read::Chunk,
    scored: Scored,
    columns: &mut JobColumns,
    summary: &mut Summary,
    write_tx: &mpsc::Sender<WriteCmd>,
) -> Result<(), BatchError> {
    let at = now_ms();
    let (n, failed) = match (scored, &columns.known) {
        (Scored::Columns(c), Some(known)) => {
            let n = c.versions.len();
            summary.rows_columnar += n as u64;
            let cmd = WriteCmd::Columns {
                ids: chunk.ids,
                scored: c,
                known: known.clone(),
                at,
            };
            send(write_tx, cmd).await?;
            (n, Vec::new())
        }
        (Scored::Columns(_), None) => {
            return Err(BatchError::Input(
                "a chunk was scored column-wise before the job's columns were known. This is a bug.".into(),
            ));
        }
        (Scored::Rows(scored, failed), _) => {
            if columns.known.is_none() {
                fix_columns(
                    columns,
                    &scored,
                    &cur.ids_schema,
                    job.output,
                    &job.options.endpoint,
                )
                .await?;
            }
            let n = match &columns.known {
                Some(_) => scored.iter().flatten().count(),
                None => 0,
            };
            if let (Some(known), true) = (&columns.known, n > 0) {
                let cmd = WriteCmd::Rows {
                    ids: chunk.ids,
                    scored,
                    known: known.clone(),
                    at,
                };
                send(write_tx, cmd).await?;
            }
            (n, failed)
        }
    };
    let read_n = (chunk.index.len() + chunk.bad.len()) as u64;
    cur.rows += read_n;
    cur.scored += n as u64;
    cur.errors.extend(chunk.bad);
    for f in failed {
        cur.errors.push(RowError {
            row: chunk.index[f.position],
            value: serde_json::Value::Object(f.row),
            reason: f.reason,
        });
    }
    summary.rows_read += read_n;
    summary.rows_scored += n as u64;
    summary.rows_failed += read_n - n as u64;
    job.reporter.rows(summary, &cur.name);
    cur.chunks_written += 1;
    if cur.stall && cur.chunks_written == 1 {
        let (done, flushed) = oneshot::channel();
        send(write_tx, WriteCmd::Flush(done)).await?;
        flushed
            .await
            .map_err(|_| BatchError::Input("the writer thread stopped".into()))??;
        tracing::warn!(unit = %cur.name, "Test hook: stalling mid-unit (FERRY_BATCH_TEST_STALL_AFTER_UNITS).");
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// Gives up on a unit: nothing of it is committed and a re-run retries it. A `Config` error is
/// the same in every unit, so it stops the job instead.
async fn fail_unit(
    job: &Job<'_>,
    u: &Unit,
    unit: usize,
    error: BatchError,
    cancelled: &[AtomicBool],
    summary: &mut Summary,
    write_tx: &mpsc::Sender<WriteCmd>,
) -> Result<(), BatchError> {
    if matches!(error, BatchError::Config(_)) {
        return Err(error);
    }
    if cancelled[unit].swap(true, Ordering::Relaxed) {
        return Ok(());
    }
    // Units reach the writer in order, so its open file (if any) is this unit's.
    send(write_tx, WriteCmd::Abort).await?;
    summary.units_failed += 1;
    tracing::error!(unit = %u.name, input = %u.file.key, error = %error, "Unit failed; nothing of it was committed (a re-run retries it).");
    job.reporter.unit_finished();
    Ok(())
}

/// Counts a unit the commit task is done with.
fn settle(
    job: &Job<'_>,
    units: &[Unit],
    (unit, result): Outcome,
    summary: &mut Summary,
    settled: &mut Settled,
) {
    settled.received += 1;
    let u = &units[unit];
    match result {
        Ok(marker) => {
            settled.committed += 1;
            summary.units_done += 1;
            summary.error_files.extend(marker.errors.clone());
            tracing::info!(
                unit = %u.name,
                rows = marker.rows,
                failed = marker.failed,
                output = %marker.output,
                "Unit committed."
            );
        }
        Err(e) => {
            summary.units_failed += 1;
            tracing::error!(unit = %u.name, input = %u.file.key, error = %e, "Unit failed; nothing of it was committed (a re-run retries it).");
        }
    }
    job.reporter.unit_finished();
}
