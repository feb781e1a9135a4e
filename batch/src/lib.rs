//! `ferry batch`: scores files through the same pipeline as `POST /v1/endpoints/{e}/predict`.
//!
//! Work is split into units: each input file, or each row group when the input is a single
//! Parquet file with several. Unit `u` belongs to shard `fnv1a64(u) mod N`, so any number of
//! machines split the work without talking to each other. A unit's output is written to a
//! local temporary file, committed under a deterministic name (local: rename; S3: one
//! PutObject), then its completion marker `_markers/<unit>.json` is written. A re-run skips
//! units with a marker and redoes the others from scratch, overwriting whatever a killed run
//! left: every unit's rows appear exactly once.
//!
//! The job builds its models and pipeline with `ferry_pipeline::Setup`, as the server does, and
//! calls the pipeline only through `score`.

pub mod columns;
pub mod read;
pub mod score;
mod stages;
pub mod storage;
pub mod write;

use columns::PredictionColumns;
use ferry_models::{ModelSettings, ModelsConfig};
use ferry_pipeline::config::{EndpointConfig, FeaturesConfig};
use ferry_pipeline::{Pipeline, PipelineOptions, PredictError};
use ferry_registry::{ModelRef, RegistryError, RegistryOptions, Store};
use score::ScoredRow;
use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use storage::{Fingerprint, InputFile, InputFormat, LocalInput, Location};
pub use write::OutputFormat;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Store(#[from] RegistryError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Config(String),
    #[error("scoring failed: {0}")]
    Predict(#[from] PredictError),
}

/// This process's share of the work: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N` with 0 <= I < N.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard `{s}`: write I/N, e.g. 0/4"))?;
        let index: u64 = i
            .trim()
            .parse()
            .map_err(|_| format!("shard `{s}`: I is not a number"))?;
        let count: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("shard `{s}`: N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("shard `{s}`: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }

    pub fn owns(&self, unit: &str) -> bool {
        fnv1a64(unit.as_bytes()) % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// 64-bit FNV-1a: stable across versions and platforms, so shard assignment never changes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub endpoint: String,
    pub input: String,
    pub output: String,
    pub shard: Shard,
    pub format: OutputFormat,
    /// Input columns copied to the output (default: all).
    pub id_columns: Option<Vec<String>>,
    /// Redo units whose input changed since their marker was written.
    pub incremental: bool,
    pub chunk_rows: usize,
    /// Chunks scored at once per unit.
    pub inflight: usize,
    /// Test hook: after this many committed units, write one chunk of the next and stall.
    pub stall_after_units: Option<usize>,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub units_total: usize,
    pub units_in_shard: usize,
    pub units_done: usize,
    pub units_skipped: usize,
    pub units_failed: usize,
    pub rows_read: u64,
    pub rows_scored: u64,
    pub rows_failed: u64,
    /// Rows rejected in units an earlier run committed and this one skipped: their error
    /// files still stand, so the run answers exit code 2 again instead of turning a retry of
    /// a partly failed job into a success.
    pub rows_failed_before: u64,
    /// The error files (`_errors/…`) of every unit of this shard that has rejected rows.
    pub error_files: Vec<String>,
    /// Rows scored column-wise (Arrow buffers → tensors → typed columns, no JSON rows).
    pub rows_columnar: u64,
    pub seconds: f64,
}

impl Summary {
    pub fn rows_per_second(&self) -> f64 {
        self.rows_read as f64 / self.seconds.max(1e-9)
    }

    /// 0: everything scored; 2: some rows failed (see the error files); 3: some units failed
    /// (re-run to retry them). Fatal errors exit 1 before a summary exists.
    pub fn exit_code(&self) -> i32 {
        if self.units_failed > 0 {
            3
        } else if self.rows_failed > 0 || self.rows_failed_before > 0 {
            2
        } else {
            0
        }
    }
}

/// A unit of work.
#[derive(Debug, Clone)]
struct Unit {
    name: String,
    file: InputFile,
    row_group: Option<usize>,
}

/// The completion marker of a unit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Marker {
    unit: String,
    input: String,
    row_group: Option<usize>,
    fingerprint: Fingerprint,
    endpoint: String,
    output: String,
    errors: Option<String>,
    rows: u64,
    scored: u64,
    failed: u64,
    shard: String,
    committed_at: String,
}

/// The unit name of a relative input path: `/` becomes `__`, the extension goes.
fn unit_name(rel: &str, row_group: Option<usize>) -> String {
    let stem = match rel.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() && !stem.ends_with('/') => stem,
        _ => rel,
    };
    let base = stem.replace('/', "__");
    match row_group {
        Some(rg) => format!("{base}.rg{rg:05}"),
        None => base,
    }
}

