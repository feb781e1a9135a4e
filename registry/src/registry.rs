use crate::cache::{Cache, default_cache_dir};
use crate::mlflow::{MlflowRegistry, is_mlflow_uri};
use crate::store::{LocalStore, ObjectInfo, S3Options, S3Store, Store};
use crate::{MANIFEST_FILE, Manifest, ModelRef, RegistryError, Selector, is_valid_name};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How to open a registry: its URI plus what S3 access and the download cache need.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// A local path, `file://` URI or `s3://bucket/prefix`.
    pub uri: String,
    pub s3: S3Options,
    /// Where S3 downloads are cached; default `$XDG_CACHE_HOME/ferry` or `~/.cache/ferry`.
    pub cache_dir: Option<PathBuf>,
}

impl RegistryOptions {
    pub fn new(uri: impl Into<String>) -> RegistryOptions {
        RegistryOptions {
            uri: uri.into(),
            ..RegistryOptions::default()
        }
    }
}

/// A model registry: resolves references to versions, hands out verified versions, and
/// publishes new ones. Either ferry's own layout (a directory or S3 prefix) or an MLflow
/// tracking server's Model Registry, behind the same calls.
#[derive(Debug, Clone)]
pub struct Registry(Backend);

#[derive(Debug, Clone)]
enum Backend {
    Files(FileRegistry),
    Mlflow(Box<MlflowRegistry>),
}

/// ferry's registry layout in a local directory or under an S3 prefix.
#[derive(Debug, Clone)]
struct FileRegistry {
    uri: String,
    store: Store,
    /// S3 registries only: local files are verified where they are.
    cache: Option<Cache>,
}

/// A model version whose every file matched its manifest digest when it was fetched.
#[derive(Debug, Clone)]
pub struct VerifiedModel {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// Whether the files came from the local cache (no download).
    pub from_cache: bool,
}

impl VerifiedModel {
    pub fn artifact_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.artifact)
    }
}

/// One version as `ferry models list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    pub version: u64,
    /// Bytes of every object of the version, manifest included.
    pub size: u64,
    /// When the manifest was written: the moment the version came to exist.
    #[serde(serialize_with = "ser_time")]
    pub created: Option<SystemTime>,
    pub aliases: Vec<String>,
    pub format: Option<crate::ModelFormat>,
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Why the manifest could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn ser_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_u64(d.as_secs()),
        None => s.serialize_none(),
    }
}

/// A model as `ferry models list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub versions: Vec<VersionInfo>,
    pub aliases: BTreeMap<String, u64>,
}

/// The directory a registry URI names when it is local (a path or `file://`); None for S3,
/// MLflow and other schemes.
pub fn local_path(uri: &str) -> Option<&str> {
    if let Some(rest) = uri.strip_prefix("file://") {
        return Some(rest);
    }
    (!uri.contains("://") && !is_mlflow_uri(uri)).then_some(uri)
}

fn version_key(name: &str, version: u64) -> String {
    format!("{name}/{version}")
}

fn manifest_key(name: &str, version: u64) -> String {
    format!("{name}/{version}/{MANIFEST_FILE}")
}

impl FileRegistry {
    /// Opens a registry at a local path, `file://` URI or `s3://bucket/prefix`.
    async fn open(options: &RegistryOptions) -> Result<FileRegistry, RegistryError> {
        let uri = options.uri.as_str();
        let invalid = |reason: &str| RegistryError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if uri.starts_with("s3://") {
            let store = S3Store::connect(uri, &options.s3).await?;
            let cache_dir = options.cache_dir.clone().unwrap_or_else(default_cache_dir);
            let cache = Cache::new(&cache_dir, &store);
            return Ok(FileRegistry {
                uri: uri.to_string(),
                store: Store::S3(store),
                cache: Some(cache),
            });
        }
        let Some(path) = local_path(uri) else {
            return Err(invalid(
                "use a local path, a file:// URI, s3://bucket/prefix or mlflow+http://HOST:PORT",
            ));
        };
        if path.is_empty() {
            return Err(invalid("the path is empty"));
        }
        let root = Path::new(path);
        if !root.is_dir() {
            return Err(invalid("no such directory"));
        }
        Ok(FileRegistry {
            uri: uri.to_string(),
            store: Store::Local(LocalStore::new(root)),
            cache: None,
        })
    }

