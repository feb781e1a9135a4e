use serde_json::json;

use super::*;

#[test]
fn fill_missing_sets_missing_and_null_only() {
    let c = build(Stage::Pre, "- fill_missing: {amount: 0, country: US}");
    let out = run_pre(
        &c,
        json!([
            {"amount": null},
            {"amount": 5, "country": "DE"},
            {"other": [1]}
        ]),
    )
    .unwrap();
    assert_eq!(
        as_value(out),
        json!([
            {"amount": 0, "country": "US"},
            {"amount": 5, "country": "DE"},
            {"other": [1], "amount": 0, "country": "US"}
        ])
    );
}

#[test]
fn standardize_values_and_errors() {
    let c = build(
        Stage::Pre,
        "- standardize: {amount: {mean: 10.0, std: 2.0}, user_stats.visits_7d: {mean: 1, std: 4}}",
    );
    let out = run_pre(
        &c,
        json!([
            {"amount": 14, "user_stats.visits_7d": 3},
            {"amount": 7.0, "user_stats.visits_7d": -1}
        ]),
    )
    .unwrap();
    approx(&out[0]["amount"], 2.0); // (14 - 10) / 2
    approx(&out[0]["user_stats.visits_7d"], 0.5); // (3 - 1) / 4
    approx(&out[1]["amount"], -1.5); // (7 - 10) / 2
    approx(&out[1]["user_stats.visits_7d"], -0.5); // (-1 - 1) / 4

    let e = input_error(run_pre(&c, json!([{"user_stats.visits_7d": 1}])));
    assert_eq!(e.row, Some(0));
    assert!(e.message.contains("field `amount` is missing"), "{e}");
    let e = input_error(run_pre(
        &c,
        json!([{"amount": 1, "user_stats.visits_7d": 1}, {"amount": null, "user_stats.visits_7d": 1}]),
    ));
    assert_eq!(e.row, Some(1));
    assert!(e.message.contains("`amount` is missing"), "{e}");
    let e = input_error(run_pre(
        &c,
        json!([{"amount": true, "user_stats.visits_7d": 1}]),
    ));
    assert!(
        e.message
            .contains("field `amount` is true, expected a number"),
        "{e}"
    );
}

#[test]
fn scale_and_min_max() {
    let c = build(
        Stage::Pre,
        "- scale: {amount: {factor: 0.01, offset: 1}, n: {factor: 3}}\n- min_max: {age: {min: 20, max: 60}}",
    );
    let out = run_pre(
        &c,
        json!([{"amount": 250, "n": 2, "age": 30}, {"amount": -100, "n": 0, "age": 80}]),
    )
    .unwrap();
    approx(&out[0]["amount"], 3.5); // 250 * 0.01 + 1
    approx(&out[0]["n"], 6.0); // 2 * 3 + 0 (offset defaults to 0)
    approx(&out[0]["age"], 0.25); // (30 - 20) / (60 - 20) = 10 / 40
    approx(&out[1]["amount"], 0.0); // -100 * 0.01 + 1
    approx(&out[1]["age"], 1.5); // (80 - 20) / 40: min_max does not clip
}

#[test]
fn clip_bounds_and_in_range_values() {
    let c = build(
        Stage::Pre,
        "- clip: {amount: {min: 0, max: 1000}, score: {max: 1.5}, n: {min: -2}}",
    );
    let out = run_pre(
        &c,
        json!([
            {"amount": -5, "score": 3, "n": -7},
            {"amount": 1500.5, "score": 1.5, "n": 4},
            {"amount": 12, "score": -100, "n": -2}
        ]),
    )
    .unwrap();
    approx(&out[0]["amount"], 0.0);
    approx(&out[0]["score"], 1.5);
    approx(&out[0]["n"], -2.0);
    approx(&out[1]["amount"], 1000.0);
    // On the bound and inside: untouched, integers stay integers.
    assert_eq!(out[1]["score"], json!(1.5));
    assert_eq!(out[1]["n"], json!(4));
    assert_eq!(out[2]["amount"], json!(12));
    assert_eq!(out[2]["score"], json!(-100));
    assert_eq!(out[2]["n"], json!(-2));
}

#[test]
fn log1p_values_and_domain() {
    let c = build(Stage::Pre, "- log1p: [amount, spend]");
    let out = run_pre(
        &c,
        json!([{"amount": 0, "spend": std::f64::consts::E - 1.0}, {"amount": -0.5, "spend": 9}]),
    )
    .unwrap();
    approx(&out[0]["amount"], 0.0); // ln(1 + 0)
    approx(&out[0]["spend"], 1.0); // ln(1 + e - 1) = ln e
    approx(&out[1]["amount"], -std::f64::consts::LN_2); // ln(0.5) = -ln 2
    approx(&out[1]["spend"], std::f64::consts::LN_10); // ln(10)
    let e = input_error(run_pre(
        &c,
        json!([{"amount": 1, "spend": 1}, {"amount": -1, "spend": 1}]),
    ));
    assert_eq!(e.row, Some(1));
    assert!(e.message.contains("greater than -1"), "{e}");
}

