//! Arrow record batches as JSON rows: the row path's view of a columnar batch (batch files,
//! and the column-wise path's tests, which check both paths agree). Numbers, booleans and
//! strings stay themselves, lists become arrays, structs objects, timestamps RFC 3339 text.
//! And the way back for JSON requests ([`rows_to_batch`]), where it is exact.

use arrow_array::builder::{BooleanBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float64Array, Int64Array, RecordBatch};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use serde_json::{Map, Number, Value};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// JSON rows as columns, each value keeping what the row path reads in it: a column of
/// integers is int64, of numbers float64, of strings utf8, of booleans boolean, of arrays of
/// numbers all of one length a fixed-size list (of int64 or float64 as above); absent fields
/// and nulls are nulls. None where that is not exact — mixed kinds, objects, nested or ragged
/// arrays, integers beyond i64, a column of nulls only, or integers and fractions mixed in a
/// column of `exact` (a sticky key hashes `3` and `3.0` differently) — and the row path takes
/// the rows as they are.
pub fn rows_to_batch(rows: &[Map<String, Value>], exact: &[&str]) -> Option<RecordBatch> {
    let mut names: Vec<&str> = Vec::new();
    for row in rows {
        for k in row.keys() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    let mut columns: Vec<(&str, ArrayRef)> = Vec::with_capacity(names.len());
    for name in names {
        let values: Vec<Option<&Value>> = rows
            .iter()
            .map(|r| r.get(name).filter(|v| !v.is_null()))
            .collect();
        columns.push((name, json_column(&values, exact.contains(&name))?));
    }
    let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
        .collect();
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, c)| c).collect(),
        &options,
    )
    .ok()
}

/// One column of [`rows_to_batch`].
fn json_column(values: &[Option<&Value>], exact: bool) -> Option<ArrayRef> {
    let first = values.iter().flatten().next()?;
    Some(match first {
        Value::Number(_) => numbers_column(values, exact)?,
        Value::String(_) => {
            let mut b = StringBuilder::with_capacity(values.len(), values.len() * 8);
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(Value::String(s)) => b.append_value(s),
                    Some(_) => return None,
                }
            }
            Arc::new(b.finish())
        }
        Value::Bool(_) => {
            let mut b = BooleanBuilder::with_capacity(values.len());
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(Value::Bool(x)) => b.append_value(*x),
                    Some(_) => return None,
                }
            }
            Arc::new(b.finish())
        }
        Value::Array(items) => {
            let k = items.len();
            let mut flat: Vec<Option<&Value>> = Vec::with_capacity(values.len() * k);
            let mut valid = Vec::with_capacity(values.len());
            for v in values {
                match v {
                    None => {
                        flat.extend(std::iter::repeat_n(None, k));
                        valid.push(false);
                    }
                    Some(Value::Array(items)) if items.len() == k => {
                        if !items.iter().all(Value::is_number) {
                            return None;
                        }
                        flat.extend(items.iter().map(Some));
                        valid.push(true);
                    }
                    Some(_) => return None,
                }
            }
            if k == 0 {
                return None;
            }
            let child = numbers_column(&flat, false)?;
            let field = Arc::new(Field::new("item", child.data_type().clone(), true));
            Arc::new(
                FixedSizeListArray::try_new(
                    field,
                    i32::try_from(k).ok()?,
                    child,
                    Some(NullBuffer::from(valid)),
                )
                .ok()?,
            )
        }
        _ => return None,
    })
}

/// Numbers as int64 when all are integers within i64, else float64 (not for `exact` columns
/// that mix both).
fn numbers_column(values: &[Option<&Value>], exact: bool) -> Option<ArrayRef> {
    let mut ints = true;
    for v in values.iter().flatten() {
        let Value::Number(n) = v else {
            return None;
        };
        if !n.is_i64() {
            if n.is_u64() {
                return None;
            }
            ints = false;
        }
    }
    if ints {
        return Some(Arc::new(
            values
                .iter()
                .map(|v| v.and_then(Value::as_i64))
                .collect::<Int64Array>(),
        ));
    }
    if exact && values.iter().flatten().any(|v| v.is_i64()) {
        return None;
    }
    Some(Arc::new(
        values
            .iter()
            .map(|v| v.and_then(Value::as_f64))
            .collect::<Float64Array>(),
    ))
}

/// Rows of a record batch as JSON objects keyed by column name.
pub fn batch_to_rows(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, String> {
    let schema = batch.schema();
    let mut rows: Vec<Map<String, Value>> = (0..batch.num_rows())
        .map(|_| Map::with_capacity(schema.fields().len()))
        .collect();
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let values = column_values(column.as_ref())
            .map_err(|e| format!("column `{}`: {e}", field.name()))?;
        for (row, v) in rows.iter_mut().zip(values) {
            row.insert(field.name().clone(), v);
        }
    }
    Ok(rows)
}

