//! Streaming reads of a view's offline Parquet files as `RowBatch`es of bounded size.

use crate::FeatureError;
use crate::repo::View;
use crate::value::{FeatureType, FeatureValue};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Rows per record batch: memory stays bounded by this, not by file size.
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// One offline file and what identifies its content for incremental runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineFile {
    pub path: PathBuf,
    /// Last modification time, Unix milliseconds.
    pub modified_ms: i64,
    pub size: u64,
}

impl OfflineFile {
    /// The watermark entry: changes whenever the file is rewritten or appended to.
    pub fn stamp(&self) -> String {
        format!("{}:{}", self.modified_ms, self.size)
    }
}

/// The `*.parquet` files of a view's source (a file, or a directory searched recursively),
/// sorted by path.
pub fn list_files(view: &View) -> Result<Vec<OfflineFile>, FeatureError> {
    let root = &view.source.resolved;
    if view.source.path.contains("://") && !view.source.path.starts_with("file://") {
        return Err(FeatureError::offline(
            &view.source.path,
            "only local sources are supported in this build (S3 sources need the S3 registry client); copy the files locally or use a path",
        ));
    }
    let mut out = Vec::new();
    let meta = std::fs::metadata(root).map_err(|e| FeatureError::offline(root.display(), e))?;
    if meta.is_file() {
        out.push(describe(root)?);
    } else {
        walk(root, &mut out)?;
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<OfflineFile>) -> Result<(), FeatureError> {
    let entries = std::fs::read_dir(dir).map_err(|e| FeatureError::offline(dir.display(), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| FeatureError::offline(dir.display(), e))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name.starts_with('_') {
            continue; // hidden and marker files (_SUCCESS, .crc) of Spark-style outputs
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if name.ends_with(".parquet") {
            out.push(describe(&path)?);
        }
    }
    Ok(())
}

fn describe(path: &Path) -> Result<OfflineFile, FeatureError> {
    let meta = std::fs::metadata(path).map_err(|e| FeatureError::offline(path.display(), e))?;
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(OfflineFile {
        path: path.to_path_buf(),
        modified_ms,
        size: meta.len(),
    })
}

/// Rows of one view, column-wise: `values[f][row]` is feature `f` of row `row`.
#[derive(Debug, Clone, Default)]
pub struct RowBatch {
    pub keys: Vec<String>,
    pub ts_ms: Vec<i64>,
    pub values: Vec<Vec<Option<FeatureValue>>>,
    /// Rows dropped because their key or event time was null.
    pub skipped: usize,
}

impl RowBatch {
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Reads one file of a view as `RowBatch`es.
pub struct ViewReader<'a> {
    view: &'a View,
    path: PathBuf,
    reader: ParquetRecordBatchReader,
}

impl<'a> ViewReader<'a> {
    pub fn open(
        view: &'a View,
        path: &Path,
        batch_rows: usize,
    ) -> Result<ViewReader<'a>, FeatureError> {
        let file =
            std::fs::File::open(path).map_err(|e| FeatureError::offline(path.display(), e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| FeatureError::offline(path.display(), e))?;
        let schema = builder.schema().clone();
        let mut wanted = vec![
            view.entity.join_key.as_str(),
            view.source.timestamp.as_str(),
        ];
        wanted.extend(view.features.iter().map(|f| f.name.as_str()));
        let mut roots = Vec::with_capacity(wanted.len());
        for name in &wanted {
            let index = schema.index_of(name).map_err(|_| {
                FeatureError::offline(
                    path.display(),
                    format!(
                        "has no column `{name}` (view `{}` needs {wanted:?}; the file has {:?})",
                        view.name,
                        schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                    ),
                )
            })?;
            roots.push(index);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| FeatureError::offline(path.display(), e))?;
        Ok(ViewReader {
            view,
            path: path.to_path_buf(),
            reader,
        })
    }

    fn convert(&self, batch: &RecordBatch) -> Result<RowBatch, FeatureError> {
        let err = |m: String| FeatureError::offline(self.path.display(), m);
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| err(format!("column `{name}` vanished from a record batch")))
        };
        let keys = keys(column(&self.view.entity.join_key)?.as_ref())
            .map_err(|m| err(format!("join key `{}`: {m}", self.view.entity.join_key)))?;
        let ts = timestamps(column(&self.view.source.timestamp)?.as_ref())
            .map_err(|m| err(format!("timestamp `{}`: {m}", self.view.source.timestamp)))?;
        let mut columns = Vec::with_capacity(self.view.features.len());
        for f in &self.view.features {
            columns.push(
                values(column(&f.name)?.as_ref(), f.dtype)
                    .map_err(|m| err(format!("feature `{}`: {m}", f.name)))?,
            );
        }
        let mut out = RowBatch {
            values: vec![Vec::with_capacity(batch.num_rows()); columns.len()],
            ..RowBatch::default()
        };
        for row in 0..batch.num_rows() {
            let (Some(key), Some(ts)) = (&keys[row], ts[row]) else {
                out.skipped += 1;
                continue;
            };
            out.keys.push(key.clone());
            out.ts_ms.push(ts);
            for (f, col) in columns.iter_mut().enumerate() {
                out.values[f].push(col[row].take());
            }
        }
        Ok(out)
    }
}

