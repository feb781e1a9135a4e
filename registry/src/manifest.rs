use crate::RegistryError;
use ferry_runtimes::{Signature, TensorSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

pub const MANIFEST_FILE: &str = "model.yaml";

/// How the weights are stored, which decides the engine family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
    Safetensors,
    /// XGBoost `save_model` output: `model.json` or `model.ubj` (the `trees` engine).
    Xgboost,
    /// LightGBM `save_model` text: `model.txt` (the `trees` engine).
    Lightgbm,
}

impl ModelFormat {
    /// The trees engine's reader for this format; `None` for formats other engines run.
    pub fn tree_format(self) -> Option<ferry_runtimes::TreeFormat> {
        match self {
            ModelFormat::Xgboost => Some(ferry_runtimes::TreeFormat::Xgboost),
            ModelFormat::Lightgbm => Some(ferry_runtimes::TreeFormat::Lightgbm),
            ModelFormat::Onnx | ModelFormat::Safetensors => None,
        }
    }
}

/// The `features` section: how a request row becomes the model's input vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub entity: String,
    pub columns: Vec<String>,
}

/// `model.yaml`, as a training job writes it (DESIGN.md "Artifact format").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: u64,
    pub format: ModelFormat,
    /// The weights file, relative to the version directory.
    pub artifact: String,
    /// Hex sha256 of `artifact`.
    pub sha256: String,
    /// Other files the version needs, relative path -> hex sha256.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeatureSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preprocess: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub architecture: serde_json::Value,
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: model names and aliases. Also what keeps them from escaping
/// the registry root.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A path inside a version directory: relative, no `..`, no empty or `.` parts.
pub(crate) fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

impl Manifest {
    /// Parses and validates `model.yaml` found at `<model>/<version>/`; `source` names the file
    /// in error messages.
    pub fn parse(
        yaml: &str,
        source: &str,
        model: &str,
        version: u64,
    ) -> Result<Manifest, RegistryError> {
        let err = |message: String| RegistryError::Manifest {
            path: source.to_string(),
            message,
        };
        let manifest: Manifest = serde_yaml::from_str(yaml).map_err(|e| err(e.to_string()))?;
        manifest.validate().map_err(err)?;
        if manifest.name != model {
            return Err(err(format!(
                "`name` is {:?} but the manifest is stored under model {model:?}",
                manifest.name
            )));
        }
        if manifest.version != version {
            return Err(err(format!(
                "`version` is {} but the manifest is stored under version {version}",
                manifest.version
            )));
        }
        Ok(manifest)
    }

    /// Checks the rules serde cannot express; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !is_valid_name(&self.name) {
            return Err(format!(
                "`name` {:?} must match [a-z0-9][a-z0-9_-]{{0,62}}",
                self.name
            ));
        }
        if self.version == 0 {
            return Err("`version` must be a positive integer".into());
        }
        if !is_safe_relative_path(&self.artifact) {
            return Err(format!(
                "`artifact` {:?} must be a relative path inside the version directory",
                self.artifact
            ));
        }
        if !is_sha256_hex(&self.sha256) {
            return Err(format!(
                "`sha256` must be 64 hex digits (the artifact's sha256), found {:?}",
                self.sha256
            ));
        }
        for (file, digest) in &self.files {
            if !is_safe_relative_path(file) {
                return Err(format!(
                    "`files` key {file:?} must be a relative path inside the version directory"
                ));
            }
            if !is_sha256_hex(digest) {
                return Err(format!(
                    "`files.{file}` must be 64 hex digits (that file's sha256), found {digest:?}"
                ));
            }
        }
        for (key, specs) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            if specs.is_empty() {
                return Err(format!("`{key}` must list at least one tensor"));
            }
            let mut seen = HashSet::new();
            for (i, spec) in specs.iter().enumerate() {
                if spec.name.is_empty() {
                    return Err(format!("`{key}[{i}].name` must not be empty"));
                }
                if !seen.insert(&spec.name) {
                    return Err(format!("`{key}[{i}].name` {:?} is listed twice", spec.name));
                }
                if spec.shape.iter().any(|&d| d < -1) {
                    return Err(format!(
                        "`{key}[{i}].shape` {:?}: dimensions are sizes >= 0, or -1 for a variable size",
                        spec.shape
                    ));
                }
            }
        }
        if let Some(features) = &self.features {
            if features.entity.is_empty() {
                return Err("`features.entity` must name the entity join key".into());
            }
            if features.columns.is_empty() {
                return Err("`features.columns` must list at least one column".into());
            }
        }
        Ok(())
    }

    pub fn signature(&self) -> Signature {
        Signature {
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
        }
    }

    /// Every file the version consists of, with its expected digest: the artifact first.
    pub fn digests(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once((self.artifact.as_str(), self.sha256.as_str()))
            .chain(self.files.iter().map(|(f, d)| (f.as_str(), d.as_str())))
    }

    /// A spec for an input or output by name (for error messages and metadata).
    pub fn tensor(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: churn
version: 3
format: onnx
artifact: model.onnx
sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
files: {}
inputs:
  - {name: input, datatype: FP32, shape: [-1, 30]}
outputs:
  - {name: probabilities, datatype: FP32, shape: [-1, 2]}
features:
  entity: user_id
  columns: [user_stats.visits_7d, request.amount]
preprocess: []
architecture: {}
metadata: {git_commit: abc123, auc: 0.91}
"#;

    fn parse(yaml: &str) -> Result<Manifest, String> {
        Manifest::parse(yaml, "churn/3/model.yaml", "churn", 3).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_the_design_example() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.inputs[0].shape, vec![-1, 30]);
        assert_eq!(m.features.unwrap().columns.len(), 2);
        assert_eq!(m.metadata["git_commit"], "abc123");
    }

    #[test]
    fn errors_name_the_bad_key() {
        let cases = [
            (GOOD.replace("format: onnx", "format: pickle"), "unknown variant `pickle`"),
            (GOOD.replace("sha256: \"0123", "sha256: \"zz23"), "`sha256`"),
            (GOOD.replace("artifact: model.onnx", "artifact: ../../etc/passwd"), "`artifact`"),
            (GOOD.replace("datatype: FP32, shape: [-1, 30]", "datatype: FLOAT, shape: [-1, 30]"), "FLOAT"),
            (GOOD.replace("shape: [-1, 30]", "shape: [-2, 30]"), "`inputs[0].shape`"),
            (GOOD.replace("version: 3", "version: 4"), "`version`"),
            (GOOD.replace("name: churn", "name: Churn"), "`name`"),
            (GOOD.replace("metadata:", "metdata:"), "unknown field `metdata`"),
            (GOOD.replace("files: {}", "files: {\"../x\": \"00\"}"), "`files` key"),
            (GOOD.replace("sha256: \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"\n", ""), "missing field `sha256`"),
        ];
        for (yaml, needle) in cases {
            let err = parse(&yaml).expect_err(needle);
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
            assert!(err.contains("churn/3/model.yaml"), "{err}");
        }
    }

    #[test]
    fn names_follow_the_design_pattern() {
        for good in ["churn", "a", "fraud-v2", "x_1", &"a".repeat(63)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "Churn", "-x", "_x", "a/b", "..", "a.b", &"a".repeat(64)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