/// What a job takes from the server config (`ferry batch --config ferry.yaml`).
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Where model versions come from; its S3 settings also reach the job's inputs, outputs
    /// and S3 feature sources.
    pub registry: RegistryOptions,
    /// The server's models and their defaults; the job keeps the defaults and loads only the
    /// scored endpoint's models (see `job_config`).
    pub models: ModelsConfig,
    pub features: Option<FeaturesConfig>,
    pub endpoints: Vec<EndpointConfig>,
    /// Where relative `script: {file: ...}` paths resolve (the config file's directory).
    pub base_dir: Option<PathBuf>,
}

/// Config changes for a job: only the scored endpoint's models load, no request deadline, the
/// online-store timeout is generous (a whole chunk is fetched at once), and the endpoint's
/// shadows and prediction capture are off (they observe live traffic; a batch job's output is
/// its own record).
pub fn job_config(mut config: JobConfig, endpoint: &str) -> Result<JobConfig, BatchError> {
    let available: Vec<String> = config.endpoints.iter().map(|e| e.name.clone()).collect();
    config.endpoints.retain(|e| e.name == endpoint);
    if config.endpoints.is_empty() {
        return Err(BatchError::Config(format!(
            "no endpoint `{endpoint}` in the config; endpoints: {available:?}"
        )));
    }
    for e in &mut config.endpoints {
        e.shadow.clear();
        e.capture = None;
    }
    // The endpoint's variants, each model once, with the server-wide defaults.
    let mut models: Vec<ModelSettings> = Vec::new();
    for model in config.endpoints.iter().flat_map(|e| e.models()) {
        let listed = models
            .iter()
            .any(|m| ModelRef::parse(&m.model).ok() == ModelRef::parse(model).ok());
        if !listed {
            models.push(ModelSettings::new(model));
        }
    }
    config.models.models = models;
    config.models.shadow_only.clear();
    config.models.request_timeout = None;
    if let Some(f) = &mut config.features {
        let current = f.timeout().unwrap_or_default();
        if current < JOB_FEATURE_TIMEOUT {
            f.timeout = humantime::format_duration(JOB_FEATURE_TIMEOUT).to_string();
        }
    }
    Ok(config)
}

const JOB_FEATURE_TIMEOUT: Duration = Duration::from_secs(30);

/// Progress: a bar on a terminal, a log line every few seconds otherwise.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    last_log: std::sync::Mutex<Instant>,
    started: Instant,
}

