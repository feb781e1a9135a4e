//! Scoring through the serving pipeline: the one adapter batch calls (`score_chunk`), and the
//! isolation of bad rows when a call fails because of some of its rows.

use crate::pipeline::{Pipeline, PredictError};
use ferry_features::FeatureError;
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
    let p = pipeline.predict(endpoint, rows).await?;
    Ok(p.predictions
        .into_iter()
        .map(|prediction| ScoredRow {
            prediction,
            variant: p.variant.clone(),
            model: p.model.clone(),
            version: p.version,
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
    )
}

/// A row that the pipeline rejected.
#[derive(Debug, Clone)]
pub struct FailedRow {
    /// Position within the rows given to `score_isolating`.
    pub position: usize,
    pub row: Map<String, Value>,
    pub reason: String,
}

/// Scores `rows`; when the call fails because of rows, bisects until every bad row is alone,
/// so all good rows are scored exactly as in one call and each bad row gets its own reason.
/// Returns one `Some(scored)` per good row (position-aligned) and the failed rows.
pub async fn score_isolating(
    pipeline: &Pipeline,
    endpoint: &str,
    rows: Vec<Map<String, Value>>,
) -> Result<(Vec<Option<ScoredRow>>, Vec<FailedRow>), PredictError> {
    let mut scored: Vec<Option<ScoredRow>> = vec![None; rows.len()];
    let mut failed = Vec::new();
    let mut work = vec![(0usize, rows)];
    while let Some((start, rows)) = work.pop() {
        // The pipeline consumes its rows; keep a copy only to retry halves after a failure.
        let retry = rows.clone();
        match score_chunk(pipeline, endpoint, rows).await {
            Ok(out) => {
                for (i, s) in out.into_iter().enumerate() {
                    scored[start + i] = Some(s);
                }
            }
            Err(e) if row_caused(&e) => {
                let mut retry = retry;
                if retry.len() == 1 {
                    failed.push(FailedRow {
                        position: start,
                        row: retry.pop().expect("one row"),
                        reason: e.to_string(),
                    });
                } else {
                    let right = retry.split_off(retry.len() / 2);
                    let mid = start + retry.len();
                    work.push((mid, right));
                    work.push((start, retry));
                }
            }
            Err(e) => return Err(e),
        }
    }
    failed.sort_by_key(|f| f.position);
    Ok((scored, failed))
}
