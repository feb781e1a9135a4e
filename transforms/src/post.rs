//! Built-in post-model steps: they turn model output rows into business answers.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use std::sync::Arc;

use arrow_array::Float64Array;

use crate::frame::either;
use crate::util::{RowStep, finite, indexed_number, present, show, value_number};
use crate::{Applied, Frame, Row};

// ---------------------------------------------------------------- threshold

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ThresholdConfig {
    field: String,
    index: Option<usize>,
    threshold: f64,
    labels: Vec<Value>,
    output: Option<String>,
}

pub(crate) struct Threshold {
    field: String,
    index: Option<usize>,
    threshold: f64,
    below: Value,
    at_or_above: Value,
    output: String,
}

impl Threshold {
    pub(crate) fn new(cfg: ThresholdConfig) -> Result<Self, String> {
        let [below, at_or_above]: [Value; 2] = cfg.labels.try_into().map_err(|l: Vec<Value>| {
            format!(
                "`labels` needs exactly 2 values [below, at or above threshold], got {}",
                l.len()
            )
        })?;
        if !cfg.threshold.is_finite() {
            return Err("`threshold` must be a finite number".into());
        }
        Ok(Threshold {
            field: cfg.field,
            index: cfg.index,
            threshold: cfg.threshold,
            below,
            at_or_above,
            output: cfg.output.unwrap_or_else(|| "label".into()),
        })
    }
}

impl RowStep for Threshold {
    fn label(&self) -> &str {
        "threshold"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        let x = indexed_number(row, &self.field, self.index)?;
        let label = if x >= self.threshold {
            &self.at_or_above
        } else {
            &self.below
        };
        row.insert(self.output.clone(), label.clone());
        Ok(())
    }

    fn has_columns(&self) -> bool {
        true
    }

    fn apply_columns(&self, frame: &mut Frame) -> Applied {
        let Some(xs) = indexed_numbers(frame, &self.field, self.index) else {
            return Applied::NeedsRows;
        };
        let above: Vec<bool> = xs.iter().map(|&x| x >= self.threshold).collect();
        match either(&above, &self.below, &self.at_or_above) {
            Some(labels) => {
                frame.set(&self.output, labels);
                Applied::Done
            }
            None => Applied::NeedsRows,
        }
    }
}

/// `util::indexed_number` over a column.
fn indexed_numbers(frame: &Frame, field: &str, index: Option<usize>) -> Option<Vec<f64>> {
    match index {
        None => frame.numbers(field),
        Some(i) => frame.element_numbers(field, i),
    }
}

// ---------------------------------------------------------------- top_k

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopKConfig {
    field: String,
    k: usize,
    labels: Option<Vec<Value>>,
    output: Option<String>,
}

pub(crate) struct TopK {
    field: String,
    k: usize,
    labels: Option<Vec<Value>>,
    output: String,
}

impl TopK {
    pub(crate) fn new(cfg: TopKConfig) -> Result<Self, String> {
        if cfg.k == 0 {
            return Err("`k` must be at least 1".into());
        }
        Ok(TopK {
            field: cfg.field,
            k: cfg.k,
            labels: cfg.labels,
            output: cfg.output.unwrap_or_else(|| "top_k".into()),
        })
    }
}

impl RowStep for TopK {
    fn label(&self) -> &str {
        "top_k"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        let field = &self.field;
        let v = present(row, field)?;
        let arr = v.as_array().ok_or_else(|| {
            format!(
                "field `{field}` is {}, expected an array of scores",
                show(v)
            )
        })?;
        if let Some(labels) = &self.labels
            && labels.len() != arr.len()
        {
            return Err(format!(
                "field `{field}` has {} scores but {} labels are configured",
                arr.len(),
                labels.len()
            ));
        }
        let mut scored = Vec::with_capacity(arr.len());
        for (i, e) in arr.iter().enumerate() {
            let x = value_number(e)
                .ok_or_else(|| format!("field `{field}[{i}]` is {}, expected a number", show(e)))?;
            scored.push((i, x, e));
        }
        // Stable sort: equal scores keep the lower index first.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<Value> = scored
            .into_iter()
            .take(self.k)
            .map(|(i, _, score)| {
                let label = match &self.labels {
                    Some(l) => l[i].clone(),
                    None => Value::from(i as u64),
                };
                let mut entry = Row::new();
                entry.insert("label".into(), label);
                entry.insert("score".into(), score.clone());
                Value::Object(entry)
            })
            .collect();
        row.insert(self.output.clone(), Value::Array(top));
        Ok(())
    }
}

