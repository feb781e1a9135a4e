//! No step panics, whatever the rows hold.

use serde_json::json;

use super::*;

fn odd_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!("abc"),
        json!(""),
        json!(true),
        json!([]),
        json!([[1, [2, [3]]], "x"]),
        json!({"a": {"b": 1}}),
        json!(1e308),
        json!(-1e308),
        json!(f64::MIN_POSITIVE),
        json!(5e-324),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(-1),
        json!(-1.0000001),
        json!(0),
        json!([0.5, 1e308, -1e308]),
        json!([0.1, 0.9]),
        json!(["a", null]),
    ]
}

const PRE: &str = r#"
- fill_missing: {b: 1}
- standardize: {a: {mean: 1.0e-300, std: 1.0e-300}}
- scale: {a: {factor: 1.0e308, offset: 1.0e308}}
- min_max: {a: {min: -1.0e308, max: 1.0e308}}
- clip: {a: {min: 0}}
- log1p: [a]
- bucketize: {field: a, boundaries: [0, 1]}
- one_hot: {field: a, categories: [abc, 1, true]}
- category_index: {field: a, map: {abc: 1}}
- derive: {name: d, op: divide, args: [a, b]}
- derive: {name: d, op: multiply, args: [a, a, 1.0e308]}
- derive: {name: d, op: add, args: [a, 1.0e308]}
- derive: {name: d, op: min, args: [a, b]}
- script: {source: 'fn transform(row) { row.x = row.a * 2; row }'}
- script: {source: 'fn transform(row) { row.a = row.a.to_string() + "!"; row }'}
"#;

const POST: &str = r#"
- threshold: {field: a, threshold: 0.5, labels: [n, y]}
- threshold: {field: a, index: 1, threshold: 0.5, labels: [n, y]}
- top_k: {field: a, k: 2, labels: [x, y]}
- top_k: {field: a, k: 5}
- calibrate: {field: a, table: [[0, 0], [1, 1]]}
- calibrate: {field: a, index: 2, table: [[-1.0e308, -1.0e308], [1.0e308, 1.0e308]]}
- rename: {a: b}
- select: [a]
- cap: {a: 1}
- floor: {a: 0}
- script: {source: 'fn transform(row, input) { row.a = [row.a, input.a]; row }'}
"#;

fn check(stage: Stage, steps: &str) {
    let values = odd_values();
    for step in yaml(steps) {
        let chain = try_build(stage, std::slice::from_ref(&step)).unwrap_or_else(|e| panic!("{e}"));
        for v in &values {
            for r in [
                json!([{"a": v.clone(), "b": v.clone()}]),
                json!([{"a": v.clone(), "b": 0}]),
                json!([{"b": v.clone()}]),
                json!([{}]),
            ] {
                let mut rows = rows(r.clone());
                let inputs = rows.clone();
                let ctx = match stage {
                    Stage::Pre => Context::pre(),
                    Stage::Post => Context::post(&inputs),
                };
                // Success or a clean error; either way the output must still be valid JSON.
                match chain.apply(&mut rows, &ctx) {
                    Ok(()) => {
                        let text = serde_json::to_string(&rows).unwrap();
                        let _: Value = serde_json::from_str(&text).unwrap();
                    }
                    Err(e) => {
                        assert!(!e.message.is_empty(), "{step} on {r}");
                        assert_eq!(e.position, 1);
                    }
                }
            }
        }
    }
}

#[test]
fn pre_steps_never_panic() {
    check(Stage::Pre, PRE);
}

#[test]
fn post_steps_never_panic() {
    check(Stage::Post, POST);
}

#[test]
fn overflow_is_an_input_error_not_infinity() {
    let c = build(Stage::Pre, "- scale: {a: {factor: 1.0e308}}");
    let e = input_error(run_pre(&c, json!([{"a": 10}])));
    // 10 * 1e308 overflows to inf, which JSON cannot hold
    assert!(e.message.contains("not a finite number"), "{e}");
}
