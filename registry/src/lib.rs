//! ferry's model registry: the artifact manifest (`model.yaml`), `name@version` /
//! `name@alias` references, registry stores, and digest verification before anything loads.
//! A registry is ferry's own layout (below) or an MLflow Model Registry (`mlflow` module).
//!
//! Layout (DESIGN.md "Artifact format"):
//! ```text
//! <root>/<model>/<version>/model.yaml
//! <root>/<model>/<version>/<artifact files>
//! <root>/<model>/aliases/<alias>      text: the version number it points at
//! ```

mod cache;
mod error;
mod manifest;
mod mlflow;
mod model_ref;
mod onnx_graph;
pub use onnx_graph::{OnnxInfo, onnx_file_info};
mod registry;
mod store;

pub use cache::{VERIFIED_MARKER, default_cache_dir};
pub use error::RegistryError;
pub use manifest::{FeatureSpec, MANIFEST_FILE, Manifest, ModelFormat, is_valid_name};
pub use mlflow::{is_mlflow_uri, parse_model_uri as parse_mlflow_model_uri};
pub use model_ref::{ModelRef, Selector};
pub use registry::{
    ModelInfo, Registry, RegistryOptions, VerifiedModel, VersionInfo,
    local_path as local_registry_path, sha256_file,
};
pub use store::{LocalStore, ObjectInfo, S3Options, S3Store, Store, parse_s3_uri};
