//! `ferry models push | list | alias | import`: the registry from the command line, for local
//! and S3 registries alike (`list` also reads MLflow; `import` copies from MLflow).

use crate::cli::{ModelsArgs, ModelsCommand};
use crate::config::{RegistryConfig, ServerConfig};
use anyhow::Context;
use ferry_registry::{ModelInfo, Registry};
use std::io::Write;

/// Runs one `ferry models` subcommand, printing to `out`.
pub async fn run(args: ModelsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut registry_config = match &args.config {
        Some(path) => ServerConfig::load(path)?.registry,
        None => RegistryConfig::new(String::new()),
    };
    if let Some(uri) = &args.registry {
        registry_config.uri = uri.clone();
    }
    if let ModelsCommand::Import { to: Some(to), .. } = &args.command {
        registry_config.uri = to.clone();
    }
    if registry_config.uri.trim().is_empty() {
        anyhow::bail!(
            "no registry: pass --registry DIR|s3://bucket/prefix|mlflow+http://HOST:PORT (or FERRY_REGISTRY), --config FILE, or for import --to DIR|s3://bucket/prefix"
        );
    }
    // Publishing into a local registry that does not exist yet creates it (as S3 needs no
    // prefix created first); reading one that does not exist stays an error, as a typo.
    if matches!(
        args.command,
        ModelsCommand::Push { .. } | ModelsCommand::Import { .. }
    ) && let Some(dir) = ferry_registry::local_registry_path(&registry_config.uri)
        && !std::path::Path::new(dir).exists()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("Could not create the registry {dir}"))?;
    }
    let registry = Registry::open(&registry_config.options())
        .await
        // The URI as given may carry credentials (refused, but not to be echoed).
        .with_context(|| {
            format!(
                "Could not open the registry {}",
                ferry_features::online::redis::redact_url(&registry_config.uri)
            )
        })?;
    match args.command {
        ModelsCommand::Import { source, alias, .. } => {
            let (source_uri, model) = ferry_registry::parse_mlflow_model_uri(&source)?;
            let mut options = registry_config.options();
            options.uri = source_uri;
            let mlflow = Registry::open(&options)
                .await
                .with_context(|| format!("Could not open the MLflow registry of {source}"))?;
            let (manifest, published) = registry
                .import(&mlflow, &model)
                .await
                .with_context(|| format!("Could not import {source} into {}", registry.uri()))?;
            let name = &manifest.name;
            if published {
                writeln!(
                    out,
                    "Imported {model} from {} as {name}@{} into {} (sha256 {}).",
                    mlflow.uri(),
                    manifest.version,
                    registry.uri(),
                    manifest.sha256
                )?;
            } else {
                writeln!(
                    out,
                    "{name}@{} is already in {} with the same artifact (sha256 {}); nothing to import.",
                    manifest.version,
                    registry.uri(),
                    manifest.sha256
                )?;
            }
            if let Some(alias) = alias {
                registry
                    .set_alias(name, &alias, manifest.version)
                    .await
                    .with_context(|| {
                        format!("Could not point {name}@{alias} at the imported version")
                    })?;
                writeln!(out, "Alias {name}@{alias} -> {}.", manifest.version)?;
            }
        }
        ModelsCommand::Push {
            dir,
            name,
            alias,
            version,
        } => {
            let filled = match fill_tree_manifest(&dir)? {
                Some(filled) => Some(filled),
                None => fill_onnx_manifest(&dir)?,
            };
            if let Some(filled) = filled {
                writeln!(out, "{filled}")?;
            }
            let manifest = registry
                .publish(&dir, &name, version)
                .await
                .with_context(|| format!("Could not push {} as `{name}`", dir.display()))?;
            writeln!(
                out,
                "Published {name}@{} to {} (sha256 {}).",
                manifest.version,
                registry.uri(),
                manifest.sha256
            )?;
            if let Some(alias) = alias {
                registry
                    .set_alias(&name, &alias, manifest.version)
                    .await
                    .with_context(|| {
                        format!("Could not point {name}@{alias} at the new version")
                    })?;
                writeln!(out, "Alias {name}@{alias} -> {}.", manifest.version)?;
            }
        }
        ModelsCommand::Alias {
            name,
            alias,
            version,
        } => {
            registry
                .set_alias(&name, &alias, version)
                .await
                .with_context(|| format!("Could not point {name}@{alias} at version {version}"))?;
            writeln!(out, "Alias {name}@{alias} -> {version}.")?;
        }
        ModelsCommand::List { name, json } => {
            let names = match name {
                Some(n) => vec![n],
                None => registry
                    .models()
                    .await
                    .context("Could not list the registry")?,
            };
            let mut infos = Vec::new();
            for n in &names {
                infos.push(
                    registry
                        .describe(n)
                        .await
                        .with_context(|| format!("Could not list model `{n}`"))?,
                );
            }
            if json {
                serde_json::to_writer_pretty(&mut *out, &infos)?;
                writeln!(out)?;
            } else {
                if infos.is_empty() {
                    writeln!(out, "No models in {}.", registry.uri())?;
                }
                for info in &infos {
                    print_model(out, info)?;
                }
            }
        }
    }
    Ok(())
}