impl Iterator for ViewReader<'_> {
    type Item = Result<RowBatch, FeatureError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.reader.next()?;
        Some(
            batch
                .map_err(|e| FeatureError::offline(self.path.display(), e))
                .and_then(|b| self.convert(&b)),
        )
    }
}

/// Every row of every file of `view`, in one batch (for the in-process store and export).
pub fn read_all(view: &View) -> Result<RowBatch, FeatureError> {
    let mut all = RowBatch {
        values: vec![Vec::new(); view.features.len()],
        ..RowBatch::default()
    };
    for file in list_files(view)? {
        for batch in ViewReader::open(view, &file.path, DEFAULT_BATCH_ROWS)? {
            let mut batch = batch?;
            all.keys.append(&mut batch.keys);
            all.ts_ms.append(&mut batch.ts_ms);
            for (dst, src) in all.values.iter_mut().zip(batch.values.iter_mut()) {
                dst.append(src);
            }
            all.skipped += batch.skipped;
        }
    }
    Ok(all)
}

fn unsupported(dt: &DataType) -> String {
    format!("Arrow type {dt} is not supported here")
}

/// Join keys as strings (strings as-is, integers in decimal).
pub fn keys(a: &dyn Array) -> Result<Vec<Option<String>>, String> {
    let n = a.len();
    let get = |f: &dyn Fn(usize) -> String| -> Vec<Option<String>> {
        (0..n)
            .map(|i| if a.is_null(i) { None } else { Some(f(i)) })
            .collect()
    };
    Ok(match a.data_type() {
        DataType::Utf8 => get(&|i| a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => get(&|i| a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => get(&|i| a.as_string_view().value(i).to_string()),
        DataType::Int64 => get(&|i| a.as_primitive::<Int64Type>().value(i).to_string()),
        DataType::Int32 => get(&|i| a.as_primitive::<Int32Type>().value(i).to_string()),
        dt => return Err(unsupported(dt)),
    })
}

/// Event times as Unix milliseconds: Timestamp columns of any unit, or Int64 milliseconds.
pub fn timestamps(a: &dyn Array) -> Result<Vec<Option<i64>>, String> {
    let n = a.len();
    let get = |f: &dyn Fn(usize) -> i64| -> Vec<Option<i64>> {
        (0..n)
            .map(|i| if a.is_null(i) { None } else { Some(f(i)) })
            .collect()
    };
    Ok(match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            get(&|i| a.as_primitive::<TimestampSecondType>().value(i) * 1000)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            get(&|i| a.as_primitive::<TimestampMillisecondType>().value(i))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => get(&|i| {
            a.as_primitive::<TimestampMicrosecondType>()
                .value(i)
                .div_euclid(1000)
        }),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => get(&|i| {
            a.as_primitive::<TimestampNanosecondType>()
                .value(i)
                .div_euclid(1_000_000)
        }),
        DataType::Int64 => get(&|i| a.as_primitive::<Int64Type>().value(i)),
        dt => return Err(unsupported(dt)),
    })
}

/// Feature values of `dtype` (numeric columns widen; strings stay strings).
pub fn values(a: &dyn Array, dtype: FeatureType) -> Result<Vec<Option<FeatureValue>>, String> {
    let n = a.len();
    let get = |f: &dyn Fn(usize) -> FeatureValue| -> Vec<Option<FeatureValue>> {
        (0..n)
            .map(|i| if a.is_null(i) { None } else { Some(f(i)) })
            .collect()
    };
    macro_rules! int {
        ($t:ty) => {
            |i| a.as_primitive::<$t>().value(i) as i64
        };
    }
    let as_int: Option<&dyn Fn(usize) -> i64> = match a.data_type() {
        DataType::Int8 => Some(&int!(Int8Type)),
        DataType::Int16 => Some(&int!(Int16Type)),
        DataType::Int32 => Some(&int!(Int32Type)),
        DataType::Int64 => Some(&int!(Int64Type)),
        DataType::UInt8 => Some(&int!(UInt8Type)),
        DataType::UInt16 => Some(&int!(UInt16Type)),
        DataType::UInt32 => Some(&int!(UInt32Type)),
        DataType::UInt64 => Some(&int!(UInt64Type)),
        _ => None,
    };
    let dt = a.data_type();
    Ok(match dtype {
        FeatureType::Float32 | FeatureType::Float64 => match (dt, as_int) {
            (DataType::Float32, _) => {
                get(&|i| FeatureValue::Float(a.as_primitive::<Float32Type>().value(i) as f64))
            }
            (DataType::Float64, _) => {
                get(&|i| FeatureValue::Float(a.as_primitive::<Float64Type>().value(i)))
            }
            (_, Some(f)) => get(&|i| FeatureValue::Float(f(i) as f64)),
            _ => return Err(unsupported(dt)),
        },
        FeatureType::Int32 | FeatureType::Int64 => match as_int {
            Some(f) => get(&|i| FeatureValue::Int(f(i))),
            None => return Err(unsupported(dt)),
        },
        FeatureType::Bool => match dt {
            DataType::Boolean => get(&|i| FeatureValue::Bool(a.as_boolean().value(i))),
            _ => return Err(unsupported(dt)),
        },
        FeatureType::String => {
            let k = keys(a)?;
            k.into_iter().map(|s| s.map(FeatureValue::Str)).collect()
        }
    })
}
