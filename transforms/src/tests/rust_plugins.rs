use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::*;
use crate::{Factory, Transform};

/// A team's transform: multiplies `field` by a per-country factor taken from the request row.
struct CapByCountry {
    field: String,
    caps: std::collections::BTreeMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapParams {
    field: String,
    caps: std::collections::BTreeMap<String, f64>,
}

impl Transform for CapByCountry {
    fn name(&self) -> &str {
        "cap_by_country"
    }

    fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError> {
        for (i, row) in rows.iter_mut().enumerate() {
            let country = ctx
                .input(i)
                .and_then(|r| r.get("country"))
                .and_then(Value::as_str)
                .ok_or_else(|| TransformError::input(i, "request has no `country`"))?;
            let Some(cap) = self.caps.get(country) else {
                continue;
            };
            let x = row
                .get(&self.field)
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    TransformError::fault(
                        Some(i),
                        format!("output has no numeric `{}`", self.field),
                    )
                })?;
            if x > *cap {
                row.insert(self.field.clone(), json!(cap));
            }
        }
        Ok(())
    }
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    let factory: Factory = Arc::new(|params: &Value| {
        let p = CapParams::deserialize(params).map_err(|e| e.to_string())?;
        Ok(Box::new(CapByCountry {
            field: p.field,
            caps: p.caps,
        }) as Box<dyn Transform>)
    });
    reg.register("cap_by_country", factory);
    struct Panics;
    impl Transform for Panics {
        fn name(&self) -> &str {
            "panics"
        }
        fn apply(&self, _: &mut [Row], _: &Context<'_>) -> Result<(), TransformError> {
            panic!("plugin bug")
        }
    }
    reg.register(
        "panics",
        Arc::new(|_: &Value| Ok(Box::new(Panics) as Box<dyn Transform>)),
    );
    reg
}

#[test]
fn registered_rust_transform_runs_under_its_label() {
    let reg = registry();
    assert_eq!(reg.names(), vec!["cap_by_country", "panics"]);
    let steps = yaml("- rust: {name: cap_by_country, params: {field: price, caps: {DE: 50}}}");
    let c = try_build_with(Stage::Post, &steps, Path::new("."), &reg).unwrap();
    assert_eq!(c.step_names(), vec!["rust:cap_by_country"]);
    let out = run_post(
        &c,
        json!([{"price": 80}, {"price": 80}, {"price": 40}]),
        json!([{"country": "DE"}, {"country": "US"}, {"country": "DE"}]),
    )
    .unwrap();
    // DE capped at 50; US has no cap; 40 is under the DE cap
    assert_eq!(
        as_value(out),
        json!([{"price": 50.0}, {"price": 80}, {"price": 40}])
    );

    let e = run_post(&c, json!([{"price": 1}]), json!([{}])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "transform step 1 (rust:cap_by_country) failed on row 0: request has no `country`"
    );
}

#[test]
fn rust_build_errors_and_panics() {
    let reg = registry();
    let e = try_build_with(
        Stage::Pre,
        &yaml("- rust: {name: nope}"),
        Path::new("."),
        &reg,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no Rust transform named `nope` (registered: cap_by_country, panics)"),
        "{e}"
    );
    let e = try_build(Stage::Pre, &yaml("- rust: {name: nope}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("none are registered in this binary"), "{e}");
    let e = try_build_with(
        Stage::Post,
        &yaml("- rust: {name: cap_by_country, params: {field: price}}"),
        Path::new("."),
        &reg,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("invalid params for `cap_by_country`: missing field `caps`"),
        "{e}"
    );

    let c = try_build_with(
        Stage::Pre,
        &yaml("- rust: {name: panics}"),
        Path::new("."),
        &reg,
    )
    .unwrap();
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fault);
    assert!(e.message.contains("panicked: plugin bug"), "{e}");
    assert_eq!(e.step, "rust:panics");
}
