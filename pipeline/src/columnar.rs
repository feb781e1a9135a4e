//! The pipeline over Arrow columns: the model inputs are built from the record batch's buffers
//! (or, for a model with `features`, joined from the entity key column, the request columns and
//! one store call), transforms rewrite whole columns, and the outputs stay tensors (or, after a
//! postprocess, columns), so a Parquet chunk never becomes JSON. Endpoints with shadows,
//! capture or steps without a column form (scripts), and columns that do not map exactly onto
//! what the row path would do, take the row path (`Pipeline::predict`), which gives the same
//! answers row by row.

use super::arrow_rows::{array_value, batch_to_rows};
use super::{
    Core, Deadline, Endpoint, Pipeline, PredictError, check_outputs, in_request, joined_input,
    rows, submit,
};
use arrow_array::builder::Float64Builder;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, UInt32Array,
};
use arrow_schema::{DataType as ArrowType, Field};
use ferry_features::online::FeatureTable;
use ferry_features::{FeatureError, FeatureValue, JoinPlan, Source};
use ferry_models::LoadedModel;
use ferry_runtimes::{DataType, Signature, Tensor, TensorData};
use ferry_transforms::{Applied, Chain, Frame, FrameContext, TransformError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The rows one variant scored.
#[derive(Debug)]
pub struct GroupRun {
    /// Row positions within the batch, ascending.
    pub rows: Vec<usize>,
    pub variant: String,
    pub model: String,
    pub version: u64,
    /// The model's outputs, in signature order, one row per entry of `rows`.
    pub outputs: Vec<Tensor>,
    /// The endpoint's `postprocess` answer as columns, one per field of the row path's
    /// prediction objects; None without a postprocess.
    pub post: Option<Frame>,
    /// Feature values that got their default.
    pub defaulted: usize,
}

impl GroupRun {
    /// The group's predictions as the row path answers them (JSON, one per row).
    pub fn predictions(&self) -> Result<Vec<Value>, PredictError> {
        match &self.post {
            None => rows::predictions(&self.outputs).map_err(|e| PredictError::ModelOutput(e.0)),
            Some(answer) => {
                let batch = answer
                    .to_batch()
                    .map_err(|e| PredictError::ModelOutput(e.to_string()))?;
                let objects = batch_to_rows(&batch).map_err(PredictError::ModelOutput)?;
                Ok(objects.into_iter().map(Value::Object).collect())
            }
        }
    }
}

impl Endpoint {
    /// Whether requests to this endpoint may take the column path at all.
    pub(crate) fn takes_columns(&self) -> bool {
        self.shadow.is_none()
            && self.capture.is_none()
            && self.pre.has_column_form()
            && self.post.has_column_form()
    }
}

impl Pipeline {
    /// Scores `batch` column-wise, or None when the endpoint or the columns need the row path.
    /// Variants are assigned by the same sticky hash of the same key values as the row path;
    /// transforms run their column form ([`ferry_transforms::Transform::apply_frame`]).
    ///
    /// None comes before any model runs, except when a postprocess step finds that the model's
    /// answers need its row form (e.g. non-finite outputs): the row path then scores the batch
    /// again.
    pub async fn predict_columns(
        &self,
        endpoint: &str,
        batch: &RecordBatch,
    ) -> Result<Option<Vec<GroupRun>>, PredictError> {
        let ep = self.endpoint(endpoint)?;
        self.columns_at(&ep, batch, None).await
    }

    /// [`Pipeline::predict_columns`] within a request's deadline.
    pub(crate) async fn columns_at(
        &self,
        ep: &Endpoint,
        batch: &RecordBatch,
        deadline: Option<Deadline>,
    ) -> Result<Option<Vec<GroupRun>>, PredictError> {
        let n = batch.num_rows();
        if n == 0 || !ep.takes_columns() {
            return Ok(None);
        }
        // The sticky key column read value by value as the row path reads its rows.
        let key = match (&ep.config.sticky_key, ep.variants.len() > 1) {
            (Some(key), true) => batch.column_by_name(key),
            _ => None,
        };
        let keys: Vec<Value> = match key {
            Some(column) => match (0..n).map(|i| array_value(column.as_ref(), i)).collect() {
                Ok(keys) => keys,
                Err(_) => return Ok(None),
            },
            None => Vec::new(),
        };
        let assignment = ep.assign_keys(n, |i| keys.get(i));
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (row, &v) in assignment.iter().enumerate() {
            match groups.iter_mut().find(|(g, _)| *g == v) {
                Some((_, rows)) => rows.push(row),
                None => groups.push((v, vec![row])),
            }
        }
        let endpoint = ep.config.name.as_str();
        // Every group is checked before any model runs, so a fallback wastes no engine time.
        let mut planned = Vec::with_capacity(groups.len());
        for (v, rows) in groups {
            let started = Instant::now();
            let variant = ep.variants[v].name.as_str();
            let model = self.core.models.lookup_ref(&ep.variants[v].model)?;
            let model_pre = self.core.model_chain(&model)?;
            if !model_pre.has_column_form() {
                return Ok(None);
            }
            let part = if rows.len() == n {
                batch.clone()
            } else {
                let indices = UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
                arrow_select::take::take_record_batch(batch, &indices)
                    .map_err(|e| PredictError::Misconfigured(e.to_string()))?
            };
            let step = Step {
                endpoint,
                variant,
                model: &model,
            };
            let inputs = self
                .core
                .column_inputs(&step, [&model_pre, &ep.pre], &part)
                .await
                .inspect_err(|e| self.core.count_error(endpoint, variant, e))
                .map_err(|e| in_request(e, &rows))?;
            let Some(inputs) = inputs else {
                return Ok(None);
            };
            let Ok(tensors) = model.signature().validate_inputs(inputs.tensors) else {
                return Ok(None);
            };
            planned.push((
                v,
                rows,
                model,
                tensors,
                inputs.frame,
                inputs.defaulted,
                part,
                started,
            ));
        }
        let mut runs = Vec::with_capacity(planned.len());
        for (v, rows, model, tensors, frame, defaulted, part, started) in planned {
            let variant = ep.variants[v].name.as_str();
            let outputs = submit(&model, tensors, deadline, endpoint)
                .await
                .and_then(|outputs| {
                    check_outputs(&model, &outputs, rows.len())?;
                    Ok(outputs)
                })
                .inspect_err(|e| self.core.count_error(endpoint, variant, e))?;
            let post = if ep.post.is_empty() {
                None
            } else {
                let post_started = Instant::now();
                let Some(mut answer) = outputs_frame(&outputs) else {
                    return Ok(None);
                };
                let inputs = frame.unwrap_or_else(|| Frame::from_batch(&part));
                let ctx = FrameContext {
                    inputs: Some(&inputs),
                };
                let applied = ep
                    .post
                    .apply_frame(&mut answer, &ctx)
                    .map_err(|e| transform_error(endpoint, variant, e))
                    .inspect_err(|e| self.core.count_error(endpoint, variant, e))
                    .map_err(|e| in_request(e, &rows))?;
                if applied == Applied::NeedsRows {
                    return Ok(None);
                }
                let version = model.version.to_string();
                self.core
                    .observe_stage(&model, &version, "postprocess", post_started);
                Some(answer)
            };
            let m = &self.core.metrics;
            m.endpoint_variant_duration
                .with_label_values(&[endpoint, variant])
                .observe(started.elapsed().as_secs_f64());
            m.endpoint_requests
                .with_label_values(&[endpoint, variant, &model.name, &model.version.to_string()])
                .inc();
            runs.push(GroupRun {
                rows,
                variant: variant.to_string(),
                model: model.name.clone(),
                version: model.version,
                outputs,
                post,
                defaulted,
            });
        }
        self.core
            .metrics
            .endpoint_rows
            .with_label_values(&[endpoint, "columns"])
            .inc_by(n as u64);
        Ok(Some(runs))
    }
}

/// Which endpoint, variant and model a group's work is for (errors and metrics name them).
pub(crate) struct Step<'a> {
    endpoint: &'a str,
    variant: &'a str,
    model: &'a LoadedModel,
}