    /// The download cache of an S3 registry.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().map(|c| c.root())
    }

    /// Model names in the registry.
    pub async fn models(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .store
            .children("")
            .await?
            .into_iter()
            .filter(|n| is_valid_name(n))
            .collect())
    }

    /// Versions of `name`, ascending; a version counts once its manifest exists.
    pub async fn versions(&self, name: &str) -> Result<Vec<u64>, RegistryError> {
        check_name(name)?;
        let objects = self.store.list_recursive(name).await?;
        let versions = versions_in(name, &objects);
        if versions.is_empty() && objects.is_empty() {
            return Err(self.not_found(name));
        }
        Ok(versions)
    }

    fn not_found(&self, name: &str) -> RegistryError {
        RegistryError::ModelNotFound {
            name: name.to_string(),
            registry: self.uri.clone(),
        }
    }

    /// Aliases of `name` and the versions they point at.
    pub async fn aliases(&self, name: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        check_name(name)?;
        let mut out = Vec::new();
        for alias in self.store.children(&format!("{name}/aliases")).await? {
            if is_valid_name(&alias) {
                let version = self.read_alias(name, &alias).await?;
                out.push((alias, version));
            }
        }
        Ok(out)
    }

    async fn read_alias(&self, name: &str, alias: &str) -> Result<u64, RegistryError> {
        let key = format!("{name}/aliases/{alias}");
        let Some(bytes) = self.store.read(&key).await? else {
            if self.store.children(name).await?.is_empty() {
                return Err(self.not_found(name));
            }
            let available = self
                .store
                .children(&format!("{name}/aliases"))
                .await?
                .into_iter()
                .filter(|a| is_valid_name(a))
                .collect();
            return Err(RegistryError::AliasNotFound {
                name: name.to_string(),
                alias: alias.to_string(),
                available,
            });
        };
        let content = String::from_utf8_lossy(&bytes).trim().to_string();
        match content.parse::<u64>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(RegistryError::InvalidAlias {
                name: name.to_string(),
                alias: alias.to_string(),
                content,
            }),
        }
    }

    /// The version a reference points at now. Costs one or two small reads for `@version` and
    /// `@alias` (what polling uses), a listing for a bare name.
    pub async fn resolve(&self, model: &ModelRef) -> Result<u64, RegistryError> {
        check_name(&model.name)?;
        let version = match &model.selector {
            // A verified cached copy answers without S3, so pinned versions start while S3 is
            // down.
            Selector::Version(v)
                if self
                    .cache
                    .as_ref()
                    .is_some_and(|c| c.lookup(&model.name, *v).is_some()) =>
            {
                return Ok(*v);
            }
            Selector::Version(v) => *v,
            Selector::Alias(alias) => self.read_alias(&model.name, alias).await?,
            Selector::Latest => {
                return self
                    .versions(&model.name)
                    .await?
                    .last()
                    .copied()
                    .ok_or_else(|| RegistryError::NoVersions {
                        name: model.name.clone(),
                    });
            }
        };
        if self
            .store
            .read(&manifest_key(&model.name, version))
            .await?
            .is_none()
        {
            return Err(RegistryError::VersionNotFound {
                name: model.name.clone(),
                version,
                available: self.versions(&model.name).await?,
            });
        }
        Ok(version)
    }

    async fn manifest_text(&self, name: &str, version: u64) -> Result<String, RegistryError> {
        check_name(name)?;
        let key = manifest_key(name, version);
        let Some(bytes) = self.store.read(&key).await? else {
            return Err(RegistryError::VersionNotFound {
                name: name.to_string(),
                version,
                available: self.versions(name).await?,
            });
        };
        String::from_utf8(bytes).map_err(|_| RegistryError::Manifest {
            path: key,
            message: "not UTF-8 text".into(),
        })
    }

    /// Reads and validates the manifest of `name@version`.
    pub async fn manifest(&self, name: &str, version: u64) -> Result<Manifest, RegistryError> {
        let text = self.manifest_text(name, version).await?;
        Manifest::parse(&text, &manifest_key(name, version), name, version)
    }

    /// `name@version` with every file checked against its sha256. Local registries are
    /// verified in place; S3 versions are served from the cache when a verified copy is there
    /// (no request to S3 at all), else downloaded into it.
    pub async fn fetch(&self, name: &str, version: u64) -> Result<VerifiedModel, RegistryError> {
        check_name(name)?;
        match (&self.store, &self.cache) {
            (Store::S3(store), Some(cache)) => {
                if let Some((manifest, dir)) = cache.lookup(name, version) {
                    return Ok(VerifiedModel {
                        manifest,
                        dir,
                        from_cache: true,
                    });
                }
                let text = self.manifest_text(name, version).await?;
                let manifest = Manifest::parse(&text, &manifest_key(name, version), name, version)?;
                let dir = cache.download(store, &manifest, &text).await?;
                Ok(VerifiedModel {
                    manifest,
                    dir,
                    from_cache: false,
                })
            }
            (Store::Local(store), _) => {
                let manifest = self.manifest(name, version).await?;
                let dir = store.path(&version_key(name, version));
                let check_dir = dir.clone();
                let check = manifest.clone();
                let checked =
                    tokio::task::spawn_blocking(move || verify_dir(&check, &check_dir)).await;
                checked.map_err(|e| RegistryError::Io {
                    path: dir.clone(),
                    message: format!("verification task failed: {e}"),
                })??;
                Ok(VerifiedModel {
                    manifest,
                    dir,
                    from_cache: false,
                })
            }
            (Store::S3(_), None) => {
                unreachable!("S3 registries always have a cache. This is a bug.")
            }
        }
    }

    /// Versions, sizes, creation times, aliases and lineage metadata of `name`.
    pub async fn describe(&self, name: &str) -> Result<ModelInfo, RegistryError> {
        check_name(name)?;
        let objects = self.store.list_recursive(name).await?;
        if objects.is_empty() {
            return Err(self.not_found(name));
        }
        let aliases: BTreeMap<String, u64> = self.aliases(name).await?.into_iter().collect();
        let mut versions = Vec::new();
        for version in versions_in(name, &objects) {
            let prefix = format!("{name}/{version}/");
            let mine = objects.iter().filter(|o| o.key.starts_with(&prefix));
            let size = mine.clone().map(|o| o.size).sum();
            let created = objects
                .iter()
                .find(|o| o.key == manifest_key(name, version))
                .and_then(|o| o.modified);
            let (format, metadata, error) = match self.manifest(name, version).await {
                Ok(m) => (Some(m.format), m.metadata, None),
                Err(e) => (None, BTreeMap::new(), Some(e.to_string())),
            };
            versions.push(VersionInfo {
                version,
                size,
                created,
                aliases: aliases
                    .iter()
                    .filter(|(_, v)| **v == version)
                    .map(|(a, _)| a.clone())
                    .collect(),
                format,
                metadata,
                error,
            });
        }
        Ok(ModelInfo {
            name: name.to_string(),
            versions,
            aliases,
        })
    }

    /// Points `name@alias` at `version`, which must exist.
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: u64,
    ) -> Result<(), RegistryError> {
        check_name(name)?;
        if !is_valid_name(alias) {
            return Err(RegistryError::InvalidModelRef {
                given: format!("{name}@{alias}"),
                reason: "aliases match [a-z0-9][a-z0-9_-]{0,62}".into(),
            });
        }
        if self
            .store
            .read(&manifest_key(name, version))
            .await?
            .is_none()
        {
            return Err(RegistryError::VersionNotFound {
                name: name.to_string(),
                version,
                available: self.versions(name).await.unwrap_or_default(),
            });
        }
        self.store
            .write(
                &format!("{name}/aliases/{alias}"),
                format!("{version}\n").as_bytes(),
            )
            .await
    }

    /// Publishes the model in `dir` (its artifact plus a `model.yaml` with at least `format`,
    /// `artifact`, `inputs` and `outputs`) as a new version of `name`: computes the digests,
    /// uploads the files, and writes the manifest last, with a create-only write, so a version
    /// exists once its manifest does and is never overwritten. `version: None` takes the next
    /// free number. Updates `dir/model.yaml` with what was published.
    pub async fn publish(
        &self,
        dir: &Path,
        name: &str,
        version: Option<u64>,
    ) -> Result<Manifest, RegistryError> {
        check_name(name)?;
        let mut manifest = prepare_manifest(dir, name)?;
        // Version numbers with anything stored under them (even files of an interrupted push
        // without a manifest) are taken.
        let taken: Vec<u64> = self
            .store
            .children(name)
            .await?
            .iter()
            .filter_map(|c| c.parse::<u64>().ok())
            .collect();
        let existing = versions_in(name, &self.store.list_recursive(name).await?);
        let mut next = match version {
            Some(v) if existing.contains(&v) => {
                return Err(RegistryError::VersionExists {
                    name: name.to_string(),
                    version: v,
                    registry: self.uri.clone(),
                });
            }
            Some(0) => return Err(RegistryError::Publish("versions start at 1".into())),
            Some(v) => v,
            None => taken.iter().max().copied().unwrap_or(0) + 1,
        };
        for _attempt in 0..8 {
            manifest.version = next;
            match self.try_publish(dir, &manifest).await? {
                true => {
                    let yaml = serde_yaml::to_string(&manifest)
                        .expect("a manifest serializes. This is a bug.");
                    let path = dir.join(MANIFEST_FILE);
                    std::fs::write(&path, yaml).map_err(|e| RegistryError::io(&path, e))?;
                    return Ok(manifest);
                }
                false if version.is_some() => {
                    return Err(RegistryError::VersionExists {
                        name: name.to_string(),
                        version: next,
                        registry: self.uri.clone(),
                    });
                }
                false => {
                    tracing::info!(
                        model = name,
                        version = next,
                        "Version taken by a concurrent publisher; trying the next one."
                    );
                    next += 1;
                }
            }
        }
        Err(RegistryError::Publish(format!(
            "could not find a free version of `{name}` after 8 attempts; is another publisher looping?"
        )))
    }

    /// Uploads files then the manifest; `Ok(false)` when something already exists there.
    async fn try_publish(&self, dir: &Path, manifest: &Manifest) -> Result<bool, RegistryError> {
        let base = version_key(&manifest.name, manifest.version);
        for (file, _) in manifest.digests() {
            if !self
                .store
                .create_from_file(&format!("{base}/{file}"), &dir.join(file))
                .await?
            {
                return Ok(false);
            }
        }
        let yaml = serde_yaml::to_string(manifest).expect("a manifest serializes. This is a bug.");
        self.store
            .create(
                &manifest_key(&manifest.name, manifest.version),
                yaml.as_bytes(),
            )
            .await
    }
}

