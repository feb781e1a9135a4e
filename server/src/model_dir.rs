//! `ferry serve --model-dir DIR`: serve a plain model directory, as KServe's storage
//! initializer leaves one under `/mnt/models` (a `model.onnx`, no manifest, no versions).
//!
//! The directory is turned into a one-version registry in a private temp dir: the model file
//! is linked (never copied: models can be gigabytes), its digest computed, and a manifest
//! written with the signature the file itself declares (the ONNX graph's inputs and outputs,
//! or the tree model's default signature). A `model.yaml` beside the file wins for everything
//! it says (signature, features, preprocess), so a ferry version directory works too.

use crate::registry_cli::TREE_FILES;
use ferry_registry::{MANIFEST_FILE, is_valid_name};
use std::path::{Path, PathBuf};

/// Why a model directory cannot be served; each message says what to change.
#[derive(Debug, thiserror::Error)]
#[error("--model-dir {dir}: {message}")]
pub struct ModelDirError {
    pub dir: String,
    pub message: String,
}

/// The manifest `format` of a file `--model-dir` takes: any `*.onnx`, or a tree model file
/// of the kinds `ferry models push` recognises ([`TREE_FILES`]), matched by extension. Only
/// files named `model.*` count for those: `.json` and `.txt` are also config and vocabulary
/// files.
fn format_of(name: &str) -> Option<&'static str> {
    if name.ends_with(".onnx") {
        return Some("onnx");
    }
    if !name.starts_with("model.") {
        return None;
    }
    TREE_FILES
        .iter()
        .find(|(file, _)| name.ends_with(file.trim_start_matches("model")))
        .map(|(_, format)| *format)
}

/// A temp registry holding `name` version 1 made from `dir`; dropping it removes the registry
/// (not the model files).
pub struct ModelDirRegistry {
    pub dir: tempfile::TempDir,
    pub model_ref: String,
}

