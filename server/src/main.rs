use anyhow::Context;
use clap::Parser;
use ferry_batch::{BatchOptions, JobConfig, OutputFormat, Shard};
use ferry_features::FeatureRepo;
use ferry_features::materialize::{MaterializeOptions, Progress, materialize_view};
use ferry_features::offline::OfflineSource;
use ferry_features::online::{MemoryStore, OnlineStore, RedisStore, RowKey};
use ferry_features::repo::OnlineFormat;
use ferry_registry::S3Options;
use ferry_runtimes::OnnxEngine;
use ferry_server::cli::{
    BatchArgs, BatchFormat, Cli, Command, ConfigArgs, ConfigCommand, EngineArg, FeaturesArgs,
    FeaturesCommand, LogFormat, ServeArgs,
};
use ferry_server::config::{FeaturesConfig, ModelEntry, ServerConfig};
use std::io::IsTerminal;
use std::time::Duration;

// Requests allocate across the tokio threads, and glibc's arenas then contend: malloc, free
// and their arena locks were ~15% of server CPU per 1-row request at 64 connections
// (loadtests/RESULTS.md, "Hot path"). mimalloc keeps per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc purges freed pages (returns them to the OS) on later activity of the heaps, after
/// a short delay. A model version's weights are freed by a thread that then idles or exits, so
/// an unloaded version could stay resident for good (tests/py/test_candle.py measures it).
/// Purging at once instead cost ~2% of a 1-row request's CPU in `madvise`; a thread that runs
/// mimalloc's collection four times a second returns the memory without that.
#[allow(unsafe_code)]
fn collect_freed_memory() {
    let spawned = std::thread::Builder::new()
        .name("ferry-mem".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                // SAFETY: mimalloc's collection is safe to call from any thread at any time.
                unsafe { libmimalloc_sys::mi_collect(false) }
            }
        });
    if let Err(e) = spawned {
        eprintln!("ferry: could not start the memory collection thread: {e}");
    }
}

fn main() -> anyhow::Result<()> {
    collect_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let _telemetry = ferry_server::telemetry::init(args.log_format)?;
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
        Command::Batch(args) => {
            // ONNX Runtime's session logs are noise in a job's output.
            ferry_server::telemetry::init_with_default(args.log_format, "info,ort=warn");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("ferry-io")
                .build()
                .context("Could not start the async runtime")?;
            let code = runtime.block_on(batch(args))?;
            std::process::exit(code);
        }
        Command::Config(ConfigArgs {
            command: ConfigCommand::Check { file },
        }) => {
            // Exactly `serve --config FILE --check`, so the FERRY_* variables of serve's flags
            // apply as they would when serving.
            let mut argv = vec!["ferry".into(), "serve".into(), "--config".into()];
            argv.push(file.into_os_string());
            argv.push("--check".into());
            let Command::Serve(args) = Cli::parse_from(argv).command else {
                unreachable!("`serve` parses as Command::Serve");
            };
            ferry_server::telemetry::init_with_default(args.log_format, "warn");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("Could not start the async runtime")?;
            runtime.block_on(serve(args))
        }
        Command::Features(args) => {
            ferry_server::telemetry::init_with_default(ferry_server::cli::LogFormat::Text, "info");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("Could not start the async runtime")?;
            runtime.block_on(features(args))
        }
    }
}

/// Redis timeout for CLI jobs: generous, they move data in bulk.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

