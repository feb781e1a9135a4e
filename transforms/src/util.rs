//! Shared pieces of the built-in steps: reading numbers out of rows, writing results back, and
//! running a per-row function over a batch.

use serde_json::{Number, Value};

use crate::{Applied, Context, Frame, FrameContext, Row, Transform, TransformError};

/// A built-in step that handles one row at a time and can only fail because of the row.
pub(crate) trait RowStep: Send + Sync + 'static {
    fn label(&self) -> &str;
    fn apply_row(&self, row: &mut Row, input: Option<&Row>) -> Result<(), String>;
    /// The same over whole columns; `NeedsRows` wherever some row would fail or the columns'
    /// types could make the answer differ from the row form's.
    fn apply_columns(&self, _frame: &mut Frame) -> Applied {
        Applied::NeedsRows
    }
    fn has_columns(&self) -> bool {
        false
    }
}

/// Adapts a [`RowStep`] to [`Transform`]; errors become [`crate::ErrorKind::Input`] on that row.
pub(crate) struct PerRow<S>(pub S);

impl<S: RowStep> Transform for PerRow<S> {
    fn name(&self) -> &str {
        self.0.label()
    }

    fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError> {
        for (i, row) in rows.iter_mut().enumerate() {
            self.0
                .apply_row(row, ctx.input(i))
                .map_err(|m| TransformError::input(i, m))?;
        }
        Ok(())
    }

    fn has_column_form(&self) -> bool {
        self.0.has_columns()
    }

    fn apply_frame(
        &self,
        frame: &mut Frame,
        _: &FrameContext<'_>,
    ) -> Result<Applied, TransformError> {
        Ok(self.0.apply_columns(frame))
    }
}

/// A short rendering of a value for error messages; rows can hold large arrays.
pub(crate) fn show(v: &Value) -> String {
    const MAX: usize = 60;
    let s = v.to_string();
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(crate) fn missing(field: &str) -> String {
    format!("field `{field}` is missing (add a fill_missing step before this one to default it)")
}

/// The field's value, or an error when it is missing or null.
pub(crate) fn present<'r>(row: &'r Row, field: &str) -> Result<&'r Value, String> {
    match row.get(field) {
        None | Some(Value::Null) => Err(missing(field)),
        Some(v) => Ok(v),
    }
}

/// The field as a number; missing, null and non-numbers are errors.
pub(crate) fn number(row: &Row, field: &str) -> Result<f64, String> {
    let v = present(row, field)?;
    value_number(v).ok_or_else(|| format!("field `{field}` is {}, expected a number", show(v)))
}

pub(crate) fn value_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// A JSON number from a computed float; JSON has no NaN or infinity.
pub(crate) fn finite(x: f64, field: &str) -> Result<Value, String> {
    Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| format!("result for field `{field}` is not a finite number ({x})"))
}

/// The text a category value is matched by: strings as-is, numbers and booleans by their JSON
/// text (so `3` matches the category `"3"`). Other types have no category.
pub(crate) fn category_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The category a present field holds (see `category_key`), or why it holds none.
pub(crate) fn category_field(row: &Row, field: &str) -> Result<String, String> {
    let v = present(row, field)?;
    category_key(v).ok_or_else(|| {
        format!(
            "field `{field}` is {}, expected a string, number or boolean category",
            show(v)
        )
    })
}

/// Reads element `index` of an array field, or the field itself when `index` is None.
pub(crate) fn indexed_number(row: &Row, field: &str, index: Option<usize>) -> Result<f64, String> {
    let v = present(row, field)?;
    let (v, what) = match index {
        None => (v, format!("field `{field}`")),
        Some(i) => {
            let arr = v.as_array().ok_or_else(|| {
                format!(
                    "field `{field}` is {}, expected an array (because `index` is set)",
                    show(v)
                )
            })?;
            let e = arr.get(i).ok_or_else(|| {
                format!(
                    "field `{field}` has {} elements, index {i} is out of range",
                    arr.len()
                )
            })?;
            (e, format!("field `{field}[{i}]`"))
        }
    };
    match value_number(v) {
        Some(x) => Ok(x),
        None if index.is_none() && v.is_array() => Err(format!(
            "{what} is an array, expected a number (set `index` to pick an element)"
        )),
        None => Err(format!("{what} is {}, expected a number", show(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_truncates_on_a_char_boundary() {
        let long = Value::String("é".repeat(100));
        let s = show(&long);
        assert!(s.ends_with('…'));
        assert!(s.len() <= 64);
    }
}
