//! The feature repo (`features.yaml`): project namespace, entities, views with typed features,
//! defaults, TTL and offline source. One definition read by materialization, serving and
//! point-in-time export alike.

use crate::FeatureError;
use crate::value::{FeatureType, FeatureValue};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoFile {
    project: String,
    /// `ferry` (default) or `feast`: the Redis layout served and materialized.
    #[serde(default)]
    online_format: Option<String>,
    /// Feast's `entity_key_serialization_version` (only 3 is accepted; only with `feast`).
    #[serde(default)]
    entity_key_serialization_version: Option<u32>,
    entities: Vec<Entity>,
    views: Vec<ViewFile>,
}

/// How the online store lays values out in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnlineFormat {
    /// ferry's own layout: `ferry:<project>:<view>:<key>` hashes of text values.
    #[default]
    Ferry,
    /// Feast's Redis online store layout (see `crate::feast`), read and written as Feast does.
    Feast,
}

/// A thing features describe (a user, a merchant), identified by its join key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    pub name: String,
    /// The column (offline) and request field (online) holding the entity key.
    pub join_key: String,
    /// `string`, `int64` or `int32`; keys are compared as their decimal/string form (the
    /// Feast format serializes them typed).
    #[serde(default = "default_key_dtype")]
    pub dtype: String,
}

fn default_key_dtype() -> String {
    "string".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewFile {
    name: String,
    #[serde(default)]
    entity: Option<String>,
    /// Several entities: a compound key (Feast views keyed by several join keys).
    #[serde(default)]
    entities: Option<Vec<String>>,
    #[serde(default)]
    ttl: Option<String>,
    features: Vec<FeatureFile>,
    source: SourceFile,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureFile {
    name: String,
    dtype: String,
    #[serde(default)]
    default: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    path: String,
    #[serde(default = "default_format")]
    format: String,
    #[serde(default = "default_timestamp")]
    timestamp: String,
}

fn default_format() -> String {
    "parquet".into()
}
fn default_timestamp() -> String {
    "event_ts".into()
}

/// One typed feature of a view.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    pub dtype: FeatureType,
    /// Used when the value is missing or stale (and `on_missing: default`); `None` = null.
    pub default: Option<FeatureValue>,
}

/// Where a view's offline rows live.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// As written in the repo (`s3://…` or a path relative to the repo file).
    pub path: String,
    /// `path` resolved against the repo file's directory (local sources only).
    pub resolved: PathBuf,
    /// Event-time column (Timestamp of any unit, or Int64 Unix milliseconds).
    pub timestamp: String,
}

/// A feature view: features of one entity, materialized together into one Redis hash.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub name: String,
    /// The view's (first) entity; the only one unless the key is compound.
    pub entity: Entity,
    /// Every entity of the key, in the order the repo lists them (one for most views; several
    /// for a compound key, whose entity key text is `compound_key` of the join key values).
    pub entities: Vec<Entity>,
    /// Values older than this (event time) count as missing.
    pub ttl: Option<Duration>,
    pub features: Vec<Feature>,
    pub source: Source,
}

impl View {
    /// Whether the view is keyed by several join keys.
    pub fn is_compound(&self) -> bool {
        self.entities.len() > 1
    }

    /// The join key columns / request fields of the key, in the repo's order.
    pub fn join_keys(&self) -> Vec<&str> {
        self.entities.iter().map(|e| e.join_key.as_str()).collect()
    }

    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }
}

/// A validated `features.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRepo {
    pub project: String,
    pub online_format: OnlineFormat,
    pub entities: Vec<Entity>,
    pub views: Vec<View>,
    /// The file it was read from (for messages).
    pub path: PathBuf,
}

/// `view.feature`, resolved against a repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureRef {
    pub view: usize,
    pub feature: usize,
}