async fn features(args: FeaturesArgs) -> anyhow::Result<()> {
    // S3 sources use the registry's S3 settings (endpoint, path style, region), so one config
    // section points every job at the same store.
    let (section, s3) = match &args.config {
        Some(path) => {
            let config = ServerConfig::load(path)?;
            (config.features, config.registry.options().s3)
        }
        None => (None, S3Options::default()),
    };
    let repo_path = args
        .repo
        .clone()
        .or_else(|| section.as_ref().map(|f| f.repo.clone()))
        .context("No feature repo: pass --features FILE (or FERRY_FEATURES), or --config with a `features` section")?;
    let redis_url = args
        .redis
        .clone()
        .or_else(|| section.as_ref().and_then(|f| f.redis.clone()));
    let repo = FeatureRepo::load(&repo_path)?;
    match args.command {
        FeaturesCommand::Materialize {
            view,
            full,
            batch_rows,
        } => {
            let url = redis_url.context(
                "materialize writes to Redis: pass --redis URL (or FERRY_REDIS, or `features.redis`)",
            )?;
            let store = RedisStore::connect(&url, JOB_TIMEOUT)
                .await
                .context("Could not connect to Redis")?;
            let views: Vec<_> = match &view {
                Some(name) => vec![
                    repo.view(name)
                        .with_context(|| format!("No view `{name}` in {}", repo_path.display()))?
                        .clone(),
                ],
                None => repo.views.clone(),
            };
            let options = MaterializeOptions {
                full,
                batch_rows: batch_rows.max(1),
            };
            let progress = Bar::new();
            for v in &views {
                let context = || format!("Could not materialize view `{}`", v.name);
                let source = OfflineSource::open(v, &s3).await.with_context(context)?;
                let r = materialize_view(&repo, v, &source, &store, &options, &progress)
                    .await
                    .with_context(context)?;
                let expired = if r.rows_expired > 0 {
                    format!(
                        ", {} older than the TTL not written (as Feast's materialize-incremental)",
                        r.rows_expired
                    )
                } else {
                    String::new()
                };
                println!(
                    "view {}: {} of {} files read, {} rows read ({} skipped: null key or time), {} keys written, {} not newer{expired}; {:.2} s, {:.0} rows/s",
                    r.view,
                    r.files_read,
                    r.files_total,
                    r.rows_read,
                    r.rows_skipped,
                    r.keys_written,
                    r.keys_not_newer,
                    r.seconds,
                    r.rows_per_second()
                );
            }
            Ok(())
        }
        FeaturesCommand::Get { view, key } => {
            let vi = repo.view_index(&view)?;
            let v = &repo.views[vi];
            // Feast's keys are binary: shown as hex.
            let online_key = match repo.online_format {
                OnlineFormat::Ferry => repo.online_key(v, &key),
                OnlineFormat::Feast => ferry_features::online::redis::feast_key(
                    &repo,
                    &RowKey {
                        view: vi,
                        key: key.clone(),
                    },
                )
                .map(|k| k.iter().map(|b| format!("{b:02x}")).collect::<String>())
                .with_context(|| {
                    format!(
                        "`{key}` is not a key of view `{view}` (join keys {:?})",
                        v.join_keys()
                    )
                })?,
            };
            let row = match &redis_url {
                Some(url) => {
                    let store = RedisStore::connect(url, JOB_TIMEOUT)
                        .await
                        .context("Could not connect to Redis")?;
                    let keys = [RowKey {
                        view: vi,
                        key: key.clone(),
                    }];
                    store.get_many(&repo, &keys).await?.pop().flatten()
                }
                None => {
                    let store = MemoryStore::load(&repo, &s3).await?;
                    let keys = [RowKey {
                        view: vi,
                        key: key.clone(),
                    }];
                    store.get_many(&repo, &keys).await?.pop().flatten()
                }
            };
            let Some(row) = row else {
                anyhow::bail!(
                    "No online values for `{key}` in view `{view}` (key {online_key}, {})",
                    if redis_url.is_some() {
                        "Redis"
                    } else {
                        "offline files"
                    }
                );
            };
            let values: serde_json::Map<String, serde_json::Value> = v
                .features
                .iter()
                .zip(&row.values)
                .map(|(f, x)| {
                    (
                        f.name.clone(),
                        x.as_ref()
                            .map(|x| x.to_json())
                            .unwrap_or(serde_json::Value::Null),
                    )
                })
                .collect();
            let stale = repo.online_format == OnlineFormat::Ferry
                && v.ttl.is_some_and(|ttl| {
                    ferry_features::online::now_ms() - row.ts_ms > ttl.as_millis() as i64
                });
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "key": online_key,
                    "_ts": row.ts_ms,
                    "stale": stale,
                    "values": values,
                }))?
            );
            Ok(())
        }
        FeaturesCommand::Export {
            entities,
            out,
            features,
            timestamp_column,
            no_defaults,
        } => {
            let options = ferry_features::pit::ExportOptions {
                features,
                timestamp_column,
                no_defaults,
            };
            let r = ferry_features::pit::export(&repo, &entities, &out, &options, &s3).await?;
            println!(
                "wrote {} rows × {} features to {} ({} values missing or stale at their row's time)",
                r.rows,
                r.features.len(),
                out.display(),
                r.missing
            );
            Ok(())
        }
    }
}

