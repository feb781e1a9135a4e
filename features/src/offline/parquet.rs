//! Streaming reads of a view's offline Parquet files as `RowBatch`es of bounded size.

use crate::FeatureError;
use crate::offline::source::FileLocation;
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
use std::path::Path;

/// Rows per record batch: memory stays bounded by this, not by file size.
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// One offline file and what identifies its content for incremental runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineFile {
    /// The local path or `s3://bucket/key`: the watermark's field and what messages name.
    pub uri: String,
    pub location: FileLocation,
    /// Last modification time, Unix milliseconds (S3: whole seconds).
    pub modified_ms: i64,
    pub size: u64,
    /// The S3 ETag; `None` for local files.
    pub etag: Option<String>,
}

impl OfflineFile {
    /// The watermark entry: changes whenever the file is rewritten or appended to. S3 objects
    /// are identified by ETag and size (last-modified has only second precision); local files
    /// by modification time and size.
    pub fn stamp(&self) -> String {
        match &self.etag {
            Some(etag) => format!("etag:{}:{}", etag.trim_matches('"'), self.size),
            None => format!("{}:{}", self.modified_ms, self.size),
        }
    }
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
    /// What messages name: the path, or the S3 URI of a downloaded object.
    name: String,
    rows: u64,
    reader: ParquetRecordBatchReader,
}

impl<'a> ViewReader<'a> {
    pub fn open(
        view: &'a View,
        path: &Path,
        batch_rows: usize,
    ) -> Result<ViewReader<'a>, FeatureError> {
        ViewReader::open_named(view, path, &path.display().to_string(), batch_rows)
    }

    /// Opens the local file `path`, naming it `name` in messages (a downloaded S3 object is
    /// named by its URI, not its temporary path).
    pub fn open_named(
        view: &'a View,
        path: &Path,
        name: &str,
        batch_rows: usize,
    ) -> Result<ViewReader<'a>, FeatureError> {
        let file = std::fs::File::open(path).map_err(|e| FeatureError::offline(name, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
            FeatureError::offline(name, format!("is not a readable Parquet file: {e}"))
        })?;
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let schema = builder.schema().clone();
        let mut wanted = view.join_keys();
        wanted.push(view.source.timestamp.as_str());
        wanted.extend(view.features.iter().map(|f| f.name.as_str()));
        let mut roots = Vec::with_capacity(wanted.len());
        for name in &wanted {
            let index = schema.index_of(name).map_err(|_| {
                FeatureError::offline(
                    name,
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
            .map_err(|e| FeatureError::offline(name, e))?;
        Ok(ViewReader {
            view,
            name: name.to_string(),
            rows,
            reader,
        })
    }

    /// Rows in the file (from its footer), skipped ones included.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn convert(&self, batch: &RecordBatch) -> Result<RowBatch, FeatureError> {
        let err = |m: String| FeatureError::offline(&self.name, m);
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| err(format!("column `{name}` vanished from a record batch")))
        };
        let mut parts = Vec::with_capacity(self.view.entities.len());
        for join_key in self.view.join_keys() {
            parts.push(
                keys(column(join_key)?.as_ref())
                    .map_err(|m| err(format!("join key `{join_key}`: {m}")))?,
            );
        }
        // A compound key's text is the JSON array of its values (`repo::compound_key`); a
        // row with any null key value has no key.
        let keys: Vec<Option<String>> = if parts.len() == 1 {
            parts.pop().unwrap_or_default()
        } else {
            (0..batch.num_rows())
                .map(|row| {
                    let values: Option<Vec<&str>> =
                        parts.iter().map(|p| p[row].as_deref()).collect();
                    values.map(|v| crate::repo::compound_key(&v))
                })
                .collect()
        };
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
                .map_err(|e| FeatureError::offline(&self.name, e))
                .and_then(|b| self.convert(&b)),
        )
    }
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
        FeatureType::Bytes => match dt {
            DataType::Binary => {
                get(&|i| FeatureValue::Bytes(a.as_binary::<i32>().value(i).to_vec()))
            }
            DataType::LargeBinary => {
                get(&|i| FeatureValue::Bytes(a.as_binary::<i64>().value(i).to_vec()))
            }
            DataType::BinaryView => {
                get(&|i| FeatureValue::Bytes(a.as_binary_view().value(i).to_vec()))
            }
            _ => {
                let k = keys(a)?;
                k.into_iter()
                    .map(|s| s.map(|s| FeatureValue::Bytes(s.into_bytes())))
                    .collect()
            }
        },
        FeatureType::List(elem) => {
            // Each row's elements are the child values of its list; a null element cannot be
            // stored in a Feast list, so a row holding one is treated as a null row.
            let item = |child: &dyn Array| -> Result<Option<FeatureValue>, String> {
                let items = values(child, elem.feature_type())?;
                Ok(items
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(FeatureValue::List))
            };
            let mut out = Vec::with_capacity(n);
            match dt {
                DataType::List(_) => {
                    let l = a.as_list::<i32>();
                    for i in 0..n {
                        out.push(if l.is_null(i) {
                            None
                        } else {
                            item(l.value(i).as_ref())?
                        });
                    }
                }
                DataType::LargeList(_) => {
                    let l = a.as_list::<i64>();
                    for i in 0..n {
                        out.push(if l.is_null(i) {
                            None
                        } else {
                            item(l.value(i).as_ref())?
                        });
                    }
                }
                _ => return Err(unsupported(dt)),
            }
            out
        }
    })
}
