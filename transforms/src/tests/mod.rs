//! Unit tests. Expected values are worked out by hand; the arithmetic is in the comments.

use std::path::Path;

use serde_json::{Value, json};

use crate::{
    BuildError, BuildOptions, Chain, Context, ErrorKind, Registry, Row, Stage, TransformError,
    build_chain,
};

mod build_errors;
mod post;
mod pre;
mod props;
mod rust_plugins;
mod script;

/// Steps written in YAML exactly as a config file would hold them.
pub(crate) fn yaml(src: &str) -> Vec<Value> {
    serde_yaml::from_str::<Vec<Value>>(src).expect("test YAML parses")
}

pub(crate) fn try_build(stage: Stage, steps: &[Value]) -> Result<Chain, BuildError> {
    try_build_with(stage, steps, Path::new("."), &Registry::new())
}

pub(crate) fn try_build_with(
    stage: Stage,
    steps: &[Value],
    base_dir: &Path,
    registry: &Registry,
) -> Result<Chain, BuildError> {
    build_chain(
        steps,
        &BuildOptions {
            stage,
            base_dir,
            registry,
        },
    )
}

pub(crate) fn build(stage: Stage, src: &str) -> Chain {
    try_build(stage, &yaml(src)).unwrap_or_else(|e| panic!("build failed: {e}"))
}

pub(crate) fn build_err(stage: Stage, src: &str) -> String {
    match try_build(stage, &yaml(src)) {
        Ok(c) => panic!("expected a build error, built {c:?}"),
        Err(e) => e.to_string(),
    }
}

pub(crate) fn rows(v: Value) -> Vec<Row> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|r| match r {
                Value::Object(m) => m,
                other => panic!("test row is not an object: {other}"),
            })
            .collect(),
        other => panic!("test rows are not an array: {other}"),
    }
}

/// Runs a pre chain over `input` rows.
pub(crate) fn run_pre(chain: &Chain, input: Value) -> Result<Vec<Row>, TransformError> {
    let mut r = rows(input);
    chain.apply(&mut r, &Context::pre())?;
    Ok(r)
}

/// Runs a post chain over output rows with aligned request rows.
pub(crate) fn run_post(
    chain: &Chain,
    outputs: Value,
    inputs: Value,
) -> Result<Vec<Row>, TransformError> {
    let mut r = rows(outputs);
    let inputs = rows(inputs);
    chain.apply(&mut r, &Context::post(&inputs))?;
    Ok(r)
}

pub(crate) fn as_value(r: Vec<Row>) -> Value {
    Value::Array(r.into_iter().map(Value::Object).collect())
}

#[track_caller]
pub(crate) fn approx(v: &Value, expected: f64) {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("expected a number near {expected}, got {v}"));
    assert!(
        (x - expected).abs() <= 1e-12 * expected.abs().max(1.0),
        "got {x}, expected {expected}"
    );
}

#[track_caller]
pub(crate) fn input_error(r: Result<Vec<Row>, TransformError>) -> TransformError {
    let e = r.expect_err("expected an error");
    assert_eq!(e.kind, ErrorKind::Input, "{e}");
    e
}

#[test]
fn chain_basics() {
    let c = Chain::empty();
    assert!(c.is_empty());
    assert_eq!(c.len(), 0);
    let out = run_pre(&c, json!([{"a": 1}])).unwrap();
    assert_eq!(as_value(out), json!([{"a": 1}]));

    let c = build(Stage::Pre, "- fill_missing: {a: 1}\n- log1p: [a]\n");
    assert_eq!(c.len(), 2);
    assert_eq!(c.step_names(), vec!["fill_missing", "log1p"]);
    // Clones share the compiled steps and run independently.
    let c2 = c.clone();
    let out = run_pre(&c2, json!([{}])).unwrap();
    // fill a=1, then ln(1+1) = 0.6931471805599453
    approx(&out[0]["a"], std::f64::consts::LN_2);
}

#[test]
fn error_names_step_position_and_row() {
    let c = build(
        Stage::Pre,
        "- fill_missing: {country: US}\n- standardize: {amount: {mean: 10.0, std: 2.0}}\n",
    );
    let e = input_error(run_pre(
        &c,
        json!([{"amount": 1}, {"amount": 2}, {"amount": 3}, {"amount": "abc"}]),
    ));
    assert_eq!(e.step, "standardize");
    assert_eq!(e.position, 2);
    assert_eq!(e.row, Some(3));
    assert_eq!(
        e.to_string(),
        "transform step 2 (standardize) failed on row 3: field `amount` is \"abc\", expected a number"
    );
    assert!(e.is_client_error());
}

#[test]
fn chain_and_engine_types_are_shareable() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Chain>();
    assert_send_sync::<Registry>();
    assert_send_sync::<TransformError>();
    assert_send_sync::<BuildError>();
}
