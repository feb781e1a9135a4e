//! The inference pipeline behind business endpoints, shared by the HTTP server and batch mode:
//! resolve variant → fetch features → pre-transform → model → post-transform. HTTP handlers and
//! the batch job (`ferry-batch`) only convert their formats to and from `Pipeline::predict`
//! (rows) or `Pipeline::predict_columns` (Arrow batches); failures are `PredictError`s, which
//! carry no HTTP status: the server maps them in one place. Both build it with `Setup`.
//!
//! An endpoint's variants split its traffic by the sticky hash in `assign`; shadows get a
//! sampled copy of requests on a bounded queue served by a background task, so their latency
//! and failures never reach the caller; prediction capture records a sample of requests.

pub mod arrow_rows;
pub mod assign;
pub mod capture;
pub mod columnar;
pub mod config;
pub mod json_tensor;
pub mod metrics;
pub mod rows;
pub mod setup;
mod shadow;

use crate::capture::{Capture, CaptureRecord};
use crate::config::{EndpointConfig, FeaturesConfig};
pub use crate::metrics::PipelineMetrics;
pub use crate::setup::{Served, Setup, SetupError};
use assign::Split;
use ferry_features::online::{FeatureTable, MemoryStore, RedisStore};
use ferry_features::{
    FeatureError, FeatureRepo, JoinPlan, OnlineFeatures, OnlineStore, model_join_plan,
};
use ferry_models::{LoadedModel, LookupError, ModelManager, ScheduleError};
use ferry_registry::{ModelRef, S3Options};
use ferry_runtimes::{DataType, Tensor, TensorData};
pub use ferry_transforms::Frame;
use ferry_transforms::{BuildOptions, Chain, Context, Row, Stage, TransformError};
use rows::InvalidRows;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

/// Why a prediction failed.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("unknown endpoint `{name}`; endpoints: {available:?}")]
    UnknownEndpoint {
        name: String,
        available: Vec<String>,
    },
    #[error(
        "the x-ferry-variant header asks for variant `{asked}`, which endpoint `{endpoint}` does not have; its variants: {available:?}"
    )]
    UnknownVariant {
        endpoint: String,
        asked: String,
        available: Vec<String>,
    },
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Features(#[from] FeatureError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Rows that do not fit the model (no `features` section: rows go straight to its inputs):
    /// the caller's mistake.
    #[error(transparent)]
    Input(#[from] InvalidRows),
    #[error("endpoint `{endpoint}`, variant `{variant}`: {error}")]
    Transform {
        endpoint: String,
        variant: String,
        error: Box<TransformError>,
    },
    #[error("{0}")]
    Misconfigured(String),
    /// The request's deadline (`x-ferry-timeout-ms` or `request_timeout_ms`) passed.
    #[error(
        "endpoint `{endpoint}` did not answer within the request's deadline of {timeout_ms} ms (x-ferry-timeout-ms or request_timeout_ms)"
    )]
    DeadlineExceeded { endpoint: String, timeout_ms: u128 },
    /// The model answered with outputs that break its own signature: its fault, never the
    /// rows'.
    #[error("{0}")]
    ModelOutput(String),
}

impl PredictError {
    /// Label for per-variant error metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            PredictError::UnknownEndpoint { .. } => "unknown_endpoint",
            PredictError::UnknownVariant { .. } => "unknown_variant",
            PredictError::DeadlineExceeded { .. } => "deadline_exceeded",
            PredictError::Lookup(_) => "model_unavailable",
            PredictError::Features(_) => "features",
            PredictError::Schedule(
                ScheduleError::QueueFull { .. } | ScheduleError::Shed { .. },
            ) => "overloaded",
            PredictError::Schedule(_) => "schedule",
            PredictError::Input(_) => "invalid_input",
            PredictError::Transform { .. } => "transform",
            PredictError::Misconfigured(_) => "misconfigured",
            PredictError::ModelOutput(_) => "model_output",
        }
    }
}

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct PredictOptions {
    /// Send every row to this variant (the `x-ferry-variant` header), bypassing the split.
    pub forced_variant: Option<String>,
    /// Carried into capture records.
    pub request_id: String,
    /// The whole request's deadline (features, transforms, queue and model); None leaves
    /// only the model queues' default (`request_timeout_ms`).
    pub timeout: Option<std::time::Duration>,
}

/// The fewest rows a JSON request needs to take the column path (see `predict_rows`).
pub const COLUMNS_MIN_ROWS: usize = 16;

/// What `predict` returns: one prediction per row, and which variant, model and version
/// produced each.
#[derive(Debug, Clone)]
pub struct Predictions {
    pub endpoint: String,
    pub predictions: Vec<Value>,
    pub variants: Vec<String>,
    pub models: Vec<String>,
    pub versions: Vec<u64>,
    /// Feature values that were missing, stale or unavailable and got their default.
    pub defaulted: usize,
}

