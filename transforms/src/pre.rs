//! Built-in pre-model steps: they turn request/feature rows into model-ready rows.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Number, Value};

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, Float64Array, StringArray};
use arrow_schema::DataType;

use crate::frame::{column_numbers, constant};
use crate::util::{RowStep, category_field, category_key, finite, number, present, show};
use crate::{Applied, Frame, Row};

// ---------------------------------------------------------------- fill_missing

/// `fill_missing: {amount: 0, country: "US"}`
pub(crate) struct FillMissing {
    values: BTreeMap<String, Value>,
}

impl FillMissing {
    pub(crate) fn new(values: BTreeMap<String, Value>) -> Result<Self, String> {
        if values.is_empty() {
            return Err("needs at least one `field: value` pair".into());
        }
        if let Some((f, _)) = values.iter().find(|(_, v)| v.is_null()) {
            return Err(format!(
                "the fill value for `{f}` is null; give the value a missing field should get"
            ));
        }
        Ok(FillMissing { values })
    }
}

impl RowStep for FillMissing {
    fn label(&self) -> &str {
        "fill_missing"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        for (field, value) in &self.values {
            match row.get_mut(field) {
                Some(v) if !v.is_null() => {}
                Some(v) => *v = value.clone(),
                None => {
                    row.insert(field.clone(), value.clone());
                }
            }
        }
        Ok(())
    }

    fn has_columns(&self) -> bool {
        true
    }

    fn apply_columns(&self, frame: &mut Frame) -> Applied {
        let rows = frame.num_rows();
        for (field, value) in &self.values {
            let filled = match frame.column(field) {
                None => constant(value, rows),
                Some(c) if c.null_count() == 0 => continue,
                Some(c) => fill_nulls(c.as_ref(), value),
            };
            match filled {
                Some(c) => frame.set(field, c),
                None => return Applied::NeedsRows,
            }
        }
        Applied::Done
    }
}