impl Registry {
    /// Opens a registry: a local path, `file://` URI, `s3://bucket/prefix`, or an MLflow
    /// tracking server (`mlflow+http(s)://HOST:PORT`, or `mlflow` for `MLFLOW_TRACKING_URI`).
    /// Opening an MLflow registry does not contact the server (it may start later).
    pub async fn open(options: &RegistryOptions) -> Result<Registry, RegistryError> {
        if is_mlflow_uri(&options.uri) {
            let cache_dir = options.cache_dir.clone().unwrap_or_else(default_cache_dir);
            let mlflow = MlflowRegistry::open(&options.uri, &options.s3, &cache_dir)?;
            return Ok(Registry(Backend::Mlflow(Box::new(mlflow))));
        }
        Ok(Registry(Backend::Files(FileRegistry::open(options).await?)))
    }

    /// The registry's URI; for MLflow, the tracking server it reaches
    /// (`mlflow+http://HOST:PORT`).
    pub fn uri(&self) -> &str {
        match &self.0 {
            Backend::Files(r) => &r.uri,
            Backend::Mlflow(r) => r.display(),
        }
    }

    /// The download cache of an S3 or MLflow registry.
    pub fn cache_dir(&self) -> Option<&Path> {
        match &self.0 {
            Backend::Files(r) => r.cache_dir(),
            Backend::Mlflow(r) => Some(r.cache_dir()),
        }
    }

