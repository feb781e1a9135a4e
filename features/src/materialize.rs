//! Materialization: offline Parquet (local or S3) → Redis. Writes the newest row per entity,
//! never replaces a newer value with an older one (`WRITE_IF_NEWER`, atomic per key), and skips
//! files whose stamp (S3: ETag and size; local: modification time and size) matches the
//! watermark stored in Redis, so unchanged data is not reprocessed. The source is listed a page
//! at a time and each page checked against the watermark with one HMGET; files are read one at
//! a time (an S3 object is downloaded to a temporary file first) and streamed as record batches
//! of bounded size through a small channel: memory is bounded by the batch size and the listing
//! page, not by the data.

use crate::FeatureError;
use crate::feast;
use crate::offline::parquet::{DEFAULT_BATCH_ROWS, OfflineFile, RowBatch};
use crate::offline::{FileEvent, OfflineSource, spawn_reader};
use crate::online::RowKey;
use crate::online::redis::{RedisStore, WRITE_IF_NEWER, feast_key};
use crate::repo::{FeatureRepo, OnlineFormat, View};
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
    /// `online_format: feast` only: rows older than the view's TTL, not written (Feast's
    /// `materialize-incremental` loads only rows newer than now − ttl).
    pub rows_expired: u64,
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
    let feast = repo.online_format == OnlineFormat::Feast;
    // Feast's layout is written without a script (below); ferry's through WRITE_IF_NEWER.
    let sha: String = if feast {
        String::new()
    } else {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(WRITE_IF_NEWER)
            .query_async(&mut conn)
            .await
            .map_err(write_err)?
    };
    // Rows older than this are expired (Feast format only; `None` = no TTL).
    let expired_before = match (feast, view.ttl) {
        (true, Some(ttl)) => Some(crate::online::now_ms() - ttl.as_millis() as i64),
        _ => None,
    };
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
                        let (written, not_newer) = if feast {
                            let (w, n, expired) =
                                write_batch_feast(repo, view, &batch, expired_before, store)
                                    .await?;
                            report.rows_expired += expired;
                            (w, n)
                        } else {
                            write_batch(repo, view, &batch, &sha, store).await?
                        };
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

/// The newest row per key of a batch (the first of equal event times), in row order.
fn newest_rows(batch: &RowBatch) -> Vec<usize> {
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
    let mut rows: Vec<usize> = newest.into_values().collect();
    rows.sort_unstable();
    rows
}

/// Writes the newest row per key of one batch in Feast's layout, as Feast's Redis store does:
/// one pipeline reads every key's `_ts:<view>`, a second `HSET`s the rows that are strictly
/// newer (the `_ts` field and every feature, a null as an empty `Value`). The hash is never
/// deleted: all views of an entity share it. Returns (written, not newer, expired).
async fn write_batch_feast(
    repo: &FeatureRepo,
    view: &View,
    batch: &RowBatch,
    expired_before: Option<i64>,
    store: &RedisStore,
) -> Result<(u64, u64, u64), FeatureError> {
    let write_err = |e: redis::RedisError| FeatureError::Write(e.to_string());
    let mut expired = 0u64;
    let mut rows = Vec::new();
    let mut keys = Vec::new();
    for row in newest_rows(batch) {
        if expired_before.is_some_and(|t| batch.ts_ms[row] < t) {
            expired += 1;
            continue;
        }
        let row_key = RowKey {
            view: repo.view_index(&view.name)?,
            key: batch.keys[row].clone(),
        };
        let Some(key) = feast_key(repo, &row_key) else {
            return Err(FeatureError::offline(
                &view.name,
                format!(
                    "entity key {:?} does not fit the join keys {:?} and their dtypes",
                    batch.keys[row],
                    view.join_keys()
                ),
            ));
        };
        rows.push(row);
        keys.push(key);
    }
    if rows.is_empty() {
        return Ok((0, 0, expired));
    }
    let ts_field = feast::ts_field(&view.name);
    let fields: Vec<[u8; 4]> = view
        .features
        .iter()
        .map(|f| feast::feature_field(&view.name, &f.name))
        .collect();
    let mut conn = store.connection();
    let mut read = redis::pipe();
    for key in &keys {
        read.cmd("HGET").arg(key).arg(&ts_field);
    }
    let stored: Vec<Option<Vec<u8>>> = read.query_async(&mut conn).await.map_err(write_err)?;
    let mut write = redis::pipe();
    let mut written = 0u64;
    for ((row, key), stored) in rows.iter().zip(&keys).zip(stored) {
        let ts = batch.ts_ms[*row];
        // Feast compares in nanoseconds and skips equal times.
        let stored_nanos = stored
            .as_deref()
            .and_then(|raw| feast::decode_timestamp_nanos(raw).ok());
        if stored_nanos.is_some_and(|s| i128::from(ts) * 1_000_000 <= s) {
            continue;
        }
        written += 1;
        write
            .cmd("HSET")
            .arg(key)
            .arg(&ts_field)
            .arg(feast::encode_timestamp(ts));
        for (f, feature) in view.features.iter().enumerate() {
            write.arg(&fields[f][..]).arg(feast::encode_value(
                batch.values[f][*row].as_ref(),
                feature.dtype,
            ));
        }
        write.ignore();
    }
    if written > 0 {
        write
            .query_async::<()>(&mut conn)
            .await
            .map_err(write_err)?;
    }
    Ok((written, rows.len() as u64 - written, expired))
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
    let rows = newest_rows(batch);
    if rows.is_empty() {
        return Ok((0, 0));
    }
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
