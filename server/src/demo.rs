//! The embedded demo registry (built by scripts/make_demo_models.py with fixed seeds), served
//! by `ferry serve` when no registry is configured, so a new user needs nothing installed.

use crate::config::{ModelEntry, ServerConfig};
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
];

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
    config
}
