//! `ferry.yaml`: what to serve. Flags and `FERRY_*` environment variables (see `cli.rs`)
//! override the file; `validate()` then checks cross-field rules, naming the keys involved.

pub use ferry_models::config::{
    BatchingConfig, DEFAULT_QUEUE_CAPACITY, ModelEntry, ModelSettings, ModelsConfig,
};
pub use ferry_pipeline::capture::{CaptureConfig, CaptureFormat};
pub use ferry_pipeline::config::{
    ConfigError, DEFAULT_FEATURE_TIMEOUT, EndpointConfig, FeaturesConfig, ShadowConfig,
    VariantConfig, is_valid_variant_name,
};
use ferry_registry::{ModelRef, RegistryOptions, S3Options};
use ferry_runtimes::OnnxEngine;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address the gRPC server binds: `host:port`, `off`, or unset for the HTTP listener's
    /// host with its port + 1 (8080 → 8081).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<String>,
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
    /// Directory of the config file: relative transform script paths resolve against it.
    #[serde(skip)]
    pub config_dir: Option<PathBuf>,
    /// The config file, when there is one: endpoints are reloaded from it on SIGHUP or when
    /// its content changes.
    #[serde(skip)]
    pub config_path: Option<PathBuf>,
    /// Engine for ONNX models: `ort`, `tract`, or `auto` (ort when its library loads).
    #[serde(default)]
    pub onnx_engine: OnnxEngine,
    /// Path of `libonnxruntime.so` (the PyPI `onnxruntime` wheel ships one).
    #[serde(default)]
    pub onnxruntime_lib: Option<PathBuf>,
    /// Largest request body accepted; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest gRPC request message accepted (default: `max_body_bytes`); larger ones get
    /// RESOURCE_EXHAUSTED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_max_message_bytes: Option<usize>,
    /// Requests that may wait per model version; beyond it requests get 429.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Compute threads per model version.
    #[serde(default = "default_one")]
    pub instances: usize,
    /// Threads one inference may use inside the engine (ONNX Runtime intra-op threads, the
    /// Candle model's rayon pool). 0 (the default) sizes them automatically: the usable cores
    /// (affinity and cgroup quota) divided among the served models and their compute threads,
    /// so the models together never oversubscribe the machine. tract runs single-threaded.
    #[serde(default)]
    pub intra_op_threads: usize,
    /// Threads that serve HTTP and gRPC connections, each connection on one of them for its
    /// whole life; 0 (the default) = one per usable core.
    #[serde(default)]
    pub io_threads: usize,
    /// Inference requests handled at once (all models and endpoints); beyond it new requests
    /// get 429 at once instead of queueing in the HTTP layer.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Dynamic batching defaults for models whose signature has a variable batch dimension.
    #[serde(default)]
    pub batching: BatchingConfig,
    /// Deadline for an inference request, queue wait included, in milliseconds (0 = none);
    /// a request may ask for another with the `x-ferry-timeout-ms` header. Past it: 503.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// File holding the admin bearer token (`FERRY_ADMIN_TOKEN` takes precedence).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// File of API keys (one per line) required on inference routes (`FERRY_API_KEYS`,
    /// comma-separated, takes precedence); without keys inference is open.
    #[serde(default)]
    pub api_keys_file: Option<PathBuf>,
    /// What SIGTERM does: readiness turns 503 at once, requests keep being served for
    /// `drain.delay` (so load balancers stop routing here), then no new connections and
    /// in-flight requests get up to `drain.timeout` to finish.
    #[serde(default)]
    pub drain: DrainConfig,
    /// One structured line per HTTP request (target `ferry::access`), sampled under load.
    #[serde(default)]
    pub access_log: crate::telemetry::access::AccessLogConfig,
}

/// Graceful shutdown on SIGTERM / Ctrl-C.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// How long to keep accepting and serving after the signal, with readiness already 503
    /// and every response carrying `Connection: close`, e.g. `5s`. Behind a load balancer
    /// that polls readiness (Kubernetes), set it to the time the LB needs to take a replica
    /// out of rotation; `0s` (default) stops accepting at once.
    #[serde(default, with = "humantime_serde")]
    pub delay: Duration,
    /// Longest wait for in-flight requests once accepting stopped; the process exits when it
    /// runs out even if some are still running. Default 30s (the default request timeout).
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

