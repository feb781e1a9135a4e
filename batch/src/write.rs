//! Output files: the id columns of the scored rows, then one typed column per prediction field
//! (see `columns`), then `variant`, `model`, `version` and `scored_at`. Written to a local
//! temporary file, committed by the caller.

use super::BatchError;
use super::columns::PredictionColumns;
use super::read::RowError;
use super::score::{ScoredColumns, ScoredRow};
use arrow_array::builder::{StringBuilder, TimestampMillisecondBuilder, UInt64Builder};
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use ferry_pipeline::arrow_rows::array_value;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde_json::Value;
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

/// Columns batch adds after the id and prediction columns.
pub const META_COLUMNS: [&str; 4] = ["variant", "model", "version", "scored_at"];

/// Rows per output row group: the writer buffers one row group, so this bounds its memory.
pub const OUTPUT_ROW_GROUP_ROWS: usize = 131_072;

enum Sink {
    /// Opened at the first write: a postprocess endpoint's columns are known only then.
    Parquet(Option<(Box<ArrowWriter<File>>, SchemaRef)>),
    Jsonl(BufWriter<File>),
}

pub struct OutputWriter {
    sink: Sink,
    /// Kept until the Parquet writer opens.
    file: Option<File>,
    ids_schema: SchemaRef,
    path: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> BatchError {
    BatchError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Refuses prediction columns that clash with the id columns or with the columns batch adds.
pub fn check_clashes(ids_schema: &Schema, columns: &PredictionColumns) -> Result<(), BatchError> {
    for name in columns.names() {
        if META_COLUMNS.contains(&name) {
            return Err(BatchError::Config(format!(
                "the endpoint's prediction field `{name}` clashes with a column batch adds ({META_COLUMNS:?}); rename it with a `postprocess` step (`rename: {{{name}: ...}}`)"
            )));
        }
    }
    for f in ids_schema.fields() {
        if META_COLUMNS.contains(&f.name().as_str()) || columns.names().any(|n| n == f.name()) {
            return Err(BatchError::Config(format!(
                "input column `{}` clashes with an output column (prediction fields {:?}, then {META_COLUMNS:?}); leave it out with --id-columns",
                f.name(),
                columns.names().collect::<Vec<_>>()
            )));
        }
    }
    Ok(())
}

/// Appends one record batch of output columns, opening the writer (and fixing the file's
/// schema) on the first one.
fn append_parquet(
    slot: &mut Option<(Box<ArrowWriter<File>>, SchemaRef)>,
    file: &mut Option<File>,
    path: &Path,
    ids_schema: &Schema,
    columns: &PredictionColumns,
    all: Vec<ArrayRef>,
) -> Result<(), BatchError> {
    if slot.is_none() {
        let schema = output_schema(ids_schema, Some(columns));
        let opened = OutputWriter::open_parquet(path, file, schema.clone())?;
        *slot = Some((opened, schema));
    }
    let Some((writer, schema)) = slot else {
        return Err(io_err(path, "the Parquet writer did not open"));
    };
    let batch = RecordBatch::try_new(schema.clone(), all).map_err(|e| io_err(path, e))?;
    writer.write(&batch).map_err(|e| io_err(path, e))?;
    Ok(())
}

fn output_schema(ids_schema: &Schema, columns: Option<&PredictionColumns>) -> SchemaRef {
    let mut fields: Vec<Field> = ids_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(
        columns
            .iter()
            .flat_map(|c| c.columns.iter().map(|c| c.field())),
    );
    fields.push(Field::new("variant", DataType::Utf8, false));
    fields.push(Field::new("model", DataType::Utf8, false));
    fields.push(Field::new("version", DataType::UInt64, false));
    fields.push(Field::new(
        "scored_at",
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    ));
    Arc::new(Schema::new(fields))
}

impl OutputWriter {
    pub fn create(
        path: &Path,
        format: OutputFormat,
        ids_schema: SchemaRef,
    ) -> Result<OutputWriter, BatchError> {
        let file = File::create(path).map_err(|e| io_err(path, e))?;
        let (sink, file) = match format {
            OutputFormat::Parquet => (Sink::Parquet(None), Some(file)),
            OutputFormat::Jsonl => (Sink::Jsonl(BufWriter::new(file)), None),
        };
        Ok(OutputWriter {
            sink,
            file,
            ids_schema,
            path: path.to_path_buf(),
        })
    }

    fn open_parquet(
        path: &Path,
        file: &mut Option<File>,
        schema: SchemaRef,
    ) -> Result<Box<ArrowWriter<File>>, BatchError> {
        let file = file
            .take()
            .ok_or_else(|| io_err(path, "the Parquet writer was opened twice"))?;
        // Dictionary encoding pays for strings that repeat (variant, model, categorical ids);
        // for floats it interns a million distinct values per file for nothing (60% of the
        // writer's time in the batch profile), so it is on for string columns only.
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(OUTPUT_ROW_GROUP_ROWS))
            .set_dictionary_enabled(false);
        for field in schema.fields() {
            if matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8) {
                props = props
                    .set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), true);
            }
        }
        let props = props.build();
        Ok(Box::new(
            ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| io_err(path, e))?,
        ))
    }

    /// Appends the rows of a chunk that were scored: `ids` hold every row read, `scored` is
    /// aligned with them (`None` = failed). A prediction that does not fit `columns` is the
    /// deployment's fault (the model or postprocess changed its answer's shape) and fails the
    /// unit.
    pub fn write(
        &mut self,
        ids: &[ArrayRef],
        scored: &[Option<ScoredRow>],
        columns: &PredictionColumns,
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
        let predictions: Vec<&Value> = ok.iter().map(|s| &s.prediction).collect();
        let typed = columns.arrays(&predictions).map_err(|e| {
            BatchError::Input(format!(
                "a prediction does not fit the job's output columns: {e}"
            ))
        })?;
        match &mut self.sink {
            Sink::Parquet(w) => {
                let mut variant = StringBuilder::new();
                let mut model = StringBuilder::new();
                let mut version = UInt64Builder::with_capacity(ok.len());
                let mut at =
                    TimestampMillisecondBuilder::with_capacity(ok.len()).with_timezone("UTC");
                for s in &ok {
                    variant.append_value(&s.variant);
                    model.append_value(&s.model);
                    version.append_value(s.version);
                    at.append_value(scored_at_ms);
                }
                let mut all = ids;
                all.extend(typed);
                all.push(Arc::new(variant.finish()));
                all.push(Arc::new(model.finish()));
                all.push(Arc::new(version.finish()));
                all.push(Arc::new(at.finish()));
                append_parquet(
                    w,
                    &mut self.file,
                    &self.path,
                    &self.ids_schema,
                    columns,
                    all,
                )?;
            }
            Sink::Jsonl(w) => {
                let at = humantime::format_rfc3339_millis(
                    UNIX_EPOCH + Duration::from_millis(scored_at_ms.max(0) as u64),
                )
                .to_string();
                for (i, s) in ok.iter().enumerate() {
                    // Fields in the Parquet column order (a JSON map would sort them).
                    let mut row: Vec<(&str, Value)> =
                        Vec::with_capacity(ids.len() + typed.len() + 4);
                    for (f, a) in self.ids_schema.fields().iter().zip(&ids) {
                        let v = array_value(a.as_ref(), i).map_err(BatchError::Input)?;
                        row.push((f.name(), v));
                    }
                    // Read back from the typed arrays, so JSONL holds what Parquet would.
                    for (c, a) in columns.columns.iter().zip(&typed) {
                        let v = array_value(a.as_ref(), i).map_err(BatchError::Input)?;
                        row.push((&c.name, v));
                    }
                    row.push(("variant", s.variant.clone().into()));
                    row.push(("model", s.model.clone().into()));
                    row.push(("version", s.version.into()));
                    row.push(("scored_at", at.clone().into()));
                    write_object(&mut *w, &row).map_err(|e| io_err(&self.path, e))?;
                    w.write_all(b"\n").map_err(|e| io_err(&self.path, e))?;
                }
            }
        }
        Ok(ok.len())
    }

    /// Appends a chunk scored column-wise (every row of it scored): the id columns, the typed
    /// prediction columns as they are, then who scored each row. JSONL goes through `write`.
    pub fn write_columns(
        &mut self,
        ids: &[ArrayRef],
        scored: &ScoredColumns,
        columns: &PredictionColumns,
        scored_at_ms: i64,
    ) -> Result<usize, BatchError> {
        let n = scored.versions.len();
        let Sink::Parquet(w) = &mut self.sink else {
            return Err(io_err(
                &self.path,
                "column-wise chunks are written to Parquet only. This is a bug.",
            ));
        };
        let mut at = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        at.append_value_n(scored_at_ms, n);
        let mut all: Vec<ArrayRef> = ids.to_vec();
        all.extend(scored.predictions.iter().cloned());
        all.push(Arc::new(StringArray::from_iter_values(&scored.variants)));
        all.push(Arc::new(StringArray::from_iter_values(&scored.models)));
        all.push(Arc::new(UInt64Array::from(scored.versions.clone())));
        all.push(Arc::new(at.finish()));
        append_parquet(
            w,
            &mut self.file,
            &self.path,
            &self.ids_schema,
            columns,
            all,
        )?;
        Ok(n)
    }

    /// Whether `write_columns` can take this writer's chunks.
    pub fn takes_columns(&self) -> bool {
        matches!(self.sink, Sink::Parquet(_))
    }

    /// Pushes buffered rows to the file (used by the test hook that stalls mid-unit).
    pub fn flush(&mut self) -> Result<(), BatchError> {
        match &mut self.sink {
            Sink::Parquet(Some((w, _))) => w.flush().map_err(|e| io_err(&self.path, e)),
            Sink::Parquet(None) => Ok(()),
            Sink::Jsonl(w) => w.flush().map_err(|e| io_err(&self.path, e)),
        }
    }

    /// Finishes the file and syncs it to disk. A Parquet unit without a scored row gets the
    /// job's schema (`columns`), or no prediction columns when no row of the job was scored yet.
    pub fn finish(mut self, columns: Option<&PredictionColumns>) -> Result<(), BatchError> {
        let file = match self.sink {
            Sink::Parquet(w) => {
                let w = match w {
                    Some((w, _)) => w,
                    None => Self::open_parquet(
                        &self.path,
                        &mut self.file,
                        output_schema(&self.ids_schema, columns),
                    )?,
                };
                w.into_inner().map_err(|e| io_err(&self.path, e))?
            }
            Sink::Jsonl(w) => w.into_inner().map_err(|e| io_err(&self.path, e))?,
        };
        file.sync_all().map_err(|e| io_err(&self.path, e))
    }
}

/// One JSON object with its fields in the given order.
fn write_object(w: &mut impl Write, fields: &[(&str, Value)]) -> std::io::Result<()> {
    w.write_all(b"{")?;
    for (k, (name, value)) in fields.iter().enumerate() {
        if k > 0 {
            w.write_all(b",")?;
        }
        serde_json::to_writer(&mut *w, name)?;
        w.write_all(b":")?;
        serde_json::to_writer(&mut *w, value)?;
    }
    w.write_all(b"}")
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
