//! The pipeline over Arrow columns, for the endpoints that need no row-wise work: the model
//! inputs are built from the record batch's buffers (or, for a model with `features`, joined
//! from the entity key column, the request columns and one store call) and the outputs stay
//! tensors, so a Parquet chunk never becomes JSON. Endpoints with transforms, shadows or
//! capture, and columns that do not map exactly onto the model's inputs, take the row path
//! (`Pipeline::predict`), which gives the same answers row by row.

use super::arrow_rows::array_value;
use super::{Pipeline, PredictError, check_outputs, joined_input};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::DataType as ArrowType;
use ferry_features::{FeatureError, JoinPlan};
use ferry_runtimes::{DataType, Signature, Tensor, TensorData};
use serde_json::Value;
use std::collections::HashMap;

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
}

impl Pipeline {
    /// Scores `batch` column-wise, or None when the endpoint or the columns need the row path
    /// (nothing has been sent to a model then). Variants are assigned by the same sticky hash
    /// of the same key values as the row path.
    pub async fn predict_columns(
        &self,
        endpoint: &str,
        batch: &RecordBatch,
    ) -> Result<Option<Vec<GroupRun>>, PredictError> {
        let ep = self.endpoint(endpoint)?;
        let n = batch.num_rows();
        if n == 0
            || !ep.pre.is_empty()
            || !ep.post.is_empty()
            || ep.shadow.is_some()
            || ep.capture.is_some()
        {
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
        // Every group is checked before any model runs, so a fallback wastes no engine time.
        let mut planned = Vec::with_capacity(groups.len());
        for (v, rows) in groups {
            let model = self.core.models.lookup_ref(&ep.variants[v].model)?;
            if !model.manifest.preprocess.is_empty() {
                return Ok(None);
            }
            let part = if rows.len() == n {
                batch.clone()
            } else {
                let indices = UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
                arrow_select::take::take_record_batch(batch, &indices)
                    .map_err(|e| PredictError::Misconfigured(e.to_string()))?
            };
            let inputs = match self.core.plan(&model)? {
                Some(plan) => self.join_columns(&plan, &part, model.signature()).await?,
                None => batch_to_tensors(&part, model.signature()),
            };
            let Some(inputs) = inputs else {
                return Ok(None);
            };
            let Ok(inputs) = model.signature().validate_inputs(inputs) else {
                return Ok(None);
            };
            planned.push((v, rows, model, inputs));
        }
        let mut runs = Vec::with_capacity(planned.len());
        for (v, rows, model, inputs) in planned {
            let outputs = model.queue.submit(inputs).await?;
            check_outputs(&model, &outputs, rows.len())?;
            runs.push(GroupRun {
                rows,
                variant: ep.variants[v].name.clone(),
                model: model.name.clone(),
                version: model.version,
                outputs,
            });
        }
        Ok(Some(runs))
    }

    /// The model input of a `features` model from columns: the entity key column and the
    /// request columns are read value by value as the row path reads its rows (one store call).
    /// None where the row path would report rows (a missing or unusable column or key, an
    /// entity without values under `on_missing: error`).
    async fn join_columns(
        &self,
        plan: &JoinPlan,
        part: &RecordBatch,
        signature: &Signature,
    ) -> Result<Option<Vec<Tensor>>, PredictError> {
        let rows = part.num_rows();
        let request: HashMap<&str, &ArrayRef> = plan
            .request_fields()
            .into_iter()
            .filter_map(|field| Some((field, part.column_by_name(field)?)))
            .collect();
        let key = part.column_by_name(&plan.join_key);
        let value = |column: &ArrayRef, i: usize| array_value(column.as_ref(), i).ok();
        let joined = plan
            .join_columns(
                self.core.features.as_deref(),
                rows,
                |i, field| value(request.get(field)?, i),
                |i| value(key?, i),
            )
            .await;
        let joined = match joined {
            Ok(joined) => joined,
            Err(FeatureError::InvalidRow(_) | FeatureError::Missing(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(vec![joined_input(
            signature,
            rows,
            joined.columns,
            joined.matrix,
        )?]))
    }
}

/// The model inputs from the columns named like them: a numeric column is `[rows]`, a list
/// column whose rows all have k numeric values is `[rows, k]`. None where the row path would
/// decide differently or report a row (nulls, NaN or infinite values, ragged lists, integers
/// that do not fit, other types), so only exact equivalents take this path.
pub fn batch_to_tensors(batch: &RecordBatch, signature: &Signature) -> Option<Vec<Tensor>> {
    let rows = batch.num_rows();
    let mut tensors = Vec::with_capacity(signature.inputs.len());
    for spec in &signature.inputs {
        let column = batch.column_by_name(&spec.name)?;
        if column.null_count() > 0 {
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
        if values.null_count() > 0 {
            return None;
        }
        let data = numbers(&values, spec.datatype)?;
        tensors.push(Tensor::new(spec.name.clone(), shape, data).ok()?);
    }
    Some(tensors)
}

/// Converts as the row path does (Arrow → JSON number → the input's type): floats must be
/// finite (JSON has no NaN), integers reach floating-point inputs through f64.
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
    let finite32 = |v: &[f32]| v.iter().all(|x| x.is_finite());
    let finite64 = |v: &[f64]| v.iter().all(|x| x.is_finite());
    match to {
        DataType::Fp32 => match values.data_type() {
            ArrowType::Float32 => {
                let v = values.as_primitive::<Float32Type>().values();
                finite32(v).then(|| TensorData::Fp32(v.to_vec()))
            }
            ArrowType::Float64 => {
                let v = values.as_primitive::<Float64Type>().values();
                finite64(v).then(|| TensorData::Fp32(v.iter().map(|&x| x as f32).collect()))
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
    fn what_the_row_path_would_judge_row_by_row_is_left_to_it() {
        let sig = signature(&[("X", DataType::Fp32, vec![-1, 3])]);
        let nan = fixed_list(&[[1.0, f32::NAN, 3.0]]);
        let batch = RecordBatch::try_from_iter([("X", nan)]).unwrap();
        assert!(batch_to_tensors(&batch, &sig).is_none(), "NaN");
        let mut ragged = ListBuilder::new(Float32Builder::new());
        ragged.values().append_slice(&[1.0, 2.0, 3.0]);
        ragged.append(true);
        ragged.values().append_slice(&[1.0, 2.0]);
        ragged.append(true);
        let batch =
            RecordBatch::try_from_iter([("X", Arc::new(ragged.finish()) as ArrayRef)]).unwrap();
        assert!(batch_to_tensors(&batch, &sig).is_none(), "ragged");
        let nulls = Arc::new(Float64Array::from(vec![Some(1.0), None])) as ArrayRef;
        let batch = RecordBatch::try_from_iter([("X", nulls)]).unwrap();
        assert!(batch_to_tensors(&batch, &sig).is_none(), "null");
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
