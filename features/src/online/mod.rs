//! The online store: the newest value of every (view, entity), read at serving time.
//! `RedisStore` is the production store; `MemoryStore` is an in-process store loaded from the
//! offline files (the embedded default: no Redis needed). `OnlineFeatures` adds what both
//! share: TTL, defaults, the per-request timeout and the `on_missing` policy.

pub mod memory;
pub mod redis;

use crate::FeatureError;
use crate::repo::{FeatureRef, FeatureRepo, OnlineFormat};
use crate::value::FeatureValue;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use memory::MemoryStore;
pub use redis::RedisStore;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the store holds for one (view, entity): event time and every feature of the view in
/// declared order (`None` = null / absent field).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub ts_ms: i64,
    pub values: Vec<Option<FeatureValue>>,
}

/// One (view index, entity key) to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub view: usize,
    pub key: String,
}

/// A store of the newest row per (view, entity).
pub trait OnlineStore: Send + Sync {
    /// Reads all `keys` at once (the Redis store: one pipelined round trip); one answer per
    /// key, in order, `None` when the store has no row.
    fn get_many<'a>(
        &'a self,
        repo: &'a FeatureRepo,
        keys: &'a [RowKey],
    ) -> BoxFuture<'a, Result<Vec<Option<StoredRow>>, FeatureError>>;

    /// `redis` or `memory`, for logs.
    fn kind(&self) -> &'static str;
}

/// What to do when a value is missing, stale, or the store is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// Use the feature's `default` (null → NaN in a model input) and say so in the response.
    #[default]
    Default,
    /// Fail the request (404 for missing entities, 503 when the store is unavailable).
    Error,
}

/// Why a value is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Read from the store and fresh.
    Present,
    /// The store has no row (or a null value) for this entity.
    Missing,
    /// Older than the view's TTL.
    Stale,
    /// The store did not answer in time.
    Unavailable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Present => "present",
            Status::Missing => "missing",
            Status::Stale => "stale",
            Status::Unavailable => "unavailable",
        }
    }
}

/// One looked-up value.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The value served: the stored one when present, else the feature's default.
    pub value: Option<FeatureValue>,
    pub status: Status,
    /// Event time of the stored row, when there was one.
    pub ts_ms: Option<i64>,
}

/// Values for entities × feature refs.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureTable {
    /// `cells[entity][ref]`.
    pub cells: Vec<Vec<Cell>>,
    /// Cells that got a default (status other than present).
    pub defaulted: usize,
    /// Counts per (view index, status), for metrics.
    pub counts: HashMap<(usize, Status), u64>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The online side of the repo: store + timeout + policy.
pub struct OnlineFeatures {
    pub repo: Arc<FeatureRepo>,
    pub store: Arc<dyn OnlineStore>,
    pub timeout: Duration,
    pub on_missing: OnMissing,
}

impl OnlineFeatures {
    /// Looks up `refs` for each of `entity_keys` (all refs' views must be keyed by the same
    /// entity) in one store call bounded by `timeout`, then applies TTL, defaults and policy.
    pub async fn lookup(
        &self,
        entity_keys: &[String],
        refs: &[FeatureRef],
    ) -> Result<FeatureTable, FeatureError> {
        self.lookup_with(entity_keys, refs, self.on_missing).await
    }

    /// `lookup` with an explicit policy (`POST /v1/features` reports statuses instead of failing).
    pub async fn lookup_with(
        &self,
        entity_keys: &[String],
        refs: &[FeatureRef],
        on_missing: OnMissing,
    ) -> Result<FeatureTable, FeatureError> {
        self.lookup_keyed(
            entity_keys.len(),
            &|_, row| &entity_keys[row],
            refs,
            on_missing,
        )
        .await
    }

