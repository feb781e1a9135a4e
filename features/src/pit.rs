//! Historical (point-in-time) retrieval: for each (entity, timestamp) row of an entities file,
//! the latest feature values at or before that timestamp, read from the offline files, with the
//! view's TTL applied exactly as at serving time (older values count as missing) and, unless
//! disabled, the same defaults. The training set a training job reads.
//!
//! Every column of the entities file passes through (labels included); one column per feature
//! is appended, named `view.feature`. The entities file is read twice in record batches: first
//! its join-key columns, to learn which entities it asks about, then whole for the join. Each
//! view's offline files (local or S3, one file at a time) are streamed and only the history of
//! those entities is held in memory while the export runs.

use crate::FeatureError;
use crate::offline::parquet::{DEFAULT_BATCH_ROWS, RowBatch, keys, timestamps};
use crate::offline::{OfflineSource, scan};
use crate::repo::{FeatureRef, FeatureRepo};
use crate::value::{FeatureType, FeatureValue};
use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use ferry_registry::S3Options;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// `view.feature` refs; empty = every feature of every view whose join key is a column of
    /// the entities file.
    pub features: Vec<String>,
    /// The entities file's timestamp column (Timestamp of any unit, or Int64 Unix ms).
    pub timestamp_column: String,
    /// Leave missing/stale values null instead of applying the features' defaults.
    pub no_defaults: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            features: Vec::new(),
            timestamp_column: "event_ts".into(),
            no_defaults: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportReport {
    pub rows: u64,
    pub features: Vec<String>,
    /// Values that were missing or stale at their row's timestamp.
    pub missing: u64,
}

/// One view's offline history, per entity sorted by event time.
struct History {
    rows: RowBatch,
    by_key: HashMap<String, Vec<usize>>,
}

impl History {
    fn new(rows: RowBatch) -> History {
        let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, k) in rows.keys.iter().enumerate() {
            by_key.entry(k.clone()).or_default().push(i);
        }
        for idx in by_key.values_mut() {
            // Stable: among equal event times the first row stays first (it is the one kept,
            // as in materialization).
            idx.sort_by_key(|&i| rows.ts_ms[i]);
        }
        History { rows, by_key }
    }

    /// The row in effect at `t`: the newest with event time <= t (the first of equal times).
    fn at(&self, key: &str, t: i64) -> Option<usize> {
        let idx = self.by_key.get(key)?;
        let n = idx.partition_point(|&i| self.rows.ts_ms[i] <= t);
        if n == 0 {
            return None;
        }
        let ts = self.rows.ts_ms[idx[n - 1]];
        let first = idx.partition_point(|&i| self.rows.ts_ms[i] < ts);
        Some(idx[first])
    }
}

/// Exports the point-in-time join of `entities` with the repo's features to `out`. `s3` are
/// the registry's S3 settings, used for views whose source is on S3.
pub async fn export(
    repo: &FeatureRepo,
    entities: &Path,
    out: &Path,
    options: &ExportOptions,
    s3: &S3Options,
) -> Result<ExportReport, FeatureError> {
    let blocking =
        |e: tokio::task::JoinError| FeatureError::Io(format!("the export task failed: {e}"));
    let (refs, wanted) = {
        let (repo, entities, options) = (repo.clone(), entities.to_path_buf(), options.clone());
        tokio::task::spawn_blocking(move || {
            let refs = plan(&repo, &entities, &options)?;
            // The export writes scalar columns keyed by one join key; Feast-only types and
            // compound keys are served online but not exported (yet).
            for r in &refs {
                let view = &repo.views[r.view];
                if view.is_compound() || repo.feature(*r).dtype.feast_only() {
                    return Err(FeatureError::UnknownFeature(format!(
                        "`{}` cannot be exported: the point-in-time export supports scalar features of views with one join key",
                        repo.ref_name(*r)
                    )));
                }
            }
            let wanted = entity_keys(&repo, &entities, &refs)?;
            Ok::<_, FeatureError>((refs, wanted))
        })
        .await
        .map_err(blocking)??
    };
    let mut histories: HashMap<usize, History> = HashMap::new();
    for (vi, keep) in wanted {
        let view = &repo.views[vi];
        let source = OfflineSource::open(view, s3).await?;
        let mut rows = RowBatch {
            values: vec![Vec::new(); view.features.len()],
            ..RowBatch::default()
        };
        scan(view, &source, DEFAULT_BATCH_ROWS, |batch| {
            append_kept(&mut rows, batch, &keep);
            Ok(())
        })
        .await?;
        histories.insert(vi, History::new(rows));
    }
    let (repo, entities, out, options) = (
        repo.clone(),
        entities.to_path_buf(),
        out.to_path_buf(),
        options.clone(),
    );
    tokio::task::spawn_blocking(move || join(&repo, &entities, &out, &options, &refs, &histories))
        .await
        .map_err(blocking)?
}