/// Tree model files `push` recognises, in the order it prefers them, with their format.
pub(crate) const TREE_FILES: [(&str, &str); 3] = [
    ("model.json", "xgboost"),
    ("model.ubj", "xgboost"),
    ("model.txt", "lightgbm"),
];

/// For XGBoost and LightGBM models, fills in what `DIR/model.yaml` leaves out — `format`,
/// `artifact` (model.json, model.ubj or model.txt), `inputs` and `outputs` (the default
/// signature, read from the model file) and `metadata.feature_names` — and writes it back.
/// A model.yaml may be absent. Returns a line saying what was filled, or `None` when the
/// directory holds no tree model (or its manifest is complete).
fn fill_tree_manifest(dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    use serde_yaml::{Mapping, Value};
    let path = dir.join(ferry_registry::MANIFEST_FILE);
    let mut map = read_manifest_map(&path)?;
    let declared = map
        .get("format")
        .and_then(Value::as_str)
        .map(str::to_string);
    let artifact = map
        .get("artifact")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (format, artifact) = match (declared.as_deref(), artifact) {
        (Some("xgboost" | "lightgbm"), Some(a)) => (declared.clone().unwrap_or_default(), a),
        (Some(f @ ("xgboost" | "lightgbm")), None) => {
            let Some((file, _)) = TREE_FILES
                .iter()
                .find(|(file, fmt)| *fmt == f && dir.join(file).is_file())
            else {
                anyhow::bail!(
                    "{} says `format: {f}` but names no `artifact` and {} holds none of {}",
                    path.display(),
                    dir.display(),
                    TREE_FILES.map(|(file, _)| file).join(", ")
                );
            };
            (f.to_string(), file.to_string())
        }
        (Some(_), _) => return Ok(None),
        (None, Some(a)) => match TREE_FILES
            .iter()
            .find(|(file, _)| a.ends_with(file.trim_start_matches("model")))
        {
            Some((_, fmt)) => (fmt.to_string(), a),
            None => return Ok(None),
        },
        (None, None) => {
            let found: Vec<_> = TREE_FILES
                .iter()
                .filter(|(file, _)| dir.join(file).is_file())
                .collect();
            match found[..] {
                [] => return Ok(None),
                [(file, fmt)] => (fmt.to_string(), file.to_string()),
                _ => anyhow::bail!(
                    "{} holds several model files ({}): name one as `artifact` in model.yaml",
                    dir.display(),
                    found.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    if ["inputs", "outputs"].iter().all(|k| map.contains_key(*k))
        && declared.is_some()
        && map.contains_key("artifact")
    {
        return Ok(None);
    }
    let tree_format = match format.as_str() {
        "xgboost" => ferry_runtimes::TreeFormat::Xgboost,
        _ => ferry_runtimes::TreeFormat::Lightgbm,
    };
    let file = dir.join(&artifact);
    let info = ferry_runtimes::inspect_tree_model(&file, tree_format)
        .with_context(|| format!("Could not read the model file {}", file.display()))?;
    let signature = info.default_signature();
    let mut filled = insert_missing(
        &mut map,
        vec![
            ("format", Value::from(format.clone())),
            ("artifact", Value::from(artifact.clone())),
            ("inputs", serde_yaml::to_value(&signature.inputs)?),
            ("outputs", serde_yaml::to_value(&signature.outputs)?),
        ],
    );
    if let Some(names) = &info.feature_names {
        let metadata = map
            .entry("metadata".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if let Value::Mapping(m) = metadata
            && !m.contains_key("feature_names")
        {
            m.insert("feature_names".into(), serde_yaml::to_value(names)?);
            filled.push("metadata.feature_names");
        }
    }
    write_manifest_map(&path, map)?;
    Ok(Some(format!(
        "Filled {} of {} from {artifact} ({format}, {} features, {} trees, {}).",
        filled.join(", "),
        path.display(),
        info.n_features,
        info.n_trees,
        match info.n_classes {
            Some(k) => format!("classifier with {k} classes"),
            None => "regressor".to_string(),
        }
    )))
}

/// `DIR/model.yaml` as a mapping; empty when the file is absent.
fn read_manifest_map(path: &std::path::Path) -> anyhow::Result<serde_yaml::Mapping> {
    use serde_yaml::{Mapping, Value};
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_yaml::from_str::<Value>(&text)
            .with_context(|| format!("Could not parse {}", path.display()))?
        {
            Value::Mapping(m) => Ok(m),
            Value::Null => Ok(Mapping::new()),
            _ => anyhow::bail!("{} must be a YAML mapping", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Mapping::new()),
        Err(e) => Err(e).with_context(|| format!("Could not read {}", path.display())),
    }
}

/// Inserts each `(key, value)` the manifest lacks; returns the keys inserted.
fn insert_missing(
    map: &mut serde_yaml::Mapping,
    values: Vec<(&'static str, serde_yaml::Value)>,
) -> Vec<&'static str> {
    let mut filled = Vec::new();
    for (key, value) in values {
        if !map.contains_key(key) {
            map.insert(key.into(), value);
            filled.push(key);
        }
    }
    filled
}

fn write_manifest_map(path: &std::path::Path, map: serde_yaml::Mapping) -> anyhow::Result<()> {
    std::fs::write(
        path,
        serde_yaml::to_string(&serde_yaml::Value::Mapping(map))?,
    )
    .with_context(|| format!("Could not write {}", path.display()))
}

/// For ONNX models, fills in what `DIR/model.yaml` leaves out — `format`, `artifact` (the one
/// `*.onnx` in DIR), `inputs` and `outputs` (the graph's own) and `files` (its external data
/// files) — as Triton completes an ONNX model's config, and writes it back. A model.yaml may
/// be absent. Returns a line saying what was filled, or `None` when the directory holds no
/// ONNX model (or its manifest is complete).
fn fill_onnx_manifest(dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    use serde_yaml::Value;
    let path = dir.join(ferry_registry::MANIFEST_FILE);
    let mut map = read_manifest_map(&path)?;
    if map
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| f != "onnx")
    {
        return Ok(None);
    }
    let artifact = match map.get("artifact").and_then(Value::as_str) {
        Some(a) if a.ends_with(".onnx") => a.to_string(),
        Some(_) => return Ok(None),
        None => {
            let mut found: Vec<String> = std::fs::read_dir(dir)
                .with_context(|| format!("Could not read {}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".onnx") && dir.join(n).is_file())
                .collect();
            found.sort();
            match &found[..] {
                [] => return Ok(None),
                [one] => one.clone(),
                _ => anyhow::bail!(
                    "{} holds several ONNX files ({}): name one as `artifact` in model.yaml",
                    dir.display(),
                    found.join(", ")
                ),
            }
        }
    };
    if ["format", "artifact", "inputs", "outputs"]
        .iter()
        .all(|k| map.contains_key(*k))
    {
        return Ok(None);
    }
    let file = dir.join(&artifact);
    let info = ferry_registry::onnx_file_info(&file).map_err(|e| anyhow::anyhow!(e))?;
    let mut values = vec![
        ("format", Value::from("onnx")),
        ("artifact", Value::from(artifact.clone())),
    ];
    if !(map.contains_key("inputs") && map.contains_key("outputs")) {
        let signature = info.signature.map_err(|e| {
            anyhow::anyhow!("{e}; declare `inputs` and `outputs` in {}", path.display())
        })?;
        values.push(("inputs", serde_yaml::to_value(&signature.inputs)?));
        values.push(("outputs", serde_yaml::to_value(&signature.outputs)?));
    }
    if !info.external_files.is_empty() {
        values.push(("files", serde_yaml::to_value(&info.external_files)?));
    }
    let filled = insert_missing(&mut map, values);
    write_manifest_map(&path, map)?;
    Ok(Some(format!(
        "Filled {} of {} from {artifact} (ONNX).",
        filled.join(", "),
        path.display(),
    )))
}

fn human_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn print_model(out: &mut impl Write, info: &ModelInfo) -> std::io::Result<()> {
    let aliases: Vec<String> = info
        .aliases
        .iter()
        .map(|(a, v)| format!("{a} -> {v}"))
        .collect();
    writeln!(out, "{}", info.name)?;
    writeln!(
        out,
        "  aliases: {}",
        if aliases.is_empty() {
            "(none)".to_string()
        } else {
            aliases.join(", ")
        }
    )?;
    writeln!(
        out,
        "  {:<8} {:<11} {:<21} {:<20} METADATA",
        "VERSION", "SIZE", "CREATED (UTC)", "ALIASES"
    )?;
    for v in &info.versions {
        let created = v
            .created
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "-".into());
        let metadata = match &v.error {
            Some(e) => format!("(unreadable manifest: {e})"),
            None => serde_json::to_string(&v.metadata).unwrap_or_default(),
        };
        writeln!(
            out,
            "  {:<8} {:<11} {:<21} {:<20} {metadata}",
            v.version,
            human_size(v.size),
            created,
            if v.aliases.is_empty() {
                "-".to_string()
            } else {
                v.aliases.join(",")
            },
        )?;
    }
    Ok(())
}