/// The shard from `--shard`, or Kubernetes Indexed Jobs' JOB_COMPLETION_INDEX with the shard
/// count in FERRY_SHARDS.
fn batch_shard(flag: Option<&str>) -> anyhow::Result<Shard> {
    if let Some(s) = flag {
        return Shard::parse(s).map_err(anyhow::Error::msg);
    }
    let index = std::env::var("JOB_COMPLETION_INDEX").ok();
    let count = std::env::var("FERRY_SHARDS").ok();
    match (index, count) {
        (Some(i), Some(n)) => Shard::parse(&format!("{i}/{n}")).map_err(anyhow::Error::msg),
        (Some(_), None) => anyhow::bail!(
            "JOB_COMPLETION_INDEX is set but FERRY_SHARDS (the Job's completions) is not; set it or pass --shard I/N"
        ),
        _ => Ok(Shard::ALL),
    }
}

async fn batch(args: BatchArgs) -> anyhow::Result<i32> {
    let shard = batch_shard(args.shard.as_deref())?;
    let (mut config, _demo_dir) = match &args.config {
        Some(path) => (ServerConfig::load(path)?, None),
        None => {
            let dir = ferry_server::demo::extract().context("Could not write the demo registry")?;
            let uri = dir.path().to_string_lossy().into_owned();
            (ferry_server::demo::config(&uri), Some(dir))
        }
    };
    apply_shared_overrides(
        &mut config,
        args.registry.as_ref(),
        args.onnx_engine,
        args.ort_lib.as_ref(),
        args.features_repo.as_ref(),
        args.redis.as_ref(),
    );
    config.validate()?;
    let stall_after_units = std::env::var("FERRY_BATCH_TEST_STALL_AFTER_UNITS")
        .ok()
        .and_then(|v| v.parse().ok());
    let options = BatchOptions {
        endpoint: args.endpoint,
        input: args.input,
        output: args.output,
        shard,
        format: match args.format {
            BatchFormat::Parquet => OutputFormat::Parquet,
            BatchFormat::Jsonl => OutputFormat::Jsonl,
        },
        id_columns: args.id_columns,
        incremental: args.incremental,
        chunk_rows: args.chunk_rows.max(1),
        inflight: args.inflight.max(1),
        stall_after_units,
    };
    let job = JobConfig {
        registry: config.registry.options(),
        models: config.models_config(),
        features: config.features,
        endpoints: config.endpoints,
        base_dir: config.config_dir,
    };
    let s = ferry_batch::run(job, options).await?;
    println!(
        "batch: {} units in shard {shard} ({} total): {} scored, {} skipped (already committed), {} failed; {} rows read, {} scored, {} failed; {:.2} s, {:.0} rows/s",
        s.units_in_shard,
        s.units_total,
        s.units_done,
        s.units_skipped,
        s.units_failed,
        s.rows_read,
        s.rows_scored,
        s.rows_failed,
        s.seconds,
        s.rows_per_second()
    );
    let rest = if s.rows_columnar < s.rows_scored {
        "; the others went through JSON rows (JSON Lines output or a non-Parquet input, \
         shadows, capture, steps without a column form, or values judged row by row: \
         README, \"Column-wise scoring\")"
    } else {
        ""
    };
    println!(
        "batch: {} of {} scored rows went column-wise (no JSON rows){rest}",
        s.rows_columnar, s.rows_scored
    );
    if s.rows_failed_before > 0 {
        println!(
            "batch: {} rows were rejected in units an earlier run committed (skipped now); their error files stand",
            s.rows_failed_before
        );
    }
    for file in &s.error_files {
        println!("batch: rejected rows: {file}");
    }
    tracing::info!(summary = %serde_json::to_string(&s).unwrap_or_default(), "Batch finished.");
    Ok(s.exit_code())
}

