//! The ferry server as a library: `app` builds the HTTP router from an `AppState`, `serve`
//! runs it until shutdown. `main.rs` only parses flags, sets up logging and calls in here.

#[cfg(not(any(feature = "ort", feature = "tract", feature = "candle")))]
compile_error!("ferry needs at least one engine: enable cargo feature `ort`, `tract` or `candle`");

pub mod batch;
pub mod cli;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod models;
pub mod pipeline;
pub mod registry_cli;
pub mod scheduler;
pub mod telemetry;

use config::ServerConfig;
use ferry_registry::Registry;
use http::AppState;
use models::ModelManager;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use telemetry::metrics::Metrics;
use tokio::net::TcpListener;

pub use http::app;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Registry(#[from] ferry_registry::RegistryError),
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
    #[error("features: {0}")]
    Features(String),
}

/// Builds the state for `config`: opens the registry and the feature store (Redis connects
/// lazily; the in-process store loads the offline files now) and prepares (but does not load)
/// models.
pub async fn build_state(config: &ServerConfig) -> Result<AppState, ServeError> {
    let registry = Registry::open(&config.registry.options()).await?;
    let metrics = Metrics::new();
    let models = Arc::new(ModelManager::new(registry, config.clone(), metrics.clone()));
    let admin_token = http::control::AdminToken::from_config(config)?;
    let api_keys = http::auth::ApiKeys::from_config(config)?;
    let features = match &config.features {
        Some(f) => Some(Arc::new(
            pipeline::open_features(f).map_err(ServeError::Features)?,
        )),
        None => None,
    };
    let pipeline = Arc::new(pipeline::Pipeline::new(
        models.clone(),
        features,
        &config.endpoints,
        metrics.clone(),
    ));
    Ok(AppState {
        models,
        pipeline,
        metrics,
        max_body_bytes: config.max_body_bytes,
        shutting_down: Arc::new(AtomicBool::new(false)),
        admin_token,
        inflight: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
        api_keys,
    })
}

/// Serves `config` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish, and returns. Models load in the background: the server answers
/// liveness at once and reports ready when every configured model is warmed up. With a
/// non-zero `registry.poll_interval`, served references are then followed for changes.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    models::init_onnx_runtime(&config);
    let state = build_state(&config).await?;
    let loader = state.models.clone();
    let poll_interval = config.registry.poll_interval;
    tokio::spawn(async move {
        loader.load_configured().await;
        if !poll_interval.is_zero() {
            loader.poll_task(poll_interval).await;
        }
    });
    let shutting_down = state.shutting_down.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            shutting_down.store(true, Ordering::Relaxed);
            tracing::info!("Shutdown requested: no new connections; finishing in-flight requests.");
        })
        .await?;
    Ok(())
}