/// One group's model inputs from its columns.
struct ColumnInputs {
    tensors: Vec<Tensor>,
    /// The request columns after the preprocess, when one ran (postprocess steps get them
    /// as inputs; without a preprocess they are the batch's own).
    frame: Option<Frame>,
    defaulted: usize,
}

impl Core {
    /// The model inputs of one group's rows. None where the row path would decide
    /// differently or report rows.
    async fn column_inputs(
        &self,
        step: &Step<'_>,
        pre: [&Chain; 2],
        part: &RecordBatch,
    ) -> Result<Option<ColumnInputs>, PredictError> {
        let model = step.model;
        let signature = model.signature();
        let version = model.version.to_string();
        let rows = part.num_rows();
        let has_pre = pre.iter().any(|c| !c.is_empty());
        let Some(plan) = self.plan(model)? else {
            if !has_pre {
                return Ok(
                    batch_to_tensors(part, signature).map(|tensors| ColumnInputs {
                        tensors,
                        frame: None,
                        defaulted: 0,
                    }),
                );
            }
            let mut frame = Frame::from_batch(part);
            if !self.preprocess(step, pre, &mut frame)? {
                return Ok(None);
            }
            let Ok(columns) = frame.to_batch() else {
                return Ok(None);
            };
            return Ok(
                batch_to_tensors(&columns, signature).map(|tensors| ColumnInputs {
                    tensors,
                    frame: Some(frame),
                    defaulted: 0,
                }),
            );
        };
        let key = part.column_by_name(&plan.join_key);
        let value = |column: &ArrayRef, i: usize| array_value(column.as_ref(), i).ok();
        let started = Instant::now();
        if !has_pre {
            // Straight from the columns into the matrix: no named feature columns needed.
            let request: HashMap<&str, &ArrayRef> = plan
                .request_fields()
                .into_iter()
                .filter_map(|field| Some((field, part.column_by_name(field)?)))
                .collect();
            let joined = plan
                .join_columns(
                    self.features.as_deref(),
                    rows,
                    |i, field| value(request.get(field)?, i),
                    |i| value(key?, i),
                )
                .await;
            self.observe_stage(model, &version, "features", started);
            let joined = match joined {
                Ok(joined) => joined,
                Err(FeatureError::InvalidRow(_) | FeatureError::Missing(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let defaulted = match &joined.table {
                Some(table) => self.count_features(step.endpoint, table),
                None => 0,
            };
            let input = joined_input(signature, rows, joined.columns, joined.matrix)?;
            return Ok(Some(ColumnInputs {
                tensors: vec![input],
                frame: None,
                defaulted,
            }));
        }
        let table = plan
            .lookup_columns(self.features.as_deref(), rows, |i| value(key?, i))
            .await;
        self.observe_stage(model, &version, "features", started);
        let table = match table {
            Ok(table) => table,
            Err(FeatureError::InvalidRow(_) | FeatureError::Missing(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut frame = Frame::from_batch(part);
        let mut defaulted = 0;
        if let Some(table) = &table {
            if !name_feature_columns(&plan, table, &mut frame) {
                return Ok(None);
            }
            defaulted = self.count_features(step.endpoint, table);
        }
        if !self.preprocess(step, pre, &mut frame)? {
            return Ok(None);
        }
        let Some(matrix) = matrix_from_frame(&plan, &frame) else {
            return Ok(None);
        };
        let input = joined_input(signature, rows, plan.width(), matrix)?;
        Ok(Some(ColumnInputs {
            tensors: vec![input],
            frame: Some(frame),
            defaulted,
        }))
    }

    /// The model's, then the endpoint's preprocess over `frame`; false when a step needs rows.
    fn preprocess(
        &self,
        step: &Step<'_>,
        pre: [&Chain; 2],
        frame: &mut Frame,
    ) -> Result<bool, PredictError> {
        let started = Instant::now();
        for chain in pre {
            let applied = chain
                .apply_frame(frame, &FrameContext::default())
                .map_err(|e| transform_error(step.endpoint, step.variant, e))?;
            if applied == Applied::NeedsRows {
                return Ok(false);
            }
        }
        let version = step.model.version.to_string();
        self.observe_stage(step.model, &version, "preprocess", started);
        Ok(true)
    }

    fn count_error(&self, endpoint: &str, variant: &str, error: &PredictError) {
        self.metrics
            .endpoint_errors
            .with_label_values(&[endpoint, variant, error.error_type()])
            .inc();
    }
}

fn transform_error(endpoint: &str, variant: &str, error: TransformError) -> PredictError {
    PredictError::Transform {
        endpoint: endpoint.to_string(),
        variant: variant.to_string(),
        error: Box::new(error),
    }
}

/// The looked-up features as `view.feature` columns (float64, null where missing without a
/// default), as the row path names them into its rows. False for non-numeric feature values:
/// their JSON form matters to the steps, so the row path takes them.
fn name_feature_columns(plan: &JoinPlan, table: &FeatureTable, frame: &mut Frame) -> bool {
    for (k, name) in plan.names.iter().enumerate() {
        let mut values = Float64Builder::with_capacity(table.cells.len());
        for cells in &table.cells {
            match cells[k].value {
                None => values.append_null(),
                // JSON has no NaN: the row path holds null there.
                Some(FeatureValue::Float(x)) if !x.is_finite() => values.append_null(),
                Some(FeatureValue::Float(x)) => values.append_value(x),
                Some(FeatureValue::Int(i)) => values.append_value(i as f64),
                Some(
                    FeatureValue::Bool(_)
                    | FeatureValue::Str(_)
                    | FeatureValue::Bytes(_)
                    | FeatureValue::List(_),
                ) => return false,
            }
        }
        frame.set(name, Arc::new(values.finish()));
    }
    true
}

/// `JoinPlan::matrix_from_rows` over columns: request fields must be numbers or booleans on
/// every row, feature columns read null as NaN. None where the row path would report a row.
fn matrix_from_frame(plan: &JoinPlan, frame: &Frame) -> Option<Vec<f64>> {
    let rows = frame.num_rows();
    let sources = plan.sources();
    let width = sources.len();
    let mut matrix = vec![f64::NAN; rows * width];
    for (j, source) in sources.iter().enumerate() {
        let values = match source {
            Source::Request(field) => {
                let column = frame.column(field)?;
                if column.null_count() > 0 {
                    return None;
                }
                let values = frame.matrix_values(field)?;
                if !values.iter().all(|x| x.is_finite()) {
                    return None;
                }
                values
            }
            Source::Feature(name) => frame.matrix_values(name)?,
        };
        for (i, x) in values.into_iter().enumerate() {
            matrix[i * width + j] = x;
        }
    }
    Some(matrix)
}

/// The model's outputs as the columns of the row path's prediction objects: `[rows]` a plain
/// column, `[rows, k]` a fixed-size list. None for other shapes and types, and for non-finite
/// floats (the row path's JSON holds null there), which the row path takes.
fn outputs_frame(outputs: &[Tensor]) -> Option<Frame> {
    let rows = *outputs.first()?.shape.first()?;
    let mut frame = Frame::new(rows);
    for t in outputs {
        let values: ArrayRef = match &t.data {
            TensorData::Fp32(v) if v.iter().all(|x| x.is_finite()) => {
                Arc::new(Float32Array::from(v.clone()))
            }
            TensorData::Fp64(v) if v.iter().all(|x| x.is_finite()) => {
                Arc::new(Float64Array::from(v.clone()))
            }
            TensorData::Int64(v) => Arc::new(Int64Array::from(v.clone())),
            TensorData::Int32(v) => Arc::new(Int32Array::from(v.clone())),
            _ => return None,
        };
        let column: ArrayRef = match t.shape[..] {
            [r] if r == rows => values,
            [r, k] if r == rows => {
                let field = Arc::new(Field::new("item", values.data_type().clone(), true));
                Arc::new(
                    FixedSizeListArray::try_new(field, i32::try_from(k).ok()?, values, None)
                        .ok()?,
                )
            }
            _ => return None,
        };
        frame.set(&t.name, column);
    }
    Some(frame)
}

/// The model inputs from the columns named like them: a numeric column is `[rows]`, a list
/// column whose rows all have k numeric values is `[rows, k]`. Null and NaN values of a float
/// column reach a floating-point input as NaN, as on the row path (where JSON holds null for
/// both). None where the row path would decide differently or report a row (null rows or
/// integers, infinite values, ragged lists, integers that do not fit, other types), so only
/// exact equivalents take this path.
pub fn batch_to_tensors(batch: &RecordBatch, signature: &Signature) -> Option<Vec<Tensor>> {
    let rows = batch.num_rows();
    let mut tensors = Vec::with_capacity(signature.inputs.len());
    for spec in &signature.inputs {
        let column = batch.column_by_name(&spec.name)?;
        // A null list is a row the row path refuses; null values are judged below.
        let list = matches!(
            column.data_type(),
            ArrowType::FixedSizeList(..) | ArrowType::List(_)
        );
        if list && column.null_count() > 0 {
            return None;
        }
        let (values, shape) = match column.data_type() {
            ArrowType::FixedSizeList(_, k) => {
                let list = column.as_fixed_size_list();
                let k = usize::try_from(*k).ok()?;
                // A slice of a fixed-size list slices its values: they start at row 0.
                let values = list.values().slice(0, rows * k);
                (values, vec![rows, k])
            }
            ArrowType::List(_) => {
                let list = column.as_list::<i32>();
                let offsets = list.value_offsets();
                let k = usize::try_from(offsets[1] - offsets[0]).ok()?;
                if offsets
                    .windows(2)
                    .any(|w| usize::try_from(w[1] - w[0]) != Ok(k))
                {
                    return None;
                }
                let start = usize::try_from(offsets[0]).ok()?;
                (list.values().slice(start, rows * k), vec![rows, k])
            }
            _ => (column.clone(), vec![rows]),
        };
        let floats = matches!(values.data_type(), ArrowType::Float32 | ArrowType::Float64)
            && matches!(spec.datatype, DataType::Fp32 | DataType::Fp64);
        if values.null_count() > 0 && !floats {
            return None;
        }
        let mut data = numbers(&values, spec.datatype)?;
        if let Some(nulls) = values.nulls().filter(|n| n.null_count() > 0) {
            for i in (0..nulls.len()).filter(|&i| nulls.is_null(i)) {
                match &mut data {
                    TensorData::Fp32(v) => v[i] = f32::NAN,
                    TensorData::Fp64(v) => v[i] = f64::NAN,
                    _ => return None,
                }
            }
        }
        tensors.push(Tensor::new(spec.name.clone(), shape, data).ok()?);
    }
    Some(tensors)
}

/// Converts as the row path does (Arrow → JSON number → the input's type): floats must be
/// finite or NaN (which the row path's JSON holds as null, read back as NaN; infinities it
/// cannot hold), integers reach floating-point inputs through f64.
fn numbers(values: &ArrayRef, to: DataType) -> Option<TensorData> {
    macro_rules! ints {
        ($conv:expr) => {
            match values.data_type() {
                ArrowType::Int8 => ints!(@ Int8Type, $conv),
                ArrowType::Int16 => ints!(@ Int16Type, $conv),
                ArrowType::Int32 => ints!(@ Int32Type, $conv),
                ArrowType::Int64 => ints!(@ Int64Type, $conv),
                ArrowType::UInt8 => ints!(@ UInt8Type, $conv),
                ArrowType::UInt16 => ints!(@ UInt16Type, $conv),
                ArrowType::UInt32 => ints!(@ UInt32Type, $conv),
                ArrowType::UInt64 => ints!(@ UInt64Type, $conv),
                _ => None,
            }
        };
        (@ $t:ty, $conv:expr) => {
            values
                .as_primitive::<$t>()
                .values()
                .iter()
                .map(|&v| $conv(v as i128))
                .collect::<Option<Vec<_>>>()
        };
    }
    let finite32 = |v: &[f32]| v.iter().all(|x| x.is_finite() || x.is_nan());
    let finite64 = |v: &[f64]| v.iter().all(|x| x.is_finite() || x.is_nan());
    match to {
        DataType::Fp32 => match values.data_type() {
            ArrowType::Float32 => {
                let v = values.as_primitive::<Float32Type>().values();
                finite32(v).then(|| TensorData::Fp32(v.to_vec()))
            }
            ArrowType::Float64 => {
                // Finite as f64 is not enough: 1e300 overflows f32, which the row path refuses.
                let v: Vec<f32> = values
                    .as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                finite32(&v).then_some(TensorData::Fp32(v))
            }
            _ => ints!(|v: i128| Some(v as f64 as f32)).map(TensorData::Fp32),
        },
        DataType::Fp64 => match values.data_type() {
            ArrowType::Float32 => {
                let v = values.as_primitive::<Float32Type>().values();
                finite32(v).then(|| TensorData::Fp64(v.iter().map(|&x| f64::from(x)).collect()))
            }
            ArrowType::Float64 => {
                let v = values.as_primitive::<Float64Type>().values();
                finite64(v).then(|| TensorData::Fp64(v.to_vec()))
            }
            _ => ints!(|v: i128| Some(v as f64)).map(TensorData::Fp64),
        },
        DataType::Int64 => ints!(|v: i128| i64::try_from(v).ok()).map(TensorData::Int64),
        DataType::Int32 => ints!(|v: i128| i32::try_from(v).ok()).map(TensorData::Int32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::rows_to_tensors;
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder};
    use arrow_array::{Float64Array, Int64Array, StringArray};
    use ferry_runtimes::TensorSpec;
    use std::sync::Arc;

    fn signature(inputs: &[(&str, DataType, Vec<i64>)]) -> Signature {
        Signature {
            inputs: inputs
                .iter()
                .map(|(n, d, s)| TensorSpec {
                    name: n.to_string(),
                    datatype: *d,
                    shape: s.clone(),
                })
                .collect(),
            outputs: vec![],
        }
    }

    fn fixed_list(rows: &[[f32; 3]]) -> ArrayRef {
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 3);
        for r in rows {
            b.values().append_slice(r);
            b.append(true);
        }
        Arc::new(b.finish())
    }

    /// The row path's tensors for the same batch, through the batch reader's conversion.
    fn via_rows(batch: &RecordBatch, sig: &Signature) -> Vec<Tensor> {
        let rows = crate::arrow_rows::batch_to_rows(batch).unwrap();
        rows_to_tensors(&rows, sig).unwrap()
    }

    #[test]
    fn columns_give_the_tensors_the_row_path_gives() {
        let x = fixed_list(&[[1.0, 2.5, -3.0], [0.25, 1e-7, 7.0], [4.0, 5.0, 6.0]]);
        let mut lists = ListBuilder::new(Float32Builder::new());
        for r in [[1.0f32, 2.0], [3.0, 4.0], [5.5, 6.5]] {
            lists.values().append_slice(&r);
            lists.append(true);
        }
        let batch = RecordBatch::try_from_iter([
            ("X", x),
            ("pair", Arc::new(lists.finish()) as ArrayRef),
            (
                "amount",
                Arc::new(Float64Array::from(vec![0.1, 2.0, 1e10])) as ArrayRef,
            ),
            (
                "count",
                Arc::new(Int64Array::from(vec![3, -4, 16_777_217])) as ArrayRef,
            ),
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let sig = signature(&[
            ("X", DataType::Fp32, vec![-1, 3]),
            ("pair", DataType::Fp64, vec![-1, 2]),
            ("amount", DataType::Fp32, vec![-1]),
            ("count", DataType::Fp32, vec![-1]),
        ]);
        assert_eq!(
            batch_to_tensors(&batch, &sig).unwrap(),
            via_rows(&batch, &sig)
        );
        // A slice (non-zero offsets) converts the same way.
        let tail = batch.slice(1, 2);
        assert_eq!(
            batch_to_tensors(&tail, &sig).unwrap(),
            via_rows(&tail, &sig)
        );
        let ints = signature(&[("count", DataType::Int64, vec![-1])]);
        assert_eq!(
            batch_to_tensors(&batch, &ints).unwrap(),
            via_rows(&batch, &ints)
        );
    }

    #[test]
    fn missing_floats_reach_the_model_as_nan_on_both_paths() {
        let mut x = FixedSizeListBuilder::new(Float32Builder::new(), 3);
        x.values().append_slice(&[1.0, f32::NAN, 3.0]);
        x.append(true);
        x.values().append_value(4.0);
        x.values().append_null();
        x.values().append_value(6.0);
        x.append(true);
        let batch = RecordBatch::try_from_iter([
            ("X", Arc::new(x.finish()) as ArrayRef),
            (
                "amount",
                Arc::new(Float64Array::from(vec![Some(f64::NAN), None])) as ArrayRef,
            ),
        ])
        .unwrap();
        let sig = signature(&[
            ("X", DataType::Fp32, vec![-1, 3]),
            ("amount", DataType::Fp64, vec![-1]),
        ]);
        let columns = batch_to_tensors(&batch, &sig).expect("NaN and null floats stay columnar");
        // NaN != NaN: compare what they print.
        assert_eq!(
            format!("{columns:?}"),
            format!("{:?}", via_rows(&batch, &sig))
        );
        assert_eq!(
            format!("{:?}", columns[0].data),
            format!(
                "{:?}",
                TensorData::Fp32(vec![1.0, f32::NAN, 3.0, 4.0, f32::NAN, 6.0])
            )
        );
    }

    #[test]
    fn what_the_row_path_would_judge_row_by_row_is_left_to_it() {
        let sig = signature(&[("X", DataType::Fp32, vec![-1, 3])]);
        let inf = fixed_list(&[[1.0, f32::INFINITY, 3.0]]);
        let batch = RecordBatch::try_from_iter([("X", inf)]).unwrap();
        assert!(batch_to_tensors(&batch, &sig).is_none(), "infinity");
        let mut ragged = ListBuilder::new(Float32Builder::new());
        ragged.values().append_slice(&[1.0, 2.0, 3.0]);
        ragged.append(true);
        ragged.values().append_slice(&[1.0, 2.0]);
        ragged.append(true);
        let batch =
            RecordBatch::try_from_iter([("X", Arc::new(ragged.finish()) as ArrayRef)]).unwrap();
        assert!(batch_to_tensors(&batch, &sig).is_none(), "ragged");
        let nulls = Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef;
        let batch = RecordBatch::try_from_iter([("X", nulls)]).unwrap();
        let one = signature(&[("X", DataType::Fp32, vec![-1])]);
        assert!(batch_to_tensors(&batch, &one).is_none(), "null integer");
        let batch = RecordBatch::try_from_iter([(
            "Y",
            Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
        )])
        .unwrap();
        assert!(batch_to_tensors(&batch, &sig).is_none(), "no column");
        let floats = signature(&[("X", DataType::Int64, vec![-1])]);
        let batch = RecordBatch::try_from_iter([(
            "X",
            Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
        )])
        .unwrap();
        assert!(batch_to_tensors(&batch, &floats).is_none(), "float to int");
    }
}
