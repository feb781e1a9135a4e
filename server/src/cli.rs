//! Command line. Every flag can also come from a `FERRY_*` environment variable; flags and
//! variables override the config file.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "ferry: serve versioned ONNX models over the Open Inference Protocol v2, TF-Serving-style predict and business endpoints with online features.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve models over HTTP. Without --config, --registry or --models, serves the embedded
    /// demo registry (a tree-ensemble classifier `churn` and an MLP `mlp`). Served aliases are
    /// polled (`registry.poll_interval`) and new versions swapped in without a restart;
    /// FERRY_ADMIN_TOKEN enables POST /v2/repository/models/{model}/load and /unload. With
    /// --config, the `endpoints` section (variants and weights, shadows, transforms, capture)
    /// is reloaded on SIGHUP or when the file changes, without a restart.
    Serve(ServeArgs),
    /// Publish, list and alias model versions in a registry (a directory or s3://bucket/prefix),
    /// and import versions from MLflow.
    /// S3 access follows the AWS SDK chain (AWS_REGION, credentials, AWS_ENDPOINT_URL[_S3]).
    Models(ModelsArgs),
    /// Feature store jobs: materialize offline Parquet into Redis, read one entity's online
    /// values, export a point-in-time correct training set.
    Features(FeaturesArgs),
    /// Score files through an endpoint's pipeline (the same code as
    /// POST /v1/endpoints/{e}/predict): Parquet, CSV or JSON Lines, local or S3, one file, a
    /// prefix or a glob. Sharded (`--shard I/N`, or JOB_COMPLETION_INDEX + FERRY_SHARDS),
    /// resumable and exactly-once per unit (each file, or each row group of a single Parquet
    /// file). Exit codes: 0 all rows scored, 1 fatal error, 2 some rows failed (see
    /// `<output>/_errors/`), 3 some units failed (re-run to retry them).
    Batch(BatchArgs),
    /// Check a config without serving: `ferry config check ferry.yaml` (the same as
    /// `ferry serve --config FILE --check`).
    Config(ConfigArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE as `serve` would read it (flags' FERRY_* variables applied; feature repo,
    /// transform scripts and model references parsed; no model loaded, no network), print the
    /// effective config with secrets redacted as JSON on stdout, and exit 0 (valid) or 1 with
    /// a message naming the bad key.
    Check {
        /// The config file (ferry.yaml).
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BatchFormat {
    Parquet,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Config file (ferry.yaml) defining the endpoint, the registry and the features. Without
    /// one, the embedded demo registry and its `risk` endpoint are used.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Registry URI (overrides `registry.uri`).
    #[arg(long, env = "FERRY_REGISTRY")]
    pub registry: Option<String>,

    /// Feature repo file (features.yaml); overrides `features.repo`.
    #[arg(long = "features", env = "FERRY_FEATURES")]
    pub features_repo: Option<PathBuf>,

    /// Redis URL of the online feature store; overrides `features.redis`.
    #[arg(long, env = "FERRY_REDIS")]
    pub redis: Option<String>,

    /// Endpoint (from the config's `endpoints`) whose pipeline scores the rows.
    #[arg(long, env = "FERRY_BATCH_ENDPOINT")]
    pub endpoint: String,

    /// Input: a file, a directory/prefix (every *.parquet, *.csv, *.jsonl under it; names
    /// starting with `_` or `.` are skipped) or a glob (`*`, `?`, `[..]`, `**`), local or
    /// s3://bucket/key.
    #[arg(long, env = "FERRY_BATCH_INPUT")]
    pub input: String,

    /// Output directory or s3://bucket/prefix: `<unit>.parquet|jsonl` (id columns, one typed
    /// column per model output or postprocess field, variant, model, version, scored_at),
    /// `_markers/<unit>.json`, `_errors/<unit>.jsonl`, `_schema.json` (postprocess endpoints).
    #[arg(long, env = "FERRY_BATCH_OUTPUT")]
    pub output: String,

    /// This process's shard, `I/N` (0-based). Default: JOB_COMPLETION_INDEX (Kubernetes
    /// Indexed Jobs) of FERRY_SHARDS when both are set, else 0/1. Unit u belongs to shard
    /// fnv1a64(u) mod N.
    #[arg(long)]
    pub shard: Option<String>,

    /// Output format: Parquet with typed columns, or JSON Lines with the same fields (numbers
    /// as numbers, lists as arrays).
    #[arg(long, value_enum, default_value = "parquet")]
    pub format: BatchFormat,

    /// Input columns copied to the output, comma-separated (default: every input column).
    #[arg(long, value_delimiter = ',')]
    pub id_columns: Option<Vec<String>>,

    /// Also redo units whose input changed (size, ETag or modification time) since their
    /// marker was written; without it every unit with a marker is skipped.
    #[arg(long)]
    pub incremental: bool,

    /// Rows per chunk sent through the pipeline; with --inflight it bounds memory.
    #[arg(long, default_value_t = 8192)]
    pub chunk_rows: usize,

    /// Chunks scored at once (more keeps the compute threads busy while rows are converted).
    #[arg(long, default_value_t = 2)]
    pub inflight: usize,

    /// Engine for ONNX models (overrides `onnx_engine`).
    #[arg(long, env = "FERRY_ONNX_ENGINE", value_enum)]
    pub onnx_engine: Option<EngineArg>,

    /// Path of libonnxruntime.so (overrides `onnxruntime_lib`).
    #[arg(long, env = "FERRY_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Config file (ferry.yaml) whose `registry` section to use (uri, endpoint, path_style,
    /// region).
    #[arg(long, env = "FERRY_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Registry URI: a directory, file:// URI, s3://bucket/prefix, or an MLflow tracking server
    /// (mlflow+http(s)://HOST:PORT, or `mlflow` for MLFLOW_TRACKING_URI) (overrides `registry.uri`).
    #[arg(long, env = "FERRY_REGISTRY", global = true)]
    pub registry: Option<String>,

    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Publish DIR (the artifact plus a model.yaml with format, artifact, inputs and outputs)
    /// as the next version of a model. For an ONNX file (the one *.onnx in DIR) or an
    /// XGBoost/LightGBM file (model.json, model.ubj, model.txt) model.yaml may be left out or
    /// partial: push fills what it lacks from the file. Computes the sha256 digests, uploads
    /// the files, then the manifest (a version exists once its manifest does), and never
    /// overwrites an existing version. Writes the published manifest back to DIR/model.yaml.
    Push {
        /// Directory holding the artifact and (optional for ONNX and tree files) model.yaml.
        dir: PathBuf,
        /// Model name ([a-z0-9][a-z0-9_-]{0,62}).
        #[arg(long)]
        name: String,
        /// Point this alias at the new version once it is published.
        #[arg(long)]
        alias: Option<String>,
        /// Publish exactly this version number; fails if it exists (default: the next one).
        #[arg(long)]
        version: Option<u64>,
    },
    /// List models, or one model's versions with sizes, creation times, aliases and lineage
    /// metadata.
    List {
        /// Only this model.
        name: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy an MLflow model version into a ferry registry, with sha256 digests, for teams that
    /// want immutable artifacts. SOURCE is mlflow+http(s)://HOST:PORT/NAME/VERSION (VERSION a
    /// number or an alias) or models:/NAME/VERSION (MLFLOW_TRACKING_URI names the server). The
    /// version keeps its MLflow number; importing the same version again changes nothing.
    Import {
        /// The MLflow model version.
        source: String,
        /// Registry to copy into: a directory, file:// URI or s3://bucket/prefix (default:
        /// --registry or the config's registry.uri).
        #[arg(long)]
        to: Option<String>,
        /// Point this alias of the ferry registry at the imported version.
        #[arg(long)]
        alias: Option<String>,
    },
    /// Point alias A of model N at VERSION (servers polling the alias swap to it).
    Alias {
        /// Model name.
        name: String,
        /// Alias name.
        alias: String,
        /// Version the alias points at; it must exist.
        version: u64,
    },
}

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// Config file (ferry.yaml) whose `features` section names the repo and Redis; its
    /// `registry` section's S3 settings (endpoint, path_style, region) also reach views whose
    /// source is s3://bucket/prefix/ (AWS_REGION, credentials and AWS_ENDPOINT_URL[_S3] work
    /// too, through the AWS SDK chain).
    #[arg(long, env = "FERRY_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Feature repo file (features.yaml); overrides `features.repo`.
    #[arg(long = "features", env = "FERRY_FEATURES", global = true)]
    pub repo: Option<PathBuf>,

    /// Redis URL of the online store, e.g. redis://127.0.0.1:6379; overrides `features.redis`.
    #[arg(long, env = "FERRY_REDIS", global = true)]
    pub redis: Option<String>,

    #[command(subcommand)]
    pub command: FeaturesCommand,
}

#[derive(Debug, Subcommand)]
pub enum FeaturesCommand {
    /// Write the newest offline row per entity to Redis, from local files or an S3 prefix (listed
    /// a page at a time; objects downloaded and read one at a time). Incremental: files whose
    /// stamp matches the stored watermark are skipped (local: modification time and size; S3:
    /// ETag and size); a value is only ever replaced by one with a newer event time.
    Materialize {
        /// Only this view (default: every view).
        #[arg(long)]
        view: Option<String>,
        /// Re-read every file, ignoring the watermark (newer stored values still win).
        #[arg(long)]
        full: bool,
        /// Rows per record batch; bounds memory (default 8192).
        #[arg(long, default_value_t = 8192)]
        batch_rows: usize,
    },
    /// Print one entity's online values (Redis, or the offline files without --redis).
    Get {
        #[arg(long)]
        view: String,
        /// The entity key.
        #[arg(long)]
        key: String,
    },
    /// Point-in-time export: for each row of the entities file (Parquet with the join key and a
    /// timestamp column), the feature values as of that time, TTL applied, written as Parquet.
    Export {
        /// Parquet file with the join key column(s) and the timestamp column; every column is
        /// copied to the output.
        #[arg(long)]
        entities: PathBuf,
        /// Output Parquet file.
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated `view.feature` refs (default: every view keyed by a column present).
        #[arg(long = "feature", value_delimiter = ',')]
        features: Vec<String>,
        /// Timestamp column of the entities file (Timestamp, or Int64 Unix milliseconds).
        #[arg(long, default_value = "event_ts")]
        timestamp_column: String,
        /// Leave missing and stale values null instead of using the features' defaults.
        #[arg(long)]
        no_defaults: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    Auto,
    Ort,
    Tract,
    /// The native tree engine (ONNX-ML tree ensemble graphs only).
    Trees,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (ferry.yaml): registry, models and per-model settings.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on (overrides `listen`; default 0.0.0.0:8080).
    #[arg(long, env = "FERRY_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// gRPC address (`inference.GRPCInferenceService`, health, reflection): `host:port` or
    /// `off` (overrides `grpc_listen`; default: the HTTP host with its port + 1, 0.0.0.0:8081).
    #[arg(long, env = "FERRY_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,

    /// Registry URI: a directory, file:// URI, s3://bucket/prefix, or an MLflow tracking server
    /// (mlflow+http(s)://HOST:PORT, or `mlflow` for MLFLOW_TRACKING_URI) (overrides `registry.uri`).
    /// S3 uses the AWS SDK chain (AWS_REGION, credentials, AWS_ENDPOINT_URL[_S3]).
    #[arg(long, env = "FERRY_REGISTRY")]
    pub registry: Option<String>,

    /// Serve a plain model directory instead of a registry: the one `*.onnx` (signature read
    /// from the graph), `model.json`/`model.ubj` (XGBoost) or `model.txt` (LightGBM) in DIR or
    /// one level down, with or without a model.yaml — KServe's `/mnt/models`. Served as
    /// `--model-name`@1; excludes --registry and --models.
    #[arg(long, env = "FERRY_MODEL_DIR", conflicts_with_all = ["registry", "models"])]
    pub model_dir: Option<PathBuf>,

    /// The name a --model-dir model is served under (KServe passes the InferenceService name).
    #[arg(
        long,
        env = "FERRY_MODEL_NAME",
        default_value = "model",
        requires = "model_dir"
    )]
    pub model_name: String,

    /// Models to serve, comma-separated `name@alias` / `name@version` (overrides `models`).
    #[arg(long, env = "FERRY_MODELS", value_delimiter = ',')]
    pub models: Option<Vec<String>>,

    /// Engine for ONNX models. `auto` uses ONNX Runtime when its library loads and tract
    /// (pure Rust, no library needed) otherwise (overrides `onnx_engine`).
    #[arg(long, env = "FERRY_ONNX_ENGINE", value_enum)]
    pub onnx_engine: Option<EngineArg>,

    /// Path of libonnxruntime.so, e.g. from the PyPI onnxruntime wheel
    /// (`python3 scripts/find-ort-lib.py` prints it). Overrides `onnxruntime_lib`.
    #[arg(long, env = "FERRY_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// Largest request body in bytes; larger requests get 413 (overrides `max_body_bytes`).
    #[arg(long, env = "FERRY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Largest gRPC request message in bytes (overrides `grpc_max_message_bytes`; default: the
    /// body limit).
    #[arg(long, env = "FERRY_GRPC_MAX_MESSAGE_BYTES")]
    pub grpc_max_message_bytes: Option<usize>,

    /// Requests that may wait per model version before new ones get 429 Too Many Requests.
    /// Larger absorbs bursts; smaller bounds latency under overload (overrides `queue_capacity`).
    #[arg(long, env = "FERRY_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,

    /// Compute threads per model version. Keep instances × intra-op threads × models near
    /// the core count (overrides `instances`).
    #[arg(long, env = "FERRY_INSTANCES")]
    pub instances: Option<usize>,

    /// Threads one inference may use inside the engine (ONNX Runtime intra-op threads, Candle's
    /// pool); 0 = automatic: usable cores (cgroup quota applied) shared among served models and
    /// their compute threads, so they never oversubscribe the machine (overrides `intra_op_threads`).
    #[arg(long, env = "FERRY_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<usize>,

    /// Feature repo file (features.yaml); overrides `features.repo`.
    #[arg(long = "features", env = "FERRY_FEATURES")]
    pub features_repo: Option<PathBuf>,

    /// Redis URL of the online feature store; overrides `features.redis`. Without one, features
    /// are served from an in-process store loaded from the offline files.
    #[arg(long, env = "FERRY_REDIS")]
    pub redis: Option<String>,

    /// Log format on stderr.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Validate the config (file, flags and FERRY_* variables), print the effective config
    /// with secrets redacted and exit, without loading models or listening.
    #[arg(long)]
    pub check: bool,
}