impl Reporter {
    fn new(units: usize) -> Reporter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(units as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} units {msg} [{elapsed_precise}, eta {eta}]",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Reporter {
            bar,
            last_log: std::sync::Mutex::new(Instant::now()),
            started: Instant::now(),
        }
    }

    fn rows(&self, s: &Summary, unit: &str) {
        let rate = s.rows_read as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{} rows ({:.0} rows/s, {} failed)",
                s.rows_read, rate, s.rows_failed
            ));
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            tracing::info!(
                unit,
                rows_read = s.rows_read,
                rows_failed = s.rows_failed,
                rows_per_second = rate as u64,
                units_done = s.units_done,
                units_skipped = s.units_skipped,
                units_in_shard = s.units_in_shard,
                "Batch progress."
            );
        }
    }

    fn unit_finished(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Runs a batch job. The pipeline and models are built from `config` (see `job_config`).
pub async fn run(config: JobConfig, options: BatchOptions) -> Result<Summary, BatchError> {
    let started = Instant::now();
    let config = job_config(config, &options.endpoint)?;
    let s3 = config.registry.s3.clone();

    // Plan before loading models: a typo in a URI fails fast.
    let mut inputs = storage::list_inputs(&options.input, &s3).await?;
    let input_store = Location::open(&options.input, &s3).await?.store;
    let output = Location::open(options.output.trim_end_matches('/'), &s3).await?;
    // An output inside the input prefix must not be read back as input by the next run.
    if same_root(&input_store, &output.store) {
        let under = format!("{}/", output.key);
        inputs.retain(|f| !f.key.starts_with(&under));
        if inputs.is_empty() {
            return Err(BatchError::Input(format!(
                "no input files at {} outside the output {}",
                options.input, options.output
            )));
        }
    }
    let scratch = std::env::temp_dir();
    let mut single_download: Option<Arc<LocalInput>> = None;
    let mut units = Vec::new();
    if let [only] = inputs.as_slice()
        && only.format == InputFormat::Parquet
    {
        let local = Arc::new(storage::fetch(&input_store, only, &scratch).await?);
        let groups = read::parquet_row_groups(local.path())?;
        if groups.len() > 1 {
            for rg in 0..groups.len() {
                units.push(Unit {
                    name: unit_name(&only.rel, Some(rg)),
                    file: only.clone(),
                    row_group: Some(rg),
                });
            }
        } else {
            units.push(Unit {
                name: unit_name(&only.rel, None),
                file: only.clone(),
                row_group: None,
            });
        }
        single_download = Some(local);
    } else {
        let mut names = HashSet::new();
        for f in &inputs {
            let name = unit_name(&f.rel, None);
            if !names.insert(name.clone()) {
                return Err(BatchError::Input(format!(
                    "two inputs map to the same output name `{name}` (same path but extension); rename one"
                )));
            }
            units.push(Unit {
                name,
                file: f.clone(),
                row_group: None,
            });
        }
    }
    let total = units.len();
    units.retain(|u| options.shard.owns(&u.name));
    let mut summary = Summary {
        units_total: total,
        units_in_shard: units.len(),
        ..Summary::default()
    };
    tracing::info!(
        input = %options.input,
        output = %options.output,
        endpoint = %options.endpoint,
        shard = %options.shard,
        units_total = total,
        units_in_shard = units.len(),
        "Batch plan."
    );

    // Decide which units to run before loading any model.
    let mut todo = Vec::new();
    for unit in units {
        let marker_key = output.join(&format!("_markers/{}.json", unit.name));
        let marker = match output.store.read(&marker_key).await? {
            Some(bytes) => serde_json::from_slice::<Marker>(&bytes).ok(),
            None => None,
        };
        let skip = match &marker {
            None => false,
            Some(_) if !options.incremental => true,
            Some(m) => m.fingerprint == unit.file.fingerprint() && m.endpoint == options.endpoint,
        };
        if skip {
            tracing::debug!(unit = %unit.name, "Already committed; skipped.");
            summary.units_skipped += 1;
            if let Some(m) = marker.as_ref().filter(|m| m.failed > 0) {
                summary.rows_failed_before += m.failed;
                summary.error_files.extend(m.errors.clone());
            }
        } else {
            if marker.is_some() {
                tracing::info!(unit = %unit.name, "The input changed since its marker; scoring it again.");
            }
            todo.push(unit);
        }
    }
    if todo.is_empty() {
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }

    ferry_models::init_onnx_runtime(&config.models);
    // Metrics are kept but not exported: a job reports through its summary and log.
    let state = ferry_pipeline::Setup {
        registry: config.registry.clone(),
        models: config.models.clone(),
        features: config.features.as_ref(),
        endpoints: &config.endpoints,
        options: PipelineOptions {
            base_dir: config.base_dir.clone(),
            s3: s3.clone(),
        },
        transforms: ferry_transforms::Registry::new(),
        model_metrics: ferry_models::ModelMetrics::new(),
        pipeline_metrics: ferry_pipeline::PipelineMetrics::new(),
    }
    .build()
    .await
    .map_err(|e| BatchError::Config(e.to_string()))?;
    state.models.load_configured().await;
    if !state.models.is_ready() {
        let problems: Vec<String> = state
            .models
            .index()
            .into_iter()
            .filter(|e| e.state != "READY")
            .map(|e| {
                format!(
                    "{}@{}: {} {}",
                    e.name,
                    e.version.unwrap_or_default(),
                    e.state,
                    e.reason
                )
            })
            .collect();
        return Err(BatchError::Config(format!(
            "the models of endpoint `{}` did not load: {}",
            options.endpoint,
            problems.join("; ")
        )));
    }
    let pipeline = state.pipeline.clone();
    let mut columns = job_columns(&pipeline, &options.endpoint, &output).await?;

    let reporter = Reporter::new(todo.len());
    let job = stages::Job {
        options: &options,
        pipeline: &pipeline,
        input_store: &input_store,
        output: &output,
        single_download,
        scratch: &scratch,
        reporter: &reporter,
    };
    let result = stages::run_units(job, todo, &mut columns, &mut summary).await;
    reporter.finish();
    result?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The prediction columns of a job: fixed now from the model signatures, or, behind a
/// `postprocess`, by the first scored chunk (`known` stays None until then).
struct JobColumns {
    known: Option<PredictionColumns>,
    /// Model outputs that type a postprocess field of the same name.
    outputs: Vec<ferry_runtimes::TensorSpec>,
}

/// Where a postprocess endpoint's inferred columns are kept, so every run and unit of the job
/// writes the same schema.
const SCHEMA_FILE: &str = "_schema.json";

async fn job_columns(
    pipeline: &Pipeline,
    endpoint: &str,
    output: &Location,
) -> Result<JobColumns, BatchError> {
    let (variants, postprocess) = pipeline.endpoint_outputs(endpoint)?;
    if postprocess {
        let key = output.join(SCHEMA_FILE);
        let known = match output.store.read(&key).await? {
            Some(bytes) => Some(serde_json::from_slice::<PredictionColumns>(&bytes).map_err(|e| {
                BatchError::Config(format!(
                    "{}: {e}; it holds the prediction columns an earlier run inferred: delete it to infer them again",
                    output.uri_of(&key)
                ))
            })?),
            None => None,
        };
        // An output name whose spec differs between variants types nothing: its field is
        // typed by its values.
        let mut outputs: Vec<ferry_runtimes::TensorSpec> = Vec::new();
        let mut conflicting = Vec::new();
        for o in variants.iter().flat_map(|v| &v.outputs) {
            match outputs.iter().find(|x| x.name == o.name) {
                Some(x) if x != o => conflicting.push(o.name.clone()),
                Some(_) => {}
                None => outputs.push(o.clone()),
            }
        }
        outputs.retain(|o| !conflicting.contains(&o.name));
        return Ok(JobColumns { known, outputs });
    }
    let known = PredictionColumns::from_signatures(&variants)
        .map_err(|e| BatchError::Config(format!("endpoint `{endpoint}`: {e}")))?;
    write::check_clashes(&arrow_schema::Schema::empty(), &known)?;
    Ok(JobColumns {
        known: Some(known),
        outputs: Vec::new(),
    })
}

/// Fixes a postprocess endpoint's columns from its first chunk with a scored row, and records
/// them before any output that uses them is committed.
async fn fix_columns(
    columns: &mut JobColumns,
    scored: &[Option<ScoredRow>],
    ids_schema: &arrow_schema::Schema,
    output: &Location,
    endpoint: &str,
) -> Result<(), BatchError> {
    let predictions: Vec<&serde_json::Value> =
        scored.iter().flatten().map(|s| &s.prediction).collect();
    if predictions.is_empty() {
        return Ok(());
    }
    let inferred = PredictionColumns::infer(&columns.outputs, &predictions)
        .map_err(|e| BatchError::Config(format!("endpoint `{endpoint}`: {e}")))?;
    write::check_clashes(ids_schema, &inferred)?;
    let bytes =
        serde_json::to_vec_pretty(&inferred).map_err(|e| BatchError::Input(e.to_string()))?;
    output
        .store
        .write(&output.join(SCHEMA_FILE), &bytes)
        .await?;
    tracing::info!(
        columns = ?inferred
            .columns
            .iter()
            .map(|c| format!("{}: {}", c.name, c.field().data_type()))
            .collect::<Vec<_>>(),
        "Prediction columns fixed by the first scored chunk (the endpoint has a postprocess)."
    );
    columns.known = Some(inferred);
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a unit's temporary files go: `<output>/_tmp/` for a local output (same file system,
/// so the commit is a rename), the system temp dir for S3.
fn temp_dir_for(output: &Location, scratch: &Path) -> Result<PathBuf, BatchError> {
    let dir = output
        .local_path("_tmp")
        .unwrap_or_else(|| scratch.to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| BatchError::Io {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    Ok(dir)
}

/// Removes a killed run's temporary files of `unit` (only this shard ever writes them). Names
/// must match exactly (`<unit>.<tag>.out.tmp`, `<unit>.<tag>.errors.tmp`): unit `a`'s prefix
/// also starts unit `a.b`'s files, which may still be written or committed at the same time.
fn clean_temps(dir: &Path, unit: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_temp_of(&name, unit) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn is_temp_of(name: &str, unit: &str) -> bool {
    let Some(rest) = name.strip_prefix(unit).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    let Some(tag) = rest
        .strip_suffix(".out.tmp")
        .or_else(|| rest.strip_suffix(".errors.tmp"))
    else {
        return false;
    };
    tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn commit_file(output: &Location, temp: &Path, rel: &str) -> Result<(), BatchError> {
    let key = output.join(rel);
    match output.local_path(rel) {
        Some(dest) => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| BatchError::Io {
                    path: parent.to_path_buf(),
                    message: e.to_string(),
                })?;
            }
            std::fs::rename(temp, &dest).map_err(|e| BatchError::Io {
                path: dest.clone(),
                message: e.to_string(),
            })
        }
        None => {
            output.store.write_from_file(&key, temp).await?;
            let _ = std::fs::remove_file(temp);
            Ok(())
        }
    }
}

fn same_root(a: &Store, b: &Store) -> bool {
    match (a, b) {
        (Store::Local(_), Store::Local(_)) => true,
        (Store::S3(x), Store::S3(y)) => x.bucket() == y.bucket(),
        _ => false,
    }
}

fn output_uri_of_input(store: &Store, key: &str) -> String {
    match store {
        Store::Local(_) => format!("/{key}"),
        Store::S3(s) => format!("s3://{}/{key}", s.bucket()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn shards_partition_units() {
        let s = Shard::parse("1/3").unwrap();
        assert_eq!((s.index, s.count), (1, 3));
        assert!(Shard::parse("3/3").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert!(Shard::parse("x").is_err());
        let names: Vec<String> = (0..100).map(|i| format!("part-{i}")).collect();
        for n in &names {
            let owners = (0..3)
                .filter(|&i| Shard { index: i, count: 3 }.owns(n))
                .count();
            assert_eq!(owners, 1, "{n}");
        }
        assert!(names.iter().all(|n| Shard::ALL.owns(n)));
    }

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("a.parquet", None), "a");
        assert_eq!(unit_name("d=1/part-0.csv", None), "d=1__part-0");
        assert_eq!(unit_name("big.parquet", Some(3)), "big.rg00003");
        assert_eq!(unit_name("noext", None), "noext");
    }

    #[test]
    fn a_job_loads_only_its_endpoint_variants_without_shadows_capture_or_deadline() {
        let endpoints: Vec<EndpointConfig> = serde_json::from_value(serde_json::json!([
            {"name": "risk", "variants": [
                {"name": "a", "model": "risk@1"},
                {"name": "b", "model": "risk@2"},
                {"name": "c", "model": "risk@1"}],
             "shadow": [{"model": "risk@9", "sample": 1.0}],
             "capture": {"sample_percent": 100.0, "destination": "/nonexistent"}},
            {"name": "other", "variants": [{"name": "a", "model": "churn@1"}]}
        ]))
        .unwrap();
        let mut models = ModelsConfig::new(vec![ModelSettings {
            instances: Some(4),
            ..ModelSettings::new("churn@1")
        }]);
        models.shadow_only.insert("risk".into());
        models.request_timeout = Some(Duration::from_secs(30));
        models.instances = 2;
        let config = JobConfig {
            registry: RegistryOptions {
                uri: "/models".into(),
                s3: Default::default(),
                cache_dir: None,
            },
            models,
            features: Some(FeaturesConfig {
                repo: "features.yaml".into(),
                redis: None,
                timeout: "20ms".into(),
                on_missing: Default::default(),
            }),
            endpoints,
            base_dir: None,
        };
        let job = job_config(config.clone(), "risk").unwrap();
        assert_eq!(job.endpoints.len(), 1);
        assert!(job.endpoints[0].shadow.is_empty() && job.endpoints[0].capture.is_none());
        let loaded: Vec<&str> = job.models.models.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(loaded, ["risk@1", "risk@2"]);
        assert!(job.models.models.iter().all(|m| m.instances.is_none()));
        assert!(job.models.shadow_only.is_empty());
        assert_eq!(job.models.request_timeout, None);
        // Server-wide defaults stay.
        assert_eq!(job.models.instances, 2);
        assert_eq!(
            job.features.unwrap().timeout().unwrap(),
            JOB_FEATURE_TIMEOUT
        );
        let err = job_config(config, "nope").unwrap_err().to_string();
        assert!(
            err.contains("no endpoint `nope`") && err.contains("\"risk\", \"other\""),
            "{err}"
        );
    }

    #[test]
    fn temporary_files_belong_to_their_own_unit_only() {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        assert!(is_temp_of(&format!("a.{tag}.out.tmp"), "a"));
        assert!(is_temp_of(&format!("a.{tag}.errors.tmp"), "a"));
        assert!(!is_temp_of(&format!("a.b.{tag}.out.tmp"), "a"));
        assert!(!is_temp_of(&format!("a.rg00001.{tag}.out.tmp"), "a"));
        assert!(is_temp_of(&format!("a.rg00001.{tag}.out.tmp"), "a.rg00001"));
        assert!(!is_temp_of("a.parquet", "a"));
    }

    #[test]
    fn exit_codes() {
        let mut s = Summary::default();
        assert_eq!(s.exit_code(), 0);
        s.rows_failed = 1;
        assert_eq!(s.exit_code(), 2);
        s.units_failed = 1;
        assert_eq!(s.exit_code(), 3);
    }
}
