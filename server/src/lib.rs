//! The ferry server as a library: `app` builds the HTTP router from an `AppState`, `serve`
//! runs it until shutdown. `main.rs` only parses flags, sets up logging and calls in here.

#[cfg(not(any(
    feature = "ort",
    feature = "tract",
    feature = "candle",
    feature = "trees"
)))]
compile_error!(
    "ferry needs at least one engine: enable cargo feature `ort`, `tract`, `candle` or `trees`"
);

pub mod cli;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod io_threads;
pub mod model_dir;
pub mod registry_cli;
pub mod reload;
pub mod telemetry;

use config::ServerConfig;
use http::AppState;
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

impl From<ferry_pipeline::SetupError> for ServeError {
    fn from(e: ferry_pipeline::SetupError) -> ServeError {
        match e {
            ferry_pipeline::SetupError::Registry(e) => ServeError::Registry(e),
            ferry_pipeline::SetupError::Features(e) => ServeError::Features(e),
            ferry_pipeline::SetupError::Config(e) => ServeError::Config(e),
        }
    }
}

/// Builds the state for `config`: opens the registry and the feature store (Redis connects
/// lazily; the in-process store loads the offline files now) and prepares (but does not load)
/// models.
pub async fn build_state(config: &ServerConfig) -> Result<AppState, ServeError> {
    build_state_with(config, ferry_transforms::Registry::new()).await
}

/// What the endpoint pipeline takes from the server config besides its endpoints: script
/// paths resolve against the config file's directory, and capture reaches S3 with the
/// registry's settings.
pub fn pipeline_options(config: &ServerConfig) -> ferry_pipeline::PipelineOptions {
    ferry_pipeline::PipelineOptions {
        base_dir: config.config_dir.clone(),
        s3: config.registry.options().s3,
    }
}

/// `build_state` for a custom ferry binary that registered its own Rust transforms (usable in
/// endpoint `preprocess`/`postprocess` as `rust: {name: ...}`).
pub async fn build_state_with(
    config: &ServerConfig,
    transforms: ferry_transforms::Registry,
) -> Result<AppState, ServeError> {
    let admin_token = http::control::AdminToken::from_config(config)?;
    let api_keys = http::auth::ApiKeys::from_config(config)?;
    if !api_keys.is_enabled() {
        // Said once at start-up so an open server is a choice someone can see in its log.
        tracing::warn!(
            "Inference routes are open: no API keys (set FERRY_API_KEYS or `api_keys_file` to require one)."
        );
    }
    let metrics = Metrics::new();
    let served = ferry_pipeline::Setup {
        registry: config.registry.options(),
        models: config.models_config(),
        features: config.features.as_ref(),
        endpoints: &config.endpoints,
        options: pipeline_options(config),
        transforms,
        model_metrics: metrics.models.clone(),
        pipeline_metrics: metrics.pipeline.clone(),
    }
    .build()
    .await?;
    Ok(AppState::new(http::AppStateInner {
        models: served.models,
        pipeline: served.pipeline,
        metrics,
        max_body_bytes: config.max_body_bytes,
        grpc_max_message_bytes: config
            .grpc_max_message_bytes
            .unwrap_or(config.max_body_bytes),
        shutting_down: Arc::new(AtomicBool::new(false)),
        admin_token,
        inflight: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
        max_concurrent_requests: config.max_concurrent_requests,
        api_keys,
        request_timeout: config.request_timeout(),
        access_log: config.access_log.enabled.then(|| {
            Arc::new(telemetry::access::Sampler::new(
                config.access_log.max_lines_per_second,
            ))
        }),
    }))
}

/// Serves `config` on `listener` until `shutdown` resolves, then drains (see `DrainConfig`):
/// readiness turns 503 at once while requests are still served for `drain.delay`, each
/// response asking the client to close its connection; then no new connections, and
/// in-flight requests get up to `drain.timeout` before this returns. Models load in the
/// background: the server answers liveness at once and reports ready when every configured
/// model is warmed up. With a non-zero `registry.poll_interval`, served references are then
/// followed for changes.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(
        config,
        listener,
        shutdown,
        ferry_transforms::Registry::new(),
    )
    .await
}