// ---------------------------------------------------------------- calibrate

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CalibrateConfig {
    field: String,
    index: Option<usize>,
    table: Vec<[f64; 2]>,
    output: Option<String>,
}

pub(crate) struct Calibrate {
    field: String,
    index: Option<usize>,
    table: Vec<[f64; 2]>,
    output: Option<String>,
}

impl Calibrate {
    pub(crate) fn new(cfg: CalibrateConfig) -> Result<Self, String> {
        if cfg.table.len() < 2 {
            return Err("`table` needs at least 2 [x, y] points".into());
        }
        if cfg.table.iter().flatten().any(|v| !v.is_finite()) {
            return Err("`table` values must be finite numbers".into());
        }
        if let Some(w) = cfg.table.windows(2).find(|w| w[0][0] >= w[1][0]) {
            return Err(format!(
                "`table` x values must be strictly increasing ({} is followed by {})",
                w[0][0], w[1][0]
            ));
        }
        Ok(Calibrate {
            field: cfg.field,
            index: cfg.index,
            table: cfg.table,
            output: cfg.output,
        })
    }

    /// Piecewise-linear interpolation; outside the table the end values hold.
    fn map(&self, x: f64) -> f64 {
        let t = &self.table;
        let j = t.partition_point(|p| p[0] <= x);
        if j == 0 {
            return t[0][1];
        }
        if j == t.len() {
            return t[t.len() - 1][1];
        }
        let ([x0, y0], [x1, y1]) = (t[j - 1], t[j]);
        y0 + (x - x0) * (y1 - y0) / (x1 - x0)
    }
}

impl RowStep for Calibrate {
    fn label(&self) -> &str {
        "calibrate"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        let x = indexed_number(row, &self.field, self.index)?;
        let y = finite(self.map(x), &self.field)?;
        match (&self.output, self.index) {
            (Some(out), _) => {
                row.insert(out.clone(), y);
            }
            (None, None) => {
                row.insert(self.field.clone(), y);
            }
            (None, Some(i)) => {
                // indexed_number has checked that the field is an array with element i.
                if let Some(e) = row
                    .get_mut(&self.field)
                    .and_then(Value::as_array_mut)
                    .and_then(|a| a.get_mut(i))
                {
                    *e = y;
                }
            }
        }
        Ok(())
    }

    fn has_columns(&self) -> bool {
        true
    }

    fn apply_columns(&self, frame: &mut Frame) -> Applied {
        let target = match (&self.output, self.index) {
            (Some(out), _) => out,
            (None, None) => &self.field,
            // Rewriting one element of a list column in place: left to the row form.
            (None, Some(_)) => return Applied::NeedsRows,
        };
        let Some(xs) = indexed_numbers(frame, &self.field, self.index) else {
            return Applied::NeedsRows;
        };
        let ys: Vec<f64> = xs.into_iter().map(|x| self.map(x)).collect();
        if !ys.iter().all(|y| y.is_finite()) {
            return Applied::NeedsRows;
        }
        frame.set(target, Arc::new(Float64Array::from(ys)));
        Applied::Done
    }
}

// ---------------------------------------------------------------- rename / select

pub(crate) struct Rename {
    pairs: Vec<(String, String)>,
}

impl Rename {
    pub(crate) fn new(map: BTreeMap<String, String>) -> Result<Self, String> {
        if map.is_empty() {
            return Err("needs at least one `old: new` pair".into());
        }
        let mut targets = BTreeSet::new();
        for new in map.values() {
            if !targets.insert(new) {
                return Err(format!("two fields are renamed to `{new}`"));
            }
        }
        Ok(Rename {
            pairs: map.into_iter().collect(),
        })
    }
}