impl Predictions {
    /// The variant, model and version when every row agrees (None when rows were split).
    pub fn common(&self) -> Option<(&str, &str, u64)> {
        let first = (
            self.variants.first()?.as_str(),
            self.models.first()?.as_str(),
            *self.versions.first()?,
        );
        let same = self.variants.iter().all(|v| v == first.0)
            && self.models.iter().all(|m| m == first.1)
            && self.versions.iter().all(|v| *v == first.2);
        same.then_some(first)
    }
}

/// Opens the feature repo and its online store: Redis when a URL is set, else an in-process
/// store loaded from the offline files (local or S3, reached with the registry's S3 settings
/// `s3`).
pub async fn open_features(
    config: &FeaturesConfig,
    s3: &S3Options,
) -> Result<OnlineFeatures, String> {
    let repo = FeatureRepo::load(&config.repo).map_err(|e| e.to_string())?;
    let timeout = config.timeout().map_err(|e| e.0)?;
    let store: Arc<dyn OnlineStore> = match &config.redis {
        Some(url) => Arc::new(RedisStore::connect_lazy(url, timeout).map_err(|e| e.to_string())?),
        None => {
            let store = MemoryStore::load(&repo, s3).await.map_err(|e| {
                format!(
                    "could not load the in-process feature store (no `features.redis` set): {e}"
                )
            })?;
            tracing::info!(
                rows = store.len(),
                "No Redis configured: serving features from an in-process store loaded from the offline files."
            );
            Arc::new(store)
        }
    };
    Ok(OnlineFeatures {
        repo: Arc::new(repo),
        store,
        timeout,
        on_missing: config.on_missing,
    })
}

/// A request's deadline and the timeout it came from (for the message).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn exceeded(&self, endpoint: &str) -> PredictError {
        PredictError::DeadlineExceeded {
            endpoint: endpoint.to_string(),
            timeout_ms: self.timeout.as_millis(),
        }
    }
}

/// The model call, within the caller's deadline when there is one.
async fn submit(
    model: &LoadedModel,
    inputs: Vec<Tensor>,
    deadline: Option<Deadline>,
    endpoint: &str,
) -> Result<Vec<Tensor>, PredictError> {
    Ok(match deadline {
        // The queue drops the job when the caller's deadline passes while it waits.
        Some(deadline) => {
            let left = deadline.at.saturating_duration_since(Instant::now());
            // Work already past the deadline (slow features or transforms) never reaches
            // the model: the caller has its 503, and the engine's time goes to live requests.
            if left.is_zero() {
                return Err(deadline.exceeded(endpoint));
            }
            model
                .queue
                .submit_with_timeout(inputs, Some(left.max(Duration::from_millis(1))))
                .await?
        }
        None => model.queue.submit(inputs).await?,
    })
}

/// What endpoints share: models, features, and per-model-version caches.
pub(crate) struct Core {
    models: Arc<ModelManager>,
    features: Option<Arc<OnlineFeatures>>,
    metrics: PipelineMetrics,
    transforms: ferry_transforms::Registry,
    /// Join plans per (model, version), built on first use.
    plans: Mutex<HashMap<(String, u64), Arc<JoinPlan>>>,
    /// The model version's own `preprocess` chain, built on first use.
    model_chains: Mutex<HashMap<(String, u64), Arc<Chain>>>,
}

/// One variant's answer for the rows it was given.
pub(crate) struct VariantRun {
    pub model: String,
    pub version: u64,
    pub predictions: Vec<Value>,
    /// Feature values per row (`view.feature` → value), when asked for.
    pub features: Option<Vec<Value>>,
    pub defaulted: usize,
}

struct Variant {
    name: String,
    model: ModelRef,
}

/// A compiled endpoint: replaced as a whole when its config changes.
pub(crate) struct Endpoint {
    config: EndpointConfig,
    /// `config.salt`, defaulting to the endpoint name.
    salt: String,
    variants: Vec<Variant>,
    split: Split,
    pre: Arc<Chain>,
    post: Arc<Chain>,
    capture: Option<Capture>,
    shadow: Option<shadow::Shadows>,
}