    /// Model names in the registry.
    pub async fn models(&self) -> Result<Vec<String>, RegistryError> {
        match &self.0 {
            Backend::Files(r) => r.models().await,
            Backend::Mlflow(r) => r.models().await,
        }
    }

    /// Versions of `name`, ascending.
    pub async fn versions(&self, name: &str) -> Result<Vec<u64>, RegistryError> {
        check_name(name)?;
        match &self.0 {
            Backend::Files(r) => r.versions(name).await,
            Backend::Mlflow(r) => r.versions(name).await,
        }
    }

    /// Aliases of `name` and the versions they point at.
    pub async fn aliases(&self, name: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        check_name(name)?;
        match &self.0 {
            Backend::Files(r) => r.aliases(name).await,
            Backend::Mlflow(r) => r.aliases(name).await,
        }
    }

    /// The version a reference points at now. Cheap for `@version` and `@alias` (what polling
    /// uses): one or two small reads, or one MLflow REST call.
    pub async fn resolve(&self, model: &ModelRef) -> Result<u64, RegistryError> {
        check_name(&model.name)?;
        match &self.0 {
            Backend::Files(r) => r.resolve(model).await,
            Backend::Mlflow(r) => r.resolve(model).await,
        }
    }

    /// The manifest of `name@version`; for MLflow, the one ferry writes when it downloads the
    /// version (so this fetches it).
    pub async fn manifest(&self, name: &str, version: u64) -> Result<Manifest, RegistryError> {
        match &self.0 {
            Backend::Files(r) => r.manifest(name, version).await,
            Backend::Mlflow(r) => Ok(r.fetch(name, version).await?.manifest),
        }
    }

