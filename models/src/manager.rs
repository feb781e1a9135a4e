//! Which model versions are loaded, loading them (fetch + verify → engine → warm-up → compute
//! queue), readiness, and following the registry while serving: the poller re-resolves the
//! references the server serves, loads a new version in the background, swaps it in
//! atomically, and drains and frees the old one. Requests look models up here; nothing here
//! runs on the request path except a read lock.

use crate::config::{ModelSettings, ModelsConfig};
use crate::metrics::ModelMetrics;
use crate::scheduler::{ComputeQueue, QueueOptions};
use ferry_registry::{Manifest, ModelFormat, ModelRef, Registry, RegistryError, Selector};
use ferry_runtimes::device::intra_op_share;
use ferry_runtimes::{
    DataType, Devices, LoadOptions, Runtime, RuntimeError, Signature, Tensor, TensorData,
    load_onnx, load_safetensors, load_trees,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A model version that is loaded, warmed up and has compute threads.
pub struct LoadedModel {
    pub name: String,
    pub version: u64,
    pub manifest: Manifest,
    pub runtime: Arc<dyn Runtime>,
    pub queue: ComputeQueue,
    /// Engine intra-op threads this version was given.
    pub intra_op_threads: usize,
    /// ONNX Runtime sessions (calls that can run at once) when the engine is ONNX Runtime.
    pub ort_sessions: Option<usize>,
    /// This version's request counters and latency histogram, resolved once.
    pub request_metrics: crate::metrics::RequestMetrics,
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
    /// The version unversioned requests go to: the one `default_ref` resolves to.
    default_version: Option<u64>,
    /// The first served reference to this model (config order); it decides `default_version`.
    default_ref: Option<String>,
    /// Served references and the version each serves now.
    refs: BTreeMap<String, u64>,
    /// Why `default_ref` resolved to no version (cleared once it does).
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

/// Why the model control API could not load or unload a model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Registry(RegistryError),
    #[error("model `{name}` version {version} failed to load: {reason}")]
    LoadFailed {
        name: String,
        version: u64,
        reason: String,
    },
    #[error("model `{name}` is not served; served models: {served:?}")]
    NotServed { name: String, served: Vec<String> },
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

/// What one `sync` of a served reference did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The reference serves this version (already, or after a load and swap).
    Serving(u64),
    /// The version it resolves to failed to load; the previous one (if any) keeps serving.
    Failed { version: u64, reason: String },
    /// The reference does not resolve (no such model, alias, version).
    Unresolved(String),
}

/// Longest wait between polls while the registry is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Models up to this size (artifact plus external files) get an ONNX Runtime session per usable
/// core; larger ones one per compute thread.
const SMALL_MODEL_BYTES: u64 = 32 << 20;

pub struct ModelManager {
    registry: Registry,
    devices: Devices,
    config: ModelsConfig,
    metrics: ModelMetrics,
    slots: RwLock<BTreeMap<String, ModelSlot>>,
    /// What the server serves: the config's models plus those loaded through the control API.
    served: Mutex<Vec<ModelSettings>>,
    /// One load or swap at a time (poller and control API), so they never race on a slot.
    sync_lock: tokio::sync::Mutex<()>,
    /// Last problem logged per reference, so a persisting one is logged once, not every poll.
    reported: Mutex<HashMap<String, String>>,
    /// Models only shadows use: they load and serve like the others but never hold back
    /// server readiness (a shadow's failures must not reach callers).
    shadow_only: Mutex<std::collections::HashSet<String>>,
    /// The server's feature repo: a version whose `features` section cannot be served with it
    /// (or, without one, reads feature views) fails to load instead of failing every request.
    feature_repo: Option<Arc<ferry_features::FeatureRepo>>,
    /// Replaces the engines (`format` → ort/tract/Candle) for every version; only tests set it.
    runtime_loader: Option<RuntimeLoader>,
}

/// Builds a version's runtime from its verified manifest instead of an engine.
type RuntimeLoader = Arc<dyn Fn(&Manifest) -> Result<Arc<dyn Runtime>, RuntimeError> + Send + Sync>;

impl ModelManager {
    /// A manager for `config.models` (nothing loads until `load_configured`); its metrics go to
    /// `metrics`, whose families the caller registers where it exposes them.
    pub fn new(registry: Registry, config: ModelsConfig, metrics: ModelMetrics) -> ModelManager {
        let mut slots: BTreeMap<String, ModelSlot> = BTreeMap::new();
        let mut served = Vec::new();
        for settings in &config.models {
            if let Ok(model) = ModelRef::parse(&settings.model) {
                let slot = slots.entry(model.name.clone()).or_default();
                slot.default_ref.get_or_insert_with(|| model.to_string());
                served.push(settings.clone());
            }
        }
        let shadow_only = config.shadow_only.clone();
        let devices = Devices::discover();
        metrics
            .devices
            .with_label_values(&["cpu"])
            .set(devices.cpu.usable_cores as i64);
        metrics
            .devices
            .with_label_values(&["cuda"])
            .set(devices.cuda.len() as i64);
        ModelManager {
            registry,
            devices,
            config,
            metrics,
            slots: RwLock::new(slots),
            served: Mutex::new(served),
            sync_lock: tokio::sync::Mutex::new(()),
            reported: Mutex::new(HashMap::new()),
            shadow_only: Mutex::new(shadow_only),
            feature_repo: None,
            runtime_loader: None,
        }
    }

    /// Versions load only when their `features` section fits this repo (or, with None, reads
    /// only `request.*` columns).
    pub fn with_feature_repo(
        mut self,
        repo: Option<Arc<ferry_features::FeatureRepo>>,
    ) -> ModelManager {
        self.feature_repo = repo;
        self
    }

    /// Versions load through `loader` instead of an engine: everything else (resolving,
    /// verifying the files, the feature check, warm-up, compute queue, swaps) runs as in
    /// production, so tests exercise the real request path over a model they define in code
    /// (see `crate::testing::FnRuntime`).
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_runtime_loader(
        mut self,
        loader: impl Fn(&Manifest) -> Result<Arc<dyn Runtime>, RuntimeError> + Send + Sync + 'static,
    ) -> ModelManager {
        self.runtime_loader = Some(Arc::new(loader));
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The families the manager and its queues report to; the endpoint pipeline adds its own
    /// stages to `stage_duration`.
    pub fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }

    /// The CPU cores and CUDA devices found at start-up.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Intra-op threads for a model version: its own setting, the server's, or (0 = automatic)
    /// the usable cores shared among the served models and their compute threads.
    fn intra_op_threads(&self, settings: &ModelSettings, instances: usize) -> usize {
        match settings
            .intra_op_threads
            .unwrap_or(self.config.intra_op_threads)
        {
            0 => intra_op_share(
                self.devices.cpu.usable_cores,
                self.served().len(),
                instances,
            ),
            n => n,
        }
    }

    /// ONNX Runtime sessions for a model version: one per compute thread, and for a small
    /// model one per usable core, so that every I/O thread can run a cheap request inline at
    /// the same time (ONNX Runtime runs one call per session at a time; each session holds a
    /// copy of the weights, hence only for small models).
    fn sessions(&self, verified: &ferry_registry::VerifiedModel, instances: usize) -> usize {
        let bytes: u64 = verified
            .manifest
            .files
            .keys()
            .chain(std::iter::once(&verified.manifest.artifact))
            .filter_map(|f| std::fs::metadata(verified.dir.join(f)).ok())
            .map(|m| m.len())
            .sum();
        if bytes <= SMALL_MODEL_BYTES {
            instances.max(self.devices.cpu.usable_cores)
        } else {
            instances
        }
        .max(1)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelSlot>> {
        // Writers only insert or replace whole entries, so a poisoned map is still consistent.
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelSlot>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    fn served(&self) -> Vec<ModelSettings> {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Logs `message` for `key` unless it is what was logged last time; `None` clears it.
    fn report(&self, key: &str, message: Option<&str>) -> bool {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        match message {
            Some(m) if reported.get(key).map(String::as_str) == Some(m) => false,
            Some(m) => {
                reported.insert(key.to_string(), m.to_string());
                true
            }
            None => reported.remove(key).is_some(),
        }
    }

    /// Loads every model the config lists, one after the other, off the async executor.
    pub async fn load_configured(self: &Arc<Self>) {
        for settings in self.served() {
            if let Err(e) = self.sync(&settings, false).await {
                tracing::error!(model = %settings.model, error = %e, "Could not reach the registry to load the model; retrying on the next poll.");
                let mut slots = self.write();
                if let Ok(model) = ModelRef::parse(&settings.model)
                    && let Some(slot) = slots.get_mut(&model.name)
                    && slot.default_ref.as_deref() == Some(settings.model.as_str())
                    && slot.default_version.is_none()
                {
                    slot.resolve_error = Some(e.to_string());
                }
            }
        }
    }

    /// Polls the registry every `interval` for the served references that can change (aliases,
    /// latest, and versions not loaded yet), until the process ends. While the registry is
    /// unreachable, loaded versions keep serving and the wait doubles up to `MAX_BACKOFF`;
    /// the outage is logged when it starts and when it ends.
    pub async fn poll_task(self: Arc<Self>, interval: Duration) {
        let mut wait = interval;
        let mut outage: Option<Instant> = None;
        loop {
            tokio::time::sleep(wait).await;
            let mut unreachable = None;
            for settings in self.served() {
                let Ok(model) = ModelRef::parse(&settings.model) else {
                    continue;
                };
                if matches!(model.selector, Selector::Version(_)) && self.serves(&settings.model) {
                    continue;
                }
                if let Err(e) = self.sync(&settings, false).await {
                    unreachable = Some(e);
                    break;
                }
            }
            match (unreachable, outage) {
                (Some(e), None) => {
                    tracing::warn!(registry = %self.registry.uri(), error = %e, "Registry unreachable; loaded models keep serving. Retrying with backoff.");
                    outage = Some(Instant::now());
                    wait = (wait * 2).min(MAX_BACKOFF.max(interval));
                }
                (Some(_), Some(_)) => wait = (wait * 2).min(MAX_BACKOFF.max(interval)),
                (None, Some(since)) => {
                    tracing::info!(registry = %self.registry.uri(), seconds = since.elapsed().as_secs_f64(), "Registry reachable again.");
                    outage = None;
                    wait = interval;
                }
                (None, None) => {}
            }
        }
    }

    /// Whether `reference` serves a ready version.
    fn serves(&self, reference: &str) -> bool {
        let Ok(model) = ModelRef::parse(reference) else {
            return false;
        };
        let slots = self.read();
        slots.get(&model.name).is_some_and(|slot| {
            slot.refs
                .get(reference)
                .is_some_and(|v| matches!(slot.versions.get(v), Some(VersionState::Ready(_))))
        })
    }

    /// Resolves one served reference and, when it points at a version that is not loaded,
    /// loads, warms up and swaps it in; the version it replaces drains and is freed. A version
    /// that failed to load is retried only when `retry_failed` (the control API) asks.
    /// `Err` only when the registry is unreachable (worth retrying later).
    pub async fn sync(
        &self,
        settings: &ModelSettings,
        retry_failed: bool,
    ) -> Result<SyncOutcome, RegistryError> {
        let model = match ModelRef::parse(&settings.model) {
            Ok(m) => m,
            Err(e) => return Ok(SyncOutcome::Unresolved(e.to_string())),
        };
        let reference = model.to_string();
        let _guard = self.sync_lock.lock().await;
        let version = match self.registry.resolve(&model).await {
            Ok(v) => v,
            Err(e) if e.is_unavailable() => return Err(e),
            Err(e) => {
                let message = e.to_string();
                let serving = {
                    let mut slots = self.write();
                    let slot = slots.entry(model.name.clone()).or_default();
                    slot.default_ref.get_or_insert_with(|| reference.clone());
                    if slot.default_ref.as_deref() == Some(reference.as_str())
                        && slot.default_version.is_none()
                    {
                        slot.resolve_error = Some(message.clone());
                    }
                    slot.refs.get(&reference).copied()
                };
                if self.report(&reference, Some(&message)) {
                    match serving {
                        Some(v) => {
                            tracing::warn!(model = %reference, serving = v, error = %e, "Could not resolve model reference; the loaded version keeps serving.")
                        }
                        None => {
                            tracing::error!(model = %reference, error = %e, "Could not resolve model reference.")
                        }
                    }
                }
                return Ok(SyncOutcome::Unresolved(message));
            }
        };
        let key = model.name.clone();
        {
            let mut slots = self.write();
            let slot = slots.entry(key.clone()).or_default();
            slot.default_ref.get_or_insert_with(|| reference.clone());
            match slot.versions.get(&version) {
                Some(VersionState::Ready(_)) => {
                    drop(slots);
                    self.swap(&key, &reference, version);
                    return Ok(SyncOutcome::Serving(version));
                }
                Some(VersionState::Failed(reason)) if !retry_failed => {
                    return Ok(SyncOutcome::Failed {
                        version,
                        reason: reason.clone(),
                    });
                }
                _ => {
                    slot.versions.insert(version, VersionState::Loading);
                }
            }
        }
        let labels = [model.name.as_str(), &version.to_string()];
        let started = Instant::now();
        match self.load_version(&model.name, version, settings).await {
            Ok((loaded, from_cache)) => {
                tracing::info!(
                    model = %model.name,
                    version,
                    reference = %reference,
                    engine = %loaded.runtime.engine(),
                    device = %loaded.runtime.device(),
                    intra_op_threads = loaded.intra_op_threads,
                    source = if from_cache { "cache" } else if self.registry.cache_dir().is_some() { "download" } else { "registry" },
                    seconds = started.elapsed().as_secs_f64(),
                    "Model version loaded and warmed up."
                );
                self.metrics
                    .model_loads
                    .with_label_values(&[labels[0], labels[1], "ready"])
                    .inc();
                self.metrics.model_ready.with_label_values(&labels).set(1);
                let device = loaded.runtime.device().to_string();
                self.metrics
                    .model_threads
                    .with_label_values(&[labels[0], labels[1], device.as_str()])
                    .set(loaded.intra_op_threads as i64);
                self.report(&reference, None);
                self.write()
                    .entry(key.clone())
                    .or_default()
                    .versions
                    .insert(version, VersionState::Ready(Arc::new(loaded)));
                self.swap(&key, &reference, version);
                Ok(SyncOutcome::Serving(version))
            }
            Err(LoadError::Registry(e)) if e.is_unavailable() => {
                // Nothing is wrong with the version: forget the attempt, retry on a later poll.
                let mut slots = self.write();
                if let Some(slot) = slots.get_mut(&key)
                    && matches!(slot.versions.get(&version), Some(VersionState::Loading))
                {
                    slot.versions.remove(&version);
                }
                Err(e)
            }
            Err(e) => {
                let reason = e.to_string();
                let previous = {
                    let mut slots = self.write();
                    let slot = slots.entry(key.clone()).or_default();
                    slot.versions
                        .insert(version, VersionState::Failed(reason.clone()));
                    let previous = slot.refs.get(&reference).copied();
                    // Nothing served yet: unversioned requests get this version's failure as
                    // the reason they cannot be answered.
                    if previous.is_none() && slot.default_ref.as_deref() == Some(reference.as_str())
                    {
                        slot.default_version = Some(version);
                    }
                    previous
                };
                match previous {
                    Some(v) => {
                        tracing::error!(model = %model.name, version, reference = %reference, serving = v, error = %e, "Model version failed to load; the previous version keeps serving.")
                    }
                    None => {
                        tracing::error!(model = %model.name, version, reference = %reference, error = %e, "Model version failed to load; it will not be served.")
                    }
                }
                self.metrics
                    .model_loads
                    .with_label_values(&[labels[0], labels[1], "failed"])
                    .inc();
                self.metrics.model_ready.with_label_values(&labels).set(0);
                Ok(SyncOutcome::Failed { version, reason })
            }
        }
    }

    /// Points `reference` at the ready `version`; versions no served reference points at any
    /// more leave the map (new requests cannot reach them) and drain in the background.
    fn swap(&self, name: &str, reference: &str, version: u64) {
        let retired = {
            let mut slots = self.write();
            let slot = slots.entry(name.to_string()).or_default();
            let previous = slot.refs.insert(reference.to_string(), version);
            if slot.default_ref.as_deref() == Some(reference) {
                slot.default_version = Some(version);
                slot.resolve_error = None;
            }
            if previous == Some(version) {
                return;
            }
            if let Some(old) = previous {
                tracing::info!(model = %name, reference = %reference, from = old, to = version, "Swapped model version.");
            }
            match previous {
                Some(old)
                    if slot.default_version != Some(old)
                        && !slot.refs.values().any(|v| *v == old) =>
                {
                    slot.versions.remove(&old)
                }
                _ => None,
            }
        };
        if let Some(VersionState::Ready(old)) = retired {
            self.retire(old);
        }
    }

    /// Frees a version no request can reach any more, once the requests that already hold it
    /// (queued or running on its compute threads) have finished.
    fn retire(&self, old: Arc<LoadedModel>) {
        let labels = [old.name.clone(), old.version.to_string()];
        self.metrics
            .model_ready
            .with_label_values(&[labels[0].as_str(), labels[1].as_str()])
            .set(0);
        let device = old.runtime.device().to_string();
        self.metrics
            .model_threads
            .with_label_values(&[labels[0].as_str(), labels[1].as_str(), device.as_str()])
            .set(0);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            // Nobody can take a new reference (it left the map), so the count only goes down.
            while Arc::strong_count(&old) > 1 {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Closes the queue and joins the compute threads.
            drop(old);
            tracing::info!(model = %labels[0], version = %labels[1], seconds = started.elapsed().as_secs_f64(), "Old model version drained and unloaded.");
        });
    }

    async fn load_version(
        &self,
        name: &str,
        version: u64,
        settings: &ModelSettings,
    ) -> Result<(LoadedModel, bool), LoadError> {
        let verified = self.registry.fetch(name, version).await?;
        ferry_features::model_join_plan(
            self.feature_repo.as_deref(),
            name,
            version,
            &verified.manifest,
        )
        .map_err(LoadError::Other)?;
        let instances = settings.instances.unwrap_or(self.config.instances);
        let requested = settings.device.unwrap_or_default();
        let placement = crate::placement::place(
            &self.devices,
            verified.manifest.format,
            requested,
            settings.device_strict,
        )
        .map_err(RuntimeError::from)?;
        if let Some(reason) = &placement.fallback {
            tracing::warn!(model = %name, version, requested = %requested, reason = %reason, "Model asked for a GPU that is not available. Using CPU instead.");
        }
        let options = LoadOptions {
            onnx_engine: settings.onnx_engine.unwrap_or(self.config.onnx_engine),
            intra_op_threads: self.intra_op_threads(settings, instances),
            intra_op_spinning: false,
            sessions: self.sessions(&verified, instances),
            device: placement.device,
        };
        let intra_op_threads = options.intra_op_threads;
        let sessions = options.sessions;
        let batching = settings.batching.as_ref().unwrap_or(&self.config.batching);
        let queue_options = QueueOptions {
            threads: instances,
            capacity: settings
                .queue_capacity
                .unwrap_or(self.config.queue_capacity),
            batching: batching.policy(),
            default_timeout: self.config.request_timeout,
            inline_below: batching.inline_below(),
            shed_after_calls: Some(batching.shed_after_calls),
            shed_min_wait: Duration::from_millis(batching.shed_min_wait_ms),
        };
        let metrics = self.metrics.clone();
        let name = name.to_string();
        let from_cache = verified.from_cache;
        let loader = self.runtime_loader.clone();
        let task = tokio::task::spawn_blocking(move || -> Result<LoadedModel, LoadError> {
            let manifest = verified.manifest.clone();
            let runtime = match (&loader, manifest.format) {
                (Some(loader), _) => loader(&manifest)?,
                (None, ModelFormat::Onnx) => {
                    load_onnx(&verified.artifact_path(), &manifest.signature(), &options)?
                }
                (None, ModelFormat::Safetensors) => load_safetensors(
                    &verified.dir,
                    &manifest.artifact,
                    &manifest.architecture,
                    &manifest.signature(),
                    &options,
                )?,
                (None, format @ (ModelFormat::Xgboost | ModelFormat::Lightgbm)) => load_trees(
                    &verified.artifact_path(),
                    format
                        .tree_format()
                        .expect("xgboost and lightgbm are tree formats. This is a bug."),
                    &manifest.signature(),
                    &options,
                )?,
            };
            warm_up(runtime.as_ref())?;
            if queue_options.batching.is_some() && !runtime.signature().has_batch_dim() {
                tracing::info!(
                    model = %name,
                    version,
                    "Dynamic batching is off: the signature has no variable batch dimension."
                );
            }
            let request_metrics =
                crate::metrics::RequestMetrics::new(&metrics, &name, &version.to_string());
            let queue =
                ComputeQueue::start(&name, version, runtime.clone(), queue_options, metrics)
                    .map_err(|e| {
                        LoadError::Other(format!("could not start compute threads: {e}"))
                    })?;
            let ort_sessions =
                (runtime.engine() == ferry_runtimes::Engine::Ort).then_some(sessions);
            Ok(LoadedModel {
                name,
                version,
                manifest,
                runtime,
                queue,
                intra_op_threads,
                ort_sessions,
                request_metrics,
            })
        });
        let loaded = task
            .await
            .map_err(|e| LoadError::Other(format!("the load task failed: {e}")))??;
        Ok((loaded, from_cache))
    }

    /// Control API: (re)loads `name` now. A served model re-resolves its references (retrying
    /// versions that failed before); another model is added, following its latest version.
    pub async fn control_load(&self, name: &str) -> Result<u64, ControlError> {
        let mut targets: Vec<ModelSettings> = self
            .served()
            .into_iter()
            .filter(|s| ModelRef::parse(&s.model).is_ok_and(|m| m.name == name))
            .collect();
        let added = targets.is_empty();
        if added {
            let model = ModelRef::parse(name).map_err(ControlError::Registry)?;
            targets.push(ModelSettings::new(model.to_string()));
        }
        let mut default = None;
        for settings in &targets {
            match self.sync(settings, true).await {
                Ok(SyncOutcome::Serving(v)) => {
                    default.get_or_insert(v);
                }
                Ok(SyncOutcome::Failed { version, reason }) => {
                    return Err(ControlError::LoadFailed {
                        name: name.to_string(),
                        version,
                        reason,
                    });
                }
                Ok(SyncOutcome::Unresolved(_)) if added => {
                    self.write().remove(name);
                    let model = ModelRef::parse(name).map_err(ControlError::Registry)?;
                    return Err(ControlError::Registry(
                        self.registry.resolve(&model).await.err().unwrap_or(
                            RegistryError::NoVersions {
                                name: name.to_string(),
                            },
                        ),
                    ));
                }
                Ok(SyncOutcome::Unresolved(reason)) => {
                    return Err(ControlError::Registry(RegistryError::Manifest {
                        path: settings.model.clone(),
                        message: reason,
                    }));
                }
                Err(e) => return Err(ControlError::Registry(e)),
            }
        }
        if added {
            self.served
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(targets);
        }
        let slots = self.read();
        Ok(slots
            .get(name)
            .and_then(|s| s.default_version)
            .or(default)
            .unwrap_or_default())
    }

    /// Serves `reference` too if it is not served yet (an endpoint variant added by a config
    /// reload), loading it now. A failure is logged; the poller retries it.
    pub async fn ensure_served(&self, reference: &str, shadow_only: bool) {
        let Ok(model) = ModelRef::parse(reference) else {
            return;
        };
        {
            let mut names = self.shadow_only.lock().unwrap_or_else(|e| e.into_inner());
            let known = self.read().contains_key(&model.name);
            if shadow_only && !known {
                names.insert(model.name.clone());
            } else if !shadow_only {
                names.remove(&model.name);
            }
        }
        let settings = {
            let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
            if served
                .iter()
                .any(|s| ModelRef::parse(&s.model).ok().as_ref() == Some(&model))
            {
                return;
            }
            let settings = ModelSettings::new(model.to_string());
            served.push(settings.clone());
            settings
        };
        self.write()
            .entry(model.name.clone())
            .or_default()
            .default_ref
            .get_or_insert_with(|| model.to_string());
        match self.sync(&settings, false).await {
            Ok(SyncOutcome::Serving(v)) => {
                tracing::info!(model = %reference, version = v, "Serving a model a reloaded endpoint needs.")
            }
            Ok(other) => {
                tracing::warn!(model = %reference, outcome = ?other, "A model a reloaded endpoint needs did not load; retrying on the next poll.")
            }
            Err(e) => {
                tracing::warn!(model = %reference, error = %e, "Registry unreachable while loading a model a reloaded endpoint needs; retrying on the next poll.")
            }
        }
    }

    /// Control API: stops serving `name`; its versions drain and are freed. The model no
    /// longer counts for readiness and is not polled until it is loaded again.
    pub async fn control_unload(&self, name: &str) -> Result<Vec<u64>, ControlError> {
        let _guard = self.sync_lock.lock().await;
        let slot = self.write().remove(name);
        let Some(slot) = slot else {
            return Err(ControlError::NotServed {
                name: name.to_string(),
                served: self.read().keys().cloned().collect(),
            });
        };
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !ModelRef::parse(&s.model).is_ok_and(|m| m.name == name));
        let mut unloaded = Vec::new();
        for (version, state) in slot.versions {
            if let VersionState::Ready(model) = state {
                unloaded.push(version);
                self.retire(model);
            }
        }
        tracing::info!(model = name, versions = ?unloaded, "Model unloaded through the control API.");
        Ok(unloaded)
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
            .read()
            .get(&model.name)
            .and_then(|slot| slot.refs.get(&model.to_string()).copied());
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

    /// Server readiness: every served reference (each model's default one and every other
    /// pinned one, e.g. both `churn@champion` and `churn@2`) resolved, loaded and warmed up,
    /// and at least one model is. A version loading or failing in the background does not
    /// change it while the previous one serves.
    pub fn is_ready(&self) -> bool {
        let shadow_only = self
            .shadow_only
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut any = false;
        {
            let slots = self.read();
            for (name, slot) in slots.iter() {
                if shadow_only.contains(name) {
                    continue;
                }
                let Some(v) = slot.default_version else {
                    return false;
                };
                match slot.versions.get(&v) {
                    Some(VersionState::Ready(_)) => any = true,
                    _ => return false,
                }
            }
        }
        // The lock is released first: `serves` takes it again.
        self.served()
            .iter()
            .all(|settings| match ModelRef::parse(&settings.model) {
                Ok(model) => shadow_only.contains(&model.name) || self.serves(&model.to_string()),
                Err(_) => false,
            })
            && any
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
