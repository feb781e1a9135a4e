//! The serving join: a model manifest's `features` section (entity + columns) turns request
//! rows into a row-major numeric matrix in the declared column order. A pipeline stage used by
//! business endpoints (and, later, batch mode).

use crate::FeatureError;
use crate::online::{FeatureTable, OnlineFeatures};
use crate::repo::{FeatureRef, FeatureRepo};
use ferry_registry::Manifest;
use ferry_runtimes::DataType;
use serde_json::{Map, Value};

/// The prefix of columns taken from the request row itself.
pub const REQUEST_PREFIX: &str = "request.";

#[derive(Debug, Clone, PartialEq)]
enum Column {
    /// Index into `JoinPlan::refs`.
    Feature(usize),
    Request(String),
}

/// Where one column of the joined matrix comes from, by the field name a named row holds it
/// under (see [`JoinPlan::name_features`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// `request.<field>`: the request's own field (a number or boolean, required).
    Request(&'a str),
    /// `view.feature`: the looked-up feature (missing without default reads as NaN).
    Feature(&'a str),
}

/// A validated `features` section: built once per model version, reused per request.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinPlan {
    /// The request field holding the entity key (the entity's join key).
    pub join_key: String,
    columns: Vec<Column>,
    /// Distinct feature refs, in first-use order.
    pub refs: Vec<FeatureRef>,
    /// `view.feature` of each ref: the field name feature values get in a named row.
    pub names: Vec<String>,
}

/// The joined rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// `rows × columns` values, row-major; a missing value without a default is NaN.
    pub matrix: Vec<f64>,
    pub columns: usize,
    pub table: Option<FeatureTable>,
}

/// The join plan of a model version's `features` section (None without one), checked against
/// the server's feature repo and the model's input: what cannot work is refused when the
/// version loads, not answered with an error per request. Without a repo only `request.*`
/// columns are allowed.
pub fn model_join_plan(
    repo: Option<&FeatureRepo>,
    name: &str,
    version: u64,
    manifest: &Manifest,
) -> Result<Option<JoinPlan>, String> {
    let Some(spec) = &manifest.features else {
        return Ok(None);
    };
    let plan = JoinPlan::new(repo, &spec.entity, &spec.columns)
        .map_err(|e| format!("model {name}@{version}: {e}"))?;
    let signature = manifest.signature();
    let inputs = &signature.inputs;
    let fits = inputs.len() == 1
        && matches!(inputs[0].datatype, DataType::Fp32 | DataType::Fp64)
        && inputs[0].shape.len() == 2
        && (inputs[0].shape[1] < 0 || inputs[0].shape[1] as usize == plan.width());
    if !fits {
        return Err(format!(
            "model {name}@{version}: its `features` section has {} columns, so it needs one FP32/FP64 input of shape [-1, {}]; it has {:?}",
            plan.width(),
            plan.width(),
            inputs
                .iter()
                .map(|i| (i.name.as_str(), i.datatype, &i.shape))
                .collect::<Vec<_>>()
        ));
    }
    Ok(Some(plan))
}