/// A whole column as JSON values. Numeric columns and lists of numbers (feature vectors) take a
/// direct path: `array_value` on a list slices a child array per row, which dominated the cost.
fn column_values(a: &dyn Array) -> Result<Vec<Value>, String> {
    fn prim<T: ArrowPrimitiveType>(a: &dyn Array, f: impl Fn(T::Native) -> Value) -> Vec<Value> {
        let p = a.as_primitive::<T>();
        (0..p.len())
            .map(|i| {
                if p.is_null(i) {
                    Value::Null
                } else {
                    f(p.value(i))
                }
            })
            .collect()
    }
    /// Rows of a list column whose child is numeric: `offsets[i]..offsets[i+1]` per row.
    fn lists(a: &dyn Array, child: &dyn Array, offsets: &[usize]) -> Option<Vec<Value>> {
        // A sliced list array keeps its parent's whole values array: convert only the values
        // its rows use (batch's bad-row bisection converts ever smaller slices of one chunk,
        // which was quadratic in the chunk's size).
        let first = offsets.first().copied().unwrap_or(0);
        let last = offsets.last().copied().unwrap_or(first);
        let used = child.slice(first, last.checked_sub(first)?);
        let leaf: Vec<Value> = match child.data_type() {
            DataType::Float32 | DataType::Float64 | DataType::Int64 | DataType::Int32 => {
                column_values(used.as_ref()).ok()?
            }
            _ => return None,
        };
        let mut leaf = leaf.into_iter();
        let mut out = Vec::with_capacity(a.len());
        let mut pos = first;
        for i in 0..a.len() {
            let end = offsets[i + 1];
            let items: Vec<Value> = leaf.by_ref().take(end - pos).collect();
            pos = end;
            out.push(if a.is_null(i) {
                Value::Null
            } else {
                Value::Array(items)
            });
        }
        Some(out)
    }
    let fast = match a.data_type() {
        DataType::Float32 => Some(prim::<Float32Type>(a, |x| float(x as f64))),
        DataType::Float64 => Some(prim::<Float64Type>(a, float)),
        DataType::Int32 => Some(prim::<Int32Type>(a, Value::from)),
        DataType::Int64 => Some(prim::<Int64Type>(a, Value::from)),
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let offsets: Vec<usize> = l.value_offsets().iter().map(|&o| o as usize).collect();
            lists(a, l.values().as_ref(), &offsets)
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let offsets: Vec<usize> = l.value_offsets().iter().map(|&o| o as usize).collect();
            lists(a, l.values().as_ref(), &offsets)
        }
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            let n = *n as usize;
            let base = l.offset() * n;
            let offsets: Vec<usize> = (0..=l.len()).map(|i| base + i * n).collect();
            lists(a, l.values().as_ref(), &offsets)
        }
        _ => None,
    };
    match fast {
        Some(v) => Ok(v),
        None => (0..a.len()).map(|i| array_value(a, i)).collect(),
    }
}

/// A float as JSON; NaN and infinities (which JSON cannot hold) as null.
pub fn float(x: f64) -> Value {
    Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn rfc3339(ms: i64) -> Value {
    let t = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    Value::String(humantime::format_rfc3339_millis(t).to_string())
}

/// One Arrow value as JSON: numbers, booleans and strings as themselves, lists as arrays,
/// structs as objects, timestamps as RFC 3339 text, nulls (and NaN) as null.
pub fn array_value(a: &dyn Array, i: usize) -> Result<Value, String> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float16 => float(a.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => float(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => float(a.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => a.as_string::<i32>().value(i).into(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).into(),
        DataType::Utf8View => a.as_string_view().value(i).into(),
        DataType::Timestamp(unit, _) => {
            let v = match unit {
                TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(i) * 1000,
                TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(i),
                TimeUnit::Microsecond => {
                    a.as_primitive::<TimestampMicrosecondType>().value(i) / 1000
                }
                TimeUnit::Nanosecond => {
                    a.as_primitive::<TimestampNanosecondType>().value(i) / 1_000_000
                }
            };
            rfc3339(v)
        }
        DataType::Date32 => a.as_primitive::<Date32Type>().value(i).into(),
        DataType::List(_) => list(a.as_list::<i32>().value(i).as_ref())?,
        DataType::LargeList(_) => list(a.as_list::<i64>().value(i).as_ref())?,
        DataType::FixedSizeList(_, _) => list(a.as_fixed_size_list().value(i).as_ref())?,
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut m = Map::new();
            for (f, c) in fields.iter().zip(s.columns()) {
                m.insert(f.name().clone(), array_value(c.as_ref(), i)?);
            }
            Value::Object(m)
        }
        other => return Err(format!("unsupported column type {other}")),
    })
}