/// `serve` with Rust transforms registered by a custom binary (see
/// `server/examples/custom_transform.rs`).
pub async fn serve_with(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    transforms: ferry_transforms::Registry,
) -> Result<(), ServeError> {
    ferry_models::init_onnx_runtime(&config.models_config());
    let state = build_state_with(&config, transforms).await?;
    if let Some(path) = config.config_path.clone() {
        tokio::spawn(reload::watch(path, state.pipeline.clone()));
    }
    let loader = state.models.clone();
    let poll_interval = config.registry.poll_interval;
    tokio::spawn(async move {
        loader.load_configured().await;
        if !poll_interval.is_zero() {
            loader.poll_task(poll_interval).await;
        }
    });
    let grpc_listener = match config
        .grpc_addr(listener.local_addr()?)
        .map_err(|e| ServeError::Config(e.to_string()))?
    {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(address = %l.local_addr()?, "gRPC listening.");
                Some(l)
            }
            // The implicit default (HTTP port + 1) may be taken by something else: HTTP still
            // serves, and the log says how to choose. An address the config asked for fails.
            Err(e) if config.grpc_listen.is_none() => {
                tracing::warn!(address = %addr, error = %e, "Could not listen for gRPC on the default address (the HTTP port + 1); serving HTTP only. Set `grpc_listen` (FERRY_GRPC_LISTEN, --grpc-listen) to a free address, or `off`.");
                None
            }
            Err(e) => {
                return Err(ServeError::Config(format!(
                    "could not listen for gRPC on {addr}: {e}; set `grpc_listen` (FERRY_GRPC_LISTEN, --grpc-listen) to a free address, or `off`"
                )));
            }
        },
        None => None,
    };
    let grpc_router = grpc_listener.as_ref().map(|_| {
        let (router, health) = grpc::routes(state.clone());
        tokio::spawn(grpc::track_health(state.clone(), health));
        router
    });
    let shutting_down = state.shutting_down.clone();
    let pipeline = state.pipeline.clone();
    let router = app(state);
    let drain = config.drain.clone();
    // Set once accepting has stopped: from then on in-flight requests have `drain.timeout`.
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    // The gRPC listener stops accepting when HTTP does.
    let (grpc_stop_tx, mut grpc_stop_rx) = tokio::sync::watch::channel(false);
    let threads = io_threads::IoThreads::start(
        match config.io_threads {
            0 => io_threads::default_count(),
            n => n,
        },
        "ferry-http",
    )?;
    tracing::info!(
        io_threads = threads.len(),
        "Connections are served on the I/O threads (`io_threads`)."
    );
    let server = io_threads::serve(listener, router, &threads, async move {
        shutdown.await;
        shutting_down.store(true, Ordering::Relaxed);
        if !drain.delay.is_zero() {
            tracing::info!(
                delay_seconds = drain.delay.as_secs_f64(),
                "Shutdown requested: readiness reports 503; still serving during the drain delay so load balancers stop routing here."
            );
            tokio::time::sleep(drain.delay).await;
        }
        tracing::info!(
            timeout_seconds = drain.timeout.as_secs_f64(),
            "Draining: no new connections; finishing in-flight requests."
        );
        let _ = grpc_stop_tx.send(true);
        let _ = stopped_tx.send(());
    });
    let grpc_server = async {
        match (grpc_listener, grpc_router) {
            (Some(l), Some(router)) => {
                io_threads::serve(l, router, &threads, async move {
                    let _ = grpc_stop_rx.wait_for(|stop| *stop).await;
                })
                .await
            }
            _ => Ok(()),
        }
    };
    let timeout = config.drain.timeout;
    let deadline = async move {
        if stopped_rx.await.is_ok() {
            tokio::time::sleep(timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = async { tokio::try_join!(server, grpc_server) } => { result?; }
        () = deadline => {
            tracing::warn!(
                timeout_seconds = timeout.as_secs_f64(),
                "Requests still in flight when the drain timeout ran out; stopping anyway."
            );
        }
    }
    // Captured predictions still buffered are written before the process exits.
    pipeline.shutdown().await;
    Ok(())
}
