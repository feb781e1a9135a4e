//! Output files: the id columns of the scored rows, then `prediction`, `variant`, `model`,
//! `version` and `scored_at`. Written to a local temporary file, committed by the caller.

use super::BatchError;
use super::read::{RowError, array_value};
use super::score::ScoredRow;
use arrow_array::builder::{StringBuilder, TimestampMillisecondBuilder, UInt64Builder};
use arrow_array::{ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Parquet,
    Jsonl,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Jsonl => "jsonl",
        }
    }
}

/// Columns batch adds after the id columns.
pub const RESULT_COLUMNS: [&str; 5] = ["prediction", "variant", "model", "version", "scored_at"];

/// Rows per output row group: the writer buffers one row group, so this bounds its memory.
pub const OUTPUT_ROW_GROUP_ROWS: usize = 131_072;

enum Sink {
    Parquet(Box<ArrowWriter<File>>),
    Jsonl(BufWriter<File>),
}

pub struct OutputWriter {
    sink: Sink,
    schema: SchemaRef,
    ids_schema: SchemaRef,
    path: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> BatchError {
    BatchError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl OutputWriter {
    pub fn create(
        path: &Path,
        format: OutputFormat,
        ids_schema: SchemaRef,
    ) -> Result<OutputWriter, BatchError> {
        if let Some(clash) = ids_schema
            .fields()
            .iter()
            .find(|f| RESULT_COLUMNS.contains(&f.name().as_str()))
        {
            return Err(BatchError::Input(format!(
                "input column `{}` clashes with an output column ({RESULT_COLUMNS:?}); leave it out with --id-columns",
                clash.name()
            )));
        }
        let mut fields: Vec<Field> = ids_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("prediction", DataType::Utf8, false));
        fields.push(Field::new("variant", DataType::Utf8, false));
        fields.push(Field::new("model", DataType::Utf8, false));
        fields.push(Field::new("version", DataType::UInt64, false));
        fields.push(Field::new(
            "scored_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ));
        let schema = Arc::new(Schema::new(fields));
        let file = File::create(path).map_err(|e| io_err(path, e))?;
        let sink = match format {
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(OUTPUT_ROW_GROUP_ROWS))
                    .build();
                Sink::Parquet(Box::new(
                    ArrowWriter::try_new(file, schema.clone(), Some(props))
                        .map_err(|e| io_err(path, e))?,
                ))
            }
            OutputFormat::Jsonl => Sink::Jsonl(BufWriter::new(file)),
        };
        Ok(OutputWriter {
            sink,
            schema,
            ids_schema,
            path: path.to_path_buf(),
        })
    }

    /// Appends the rows of a chunk that were scored: `ids` hold every row read, `scored` is
    /// aligned with them (`None` = failed).
    pub fn write(
        &mut self,
        ids: &[ArrayRef],
        scored: &[Option<ScoredRow>],
        scored_at_ms: i64,
    ) -> Result<usize, BatchError> {
        let keep = BooleanArray::from(scored.iter().map(Option::is_some).collect::<Vec<_>>());
        let ids: Vec<ArrayRef> = ids
            .iter()
            .map(|a| arrow_select::filter::filter(a.as_ref(), &keep))
            .collect::<Result<_, _>>()
            .map_err(|e| io_err(&self.path, e))?;
        let ok: Vec<&ScoredRow> = scored.iter().flatten().collect();
        if ok.is_empty() {
            return Ok(0);
        }
        match &mut self.sink {
            Sink::Parquet(w) => {
                let mut prediction = StringBuilder::new();
                let mut variant = StringBuilder::new();
                let mut model = StringBuilder::new();
                let mut version = UInt64Builder::with_capacity(ok.len());
                let mut at =
                    TimestampMillisecondBuilder::with_capacity(ok.len()).with_timezone("UTC");
                for s in &ok {
                    prediction.append_value(s.prediction.to_string());
                    variant.append_value(&s.variant);
                    model.append_value(&s.model);
                    version.append_value(s.version);
                    at.append_value(scored_at_ms);
                }
                let mut columns = ids;
                columns.push(Arc::new(prediction.finish()));
                columns.push(Arc::new(variant.finish()));
                columns.push(Arc::new(model.finish()));
                columns.push(Arc::new(version.finish()));
                columns.push(Arc::new(at.finish()));
                let batch = RecordBatch::try_new(self.schema.clone(), columns)
                    .map_err(|e| io_err(&self.path, e))?;
                w.write(&batch).map_err(|e| io_err(&self.path, e))?;
            }
            Sink::Jsonl(w) => {
                let at = humantime::format_rfc3339_millis(
                    UNIX_EPOCH + Duration::from_millis(scored_at_ms.max(0) as u64),
                )
                .to_string();
                for (i, s) in ok.iter().enumerate() {
                    let mut row = Map::new();
                    for (f, a) in self.ids_schema.fields().iter().zip(&ids) {
                        let v = array_value(a.as_ref(), i).map_err(BatchError::Input)?;
                        row.insert(f.name().clone(), v);
                    }
                    row.insert("prediction".into(), s.prediction.clone());
                    row.insert("variant".into(), s.variant.clone().into());
                    row.insert("model".into(), s.model.clone().into());
                    row.insert("version".into(), s.version.into());
                    row.insert("scored_at".into(), at.clone().into());
                    serde_json::to_writer(&mut *w, &Value::Object(row))
                        .map_err(|e| io_err(&self.path, e))?;
                    w.write_all(b"\n").map_err(|e| io_err(&self.path, e))?;
                }
            }
        }
        Ok(ok.len())
    }

    /// Pushes buffered rows to the file (used by the test hook that stalls mid-unit).
    pub fn flush(&mut self) -> Result<(), BatchError> {
        match &mut self.sink {
            Sink::Parquet(w) => w.flush().map_err(|e| io_err(&self.path, e)),
            Sink::Jsonl(w) => w.flush().map_err(|e| io_err(&self.path, e)),
        }
    }

    /// Finishes the file and syncs it to disk.
    pub fn finish(self) -> Result<(), BatchError> {
        let file = match self.sink {
            Sink::Parquet(w) => w.into_inner().map_err(|e| io_err(&self.path, e))?,
            Sink::Jsonl(w) => w.into_inner().map_err(|e| io_err(&self.path, e))?,
        };
        file.sync_all().map_err(|e| io_err(&self.path, e))
    }
}

/// The error file of a unit: one JSON object per failed row with its index, the row and why.
pub fn write_errors(path: &Path, errors: &[RowError]) -> Result<(), BatchError> {
    let file = File::create(path).map_err(|e| io_err(path, e))?;
    let mut w = BufWriter::new(file);
    for e in errors {
        let line = serde_json::json!({"row": e.row, "reason": e.reason, "value": e.value});
        serde_json::to_writer(&mut w, &line).map_err(|e| io_err(path, e))?;
        w.write_all(b"\n").map_err(|e| io_err(path, e))?;
    }
    let file = w.into_inner().map_err(|e| io_err(path, e))?;
    file.sync_all().map_err(|e| io_err(path, e))
}