impl Default for DrainConfig {
    fn default() -> DrainConfig {
        DrainConfig {
            delay: Duration::ZERO,
            timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// A local directory, a `file://` URI, `s3://bucket/prefix`, or an MLflow tracking server:
    /// `mlflow+http(s)://HOST:PORT` or `mlflow` (`MLFLOW_TRACKING_URI`); see registry/README.md.
    pub uri: String,
    /// How often the server checks the aliases and versions it serves for changes, e.g.
    /// `30s`, `5m`; `0s` turns polling off. Default 30s.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Where versions downloaded from S3 are cached and verified (default
    /// `$XDG_CACHE_HOME/ferry` or `~/.cache/ferry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Endpoint URL of an S3-compatible store (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`
    /// work too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Path-style S3 addressing; default: on with a custom endpoint, off for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// AWS region (default: `AWS_REGION` or the profile's region; one is required for S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl RegistryConfig {
    pub fn new(uri: impl Into<String>) -> RegistryConfig {
        RegistryConfig {
            uri: uri.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            cache_dir: None,
            endpoint: None,
            path_style: None,
            region: None,
        }
    }

    /// What `ferry_registry::Registry::open` needs.
    pub fn options(&self) -> RegistryOptions {
        RegistryOptions {
            uri: self.uri.clone(),
            s3: S3Options {
                endpoint: self.endpoint.clone(),
                path_style: self.path_style,
                region: self.region.clone(),
            },
            cache_dir: self.cache_dir.clone(),
        }
    }
}

fn default_poll_interval() -> Duration {
    DEFAULT_POLL_INTERVAL
}

/// `poll_interval: 30s` in YAML, as humantime text.
mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. 30s, 500ms or 5m"
            ))
        })
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
fn default_max_concurrent_requests() -> usize {
    1024
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

/// Key names whose values are secrets wherever they appear (a script's parameters, a capture
/// sink's options); paths to files holding secrets (`*_file`) are not secrets themselves.
const SECRET_KEY_PARTS: [&str; 8] = [
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "credential",
    "access_key",
];

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    !key.ends_with("_file")
        && !key.ends_with("_path")
        && SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// Replaces URL credentials and the values of secret-named keys, at any depth.
fn redact_value(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains("://") => {
            *s = ferry_features::online::redis::redact_url(s);
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if is_secret_key(key) && !v.is_null() {
                    *v = Value::String("***".into());
                } else {
                    redact_value(v);
                }
            }
        }
        _ => {}
    }
}