    /// `name@version` with every file checked against its sha256 (see `FileRegistry::fetch`;
    /// MLflow versions are downloaded into the verified cache, see `crate::mlflow`).
    pub async fn fetch(&self, name: &str, version: u64) -> Result<VerifiedModel, RegistryError> {
        check_name(name)?;
        match &self.0 {
            Backend::Files(r) => r.fetch(name, version).await,
            Backend::Mlflow(r) => r.fetch(name, version).await,
        }
    }

    /// Versions, sizes, creation times, aliases and lineage metadata of `name`.
    pub async fn describe(&self, name: &str) -> Result<ModelInfo, RegistryError> {
        check_name(name)?;
        match &self.0 {
            Backend::Files(r) => r.describe(name).await,
            Backend::Mlflow(r) => r.describe(name).await,
        }
    }

    /// Points `name@alias` at `version`, which must exist.
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: u64,
    ) -> Result<(), RegistryError> {
        match &self.0 {
            Backend::Files(r) => r.set_alias(name, alias, version).await,
            Backend::Mlflow(r) => Err(read_only(r.display())),
        }
    }

    /// Publishes the model in `dir` as a new version of `name` (see `FileRegistry::publish`).
    pub async fn publish(
        &self,
        dir: &Path,
        name: &str,
        version: Option<u64>,
    ) -> Result<Manifest, RegistryError> {
        match &self.0 {
            Backend::Files(r) => r.publish(dir, name, version).await,
            Backend::Mlflow(r) => Err(read_only(r.display())),
        }
    }

    /// Copies `model` from `source` (an MLflow tracking server, or another registry) into this
    /// registry under the same version number, with digests: for teams that want immutable
    /// artifacts. Returns the published manifest, and whether it was already there (a version
    /// with the same artifact digest is not published twice).
    pub async fn import(
        &self,
        source: &Registry,
        model: &ModelRef,
    ) -> Result<(Manifest, bool), RegistryError> {
        let version = source.resolve(model).await?;
        let verified = source.fetch(&model.name, version).await?;
        match self.manifest(&model.name, version).await {
            Ok(existing)
                if existing
                    .sha256
                    .eq_ignore_ascii_case(&verified.manifest.sha256) =>
            {
                return Ok((existing, false));
            }
            Ok(_) => {
                return Err(RegistryError::VersionExists {
                    name: model.name.clone(),
                    version,
                    registry: self.uri().to_string(),
                });
            }
            Err(RegistryError::VersionNotFound { .. } | RegistryError::ModelNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // `publish` rewrites the directory's model.yaml: work on a copy, never on the cache.
        let staging = tempfile_dir()?;
        let copy = |from: &Path, to: &Path| -> Result<(), RegistryError> {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| RegistryError::io(parent, e))?;
            }
            std::fs::copy(from, to)
                .map(|_| ())
                .map_err(|e| RegistryError::io(from, e))
        };
        for (file, _) in verified.manifest.digests() {
            copy(&verified.dir.join(file), &staging.0.join(file))?;
        }
        let yaml = serde_yaml::to_string(&verified.manifest)
            .expect("a manifest serializes. This is a bug.");
        let path = staging.0.join(MANIFEST_FILE);
        std::fs::write(&path, yaml).map_err(|e| RegistryError::io(&path, e))?;
        let published = self.publish(&staging.0, &model.name, Some(version)).await?;
        Ok((published, true))
    }
}

