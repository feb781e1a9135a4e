//! Which model versions are loaded, loading them (fetch + verify → engine → warm-up → compute
//! queue), and readiness. Requests look models up here; nothing here runs on the request path
//! except a read lock.

use crate::config::{ModelSettings, ServerConfig};
use crate::scheduler::ComputeQueue;
use crate::telemetry::metrics::Metrics;
use ferry_registry::{Manifest, ModelFormat, ModelRef, Registry, RegistryError};
use ferry_runtimes::{
    DataType, LoadOptions, OnnxEngine, Runtime, RuntimeError, Signature, Tensor, TensorData,
    load_onnx,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// A model version that is loaded, warmed up and has compute threads.
pub struct LoadedModel {
    pub name: String,
    pub version: u64,
    pub manifest: Manifest,
    pub runtime: Arc<dyn Runtime>,
    pub queue: ComputeQueue,
}

impl LoadedModel {
    pub fn signature(&self) -> &Signature {
        self.runtime.signature()
    }
}

enum VersionState {
    Loading,
    Ready(Arc<LoadedModel>),
    Failed(String),
}

#[derive(Default)]
struct ModelSlot {
    versions: BTreeMap<u64, VersionState>,
    /// The version unversioned requests go to: the one the config's reference resolved to.
    default_version: Option<u64>,
    /// Why the config's reference to this model resolved to no version.
    resolve_error: Option<String>,
}

/// Why a request found no model to run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("unknown model `{name}`; served models: {available:?}")]
    UnknownModel {
        name: String,
        available: Vec<String>,
    },
    #[error("model `{name}` has no version {version} loaded; loaded versions: {loaded:?}")]
    UnknownVersion {
        name: String,
        version: String,
        loaded: Vec<u64>,
    },
    #[error("model `{name}`{} is not ready: {reason}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    NotReady {
        name: String,
        version: Option<u64>,
        reason: String,
    },
}

/// One row of the repository index (`POST /v2/repository/index`).
#[derive(Debug, Clone, Serialize)]
pub struct IndexEntry {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub state: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Other(String),
}

pub struct ModelManager {
    registry: Registry,
    config: ServerConfig,
    metrics: Metrics,
    slots: RwLock<BTreeMap<String, ModelSlot>>,
    /// The version each configured reference (`churn@champion`) resolved to, so an endpoint
    /// variant gets the version its own reference names.
    resolved: RwLock<BTreeMap<String, u64>>,
}

