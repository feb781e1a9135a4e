//! An in-process online store holding the newest row per (view, entity), loaded from the
//! offline files. Serves the embedded demo and single-node setups without Redis.

use super::{BoxFuture, OnlineStore, RowKey, StoredRow};
use crate::FeatureError;
use crate::offline::parquet::DEFAULT_BATCH_ROWS;
use crate::offline::{OfflineSource, scan};
use crate::repo::{FeatureRepo, OnlineFormat};
use ferry_registry::S3Options;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: HashMap<RowKey, StoredRow>,
}

impl MemoryStore {
    /// Reads every view's offline files (local or S3, `s3` being the registry's S3 settings)
    /// and keeps the newest row per entity (a row replaces another only if its event time is
    /// strictly newer, as in Redis materialization). Files are streamed: memory holds the
    /// store plus a couple of record batches.
    pub async fn load(repo: &FeatureRepo, s3: &S3Options) -> Result<MemoryStore, FeatureError> {
        let mut store = MemoryStore::default();
        for (vi, view) in repo.views.iter().enumerate() {
            let source = OfflineSource::open(view, s3).await?;
            // In Feast's format the TTL applies at materialization (here: loading), not reads.
            let expired_before = match (repo.online_format, view.ttl) {
                (OnlineFormat::Feast, Some(ttl)) => Some(super::now_ms() - ttl.as_millis() as i64),
                _ => None,
            };
            scan(view, &source, DEFAULT_BATCH_ROWS, |batch| {
                for (row, key) in batch.keys.iter().enumerate() {
                    let ts = batch.ts_ms[row];
                    if expired_before.is_some_and(|t| ts < t) {
                        continue;
                    }
                    let slot = RowKey {
                        view: vi,
                        key: key.clone(),
                    };
                    if store.rows.get(&slot).is_some_and(|s| s.ts_ms >= ts) {
                        continue;
                    }
                    let values = batch.values.iter().map(|col| col[row].clone()).collect();
                    store.rows.insert(slot, StoredRow { ts_ms: ts, values });
                }
                Ok(())
            })
            .await?;
        }
        Ok(store)
    }

    /// Puts one row in the store (replacing what was there).
    pub fn insert(&mut self, key: RowKey, row: StoredRow) {
        self.rows.insert(key, row);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl OnlineStore for MemoryStore {
    fn get_many<'a>(
        &'a self,
        _repo: &'a FeatureRepo,
        keys: &'a [RowKey],
    ) -> BoxFuture<'a, Result<Vec<Option<StoredRow>>, FeatureError>> {
        Box::pin(async move { Ok(keys.iter().map(|k| self.rows.get(k).cloned()).collect()) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
