//! A team's own ferry binary with a business rule written in Rust.
//!
//! The rule is registered under a name; endpoints use it in `preprocess` or `postprocess` as
//! `- rust: {name: cap_by_country, params: {caps: {DE: 0.5}, field: probability}}`.
//!
//!     cargo run -p ferry-server --example custom_transform -- ferry.yaml
//!
//! It serves `ferry.yaml` like `ferry serve --config ferry.yaml` (without the CLI's flag and
//! environment overrides).

use arrow_array::cast::AsArray;
use arrow_array::{Array, Float64Array};
use ferry_server::config::ServerConfig;
use ferry_transforms::{
    Applied, Context, ErrorKind, Frame, FrameContext, Registry, Row, Transform, TransformError,
};
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

    fn has_column_form(&self) -> bool {
        true
    }

    /// The same rule over whole columns (batch over Parquet): the request's `country` column
    /// and the prediction's numeric `field` column. Anything else (no such columns, nulls,
    /// other types) goes to `apply`, which reports the row at fault.
    fn apply_frame(
        &self,
        frame: &mut Frame,
        ctx: &FrameContext<'_>,
    ) -> Result<Applied, TransformError> {
        let country = ctx.inputs.and_then(|inputs| inputs.column("country"));
        let (Some(country), Some(scores)) = (country, frame.numbers(&self.field)) else {
            return Ok(Applied::NeedsRows);
        };
        let Some(country) = country.as_string_opt::<i32>() else {
            return Ok(Applied::NeedsRows);
        };
        let capped: Float64Array = scores
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let cap = (!country.is_null(i))
                    .then(|| self.caps.get(country.value(i)))
                    .flatten();
                Some(match cap {
                    Some(cap) if x > *cap => *cap,
                    _ => x,
                })
            })
            .collect();
        frame.set(&self.field, std::sync::Arc::new(capped));
        Ok(Applied::Done)
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
    let _telemetry = ferry_server::telemetry::init(ferry_server::cli::LogFormat::Text)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{RecordBatch, StringArray};
    use std::sync::Arc;

    /// The column form caps exactly the rows the row form caps.
    #[test]
    fn column_and_row_forms_cap_the_same_rows() {
        let rule = CapByCountry {
            field: "probability".into(),
            caps: HashMap::from([("DE".to_string(), 0.5), ("FR".to_string(), 0.7)]),
        };
        let countries = [Some("DE"), Some("FR"), None, Some("US"), Some("DE")];
        let scores = [0.9, 0.6, 0.95, 0.99, 0.1];
        let inputs = Frame::from_batch(
            &RecordBatch::try_from_iter([(
                "country",
                Arc::new(StringArray::from(countries.to_vec())) as arrow_array::ArrayRef,
            )])
            .unwrap(),
        );
        let mut answer = Frame::from_batch(
            &RecordBatch::try_from_iter([(
                "probability",
                Arc::new(Float64Array::from(scores.to_vec())) as arrow_array::ArrayRef,
            )])
            .unwrap(),
        );
        let ctx = FrameContext {
            inputs: Some(&inputs),
        };
        assert_eq!(rule.apply_frame(&mut answer, &ctx).unwrap(), Applied::Done);

        let input_rows: Vec<Row> = countries
            .iter()
            .map(|c| {
                let mut row = Row::new();
                if let Some(c) = c {
                    row.insert("country".into(), Value::from(*c));
                }
                row
            })
            .collect();
        let mut rows: Vec<Row> = scores
            .iter()
            .map(|s| Row::from_iter([("probability".to_string(), Value::from(*s))]))
            .collect();
        rule.apply(&mut rows, &Context::post(&input_rows)).unwrap();
        let by_rows: Vec<f64> = rows
            .iter()
            .map(|r| r["probability"].as_f64().unwrap())
            .collect();
        assert_eq!(answer.numbers("probability").unwrap(), by_rows);
        assert_eq!(by_rows, [0.5, 0.6, 0.95, 0.99, 0.1]);
    }
}
