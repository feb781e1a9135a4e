//! Materialization: offline Parquet → Redis. Writes the newest row per entity, never replaces
//! a newer value with an older one (`WRITE_IF_NEWER`, atomic per key), and skips files whose
//! (modification time, size) match the watermark stored in Redis, so unchanged data is not
//! reprocessed. Files are streamed as record batches of bounded size through a small channel:
//! memory is bounded by the batch size, not by the data.

use crate::FeatureError;
use crate::offline::parquet::{DEFAULT_BATCH_ROWS, OfflineFile, RowBatch, ViewReader, list_files};
use crate::online::redis::{RedisStore, WRITE_IF_NEWER};
use crate::repo::{FeatureRepo, View};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct MaterializeOptions {
    /// Re-read every file, ignoring the watermark (values are still only replaced by newer ones).
    pub full: bool,
    /// Rows per record batch (bounds memory).
    pub batch_rows: usize,
}

impl Default for MaterializeOptions {
    fn default() -> Self {
        MaterializeOptions {
            full: false,
            batch_rows: DEFAULT_BATCH_ROWS,
        }
    }
}

/// What one view's run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaterializeReport {
    pub view: String,
    pub files_total: usize,
    pub files_read: usize,
    /// Every row of the files read, skipped ones included.
    pub rows_read: u64,
    /// Rows with a null key or event time.
    pub rows_skipped: u64,
    /// Keys whose hash was (re)written.
    pub keys_written: u64,
    /// Keys left alone because Redis already held a row as new or newer.
    pub keys_not_newer: u64,
    pub seconds: f64,
}

impl MaterializeReport {
    pub fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows_read as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Progress callbacks (a terminal progress bar in the CLI; nothing in tests).
pub trait Progress: Send + Sync {
    /// `rows`: total rows in the files about to be read.
    fn start(&self, _view: &str, _rows: u64) {}
    fn advance(&self, _rows: u64) {}
    fn finish(&self) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

enum Msg {
    Batch(RowBatch),
    FileDone(OfflineFile),
}

/// Materializes one view into Redis.
pub async fn materialize_view(
    repo: &FeatureRepo,
    view: &View,
    store: &RedisStore,
    options: &MaterializeOptions,
    progress: &dyn Progress,
) -> Result<MaterializeReport, FeatureError> {
    let started = Instant::now();
    let mut conn = store.connection();
    let write_err = |e: redis::RedisError| FeatureError::Write(e.to_string());
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(WRITE_IF_NEWER)
        .query_async(&mut conn)
        .await
        .map_err(write_err)?;
    let watermark_key = repo.watermark_key(view);
    let seen: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&watermark_key)
        .query_async(&mut conn)
        .await
        .map_err(write_err)?;
    let files = list_files(view)?;
    let todo: Vec<OfflineFile> = files
        .iter()
        .filter(|f| options.full || seen.get(&f.path.display().to_string()) != Some(&f.stamp()))
        .cloned()
        .collect();
    let mut report = MaterializeReport {
        view: view.name.clone(),
        files_total: files.len(),
        files_read: todo.len(),
        ..MaterializeReport::default()
    };
    let total_rows = todo.iter().map(file_rows).sum();
    progress.start(&view.name, total_rows);

    // A reader thread decodes Parquet (blocking work) while this task writes to Redis; the
    // channel holds at most two batches.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Msg, FeatureError>>(2);
    let reader_view = view.clone();
    let batch_rows = options.batch_rows;
    let reader = std::thread::Builder::new()
        .name("ferry-materialize-reader".into())
        .spawn(move || {
            for file in todo {
                let opened = ViewReader::open(&reader_view, &file.path, batch_rows);
                let reader = match opened {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                for batch in reader {
                    let failed = batch.is_err();
                    if tx.blocking_send(batch.map(Msg::Batch)).is_err() || failed {
                        return;
                    }
                }
                if tx.blocking_send(Ok(Msg::FileDone(file))).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| FeatureError::Io(format!("could not start the reader thread: {e}")))?;

    while let Some(msg) = rx.recv().await {
        match msg? {
            Msg::Batch(batch) => {
                report.rows_read += (batch.len() + batch.skipped) as u64;
                report.rows_skipped += batch.skipped as u64;
                let (written, not_newer) = write_batch(repo, view, &batch, &sha, store).await?;
                report.keys_written += written;
                report.keys_not_newer += not_newer;
                progress.advance((batch.len() + batch.skipped) as u64);
            }
            Msg::FileDone(file) => {
                // Recorded only once every batch of the file is written: a crash re-reads it.
                redis::cmd("HSET")
                    .arg(&watermark_key)
                    .arg(file.path.display().to_string())
                    .arg(file.stamp())
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(write_err)?;
            }
        }
    }
    let _ = reader.join();
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn file_rows(file: &OfflineFile) -> u64 {
    std::fs::File::open(&file.path)
        .ok()
        .and_then(|f| parquet::file::reader::SerializedFileReader::new(f).ok())
        .map(|r| {
            use parquet::file::reader::FileReader;
            r.metadata().file_metadata().num_rows().max(0) as u64
        })
        .unwrap_or(0)
}

/// Writes the newest row per key of one batch, pipelined; returns (written, not newer).
async fn write_batch(
    repo: &FeatureRepo,
    view: &View,
    batch: &RowBatch,
    sha: &str,
    store: &RedisStore,
) -> Result<(u64, u64), FeatureError> {
    // Newest row per key within the batch (the first of equal event times), so each key is
    // sent once per batch.
    let mut newest: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    for (row, key) in batch.keys.iter().enumerate() {
        let ts = batch.ts_ms[row];
        newest
            .entry(key.as_str())
            .and_modify(|best| {
                if ts > batch.ts_ms[*best] {
                    *best = row;
                }
            })
            .or_insert(row);
    }
    if newest.is_empty() {
        return Ok((0, 0));
    }
    let mut rows: Vec<usize> = newest.into_values().collect();
    rows.sort_unstable();
    let mut pipe = redis::pipe();
    for &row in &rows {
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(1)
            .arg(repo.online_key(view, &batch.keys[row]))
            .arg(batch.ts_ms[row]);
        for (f, feature) in view.features.iter().enumerate() {
            if let Some(v) = &batch.values[f][row] {
                pipe.arg(&feature.name).arg(v.encode(feature.dtype));
            }
        }
    }
    let mut conn = store.connection();
    let results: Vec<i64> = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| FeatureError::Write(e.to_string()))?;
    let written = results.iter().filter(|&&r| r == 1).count() as u64;
    Ok((written, results.len() as u64 - written))
}