/// Appends the rows of `batch` whose key is in `keep`.
fn append_kept(all: &mut RowBatch, mut batch: RowBatch, keep: &HashSet<String>) {
    for row in 0..batch.keys.len() {
        if !keep.contains(&batch.keys[row]) {
            continue;
        }
        all.keys.push(std::mem::take(&mut batch.keys[row]));
        all.ts_ms.push(batch.ts_ms[row]);
        for (dst, src) in all.values.iter_mut().zip(batch.values.iter_mut()) {
            dst.push(src[row].take());
        }
    }
    all.skipped += batch.skipped;
}

fn open_entities(
    entities: &Path,
) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>, FeatureError> {
    let file =
        std::fs::File::open(entities).map_err(|e| FeatureError::offline(entities.display(), e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| FeatureError::offline(entities.display(), e))
}

/// The features to export, checked against the entities file's columns.
fn plan(
    repo: &FeatureRepo,
    entities: &Path,
    options: &ExportOptions,
) -> Result<Vec<FeatureRef>, FeatureError> {
    let in_schema = open_entities(entities)?.schema().clone();
    let has = |c: &str| in_schema.index_of(c).is_ok();
    if !has(&options.timestamp_column) {
        return Err(FeatureError::offline(
            entities.display(),
            format!(
                "has no timestamp column `{}` (pass --timestamp-column)",
                options.timestamp_column
            ),
        ));
    }
    let refs: Vec<FeatureRef> = if options.features.is_empty() {
        let mut all = Vec::new();
        for (vi, v) in repo.views.iter().enumerate() {
            if has(&v.entity.join_key) {
                all.extend((0..v.features.len()).map(|fi| FeatureRef {
                    view: vi,
                    feature: fi,
                }));
            }
        }
        all
    } else {
        options
            .features
            .iter()
            .map(|r| repo.resolve(r))
            .collect::<Result<_, _>>()?
    };
    if refs.is_empty() {
        return Err(FeatureError::offline(
            entities.display(),
            "no feature to export: the file has no join key column of any view",
        ));
    }
    for r in &refs {
        let view = &repo.views[r.view];
        if !has(&view.entity.join_key) {
            return Err(FeatureError::offline(
                entities.display(),
                format!(
                    "has no column `{}`, the join key of view `{}`",
                    view.entity.join_key, view.name
                ),
            ));
        }
    }
    Ok(refs)
}

/// Per view used by `refs`, the entity keys the entities file asks about (reading only the
/// join-key columns), so only their history is loaded.
fn entity_keys(
    repo: &FeatureRepo,
    entities: &Path,
    refs: &[FeatureRef],
) -> Result<HashMap<usize, HashSet<String>>, FeatureError> {
    let builder = open_entities(entities)?;
    let schema = builder.schema().clone();
    let mut by_column: HashMap<&str, Vec<usize>> = HashMap::new();
    for r in refs {
        let views = by_column
            .entry(repo.views[r.view].entity.join_key.as_str())
            .or_default();
        if !views.contains(&r.view) {
            views.push(r.view);
        }
    }
    let roots = by_column
        .keys()
        .filter_map(|c| schema.index_of(c).ok())
        .collect::<Vec<_>>();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(DEFAULT_BATCH_ROWS)
        .build()
        .map_err(|e| FeatureError::offline(entities.display(), e))?;
    let mut seen: HashMap<&str, HashSet<String>> = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| FeatureError::offline(entities.display(), e))?;
        for column in by_column.keys() {
            let col = batch.column_by_name(column).ok_or_else(|| {
                FeatureError::offline(entities.display(), format!("has no column `{column}`"))
            })?;
            let k = keys(col.as_ref()).map_err(|m| {
                FeatureError::offline(entities.display(), format!("column `{column}`: {m}"))
            })?;
            seen.entry(column)
                .or_default()
                .extend(k.into_iter().flatten());
        }
    }
    let mut out = HashMap::new();
    for (column, views) in by_column {
        let keys = seen.remove(column).unwrap_or_default();
        for vi in views {
            out.insert(vi, keys.clone());
        }
    }
    Ok(out)
}

