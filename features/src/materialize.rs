//! Materialization: offline Parquet (local or S3) → Redis. Writes the newest row per entity,
//! never replaces a newer value with an older one (`WRITE_IF_NEWER`, atomic per key), and skips
//! files whose stamp (S3: ETag and size; local: modification time and size) matches the
//! watermark stored in Redis, so unchanged data is not reprocessed. The source is listed a page
//! at a time and each page checked against the watermark with one HMGET; files are read one at
//! a time (an S3 object is downloaded to a temporary file first) and streamed as record batches
//! of bounded size through a small channel: memory is bounded by the batch size and the listing
//! page, not by the data.

use crate::FeatureError;
use crate::offline::parquet::{DEFAULT_BATCH_ROWS, OfflineFile, RowBatch};
use crate::offline::{FileEvent, OfflineSource, spawn_reader};
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
    /// A view's run starts; the total grows as files are opened (the listing is incremental).
    fn start(&self, _view: &str) {}
    /// A file of `rows` rows is about to be read.
    fn add_total(&self, _rows: u64) {}
    fn advance(&self, _rows: u64) {}
    fn finish(&self) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// Materializes one view into Redis from its opened `source`.
pub async fn materialize_view(
    repo: &FeatureRepo,
    view: &View,
    source: &OfflineSource,
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
    let mut report = MaterializeReport {
        view: view.name.clone(),
        ..MaterializeReport::default()
    };
    progress.start(&view.name);
    let mut files = source.files();
    while let Some(page) = files.next_page().await? {
        report.files_total += page.len();
        if page.is_empty() {
            continue;
        }
        let todo: Vec<OfflineFile> = if options.full {
            page
        } else {
            let uris: Vec<&str> = page.iter().map(|f| f.uri.as_str()).collect();
            let seen: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&watermark_key)
                .arg(&uris)
                .query_async(&mut conn)
                .await
                .map_err(write_err)?;
            page.into_iter()
                .zip(seen)
                .filter(|(f, seen)| seen.as_deref() != Some(f.stamp().as_str()))
                .map(|(f, _)| f)
                .collect()
        };
        for file in todo {
            let copy = source.fetch(&file).await?;
            let mut events = spawn_reader(
                view.clone(),
                copy,
                file.uri.clone(),
                options.batch_rows.max(1),
            );
            while let Some(event) = events.recv().await {
                match event? {
                    FileEvent::Opened { rows } => progress.add_total(rows),
                    FileEvent::Batch(batch) => {
                        let rows = (batch.len() + batch.skipped) as u64;
                        report.rows_read += rows;
                        report.rows_skipped += batch.skipped as u64;
                        let (written, not_newer) =
                            write_batch(repo, view, &batch, &sha, store).await?;
                        report.keys_written += written;
                        report.keys_not_newer += not_newer;
                        progress.advance(rows);
                    }
                }
            }
            // Recorded only once every batch of the file is written: a crash re-reads it.
            redis::cmd("HSET")
                .arg(&watermark_key)
                .arg(&file.uri)
                .arg(file.stamp())
                .query_async::<i64>(&mut conn)
                .await
                .map_err(write_err)?;
            report.files_read += 1;
            tracing::debug!(view = %view.name, file = %file.uri, stamp = %file.stamp(), "Materialized a file.");
        }
    }
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
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