pub struct Pipeline {
    core: Arc<Core>,
    endpoints: RwLock<Arc<BTreeMap<String, Arc<Endpoint>>>>,
    base_dir: PathBuf,
    s3: S3Options,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Caches hold only complete entries, so a poisoned map is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Core {
    fn plan(&self, model: &LoadedModel) -> Result<Option<Arc<JoinPlan>>, PredictError> {
        if model.manifest.features.is_none() {
            return Ok(None);
        }
        let key = (model.name.clone(), model.version);
        if let Some(plan) = lock(&self.plans).get(&key) {
            return Ok(Some(plan.clone()));
        }
        let repo = self.features.as_ref().map(|f| f.repo.as_ref());
        let Some(plan) = model_join_plan(repo, &model.name, model.version, &model.manifest)
            .map_err(PredictError::Misconfigured)?
        else {
            return Ok(None);
        };
        let plan = Arc::new(plan);
        lock(&self.plans).insert(key, plan.clone());
        Ok(Some(plan))
    }

    /// The model version's `preprocess` steps. They travel with the version, so they may only
    /// use inline scripts (`script: {source: ...}`), never files next to the config.
    fn model_chain(&self, model: &LoadedModel) -> Result<Arc<Chain>, PredictError> {
        if model.manifest.preprocess.is_empty() {
            return Ok(Arc::new(Chain::empty()));
        }
        let key = (model.name.clone(), model.version);
        if let Some(chain) = lock(&self.model_chains).get(&key) {
            return Ok(chain.clone());
        }
        let chain = ferry_transforms::build_chain(
            &model.manifest.preprocess,
            &BuildOptions {
                stage: Stage::Pre,
                base_dir: Path::new("/nonexistent/model-owned-scripts-must-be-inline"),
                registry: &self.transforms,
            },
        )
        .map_err(|e| {
            PredictError::Misconfigured(format!(
                "model {}@{}: `preprocess` in model.yaml: {e}",
                model.name, model.version
            ))
        })?;
        let chain = Arc::new(chain);
        lock(&self.model_chains).insert(key, chain.clone());
        Ok(chain)
    }

    /// Feature values served per view and status, and the endpoint's defaulted ones; returns
    /// how many were defaulted.
    fn count_features(&self, endpoint: &str, table: &FeatureTable) -> usize {
        let Some(online) = self.features.as_deref() else {
            return 0;
        };
        for ((view, status), n) in &table.counts {
            self.metrics
                .feature_values
                .with_label_values(&[online.repo.views[*view].name.as_str(), status.as_str()])
                .inc_by(*n);
        }
        if table.defaulted > 0 {
            self.metrics
                .features_defaulted
                .with_label_values(&[endpoint])
                .inc_by(table.defaulted as u64);
        }
        table.defaulted
    }

    fn observe_stage(&self, model: &LoadedModel, version: &str, stage: &str, since: Instant) {
        self.models
            .metrics()
            .stage_duration
            .with_label_values(&[model.name.as_str(), version, stage])
            .observe(since.elapsed().as_secs_f64());
    }

    /// features → model preprocess → endpoint preprocess → model → postprocess, for the rows
    /// one variant got.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_variant(
        &self,
        endpoint: &str,
        variant: &str,
        model_ref: &ModelRef,
        mut rows: Vec<Row>,
        pre: &Chain,
        post: &Chain,
        keep_features: bool,
        deadline: Option<Deadline>,
    ) -> Result<VariantRun, PredictError> {
        let model = self.models.lookup_ref(model_ref)?;
        let version = model.version.to_string();
        let transform_err = |error| PredictError::Transform {
            endpoint: endpoint.to_string(),
            variant: variant.to_string(),
            error: Box::new(error),
        };
        let model_pre = self.model_chain(&model)?;
        let named = !pre.is_empty() || !model_pre.is_empty() || keep_features;
        let mut defaulted = 0;
        let mut features = None;
        let plan = self.plan(&model)?;
        let inputs = match plan {
            Some(plan) => {
                let online = self.features.as_deref();
                let started = Instant::now();
                let (matrix, table) = if named {
                    let table = plan
                        .lookup(online, &rows)
                        .instrument(stage_span("features"))
                        .await;
                    self.observe_stage(&model, &version, "features", started);
                    let table = table?;
                    if let Some(t) = &table {
                        plan.name_features(&mut rows, t);
                    }
                    if keep_features {
                        features = Some(
                            rows.iter()
                                .map(|r| {
                                    Value::Object(
                                        plan.names
                                            .iter()
                                            .filter_map(|n| Some((n.clone(), r.get(n)?.clone())))
                                            .collect(),
                                    )
                                })
                                .collect(),
                        );
                    }
                    let started = Instant::now();
                    let ctx = Context { inputs: None };
                    stage_span("transforms")
                        .in_scope(|| {
                            model_pre.apply(&mut rows, &ctx)?;
                            pre.apply(&mut rows, &ctx)
                        })
                        .map_err(transform_err)?;
                    self.observe_stage(&model, &version, "preprocess", started);
                    (plan.matrix_from_rows(&rows)?, table)
                } else {
                    let joined = plan
                        .join(online, &rows)
                        .instrument(stage_span("features"))
                        .await;
                    self.observe_stage(&model, &version, "features", started);
                    let joined = joined?;
                    (joined.matrix, joined.table)
                };
                if let Some(table) = &table {
                    defaulted = self.count_features(endpoint, table);
                }
                vec![joined_input(
                    model.signature(),
                    rows.len(),
                    plan.width(),
                    matrix,
                )?]
            }
            None => {
                if !model_pre.is_empty() || !pre.is_empty() {
                    let started = Instant::now();
                    let ctx = Context { inputs: None };
                    stage_span("transforms")
                        .in_scope(|| {
                            model_pre.apply(&mut rows, &ctx)?;
                            pre.apply(&mut rows, &ctx)
                        })
                        .map_err(transform_err)?;
                    self.observe_stage(&model, &version, "preprocess", started);
                }
                rows::rows_to_tensors(&rows, model.signature())?
            }
        };
        let inputs = model
            .signature()
            .validate_inputs(inputs)
            .map_err(|e| InvalidRows(e.to_string()))?;
        let outputs = submit(&model, inputs, deadline, endpoint).await?;
        check_outputs(&model, &outputs, rows.len())?;
        let mut predictions =
            rows::predictions(&outputs).map_err(|e| PredictError::ModelOutput(e.0))?;
        if !post.is_empty() {
            let started = Instant::now();
            // Post steps see each prediction as a map of output name → value, whatever the
            // number of outputs.
            let mut out: Vec<Row> = predictions
                .into_iter()
                .map(|p| match p {
                    Value::Object(m) if outputs.len() > 1 => m,
                    other => {
                        let mut m = Map::new();
                        m.insert(outputs[0].name.clone(), other);
                        m
                    }
                })
                .collect();
            stage_span("transforms")
                .in_scope(|| {
                    post.apply(
                        &mut out,
                        &Context {
                            inputs: Some(&rows),
                        },
                    )
                })
                .map_err(transform_err)?;
            predictions = out.into_iter().map(Value::Object).collect();
            self.observe_stage(&model, &version, "postprocess", started);
        }
        Ok(VariantRun {
            model: model.name.clone(),
            version: model.version,
            predictions,
            features,
            defaulted,
        })
    }
}

