//! Streaming readers: a unit (a file, or one row group of a Parquet file) as chunks of at most
//! `chunk_rows` rows. Each row becomes a JSON object exactly like an `instances` entry of
//! `POST /v1/endpoints/{e}/predict`, and the id columns are kept as Arrow arrays for the output.

use super::BatchError;
use super::storage::InputFormat;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use ferry_pipeline::arrow_rows::float;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

/// A row that could not even be read (a JSONL line that is not a JSON object).
#[derive(Debug, Clone)]
pub struct RowError {
    /// 0-based row index within the unit (the line number - 1 for CSV/JSONL data rows).
    pub row: u64,
    pub value: Value,
    pub reason: String,
}

/// Consecutive rows of a unit.
pub struct Chunk {
    /// Unit row index of each entry of `rows`.
    pub index: Vec<u64>,
    pub rows: Vec<Map<String, Value>>,
    /// Parquet: the record batch the rows come from; `rows` stays empty and the scoring task
    /// converts it (off the reader thread, and again per half when isolating bad rows).
    pub batch: Option<RecordBatch>,
    /// The id columns for `rows`, in `ids_schema` order.
    pub ids: Vec<ArrayRef>,
    pub bad: Vec<RowError>,
}

/// A unit opened for reading.
pub struct UnitReader {
    /// Schema of the id columns.
    pub ids_schema: SchemaRef,
    /// Rows in the unit when known up front (Parquet).
    pub rows_hint: Option<u64>,
    chunks: Box<dyn Iterator<Item = Result<Chunk, BatchError>> + Send>,
}

impl Iterator for UnitReader {
    type Item = Result<Chunk, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.chunks.next()
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> BatchError {
    BatchError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Number of row groups of a Parquet file.
pub fn parquet_row_groups(path: &Path) -> Result<Vec<u64>, BatchError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| io_err(path, e))?;
    Ok(builder
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows().max(0) as u64)
        .collect())
}

/// Picks the id columns: `wanted` (each must exist) or every column.
fn select_ids(
    available: &[(String, DataType)],
    wanted: Option<&[String]>,
    path: &Path,
) -> Result<Vec<usize>, BatchError> {
    match wanted {
        None => Ok((0..available.len()).collect()),
        Some(names) => names
            .iter()
            .map(|n| {
                available.iter().position(|(a, _)| a == n).ok_or_else(|| {
                    BatchError::Input(format!(
                        "{}: no id column `{n}`; columns: {:?}",
                        path.display(),
                        available.iter().map(|(a, _)| a).collect::<Vec<_>>()
                    ))
                })
            })
            .collect(),
    }
}

pub fn open(
    path: &Path,
    format: InputFormat,
    row_group: Option<usize>,
    chunk_rows: usize,
    id_columns: Option<&[String]>,
) -> Result<UnitReader, BatchError> {
    match format {
        InputFormat::Parquet => open_parquet(path, row_group, chunk_rows, id_columns),
        InputFormat::Csv | InputFormat::Jsonl => open_text(path, format, chunk_rows, id_columns),
    }
}