    /// Looks up `refs` for `rows` entities where each view may be keyed differently:
    /// `key_of(view, row)` is row `row`'s entity key text for view `view` (a compound key's
    /// text for a compound view). Still one store call for every view and row.
    pub async fn lookup_keyed<'k>(
        &self,
        rows: usize,
        key_of: &(dyn Fn(usize, usize) -> &'k str + Sync),
        refs: &[FeatureRef],
        on_missing: OnMissing,
    ) -> Result<FeatureTable, FeatureError> {
        let mut views: Vec<usize> = refs.iter().map(|r| r.view).collect();
        views.sort_unstable();
        views.dedup();
        let mut row_keys = Vec::with_capacity(views.len() * rows);
        let mut index: HashMap<(usize, &str), usize> = HashMap::new();
        for &view in &views {
            for row in 0..rows {
                let key = key_of(view, row);
                index.entry((view, key)).or_insert_with(|| {
                    row_keys.push(RowKey {
                        view,
                        key: key.to_string(),
                    });
                    row_keys.len() - 1
                });
            }
        }
        let fetched =
            match tokio::time::timeout(self.timeout, self.store.get_many(&self.repo, &row_keys))
                .await
            {
                Ok(Ok(rows)) => Some(rows),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Online store lookup failed.");
                    if on_missing == OnMissing::Error {
                        return Err(e);
                    }
                    None
                }
                Err(_) => {
                    let e = FeatureError::Unavailable(format!(
                        "no answer within the feature timeout of {:?} ({} store)",
                        self.timeout,
                        self.store.kind()
                    ));
                    tracing::debug!(error = %e, "Online store lookup timed out.");
                    if on_missing == OnMissing::Error {
                        return Err(e);
                    }
                    None
                }
            };
        let now = now_ms();
        let mut table = FeatureTable {
            cells: Vec::with_capacity(rows),
            defaulted: 0,
            counts: HashMap::new(),
        };
        let mut missing = Vec::new();
        for entity_row in 0..rows {
            let mut row = Vec::with_capacity(refs.len());
            for r in refs {
                let key = key_of(r.view, entity_row);
                let view = &self.repo.views[r.view];
                let feature = self.repo.feature(*r);
                let stored = fetched
                    .as_ref()
                    .and_then(|rows| rows[index[&(r.view, key)]].as_ref());
                let (status, value, ts) = match (&fetched, stored) {
                    (None, _) => (Status::Unavailable, None, None),
                    (Some(_), None) => (Status::Missing, None, None),
                    (Some(_), Some(s)) => {
                        // Feast applies a view's TTL when it materializes, never when it reads:
                        // in its layout a stored value is served however old it is.
                        let stale = self.repo.online_format == OnlineFormat::Ferry
                            && view
                                .ttl
                                .is_some_and(|ttl| now - s.ts_ms > ttl.as_millis() as i64);
                        match (&s.values[r.feature], stale) {
                            (_, true) => (Status::Stale, None, Some(s.ts_ms)),
                            (None, false) => (Status::Missing, None, Some(s.ts_ms)),
                            (Some(v), false) => (Status::Present, Some(v.clone()), Some(s.ts_ms)),
                        }
                    }
                };
                *table.counts.entry((r.view, status)).or_default() += 1;
                let value = if status == Status::Present {
                    value
                } else {
                    table.defaulted += 1;
                    if missing.len() < 5 {
                        missing.push(format!(
                            "{}.{} for `{key}` ({})",
                            view.name,
                            feature.name,
                            status.as_str()
                        ));
                    }
                    feature.default.clone()
                };
                row.push(Cell {
                    value,
                    status,
                    ts_ms: ts,
                });
            }
            table.cells.push(row);
        }
        if on_missing == OnMissing::Error && table.defaulted > 0 {
            return Err(FeatureError::Missing(format!(
                "{} feature value(s) missing or stale and `on_missing` is `error`: {}{}",
                table.defaulted,
                missing.join(", "),
                if table.defaulted > missing.len() {
                    ", …"
                } else {
                    ""
                }
            )));
        }
        Ok(table)
    }
}
