//! The inference pipeline behind business endpoints: resolve variant → fetch features →
//! model. HTTP handlers only convert wire formats to and from `Pipeline::predict`; batch mode
//! will feed it chunks of rows the same way. (Pre/post transforms and A/B splits come with the
//! endpoints issue: today an endpoint has exactly one variant.)

use crate::config::{EndpointConfig, FeaturesConfig};
use crate::http::error::ApiError;
use crate::models::{LoadedModel, LookupError, ModelManager};
use crate::scheduler::ScheduleError;
use crate::telemetry::metrics::Metrics;
use ferry_features::online::{MemoryStore, RedisStore};
use ferry_features::{FeatureError, FeatureRepo, JoinPlan, OnlineFeatures, OnlineStore};
use ferry_registry::ModelRef;
use ferry_runtimes::{DataType, Tensor, TensorData};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A validated endpoint.
#[derive(Debug, Clone)]
pub struct ValidEndpoint {
    pub name: String,
    pub variant: String,
    pub model: ModelRef,
}

/// Why a prediction failed.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("unknown endpoint `{name}`; endpoints: {available:?}")]
    UnknownEndpoint {
        name: String,
        available: Vec<String>,
    },
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Features(#[from] FeatureError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Rows that do not fit the model (no `features` section: rows go straight to its inputs).
    #[error(transparent)]
    Input(ApiError),
    #[error("{0}")]
    Misconfigured(String),
}

/// What `predict` returns: one prediction per row, and what produced them.
#[derive(Debug, Clone)]
pub struct Predictions {
    pub endpoint: String,
    pub variant: String,
    pub model: String,
    pub version: u64,
    pub predictions: Vec<Value>,
    /// Feature values that were missing, stale or unavailable and got their default.
    pub defaulted: usize,
}

pub struct Pipeline {
    models: Arc<ModelManager>,
    pub features: Option<Arc<OnlineFeatures>>,
    endpoints: Vec<ValidEndpoint>,
    metrics: Metrics,
    /// Join plans per (model, version), built on first use.
    plans: Mutex<HashMap<(String, u64), Arc<JoinPlan>>>,
}