fn open_parquet(
    path: &Path,
    row_group: Option<usize>,
    chunk_rows: usize,
    id_columns: Option<&[String]>,
) -> Result<UnitReader, BatchError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| io_err(path, e))?;
    let rows_hint = match row_group {
        Some(rg) => builder.metadata().row_group(rg).num_rows() as u64,
        None => builder.metadata().file_metadata().num_rows() as u64,
    };
    if let Some(rg) = row_group {
        builder = builder.with_row_groups(vec![rg]);
    }
    let schema = builder.schema().clone();
    let available: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let picked = select_ids(&available, id_columns, path)?;
    let ids_schema = Arc::new(Schema::new(
        picked
            .iter()
            .map(|&i| Field::new(available[i].0.clone(), available[i].1.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let reader = builder
        .with_batch_size(chunk_rows)
        .build()
        .map_err(|e| io_err(path, e))?;
    let path = path.to_path_buf();
    let mut next_row = 0u64;
    let chunks = reader.map(move |batch| {
        let batch = batch.map_err(|e| io_err(&path, e))?;
        let first = next_row;
        next_row += batch.num_rows() as u64;
        Ok(Chunk {
            index: (first..next_row).collect(),
            rows: Vec::new(),
            ids: picked.iter().map(|&i| batch.column(i).clone()).collect(),
            batch: Some(batch),
            bad: Vec::new(),
        })
    });
    Ok(UnitReader {
        ids_schema,
        rows_hint: Some(rows_hint),
        chunks: Box::new(chunks),
    })
}

// ---------------------------------------------------------------------------------------------
// CSV and JSON Lines: rows are parsed straight to JSON; a first pass over the file infers one
// type per column so the id columns get a stable Arrow type for the whole unit.

/// Inferred column type of a text input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColType {
    /// Only nulls seen so far.
    Unknown,
    Int,
    Float,
    Bool,
    /// Strings, or values of mixed kinds (written as their JSON text).
    Text,
}

impl ColType {
    fn of(v: &Value) -> ColType {
        match v {
            Value::Null => ColType::Unknown,
            Value::Bool(_) => ColType::Bool,
            Value::Number(n) if n.is_i64() => ColType::Int,
            Value::Number(_) => ColType::Float,
            _ => ColType::Text,
        }
    }

    fn merge(self, other: ColType) -> ColType {
        use ColType::*;
        match (self, other) {
            (a, Unknown) => a,
            (Unknown, b) => b,
            (a, b) if a == b => a,
            (Int, Float) | (Float, Int) => Float,
            _ => Text,
        }
    }

    fn arrow(self) -> DataType {
        match self {
            ColType::Int => DataType::Int64,
            ColType::Float => DataType::Float64,
            ColType::Bool => DataType::Boolean,
            ColType::Unknown | ColType::Text => DataType::Utf8,
        }
    }
}

/// A CSV cell as JSON: empty is null, then integer, float, boolean, else the text.
fn csv_cell(s: &str) -> Value {
    if s.is_empty() {
        return Value::Null;
    }
    if let Ok(i) = s.parse::<i64>() {
        return i.into();
    }
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
        && s.bytes().any(|b| b.is_ascii_digit())
    {
        return float(f);
    }
    match s {
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => Value::String(s.to_string()),
    }
}

/// A CSV cell converted to its column's inferred type (so a column is one type in every row).
fn csv_typed(s: &str, t: ColType) -> Value {
    match t {
        ColType::Text | ColType::Unknown if !s.is_empty() => Value::String(s.to_string()),
        ColType::Float => match csv_cell(s) {
            Value::Number(n) => float(n.as_f64().unwrap_or(f64::NAN)),
            v => v,
        },
        _ => csv_cell(s),
    }
}

fn csv_reader(path: &Path) -> Result<csv::Reader<File>, BatchError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    Ok(csv::ReaderBuilder::new().flexible(true).from_reader(file))
}

/// Column names and inferred types of a text input (one pass, nothing kept but the types).
fn infer_text(path: &Path, format: InputFormat) -> Result<Vec<(String, ColType)>, BatchError> {
    let mut cols: Vec<(String, ColType)> = Vec::new();
    match format {
        InputFormat::Csv => {
            let mut r = csv_reader(path)?;
            let headers = r.headers().map_err(|e| io_err(path, e))?.clone();
            cols = headers
                .iter()
                .map(|h| (h.to_string(), ColType::Unknown))
                .collect();
            for rec in r.records() {
                let Ok(rec) = rec else { continue };
                for (c, cell) in cols.iter_mut().zip(rec.iter()) {
                    c.1 = c.1.merge(ColType::of(&csv_cell(cell)));
                }
            }
        }
        _ => {
            let file = File::open(path).map_err(|e| io_err(path, e))?;
            let mut index = std::collections::HashMap::new();
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|e| io_err(path, e))?;
                let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                for (k, v) in m {
                    let i = *index.entry(k.clone()).or_insert_with(|| {
                        cols.push((k, ColType::Unknown));
                        cols.len() - 1
                    });
                    cols[i].1 = cols[i].1.merge(ColType::of(&v));
                }
            }
        }
    }
    Ok(cols)
}

fn present<'a>(row: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    row.get(name).filter(|v| !v.is_null())
}

