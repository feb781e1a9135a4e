use serde_json::json;

use super::*;

#[test]
fn unknown_step_lists_the_stage_steps() {
    let e = build_err(
        Stage::Pre,
        "- log1p: [a]\n- stadardize: {a: {mean: 0, std: 1}}",
    );
    assert!(
        e.starts_with("pre transform step 2 (stadardize): unknown step `stadardize`"),
        "{e}"
    );
    assert!(e.contains("fill_missing, standardize, scale"), "{e}");
    assert!(e.contains("script, rust"), "{e}");
    assert!(
        !e.contains("threshold"),
        "post steps are not offered in pre: {e}"
    );
    let e = build_err(Stage::Post, "- nope: {}");
    assert!(
        e.contains("threshold, top_k, calibrate, rename, select, cap, floor, script, rust"),
        "{e}"
    );
}

#[test]
fn bad_key_inside_a_step() {
    let e = build_err(Stage::Pre, "- standardize: {amount: {mean: 1, sd: 2}}");
    assert!(e.starts_with("pre transform step 1 (standardize):"), "{e}");
    assert!(e.contains("unknown field `sd`"), "{e}");
    assert!(
        e.contains("expected e.g. `standardize: {amount: {mean: 10.0, std: 2.0}}`"),
        "{e}"
    );
    let e = build_err(
        Stage::Pre,
        "- bucketize: {field: age, boundaries: [1], outptu: x}",
    );
    assert!(e.contains("unknown field `outptu`"), "{e}");
    let e = build_err(Stage::Post, "- threshold: {field: p, labels: [a, b]}");
    assert!(e.contains("missing field `threshold`"), "{e}");
    let e = build_err(Stage::Pre, "- derive: {name: x, op: modulo, args: [a, b]}");
    assert!(e.contains("unknown variant `modulo`"), "{e}");
    let e = build_err(Stage::Pre, "- derive: {name: x, op: add, args: [a, [1]]}");
    assert!(
        e.contains("each of `args` to be a field name or a number"),
        "{e}"
    );
}

#[test]
fn invalid_values() {
    let e = build_err(Stage::Pre, "- standardize: {amount: {mean: 1, std: 0}}");
    assert!(e.contains("std must be a finite number > 0"), "{e}");
    let e = build_err(Stage::Pre, "- standardize: {amount: {mean: 1, std: -2}}");
    assert!(e.contains("std must be a finite number > 0"), "{e}");
    let e = build_err(
        Stage::Pre,
        "- bucketize: {field: age, boundaries: [18, 50, 30]}",
    );
    assert!(
        e.contains("strictly increasing order (50 is followed by 30)"),
        "{e}"
    );
    let e = build_err(
        Stage::Pre,
        "- bucketize: {field: age, boundaries: [18, 18]}",
    );
    assert!(e.contains("strictly increasing"), "{e}");
    let e = build_err(Stage::Pre, "- min_max: {age: {min: 5, max: 5}}");
    assert!(e.contains("max must be greater than min"), "{e}");
    let e = build_err(Stage::Pre, "- clip: {a: {}}");
    assert!(e.contains("set `min`, `max` or both"), "{e}");
    let e = build_err(Stage::Pre, "- clip: {a: {min: 2, max: 1}}");
    assert!(e.contains("min 2 is greater than max 1"), "{e}");
    let e = build_err(
        Stage::Pre,
        "- derive: {name: x, op: subtract, args: [a, b, c]}",
    );
    assert!(e.contains("exactly 2 args"), "{e}");
    let e = build_err(
        Stage::Pre,
        "- derive: {name: x, op: add, args: [a], on_zero: 1}",
    );
    assert!(e.contains("at least 2 args"), "{e}");
    let e = build_err(Stage::Pre, "- one_hot: {field: c, categories: [a, a]}");
    assert!(e.contains("listed twice"), "{e}");
    let e = build_err(
        Stage::Post,
        "- calibrate: {field: s, table: [[0, 0], [0, 1]]}",
    );
    assert!(e.contains("strictly increasing"), "{e}");
    let e = build_err(Stage::Post, "- top_k: {field: s, k: 0}");
    assert!(e.contains("`k` must be at least 1"), "{e}");
    let e = build_err(
        Stage::Post,
        "- threshold: {field: p, threshold: 0.5, labels: [a]}",
    );
    assert!(e.contains("exactly 2 values"), "{e}");
    let e = build_err(Stage::Post, "- rename: {a: x, b: x}");
    assert!(e.contains("two fields are renamed to `x`"), "{e}");
    let e = build_err(Stage::Pre, "- fill_missing: {a: null}");
    assert!(e.contains("fill value for `a` is null"), "{e}");
}

#[test]
fn step_in_the_wrong_stage() {
    let e = build_err(Stage::Post, "- standardize: {amount: {mean: 1, std: 2}}");
    assert!(
        e.starts_with("post transform step 1 (standardize): `standardize` is a pre-stage step and cannot run in the post stage"),
        "{e}"
    );
    let e = build_err(
        Stage::Pre,
        "- threshold: {field: p, threshold: 0.5, labels: [a, b]}",
    );
    assert!(e.contains("`threshold` is a post-stage step"), "{e}");
}

#[test]
fn step_shape() {
    for bad in [
        json!("log1p"),
        json!({"log1p": ["a"], "clip": {}}),
        json!({}),
        json!([1]),
    ] {
        let e = try_build(Stage::Pre, std::slice::from_ref(&bad)).unwrap_err();
        assert_eq!(e.position, 1);
        assert_eq!(e.step, "?");
        assert!(e.message.contains("exactly one key"), "{bad}: {e}");
    }
}

#[test]
fn every_documented_example_builds() {
    // The examples quoted in error messages are themselves valid configs.
    for stage in [Stage::Pre, Stage::Post] {
        for name in crate::step_names(stage) {
            if name == "script" || name == "rust" {
                continue;
            }
            let e = build_err(stage, &format!("- {name}: 42"));
            let example = e
                .split("expected e.g. `")
                .nth(1)
                .and_then(|s| s.split('`').next())
                .unwrap_or_else(|| panic!("no example in: {e}"));
            let c = build(stage, &format!("- {example}"));
            assert_eq!(c.step_names(), vec![name]);
        }
    }
}

#[test]
fn readme_step_table_examples_build() {
    let readme = include_str!("../../README.md");
    let mut stage = None;
    let mut seen = 0;
    for line in readme.lines() {
        if line.starts_with("### Pre stage") {
            stage = Some(Stage::Pre);
        } else if line.starts_with("### Post stage") {
            stage = Some(Stage::Post);
        } else if line.starts_with("### ") {
            stage = None;
        }
        let (Some(stage), Some(rest)) = (stage, line.strip_prefix("| `")) else {
            continue;
        };
        let Some(example) = rest.split("| `").nth(1).and_then(|s| s.split('`').next()) else {
            continue;
        };
        let c = build(stage, &format!("- {example}"));
        assert_eq!(c.len(), 1, "{example}");
        seen += 1;
    }
    assert_eq!(seen, 17, "every built-in step has a README example");
}
