//! `ferry.yaml`: what to serve. Flags and `FERRY_*` environment variables (see `cli.rs`)
//! override the file; `validate()` then checks cross-field rules, naming the keys involved.

use ferry_features::OnMissing;
use ferry_registry::ModelRef;
use ferry_runtimes::OnnxEngine;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
pub const DEFAULT_FEATURE_TIMEOUT: &str = "20ms";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where model versions come from.
    pub registry: RegistryConfig,
    /// Models served over the Open Inference Protocol and v1 predict: `name@alias`,
    /// `name@version`, or an object with per-model settings. Server readiness waits for all.
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// Online features: the feature repo, the Redis store and the lookup policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeaturesConfig>,
    /// Business endpoints (`POST /v1/endpoints/{name}/predict`): features joined, then a model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointConfig>,
    /// Engine for ONNX models: `ort`, `tract`, or `auto` (ort when its library loads).
    #[serde(default)]
    pub onnx_engine: OnnxEngine,
    /// Path of `libonnxruntime.so` (the PyPI `onnxruntime` wheel ships one).
    #[serde(default)]
    pub onnxruntime_lib: Option<PathBuf>,
    /// Largest request body accepted; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests that may wait per model version; beyond it requests get 429.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Compute threads per model version.
    #[serde(default = "default_one")]
    pub instances: usize,
    /// Threads one inference may use inside the engine (ONNX Runtime intra-op threads).
    #[serde(default = "default_one")]
    pub intra_op_threads: usize,
    /// File holding the admin bearer token (`FERRY_ADMIN_TOKEN` takes precedence).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// A local directory, a `file://` URI (or `s3://bucket/prefix` in builds with S3).
    pub uri: String,
}

/// The `features` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    /// The feature repo (`features.yaml`); relative paths resolve against the config file.
    pub repo: PathBuf,
    /// Redis URL of the online store. Without it, an in-process store is loaded from the
    /// offline files at start-up (fine for demos and small data; nothing to install).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// Longest a request waits for the online store (e.g. `20ms`); then `on_missing` applies.
    #[serde(default = "default_feature_timeout")]
    pub timeout: String,
    /// `default`: missing, stale or unavailable values get the feature's default (response
    /// header `x-ferry-features-defaulted`); `error`: the request fails (404 missing, 503
    /// store unavailable).
    #[serde(default)]
    pub on_missing: OnMissing,
}

fn default_feature_timeout() -> String {
    DEFAULT_FEATURE_TIMEOUT.into()
}

impl FeaturesConfig {
    pub fn timeout(&self) -> Result<std::time::Duration, ConfigError> {
        ferry_features::parse_duration(&self.timeout)
            .map_err(|e| ConfigError(format!("`features.timeout`: {e}")))
    }
}

/// One business endpoint. This build serves exactly one variant per endpoint; A/B splits,
/// sticky keys, shadows and transforms come with the endpoints issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `[a-z0-9][a-z0-9_-]{0,62}`, the `{endpoint}` in the URL.
    pub name: String,
    pub variants: Vec<VariantConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    pub name: String,
    /// `name@alias` or `name@version`; loaded like the `models` list.
    pub model: String,
    /// Share of traffic (only one variant today, so it receives everything).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

/// A served model: a bare reference, or a reference with settings of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelEntry {
    Ref(String),
    Detailed(ModelSettings),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub model: String,
    #[serde(default)]
    pub onnx_engine: Option<OnnxEngine>,
    #[serde(default)]
    pub instances: Option<usize>,
    #[serde(default)]
    pub intra_op_threads: Option<usize>,
    #[serde(default)]
    pub queue_capacity: Option<usize>,
}