/// The second pass: every entities row with its features as of its time, written to `out`.
fn join(
    repo: &FeatureRepo,
    entities: &Path,
    out: &Path,
    options: &ExportOptions,
    refs: &[FeatureRef],
    histories: &HashMap<usize, History>,
) -> Result<ExportReport, FeatureError> {
    let builder = open_entities(entities)?;
    let in_schema = builder.schema().clone();
    let names: Vec<String> = refs.iter().map(|r| repo.ref_name(*r)).collect();
    let mut fields: Vec<Arc<Field>> = in_schema.fields().iter().cloned().collect();
    for (r, name) in refs.iter().zip(&names) {
        fields.push(Arc::new(Field::new(
            name,
            arrow_type(repo.feature(*r).dtype),
            true,
        )));
    }
    let out_schema = Arc::new(Schema::new(fields));
    let out_file =
        std::fs::File::create(out).map_err(|e| FeatureError::offline(out.display(), e))?;
    let mut writer = ArrowWriter::try_new(out_file, out_schema.clone(), None)
        .map_err(|e| FeatureError::offline(out.display(), e))?;
    let mut report = ExportReport {
        features: names,
        ..ExportReport::default()
    };
    let reader = builder
        .with_batch_size(DEFAULT_BATCH_ROWS)
        .build()
        .map_err(|e| FeatureError::offline(entities.display(), e))?;
    for batch in reader {
        let batch = batch.map_err(|e| FeatureError::offline(entities.display(), e))?;
        let ts = timestamps(
            batch
                .column_by_name(&options.timestamp_column)
                .expect("the column exists: checked above. This is a bug.")
                .as_ref(),
        )
        .map_err(|m| {
            FeatureError::offline(
                entities.display(),
                format!("column `{}`: {m}", options.timestamp_column),
            )
        })?;
        let mut key_cache: HashMap<&str, Vec<Option<String>>> = HashMap::new();
        for r in refs {
            let jk = repo.views[r.view].entity.join_key.as_str();
            if let std::collections::hash_map::Entry::Vacant(slot) = key_cache.entry(jk) {
                let col = batch
                    .column_by_name(jk)
                    .expect("the column exists: checked above. This is a bug.");
                let k = keys(col.as_ref()).map_err(|m| {
                    FeatureError::offline(entities.display(), format!("column `{jk}`: {m}"))
                })?;
                slot.insert(k);
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for r in refs {
            let view = &repo.views[r.view];
            let feature = repo.feature(*r);
            let history = &histories[&r.view];
            let keys = &key_cache[view.entity.join_key.as_str()];
            let mut values = Vec::with_capacity(batch.num_rows());
            for row in 0..batch.num_rows() {
                let found = match (&keys[row], ts[row]) {
                    (Some(k), Some(t)) => history.at(k, t).and_then(|i| {
                        let fresh = view
                            .ttl
                            .is_none_or(|ttl| t - history.rows.ts_ms[i] <= ttl.as_millis() as i64);
                        if fresh {
                            history.rows.values[r.feature][i].clone()
                        } else {
                            None
                        }
                    }),
                    _ => None,
                };
                let value = match found {
                    Some(v) => Some(v),
                    None => {
                        report.missing += 1;
                        if options.no_defaults {
                            None
                        } else {
                            feature.default.clone()
                        }
                    }
                };
                values.push(value);
            }
            columns.push(build_array(feature.dtype, &values));
        }
        report.rows += batch.num_rows() as u64;
        let out_batch = RecordBatch::try_new(out_schema.clone(), columns)
            .map_err(|e| FeatureError::offline(out.display(), e))?;
        writer
            .write(&out_batch)
            .map_err(|e| FeatureError::offline(out.display(), e))?;
    }
    writer
        .close()
        .map_err(|e| FeatureError::offline(out.display(), e))?;
    Ok(report)
}

fn arrow_type(t: FeatureType) -> DataType {
    match t {
        FeatureType::Float32 => DataType::Float32,
        FeatureType::Float64 => DataType::Float64,
        FeatureType::Int32 => DataType::Int32,
        FeatureType::Int64 => DataType::Int64,
        FeatureType::Bool => DataType::Boolean,
        FeatureType::String => DataType::Utf8,
        // Refused by `export` before any column is built.
        FeatureType::Bytes | FeatureType::List(_) => DataType::Null,
    }
}

fn build_array(t: FeatureType, values: &[Option<FeatureValue>]) -> ArrayRef {
    macro_rules! build {
        ($builder:ty, $pat:pat => $v:expr) => {{
            let mut b = <$builder>::with_capacity(values.len());
            for v in values {
                match v {
                    Some($pat) => b.append_value($v),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match t {
        FeatureType::Float32 => build!(Float32Builder, FeatureValue::Float(x) => *x as f32),
        FeatureType::Float64 => build!(Float64Builder, FeatureValue::Float(x) => *x),
        FeatureType::Int32 => build!(Int32Builder, FeatureValue::Int(x) => *x as i32),
        FeatureType::Int64 => build!(Int64Builder, FeatureValue::Int(x) => *x),
        FeatureType::Bool => build!(BooleanBuilder, FeatureValue::Bool(x) => *x),
        FeatureType::String => {
            let mut b = StringBuilder::with_capacity(values.len(), values.len() * 8);
            for v in values {
                match v {
                    Some(FeatureValue::Str(s)) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }
        FeatureType::Bytes | FeatureType::List(_) => {
            Arc::new(arrow_array::NullArray::new(values.len())) as ArrayRef
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_asked_for_entities_history_is_kept() {
        let batch = RowBatch {
            keys: vec!["u1".into(), "u2".into(), "u1".into()],
            ts_ms: vec![1, 2, 3],
            values: vec![vec![
                Some(FeatureValue::Int(10)),
                Some(FeatureValue::Int(20)),
                None,
            ]],
            skipped: 1,
        };
        let mut all = RowBatch {
            values: vec![Vec::new()],
            ..RowBatch::default()
        };
        append_kept(&mut all, batch, &HashSet::from(["u1".to_string()]));
        assert_eq!(all.keys, ["u1", "u1"]);
        assert_eq!(all.ts_ms, [1, 3]);
        assert_eq!(all.values, vec![vec![Some(FeatureValue::Int(10)), None]]);
        assert_eq!(all.skipped, 1);
        let h = History::new(all);
        assert_eq!(h.at("u1", 2), Some(0));
        assert_eq!(h.at("u1", 3), Some(1));
        assert_eq!(h.at("u2", 3), None);
    }
}
