//! Scoring through the serving pipeline: the one adapter batch calls (`score_chunk`), and the
//! isolation of bad rows when a call fails because of some of its rows.

use arrow_array::RecordBatch;
use ferry_features::FeatureError;
use ferry_pipeline::rows::InvalidRows;
use ferry_pipeline::{Pipeline, PredictError, PredictOptions};
use serde_json::{Map, Value};

/// One scored row and what produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRow {
    pub prediction: Value,
    pub variant: String,
    pub model: String,
    pub version: u64,
}

/// The only place batch calls the pipeline, so the online and batch answers come from the
/// same code. Rows are `instances` objects; the result is aligned with them.
pub async fn score_chunk(
    pipeline: &Pipeline,
    endpoint: &str,
    rows: Vec<Map<String, Value>>,
) -> Result<Vec<ScoredRow>, PredictError> {
    // No forced variant: rows are assigned by the endpoint's sticky hash, exactly as online.
    let p = pipeline
        .predict(endpoint, rows, &PredictOptions::default())
        .await?;
    Ok(p.predictions
        .into_iter()
        .zip(p.variants)
        .zip(p.models)
        .zip(p.versions)
        .map(|(((prediction, variant), model), version)| ScoredRow {
            prediction,
            variant,
            model,
            version,
        })
        .collect())
}

/// Whether a failed call may be the fault of some rows (then they are isolated and the others
/// scored) rather than of the deployment (then the unit fails and is retried by a re-run).
fn row_caused(e: &PredictError) -> bool {
    matches!(
        e,
        PredictError::Input(_)
            | PredictError::Features(FeatureError::InvalidRow(_) | FeatureError::Missing(_))
    ) || matches!(e, PredictError::Transform { error, .. } if error.is_client_error())
}

/// A row that the pipeline rejected.
#[derive(Debug, Clone)]
pub struct FailedRow {
    /// Position within the rows given to `score_isolating`.
    pub position: usize,
    pub row: Map<String, Value>,
    pub reason: String,
}

/// Rows to score: JSON objects, or a record batch converted on demand (so a range can be
/// rebuilt after a failure instead of keeping a copy of every row).
pub enum Rows {
    Json(Vec<Map<String, Value>>),
    Arrow(RecordBatch),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Json(r) => r.len(),
            Rows::Arrow(b) => b.num_rows(),
        }
    }
}

/// A range of the rows being scored.
enum Part {
    Json(Vec<Map<String, Value>>),
    Arrow { offset: usize, len: usize },
}

/// Scores `rows`; when the call fails because of rows, bisects until every bad row is alone,
/// so all good rows are scored exactly as in one call and each bad row gets its own reason.
/// Returns one `Some(scored)` per good row (position-aligned) and the failed rows.
pub async fn score_isolating(
    pipeline: &Pipeline,
    endpoint: &str,
    rows: Rows,
) -> Result<(Vec<Option<ScoredRow>>, Vec<FailedRow>), PredictError> {
    let mut scored: Vec<Option<ScoredRow>> = vec![None; rows.len()];
    let mut failed = Vec::new();
    let (batch, first) = match rows {
        Rows::Json(r) => (None, Part::Json(r)),
        Rows::Arrow(b) => {
            let len = b.num_rows();
            (Some(b), Part::Arrow { offset: 0, len })
        }
    };
    let to_rows = |offset: usize, len: usize| -> Result<Vec<Map<String, Value>>, PredictError> {
        let b = batch.as_ref().expect("arrow parts come with a batch");
        ferry_pipeline::arrow_rows::batch_to_rows(&b.slice(offset, len))
            .map_err(|e| PredictError::Input(InvalidRows(e)))
    };
    let mut work = vec![(0usize, first)];
    while let Some((start, part)) = work.pop() {
        // The pipeline consumes its rows: JSON rows are copied to retry halves after a
        // failure; Arrow rows are rebuilt from the batch instead.
        let (call, retry) = match part {
            Part::Json(r) => {
                let copy = r.clone();
                (r, Part::Json(copy))
            }
            Part::Arrow { offset, len } => (to_rows(offset, len)?, Part::Arrow { offset, len }),
        };
        let n = call.len();
        match score_chunk(pipeline, endpoint, call).await {
            Ok(out) => {
                for (i, s) in out.into_iter().enumerate() {
                    scored[start + i] = Some(s);
                }
            }
            Err(e) if row_caused(&e) => {
                if n == 1 {
                    let row = match retry {
                        Part::Json(mut r) => r.pop().expect("one row"),
                        Part::Arrow { offset, len } => {
                            to_rows(offset, len)?.pop().expect("one row")
                        }
                    };
                    failed.push(FailedRow {
                        position: start,
                        row,
                        reason: e.to_string(),
                    });
                } else {
                    let half = n / 2;
                    let (left, right) = match retry {
                        Part::Json(mut r) => {
                            let right = r.split_off(half);
                            (Part::Json(r), Part::Json(right))
                        }
                        Part::Arrow { offset, len } => (
                            Part::Arrow { offset, len: half },
                            Part::Arrow {
                                offset: offset + half,
                                len: len - half,
                            },
                        ),
                    };
                    work.push((start + half, right));
                    work.push((start, left));
                }
            }
            Err(e) => return Err(e),
        }
    }
    failed.sort_by_key(|f| f.position);
    Ok((scored, failed))
}