impl ModelEntry {
    pub fn settings(&self) -> ModelSettings {
        match self {
            ModelEntry::Ref(model) => ModelSettings {
                model: model.clone(),
                onnx_engine: None,
                instances: None,
                intra_op_threads: None,
                queue_capacity: None,
            },
            ModelEntry::Detailed(s) => s.clone(),
        }
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .expect("DEFAULT_LISTEN parses. This is a bug.")
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_queue_capacity() -> usize {
    DEFAULT_QUEUE_CAPACITY
}
fn default_one() -> usize {
    1
}

/// A config problem, naming the key (and file) at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ServerConfig {
    /// A config for `registry` with nothing else set.
    pub fn for_registry(uri: impl Into<String>) -> ServerConfig {
        ServerConfig {
            listen: default_listen(),
            registry: RegistryConfig { uri: uri.into() },
            models: Vec::new(),
            features: None,
            endpoints: Vec::new(),
            onnx_engine: OnnxEngine::Auto,
            onnxruntime_lib: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            instances: 1,
            intra_op_threads: 1,
            admin_token_file: None,
        }
    }

    pub fn from_yaml(text: &str, source: &Path) -> Result<ServerConfig, ConfigError> {
        serde_yaml::from_str(text)
            .map_err(|e| ConfigError(format!("invalid config {}: {e}", source.display())))
    }

    /// Reads `path`; a relative `features.repo` is resolved against the file's directory.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("could not read config {}: {e}", path.display())))?;
        let mut config = ServerConfig::from_yaml(&text, path)?;
        if let Some(f) = &mut config.features
            && f.repo.is_relative()
            && let Some(dir) = path.parent()
        {
            f.repo = dir.join(&f.repo);
        }
        Ok(config)
    }

    /// Every model to load: `models`, then endpoint variants not already listed.
    pub fn all_model_entries(&self) -> Vec<ModelEntry> {
        let mut out = self.models.clone();
        for e in &self.endpoints {
            for v in &e.variants {
                let listed = out.iter().any(|m| {
                    ModelRef::parse(&m.settings().model).ok() == ModelRef::parse(&v.model).ok()
                });
                if !listed {
                    out.push(ModelEntry::Ref(v.model.clone()));
                }
            }
        }
        out
    }

