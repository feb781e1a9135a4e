//! The column form of a chain's rows: one Arrow array per field, all of one length.
//!
//! Built-in steps rewrite whole columns here instead of row maps. A step that cannot give
//! exactly what its row form gives on some columns (nulls where the row form reports a row,
//! category matching, scripts) answers [`Applied::NeedsRows`], and the caller runs the whole
//! chain on rows instead: the frame path is an exact shortcut, never a second semantics.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use serde_json::Value;

/// Named columns of equal length, in order.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    rows: usize,
    columns: Vec<(String, ArrayRef)>,
}

impl Frame {
    /// A frame of `rows` rows and no columns yet.
    pub fn new(rows: usize) -> Frame {
        Frame {
            rows,
            columns: Vec::new(),
        }
    }

    pub fn from_batch(batch: &RecordBatch) -> Frame {
        Frame {
            rows: batch.num_rows(),
            columns: batch
                .schema()
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(f, c)| (f.name().clone(), c.clone()))
                .collect(),
        }
    }

    /// The frame as a record batch (every column nullable).
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|(n, c)| Field::new(n, c.data_type().clone(), true))
            .collect();
        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(self.rows));
        RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            self.columns.iter().map(|(_, c)| c.clone()).collect(),
            &options,
        )
    }

    pub fn num_rows(&self) -> usize {
        self.rows
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(n, _)| n.as_str())
    }

    pub fn column(&self, name: &str) -> Option<&ArrayRef> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Replaces the column of that name in place, or adds it last.
    ///
    /// # Panics
    /// When the column's length is not the frame's row count (a step's bug, not the data's).
    pub fn set(&mut self, name: &str, column: ArrayRef) {
        assert_eq!(
            column.len(),
            self.rows,
            "column `{name}` has the wrong length"
        );
        match self.columns.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => *c = column,
            None => self.columns.push((name.to_owned(), column)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<ArrayRef> {
        let i = self.columns.iter().position(|(n, _)| n == name)?;
        Some(self.columns.remove(i).1)
    }

    /// Keeps only `names`, in that order; false (frame unchanged) when one is missing.
    pub fn select(&mut self, names: &[String]) -> bool {
        let mut kept = Vec::with_capacity(names.len());
        for name in names {
            match self.column(name) {
                Some(c) => kept.push((name.clone(), c.clone())),
                None => return false,
            }
        }
        self.columns = kept;
        true
    }

    /// Renames columns all at once (so swaps work); false (frame unchanged) when a source is
    /// missing or a target would clash with a column that stays.
    pub fn rename(&mut self, pairs: &[(String, String)]) -> bool {
        if pairs.iter().any(|(old, _)| self.column(old).is_none()) {
            return false;
        }
        let renamed = |n: &str| pairs.iter().find(|(old, _)| old == n).map(|(_, new)| new);
        let clash = self
            .names()
            .any(|n| renamed(n).is_none() && pairs.iter().any(|(_, new)| new == n));
        if clash {
            return false;
        }
        for (name, _) in &mut self.columns {
            if let Some(new) = renamed(name) {
                *name = new.clone();
            }
        }
        true
    }

    /// The column's values as numbers the way the row form reads them (`util::number`): only
    /// when present, free of nulls and NaN/infinite values, and numeric. None otherwise.
    pub fn numbers(&self, name: &str) -> Option<Vec<f64>> {
        let column = self.column(name)?;
        if column.null_count() > 0 {
            return None;
        }
        let values = column_numbers(column.as_ref())?;
        values.iter().all(|x| x.is_finite()).then_some(values)
    }

    /// The column as a model matrix reads it: numbers as f64, booleans as 1/0, nulls (and
    /// NaN) as NaN. None for other types.
    pub fn matrix_values(&self, name: &str) -> Option<Vec<f64>> {
        let column = self.column(name)?;
        let mut values = match column.data_type() {
            DataType::Boolean => column
                .as_boolean()
                .values()
                .iter()
                .map(|b| f64::from(u8::from(b)))
                .collect(),
            _ => column_numbers(column.as_ref())?,
        };
        if column.null_count() > 0 {
            for (i, x) in values.iter_mut().enumerate() {
                if column.is_null(i) {
                    *x = f64::NAN;
                }
            }
        }
        Some(values)
    }

    /// Element `index` of each row of a list column of numbers (`util::indexed_number` with an
    /// index), under the same conditions as [`Frame::numbers`].
    pub fn element_numbers(&self, name: &str, index: usize) -> Option<Vec<f64>> {
        let column = self.column(name)?;
        if column.null_count() > 0 {
            return None;
        }
        let (values, starts) = match column.data_type() {
            DataType::FixedSizeList(_, k) => {
                let list = column.as_fixed_size_list();
                let k = usize::try_from(*k).ok()?;
                if index >= k {
                    return None;
                }
                let starts: Vec<usize> = (0..self.rows)
                    .map(|r| (list.offset() + r) * k + index)
                    .collect();
                (list.values().clone(), starts)
            }
            DataType::List(_) => {
                let list = column.as_list::<i32>();
                let offsets = list.value_offsets();
                let mut starts = Vec::with_capacity(self.rows);
                for w in offsets.windows(2) {
                    let (a, b) = (usize::try_from(w[0]).ok()?, usize::try_from(w[1]).ok()?);
                    if a + index >= b {
                        return None;
                    }
                    starts.push(a + index);
                }
                (list.values().clone(), starts)
            }
            _ => return None,
        };
        if values.null_count() > 0 {
            return None;
        }
        let all = column_numbers(values.as_ref())?;
        let picked: Vec<f64> = starts.iter().map(|&i| all[i]).collect();
        picked.iter().all(|x| x.is_finite()).then_some(picked)
    }
}

/// A numeric column's values as f64 (as JSON numbers read them); None for other types.
pub(crate) fn column_numbers(a: &dyn Array) -> Option<Vec<f64>> {
    macro_rules! prim {
        ($t:ty) => {
            a.as_primitive::<$t>()
                .values()
                .iter()
                .map(|&v| v as f64)
                .collect()
        };
    }
    Some(match a.data_type() {
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => a
            .as_primitive::<Float32Type>()
            .values()
            .iter()
            .map(|&v| f64::from(v))
            .collect(),
        DataType::Float64 => a.as_primitive::<Float64Type>().values().to_vec(),
        _ => return None,
    })
}

/// A column of `rows` copies of a JSON scalar, typed as the row form's JSON value reads back
/// (integers int64, other numbers float64, strings, booleans); None for other values.
pub(crate) fn constant(value: &Value, rows: usize) -> Option<ArrayRef> {
    Some(match value {
        Value::Number(n) if n.is_i64() => Arc::new(Int64Array::from(vec![n.as_i64()?; rows])),
        Value::Number(n) if n.is_u64() => return None,
        Value::Number(n) => Arc::new(Float64Array::from(vec![n.as_f64()?; rows])),
        Value::String(s) => Arc::new(StringArray::from(vec![s.as_str(); rows])),
        Value::Bool(b) => Arc::new(BooleanArray::from(vec![*b; rows])),
        _ => return None,
    })
}

/// One of two JSON scalars per row (`pick[i]` true: `yes`), typed as [`constant`]; None when
/// the two are not of one kind (the row form would give a column of mixed values).
pub(crate) fn either(pick: &[bool], no: &Value, yes: &Value) -> Option<ArrayRef> {
    Some(match (no, yes) {
        (Value::String(a), Value::String(b)) => Arc::new(StringArray::from_iter_values(
            pick.iter()
                .map(|&p| if p { b.as_str() } else { a.as_str() }),
        )),
        (Value::Bool(a), Value::Bool(b)) => Arc::new(BooleanArray::from(
            pick.iter()
                .map(|&p| if p { *b } else { *a })
                .collect::<Vec<_>>(),
        )),
        (Value::Number(a), Value::Number(b)) if a.is_i64() && b.is_i64() => {
            let (a, b) = (a.as_i64()?, b.as_i64()?);
            Arc::new(Int64Array::from_iter_values(
                pick.iter().map(|&p| if p { b } else { a }),
            ))
        }
        (Value::Number(a), Value::Number(b))
            if !a.is_i64() && !a.is_u64() && !b.is_i64() && !b.is_u64() =>
        {
            let (a, b) = (a.as_f64()?, b.as_f64()?);
            Arc::new(Float64Array::from_iter_values(
                pick.iter().map(|&p| if p { b } else { a }),
            ))
        }
        _ => return None,
    })
}