impl JoinPlan {
    /// `entity` is an entity name or its join key; `columns` are `view.feature` or
    /// `request.<field>`. Every view used must be keyed by that entity, and feature values must
    /// be numeric (they become model inputs). Without a repo (the server has no `features`
    /// config) only `request.<field>` columns are allowed: they need no store, and `entity` is
    /// taken as the join key.
    pub fn new(
        repo: Option<&FeatureRepo>,
        entity: &str,
        columns: &[String],
    ) -> Result<JoinPlan, FeatureError> {
        let plan_err = |m: String| FeatureError::Plan(format!("model `features`: {m}"));
        let ent = match repo {
            Some(repo) => Some(
                repo.entities
                    .iter()
                    .find(|e| e.name == entity || e.join_key == entity)
                    .ok_or_else(|| {
                        plan_err(format!(
                            "`entity` {entity:?} is not an entity or join key of the feature repo ({:?})",
                            repo.entities
                                .iter()
                                .map(|e| &e.join_key)
                                .collect::<Vec<_>>()
                        ))
                    })?,
            ),
            None => None,
        };
        if columns.is_empty() {
            return Err(plan_err("`columns` is empty".into()));
        }
        let mut plan = JoinPlan {
            join_key: ent.map_or(entity, |e| e.join_key.as_str()).to_string(),
            columns: Vec::with_capacity(columns.len()),
            refs: Vec::new(),
            names: Vec::new(),
        };
        for (i, c) in columns.iter().enumerate() {
            if let Some(field) = c.strip_prefix(REQUEST_PREFIX) {
                if field.is_empty() {
                    return Err(plan_err(format!("`columns[{i}]` names no request field")));
                }
                plan.columns.push(Column::Request(field.to_string()));
                continue;
            }
            let (Some(repo), Some(ent)) = (repo, ent) else {
                return Err(plan_err(format!(
                    "`columns[{i}]` {c:?} reads a feature view, but the server has no `features` config (feature repo); add `features: {{repo: features.yaml}}` to the server config, or list only `request.<field>` columns"
                )));
            };
            let r = repo
                .resolve(c)
                .map_err(|e| plan_err(format!("`columns[{i}]`: {e}")))?;
            let view = &repo.views[r.view];
            if view.is_compound() {
                return Err(plan_err(format!(
                    "`columns[{i}]` {c:?} belongs to view `{}` keyed by several join keys {:?}; a model's features are looked up by one entity (read compound-key views through POST /v1/features)",
                    view.name,
                    view.join_keys()
                )));
            }
            if view.entity.name != ent.name {
                return Err(plan_err(format!(
                    "`columns[{i}]` {c:?} belongs to view `{}` keyed by entity `{}`, but the model's entity is `{}`",
                    view.name, view.entity.name, ent.name
                )));
            }
            if !repo.feature(r).dtype.is_numeric() {
                return Err(plan_err(format!(
                    "`columns[{i}]` {c:?} is a {} feature; model inputs must be numeric",
                    repo.feature(r).dtype.as_str()
                )));
            }
            let k = match plan.refs.iter().position(|x| *x == r) {
                Some(k) => k,
                None => {
                    plan.refs.push(r);
                    plan.names.push(c.clone());
                    plan.refs.len() - 1
                }
            };
            plan.columns.push(Column::Feature(k));
        }
        Ok(plan)
    }

    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// The entity key of each row (strings as-is, integers in decimal).
    pub fn entity_keys(&self, rows: &[Map<String, Value>]) -> Result<Vec<String>, FeatureError> {
        rows.iter()
            .enumerate()
            .map(|(i, row)| self.entity_key(row.get(&self.join_key), i))
            .collect()
    }

    /// Row `i`'s entity key from the value of its join key field.
    fn entity_key(&self, value: Option<&Value>, i: usize) -> Result<String, FeatureError> {
        match value {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            Some(other) => Err(FeatureError::InvalidRow(format!(
                "instances[{i}].{} must be a string or integer entity key, got {other}",
                self.join_key
            ))),
            None => Err(FeatureError::InvalidRow(format!(
                "instances[{i}] has no `{}` (the entity key the model's features are looked up by)",
                self.join_key
            ))),
        }
    }

    /// Looks up the features of every row in one store call and assembles the matrix.
    /// `online` may be None only for a request-only plan.
    pub async fn join(
        &self,
        online: Option<&OnlineFeatures>,
        rows: &[Map<String, Value>],
    ) -> Result<Joined, FeatureError> {
        self.assemble(
            online,
            rows.len(),
            |i, field| request_number(rows[i].get(field), field, i),
            || self.entity_keys(rows),
        )
        .await
    }

    /// The request fields the plan reads (its `request.<field>` columns), each once.
    pub fn request_fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for c in &self.columns {
            if let Column::Request(field) = c
                && !out.contains(&field.as_str())
            {
                out.push(field);
            }
        }
        out
    }

    /// `join` for rows held as columns: `request(i, field)` is row `i`'s value of a request
    /// field and `key(i)` its join key's value (None: absent), read as `join` reads rows.
    pub async fn join_columns(
        &self,
        online: Option<&OnlineFeatures>,
        rows: usize,
        request: impl Fn(usize, &str) -> Option<Value>,
        key: impl Fn(usize) -> Option<Value>,
    ) -> Result<Joined, FeatureError> {
        self.assemble(
            online,
            rows,
            |i, field| request_number(request(i, field).as_ref(), field, i),
            || {
                (0..rows)
                    .map(|i| self.entity_key(key(i).as_ref(), i))
                    .collect()
            },
        )
        .await
    }

    /// Request values first (a client mistake costs no I/O), then one store call for the
    /// features of every row.
    async fn assemble(
        &self,
        online: Option<&OnlineFeatures>,
        rows: usize,
        request: impl Fn(usize, &str) -> Result<f64, FeatureError>,
        keys: impl FnOnce() -> Result<Vec<String>, FeatureError>,
    ) -> Result<Joined, FeatureError> {
        let width = self.columns.len();
        let mut matrix = vec![f64::NAN; rows * width];
        for i in 0..rows {
            for (j, c) in self.columns.iter().enumerate() {
                if let Column::Request(field) = c {
                    matrix[i * width + j] = request(i, field)?;
                }
            }
        }
        let table = if self.refs.is_empty() {
            None
        } else {
            let keys = keys()?;
            let table = store(online)?.lookup(&keys, &self.refs).await?;
            for (i, cells) in table.cells.iter().enumerate() {
                for (j, c) in self.columns.iter().enumerate() {
                    if let Column::Feature(k) = c {
                        matrix[i * width + j] = cells[*k]
                            .value
                            .as_ref()
                            .and_then(|v| v.as_f64())
                            .unwrap_or(f64::NAN);
                    }
                }
            }
            Some(table)
        };
        Ok(Joined {
            matrix,
            columns: width,
            table,
        })
    }
}