/// Opens the feature repo and its online store: Redis when a URL is set, else an in-process
/// store loaded from the offline files.
pub fn open_features(config: &FeaturesConfig) -> Result<OnlineFeatures, String> {
    let repo = FeatureRepo::load(&config.repo).map_err(|e| e.to_string())?;
    let timeout = config.timeout().map_err(|e| e.0)?;
    let store: Arc<dyn OnlineStore> = match &config.redis {
        Some(url) => Arc::new(RedisStore::connect_lazy(url, timeout).map_err(|e| e.to_string())?),
        None => {
            let store = MemoryStore::load(&repo).map_err(|e| {
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

impl Pipeline {
    pub fn new(
        models: Arc<ModelManager>,
        features: Option<Arc<OnlineFeatures>>,
        endpoints: &[EndpointConfig],
        metrics: Metrics,
    ) -> Pipeline {
        let endpoints = endpoints
            .iter()
            .filter_map(|e| {
                let v = e.variants.first()?;
                Some(ValidEndpoint {
                    name: e.name.clone(),
                    variant: v.name.clone(),
                    model: ModelRef::parse(&v.model).ok()?,
                })
            })
            .collect();
        Pipeline {
            models,
            features,
            endpoints,
            metrics,
            plans: Mutex::new(HashMap::new()),
        }
    }

    pub fn endpoint(&self, name: &str) -> Result<&ValidEndpoint, PredictError> {
        self.endpoints
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| PredictError::UnknownEndpoint {
                name: name.to_string(),
                available: self.endpoints.iter().map(|e| e.name.clone()).collect(),
            })
    }

    fn plan(&self, model: &LoadedModel) -> Result<Option<Arc<JoinPlan>>, PredictError> {
        let Some(spec) = &model.manifest.features else {
            return Ok(None);
        };
        let key = (model.name.clone(), model.version);
        if let Some(plan) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(plan.clone()));
        }
        let Some(features) = &self.features else {
            return Err(PredictError::Misconfigured(format!(
                "model {}@{} declares `features` but the server has no `features` config (feature repo); add `features: {{repo: features.yaml}}`",
                model.name, model.version
            )));
        };
        let plan = JoinPlan::new(&features.repo, &spec.entity, &spec.columns)?;
        let inputs = &model.signature().inputs;
        let fits = inputs.len() == 1
            && matches!(inputs[0].datatype, DataType::Fp32 | DataType::Fp64)
            && inputs[0].shape.len() == 2
            && (inputs[0].shape[1] < 0 || inputs[0].shape[1] as usize == plan.width());
        if !fits {
            return Err(PredictError::Misconfigured(format!(
                "model {}@{}: its `features` section has {} columns, so it needs one FP32/FP64 input of shape [-1, {}]; it has {:?}",
                model.name,
                model.version,
                plan.width(),
                plan.width(),
                inputs
                    .iter()
                    .map(|i| (i.name.as_str(), i.datatype, &i.shape))
                    .collect::<Vec<_>>()
            )));
        }
        let plan = Arc::new(plan);
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, plan.clone());
        Ok(Some(plan))
    }

    /// resolve variant → features → model, for rows that are JSON objects.
    pub async fn predict(
        &self,
        endpoint: &str,
        rows: Vec<Map<String, Value>>,
    ) -> Result<Predictions, PredictError> {
        let ep = self.endpoint(endpoint)?;
        let model = self.models.lookup_ref(&ep.model)?;
        let version = model.version.to_string();
        if rows.is_empty() {
            return Err(PredictError::Input(ApiError::InvalidInput(
                "`instances` is empty: send at least one instance".into(),
            )));
        }
        let mut defaulted = 0;
        let inputs = match self.plan(&model)? {
            Some(plan) => {
                let features = self
                    .features
                    .as_ref()
                    .expect("a plan exists only with features. This is a bug.");
                let started = Instant::now();
                let joined = plan.join(features, &rows).await;
                self.metrics
                    .stage_duration
                    .with_label_values(&[model.name.as_str(), &version, "features"])
                    .observe(started.elapsed().as_secs_f64());
                let joined = joined?;
                if let Some(table) = &joined.table {
                    defaulted = table.defaulted;
                    for ((view, status), n) in &table.counts {
                        self.metrics
                            .feature_values
                            .with_label_values(&[
                                features.repo.views[*view].name.as_str(),
                                status.as_str(),
                            ])
                            .inc_by(*n);
                    }
                    if defaulted > 0 {
                        self.metrics
                            .features_defaulted
                            .with_label_values(&[&ep.name])
                            .inc_by(defaulted as u64);
                    }
                }
                let spec = &model.signature().inputs[0];
                let shape = vec![rows.len(), joined.columns];
                let data = match spec.datatype {
                    DataType::Fp64 => TensorData::Fp64(joined.matrix),
                    _ => TensorData::Fp32(joined.matrix.iter().map(|&x| x as f32).collect()),
                };
                let tensor = Tensor::new(spec.name.clone(), shape, data)
                    .map_err(|e| PredictError::Misconfigured(e.to_string()))?;
                vec![tensor]
            }
            None => {
                let request = crate::http::v1::PredictRequest {
                    instances: rows.into_iter().map(Value::Object).collect(),
                    signature_name: None,
                };
                crate::http::v1::instances_to_tensors(&request, model.signature())
                    .map_err(PredictError::Input)?
            }
        };
        let inputs = model
            .signature()
            .validate_inputs(inputs)
            .map_err(|e| PredictError::Input(e.into()))?;
        let outputs = model.queue.submit(inputs).await?;
        let predictions = crate::http::v1::predictions(&outputs).map_err(PredictError::Input)?;
        Ok(Predictions {
            endpoint: ep.name.clone(),
            variant: ep.variant.clone(),
            model: model.name.clone(),
            version: model.version,
            predictions,
            defaulted,
        })
    }
}
