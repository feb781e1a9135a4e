//! The model part of `ferry.yaml` (`models` entries and `batching`), and `ModelsConfig`: what the
//! model manager reads, built by the server from its whole config. The server re-exports these
//! types, so the YAML schema and its error messages are the server config's.

use crate::scheduler::BatchPolicy;
use ferry_runtimes::{DeviceRequest, OnnxEngine};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// As many as the server admits at once by default (`max_concurrent_requests`): a request
/// refused for a full queue has already been read and decoded, so under a closed-loop flood
/// a smaller queue turned the excess into a storm of cheap-to-send, costly-to-refuse retries;
/// the in-flight limit refuses before any of that, and `shed_after_calls` bounds the wait.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// A served model: a bare reference, or a reference with settings of its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ModelEntry {
    Ref(String),
    Detailed(ModelSettings),
}

// Hand-written so that a typo inside a detailed entry is reported by its key; serde's
// untagged enums only say that no variant matched.
impl<'de> Deserialize<'de> for ModelEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> serde::de::Visitor<'de> for EntryVisitor {
            type Value = ModelEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a model reference such as `churn@champion`, or {model: churn@champion, ...}",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelEntry, E> {
                Ok(ModelEntry::Ref(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ModelEntry, A::Error> {
                ModelSettings::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ModelEntry::Detailed)
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

impl ModelEntry {
    pub fn settings(&self) -> ModelSettings {
        match self {
            ModelEntry::Ref(model) => ModelSettings::new(model.clone()),
            ModelEntry::Detailed(s) => s.clone(),
        }
    }
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
    #[serde(default)]
    pub batching: Option<BatchingConfig>,
    /// Where the model runs: `auto` (first CUDA device if usable, else CPU), `cpu`, `cuda:N`.
    /// Only Candle models (`format: safetensors`) use a GPU; ONNX models run on the CPU.
    #[serde(default)]
    pub device: Option<DeviceRequest>,
    /// With `device: cuda:N`: refuse to load when that device is not usable, instead of
    /// falling back to the CPU with a warning.
    #[serde(default)]
    pub device_strict: bool,
}

impl ModelSettings {
    /// `model` with every setting left to the server-wide default.
    pub fn new(model: impl Into<String>) -> ModelSettings {
        ModelSettings {
            model: model.into(),
            onnx_engine: None,
            instances: None,
            intra_op_threads: None,
            queue_capacity: None,
            batching: None,
            device: None,
            device_strict: false,
        }
    }

    /// Range checks of the entry's own settings; `at` is its key path (`models[0]`), which
    /// the message names.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if let Some(b) = &self.batching {
            b.validate(&format!("{at}.batching"))?;
        }
        for (key, value) in [
            ("instances", self.instances),
            ("intra_op_threads", self.intra_op_threads),
            ("queue_capacity", self.queue_capacity),
        ] {
            if value == Some(0) {
                return Err(format!("`{at}.{key}` must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Triton-style dynamic batching: requests queued together are merged along the batch
/// dimension, run once, and split back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most rows merged into one engine call; 0 or 1 turns batching off.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
    /// How long the oldest request may wait for others, in microseconds. 0 merges only what
    /// is already queued, which adds no latency.
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// Batch sizes sent as soon as they are reached.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
    /// A request whose predicted engine time is below this many microseconds runs on the
    /// I/O thread that received it when nothing is queued, skipping the compute-thread
    /// hand-off (two thread wake-ups). 0 always queues. Only with `max_queue_delay_us: 0`:
    /// a delay asks for batches, so requests wait for them.
    #[serde(default = "default_inline_below_us")]
    pub inline_below_us: u64,
    /// A queued request that has waited longer than this many of the model's recent engine
    /// calls, and at least `shed_min_wait_ms`, is answered 429 when a compute thread reaches
    /// it, instead of running late and making every request behind it late too. 0 never
    /// sheds.
    #[serde(default = "default_shed_after_calls")]
    pub shed_after_calls: u32,
    /// The shortest queue wait, in milliseconds, that is shed.
    #[serde(default = "default_shed_min_wait_ms")]
    pub shed_min_wait_ms: u64,
}

fn default_shed_after_calls() -> u32 {
    6
}

fn default_shed_min_wait_ms() -> u64 {
    1000
}

fn default_max_batch_size() -> usize {
    64
}

fn default_inline_below_us() -> u64 {
    50
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: default_max_batch_size(),
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            inline_below_us: default_inline_below_us(),
            shed_after_calls: default_shed_after_calls(),
            shed_min_wait_ms: default_shed_min_wait_ms(),
        }
    }
}

impl BatchingConfig {
    pub fn policy(&self) -> Option<BatchPolicy> {
        (self.max_batch_size > 1).then(|| BatchPolicy {
            max_batch_rows: self.max_batch_size,
            max_delay: Duration::from_micros(self.max_queue_delay_us),
            preferred_rows: self.preferred_batch_sizes.clone(),
        })
    }

    /// The engine-time limit below which an idle model runs a request on the caller's thread.
    pub fn inline_below(&self) -> Option<Duration> {
        (self.inline_below_us > 0 && self.max_queue_delay_us == 0)
            .then(|| Duration::from_micros(self.inline_below_us))
    }

    /// Range checks; `key` is the key path in the config, e.g. `models[0].batching`, and the
    /// message names it.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if self.max_queue_delay_us > 10_000_000 {
            return Err(format!(
                "`{key}.max_queue_delay_us` is {} µs; use at most 10000000 (10 s)",
                self.max_queue_delay_us
            ));
        }
        if self.inline_below_us > 10_000 {
            return Err(format!(
                "`{key}.inline_below_us` is {} µs; use at most 10000 (10 ms): longer calls would hold up the I/O thread's other connections",
                self.inline_below_us
            ));
        }
        if self.shed_after_calls > 1000 {
            return Err(format!(
                "`{key}.shed_after_calls` is {}; use 0 (never shed) to 1000",
                self.shed_after_calls
            ));
        }
        if self.shed_min_wait_ms > 600_000 {
            return Err(format!(
                "`{key}.shed_min_wait_ms` is {}; use at most 600000 (10 minutes)",
                self.shed_min_wait_ms
            ));
        }
        if let Some(p) = self
            .preferred_batch_sizes
            .iter()
            .find(|&&p| p == 0 || p > self.max_batch_size)
        {
            return Err(format!(
                "`{key}.preferred_batch_sizes` has {p}; sizes must be between 1 and max_batch_size ({})",
                self.max_batch_size
            ));
        }
        Ok(())
    }
}

/// What the model manager needs from the server config: the models to serve and the
/// server-wide defaults their own settings override.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelsConfig {
    /// Every model to load, in config order (the first reference to a model decides the
    /// version unversioned requests get).
    pub models: Vec<ModelSettings>,
    /// Names of models only shadows use: they never hold back readiness.
    pub shadow_only: HashSet<String>,
    /// Engine for ONNX models: `ort`, `tract`, or `auto` (ort when its library loads).
    pub onnx_engine: OnnxEngine,
    /// Path of `libonnxruntime.so`, when the config names one.
    pub onnxruntime_lib: Option<PathBuf>,
    /// Compute threads per model version.
    pub instances: usize,
    /// Engine intra-op threads per inference; 0 sizes them from the usable cores.
    pub intra_op_threads: usize,
    /// Requests that may wait per model version.
    pub queue_capacity: usize,
    /// Dynamic batching defaults.
    pub batching: BatchingConfig,
    /// Deadline for requests that do not set their own.
    pub request_timeout: Option<Duration>,
}