impl JoinPlan {
    /// The source of each matrix column, in order.
    pub fn sources(&self) -> Vec<Source<'_>> {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Request(field) => Source::Request(field),
                Column::Feature(k) => Source::Feature(&self.names[*k]),
            })
            .collect()
    }

    /// [`JoinPlan::lookup`] for rows held as columns: `key(i)` is row `i`'s join key value
    /// (None: absent), read as `lookup` reads rows.
    pub async fn lookup_columns(
        &self,
        online: Option<&OnlineFeatures>,
        rows: usize,
        key: impl Fn(usize) -> Option<Value>,
    ) -> Result<Option<FeatureTable>, FeatureError> {
        if self.refs.is_empty() {
            return Ok(None);
        }
        let keys = (0..rows)
            .map(|i| self.entity_key(key(i).as_ref(), i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(store(online)?.lookup(&keys, &self.refs).await?))
    }

    /// Looks up the feature values of every row (one store call), without assembling the
    /// matrix: for pipelines that transform named rows before the model. None when the plan
    /// reads only request fields.
    pub async fn lookup(
        &self,
        online: Option<&OnlineFeatures>,
        rows: &[Map<String, Value>],
    ) -> Result<Option<FeatureTable>, FeatureError> {
        if self.refs.is_empty() {
            return Ok(None);
        }
        let keys = self.entity_keys(rows)?;
        Ok(Some(store(online)?.lookup(&keys, &self.refs).await?))
    }

    /// Writes each row's feature values into the row as `view.feature` fields (null when
    /// missing without a default), so transforms and capture see them by name.
    pub fn name_features(&self, rows: &mut [Map<String, Value>], table: &FeatureTable) {
        for (row, cells) in rows.iter_mut().zip(&table.cells) {
            for (name, cell) in self.names.iter().zip(cells) {
                let value = cell
                    .value
                    .as_ref()
                    .map(|v| v.to_json())
                    .unwrap_or(Value::Null);
                row.insert(name.clone(), value);
            }
        }
    }

    /// The matrix from named rows: `request.<field>` reads `<field>`, `view.feature` reads the
    /// field of that name (null → NaN, as a missing value without default).
    pub fn matrix_from_rows(&self, rows: &[Map<String, Value>]) -> Result<Vec<f64>, FeatureError> {
        let width = self.columns.len();
        let mut matrix = vec![f64::NAN; rows.len() * width];
        for (i, row) in rows.iter().enumerate() {
            for (j, c) in self.columns.iter().enumerate() {
                matrix[i * width + j] = match c {
                    Column::Request(field) => request_number(row.get(field), field, i)?,
                    Column::Feature(k) => match row.get(&self.names[*k]) {
                        None | Some(Value::Null) => f64::NAN,
                        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
                        Some(other) => {
                            return Err(FeatureError::InvalidRow(format!(
                                "instances[{i}].{} must be a number after preprocessing, got {other}",
                                self.names[*k]
                            )));
                        }
                    },
                };
            }
        }
        Ok(matrix)
    }
}

fn store(online: Option<&OnlineFeatures>) -> Result<&OnlineFeatures, FeatureError> {
    online.ok_or_else(|| {
        FeatureError::Plan(
            "the model reads feature views but the server has no feature store; add `features: {repo: features.yaml}` to the server config".into(),
        )
    })
}