impl Endpoint {
    /// The variant index of every row: the forced one, else by sticky hash, else one random
    /// draw for the request's rows without a key.
    fn assign(&self, rows: &[Row], forced: Option<&str>) -> Result<Vec<usize>, PredictError> {
        if let Some(asked) = forced {
            let i = self
                .variants
                .iter()
                .position(|v| v.name == asked)
                .ok_or_else(|| PredictError::UnknownVariant {
                    endpoint: self.config.name.clone(),
                    asked: asked.to_string(),
                    available: self.variants.iter().map(|v| v.name.clone()).collect(),
                })?;
            return Ok(vec![i; rows.len()]);
        }
        let key = self.config.sticky_key.as_deref();
        Ok(self.assign_keys(rows.len(), |i| rows[i].get(key?)))
    }

    /// The variant of each of `n` rows from the value of its sticky key (`key(i)`; None when
    /// the row has none: such rows share one random draw per call).
    fn assign_keys<'a>(&self, n: usize, key: impl Fn(usize) -> Option<&'a Value>) -> Vec<usize> {
        if self.variants.len() == 1 {
            return vec![0; n];
        }
        let mut random = None;
        (0..n)
            .map(|i| match key(i).and_then(assign::sticky_key) {
                Some(key) => self.split.variant_of(assign::bucket(&self.salt, &key)),
                None => *random.get_or_insert_with(|| self.split.random()),
            })
            .collect()
    }
}

/// The one input tensor of a `features` model from its joined `rows × width` matrix (the load
/// check, `model_join_plan`, made sure the model has one FP32/FP64 `[-1, width]` input).
fn joined_input(
    signature: &ferry_runtimes::Signature,
    rows: usize,
    width: usize,
    matrix: Vec<f64>,
) -> Result<Tensor, PredictError> {
    let spec = signature
        .inputs
        .first()
        .ok_or_else(|| PredictError::Misconfigured("a `features` model without an input".into()))?;
    let data = match spec.datatype {
        DataType::Fp64 => TensorData::Fp64(matrix),
        _ => TensorData::Fp32(matrix.iter().map(|&x| x as f32).collect()),
    };
    Tensor::new(spec.name.clone(), vec![rows, width], data)
        .map_err(|e| PredictError::Misconfigured(e.to_string()))
}

/// What a pipeline needs besides its models, features and endpoints.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Where relative `script: {file: ...}` paths resolve (the config file's directory);
    /// None: the working directory.
    pub base_dir: Option<PathBuf>,
    /// S3 settings for capture destinations (the registry's, so one setup reaches both).
    pub s3: S3Options,
}