pub fn registry_from_model_dir(dir: &Path, name: &str) -> Result<ModelDirRegistry, ModelDirError> {
    let err = |message: String| ModelDirError {
        dir: dir.display().to_string(),
        message,
    };
    if !is_valid_name(name) {
        return Err(err(format!(
            "the model name `{name}` is not valid: use lowercase letters, digits, `_` and `-` \
             (--model-name, FERRY_MODEL_NAME)"
        )));
    }
    let file = find_model_file(dir).map_err(&err)?;
    let format = file
        .file_name()
        .and_then(|n| format_of(&n.to_string_lossy()))
        .unwrap_or("onnx");
    let given: serde_json::Map<String, serde_json::Value> =
        match std::fs::read_to_string(file.with_file_name(MANIFEST_FILE)) {
            Ok(text) => serde_yaml::from_str(&text)
                .map_err(|e| err(format!("{MANIFEST_FILE} is not a YAML mapping: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(err(format!("could not read {MANIFEST_FILE}: {e}"))),
        };
    // An ONNX file is read once: its graph gives the signature (unless model.yaml declares
    // one) and the external data files.
    let onnx = if format == "onnx" {
        Some(ferry_registry::onnx_file_info(&file).map_err(&err)?)
    } else {
        None
    };
    let signature = if given.contains_key("inputs") && given.contains_key("outputs") {
        None
    } else {
        Some(match &onnx {
            Some(info) => info.signature.clone().map_err(&err)?,
            None => tree_signature(&file, format).map_err(&err)?,
        })
    };
    let sha256 = ferry_registry::sha256_file(&file).map_err(|e| err(e.to_string()))?;
    let artifact = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    let registry = tempfile::Builder::new()
        .prefix("ferry-model-dir-")
        .tempdir()
        .map_err(|e| err(format!("could not create a temp registry: {e}")))?;
    let version_dir = registry.path().join(name).join("1");
    std::fs::create_dir_all(&version_dir)
        .map_err(|e| err(format!("could not create {}: {e}", version_dir.display())))?;
    let target = std::fs::canonicalize(&file)
        .map_err(|e| err(format!("could not resolve {}: {e}", file.display())))?;
    std::os::unix::fs::symlink(&target, version_dir.join(&artifact))
        .map_err(|e| err(format!("could not link {}: {e}", file.display())))?;

    let mut manifest = given;
    manifest.insert("name".into(), name.into());
    manifest.insert("version".into(), 1.into());
    manifest.entry("format").or_insert_with(|| format.into());
    manifest.insert("artifact".into(), artifact.clone().into());
    manifest.insert("sha256".into(), sha256.into());
    // ONNX external data (tensors saved beside the graph) is linked and verified like the
    // model file itself.
    let mut files = serde_json::Map::new();
    if let Some(info) = onnx {
        let dir_of_file = file.parent().unwrap_or(dir);
        for rel in info.external_files {
            let inside = std::path::Path::new(&rel)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside {
                return Err(err(format!(
                    "the graph keeps tensors in `{rel}`, outside the model's directory; external data must be a relative path below it"
                )));
            }
            let source = dir_of_file.join(&rel);
            let digest = ferry_registry::sha256_file(&source).map_err(|e| {
                err(format!(
                    "the graph keeps tensors in `{rel}`, which cannot be read: {e}"
                ))
            })?;
            let link = version_dir.join(&rel);
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| err(format!("could not create {}: {e}", parent.display())))?;
            }
            let target = std::fs::canonicalize(&source)
                .map_err(|e| err(format!("could not resolve {}: {e}", source.display())))?;
            std::os::unix::fs::symlink(&target, &link)
                .map_err(|e| err(format!("could not link {}: {e}", source.display())))?;
            files.insert(rel, digest.into());
        }
    }
    if files.is_empty() {
        manifest.remove("files");
    } else {
        manifest.insert("files".into(), files.into());
    }
    if let Some(signature) = signature {
        let to_json = |v| serde_json::to_value(v).unwrap_or_default();
        manifest.insert("inputs".into(), to_json(&signature.inputs));
        manifest.insert("outputs".into(), to_json(&signature.outputs));
    }
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    std::fs::write(version_dir.join(MANIFEST_FILE), text)
        .map_err(|e| err(format!("could not write the manifest: {e}")))?;
    tracing::info!(
        model_dir = %dir.display(),
        file = %file.display(),
        model = %name,
        format,
        "Serving a plain model directory as {name}@1."
    );
    Ok(ModelDirRegistry {
        dir: registry,
        model_ref: format!("{name}@1"),
    })
}

/// The one model file in `dir`, or in a single subdirectory level below it (KServe's storage
/// initializer keeps the layout of the storage URI: `/mnt/models/model.onnx` or
/// `/mnt/models/1/model.onnx`).
fn find_model_file(dir: &Path) -> Result<PathBuf, String> {
    let is_model = |p: &Path| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        p.is_file() && format_of(&name).is_some()
    };
    let entries = |d: &Path| -> Result<Vec<PathBuf>, String> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| format!("cannot read the directory: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let top = entries(dir)?;
    let mut found: Vec<PathBuf> = top.iter().filter(|p| is_model(p)).cloned().collect();
    if found.is_empty() {
        for sub in top.iter().filter(|p| p.is_dir()) {
            found.extend(entries(sub)?.into_iter().filter(|p| is_model(p)));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(
            "holds no model file: expected one `*.onnx`, `model.json`/`model.ubj` (XGBoost) or \
             `model.txt` (LightGBM), at the top or one directory down"
                .into(),
        ),
        _ => Err(format!(
            "holds several model files ({}): point --model-dir at the directory of the one to serve",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The default signature of a tree model file (`format`: xgboost or lightgbm).
fn tree_signature(file: &Path, format: &str) -> Result<ferry_runtimes::Signature, String> {
    let tree_format = if format == "xgboost" {
        ferry_runtimes::TreeFormat::Xgboost
    } else {
        ferry_runtimes::TreeFormat::Lightgbm
    };
    ferry_runtimes::inspect_tree_model(file, tree_format)
        .map(|info| info.default_signature())
        .map_err(|e| e.to_string())
}