impl RowStep for Rename {
    fn label(&self) -> &str {
        "rename"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        for (old, _) in &self.pairs {
            present_key(row, old)?;
        }
        // Take all values out before inserting so that swaps (a->b, b->a) work.
        let taken: Vec<(&String, Value)> = self
            .pairs
            .iter()
            .filter_map(|(old, new)| row.remove(old).map(|v| (new, v)))
            .collect();
        for (new, v) in taken {
            row.insert(new.clone(), v);
        }
        Ok(())
    }

    fn has_columns(&self) -> bool {
        true
    }

    fn apply_columns(&self, frame: &mut Frame) -> Applied {
        if frame.rename(&self.pairs) {
            Applied::Done
        } else {
            Applied::NeedsRows
        }
    }
}

fn present_key(row: &Row, field: &str) -> Result<(), String> {
    if row.contains_key(field) {
        return Ok(());
    }
    let mut have: Vec<&str> = row.keys().map(String::as_str).collect();
    have.truncate(20);
    Err(format!(
        "field `{field}` is missing (the row has: {})",
        have.join(", ")
    ))
}

pub(crate) struct Select {
    fields: Vec<String>,
}

impl Select {
    pub(crate) fn new(fields: Vec<String>) -> Result<Self, String> {
        if fields.is_empty() {
            return Err("needs at least one field name, e.g. `select: [label]`".into());
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = fields.iter().find(|f| !seen.insert(*f)) {
            return Err(format!("`{dup}` is listed twice"));
        }
        Ok(Select { fields })
    }
}

impl RowStep for Select {
    fn label(&self) -> &str {
        "select"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        let mut kept = Row::new();
        for f in &self.fields {
            present_key(row, f)?;
            if let Some(v) = row.remove(f) {
                kept.insert(f.clone(), v);
            }
        }
        *row = kept;
        Ok(())
    }

    fn has_columns(&self) -> bool {
        true
    }

    fn apply_columns(&self, frame: &mut Frame) -> Applied {
        if frame.select(&self.fields) {
            Applied::Done
        } else {
            Applied::NeedsRows
        }
    }
}

// ---------------------------------------------------------------- cap / floor

pub(crate) struct Bound {
    label: &'static str,
    upper: bool,
    fields: Vec<(String, f64)>,
}

impl Bound {
    pub(crate) fn new(
        label: &'static str,
        upper: bool,
        map: BTreeMap<String, f64>,
    ) -> Result<Self, String> {
        if map.is_empty() {
            return Err("needs at least one `field: bound` pair".into());
        }
        if let Some((f, _)) = map.iter().find(|(_, b)| !b.is_finite()) {
            return Err(format!("the bound for `{f}` must be a finite number"));
        }
        Ok(Bound {
            label,
            upper,
            fields: map.into_iter().collect(),
        })
    }

    fn bound(&self, v: &mut Value, bound: f64, field: &str, depth: usize) -> Result<(), String> {
        // serde_json caps parsed nesting at 128; this guards rows built some other way.
        if depth > 128 {
            return Err(format!("field `{field}` is nested too deeply"));
        }
        match v {
            Value::Array(items) => {
                for e in items {
                    self.bound(e, bound, field, depth + 1)?;
                }
                Ok(())
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                let out = if self.upper { x > bound } else { x < bound };
                if out {
                    *v = finite(bound, field)?;
                }
                Ok(())
            }
            other => Err(format!(
                "field `{field}` holds {}, expected numbers",
                show(other)
            )),
        }
    }
}

impl RowStep for Bound {
    fn label(&self) -> &str {
        self.label
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        for (field, b) in &self.fields {
            present(row, field)?;
            if let Some(v) = row.get_mut(field) {
                self.bound(v, *b, field, 0)?;
            }
        }
        Ok(())
    }

    fn has_columns(&self) -> bool {
        true
    }

    fn apply_columns(&self, frame: &mut Frame) -> Applied {
        for (field, b) in &self.fields {
            // Scalar columns only; list columns are left to the row form.
            let Some(xs) = frame.numbers(field) else {
                return Applied::NeedsRows;
            };
            let ys: Vec<f64> = xs
                .into_iter()
                .map(|x| {
                    let out = if self.upper { x > *b } else { x < *b };
                    if out { *b } else { x }
                })
                .collect();
            frame.set(field, Arc::new(Float64Array::from(ys)));
        }
        Applied::Done
    }
}