#[test]
fn bucketize_is_bisect_right() {
    let c = build(
        Stage::Pre,
        "- bucketize: {field: age, boundaries: [18, 30, 50], output: age_bucket}",
    );
    // bisect.bisect_right([18, 30, 50], x): number of boundaries <= x
    let cases = [
        (json!(17), 0),
        (json!(18), 1), // exactly on a boundary goes to the upper bucket
        (json!(29.9), 1),
        (json!(30), 2),
        (json!(50), 3),
        (json!(-1e300), 0),
        (json!(99), 3),
    ];
    for (age, bucket) in cases {
        let out = run_pre(&c, json!([{"age": age.clone()}])).unwrap();
        assert_eq!(out[0]["age_bucket"], json!(bucket), "age {age}");
        assert_eq!(out[0]["age"], age, "the input field is kept");
    }
    // output defaults to the field itself
    let c = build(Stage::Pre, "- bucketize: {field: age, boundaries: [18]}");
    let out = run_pre(&c, json!([{"age": 20}])).unwrap();
    assert_eq!(as_value(out), json!([{"age": 1}]));
}

#[test]
fn one_hot_known_unknown_and_drop() {
    let c = build(
        Stage::Pre,
        "- one_hot: {field: country, categories: [US, DE, FR], prefix: country_}",
    );
    let out = run_pre(&c, json!([{"country": "DE"}, {"country": "JP"}])).unwrap();
    assert_eq!(
        as_value(out),
        json!([
            {"country": "DE", "country_US": 0, "country_DE": 1, "country_FR": 0},
            {"country": "JP", "country_US": 0, "country_DE": 0, "country_FR": 0}
        ])
    );
    // default prefix is "<field>_", numeric categories match numbers
    let c = build(
        Stage::Pre,
        "- one_hot: {field: tier, categories: [1, 2], drop_original: true}",
    );
    let out = run_pre(&c, json!([{"tier": 2, "x": 0}])).unwrap();
    assert_eq!(as_value(out), json!([{"x": 0, "tier_1": 0, "tier_2": 1}]));
    let e = input_error(run_pre(&c, json!([{"tier": [2]}])));
    assert!(
        e.message.contains("expected a string, number or boolean"),
        "{e}"
    );
    let e = input_error(run_pre(&c, json!([{"x": 1}])));
    assert!(e.message.contains("`tier` is missing"), "{e}");
}

#[test]
fn category_index_map_default_and_unknown() {
    let c = build(
        Stage::Pre,
        "- category_index: {field: country, map: {US: 0, DE: 1}, default: -1, output: country_idx}",
    );
    let out = run_pre(
        &c,
        json!([{"country": "US"}, {"country": "DE"}, {"country": "JP"}]),
    )
    .unwrap();
    assert_eq!(out[0]["country_idx"], json!(0));
    assert_eq!(out[1]["country_idx"], json!(1));
    assert_eq!(out[2]["country_idx"], json!(-1));
    assert_eq!(out[2]["country"], json!("JP"));

    let c = build(
        Stage::Pre,
        "- category_index: {field: country, map: {US: 0}}",
    );
    let out = run_pre(&c, json!([{"country": "US"}])).unwrap();
    assert_eq!(as_value(out), json!([{"country": 0}]));
    let e = input_error(run_pre(&c, json!([{"country": "US"}, {"country": "JP"}])));
    assert_eq!(e.row, Some(1));
    assert!(e.message.contains("unknown category \"JP\""), "{e}");
}

#[test]
fn derive_ops() {
    let c = build(
        Stage::Pre,
        r#"
- derive: {name: per_visit, op: divide, args: [amount, user_stats.visits_7d], on_zero: 0}
- derive: {name: total, op: add, args: [a, b, 1.5]}
- derive: {name: diff, op: subtract, args: [a, b]}
- derive: {name: prod, op: multiply, args: [a, b, 4]}
- derive: {name: lo, op: min, args: [a, b, 2.5]}
- derive: {name: hi, op: max, args: [a, b, 2.5]}
"#,
    );
    let out = run_pre(
        &c,
        json!([
            {"amount": 30, "user_stats.visits_7d": 4, "a": 2, "b": 3},
            {"amount": 30, "user_stats.visits_7d": 0, "a": -1, "b": 0.5}
        ]),
    )
    .unwrap();
    approx(&out[0]["per_visit"], 7.5); // 30 / 4
    approx(&out[0]["total"], 6.5); // 2 + 3 + 1.5
    approx(&out[0]["diff"], -1.0); // 2 - 3
    approx(&out[0]["prod"], 24.0); // 2 * 3 * 4
    approx(&out[0]["lo"], 2.0); // min(2, 3, 2.5)
    approx(&out[0]["hi"], 3.0); // max(2, 3, 2.5)
    approx(&out[1]["per_visit"], 0.0); // 30 / 0 -> on_zero
    approx(&out[1]["total"], 1.0); // -1 + 0.5 + 1.5
    approx(&out[1]["diff"], -1.5); // -1 - 0.5
    approx(&out[1]["prod"], -2.0); // -1 * 0.5 * 4
    approx(&out[1]["lo"], -1.0);
    approx(&out[1]["hi"], 2.5);

    let c = build(Stage::Pre, "- derive: {name: r, op: divide, args: [a, b]}");
    let e = input_error(run_pre(&c, json!([{"a": 1, "b": 0}])));
    assert!(e.message.contains("division by zero"), "{e}");
    let e = input_error(run_pre(&c, json!([{"a": 1}])));
    assert!(e.message.contains("`b` is missing"), "{e}");
}
