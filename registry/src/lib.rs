//! ferry's model registry: the artifact manifest (`model.yaml`), `name@version` /
//! `name@alias` references, registry stores, and digest verification before anything loads.
//!
//! Layout (DESIGN.md "Artifact format"):
//! ```text
//! <root>/<model>/<version>/model.yaml
//! <root>/<model>/<version>/<artifact files>
//! <root>/<model>/aliases/<alias>      text: the version number it points at
//! ```

mod error;
mod manifest;
mod model_ref;
mod registry;
mod store;

pub use error::RegistryError;
pub use manifest::{FeatureSpec, MANIFEST_FILE, Manifest, ModelFormat, is_valid_name};
pub use model_ref::{ModelRef, Selector};
pub use registry::{Registry, VerifiedModel};
pub use store::LocalStore;
