use std::path::PathBuf;

/// What can go wrong finding, reading or verifying a model version. Messages name the model,
/// the file or key at fault, and what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid registry URI `{uri}`: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("invalid model reference `{given}`: {reason}")]
    InvalidModelRef { given: String, reason: String },
    #[error("model `{name}` is not in the registry {registry}")]
    ModelNotFound { name: String, registry: String },
    #[error("model `{name}` has no version {version}; versions in the registry: {available:?}")]
    VersionNotFound {
        name: String,
        version: u64,
        available: Vec<u64>,
    },
    #[error("model `{name}` has no alias `{alias}`; aliases: {available:?}")]
    AliasNotFound {
        name: String,
        alias: String,
        available: Vec<String>,
    },
    #[error(
        "alias `{alias}` of model `{name}` must hold a positive version number, found {content:?}"
    )]
    InvalidAlias {
        name: String,
        alias: String,
        content: String,
    },
    #[error("model `{name}` has no versions in the registry")]
    NoVersions { name: String },
    #[error("invalid manifest {path}: {message}")]
    Manifest { path: String, message: String },
    #[error(
        "{name}@{version}: sha256 digest mismatch for `{file}`: model.yaml lists {expected}, the file has {actual}; the artifact is corrupt or half-written and will not be loaded"
    )]
    DigestMismatch {
        name: String,
        version: u64,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("could not read {}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// Writing a downloaded version into the local cache failed (disk full, permissions);
    /// the partial download is removed and versions already loaded keep serving.
    #[error("could not write {} into the model cache: {message}", path.display())]
    CacheWrite { path: PathBuf, message: String },
    /// The store could not be reached (network, timeout, 5xx): worth retrying later.
    #[error(
        "registry {registry} is unreachable ({operation} {key}): {message}; check the endpoint, network and credentials"
    )]
    Unavailable {
        registry: String,
        operation: &'static str,
        key: String,
        message: String,
    },
    /// The store answered with an error that retrying will not fix (access denied, no bucket…).
    #[error("registry {registry}: {operation} {key} failed: {message}")]
    Store {
        registry: String,
        operation: &'static str,
        key: String,
        message: String,
    },
    #[error(
        "model `{name}` version {version} already exists in {registry}; versions are immutable: push without --version to publish the next one"
    )]
    VersionExists {
        name: String,
        version: u64,
        registry: String,
    },
    #[error("could not publish: {0}")]
    Publish(String),
    #[error("registry configuration: {0}")]
    Config(String),
    /// An MLflow model version ferry cannot serve as it is: no ONNX flavor, a missing or
    /// malformed artifact, an artifact location ferry cannot read, a registration that has not
    /// finished.
    #[error("MLflow model `{name}` version {version}: {message}")]
    Mlflow {
        name: String,
        version: u64,
        message: String,
    },
}

impl RegistryError {
    /// Whether the store could not be reached, so the same call may work later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }

    pub(crate) fn cache_write(path: impl Into<PathBuf>, error: std::io::Error) -> RegistryError {
        let mut message = error.to_string();
        if matches!(
            error.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) {
            message.push_str(
                "; the cache filesystem is full: free space in registry.cache_dir or give it more room, then load the version again (the partial download was removed)",
            );
        }
        RegistryError::CacheWrite {
            path: path.into(),
            message,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: path.into(),
            message: error.to_string(),
        }
    }
}