impl ModelManager {
    pub fn new(registry: Registry, config: ServerConfig, metrics: Metrics) -> ModelManager {
        let mut slots = BTreeMap::new();
        for entry in &config.all_model_entries() {
            if let Ok(model) = ModelRef::parse(&entry.settings().model) {
                slots.entry(model.name).or_insert_with(ModelSlot::default);
            }
        }
        ModelManager {
            registry,
            config,
            metrics,
            slots: RwLock::new(slots),
            resolved: RwLock::new(BTreeMap::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelSlot>> {
        // Writers only insert or replace whole entries, so a poisoned map is still consistent.
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelSlot>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every model the config lists, one after the other, off the async executor.
    pub async fn load_configured(self: &Arc<Self>) {
        for entry in self.config.all_model_entries() {
            let settings = entry.settings();
            let manager = self.clone();
            let outcome = tokio::task::spawn_blocking(move || manager.load_entry(&settings)).await;
            if let Err(e) = outcome {
                tracing::error!(error = %e, "Model load task panicked. This is a bug.");
            }
        }
    }

    fn load_entry(&self, settings: &ModelSettings) {
        let model = match ModelRef::parse(&settings.model) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "Invalid model reference.");
                return;
            }
        };
        let version = match self.registry.resolve(&model) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(model = %model, error = %e, "Could not resolve model reference.");
                let mut slots = self.write();
                let slot = slots.entry(model.name.clone()).or_default();
                slot.resolve_error = Some(e.to_string());
                return;
            }
        };
        self.resolved
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model.to_string(), version);
        {
            let mut slots = self.write();
            let slot = slots.entry(model.name.clone()).or_default();
            slot.default_version.get_or_insert(version);
            slot.resolve_error = None;
            if matches!(slot.versions.get(&version), Some(VersionState::Ready(_))) {
                return;
            }
            slot.versions.insert(version, VersionState::Loading);
        }
        let started = Instant::now();
        let labels = [model.name.as_str(), &version.to_string()];
        let state = match self.load_version(&model.name, version, settings) {
            Ok(loaded) => {
                tracing::info!(
                    model = %model.name,
                    version,
                    engine = %loaded.runtime.engine(),
                    seconds = started.elapsed().as_secs_f64(),
                    "Model version loaded and warmed up."
                );
                self.metrics
                    .model_loads
                    .with_label_values(&[labels[0], labels[1], "ready"])
                    .inc();
                self.metrics.model_ready.with_label_values(&labels).set(1);
                VersionState::Ready(Arc::new(loaded))
            }
            Err(e) => {
                tracing::error!(model = %model.name, version, error = %e, "Model version failed to load; it will not be served.");
                self.metrics
                    .model_loads
                    .with_label_values(&[labels[0], labels[1], "failed"])
                    .inc();
                self.metrics.model_ready.with_label_values(&labels).set(0);
                VersionState::Failed(e.to_string())
            }
        };
        self.write()
            .entry(model.name.clone())
            .or_default()
            .versions
            .insert(version, state);
    }

    fn load_version(
        &self,
        name: &str,
        version: u64,
        settings: &ModelSettings,
    ) -> Result<LoadedModel, LoadError> {
        let verified = self.registry.fetch(name, version)?;
        let manifest = verified.manifest.clone();
        let options = LoadOptions {
            onnx_engine: settings.onnx_engine.unwrap_or(self.config.onnx_engine),
            intra_op_threads: settings
                .intra_op_threads
                .unwrap_or(self.config.intra_op_threads),
            intra_op_spinning: false,
            sessions: 1,
        };
        let runtime = match manifest.format {
            ModelFormat::Onnx => {
                load_onnx(&verified.artifact_path(), &manifest.signature(), &options)?
            }
            ModelFormat::Safetensors => {
                return Err(LoadError::Other(
                    "format `safetensors` needs the Candle engine, which this build does not include; export the model to ONNX"
                        .into(),
                ));
            }
        };
        warm_up(runtime.as_ref())?;
        let queue = ComputeQueue::start(
            name,
            version,
            runtime.clone(),
            settings.instances.unwrap_or(self.config.instances),
            settings
                .queue_capacity
                .unwrap_or(self.config.queue_capacity),
            self.metrics.clone(),
        )
        .map_err(|e| LoadError::Other(format!("could not start compute threads: {e}")))?;
        Ok(LoadedModel {
            name: name.to_string(),
            version,
            manifest,
            runtime,
            queue,
        })
    }

    /// The model version a request addresses; `version: None` is the configured default.
    pub fn lookup(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedModel>, LookupError> {
        let slots = self.read();
        let Some(slot) = slots.get(name) else {
            return Err(LookupError::UnknownModel {
                name: name.to_string(),
                available: slots.keys().cloned().collect(),
            });
        };
        let loaded = || {
            slot.versions
                .iter()
                .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
                .map(|(v, _)| *v)
                .collect::<Vec<_>>()
        };
        let version = match version {
            Some(v) => match v.parse::<u64>() {
                Ok(n) if slot.versions.contains_key(&n) => n,
                _ => {
                    return Err(LookupError::UnknownVersion {
                        name: name.to_string(),
                        version: v.to_string(),
                        loaded: loaded(),
                    });
                }
            },
            None => match slot.default_version {
                Some(v) => v,
                None => {
                    return Err(LookupError::NotReady {
                        name: name.to_string(),
                        version: None,
                        reason: slot
                            .resolve_error
                            .clone()
                            .unwrap_or_else(|| "it is still loading".into()),
                    });
                }
            },
        };
        match slot.versions.get(&version) {
            Some(VersionState::Ready(model)) => Ok(model.clone()),
            Some(VersionState::Failed(reason)) => Err(LookupError::NotReady {
                name: name.to_string(),
                version: Some(version),
                reason: reason.clone(),
            }),
            Some(VersionState::Loading) | None => Err(LookupError::NotReady {
                name: name.to_string(),
                version: Some(version),
                reason: "it is still loading".into(),
            }),
        }
    }

    /// The version a configured reference resolved to (endpoint variants use this).
    pub fn lookup_ref(&self, model: &ModelRef) -> Result<Arc<LoadedModel>, LookupError> {
        let version = self
            .resolved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&model.to_string())
            .copied();
        match version {
            Some(v) => self.lookup(&model.name, Some(&v.to_string())),
            None => self.lookup(&model.name, None).and_then(|m| {
                Err(LookupError::NotReady {
                    name: m.name.clone(),
                    version: None,
                    reason: format!("reference {model} is still being resolved"),
                })
            }),
        }
    }

    /// Versions of `name` that are loaded and ready, ascending.
    pub fn ready_versions(&self, name: &str) -> Vec<u64> {
        self.read()
            .get(name)
            .map(|slot| {
                slot.versions
                    .iter()
                    .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
                    .map(|(v, _)| *v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Server readiness: every configured model resolved, loaded and warmed up, and at least
    /// one model is.
    pub fn is_ready(&self) -> bool {
        let slots = self.read();
        let mut any = false;
        for slot in slots.values() {
            let Some(v) = slot.default_version else {
                return false;
            };
            if slot.resolve_error.is_some() {
                return false;
            }
            match slot.versions.get(&v) {
                Some(VersionState::Ready(_)) => any = true,
                _ => return false,
            }
        }
        any
    }

    pub fn index(&self) -> Vec<IndexEntry> {
        let slots = self.read();
        let mut out = Vec::new();
        for (name, slot) in slots.iter() {
            if let Some(reason) = &slot.resolve_error {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: "UNAVAILABLE",
                    reason: reason.clone(),
                });
            }
            for (version, state) in &slot.versions {
                let (state, reason) = match state {
                    VersionState::Loading => ("LOADING", String::new()),
                    VersionState::Ready(_) => ("READY", String::new()),
                    VersionState::Failed(r) => ("UNAVAILABLE", r.clone()),
                };
                out.push(IndexEntry {
                    name: name.clone(),
                    version: Some(version.to_string()),
                    state,
                    reason,
                });
            }
        }
        out
    }
}

/// Runs one row of zeros through the engine, so the first request does not pay for lazy
/// initialisation, and a model that cannot run at all never reports ready.
fn warm_up(runtime: &dyn Runtime) -> Result<(), RuntimeError> {
    let inputs = runtime
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .map(|&d| if d < 0 { 1 } else { d as usize })
                .collect();
            let n = shape.iter().product();
            let data = match spec.datatype {
                DataType::Bool => TensorData::Bool(vec![false; n]),
                DataType::Uint8 => TensorData::Uint8(vec![0; n]),
                DataType::Uint16 => TensorData::Uint16(vec![0; n]),
                DataType::Uint32 => TensorData::Uint32(vec![0; n]),
                DataType::Uint64 => TensorData::Uint64(vec![0; n]),
                DataType::Int8 => TensorData::Int8(vec![0; n]),
                DataType::Int16 => TensorData::Int16(vec![0; n]),
                DataType::Int32 => TensorData::Int32(vec![0; n]),
                DataType::Int64 => TensorData::Int64(vec![0; n]),
                DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
                DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
                DataType::Bytes => TensorData::Bytes(vec![Vec::new(); n]),
            };
            Tensor::new(spec.name.clone(), shape, data)
                .expect("the buffer has as many elements as the shape. This is a bug.")
        })
        .collect::<Vec<_>>();
    runtime.run(&inputs).map(|_| ())
}

