//! The wiring every front end shares: the registry, the feature store, the model manager and
//! the pipeline over them, from the config sections. The HTTP server and the batch job both
//! build their pipeline here, so they serve the same models the same way.

use crate::config::{EndpointConfig, FeaturesConfig};
use crate::{Pipeline, PipelineMetrics, PipelineOptions, open_features};
use ferry_models::{ModelManager, ModelMetrics, ModelsConfig};
use ferry_registry::{Registry, RegistryError, RegistryOptions};
use std::sync::Arc;

/// Why the models and pipeline could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("features: {0}")]
    Features(String),
    /// An endpoint that does not compile (a transform step, a capture destination).
    #[error("{0}")]
    Config(String),
}

/// What a pipeline is built from.
pub struct Setup<'a> {
    /// Where model versions come from; its S3 settings also reach S3 feature sources.
    pub registry: RegistryOptions,
    /// The models to load and the defaults for them.
    pub models: ModelsConfig,
    /// The `features` section, when there is one.
    pub features: Option<&'a FeaturesConfig>,
    pub endpoints: &'a [EndpointConfig],
    pub options: PipelineOptions,
    /// Rust transforms registered by a custom binary (empty: the built-in steps only).
    pub transforms: ferry_transforms::Registry,
    pub model_metrics: ModelMetrics,
    pub pipeline_metrics: PipelineMetrics,
}

/// The models (prepared, not loaded: call `load_configured`) and the pipeline over them.
pub struct Served {
    pub models: Arc<ModelManager>,
    pub pipeline: Arc<Pipeline>,
}

impl Setup<'_> {
    /// Opens the registry and the feature store (Redis connects lazily; the in-process store
    /// loads the offline files now), prepares the model manager and compiles the endpoints.
    /// Needs a tokio runtime.
    pub async fn build(self) -> Result<Served, SetupError> {
        let registry = Registry::open(&self.registry).await?;
        let features = match self.features {
            Some(f) => Some(Arc::new(
                open_features(f, &self.registry.s3)
                    .await
                    .map_err(SetupError::Features)?,
            )),
            None => None,
        };
        let models = Arc::new(
            ModelManager::new(registry, self.models, self.model_metrics)
                .with_feature_repo(features.as_ref().map(|f| f.repo.clone())),
        );
        let pipeline = Pipeline::build(
            models.clone(),
            features,
            self.options,
            self.endpoints,
            self.pipeline_metrics,
            self.transforms,
        )
        .await
        .map_err(SetupError::Config)?;
        Ok(Served {
            models,
            pipeline: Arc::new(pipeline),
        })
    }
}