/// A chunk scored column-wise: the prediction columns and who produced each row, aligned with
/// the chunk's record batch.
pub struct ScoredColumns {
    pub predictions: Vec<arrow_array::ArrayRef>,
    pub variants: Vec<String>,
    pub models: Vec<String>,
    pub versions: Vec<u64>,
}

/// What scoring a chunk gave.
pub enum Scored {
    Rows(Vec<Option<ScoredRow>>, Vec<FailedRow>),
    Columns(ScoredColumns),
}

/// Scores a Parquet chunk without turning its rows into JSON when the endpoint and columns
/// allow it (`Pipeline::predict_columns`); None means: use the row path. The model's outputs
/// become the job's typed columns directly, or through their JSON form where a column type is
/// not covered, so both give the same file.
pub async fn score_columns(
    pipeline: &Pipeline,
    endpoint: &str,
    batch: &RecordBatch,
    columns: &super::columns::PredictionColumns,
) -> Result<Option<Scored>, PredictError> {
    let Some(groups) = pipeline.predict_columns(endpoint, batch).await? else {
        return Ok(None);
    };
    let n = batch.num_rows();
    let typed: Option<Vec<Vec<arrow_array::ArrayRef>>> = groups
        .iter()
        .map(|g| match &g.post {
            None => columns.tensor_arrays(&g.outputs),
            Some(answer) => columns.frame_arrays(answer),
        })
        .collect();
    let Some(typed) = typed else {
        let mut scored: Vec<Option<ScoredRow>> = vec![None; n];
        for g in groups {
            let predictions = g.predictions()?;
            for (&row, prediction) in g.rows.iter().zip(predictions) {
                scored[row] = Some(ScoredRow {
                    prediction,
                    variant: g.variant.clone(),
                    model: g.model.clone(),
                    version: g.version,
                });
            }
        }
        return Ok(Some(Scored::Rows(scored, Vec::new())));
    };
    let mut variants = vec![String::new(); n];
    let mut models = vec![String::new(); n];
    let mut versions = vec![0u64; n];
    // (group, position in group) of each row, for interleaving the groups' columns.
    let mut from = vec![(0usize, 0usize); n];
    for (gi, g) in groups.iter().enumerate() {
        for (k, &row) in g.rows.iter().enumerate() {
            variants[row] = g.variant.clone();
            models[row] = g.model.clone();
            versions[row] = g.version;
            from[row] = (gi, k);
        }
    }
    let predictions = if typed.len() == 1 {
        typed.into_iter().next().unwrap_or_default()
    } else {
        (0..columns.columns.len())
            .map(|c| {
                let parts: Vec<&dyn arrow_array::Array> =
                    typed.iter().map(|g| g[c].as_ref()).collect();
                arrow_select::interleave::interleave(&parts, &from)
                    .map_err(|e| PredictError::ModelOutput(e.to_string()))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(Some(Scored::Columns(ScoredColumns {
        predictions,
        variants,
        models,
        versions,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_answering_the_wrong_shape_is_not_a_row_error() {
        assert!(!row_caused(&PredictError::ModelOutput(
            "model m@1 answered output `p` with shape [1, 2] for 8 rows".into()
        )));
        assert!(row_caused(&PredictError::Input(InvalidRows(
            "input `X`: expected 30 values".into()
        ))));
    }
}
