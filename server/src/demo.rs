//! The embedded demo registry (built by scripts/make_demo_models.py and
//! scripts/make_demo_features.py with fixed seeds), served by `ferry serve` when no registry is
//! configured, so a new user needs nothing installed. It includes a feature repo with offline
//! Parquet data, served from an in-process store, and the endpoint `risk` that joins it.

use crate::config::{EndpointConfig, FeaturesConfig, ModelEntry, ServerConfig, VariantConfig};
use std::io;

const FILES: &[(&str, &[u8])] = &[
    (
        "churn/1/model.yaml",
        include_bytes!("../demo/registry/churn/1/model.yaml"),
    ),
    (
        "churn/1/model.onnx",
        include_bytes!("../demo/registry/churn/1/model.onnx"),
    ),
    (
        "churn/aliases/champion",
        include_bytes!("../demo/registry/churn/aliases/champion"),
    ),
    (
        "mlp/1/model.yaml",
        include_bytes!("../demo/registry/mlp/1/model.yaml"),
    ),
    (
        "mlp/1/model.onnx",
        include_bytes!("../demo/registry/mlp/1/model.onnx"),
    ),
    (
        "risk/1/model.yaml",
        include_bytes!("../demo/registry/risk/1/model.yaml"),
    ),
    (
        "risk/1/model.onnx",
        include_bytes!("../demo/registry/risk/1/model.onnx"),
    ),
    (
        "_features/features.yaml",
        include_bytes!("../demo/features/features.yaml"),
    ),
    (
        "_features/user_stats/part-0.parquet",
        include_bytes!("../demo/features/user_stats/part-0.parquet"),
    ),
];

/// The demo endpoint: features of `user_id` from the demo feature repo + `amount` → `risk@1`.
pub const DEMO_ENDPOINT: &str = "risk";

pub const DEMO_MODELS: [&str; 2] = ["churn@champion", "mlp@1"];

/// Writes the demo registry to a fresh temporary directory (removed when dropped).
pub fn extract() -> io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-demo-registry-")
        .tempdir()?;
    for (path, bytes) in FILES {
        let target = dir.path().join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, bytes)?;
    }
    Ok(dir)
}

/// The config used for the demo registry at `uri`.
pub fn config(uri: &str) -> ServerConfig {
    let mut config = ServerConfig::for_registry(uri);
    config.models = DEMO_MODELS
        .iter()
        .map(|m| ModelEntry::Ref(m.to_string()))
        .collect();
    // `_features` is not a valid model name, so the registry never mistakes it for a model.
    config.features = Some(FeaturesConfig {
        repo: std::path::Path::new(uri).join("_features/features.yaml"),
        redis: None,
        timeout: crate::config::DEFAULT_FEATURE_TIMEOUT.into(),
        on_missing: Default::default(),
    });
    config.endpoints = vec![EndpointConfig::new(
        DEMO_ENDPOINT,
        vec![VariantConfig {
            name: "default".into(),
            model: "risk@1".into(),
            weight: 100,
        }],
    )];
    config
}
