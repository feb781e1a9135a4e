//! The endpoint sections of `ferry.yaml` (`endpoints`, `features`): their YAML schema, defaults
//! and the checks that need no registry. The server's config file embeds them as they are.

use crate::capture::CaptureConfig;
use ferry_features::OnMissing;
use ferry_registry::ModelRef;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_FEATURE_TIMEOUT: &str = "20ms";

/// A config problem, naming the key (and file) at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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

/// One business endpoint: features → pre-transforms → model → post-transforms, with traffic
/// split between weighted variants (see `crate::assign` for the sticky hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `[a-z0-9][a-z0-9_-]{0,62}`, the `{endpoint}` in the URL.
    pub name: String,
    /// Request field whose value picks the variant (same value → same variant, on every
    /// replica and in batch mode). Rows without it are assigned at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_key: Option<String>,
    /// Mixed into the sticky hash; change it to re-randomize an experiment. Default: the
    /// endpoint name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    pub variants: Vec<VariantConfig>,
    /// Models that get a sampled copy of the traffic; answers are captured, never returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowConfig>,
    /// Shadow jobs waiting per endpoint; when full, new copies are dropped and counted.
    #[serde(default = "default_shadow_queue")]
    pub shadow_queue_capacity: usize,
    /// Transform steps on request + feature rows before the model (after the model version's
    /// own `preprocess`). See transforms/README.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preprocess: Vec<serde_json::Value>,
    /// Transform steps on each prediction (a map of output name → value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postprocess: Vec<serde_json::Value>,
    /// Prediction capture: a sample of requests with their features and answers, written in
    /// batches to a directory or S3 prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    pub name: String,
    /// `name@alias` or `name@version`; loaded like the `models` list.
    pub model: String,
    /// Relative share of traffic among the endpoint's variants (integers; 90 and 10 = 90%/10%).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// `name@alias` or `name@version`.
    pub model: String,
    /// Label in metrics and capture records; default `shadow-<model name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Share of requests copied to the shadow, 0..=1.
    pub sample: f64,
    /// A shadow answer slower than this is abandoned and counted as a timeout.
    #[serde(default = "default_shadow_timeout")]
    pub timeout: String,
}

impl ShadowConfig {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let model = ModelRef::parse(&self.model)
                .map(|m| m.name)
                .unwrap_or_else(|_| self.model.clone());
            format!("shadow-{model}")
        })
    }

    pub fn timeout(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.timeout).map_err(|e| e.to_string())
    }
}

impl EndpointConfig {
    /// An endpoint with these variants and nothing else (no sticky key, shadows, transforms
    /// or capture).
    pub fn new(name: &str, variants: Vec<VariantConfig>) -> EndpointConfig {
        EndpointConfig {
            name: name.to_string(),
            sticky_key: None,
            salt: None,
            variants,
            shadow: Vec::new(),
            shadow_queue_capacity: default_shadow_queue(),
            preprocess: Vec::new(),
            postprocess: Vec::new(),
            capture: None,
        }
    }

    /// The model references the endpoint serves: variants, then shadows.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.variants
            .iter()
            .map(|v| v.model.as_str())
            .chain(self.shadow.iter().map(|s| s.model.as_str()))
    }

    /// The endpoint's preprocess and postprocess chains, compiled (script files read from
    /// `base_dir`); an error names the key under `at`, e.g. `endpoints[0].postprocess`.
    pub fn chains(
        &self,
        at: &str,
        base_dir: &std::path::Path,
        transforms: &ferry_transforms::Registry,
    ) -> Result<(ferry_transforms::Chain, ferry_transforms::Chain), String> {
        use ferry_transforms::{BuildOptions, Stage, build_chain};
        let chain = |steps: &[serde_json::Value], stage, key: &str| {
            let options = BuildOptions {
                stage,
                base_dir,
                registry: transforms,
            };
            build_chain(steps, &options).map_err(|e| format!("`{at}.{key}`: {e}"))
        };
        Ok((
            chain(&self.preprocess, Stage::Pre, "preprocess")?,
            chain(&self.postprocess, Stage::Post, "postprocess")?,
        ))
    }

    /// Checks what can be checked without the registry; `at` is the key path, e.g.
    /// `endpoints[0]`. Transform steps are compiled (and checked) when the pipeline is built.
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.variants.is_empty() {
            return err(format!(
                "`{at}.variants` is empty: list at least one {{name: ..., model: name@alias, weight: ...}}"
            ));
        }
        let mut labels: Vec<String> = Vec::new();
        for (j, v) in self.variants.iter().enumerate() {
            if !is_valid_variant_name(&v.name) {
                return err(format!(
                    "`{at}.variants[{j}].name` {:?} must be 1-63 characters of [A-Za-z0-9_.-] (it travels in the x-ferry-variant header)",
                    v.name
                ));
            }
            if labels.contains(&v.name) {
                return err(format!(
                    "`{at}.variants[{j}].name` {:?} is listed twice",
                    v.name
                ));
            }
            labels.push(v.name.clone());
            ModelRef::parse(&v.model)
                .map_err(|e| ConfigError(format!("`{at}.variants[{j}].model`: {e}")))?;
        }
        if self.variants.iter().all(|v| v.weight == 0) {
            return err(format!(
                "`{at}.variants`: every weight is 0; give at least one variant a positive weight"
            ));
        }
        if self
            .variants
            .iter()
            .map(|v| u64::from(v.weight))
            .sum::<u64>()
            > 1_000_000
        {
            return err(format!(
                "`{at}.variants`: weights add up to more than 1000000; use smaller numbers (they are relative)"
            ));
        }
        if let Some(k) = &self.sticky_key
            && k.is_empty()
        {
            return err(format!(
                "`{at}.sticky_key` is empty: name the request field (e.g. user_id) or remove the key"
            ));
        }
        for (j, s) in self.shadow.iter().enumerate() {
            ModelRef::parse(&s.model)
                .map_err(|e| ConfigError(format!("`{at}.shadow[{j}].model`: {e}")))?;
            if !(0.0..=1.0).contains(&s.sample) {
                return err(format!(
                    "`{at}.shadow[{j}].sample` is {}; it is the share of requests copied, within 0..=1",
                    s.sample
                ));
            }
            s.timeout()
                .map_err(|e| ConfigError(format!("`{at}.shadow[{j}].timeout`: {e}")))?;
            let label = s.label();
            if !is_valid_variant_name(&label) || labels.contains(&label) {
                return err(format!(
                    "`{at}.shadow[{j}].name` {label:?} must be unique among the endpoint's variants and shadows and made of [A-Za-z0-9_.-]"
                ));
            }
            labels.push(label);
        }
        if self.shadow_queue_capacity == 0 {
            return err(format!("`{at}.shadow_queue_capacity` must be at least 1"));
        }
        if let Some(c) = &self.capture {
            c.validate(&format!("{at}.capture")).map_err(ConfigError)?;
        }
        Ok(())
    }
}

/// Variant names travel in headers and metric labels.
pub fn is_valid_variant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn default_shadow_queue() -> usize {
    256
}

fn default_shadow_timeout() -> String {
    "2s".into()
}

fn default_weight() -> u32 {
    100
}