/// A temporary directory removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<ScratchDir, RegistryError> {
    let dir = std::env::temp_dir().join(format!("ferry-import-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).map_err(|e| RegistryError::io(&dir, e))?;
    Ok(ScratchDir(dir))
}

fn read_only(registry: &str) -> RegistryError {
    RegistryError::Config(format!(
        "{registry} is an MLflow registry, which ferry only reads: log versions with mlflow.onnx.log_model and move aliases with MlflowClient().set_registered_model_alias (or the MLflow UI); `ferry models import` copies a version into a ferry registry"
    ))
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    if !is_valid_name(name) {
        return Err(RegistryError::InvalidModelRef {
            given: name.to_string(),
            reason: "model names match [a-z0-9][a-z0-9_-]{0,62}".into(),
        });
    }
    Ok(())
}

/// Versions with a manifest among `objects` (keys relative to the registry root).
fn versions_in(name: &str, objects: &[ObjectInfo]) -> Vec<u64> {
    let mut versions: Vec<u64> = objects
        .iter()
        .filter_map(|o| {
            let rest = o.key.strip_prefix(name)?.strip_prefix('/')?;
            let (v, file) = rest.split_once('/')?;
            (file == MANIFEST_FILE).then_some(v)?.parse::<u64>().ok()
        })
        .filter(|&v| v > 0)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

/// Reads `dir/model.yaml`, fills in `name`, `sha256` and `files` digests, and validates it.
fn prepare_manifest(dir: &Path, name: &str) -> Result<Manifest, RegistryError> {
    let path = dir.join(MANIFEST_FILE);
    let source = path.display().to_string();
    let err = |message: String| RegistryError::Manifest {
        path: source.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(format!(
            "{e}; the directory must hold the artifact and a model.yaml with format, artifact, inputs and outputs"
        ))
    })?;
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let map = value
        .as_mapping_mut()
        .ok_or_else(|| err("must be a YAML mapping".into()))?;
    let artifact = map
        .get("artifact")
        .and_then(|a| a.as_str())
        .ok_or_else(|| err("`artifact` must name the weights file".into()))?
        .to_string();
    // `files` may list names (digests are computed) or a name -> digest map (recomputed).
    let files: Vec<String> = match map.get("files") {
        None | Some(serde_yaml::Value::Null) => Vec::new(),
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| err("`files` entries must be file names".into()))?,
        Some(serde_yaml::Value::Mapping(m)) => m
            .keys()
            .map(|k| k.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| err("`files` keys must be file names".into()))?,
        Some(_) => return Err(err("`files` must list file names".into())),
    };
    let digest = |file: &str| -> Result<String, RegistryError> {
        if file.contains("..") || file.starts_with('/') {
            return Err(err(format!(
                "{file:?} must be a relative path inside the directory"
            )));
        }
        sha256_file(&dir.join(file))
    };
    let sha = digest(&artifact)?;
    let mut digests = serde_yaml::Mapping::new();
    for file in &files {
        digests.insert(file.clone().into(), digest(file)?.into());
    }
    map.insert("name".into(), name.into());
    map.insert("version".into(), 1u64.into());
    map.insert("sha256".into(), sha.into());
    map.insert("files".into(), serde_yaml::Value::Mapping(digests));
    let manifest: Manifest = serde_yaml::from_value(value).map_err(|e| err(e.to_string()))?;
    manifest.validate().map_err(err)?;
    Ok(manifest)
}

