//! The Redis online store. Layout (DESIGN.md): one hash per (view, entity) at
//! `ferry:<project>:<view>:<entity key>`, one field per feature, `_ts` = event time in Unix
//! milliseconds. Value encoding: see `FeatureValue::encode` and features/README.md.

use super::{BoxFuture, OnlineStore, RowKey, StoredRow};
use crate::FeatureError;
use crate::feast;
use crate::repo::{FeatureRepo, OnlineFormat};
use crate::value::FeatureValue;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
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

/// `scheme://user:password@host/…` → `scheme://***@host/…`: credentials in a URL (a Redis
/// password, an S3-compatible endpoint's keys) never reach a log line or an error message.
/// Only the authority is searched for `@`, so a path or query holding one is left alone.
pub fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|s| s + 3) else {
        return url.to_string();
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

impl RedisStore {
    /// Connects lazily (the first request connects), so a server can start while Redis is
    /// down. `timeout` bounds each connection attempt and each response.
    pub fn connect_lazy(url: &str, timeout: Duration) -> Result<RedisStore, FeatureError> {
        let client = redis::Client::open(url).map_err(|e| {
            FeatureError::Unavailable(format!("invalid Redis URL {}: {e}", redact_url(url)))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            FeatureError::Unavailable(format!("could not set up Redis {}: {e}", redact_url(url)))
        })?;
        Ok(RedisStore {
            conn,
            url: redact_url(url),
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
            if repo.online_format == OnlineFormat::Feast {
                return self.get_many_feast(repo, keys).await;
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

impl RedisStore {
    /// `get_many` in Feast's layout: one `HMGET <entity key><project> _ts:<view> <murmur
    /// fields…>` per (view, entity), all in one pipelined round trip.
    async fn get_many_feast(
        &self,
        repo: &FeatureRepo,
        keys: &[RowKey],
    ) -> Result<Vec<Option<StoredRow>>, FeatureError> {
        // The fields of each view, computed once per request rather than once per entity.
        let mut fields: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
        let mut pipe = redis::pipe();
        // Entity keys that cannot exist (an int64 join key given `abc`) are not asked for.
        let mut asked = Vec::with_capacity(keys.len());
        for k in keys {
            let view = &repo.views[k.view];
            let Some(key) = feast_key(repo, k) else {
                asked.push(false);
                continue;
            };
            asked.push(true);
            let view_fields = fields.entry(k.view).or_insert_with(|| {
                let mut f = Vec::with_capacity(view.features.len() + 1);
                f.push(feast::ts_field(&view.name).into_bytes());
                f.extend(
                    view.features
                        .iter()
                        .map(|x| feast::feature_field(&view.name, &x.name).to_vec()),
                );
                f
            });
            pipe.cmd("HMGET").arg(key).arg(&*view_fields);
        }
        let raw: Vec<Vec<Option<Vec<u8>>>> = if asked.iter().any(|a| *a) {
            let mut conn = self.conn.clone();
            pipe.query_async(&mut conn)
                .await
                .map_err(|e| self.unavailable(e))?
        } else {
            Vec::new()
        };
        let mut raw = raw.into_iter();
        Ok(keys
            .iter()
            .zip(asked)
            .map(|(k, asked)| {
                if !asked {
                    return None;
                }
                decode_feast_row(repo, k, &raw.next()?)
            })
            .collect())
    }
}

/// The Feast Redis key of one (view, entity key text); `None` when a key value does not parse
/// as its entity's dtype (no such entity can have been written).
pub fn feast_key(repo: &FeatureRepo, k: &RowKey) -> Option<Vec<u8>> {
    let view = &repo.views[k.view];
    let parts = crate::repo::split_key(view, &k.key).ok()?;
    let values: Vec<feast::KeyValue> = view
        .entities
        .iter()
        .zip(&parts)
        .map(|(e, p)| feast::KeyValue::parse(&e.dtype, p))
        .collect::<Result<_, _>>()
        .ok()?;
    let pairs: Vec<(&str, &feast::KeyValue)> = view
        .entities
        .iter()
        .map(|e| e.join_key.as_str())
        .zip(&values)
        .collect();
    Some(feast::redis_key(&repo.project, &pairs))
}

/// `[_ts:<view>, f1, f2, …]` (Feast layout) → a row. No timestamp means no row (Feast answers
/// such an entity with null values); an empty value is a null (how Feast stores one); an
/// undecodable value counts as null.
fn decode_feast_row(
    repo: &FeatureRepo,
    key: &RowKey,
    fields: &[Option<Vec<u8>>],
) -> Option<StoredRow> {
    let view = &repo.views[key.view];
    let ts_ms = match feast::decode_timestamp(fields.first()?.as_deref()?) {
        Ok(ts) => ts,
        Err(e) => {
            tracing::debug!(view = %view.name, error = %e, "Undecodable Feast event time; the row counts as missing.");
            return None;
        }
    };
    let values = view
        .features
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let raw = fields.get(i + 1)?.as_deref()?;
            match feast::decode_value(raw) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(view = %view.name, feature = %f.name, error = %e, "Undecodable Feast value; treated as null.");
                    None
                }
            }
        })
        .collect();
    Some(StoredRow { ts_ms, values })
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

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_in_urls_are_redacted() {
        for (url, want) in [
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://***@127.0.0.1:6379/0",
            ),
            ("rediss://user:p@ss@host:6380", "rediss://***@host:6380"),
            (
                "http://AKIA:key@minio:9000/bucket",
                "http://***@minio:9000/bucket",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "http://host/path@not-userinfo",
                "http://host/path@not-userinfo",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), want);
        }
    }
}
