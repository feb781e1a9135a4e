//! A team's own ferry binary with a business rule written in Rust.
//!
//! The rule is registered under a name; endpoints use it in `preprocess` or `postprocess` as
//! `- rust: {name: cap_by_country, params: {caps: {DE: 0.5}, field: probability}}`.
//!
//!     cargo run -p ferry-server --example custom_transform -- ferry.yaml
//!
//! It serves `ferry.yaml` like `ferry serve --config ferry.yaml` (without the CLI's flag and
//! environment overrides).

use ferry_server::config::ServerConfig;
use ferry_transforms::{Context, ErrorKind, Registry, Row, Transform, TransformError};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Caps a score field at a per-country ceiling taken from the request row's `country`.
struct CapByCountry {
    field: String,
    caps: HashMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    field: String,
    caps: HashMap<String, f64>,
}

impl Transform for CapByCountry {
    fn name(&self) -> &str {
        "rust:cap_by_country"
    }

    fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError> {
        let inputs = ctx.inputs.unwrap_or_default();
        for (i, row) in rows.iter_mut().enumerate() {
            let country = inputs
                .get(i)
                .and_then(|r| r.get("country"))
                .and_then(Value::as_str);
            let Some(cap) = country.and_then(|c| self.caps.get(c)) else {
                continue;
            };
            match row.get(&self.field).map(Value::as_f64) {
                Some(Some(x)) if x > *cap => {
                    row.insert(self.field.clone(), Value::from(*cap));
                }
                Some(Some(_)) => {}
                _ => {
                    return Err(TransformError {
                        step: self.name().into(),
                        position: 0,
                        row: Some(i),
                        kind: ErrorKind::Fault,
                        message: format!("the prediction has no numeric `{}`", self.field),
                    });
                }
            }
        }
        Ok(())
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(
        "cap_by_country",
        Arc::new(|params: &Value| {
            let p: Params = serde_json::from_value(params.clone())
                .map_err(|e| format!("cap_by_country params: {e}"))?;
            Ok(Box::new(CapByCountry {
                field: p.field,
                caps: p.caps,
            }) as Box<dyn Transform>)
        }),
    );
    registry
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: custom_transform CONFIG.yaml"))?;
    ferry_server::telemetry::init(ferry_server::cli::LogFormat::Text);
    let config = ServerConfig::load(std::path::Path::new(&path))?;
    config.validate()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        tracing::info!(address = %listener.local_addr()?, "Listening.");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        ferry_server::serve_with(config, listener, shutdown, registry()).await?;
        Ok(())
    })
}
