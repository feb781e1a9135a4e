use serde_json::json;

use super::*;

fn post(src: &str, outputs: Value) -> Result<Vec<Row>, TransformError> {
    run_post(&build(Stage::Post, src), outputs, json!([]))
}

#[test]
fn threshold_on_index_and_scalar() {
    let src = "- threshold: {field: probabilities, index: 1, threshold: 0.5, labels: [no, yes], output: label}";
    let out = post(
        src,
        json!([
            {"probabilities": [0.3, 0.7]},
            {"probabilities": [0.5, 0.5]},
            {"probabilities": [0.6, 0.4]}
        ]),
    )
    .unwrap();
    assert_eq!(out[0]["label"], json!("yes")); // 0.7 >= 0.5
    assert_eq!(out[1]["label"], json!("yes")); // 0.5 >= 0.5: on the threshold is "at or above"
    assert_eq!(out[2]["label"], json!("no")); // 0.4 < 0.5
    assert_eq!(out[0]["probabilities"], json!([0.3, 0.7]));

    let out = post(
        "- threshold: {field: variable, threshold: 0.75, labels: [0, 1]}",
        json!([{"variable": 0.8}, {"variable": 0.7}]),
    )
    .unwrap();
    assert_eq!(out[0]["label"], json!(1)); // default output is `label`
    assert_eq!(out[1]["label"], json!(0));

    let e = input_error(post(src, json!([{"probabilities": [0.1]}])));
    assert!(e.message.contains("index 1 is out of range"), "{e}");
    let e = input_error(post(
        "- threshold: {field: p, threshold: 0.5, labels: [a, b]}",
        json!([{"p": [0.1, 0.9]}]),
    ));
    assert!(e.message.contains("set `index`"), "{e}");
}

#[test]
fn top_k_sorted_with_ties_and_large_k() {
    let out = post(
        "- top_k: {field: probabilities, k: 3, labels: [a, b, c, d], output: top}",
        json!([{"probabilities": [0.1, 0.4, 0.4, 0.1]}]),
    )
    .unwrap();
    // scores desc; the tie 0.4/0.4 keeps b (index 1) before c (index 2), then a (0) before d (3)
    assert_eq!(
        out[0]["top"],
        json!([
            {"label": "b", "score": 0.4},
            {"label": "c", "score": 0.4},
            {"label": "a", "score": 0.1}
        ])
    );
    let out = post(
        "- top_k: {field: p, k: 10}",
        json!([{"p": [0.2, 0.5, 0.3]}]),
    )
    .unwrap();
    // k > len returns every class; without labels the label is the index
    assert_eq!(
        out[0]["top_k"],
        json!([
            {"label": 1, "score": 0.5},
            {"label": 2, "score": 0.3},
            {"label": 0, "score": 0.2}
        ])
    );
    let e = input_error(post(
        "- top_k: {field: p, k: 1, labels: [a, b]}",
        json!([{"p": [0.2, 0.5, 0.3]}]),
    ));
    assert!(e.message.contains("3 scores but 2 labels"), "{e}");
}

#[test]
fn calibrate_interpolates_and_clamps() {
    let src = "- calibrate: {field: score, table: [[0.0, 0.0], [0.5, 0.3], [1.0, 1.0]], output: calibrated}";
    let out = post(
        src,
        json!([
            {"score": 0.25}, {"score": 0.75}, {"score": 0.5}, {"score": -1}, {"score": 2}, {"score": 1}
        ]),
    )
    .unwrap();
    approx(&out[0]["calibrated"], 0.15); // 0 + (0.25 - 0) * (0.3 - 0) / (0.5 - 0)
    approx(&out[1]["calibrated"], 0.65); // 0.3 + (0.75 - 0.5) * (1.0 - 0.3) / (1.0 - 0.5)
    approx(&out[2]["calibrated"], 0.3); // on a table point
    approx(&out[3]["calibrated"], 0.0); // below the table: first y
    approx(&out[4]["calibrated"], 1.0); // above the table: last y
    approx(&out[5]["calibrated"], 1.0); // last point exactly
    assert_eq!(out[0]["score"], json!(0.25));

    // with index and no output: the element is replaced in place
    let out = post(
        "- calibrate: {field: p, index: 1, table: [[0, 0], [1, 0.5]]}",
        json!([{"p": [0.2, 0.8]}]),
    )
    .unwrap();
    assert_eq!(out[0]["p"][0], json!(0.2));
    approx(&out[0]["p"][1], 0.4); // 0 + 0.8 * 0.5 / 1
}

#[test]
fn rename_and_select() {
    let out = post(
        "- rename: {probabilities: scores, a: b, b: a}",
        json!([{"probabilities": [1], "a": 1, "b": 2, "keep": true}]),
    )
    .unwrap();
    // a and b swap: renames are applied together
    assert_eq!(
        as_value(out),
        json!([{"scores": [1], "a": 2, "b": 1, "keep": true}])
    );
    let e = input_error(post(
        "- rename: {probabilities: scores}",
        json!([{"variable": 1}]),
    ));
    assert!(e.message.contains("`probabilities` is missing"), "{e}");

    let out = post(
        "- select: [label, score]",
        json!([{"label": "yes", "score": 0.9, "probabilities": [0.1, 0.9]}]),
    )
    .unwrap();
    assert_eq!(as_value(out), json!([{"label": "yes", "score": 0.9}]));
    let e = input_error(post(
        "- select: [label, score]",
        json!([{"label": "a", "score": 1}, {"label": "yes"}]),
    ));
    assert_eq!(e.row, Some(1));
    assert!(e.message.contains("field `score` is missing"), "{e}");
    assert!(
        e.to_string().contains("step 1 (select) failed on row 1"),
        "{e}"
    );
}

#[test]
fn cap_and_floor_scalars_and_arrays() {
    let src = "- cap: {price: 100}\n- floor: {price: 0, discount: 0.05}";
    let out = post(
        src,
        json!([
            {"price": 150, "discount": 0.01},
            {"price": 50, "discount": 0.2},
            {"price": -3, "discount": 0.05},
            {"price": [50, 150, -1], "discount": [0, 1]}
        ]),
    )
    .unwrap();
    approx(&out[0]["price"], 100.0);
    approx(&out[0]["discount"], 0.05);
    assert_eq!(out[1]["price"], json!(50));
    assert_eq!(out[1]["discount"], json!(0.2));
    approx(&out[2]["price"], 0.0);
    assert_eq!(out[2]["discount"], json!(0.05)); // on the bound: untouched
    // element-wise: 150 -> 100 (cap), -1 -> 0 (floor); 0 -> 0.05
    assert_eq!(out[3]["price"], json!([50, 100.0, 0.0]));
    assert_eq!(out[3]["discount"], json!([0.05, 1]));
    let e = input_error(post("- cap: {price: 1}", json!([{"price": "cheap"}])));
    assert!(e.message.contains("expected numbers"), "{e}");
}