/// A progress bar on a terminal; silent otherwise.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Bar {
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        };
        Bar(bar)
    }
}

impl Progress for Bar {
    fn start(&self, view: &str) {
        self.0.reset();
        self.0.set_length(0);
        self.0.set_position(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
        ) {
            self.0.set_style(style.progress_chars("=> "));
        }
        self.0.set_message(view.to_string());
    }
    fn add_total(&self, rows: u64) {
        self.0.inc_length(rows);
    }
    fn advance(&self, rows: u64) {
        self.0.inc(rows);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // The demo registry must outlive the server: keep its directory guard here.
    // So is the --model-dir registry's.
    let model_dir = match &args.model_dir {
        Some(dir) => Some(ferry_server::model_dir::registry_from_model_dir(
            dir,
            &args.model_name,
        )?),
        None => None,
    };
    let (mut config, _demo_dir) = match &args.config {
        Some(path) => (ServerConfig::load(path)?, None),
        None if model_dir.is_some() => (ServerConfig::for_registry(""), None),
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
    if let Some(m) = &model_dir {
        config.registry.uri = m.dir.path().to_string_lossy().into_owned();
        config.models = vec![ModelEntry::Ref(m.model_ref.clone())];
        if !config.endpoints.is_empty() {
            // They would name models this one-model registry does not hold.
            tracing::warn!(
                endpoints = config.endpoints.len(),
                "--model-dir serves one model; the config's endpoints are ignored."
            );
            config.endpoints.clear();
        }
    }
    if args.check {
        config.check()?;
        println!("{}", serde_json::to_string_pretty(&config.redacted_json())?);
        eprintln!("The config is valid.");
        return Ok(());
    }
    config.validate()?;
    tracing::info!(config = %config.redacted_json(), "Effective configuration.");
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
    if let Some(grpc) = &args.grpc_listen {
        config.grpc_listen = Some(grpc.clone());
    }
    apply_shared_overrides(
        config,
        args.registry.as_ref(),
        args.onnx_engine,
        args.ort_lib.as_ref(),
        args.features_repo.as_ref(),
        args.redis.as_ref(),
    );
    if let Some(models) = &args.models {
        config.models = models
            .iter()
            .filter(|m| !m.trim().is_empty())
            .map(|m| ModelEntry::Ref(m.trim().to_string()))
            .collect();
    }
    if let Some(n) = args.max_body_bytes {
        config.max_body_bytes = n;
    }
    if let Some(n) = args.grpc_max_message_bytes {
        config.grpc_max_message_bytes = Some(n);
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

/// Flags `serve` and `batch` share: registry, ONNX engine and library, feature repo, Redis.
fn apply_shared_overrides(
    config: &mut ServerConfig,
    registry: Option<&String>,
    engine: Option<EngineArg>,
    ort_lib: Option<&std::path::PathBuf>,
    features_repo: Option<&std::path::PathBuf>,
    redis: Option<&String>,
) {
    if let Some(registry) = registry {
        config.registry.uri = registry.clone();
    }
    if let Some(engine) = engine {
        config.onnx_engine = match engine {
            EngineArg::Auto => OnnxEngine::Auto,
            EngineArg::Ort => OnnxEngine::Ort,
            EngineArg::Tract => OnnxEngine::Tract,
            EngineArg::Trees => OnnxEngine::Trees,
        };
    }
    if let Some(path) = ort_lib {
        config.onnxruntime_lib = Some(path.clone());
    }
    if let Some(repo) = features_repo {
        match &mut config.features {
            Some(f) => f.repo = repo.clone(),
            None => {
                config.features = Some(FeaturesConfig {
                    repo: repo.clone(),
                    redis: None,
                    timeout: ferry_server::config::DEFAULT_FEATURE_TIMEOUT.into(),
                    on_missing: Default::default(),
                })
            }
        }
    }
    if let (Some(url), Some(f)) = (redis, &mut config.features) {
        f.redis = Some(url.clone());
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