/// The entity key text of a compound key (one value per join key, in the view's order): a JSON
/// array of the values' text forms, so no value can be confused with a separator.
pub fn compound_key(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

/// Splits an entity key text into one value per join key of `view` (the inverse of
/// `compound_key`; a single-key view's text is the value itself).
pub fn split_key(view: &View, key: &str) -> Result<Vec<String>, String> {
    if !view.is_compound() {
        return Ok(vec![key.to_string()]);
    }
    let bad = || {
        format!(
            "view `{}` is keyed by {:?}; its entity key must be a JSON array with one value per join key, e.g. [\"u1\", 7]",
            view.name,
            view.join_keys()
        )
    };
    // Strings or integers (`ferry features get --key '["u1", 7]'` may write numbers bare).
    let values: Vec<serde_json::Value> = serde_json::from_str(key).map_err(|_| bad())?;
    let parts = values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<String>, String>>()?;
    if parts.len() != view.entities.len() {
        return Err(format!(
            "view `{}` is keyed by {:?}, got {} value(s)",
            view.name,
            view.join_keys(),
            parts.len()
        ));
    }
    Ok(parts)
}

/// `[a-z0-9_][a-z0-9_-]*` up to 63 bytes: names that are safe in Redis keys and paths.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Feast project and view names: ASCII letters, digits, `_` and `-`, up to 63 bytes.
fn is_valid_feast_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses `20ms`, `1.5s`, `30s`, `5m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; use e.g. 20ms, 30s, 5m, 2h or 7d"))?;
    let seconds = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "{text:?} has unknown unit {other:?}; use ms, s, m, h or d"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl FeatureRepo {
    pub fn load(path: &Path) -> Result<FeatureRepo, FeatureError> {
        let text = std::fs::read_to_string(path).map_err(|e| FeatureError::Repo {
            path: path.display().to_string(),
            message: format!("could not read it: {e}"),
        })?;
        FeatureRepo::parse(&text, path)
    }

    /// Parses and validates; relative source paths resolve against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<FeatureRepo, FeatureError> {
        let err = |message: String| FeatureError::Repo {
            path: path.display().to_string(),
            message,
        };
        let file: RepoFile = serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let online_format = match file.online_format.as_deref() {
            None | Some("ferry") => OnlineFormat::Ferry,
            Some("feast") => OnlineFormat::Feast,
            Some(other) => {
                return Err(err(format!(
                    "`online_format` is {other:?}; use ferry (default) or feast"
                )));
            }
        };
        // Feast names (projects, views) may use capitals: Feast allows letters, digits and `_`.
        let name_ok = |name: &str| match online_format {
            OnlineFormat::Ferry => is_valid_name(name),
            OnlineFormat::Feast => is_valid_feast_name(name),
        };
        let name_rule = match online_format {
            OnlineFormat::Ferry => "[a-z0-9_-]{1,63}",
            OnlineFormat::Feast => "[A-Za-z0-9_-]{1,63}",
        };
        if !name_ok(&file.project) {
            return Err(err(format!(
                "`project` {:?} must match {name_rule} (it is part of every Redis key)",
                file.project
            )));
        }
        match (file.entity_key_serialization_version, online_format) {
            (None, _) => {}
            (Some(v), OnlineFormat::Feast)
                if v == crate::feast::ENTITY_KEY_SERIALIZATION_VERSION => {}
            (Some(v), OnlineFormat::Feast) => {
                return Err(err(format!(
                    "`entity_key_serialization_version` is {v}; ferry reads and writes only Feast's version 3 (Feast's default since 0.38; versions below 3 are deprecated in Feast): set `entity_key_serialization_version: 3` in feature_store.yaml and re-materialize, then set it to 3 here"
                )));
            }
            (Some(_), OnlineFormat::Ferry) => {
                return Err(err(
                    "`entity_key_serialization_version` applies only with `online_format: feast`"
                        .into(),
                ));
            }
        }

        let mut seen = HashSet::new();
        for (i, e) in file.entities.iter().enumerate() {
            if e.name.is_empty() || !seen.insert(e.name.as_str()) {
                return Err(err(format!(
                    "`entities[{i}].name` {:?} is empty or defined twice",
                    e.name
                )));
            }
            if e.join_key.is_empty() {
                return Err(err(format!("`entities[{i}].join_key` must not be empty")));
            }
            if !matches!(e.dtype.as_str(), "string" | "int64" | "int32") {
                return Err(err(format!(
                    "`entities[{i}].dtype` is {:?}; use string, int64 or int32",
                    e.dtype
                )));
            }
        }
        if file.views.is_empty() {
            return Err(err("`views` must list at least one view".into()));
        }
        let mut views = Vec::with_capacity(file.views.len());
        let mut view_names = HashSet::new();
        for (i, v) in file.views.iter().enumerate() {
            let key = format!("views[{i}]");
            if !name_ok(&v.name) || !view_names.insert(v.name.as_str()) {
                return Err(err(format!(
                    "`{key}.name` {:?} must match {name_rule} and be unique",
                    v.name
                )));
            }
            let (names, entity_key): (Vec<&String>, String) = match (&v.entity, &v.entities) {
                (Some(one), None) => (vec![one], format!("{key}.entity")),
                (None, Some(many)) if !many.is_empty() => {
                    (many.iter().collect(), format!("{key}.entities"))
                }
                _ => {
                    return Err(err(format!(
                        "`{key}` needs exactly one of `entity` (one join key) or `entities` (a non-empty list: a compound key)"
                    )));
                }
            };
            let mut entities = Vec::with_capacity(names.len());
            for name in names {
                let entity = file
                    .entities
                    .iter()
                    .find(|e| &e.name == name)
                    .ok_or_else(|| {
                        err(format!(
                            "`{entity_key}` {name:?} is not one of `entities` ({:?})",
                            file.entities.iter().map(|e| &e.name).collect::<Vec<_>>()
                        ))
                    })?;
                if entities
                    .iter()
                    .any(|e: &Entity| e.join_key == entity.join_key)
                {
                    return Err(err(format!(
                        "`{entity_key}` names join key `{}` twice",
                        entity.join_key
                    )));
                }
                entities.push(entity.clone());
            }
            if entities.len() > 1 && online_format != OnlineFormat::Feast {
                return Err(err(format!(
                    "`{entity_key}`: compound keys (several entities) need `online_format: feast`"
                )));
            }
            let ttl = v
                .ttl
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| err(format!("`{key}.ttl`: {e}")))?;
            if v.features.is_empty() {
                return Err(err(format!(
                    "`{key}.features` must list at least one feature"
                )));
            }
            let mut names = HashSet::new();
            let mut features = Vec::with_capacity(v.features.len());
            for (j, f) in v.features.iter().enumerate() {
                let fkey = format!("{key}.features[{j}]");
                if f.name.is_empty() || f.name.starts_with('_') || !names.insert(f.name.as_str()) {
                    return Err(err(format!(
                        "`{fkey}.name` {:?} must be non-empty, unique in the view, and not start with `_` (reserved for `_ts`)",
                        f.name
                    )));
                }
                let dtype = FeatureType::parse(&f.dtype).ok_or_else(|| {
                    err(format!(
                        "`{fkey}.dtype` is {:?}; use one of float32, float64, int32, int64, bool, string (with online_format: feast also bytes and list<T> of those)",
                        f.dtype
                    ))
                })?;
                let default = match &f.default {
                    None | Some(serde_yaml::Value::Null) => None,
                    Some(value) => Some(
                        FeatureValue::from_yaml(dtype, value)
                            .map_err(|e| err(format!("`{fkey}.default`: {e}")))?,
                    ),
                };
                if dtype.feast_only() && online_format != OnlineFormat::Feast {
                    return Err(err(format!(
                        "`{fkey}.dtype` {} needs `online_format: feast` (ferry's own format stores scalars only)",
                        f.dtype
                    )));
                }
                features.push(Feature {
                    name: f.name.clone(),
                    dtype,
                    default,
                });
            }
            if v.source.format != "parquet" {
                return Err(err(format!(
                    "`{key}.source.format` is {:?}; only parquet is supported",
                    v.source.format
                )));
            }
            if v.source.path.is_empty() {
                return Err(err(format!("`{key}.source.path` must not be empty")));
            }
            if v.source.timestamp.is_empty() {
                return Err(err(format!("`{key}.source.timestamp` must not be empty")));
            }
            let raw = v
                .source
                .path
                .strip_prefix("file://")
                .unwrap_or(&v.source.path);
            let resolved = if raw.contains("://") {
                PathBuf::from(raw)
            } else {
                base.join(raw)
            };
            views.push(View {
                name: v.name.clone(),
                entity: entities[0].clone(),
                entities,
                ttl,
                features,
                source: Source {
                    path: v.source.path.clone(),
                    resolved,
                    timestamp: v.source.timestamp.clone(),
                },
            });
        }
        Ok(FeatureRepo {
            project: file.project,
            online_format,
            entities: file.entities,
            views,
            path: path.to_path_buf(),
        })
    }

    pub fn view(&self, name: &str) -> Option<&View> {
        self.views.iter().find(|v| v.name == name)
    }

    pub fn view_index(&self, name: &str) -> Result<usize, FeatureError> {
        self.views
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| {
                FeatureError::UnknownFeature(format!(
                    "unknown feature view `{name}`; views in {}: {:?}",
                    self.path.display(),
                    self.views.iter().map(|v| &v.name).collect::<Vec<_>>()
                ))
            })
    }

    /// Resolves `view.feature`.
    pub fn resolve(&self, reference: &str) -> Result<FeatureRef, FeatureError> {
        let (view, feature) = reference.split_once('.').ok_or_else(|| {
            FeatureError::UnknownFeature(format!(
                "feature reference {reference:?} must be `view.feature`"
            ))
        })?;
        let vi = self.view_index(view)?;
        let fi = self.views[vi].feature_index(feature).ok_or_else(|| {
            FeatureError::UnknownFeature(format!(
                "view `{view}` has no feature `{feature}`; its features: {:?}",
                self.views[vi]
                    .features
                    .iter()
                    .map(|f| &f.name)
                    .collect::<Vec<_>>()
            ))
        })?;
        Ok(FeatureRef {
            view: vi,
            feature: fi,
        })
    }

    pub fn feature(&self, r: FeatureRef) -> &Feature {
        &self.views[r.view].features[r.feature]
    }

    pub fn ref_name(&self, r: FeatureRef) -> String {
        format!("{}.{}", self.views[r.view].name, self.feature(r).name)
    }

    /// The Redis key of one (view, entity key): `ferry:<project>:<view>:<entity key>`.
    pub fn online_key(&self, view: &View, entity_key: &str) -> String {
        format!("ferry:{}:{}:{entity_key}", self.project, view.name)
    }

    /// Where materialization remembers which offline files it has written.
    pub fn watermark_key(&self, view: &View) -> String {
        format!("ferry:{}:_watermark:{}", self.project, view.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
project: shop
entities:
  - {name: user, join_key: user_id, dtype: string}
views:
  - name: user_stats
    entity: user
    ttl: 7d
    features:
      - {name: visits_7d, dtype: float32, default: 0}
      - {name: spend_30d, dtype: float64}
      - {name: country, dtype: string, default: "none"}
    source: {path: data/user_stats/, format: parquet, timestamp: event_ts}
"#;

    #[test]
    fn parses_the_design_example() {
        let repo = FeatureRepo::parse(GOOD, Path::new("/repo/features.yaml")).unwrap();
        let v = &repo.views[0];
        assert_eq!(v.ttl, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(v.source.resolved, PathBuf::from("/repo/data/user_stats/"));
        assert_eq!(v.features[0].default, Some(FeatureValue::Float(0.0)));
        assert_eq!(v.features[1].default, None);
        let r = repo.resolve("user_stats.spend_30d").unwrap();
        assert_eq!((r.view, r.feature), (0, 1));
        assert_eq!(repo.online_key(v, "u1"), "ferry:shop:user_stats:u1");
        assert!(repo.resolve("user_stats.nope").is_err());
        assert!(repo.resolve("nope.x").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("ttl: 7d", "ttl: 7 weeks", "`views[0].ttl`"),
            (
                "dtype: float32",
                "dtype: float16",
                "`views[0].features[0].dtype`",
            ),
            (
                "default: 0}",
                "default: abc}",
                "`views[0].features[0].default`",
            ),
            ("entity: user\n", "entity: usr\n", "`views[0].entity`"),
            ("project: shop", "project: Shop!", "`project`"),
            ("format: parquet", "format: csv", "`views[0].source.format`"),
            ("ttl: 7d", "tll: 7d", "unknown field `tll`"),
            (
                "name: spend_30d",
                "name: visits_7d",
                "`views[0].features[1].name`",
            ),
        ];
        for (from, to, needle) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let e = FeatureRepo::parse(&text, Path::new("f.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    const FEAST: &str = r#"
project: Shop_1
online_format: feast
entity_key_serialization_version: 3
entities:
  - {name: user, join_key: user_id, dtype: string}
  - {name: merchant, join_key: merchant_id, dtype: int64}
views:
  - name: pair_Stats
    entities: [user, merchant]
    features:
      - {name: tags, dtype: "list<string>"}
      - {name: blob, dtype: bytes}
    source: {path: data/pairs/}
"#;

    #[test]
    fn feast_format_compound_keys_and_types() {
        let repo = FeatureRepo::parse(FEAST, Path::new("/r/features.yaml")).unwrap();
        assert_eq!(repo.online_format, OnlineFormat::Feast);
        let v = &repo.views[0];
        assert!(v.is_compound());
        assert_eq!(v.join_keys(), ["user_id", "merchant_id"]);
        assert_eq!(
            v.features[0].dtype,
            FeatureType::List(crate::value::Scalar::String)
        );
        let key = compound_key(&["u\"1", "7"]);
        assert_eq!(split_key(v, &key).unwrap(), ["u\"1", "7"]);
        assert_eq!(split_key(v, r#"["u1", 7]"#).unwrap(), ["u1", "7"]);
        assert!(split_key(v, "u1").is_err());
        assert!(split_key(v, r#"["u1", 7.5]"#).is_err());
        assert!(split_key(v, &compound_key(&["u1"])).is_err());
    }

    #[test]
    fn feast_errors_name_the_key() {
        let cases = [
            (
                "entity_key_serialization_version: 3",
                "entity_key_serialization_version: 2",
                "`entity_key_serialization_version` is 2",
            ),
            (
                "online_format: feast",
                "online_format: fest",
                "`online_format` is \"fest\"",
            ),
            // Without the feast format: no version key, no compound keys, no lists or bytes.
            (
                "project: Shop_1\nonline_format: feast\n",
                "project: shop\n",
                "`entity_key_serialization_version` applies only",
            ),
            (
                "online_format: feast\nentity_key_serialization_version: 3\n",
                "",
                "`project`",
            ),
            (
                "project: Shop_1\nonline_format: feast\nentity_key_serialization_version: 3\n",
                "project: shop\n",
                "`views[0].name`",
            ),
            (
                "entities: [user, merchant]",
                "entities: [user, user]",
                "`views[0].entities` names join key `user_id` twice",
            ),
            (
                "entities: [user, merchant]",
                "entities: []",
                "exactly one of `entity`",
            ),
        ];
        for (from, to, needle) in cases {
            let text = FEAST.replacen(from, to, 1);
            assert_ne!(text, FEAST, "{from}");
            let e = FeatureRepo::parse(&text, Path::new("f.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
        let ferry = FEAST
            .replace(
                "project: Shop_1\nonline_format: feast\nentity_key_serialization_version: 3\n",
                "project: shop\n",
            )
            .replace("pair_Stats", "pair_stats");
        let e = FeatureRepo::parse(&ferry, Path::new("f.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("compound keys (several entities) need `online_format: feast`"),
            "{e}"
        );
        let single = ferry.replace("entities: [user, merchant]", "entity: user");
        let e = FeatureRepo::parse(&single, Path::new("f.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`views[0].features[0].dtype` list<string> needs `online_format: feast`"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20ms").unwrap(), Duration::from_millis(20));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
