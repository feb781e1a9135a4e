use anyhow::Context;
use clap::Parser;
use ferry_runtimes::OnnxEngine;
use ferry_server::cli::{Cli, Command, EngineArg, LogFormat, ServeArgs};
use ferry_server::config::{ModelEntry, ServerConfig};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            ferry_server::telemetry::init(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("ferry-io")
                .build()
                .context("Could not start the async runtime")?;
            runtime.block_on(serve(args))
        }
        Command::Models(args) => {
            ferry_server::telemetry::init_with_default(LogFormat::Text, "warn");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("Could not start the async runtime")?;
            runtime.block_on(ferry_server::registry_cli::run(
                args,
                &mut std::io::stdout(),
            ))
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // The demo registry must outlive the server: keep its directory guard here.
    let (mut config, _demo_dir) = match &args.config {
        Some(path) => (ServerConfig::load(path)?, None),
        None if args.registry.is_none() && args.models.is_none() => {
            let dir = ferry_server::demo::extract().context("Could not write the demo registry")?;
            let uri = dir.path().to_string_lossy().into_owned();
            tracing::info!(registry = %uri, models = ?ferry_server::demo::DEMO_MODELS, "No config given: serving the embedded demo registry.");
            (ferry_server::demo::config(&uri), Some(dir))
        }
        None => {
            let registry = args.registry.clone().context(
                "--models needs a registry: pass --registry DIR (or FERRY_REGISTRY) or --config FILE",
            )?;
            (ServerConfig::for_registry(registry), None)
        }
    };
    apply_overrides(&mut config, &args);
    config.validate()?;
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "Effective configuration.");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("Could not listen on {}", config.listen))?;
    tracing::info!(address = %listener.local_addr()?, "Listening.");
    ferry_server::serve(config, listener, shutdown_signal()).await?;
    tracing::info!("Stopped.");
    Ok(())
}

fn apply_overrides(config: &mut ServerConfig, args: &ServeArgs) {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(registry) = &args.registry {
        config.registry.uri = registry.clone();
    }
    if let Some(models) = &args.models {
        config.models = models
            .iter()
            .filter(|m| !m.trim().is_empty())
            .map(|m| ModelEntry::Ref(m.trim().to_string()))
            .collect();
    }
    if let Some(engine) = args.onnx_engine {
        config.onnx_engine = match engine {
            EngineArg::Auto => OnnxEngine::Auto,
            EngineArg::Ort => OnnxEngine::Ort,
            EngineArg::Tract => OnnxEngine::Tract,
        };
    }
    if let Some(path) = &args.ort_lib {
        config.onnxruntime_lib = Some(path.clone());
    }
    if let Some(n) = args.max_body_bytes {
        config.max_body_bytes = n;
    }
    if let Some(n) = args.queue_capacity {
        config.queue_capacity = n;
    }
    if let Some(n) = args.instances {
        config.instances = n;
    }
    if let Some(n) = args.intra_op_threads {
        config.intra_op_threads = n;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not listen for SIGTERM; only Ctrl-C stops the server.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