/// Checks every file of `manifest` under `dir` against its digest.
fn verify_dir(manifest: &Manifest, dir: &Path) -> Result<(), RegistryError> {
    for (file, expected) in manifest.digests() {
        let actual = sha256_file(&dir.join(file))?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(RegistryError::DigestMismatch {
                name: manifest.name.clone(),
                version: manifest.version,
                file: file.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// Hex sha256 of a file, read in chunks so large artifacts are never held in memory whole.
pub fn sha256_file(path: &Path) -> Result<String, RegistryError> {
    let mut file = std::fs::File::open(path).map_err(|e| RegistryError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| RegistryError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(uri: &str) -> Result<Registry, RegistryError> {
        Registry::open(&RegistryOptions::new(uri)).await
    }

    fn write_version(root: &Path, name: &str, version: u64, artifact: &[u8], digest: Option<&str>) {
        let dir = root.join(format!("{name}/{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), artifact).unwrap();
        let digest = digest
            .map(str::to_string)
            .unwrap_or_else(|| hex::encode(Sha256::digest(artifact)));
        std::fs::write(
            dir.join(MANIFEST_FILE),
            format!(
                "name: {name}\nversion: {version}\nformat: onnx\nartifact: model.onnx\nsha256: \"{digest}\"\n\
                 inputs: [{{name: x, datatype: FP32, shape: [-1, 2]}}]\noutputs: [{{name: y, datatype: FP32, shape: [-1]}}]\n"
            ),
        )
        .unwrap();
    }

    fn alias(root: &Path, name: &str, alias: &str, content: &str) {
        std::fs::create_dir_all(root.join(format!("{name}/aliases"))).unwrap();
        std::fs::write(root.join(format!("{name}/aliases/{alias}")), content).unwrap();
    }

    #[tokio::test]
    async fn resolves_versions_aliases_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        write_version(dir.path(), "churn", 1, b"one", None);
        write_version(dir.path(), "churn", 2, b"two", None);
        std::fs::create_dir_all(dir.path().join("churn/3")).unwrap(); // no manifest yet
        alias(dir.path(), "churn", "champion", "1\n");
        let reg = open(dir.path().to_str().unwrap()).await.unwrap();

        assert_eq!(
            reg.resolve(&ModelRef::parse("churn@champion").unwrap())
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            reg.resolve(&ModelRef::parse("churn@2").unwrap())
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            reg.resolve(&ModelRef::parse("churn").unwrap())
                .await
                .unwrap(),
            2
        );
        assert!(
            matches!(reg.resolve(&ModelRef::parse("churn@3").unwrap()).await, Err(RegistryError::VersionNotFound { available, .. }) if available == vec![1, 2])
        );
        assert!(
            matches!(reg.resolve(&ModelRef::parse("churn@gone").unwrap()).await, Err(RegistryError::AliasNotFound { available, .. }) if available == vec!["champion".to_string()])
        );
        assert!(matches!(
            reg.resolve(&ModelRef::parse("fraud@1").unwrap()).await,
            Err(RegistryError::ModelNotFound { .. })
        ));
        assert_eq!(
            reg.aliases("churn").await.unwrap(),
            vec![("champion".to_string(), 1)]
        );
        assert_eq!(reg.models().await.unwrap(), vec!["churn".to_string()]);
    }

    #[tokio::test]
    async fn alias_with_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_version(dir.path(), "churn", 1, b"one", None);
        alias(dir.path(), "churn", "bad", "one");
        let reg = open(dir.path().to_str().unwrap()).await.unwrap();
        let err = reg
            .resolve(&ModelRef::parse("churn@bad").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidAlias { .. }), "{err}");
    }

    #[tokio::test]
    async fn fetch_verifies_digests() {
        let dir = tempfile::tempdir().unwrap();
        write_version(dir.path(), "good", 1, b"weights", None);
        write_version(dir.path(), "bad", 1, b"weights", Some(&"0".repeat(64)));
        let reg = open(&format!("file://{}", dir.path().display()))
            .await
            .unwrap();
        let ok = reg.fetch("good", 1).await.unwrap();
        assert_eq!(ok.artifact_path(), dir.path().join("good/1/model.onnx"));
        let err = reg.fetch("bad", 1).await.unwrap_err();
        assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains("sha256"), "{err}");
        // A file truncated after publishing (half-written copy) is refused the same way.
        std::fs::write(dir.path().join("good/1/model.onnx"), b"weig").unwrap();
        assert!(matches!(
            reg.fetch("good", 1).await,
            Err(RegistryError::DigestMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn open_refuses_unsupported_uris() {
        for uri in ["", "http://x/y", "/definitely/not/here"] {
            assert!(
                matches!(open(uri).await, Err(RegistryError::InvalidUri { .. })),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn publish_allocates_versions_and_never_overwrites() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("model.onnx"), b"weights").unwrap();
        std::fs::write(src.path().join("vocab.txt"), b"a b c").unwrap();
        std::fs::write(
            src.path().join(MANIFEST_FILE),
            "format: onnx\nartifact: model.onnx\nfiles: [vocab.txt]\n\
             inputs: [{name: x, datatype: FP32, shape: [-1, 2]}]\noutputs: [{name: y, datatype: FP32, shape: [-1]}]\n\
             metadata: {git_commit: abc}\n",
        )
        .unwrap();
        let reg = open(root.path().to_str().unwrap()).await.unwrap();
        let first = reg.publish(src.path(), "churn", None).await.unwrap();
        assert_eq!(first.version, 1);
        assert_eq!(first.sha256, hex::encode(Sha256::digest(b"weights")));
        assert_eq!(
            first.files["vocab.txt"],
            hex::encode(Sha256::digest(b"a b c"))
        );
        // The directory's model.yaml now says what was published, and pushing it again works.
        let second = reg.publish(src.path(), "churn", None).await.unwrap();
        assert_eq!(second.version, 2);
        let err = reg.publish(src.path(), "churn", Some(1)).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::VersionExists { version: 1, .. }),
            "{err}"
        );
        // Leftovers of an interrupted push take their number without becoming a version.
        std::fs::create_dir_all(root.path().join("churn/3")).unwrap();
        std::fs::write(root.path().join("churn/3/model.onnx"), b"half").unwrap();
        assert_eq!(
            reg.publish(src.path(), "churn", None)
                .await
                .unwrap()
                .version,
            4
        );
        assert_eq!(reg.versions("churn").await.unwrap(), vec![1, 2, 4]);
        reg.set_alias("churn", "champion", 2).await.unwrap();
        assert!(reg.set_alias("churn", "champion", 3).await.is_err());
        let info = reg.describe("churn").await.unwrap();
        assert_eq!(info.aliases["champion"], 2);
        assert_eq!(info.versions[1].aliases, vec!["champion".to_string()]);
        assert_eq!(info.versions[0].metadata["git_commit"], "abc");
        assert!(info.versions[0].size > 7 && info.versions[0].created.is_some());
        reg.fetch("churn", 4).await.unwrap();
    }
}