/// A column with its nulls replaced by `value`: numbers into a numeric column (as float64:
/// the values are what the row form's JSON numbers read as), text into a text column.
fn fill_nulls(c: &dyn Array, value: &Value) -> Option<arrow_array::ArrayRef> {
    match (c.data_type(), value) {
        (DataType::Utf8, Value::String(s)) => Some(Arc::new(
            c.as_string::<i32>()
                .iter()
                .map(|v| Some(v.unwrap_or(s)))
                .collect::<StringArray>(),
        )),
        (_, Value::Number(n)) => {
            let fill = n.as_f64()?;
            let values = column_numbers(c)?;
            Some(Arc::new(Float64Array::from_iter_values(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| if c.is_null(i) { fill } else { x }),
            )))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------- affine steps

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StandardizeParams {
    mean: f64,
    std: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScaleParams {
    #[serde(default = "one")]
    factor: f64,
    #[serde(default)]
    offset: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MinMaxParams {
    min: f64,
    max: f64,
}

#[derive(Clone, Copy)]
enum AffineKind {
    Standardize { mean: f64, std: f64 },
    Scale { factor: f64, offset: f64 },
    MinMax { min: f64, max: f64 },
}

impl AffineKind {
    /// Written exactly as the documented formulas so results match numpy/scikit-learn bit for
    /// bit rather than through a precomputed factor.
    fn apply(self, x: f64) -> f64 {
        match self {
            AffineKind::Standardize { mean, std } => (x - mean) / std,
            AffineKind::Scale { factor, offset } => x * factor + offset,
            AffineKind::MinMax { min, max } => (x - min) / (max - min),
        }
    }
}

/// standardize, scale and min_max: one numeric rewrite per listed field.
pub(crate) struct Affine {
    label: &'static str,
    fields: Vec<(String, AffineKind)>,
}

impl Affine {
    pub(crate) fn standardize(cfg: BTreeMap<String, StandardizeParams>) -> Result<Self, String> {
        let mut fields = Vec::new();
        for (f, p) in cfg {
            if !p.std.is_finite() || !p.mean.is_finite() || p.std <= 0.0 {
                return Err(format!(
                    "`{f}`: std must be a finite number > 0 and mean finite (got mean {}, std {})",
                    p.mean, p.std
                ));
            }
            fields.push((
                f,
                AffineKind::Standardize {
                    mean: p.mean,
                    std: p.std,
                },
            ));
        }
        Self::non_empty("standardize", fields)
    }

    pub(crate) fn scale(cfg: BTreeMap<String, ScaleParams>) -> Result<Self, String> {
        let mut fields = Vec::new();
        for (f, p) in cfg {
            if !p.factor.is_finite() || !p.offset.is_finite() {
                return Err(format!("`{f}`: factor and offset must be finite numbers"));
            }
            fields.push((
                f,
                AffineKind::Scale {
                    factor: p.factor,
                    offset: p.offset,
                },
            ));
        }
        Self::non_empty("scale", fields)
    }

    pub(crate) fn min_max(cfg: BTreeMap<String, MinMaxParams>) -> Result<Self, String> {
        let mut fields = Vec::new();
        for (f, p) in cfg {
            if !p.min.is_finite() || !p.max.is_finite() || p.max <= p.min {
                return Err(format!(
                    "`{f}`: max must be greater than min (got min {}, max {})",
                    p.min, p.max
                ));
            }
            fields.push((
                f,
                AffineKind::MinMax {
                    min: p.min,
                    max: p.max,
                },
            ));
        }
        Self::non_empty("min_max", fields)
    }

    fn non_empty(label: &'static str, fields: Vec<(String, AffineKind)>) -> Result<Self, String> {
        if fields.is_empty() {
            return Err("needs at least one field".into());
        }
        Ok(Affine { label, fields })
    }
}

impl RowStep for Affine {
    fn label(&self) -> &str {
        self.label
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        for (field, kind) in &self.fields {
            let x = number(row, field)?;
            let y = finite(kind.apply(x), field)?;
            row.insert(field.clone(), y);
        }
        Ok(())
    }

    fn has_columns(&self) -> bool {
        true
    }

    fn apply_columns(&self, frame: &mut Frame) -> Applied {
        for (field, kind) in &self.fields {
            let Some(xs) = frame.numbers(field) else {
                return Applied::NeedsRows;
            };
            let ys: Vec<f64> = xs.into_iter().map(|x| kind.apply(x)).collect();
            if !set_finite(frame, field, ys) {
                return Applied::NeedsRows;
            }
        }
        Applied::Done
    }
}

/// Writes computed values as a float64 column; false (frame unchanged) when one is not finite
/// (the row form reports that row).
fn set_finite(frame: &mut Frame, field: &str, ys: Vec<f64>) -> bool {
    if !ys.iter().all(|y| y.is_finite()) {
        return false;
    }
    frame.set(field, Arc::new(Float64Array::from(ys)));
    true
}

// ---------------------------------------------------------------- clip

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClipParams {
    min: Option<f64>,
    max: Option<f64>,
}

pub(crate) struct Clip {
    fields: Vec<(String, Option<f64>, Option<f64>)>,
}

impl Clip {
    pub(crate) fn new(cfg: BTreeMap<String, ClipParams>) -> Result<Self, String> {
        let mut fields = Vec::new();
        for (f, p) in cfg {
            match (p.min, p.max) {
                (None, None) => return Err(format!("`{f}`: set `min`, `max` or both")),
                (Some(lo), Some(hi)) if lo > hi => {
                    return Err(format!("`{f}`: min {lo} is greater than max {hi}"));
                }
                _ => {}
            }
            fields.push((f, p.min, p.max));
        }
        if fields.is_empty() {
            return Err("needs at least one field".into());
        }
        Ok(Clip { fields })
    }
}

impl RowStep for Clip {
    fn label(&self) -> &str {
        "clip"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        for (field, lo, hi) in &self.fields {
            let x = number(row, field)?;
            // In-range values are left as written (an integer stays an integer).
            let bound = match (lo, hi) {
                (Some(lo), _) if x < *lo => *lo,
                (_, Some(hi)) if x > *hi => *hi,
                _ => continue,
            };
            row.insert(field.clone(), finite(bound, field)?);
        }
        Ok(())
    }

    fn has_columns(&self) -> bool {
        true
    }

    fn apply_columns(&self, frame: &mut Frame) -> Applied {
        for (field, lo, hi) in &self.fields {
            let Some(xs) = frame.numbers(field) else {
                return Applied::NeedsRows;
            };
            let ys: Vec<f64> = xs
                .into_iter()
                .map(|x| match (lo, hi) {
                    (Some(lo), _) if x < *lo => *lo,
                    (_, Some(hi)) if x > *hi => *hi,
                    _ => x,
                })
                .collect();
            if !set_finite(frame, field, ys) {
                return Applied::NeedsRows;
            }
        }
        Applied::Done
    }
}

// ---------------------------------------------------------------- log1p

pub(crate) struct Log1p {
    fields: Vec<String>,
}

impl Log1p {
    pub(crate) fn new(fields: Vec<String>) -> Result<Self, String> {
        if fields.is_empty() {
            return Err("needs at least one field name, e.g. `log1p: [amount]`".into());
        }
        Ok(Log1p { fields })
    }
}

impl RowStep for Log1p {
    fn label(&self) -> &str {
        "log1p"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        for field in &self.fields {
            let x = number(row, field)?;
            if x <= -1.0 {
                return Err(format!(
                    "field `{field}` is {x}; log1p needs a value greater than -1"
                ));
            }
            row.insert(field.clone(), finite(x.ln_1p(), field)?);
        }
        Ok(())
    }

    fn has_columns(&self) -> bool {
        true
    }

    fn apply_columns(&self, frame: &mut Frame) -> Applied {
        for field in &self.fields {
            let Some(xs) = frame.numbers(field) else {
                return Applied::NeedsRows;
            };
            if xs.iter().any(|&x| x <= -1.0) {
                return Applied::NeedsRows;
            }
            let ys: Vec<f64> = xs.into_iter().map(f64::ln_1p).collect();
            if !set_finite(frame, field, ys) {
                return Applied::NeedsRows;
            }
        }
        Applied::Done
    }
}

// ---------------------------------------------------------------- bucketize

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BucketizeConfig {
    field: String,
    boundaries: Vec<f64>,
    output: Option<String>,
}

pub(crate) struct Bucketize {
    field: String,
    boundaries: Vec<f64>,
    output: String,
}

impl Bucketize {
    pub(crate) fn new(cfg: BucketizeConfig) -> Result<Self, String> {
        if cfg.boundaries.is_empty() {
            return Err("`boundaries` needs at least one value".into());
        }
        if let Some(w) = cfg.boundaries.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "`boundaries` must be sorted in strictly increasing order ({} is followed by {})",
                w[0], w[1]
            ));
        }
        let output = cfg.output.unwrap_or_else(|| cfg.field.clone());
        Ok(Bucketize {
            field: cfg.field,
            boundaries: cfg.boundaries,
            output,
        })
    }
}

impl RowStep for Bucketize {
    fn label(&self) -> &str {
        "bucketize"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        let x = number(row, &self.field)?;
        // Number of boundaries <= x, i.e. Python's bisect.bisect_right(boundaries, x).
        let bucket = self.boundaries.partition_point(|b| *b <= x);
        row.insert(self.output.clone(), Value::from(bucket as u64));
        Ok(())
    }
}

// ---------------------------------------------------------------- one_hot

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OneHotConfig {
    field: String,
    categories: Vec<Value>,
    prefix: Option<String>,
    #[serde(default)]
    drop_original: bool,
}

pub(crate) struct OneHot {
    field: String,
    /// (category key, output column)
    columns: Vec<(String, String)>,
    drop_original: bool,
}

impl OneHot {
    pub(crate) fn new(cfg: OneHotConfig) -> Result<Self, String> {
        if cfg.categories.is_empty() {
            return Err("`categories` needs at least one value".into());
        }
        let prefix = cfg.prefix.unwrap_or_else(|| format!("{}_", cfg.field));
        let mut columns: Vec<(String, String)> = Vec::new();
        for c in &cfg.categories {
            let key = category_key(c).ok_or_else(|| {
                format!("category {} must be a string, number or boolean", show(c))
            })?;
            if columns.iter().any(|(k, _)| *k == key) {
                return Err(format!("category `{key}` is listed twice"));
            }
            let column = format!("{prefix}{key}");
            if column == cfg.field && !cfg.drop_original {
                return Err(format!(
                    "output column `{column}` would overwrite the input field; change `prefix`"
                ));
            }
            columns.push((key, column));
        }
        Ok(OneHot {
            field: cfg.field,
            columns,
            drop_original: cfg.drop_original,
        })
    }
}

impl RowStep for OneHot {
    fn label(&self) -> &str {
        "one_hot"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        let key = category_field(row, &self.field)?;
        if self.drop_original {
            row.remove(&self.field);
        }
        // Unknown categories get all zeros, like scikit-learn's handle_unknown="ignore".
        for (cat, column) in &self.columns {
            row.insert(column.clone(), Value::from(u8::from(*cat == key)));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- category_index

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CategoryIndexConfig {
    field: String,
    map: BTreeMap<String, Number>,
    default: Option<Number>,
    output: Option<String>,
}

pub(crate) struct CategoryIndex {
    field: String,
    map: BTreeMap<String, Number>,
    default: Option<Number>,
    output: String,
}

impl CategoryIndex {
    pub(crate) fn new(cfg: CategoryIndexConfig) -> Result<Self, String> {
        if cfg.map.is_empty() {
            return Err("`map` needs at least one `category: number` entry".into());
        }
        let output = cfg.output.unwrap_or_else(|| cfg.field.clone());
        Ok(CategoryIndex {
            field: cfg.field,
            map: cfg.map,
            default: cfg.default,
            output,
        })
    }
}

impl RowStep for CategoryIndex {
    fn label(&self) -> &str {
        "category_index"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        let key = category_field(row, &self.field)?;
        let n = match (self.map.get(&key), &self.default) {
            (Some(n), _) | (None, Some(n)) => n.clone(),
            (None, None) => {
                return Err(format!(
                    "field `{}` has unknown category {} (set `default` to map unknown categories)",
                    self.field,
                    present(row, &self.field).map(show).unwrap_or_default()
                ));
            }
        };
        row.insert(self.output.clone(), Value::Number(n));
        Ok(())
    }
}

// ---------------------------------------------------------------- derive

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    Add,
    Subtract,
    Multiply,
    Divide,
    Min,
    Max,
}

#[derive(Deserialize, Clone)]
#[serde(untagged, expecting = "each of `args` to be a field name or a number")]
pub(crate) enum Arg {
    Literal(f64),
    Field(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeriveConfig {
    name: String,
    op: Op,
    args: Vec<Arg>,
    on_zero: Option<f64>,
}

pub(crate) struct Derive {
    name: String,
    op: Op,
    args: Vec<Arg>,
    on_zero: Option<f64>,
}

impl Derive {
    pub(crate) fn new(cfg: DeriveConfig) -> Result<Self, String> {
        let n = cfg.args.len();
        match cfg.op {
            Op::Subtract | Op::Divide if n != 2 => {
                return Err(format!("op {:?} takes exactly 2 args, got {n}", cfg.op).to_lowercase());
            }
            _ if n < 2 => return Err(format!("op needs at least 2 args, got {n}")),
            _ => {}
        }
        if cfg.on_zero.is_some() && cfg.op != Op::Divide {
            return Err("`on_zero` only applies to op divide".into());
        }
        if let Some(z) = cfg.on_zero
            && !z.is_finite()
        {
            return Err("`on_zero` must be a finite number".into());
        }
        Ok(Derive {
            name: cfg.name,
            op: cfg.op,
            args: cfg.args,
            on_zero: cfg.on_zero,
        })
    }
}

impl RowStep for Derive {
    fn label(&self) -> &str {
        "derive"
    }

    fn apply_row(&self, row: &mut Row, _: Option<&Row>) -> Result<(), String> {
        let mut xs = Vec::with_capacity(self.args.len());
        for a in &self.args {
            xs.push(match a {
                Arg::Literal(x) => *x,
                Arg::Field(f) => number(row, f)?,
            });
        }
        let y = match self.op {
            Op::Add => xs.iter().sum(),
            Op::Multiply => xs.iter().product(),
            Op::Subtract => xs[0] - xs[1],
            Op::Min => xs.iter().copied().fold(f64::INFINITY, f64::min),
            Op::Max => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Op::Divide if xs[1] == 0.0 => match self.on_zero {
                Some(z) => z,
                None => {
                    return Err(format!(
                        "division by zero computing `{}` (set `on_zero` to give a value)",
                        self.name
                    ));
                }
            },
            Op::Divide => xs[0] / xs[1],
        };
        let y = finite(y, &self.name)?;
        row.insert(self.name.clone(), y);
        Ok(())
    }
}