/// Decides where ONNX Runtime's library comes from and loads it; logs what happened.
/// Returns whether ONNX Runtime is usable.
pub fn init_onnx_runtime(config: &ServerConfig) -> bool {
    #[cfg(feature = "ort")]
    {
        let wants_ort = config.onnx_engine == OnnxEngine::Ort
            || config
                .models
                .iter()
                .any(|m| m.settings().onnx_engine == Some(OnnxEngine::Ort));
        let candidates = ort_library_candidates(config);
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            if wants_ort {
                tracing::error!(searched = ?candidates, "ONNX Runtime library not found; models configured for `onnx_engine: ort` will not load. Install the onnxruntime wheel and set FERRY_ORT_LIB (python3 scripts/find-ort-lib.py prints the path).");
            } else {
                tracing::info!(searched = ?candidates, "ONNX Runtime library not found; ONNX models run on tract (pure Rust). Set FERRY_ORT_LIB to use ONNX Runtime.");
            }
            return false;
        };
        match ferry_runtimes::ort::init(path) {
            Ok(()) => {
                tracing::info!(library = %path.display(), "ONNX Runtime loaded.");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "ONNX Runtime could not be loaded; ONNX models run on tract unless they ask for ort.");
                false
            }
        }
    }
    #[cfg(not(feature = "ort"))]
    {
        let _ = config;
        tracing::info!(
            "This build has no ONNX Runtime engine (cargo feature `ort`); ONNX models run on tract."
        );
        false
    }
}

#[cfg(feature = "ort")]
fn ort_library_candidates(config: &ServerConfig) -> Vec<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(path) = &config.onnxruntime_lib {
        return vec![path.clone()];
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return vec![PathBuf::from(path)];
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
    {
        dirs.push(exe_dir.join("../lib"));
        dirs.push(exe_dir);
    }
    dirs.extend(["/usr/local/lib", "/usr/lib", "/opt/onnxruntime/lib"].map(PathBuf::from));
    let mut out = Vec::new();
    for dir in dirs {
        out.push(dir.join("libonnxruntime.so"));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut versioned: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so."))
                })
                .collect();
            versioned.sort();
            out.extend(versioned.into_iter().rev());
        }
    }
    out
}
