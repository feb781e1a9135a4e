//! The Redis online store. Layout (DESIGN.md): one hash per (view, entity) at
//! `ferry:<project>:<view>:<entity key>`, one field per feature, `_ts` = event time in Unix
//! milliseconds. Value encoding: see `FeatureValue::encode` and features/README.md.

use super::{BoxFuture, OnlineStore, RowKey, StoredRow};
use crate::FeatureError;
use crate::repo::FeatureRepo;
use crate::value::FeatureValue;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

pub const TS_FIELD: &str = "_ts";

/// Writes one row only if it is strictly newer than the stored one, atomically per key.
/// KEYS[1] = hash key; ARGV[1] = event time (ms); ARGV[2..] = field, value pairs. The old hash
/// is replaced as a whole, so a feature that became null does not keep an old value.
pub const WRITE_IF_NEWER: &str = r#"
local current = redis.call('HGET', KEYS[1], '_ts')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_ts', ARGV[1], unpack(ARGV, 2))
return 1
"#;

/// A Redis online store over one `ConnectionManager` (multiplexed; reconnects by itself after
/// Redis restarts).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    url: String,
}

fn redact(url: &str) -> String {
    // redis://user:password@host → redis://***@host
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

impl RedisStore {
    /// Connects lazily (the first request connects), so a server can start while Redis is
    /// down. `timeout` bounds each connection attempt and each response.
    pub fn connect_lazy(url: &str, timeout: Duration) -> Result<RedisStore, FeatureError> {
        let client = redis::Client::open(url).map_err(|e| {
            FeatureError::Unavailable(format!("invalid Redis URL {}: {e}", redact(url)))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            FeatureError::Unavailable(format!("could not set up Redis {}: {e}", redact(url)))
        })?;
        Ok(RedisStore {
            conn,
            url: redact(url),
        })
    }

    /// Connects now and checks the server answers (for CLI jobs).
    pub async fn connect(url: &str, timeout: Duration) -> Result<RedisStore, FeatureError> {
        let store = RedisStore::connect_lazy(url, timeout)?;
        let mut conn = store.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| store.unavailable(e))?;
        Ok(store)
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn unavailable(&self, e: redis::RedisError) -> FeatureError {
        FeatureError::Unavailable(format!("Redis at {}: {e}", self.url))
    }

    /// Reads one hash as raw fields (`ferry features get`).
    pub async fn get_raw(&self, key: &str) -> Result<Vec<(String, String)>, FeatureError> {
        let mut conn = self.conn.clone();
        let mut fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.unavailable(e))?;
        fields.sort();
        Ok(fields)
    }
}

impl OnlineStore for RedisStore {
    fn get_many<'a>(
        &'a self,
        repo: &'a FeatureRepo,
        keys: &'a [RowKey],
    ) -> BoxFuture<'a, Result<Vec<Option<StoredRow>>, FeatureError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            // One HMGET per (view, entity), all in one pipelined round trip.
            let mut pipe = redis::pipe();
            for k in keys {
                let view = &repo.views[k.view];
                pipe.cmd("HMGET")
                    .arg(repo.online_key(view, &k.key))
                    .arg(TS_FIELD);
                for f in &view.features {
                    pipe.arg(&f.name);
                }
            }
            let mut conn = self.conn.clone();
            let raw: Vec<Vec<Option<String>>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.unavailable(e))?;
            Ok(keys
                .iter()
                .zip(raw)
                .map(|(k, fields)| decode_row(repo, k, &fields))
                .collect())
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// `[_ts, f1, f2, …]` → a row; no `_ts` means no row. An undecodable value counts as null.
fn decode_row(repo: &FeatureRepo, key: &RowKey, fields: &[Option<String>]) -> Option<StoredRow> {
    let view = &repo.views[key.view];
    let ts_ms = fields.first()?.as_deref()?.parse::<i64>().ok()?;
    let values = view
        .features
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let raw = fields.get(i + 1)?.as_deref()?;
            match FeatureValue::decode(f.dtype, raw) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::debug!(view = %view.name, feature = %f.name, error = %e, "Undecodable online value; treated as null.");
                    None
                }
            }
        })
        .collect();
    Some(StoredRow { ts_ms, values })
}
