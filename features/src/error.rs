/// Everything that can go wrong in the feature store, with messages that say what to fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FeatureError {
    /// `features.yaml` is unreadable or invalid; the message names the key.
    #[error("invalid feature repo {path}: {message}")]
    Repo { path: String, message: String },
    /// A feature reference (`view.feature`) or view name that the repo does not define.
    #[error("{0}")]
    UnknownFeature(String),
    /// A request row lacks what the join needs, or has the wrong type.
    #[error("{0}")]
    InvalidRow(String),
    /// The model's feature spec or signature does not fit the repo (a deployment mistake).
    #[error("{0}")]
    Plan(String),
    /// `on_missing: error` and some entity had no (fresh) value.
    #[error("{0}")]
    Missing(String),
    /// The online store did not answer in time or at all.
    #[error("the online feature store is unavailable: {0}")]
    Unavailable(String),
    /// Reading offline (Parquet) data failed.
    #[error("offline data {path}: {message}")]
    Offline { path: String, message: String },
    /// Writing to the online store failed during materialization.
    #[error("online store write failed: {0}")]
    Write(String),
    #[error("{0}")]
    Io(String),
}

impl FeatureError {
    pub(crate) fn offline(path: impl std::fmt::Display, message: impl std::fmt::Display) -> Self {
        FeatureError::Offline {
            path: path.to_string(),
            message: message.to_string(),
        }
    }
}