impl ModelsConfig {
    /// These models with the server's defaults (one compute thread, automatic intra-op
    /// threads, default batching, no deadline).
    pub fn new(models: Vec<ModelSettings>) -> ModelsConfig {
        ModelsConfig {
            models,
            shadow_only: HashSet::new(),
            onnx_engine: OnnxEngine::Auto,
            onnxruntime_lib: None,
            instances: 1,
            intra_op_threads: 0,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            batching: BatchingConfig::default(),
            request_timeout: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_a_reference_or_settings_and_name_a_mistyped_key() {
        let entries: Vec<ModelEntry> =
            serde_yaml::from_str("[churn@champion, {model: fraud@7, instances: 2}]").unwrap();
        assert_eq!(entries[0].settings(), ModelSettings::new("churn@champion"));
        assert_eq!(entries[1].settings().instances, Some(2));
        let err = serde_yaml::from_str::<Vec<ModelEntry>>("[{model: a@1, instnces: 2}]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `instnces`"), "{err}");
    }

    #[test]
    fn settings_checks_name_the_key() {
        let mut s = ModelSettings::new("a@1");
        assert_eq!(s.validate("models[3]"), Ok(()));
        s.queue_capacity = Some(0);
        assert_eq!(
            s.validate("models[3]").unwrap_err(),
            "`models[3].queue_capacity` must be at least 1"
        );
        s.queue_capacity = None;
        s.batching = Some(BatchingConfig {
            preferred_batch_sizes: vec![128],
            ..BatchingConfig::default()
        });
        let err = s.validate("models[3]").unwrap_err();
        assert!(
            err.starts_with("`models[3].batching.preferred_batch_sizes` has 128"),
            "{err}"
        );
        s.batching = Some(BatchingConfig {
            inline_below_us: 20_000,
            ..BatchingConfig::default()
        });
        let err = s.validate("models[3]").unwrap_err();
        assert!(
            err.starts_with("`models[3].batching.inline_below_us` is 20000 µs"),
            "{err}"
        );
        for (batching, key) in [
            (
                BatchingConfig {
                    shed_after_calls: 5000,
                    ..BatchingConfig::default()
                },
                "`models[3].batching.shed_after_calls` is 5000",
            ),
            (
                BatchingConfig {
                    shed_min_wait_ms: 700_000,
                    ..BatchingConfig::default()
                },
                "`models[3].batching.shed_min_wait_ms` is 700000",
            ),
        ] {
            s.batching = Some(batching);
            let err = s.validate("models[3]").unwrap_err();
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn batching_policy_is_off_at_one_row() {
        let one = BatchingConfig {
            max_batch_size: 1,
            ..BatchingConfig::default()
        };
        assert!(one.policy().is_none());
        let p = BatchingConfig::default().policy().unwrap();
        assert_eq!(p.max_batch_rows, 64);
        assert_eq!(p.max_delay, Duration::ZERO);
        // Inline runs only without a batching delay, and 0 turns them off.
        assert_eq!(
            BatchingConfig::default().inline_below(),
            Some(Duration::from_micros(50))
        );
        let delayed = BatchingConfig {
            max_queue_delay_us: 100,
            ..BatchingConfig::default()
        };
        assert_eq!(delayed.inline_below(), None);
        let off = BatchingConfig {
            inline_below_us: 0,
            ..BatchingConfig::default()
        };
        assert_eq!(off.inline_below(), None);
    }
}