/// Row `i`'s value of request field `field` as a model input number.
fn request_number(value: Option<&Value>, field: &str, i: usize) -> Result<f64, FeatureError> {
    match value {
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| {
            FeatureError::InvalidRow(format!("instances[{i}].{field} is not a finite number"))
        }),
        Some(Value::Bool(b)) => Ok(if *b { 1.0 } else { 0.0 }),
        Some(other) => Err(FeatureError::InvalidRow(format!(
            "instances[{i}].{field} must be a number, got {other}"
        ))),
        None => Err(FeatureError::InvalidRow(format!(
            "instances[{i}] has no `{field}` (the model reads column `request.{field}`)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::online::{MemoryStore, OnMissing, Status};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    const REPO: &str = r#"
project: shop
entities:
  - {name: user, join_key: user_id}
  - {name: shop, join_key: shop_id}
views:
  - name: user_stats
    entity: user
    features:
      - {name: visits_7d, dtype: float32, default: 0}
      - {name: spend_30d, dtype: float64, default: -1}
      - {name: country, dtype: string}
    source: {path: none.parquet}
  - name: shop_stats
    entity: shop
    features: [{name: rating, dtype: float32}]
    source: {path: none.parquet}
"#;

    fn repo() -> FeatureRepo {
        FeatureRepo::parse(REPO, Path::new("features.yaml")).unwrap()
    }

    fn rows(json: &str) -> Vec<Map<String, Value>> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn plans_are_validated() {
        let r = repo();
        let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let plan = JoinPlan::new(
            Some(&r),
            "user_id",
            &cols(&["user_stats.visits_7d", "request.amount"]),
        );
        assert_eq!(plan.unwrap().width(), 2);
        for (entity, columns, needle) in [
            ("nobody", vec!["request.a"], "`entity`"),
            ("user", vec!["user_stats.country"], "string feature"),
            ("user", vec!["shop_stats.rating"], "keyed by entity `shop`"),
            ("user", vec!["user_stats.nope"], "`columns[0]`"),
            ("user", vec!["request."], "`columns[0]`"),
        ] {
            let e = JoinPlan::new(Some(&r), entity, &cols(&columns))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    #[tokio::test]
    async fn joins_in_column_order_with_defaults() {
        let r = Arc::new(repo());
        let mut store = MemoryStore::default();
        store.insert(
            crate::online::RowKey {
                view: 0,
                key: "u1".into(),
            },
            crate::online::StoredRow {
                ts_ms: crate::online::now_ms(),
                values: vec![
                    Some(crate::FeatureValue::Float(3.0)),
                    Some(crate::FeatureValue::Float(7.5)),
                    None,
                ],
            },
        );
        let online = OnlineFeatures {
            repo: r.clone(),
            store: Arc::new(store),
            timeout: Duration::from_secs(1),
            on_missing: OnMissing::Default,
        };
        let columns: Vec<String> = [
            "request.amount",
            "user_stats.spend_30d",
            "user_stats.visits_7d",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let plan = JoinPlan::new(Some(&r), "user", &columns).unwrap();
        let joined = plan
            .join(
                Some(&online),
                &rows(r#"[{"user_id": "u1", "amount": 2}, {"user_id": "u9", "amount": 1.5}]"#),
            )
            .await
            .unwrap();
        assert_eq!(joined.matrix, vec![2.0, 7.5, 3.0, 1.5, -1.0, 0.0]);
        let table = joined.table.unwrap();
        assert_eq!(table.defaulted, 2);
        assert_eq!(table.cells[1][0].status, Status::Missing);

        let strict = OnlineFeatures {
            on_missing: OnMissing::Error,
            ..online
        };
        let e = plan
            .join(Some(&strict), &rows(r#"[{"user_id": "u9", "amount": 1}]"#))
            .await
            .unwrap_err();
        assert!(matches!(e, FeatureError::Missing(_)), "{e}");
        let e = plan
            .join(Some(&strict), &rows(r#"[{"user_id": "u1"}]"#))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no `amount`"), "{e}");
    }

    #[tokio::test]
    async fn request_only_plans_need_no_repo_store_or_entity_key() {
        let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let plan = JoinPlan::new(None, "user_id", &cols(&["request.b", "request.a"])).unwrap();
        assert!(plan.refs.is_empty(), "no feature view is read");
        let joined = plan
            .join(None, &rows(r#"[{"a": 1, "b": 2.5}, {"a": true, "b": -1}]"#))
            .await
            .unwrap();
        assert_eq!(joined.matrix, vec![2.5, 1.0, -1.0, 1.0]);
        assert!(joined.table.is_none());
        assert!(
            plan.lookup(None, &rows(r#"[{"a": 1}]"#))
                .await
                .unwrap()
                .is_none()
        );

        let e = JoinPlan::new(
            None,
            "user_id",
            &cols(&["request.a", "user_stats.visits_7d"]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`columns[1]`") && e.contains("features.yaml"),
            "{e}"
        );
        let e = JoinPlan::new(None, "user_id", &cols(&["request."]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no request field"), "{e}");
    }
}