    /// Cross-field and range checks; run after flags and environment are applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.registry.uri.trim().is_empty() {
            return err("`registry.uri` is empty: set it to a directory or s3://bucket/prefix (or FERRY_REGISTRY)".into());
        }
        if self.models.is_empty() && self.endpoints.is_empty() {
            return err("`models` is empty: list at least one model to serve, e.g. `models: [churn@champion]` (or FERRY_MODELS), or an endpoint".into());
        }
        if let Some(f) = &self.features {
            f.timeout()?;
            if f.repo.as_os_str().is_empty() {
                return err(
                    "`features.repo` is empty: set it to the feature repo file (features.yaml)"
                        .into(),
                );
            }
        }
        let mut names = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            if !ferry_registry::is_valid_name(&e.name) {
                return err(format!(
                    "`endpoints[{i}].name` {:?} must match [a-z0-9][a-z0-9_-]{{0,62}}",
                    e.name
                ));
            }
            if names.contains(&&e.name) {
                return err(format!(
                    "`endpoints[{i}].name` {:?} is listed twice",
                    e.name
                ));
            }
            names.push(&e.name);
            if e.variants.len() != 1 {
                return err(format!(
                    "`endpoints[{i}].variants` has {} variants; this version serves exactly one variant per endpoint (A/B splits come later)",
                    e.variants.len()
                ));
            }
            for (j, v) in e.variants.iter().enumerate() {
                if v.name.is_empty() {
                    return err(format!(
                        "`endpoints[{i}].variants[{j}].name` must not be empty"
                    ));
                }
                ModelRef::parse(&v.model).map_err(|e| {
                    ConfigError(format!("`endpoints[{i}].variants[{j}].model`: {e}"))
                })?;
                if v.weight == 0 {
                    return err(format!(
                        "`endpoints[{i}].variants[{j}].weight` must be at least 1"
                    ));
                }
            }
        }
        let mut seen = Vec::new();
        for (i, entry) in self.models.iter().enumerate() {
            let settings = entry.settings();
            let model = ModelRef::parse(&settings.model)
                .map_err(|e| ConfigError(format!("`models[{i}]`: {e}")))?;
            if seen.contains(&model) {
                return err(format!("`models[{i}]`: {model} is listed twice"));
            }
            seen.push(model);
            for (key, value) in [
                ("instances", settings.instances),
                ("intra_op_threads", settings.intra_op_threads),
                ("queue_capacity", settings.queue_capacity),
            ] {
                if value == Some(0) {
                    return err(format!("`models[{i}].{key}` must be at least 1"));
                }
            }
        }
        for (key, value, max) in [
            ("queue_capacity", self.queue_capacity, 1 << 20),
            ("instances", self.instances, 256),
            ("intra_op_threads", self.intra_op_threads, 1024),
        ] {
            if value == 0 || value > max {
                return err(format!("`{key}` must be between 1 and {max}, got {value}"));
            }
        }
        if self.max_body_bytes < 1024 {
            return err(format!(
                "`max_body_bytes` must be at least 1024, got {}",
                self.max_body_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ServerConfig, String> {
        let cfg = ServerConfig::from_yaml(yaml, Path::new("ferry.yaml")).map_err(|e| e.0)?;
        cfg.validate().map_err(|e| e.0)?;
        Ok(cfg)
    }

    #[test]
    fn parses_plain_and_detailed_model_entries() {
        let cfg = parse(
            "registry: {uri: /models}\nmodels: [churn@champion, {model: fraud@7, onnx_engine: tract, instances: 2}]\nonnx_engine: ort\n",
        )
        .unwrap();
        assert_eq!(cfg.models.len(), 2);
        assert_eq!(cfg.onnx_engine, OnnxEngine::Ort);
        let fraud = cfg.models[1].settings();
        assert_eq!(fraud.onnx_engine, Some(OnnxEngine::Tract));
        assert_eq!(fraud.instances, Some(2));
        assert_eq!(cfg.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn endpoint_models_are_loaded_too() {
        let cfg = parse(
            "registry: {uri: /m}\nmodels: [risk@1]\nfeatures: {repo: f.yaml, redis: 'redis://127.0.0.1:6379', timeout: 50ms, on_missing: error}\nendpoints: [{name: risk, variants: [{name: a, model: risk@1}]}, {name: other, variants: [{name: a, model: churn@2}]}]\n",
        )
        .unwrap();
        let all: Vec<String> = cfg
            .all_model_entries()
            .iter()
            .map(|m| m.settings().model)
            .collect();
        assert_eq!(all, vec!["risk@1", "churn@2"]);
        let f = cfg.features.unwrap();
        assert_eq!(f.on_missing, OnMissing::Error);
        assert_eq!(f.timeout().unwrap(), std::time::Duration::from_millis(50));
    }

    #[test]
    fn example_config_in_deploy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ferry.example.yaml");
        let cfg = ServerConfig::load(&path).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.models.len(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "registry: {uri: /m}\nmodels: [churn@1]\nonnx_engin: ort\n",
                "unknown field `onnx_engin`",
            ),
            (
                "registry: {uri: /m}\nmodels: [churn@1]\nonnx_engine: gpu\n",
                "onnx_engine",
            ),
            ("registry: {uri: /m}\nmodels: [Churn@1]\n", "`models[0]`"),
            (
                "registry: {uri: /m}\nmodels: [churn@1, churn@1]\n",
                "`models[1]`",
            ),
            ("registry: {uri: /m}\nmodels: []\n", "`models` is empty"),
            (
                "registry: {uri: /m}\nendpoints: [{name: e, variants: [{name: a, model: m@1}, {name: b, model: m@2}]}]\n",
                "`endpoints[0].variants`",
            ),
            (
                "registry: {uri: /m}\nendpoints: [{name: E, variants: [{name: a, model: m@1}]}]\n",
                "`endpoints[0].name`",
            ),
            (
                "registry: {uri: /m}\nendpoints: [{name: e, variants: [{name: a, model: M}]}]\n",
                "`endpoints[0].variants[0].model`",
            ),
            (
                "registry: {uri: /m}\nmodels: [a@1]\nfeatures: {repo: f.yaml, timeout: soon}\n",
                "`features.timeout`",
            ),
            (
                "registry: {uri: /m}\nmodels: [a@1]\nfeatures: {repo: f.yaml, on_missing: ignore}\n",
                "on_missing",
            ),
            ("registry: {uri: ''}\nmodels: [a@1]\n", "`registry.uri`"),
            (
                "registry: {uri: /m}\nmodels: [a@1]\nqueue_capacity: 0\n",
                "`queue_capacity`",
            ),
            (
                "registry: {uri: /m}\nmodels: [a@1]\nmax_body_bytes: 10\n",
                "`max_body_bytes`",
            ),
            (
                "registry: {uri: /m}\nmodels: [{model: a@1, instances: 0}]\n",
                "`models[0].instances`",
            ),
            ("models: [a@1]\n", "missing field `registry`"),
            (
                "registry: {uri: /m, poll: 3}\nmodels: [a@1]\n",
                "unknown field `poll`",
            ),
        ];
        for (yaml, needle) in cases {
            let err = parse(yaml).expect_err(needle);
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }
}