impl Pipeline {
    /// Compiles `endpoints` (transform chains, captures, shadow workers). Needs a tokio
    /// runtime. `transforms` holds the Rust transforms a custom build registered.
    pub async fn build(
        models: Arc<ModelManager>,
        features: Option<Arc<OnlineFeatures>>,
        options: PipelineOptions,
        endpoints: &[EndpointConfig],
        metrics: PipelineMetrics,
        transforms: ferry_transforms::Registry,
    ) -> Result<Pipeline, String> {
        let pipeline = Pipeline {
            core: Arc::new(Core {
                models,
                features,
                metrics,
                transforms,
                plans: Mutex::new(HashMap::new()),
                model_chains: Mutex::new(HashMap::new()),
            }),
            endpoints: RwLock::new(Arc::new(BTreeMap::new())),
            base_dir: options.base_dir.unwrap_or_else(|| PathBuf::from(".")),
            s3: options.s3,
            reload_lock: tokio::sync::Mutex::new(()),
        };
        pipeline.reload(endpoints).await?;
        Ok(pipeline)
    }

    pub fn features(&self) -> Option<&Arc<OnlineFeatures>> {
        self.core.features.as_ref()
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Endpoint>>> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn has_endpoint(&self, name: &str) -> bool {
        self.snapshot().contains_key(name)
    }

    /// Ok when `name` is a configured endpoint; the error names the ones there are.
    pub fn check_endpoint(&self, name: &str) -> Result<(), PredictError> {
        self.endpoint(name).map(|_| ())
    }

    fn endpoint(&self, name: &str) -> Result<Arc<Endpoint>, PredictError> {
        let endpoints = self.snapshot();
        endpoints
            .get(name)
            .cloned()
            .ok_or_else(|| PredictError::UnknownEndpoint {
                name: name.to_string(),
                available: endpoints.keys().cloned().collect(),
            })
    }

    async fn compile(&self, at: &str, config: &EndpointConfig) -> Result<Endpoint, String> {
        let (pre, post) = config.chains(at, &self.base_dir, &self.core.transforms)?;
        let (pre, post) = (Arc::new(pre), Arc::new(post));
        let mut variants = Vec::new();
        for (j, v) in config.variants.iter().enumerate() {
            let model = ModelRef::parse(&v.model)
                .map_err(|e| format!("`{at}.variants[{j}].model`: {e}"))?;
            variants.push(Variant {
                name: v.name.clone(),
                model,
            });
        }
        let capture = match &config.capture {
            Some(c) => Some(
                Capture::start(&config.name, c, &self.s3, self.core.metrics.clone())
                    .await
                    .map_err(|e| format!("`{at}.capture`: {e}"))?,
            ),
            None => None,
        };
        let shadow = if config.shadow.is_empty() {
            None
        } else {
            Some(shadow::Shadows::start(
                self.core.clone(),
                at,
                config,
                pre.clone(),
                post.clone(),
                capture.clone(),
            )?)
        };
        Ok(Endpoint {
            config: config.clone(),
            salt: config.salt.clone().unwrap_or_else(|| config.name.clone()),
            split: Split::new(&config.variants.iter().map(|v| v.weight).collect::<Vec<_>>()),
            variants,
            pre,
            post,
            capture,
            shadow,
        })
    }

    /// Replaces the endpoints with `configs` (SIGHUP / config file change). Endpoints whose
    /// config did not change (and that read no script files) keep running as they are; the
    /// others are compiled anew and the old ones flush their capture. Models new variants need are loaded before the switch.
    /// On any error nothing changes.
    pub async fn reload(&self, configs: &[EndpointConfig]) -> Result<ReloadSummary, String> {
        let _guard = self.reload_lock.lock().await;
        let old = self.snapshot();
        let mut next = BTreeMap::new();
        let mut summary = ReloadSummary::default();
        for (i, config) in configs.iter().enumerate() {
            let at = format!("endpoints[{i}]");
            config.validate(&at).map_err(|e| e.0)?;
            match old.get(&config.name) {
                // A script file may have changed without the config changing: endpoints that
                // read script files are always recompiled.
                Some(e) if e.config == *config && !reads_script_files(config) => {
                    next.insert(config.name.clone(), e.clone());
                }
                previous => {
                    if previous.is_some() {
                        summary.changed.push(config.name.clone());
                    } else {
                        summary.added.push(config.name.clone());
                    }
                    let endpoint = self.compile(&at, config).await?;
                    next.insert(config.name.clone(), Arc::new(endpoint));
                }
            }
        }
        for config in configs {
            for v in &config.variants {
                self.core.models.ensure_served(&v.model, false).await;
            }
            for shadow in &config.shadow {
                self.core.models.ensure_served(&shadow.model, true).await;
            }
        }
        summary.removed = old
            .keys()
            .filter(|k| !next.contains_key(*k))
            .cloned()
            .collect();
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        let current = self.snapshot();
        for (name, endpoint) in old.iter() {
            let kept = current.get(name).is_some_and(|e| Arc::ptr_eq(e, endpoint));
            if !kept && let Some(c) = &endpoint.capture {
                c.shutdown().await;
            }
        }
        Ok(summary)
    }

    /// Flushes every endpoint's capture (graceful shutdown).
    pub async fn shutdown(&self) {
        for endpoint in self.snapshot().values() {
            if let Some(c) = &endpoint.capture {
                c.shutdown().await;
            }
        }
    }

    /// resolve variant → features → pre → model → post, for rows that are JSON objects.
    pub async fn predict(
        &self,
        endpoint: &str,
        rows: Vec<Row>,
        options: &PredictOptions,
    ) -> Result<Predictions, PredictError> {
        let Some(timeout) = options.timeout else {
            return self.predict_rows(endpoint, rows, options, None).await;
        };
        let deadline = Deadline {
            at: Instant::now() + timeout,
            timeout,
        };
        tokio::time::timeout(
            timeout,
            self.predict_rows(endpoint, rows, options, Some(deadline)),
        )
        .await
        .map_err(|_| deadline.exceeded(endpoint))?
    }

    /// JSON requests with fewer than [`COLUMNS_MIN_ROWS`] rows take the row path: building columns for a row or two
    /// cost more than it saved (1-row `risk` requests: ~10% more server CPU per request at
    /// c=64 on the column path, `loadtests/online_ab.sh`).
    async fn predict_rows(
        &self,
        endpoint: &str,
        rows: Vec<Row>,
        options: &PredictOptions,
        deadline: Option<Deadline>,
    ) -> Result<Predictions, PredictError> {
        let ep = self.endpoint(endpoint)?;
        if rows.is_empty() {
            return Err(PredictError::Input(InvalidRows(
                "`instances` is empty: send at least one instance".into(),
            )));
        }
        if options.forced_variant.is_none() && rows.len() >= COLUMNS_MIN_ROWS && ep.takes_columns()
        {
            // JSON requests take the column path where the columns hold exactly what the rows
            // hold; the sticky key must keep integers and fractions apart to hash as a row.
            let exact: Vec<&str> = ep.config.sticky_key.iter().map(String::as_str).collect();
            if let Some(batch) = arrow_rows::rows_to_batch(&rows, &exact)
                && let Some(groups) = self.columns_at(&ep, &batch, deadline).await?
            {
                return answer_groups(&ep, rows.len(), groups);
            }
        }
        let assignment = stage_span("assign")
            .in_scope(|| ep.assign(&rows, options.forced_variant.as_deref()))?;
        self.core
            .metrics
            .endpoint_rows
            .with_label_values(&[&ep.config.name, "rows"])
            .inc_by(rows.len() as u64);
        if let Some(shadow) = &ep.shadow {
            shadow.offer(&rows, &options.request_id);
        }
        let capture = ep.capture.as_ref().filter(|c| c.sample());
        let received = capture.map(|_| rows.clone());
        let n = rows.len();
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (row, &v) in assignment.iter().enumerate() {
            match groups.iter_mut().find(|(g, _)| *g == v) {
                Some((_, members)) => members.push(row),
                None => groups.push((v, vec![row])),
            }
        }
        let keep_features = capture.is_some();
        let runs: Vec<(usize, Vec<usize>, VariantRun)> = if groups.len() == 1 {
            let (v, members) = groups.pop().expect("one group");
            let run = run_group(&self.core, &ep, v, rows, keep_features, deadline).await?;
            vec![(v, members, run)]
        } else {
            let mut slots: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
            let mut tasks = tokio::task::JoinSet::new();
            for (v, members) in groups {
                let part: Vec<Row> = members
                    .iter()
                    .map(|&i| slots[i].take().expect("each row is in one group"))
                    .collect();
                let (core, ep) = (self.core.clone(), ep.clone());
                tasks.spawn(async move {
                    let run = run_group(&core, &ep, v, part, keep_features, deadline).await;
                    (v, members, run)
                });
            }
            let mut runs = Vec::new();
            while let Some(done) = tasks.join_next().await {
                let (v, members, run) = done.map_err(|e| {
                    PredictError::Misconfigured(format!("a variant task failed: {e}"))
                })?;
                let run = run.map_err(|e| in_request(e, &members))?;
                runs.push((v, members, run));
            }
            runs
        };
        let mut predictions = vec![Value::Null; n];
        let mut variants = vec![String::new(); n];
        let mut models = vec![String::new(); n];
        let mut versions = vec![0u64; n];
        let mut features: Vec<Value> = vec![Value::Null; n];
        let mut defaulted = 0;
        for (v, members, run) in runs {
            defaulted += run.defaulted;
            let run_features = run.features.unwrap_or_default();
            for (k, (&row, p)) in members.iter().zip(run.predictions).enumerate() {
                predictions[row] = p;
                variants[row] = ep.variants[v].name.clone();
                models[row] = run.model.clone();
                versions[row] = run.version;
                if let Some(f) = run_features.get(k) {
                    features[row] = f.clone();
                }
            }
        }
        if let (Some(capture), Some(received)) = (capture, received) {
            let timestamp_ms = now_ms();
            capture.record(
                received
                    .into_iter()
                    .enumerate()
                    .map(|(i, input)| CaptureRecord {
                        request_id: options.request_id.clone(),
                        timestamp_ms,
                        endpoint: ep.config.name.clone(),
                        variant: variants[i].clone(),
                        model: models[i].clone(),
                        version: versions[i],
                        shadow: false,
                        input: Value::Object(input),
                        features: std::mem::take(&mut features[i]),
                        output: predictions[i].clone(),
                    })
                    .collect(),
            );
        }
        Ok(Predictions {
            endpoint: ep.config.name.clone(),
            predictions,
            variants,
            models,
            versions,
            defaulted,
        })
    }
}

/// The answer to a request the column path scored.
fn answer_groups(
    ep: &Endpoint,
    n: usize,
    groups: Vec<columnar::GroupRun>,
) -> Result<Predictions, PredictError> {
    let mut predictions = vec![Value::Null; n];
    let mut variants = vec![String::new(); n];
    let mut models = vec![String::new(); n];
    let mut versions = vec![0u64; n];
    let mut defaulted = 0;
    for g in groups {
        defaulted += g.defaulted;
        for (&row, p) in g.rows.iter().zip(g.predictions()?) {
            predictions[row] = p;
            variants[row].clone_from(&g.variant);
            models[row].clone_from(&g.model);
            versions[row] = g.version;
        }
    }
    Ok(Predictions {
        endpoint: ep.config.name.clone(),
        predictions,
        variants,
        models,
        versions,
        defaulted,
    })
}

/// An error from one variant's share of a split request, with the rows it names renumbered
/// from positions within the share (`members[k]` is share row k's request index) to positions
/// in the request the client sent.
fn in_request(error: PredictError, members: &[usize]) -> PredictError {
    let renumber = |message: String| renumber_instances(&message, members);
    match error {
        PredictError::Transform {
            endpoint,
            variant,
            mut error,
        } => {
            error.row = error.row.map(|k| members.get(k).copied().unwrap_or(k));
            error.message = renumber(std::mem::take(&mut error.message));
            PredictError::Transform {
                endpoint,
                variant,
                error,
            }
        }
        PredictError::Input(InvalidRows(message)) => {
            PredictError::Input(InvalidRows(renumber(message)))
        }
        PredictError::Features(FeatureError::InvalidRow(message)) => {
            PredictError::Features(FeatureError::InvalidRow(renumber(message)))
        }
        other => other,
    }
}

/// Rewrites every `instances[k]` in a message as `instances[members[k]]`. The row codecs and
/// the feature join write row positions only in that form.
fn renumber_instances(message: &str, members: &[usize]) -> String {
    const OPEN: &str = "instances[";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(OPEN) {
        let (before, after) = rest.split_at(at + OPEN.len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let renumbered = after[..digits]
            .parse::<usize>()
            .ok()
            .filter(|_| after[digits..].starts_with(']'))
            .and_then(|k| members.get(k));
        match renumbered {
            Some(row) => out.push_str(&row.to_string()),
            None => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Refuses outputs that do not fit the model's signature or do not have one row per input row:
/// turned into predictions they would be misread (rows shifted, nulls, wrong widths).
/// The model answered within its own output signature, one row per input row.
pub fn check_outputs(
    model: &LoadedModel,
    outputs: &[Tensor],
    rows: usize,
) -> Result<(), PredictError> {
    let specs = &model.signature().outputs;
    outputs_fit(specs, outputs, rows).map_err(|what| {
        PredictError::ModelOutput(format!(
            "model {}@{} answered {what}; its signature declares outputs {:?} (a model fault, not the rows')",
            model.name,
            model.version,
            specs
                .iter()
                .map(|s| (s.name.as_str(), s.datatype, &s.shape))
                .collect::<Vec<_>>()
        ))
    })
}

fn outputs_fit(
    specs: &[ferry_runtimes::TensorSpec],
    outputs: &[Tensor],
    rows: usize,
) -> Result<(), String> {
    if outputs.len() != specs.len() {
        return Err(format!("{} outputs", outputs.len()));
    }
    for (t, spec) in outputs.iter().zip(specs) {
        if t.name != spec.name || t.data.datatype() != spec.datatype {
            return Err(format!(
                "output `{}` as {} where `{}` {} was due",
                t.name,
                t.data.datatype(),
                spec.name,
                spec.datatype
            ));
        }
        if t.shape.first() != Some(&rows) || !spec.accepts_shape(&t.shape) {
            return Err(format!(
                "output `{}` with shape {:?} for {rows} rows",
                t.name, t.shape
            ));
        }
    }
    Ok(())
}

/// One variant's model outputs (batch types its output columns by them).
#[derive(Debug, Clone)]
pub struct VariantOutputs {
    pub variant: String,
    /// `name@version`.
    pub model: String,
    pub outputs: Vec<ferry_runtimes::TensorSpec>,
}

impl Pipeline {
    /// The outputs of each variant's loaded model, and whether the endpoint has a
    /// `postprocess` (then predictions are whatever objects it makes).
    pub fn endpoint_outputs(
        &self,
        endpoint: &str,
    ) -> Result<(Vec<VariantOutputs>, bool), PredictError> {
        let ep = self.endpoint(endpoint)?;
        let mut variants = Vec::with_capacity(ep.variants.len());
        for v in &ep.variants {
            let model = self.core.models.lookup_ref(&v.model)?;
            variants.push(VariantOutputs {
                variant: v.name.clone(),
                model: format!("{}@{}", model.name, model.version),
                outputs: model.signature().outputs.clone(),
            });
        }
        Ok((variants, !ep.post.is_empty()))
    }
}

/// One variant's share of a request, with its per-variant metrics.
async fn run_group(
    core: &Core,
    ep: &Endpoint,
    v: usize,
    rows: Vec<Row>,
    keep_features: bool,
    deadline: Option<Deadline>,
) -> Result<VariantRun, PredictError> {
    let variant = &ep.variants[v];
    let started = Instant::now();
    let result = core
        .run_variant(
            &ep.config.name,
            &variant.name,
            &variant.model,
            rows,
            &ep.pre,
            &ep.post,
            keep_features,
            deadline,
        )
        .await;
    let m = &core.metrics;
    m.endpoint_variant_duration
        .with_label_values(&[&ep.config.name, &variant.name])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(run) => m
            .endpoint_requests
            .with_label_values(&[
                &ep.config.name,
                &variant.name,
                &run.model,
                &run.version.to_string(),
            ])
            .inc(),
        Err(e) => m
            .endpoint_errors
            .with_label_values(&[&ep.config.name, &variant.name, e.error_type()])
            .inc(),
    }
    result
}

/// Whether any transform step of `config` is a `script: {file: ...}`.
fn reads_script_files(config: &EndpointConfig) -> bool {
    config
        .preprocess
        .iter()
        .chain(&config.postprocess)
        .any(|step| step.get("script").and_then(|s| s.get("file")).is_some())
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// A child span of the current request for one pipeline stage (exported as an OpenTelemetry
/// span when tracing is on; DEBUG level, so it costs nothing otherwise).
pub fn stage_span(stage: &'static str) -> tracing::Span {
    tracing::debug_span!(target: "ferry::stage", "stage", otel.name = stage)
}

#[cfg(test)]
mod tests {
    #[test]
    fn row_positions_in_messages_are_renumbered_to_the_request() {
        let members = [3, 7, 9];
        assert_eq!(
            super::renumber_instances(
                "instances[1] has no `x` (every instance must look like instances[0]); instances[5] and instances[x] stay",
                &members
            ),
            "instances[7] has no `x` (every instance must look like instances[3]); instances[5] and instances[x] stay"
        );
    }

    use super::*;
    use ferry_runtimes::TensorSpec;

    fn specs() -> Vec<TensorSpec> {
        vec![
            TensorSpec {
                name: "label".into(),
                datatype: DataType::Int64,
                shape: vec![-1],
            },
            TensorSpec {
                name: "probabilities".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 2],
            },
        ]
    }

    fn outputs(rows: usize, width: usize) -> Vec<Tensor> {
        vec![
            Tensor::new("label", vec![rows], TensorData::Int64(vec![0; rows])).unwrap(),
            Tensor::new(
                "probabilities",
                vec![rows, width],
                TensorData::Fp32(vec![0.5; rows * width]),
            )
            .unwrap(),
        ]
    }

    #[test]
    fn outputs_must_have_one_row_per_input_and_the_declared_widths() {
        assert!(outputs_fit(&specs(), &outputs(4, 2), 4).is_ok());
        let fewer = outputs_fit(&specs(), &outputs(1, 2), 4).unwrap_err();
        assert!(
            fewer.contains("shape [1]") && fewer.contains("4 rows"),
            "{fewer}"
        );
        let wider = outputs_fit(&specs(), &outputs(4, 3), 4).unwrap_err();
        assert!(
            wider.contains("probabilities") && wider.contains("[4, 3]"),
            "{wider}"
        );
        let mut swapped = outputs(4, 2);
        swapped.reverse();
        assert!(outputs_fit(&specs(), &swapped, 4).is_err());
    }
}