impl ServerConfig {
    /// The config as JSON for logs: URL credentials (a Redis password, keys in an S3 endpoint)
    /// and secret-named values are replaced by `***`.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        redact_value(&mut value);
        value
    }

    /// Where gRPC listens when HTTP listens on `http` (None: `grpc_listen: off`).
    pub fn grpc_addr(&self, http: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
        match self.grpc_listen.as_deref().map(str::trim) {
            None | Some("") => {
                let mut addr = http;
                // An ephemeral HTTP port gets an ephemeral gRPC port, not port 1.
                if http.port() != 0 {
                    addr.set_port(http.port().checked_add(1).ok_or_else(|| {
                        ConfigError(format!(
                            "`grpc_listen` defaults to the HTTP port + 1, but `listen` uses port {}; set `grpc_listen` (or FERRY_GRPC_LISTEN, --grpc-listen) to an address or `off`",
                            http.port()
                        ))
                    })?);
                }
                Ok(Some(addr))
            }
            Some("off") => Ok(None),
            Some(other) => other.parse().map(Some).map_err(|_| {
                ConfigError(format!(
                    "`grpc_listen` must be `host:port` (e.g. 0.0.0.0:8081) or `off`, got {other:?}"
                ))
            }),
        }
    }

    /// A config for `registry` with nothing else set.
    pub fn for_registry(uri: impl Into<String>) -> ServerConfig {
        ServerConfig {
            listen: default_listen(),
            grpc_listen: None,
            registry: RegistryConfig::new(uri),
            models: Vec::new(),
            features: None,
            endpoints: Vec::new(),
            config_dir: None,
            config_path: None,
            onnx_engine: OnnxEngine::Auto,
            onnxruntime_lib: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            grpc_max_message_bytes: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            instances: 1,
            intra_op_threads: 0,
            io_threads: 0,
            max_concurrent_requests: default_max_concurrent_requests(),
            batching: BatchingConfig::default(),
            request_timeout_ms: default_request_timeout_ms(),
            admin_token_file: None,
            api_keys_file: None,
            drain: DrainConfig::default(),
            access_log: Default::default(),
        }
    }

    pub fn request_timeout(&self) -> Option<std::time::Duration> {
        (self.request_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(self.request_timeout_ms))
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
        config.config_dir = path.parent().map(Path::to_path_buf);
        config.config_path = Some(path.to_path_buf());
        if let Some(f) = &mut config.features
            && f.repo.is_relative()
            && let Some(dir) = path.parent()
        {
            f.repo = dir.join(&f.repo);
        }
        Ok(config)
    }

    /// Every model to load: `models`, then endpoint variants and shadows not already listed.
    pub fn all_model_entries(&self) -> Vec<ModelEntry> {
        let mut out = self.models.clone();
        for e in &self.endpoints {
            for model in e.models() {
                let listed = out.iter().any(|m| {
                    ModelRef::parse(&m.settings().model).ok() == ModelRef::parse(model).ok()
                });
                if !listed {
                    out.push(ModelEntry::Ref(model.to_string()));
                }
            }
        }
        out
    }

    /// What the model manager reads: every model to load and the server-wide defaults.
    pub fn models_config(&self) -> ModelsConfig {
        ModelsConfig {
            models: self
                .all_model_entries()
                .iter()
                .map(ModelEntry::settings)
                .collect(),
            shadow_only: self.shadow_only_models(),
            onnx_engine: self.onnx_engine,
            onnxruntime_lib: self.onnxruntime_lib.clone(),
            instances: self.instances,
            intra_op_threads: self.intra_op_threads,
            queue_capacity: self.queue_capacity,
            batching: self.batching.clone(),
            request_timeout: self.request_timeout(),
        }
    }

    /// Names of models that only endpoint shadows use (not listed in `models`, not a variant).
    pub fn shadow_only_models(&self) -> std::collections::HashSet<String> {
        let name = |r: &str| ModelRef::parse(r).ok().map(|m| m.name);
        let mut primary: std::collections::HashSet<String> = self
            .models
            .iter()
            .filter_map(|m| name(&m.settings().model))
            .collect();
        primary.extend(
            self.endpoints
                .iter()
                .flat_map(|e| &e.variants)
                .filter_map(|v| name(&v.model)),
        );
        self.endpoints
            .iter()
            .flat_map(|e| &e.shadow)
            .filter_map(|s| name(&s.model))
            .filter(|n| !primary.contains(n))
            .collect()
    }

    /// Cross-field and range checks; run after flags and environment are applied.
    /// `validate`, then what start-up would read before loading models: the feature repo file
    /// and every endpoint's transform chain (script files compiled). No network, no model.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate()?;
        if let Some(f) = &self.features {
            ferry_features::FeatureRepo::load(&f.repo)
                .map_err(|e| ConfigError(format!("`features.repo` {}: {e}", f.repo.display())))?;
        }
        let base_dir = self.config_dir.clone().unwrap_or_default();
        let transforms = ferry_transforms::Registry::default();
        for (i, e) in self.endpoints.iter().enumerate() {
            e.chains(&format!("endpoints[{i}]"), &base_dir, &transforms)
                .map_err(ConfigError)?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        self.grpc_addr(self.listen)?;
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
            e.validate(&format!("endpoints[{i}]"))?;
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
            settings
                .validate(&format!("models[{i}]"))
                .map_err(ConfigError)?;
        }
        for (key, value, max) in [
            ("queue_capacity", self.queue_capacity, 1 << 20),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests,
                1 << 20,
            ),
            ("instances", self.instances, 256),
        ] {
            if value == 0 || value > max {
                return err(format!("`{key}` must be between 1 and {max}, got {value}"));
            }
        }
        if self.intra_op_threads > 1024 {
            return err(format!(
                "`intra_op_threads` must be between 0 (automatic) and 1024, got {}",
                self.intra_op_threads
            ));
        }
        if self.io_threads > 1024 {
            return err(format!(
                "`io_threads` must be between 0 (one per usable core) and 1024, got {}",
                self.io_threads
            ));
        }
        self.batching.validate("batching").map_err(ConfigError)?;
        if self.max_body_bytes < 1024 {
            return err(format!(
                "`max_body_bytes` must be at least 1024, got {}",
                self.max_body_bytes
            ));
        }
        if let Some(n) = self.grpc_max_message_bytes
            && n < 1024
        {
            return err(format!(
                "`grpc_max_message_bytes` must be at least 1024, got {n}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn redacted_json_hides_url_credentials_and_secret_keys() {
        let mut config = ServerConfig::for_registry("s3://models/prod");
        config.registry.endpoint = Some("http://AKIAEXAMPLE:wJalrXUtnFEMI@127.0.0.1:9000".into());
        config.features = Some(FeaturesConfig {
            repo: "features.yaml".into(),
            redis: Some("redis://default:hunter2@127.0.0.1:6379/0".into()),
            timeout: DEFAULT_FEATURE_TIMEOUT.into(),
            on_missing: Default::default(),
        });
        config.admin_token_file = Some("/run/secrets/admin".into());
        let mut endpoint = EndpointConfig::new("e", vec![]);
        endpoint.postprocess = vec![serde_json::json!({
            "rust": {"name": "notify", "params": {"api_key": "k-123", "Auth_Token": "t-456", "limit": 3}}
        })];
        config.endpoints.push(endpoint);
        let text = config.redacted_json().to_string();
        for secret in ["wJalrXUtnFEMI", "AKIAEXAMPLE", "hunter2", "k-123", "t-456"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        for kept in [
            "redis://***@127.0.0.1:6379/0",
            "http://***@127.0.0.1:9000",
            "/run/secrets/admin",
            "s3://models/prod",
            "\"limit\":3",
        ] {
            assert!(text.contains(kept), "{kept} missing: {text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_features::OnMissing;

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
        assert_eq!(cfg.registry.poll_interval, DEFAULT_POLL_INTERVAL);
    }

    #[test]
    fn parses_s3_registry_settings() {
        let cfg = parse(
            "registry: {uri: s3://models/prod, poll_interval: 500ms, cache_dir: /var/cache/ferry, endpoint: 'http://127.0.0.1:9000', path_style: true, region: eu-west-1}\nmodels: [churn@champion]\n",
        )
        .unwrap();
        assert_eq!(cfg.registry.poll_interval, Duration::from_millis(500));
        let options = cfg.registry.options();
        assert_eq!(options.s3.path_style, Some(true));
        assert_eq!(options.s3.region.as_deref(), Some("eu-west-1"));
        let err = parse("registry: {uri: /m, poll_interval: soon}\nmodels: [a@1]\n").unwrap_err();
        assert!(err.contains("invalid duration"), "{err}");
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
    fn drain_defaults_and_durations() {
        let cfg: ServerConfig =
            serde_yaml::from_str("registry: {uri: /m}\nmodels: [a@1]\n").unwrap();
        assert_eq!(cfg.drain.delay, Duration::ZERO);
        assert_eq!(cfg.drain.timeout, Duration::from_secs(30));
        let cfg: ServerConfig = serde_yaml::from_str(
            "registry: {uri: /m}\nmodels: [a@1]\ndrain: {delay: 5s, timeout: 1m 30s}\n",
        )
        .unwrap();
        assert_eq!(cfg.drain.delay, Duration::from_secs(5));
        assert_eq!(cfg.drain.timeout, Duration::from_secs(90));
        let err = serde_yaml::from_str::<ServerConfig>(
            "registry: {uri: /m}\nmodels: [a@1]\ndrain: {dealy: 5s}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("dealy"), "{err}");
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
                "registry: {uri: /m}\nendpoints: [{name: e, variants: [{name: a, model: m@1}, {name: a, model: m@2}]}]\n",
                "`endpoints[0].variants[1].name`",
            ),
            (
                "registry: {uri: /m}\nendpoints: [{name: e, variants: [{name: a, model: m@1, weight: 0}]}]\n",
                "every weight is 0",
            ),
            (
                "registry: {uri: /m}\nendpoints: [{name: e, variants: [{name: a, model: m@1}], shadow: [{model: m@2, sample: 1.5}]}]\n",
                "`endpoints[0].shadow[0].sample`",
            ),
            (
                "registry: {uri: /m}\nendpoints: [{name: e, variants: [{name: 'a b', model: m@1}]}]\n",
                "`endpoints[0].variants[0].name`",
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
