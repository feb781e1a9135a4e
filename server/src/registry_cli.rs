//! `ferry models push | list | alias`: the registry from the command line, for local and S3
//! registries alike.

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
    if registry_config.uri.trim().is_empty() {
        anyhow::bail!(
            "no registry: pass --registry DIR|s3://bucket/prefix (or FERRY_REGISTRY), or --config FILE"
        );
    }
    let registry = Registry::open(&registry_config.options())
        .await
        .with_context(|| format!("Could not open the registry {}", registry_config.uri))?;
    match args.command {
        ModelsCommand::Push {
            dir,
            name,
            alias,
            version,
        } => {
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