fn list(values: &dyn Array) -> Result<Value, String> {
    (0..values.len())
        .map(|j| array_value(values, j))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::Int64Builder;
    use serde_json::json;

    fn rows(values: Value) -> Vec<Map<String, Value>> {
        values
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_object().unwrap().clone())
            .collect()
    }

    /// What the rows become and back: the same values, an absent field read as null.
    fn round_trip(rows: &[Map<String, Value>]) -> Option<Vec<Map<String, Value>>> {
        let batch = rows_to_batch(rows, &["key"])?;
        Some(batch_to_rows(&batch).unwrap())
    }

    #[test]
    fn json_rows_become_columns_that_read_back_as_the_same_rows() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..200 {
            let n = rng.usize(1..20);
            let k = rng.usize(1..5);
            let ints = rng.bool();
            let input: Vec<Map<String, Value>> = (0..n)
                .map(|i| {
                    let mut row = Map::new();
                    if i == 0 || rng.u8(..10) > 0 {
                        let xs: Vec<Value> = (0..k)
                            .map(|_| match ints {
                                true => json!(rng.i64(-100..100)),
                                false => json!(rng.f64() * 10.0 - 5.0),
                            })
                            .collect();
                        row.insert("X".into(), Value::Array(xs));
                    }
                    row.insert("key".into(), json!(format!("user-{}", rng.u8(..))));
                    // The first row has one, so the column is never nulls only.
                    row.insert(
                        "amount".into(),
                        match rng.u8(..4) {
                            0 if i > 0 => Value::Null,
                            1 => json!(rng.i64(..)),
                            _ => json!(rng.i64(..) as f64 + 0.5),
                        },
                    );
                    row.insert("flag".into(), json!(i % 2 == 0));
                    row
                })
                .collect();
            let back = round_trip(&input).expect("these rows have exact columns");
            for (a, b) in input.iter().zip(&back) {
                for (field, v) in b {
                    let want = a.get(field).cloned().unwrap_or(Value::Null);
                    match (&want, v) {
                        // Integers in a column with fractions are read back as floats.
                        (Value::Number(w), Value::Number(g)) => {
                            assert_eq!(w.as_f64(), g.as_f64(), "{field}")
                        }
                        _ => assert_eq!(&want, v, "{field}"),
                    }
                }
                assert!(a.keys().all(|k| b.contains_key(k)));
            }
        }
    }

    #[test]
    fn rows_without_an_exact_column_form_are_left_as_rows() {
        for (what, input) in [
            ("mixed kinds", json!([{"a": 1}, {"a": "x"}])),
            ("objects", json!([{"a": {"b": 1}}])),
            ("nested arrays", json!([{"a": [[1, 2]]}])),
            ("ragged arrays", json!([{"a": [1, 2]}, {"a": [1]}])),
            ("arrays of strings", json!([{"a": ["x"]}])),
            ("only nulls", json!([{"a": null}])),
            ("beyond i64", json!([{"a": u64::MAX}])),
            (
                "a sticky key of integers and fractions",
                json!([{"key": 3}, {"key": 3.5}]),
            ),
        ] {
            assert!(rows_to_batch(&rows(input), &["key"]).is_none(), "{what}");
        }
        // Elsewhere integers and fractions share a float64 column.
        let batch = rows_to_batch(&rows(json!([{"a": 3}, {"a": 3.5}])), &["key"]).unwrap();
        assert_eq!(batch.column(0).data_type(), &DataType::Float64);
    }

    #[test]
    fn columns_convert_like_single_values() {
        use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder};
        let mut l = ListBuilder::new(Float32Builder::new());
        l.values().append_value(1.5);
        l.values().append_value(2.0);
        l.append(true);
        l.append(false);
        l.values().append_value(-3.0);
        l.values().append_null();
        l.append(true);
        let list: ArrayRef = Arc::new(l.finish());
        let mut f = FixedSizeListBuilder::new(Int64Builder::new(), 2);
        for (a, b, valid) in [(1, 2, true), (0, 0, false), (5, 6, true)] {
            f.values().append_value(a);
            f.values().append_value(b);
            f.append(valid);
        }
        let fixed: ArrayRef = Arc::new(f.finish());
        for a in [&list, &fixed] {
            for arr in [a.clone(), a.slice(1, 2), a.slice(0, 1), a.slice(2, 1)] {
                let want: Vec<Value> = (0..arr.len())
                    .map(|i| array_value(arr.as_ref(), i).unwrap())
                    .collect();
                assert_eq!(column_values(arr.as_ref()).unwrap(), want);
            }
        }
        assert_eq!(
            column_values(list.as_ref()).unwrap(),
            vec![
                serde_json::json!([1.5, 2.0]),
                Value::Null,
                serde_json::json!([-3.0, null])
            ]
        );
    }
}