fn build_ids(rows: &[Map<String, Value>], cols: &[(String, ColType)]) -> Vec<ArrayRef> {
    cols.iter()
        .map(|(name, t)| -> ArrayRef {
            let get = |r| present(r, name);
            match t {
                ColType::Int => {
                    let mut b = Int64Builder::with_capacity(rows.len());
                    rows.iter()
                        .for_each(|r| b.append_option(get(r).and_then(Value::as_i64)));
                    Arc::new(b.finish())
                }
                ColType::Float => {
                    let mut b = Float64Builder::with_capacity(rows.len());
                    rows.iter()
                        .for_each(|r| b.append_option(get(r).and_then(Value::as_f64)));
                    Arc::new(b.finish())
                }
                ColType::Bool => {
                    let mut b = BooleanBuilder::with_capacity(rows.len());
                    rows.iter()
                        .for_each(|r| b.append_option(get(r).and_then(Value::as_bool)));
                    Arc::new(b.finish())
                }
                ColType::Text | ColType::Unknown => {
                    let mut b = StringBuilder::new();
                    for r in rows {
                        match get(r) {
                            Some(Value::String(s)) => b.append_value(s),
                            Some(v) => b.append_value(v.to_string()),
                            None => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
            }
        })
        .collect()
}

fn open_text(
    path: &Path,
    format: InputFormat,
    chunk_rows: usize,
    id_columns: Option<&[String]>,
) -> Result<UnitReader, BatchError> {
    let cols = infer_text(path, format)?;
    let available: Vec<(String, DataType)> =
        cols.iter().map(|(n, t)| (n.clone(), t.arrow())).collect();
    let picked = select_ids(&available, id_columns, path)?;
    let id_cols: Vec<(String, ColType)> = picked.iter().map(|&i| cols[i].clone()).collect();
    let ids_schema = Arc::new(Schema::new(
        id_cols
            .iter()
            .map(|(n, t)| Field::new(n.clone(), t.arrow(), true))
            .collect::<Vec<_>>(),
    ));
    // Each source yields (row index, parsed row or why not).
    type Parsed = Result<Map<String, Value>, (Value, String)>;
    let source: Box<dyn Iterator<Item = Result<Parsed, BatchError>> + Send> = match format {
        InputFormat::Csv => {
            let mut r = csv_reader(path)?;
            let headers = r.headers().map_err(|e| io_err(path, e))?.clone();
            let types: Vec<ColType> = cols.iter().map(|c| c.1).collect();
            let path = path.to_path_buf();
            Box::new(r.into_records().map(move |rec| {
                let rec = match rec {
                    Ok(rec) => rec,
                    Err(e) if e.is_io_error() => return Err(io_err(&path, e)),
                    Err(e) => return Ok(Err((Value::Null, format!("unreadable CSV record: {e}")))),
                };
                if rec.len() != headers.len() {
                    let raw: Vec<Value> = rec.iter().map(|c| Value::String(c.into())).collect();
                    return Ok(Err((
                        Value::Array(raw),
                        format!(
                            "the record has {} fields, the header {}",
                            rec.len(),
                            headers.len()
                        ),
                    )));
                }
                Ok(Ok(headers
                    .iter()
                    .zip(rec.iter())
                    .zip(&types)
                    .map(|((h, c), t)| (h.to_string(), csv_typed(c, *t)))
                    .collect()))
            }))
        }
        _ => {
            let file = File::open(path).map_err(|e| io_err(path, e))?;
            let path = path.to_path_buf();
            Box::new(
                BufReader::new(file)
                    .lines()
                    .filter(|l| !l.as_ref().is_ok_and(|l| l.trim().is_empty()))
                    .map(move |line| {
                        let line = line.map_err(|e| io_err(&path, e))?;
                        Ok(match serde_json::from_str::<Value>(&line) {
                            Ok(Value::Object(m)) => Ok(m),
                            Ok(v) => Err((v, "the line is not a JSON object".into())),
                            Err(e) => Err((Value::String(line), format!("invalid JSON: {e}"))),
                        })
                    }),
            )
        }
    };
    let mut source = source.enumerate();
    let chunks = std::iter::from_fn(move || {
        let mut chunk = Chunk {
            index: Vec::new(),
            rows: Vec::new(),
            batch: None,
            ids: Vec::new(),
            bad: Vec::new(),
        };
        let mut seen = 0;
        while seen < chunk_rows {
            let Some((i, item)) = source.next() else {
                break;
            };
            seen += 1;
            match item {
                Err(e) => return Some(Err(e)),
                Ok(Ok(row)) => {
                    chunk.index.push(i as u64);
                    chunk.rows.push(row);
                }
                Ok(Err((value, reason))) => chunk.bad.push(RowError {
                    row: i as u64,
                    value,
                    reason,
                }),
            }
        }
        if seen == 0 {
            return None;
        }
        chunk.ids = build_ids(&chunk.rows, &id_cols);
        Some(Ok(chunk))
    });
    Ok(UnitReader {
        ids_schema,
        rows_hint: None,
        chunks: Box::new(chunks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    #[test]
    fn csv_cells_and_column_types() {
        assert_eq!(csv_cell(""), Value::Null);
        assert_eq!(csv_cell("12"), Value::from(12));
        assert_eq!(csv_cell("1.5"), Value::from(1.5));
        assert_eq!(csv_cell("nan"), Value::from("nan"));
        assert_eq!(csv_cell("true"), Value::Bool(true));
        assert_eq!(csv_cell("u1"), Value::from("u1"));
        // A column with integers and floats is float in every row; with text, text.
        let t = ColType::Int.merge(ColType::Float);
        assert_eq!(t, ColType::Float);
        assert_eq!(csv_typed("3", t), Value::from(3.0));
        let t = ColType::Int.merge(ColType::Text);
        assert_eq!(csv_typed("3", t), Value::from("3"));
        assert_eq!(ColType::Unknown.merge(ColType::Bool), ColType::Bool);
    }

    #[test]
    fn text_inputs_stream_in_chunks_with_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.jsonl");
        std::fs::write(
            &p,
            "{\"id\": 1, \"x\": 1.5}\nnot json\n\n{\"id\": 2, \"x\": 2}\n[1]\n{\"id\": 3}\n",
        )
        .unwrap();
        let r = open_text(&p, InputFormat::Jsonl, 2, None).unwrap();
        assert_eq!(r.ids_schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(r.ids_schema.field(1).data_type(), &DataType::Float64);
        let chunks: Vec<Chunk> = r.map(|c| c.unwrap()).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].index, vec![0]);
        assert_eq!(chunks[0].bad[0].row, 1);
        assert!(chunks[0].bad[0].reason.contains("invalid JSON"));
        assert_eq!(chunks[1].index, vec![2]);
        assert_eq!(chunks[1].bad[0].row, 3);
        assert_eq!(chunks[2].index, vec![4]);
        assert_eq!(chunks[2].ids[1].null_count(), 1);
    }
}
