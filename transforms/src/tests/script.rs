use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn inline(stage: Stage, name: &str, source: &str, extra: &str) -> Chain {
    let step = json!({"script": {"source": source, "name": name}});
    let mut steps = vec![step];
    if !extra.is_empty() {
        let extra: Value = serde_yaml::from_str(extra).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            steps[0]["script"][k] = v.clone();
        }
    }
    try_build(stage, &steps).unwrap_or_else(|e| panic!("build failed: {e}"))
}

fn inline_err(stage: Stage, source: &str) -> String {
    let steps = vec![json!({"script": {"source": source, "name": "bad"}})];
    match try_build(stage, &steps) {
        Ok(_) => panic!("expected a build error for {source}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn pre_business_rule_and_json_round_trip() {
    let c = inline(
        Stage::Pre,
        "flag",
        r#"
fn transform(row) {
    row.big = row.amount > 100;
    row["user_stats.visits_7d"] = row["user_stats.visits_7d"] + 1;
    row.remove("secret");
    row
}
"#,
        "",
    );
    assert_eq!(c.step_names(), vec!["script flag"]);
    let out = run_pre(
        &c,
        json!([
            {"amount": 150, "user_stats.visits_7d": 2, "secret": "x",
             "nested": {"a": [1, 2.5, null, true, "s"]}, "big_u64": 18446744073709551615u64},
            {"amount": 99.5, "user_stats.visits_7d": 0.5}
        ]),
    )
    .unwrap();
    assert_eq!(out[0]["big"], json!(true)); // 150 > 100
    assert_eq!(out[0]["user_stats.visits_7d"], json!(3)); // 2 + 1 stays an integer
    assert!(!out[0].contains_key("secret"));
    // values the script did not touch come back as they went in (u64 beyond i64 becomes a float)
    assert_eq!(out[0]["nested"], json!({"a": [1, 2.5, null, true, "s"]}));
    approx(&out[0]["big_u64"], 18446744073709551615.0);
    assert_eq!(out[1]["big"], json!(false)); // 99.5 > 100 is false
    approx(&out[1]["user_stats.visits_7d"], 1.5); // 0.5 + 1
}

#[test]
fn post_rule_floors_score_by_request_field() {
    let c = inline(
        Stage::Post,
        "vip_floor",
        r#"
fn transform(row, input) {
    if input != () && input.tier == "vip" && row.score < input.min_score {
        row.score = input.min_score;
        row.floored = true;
    }
    row
}
"#,
        "",
    );
    let out = run_post(
        &c,
        json!([{"score": 0.2}, {"score": 0.2}, {"score": 0.9}]),
        json!([
            {"tier": "vip", "min_score": 0.5},
            {"tier": "basic", "min_score": 0.5},
            {"tier": "vip", "min_score": 0.5}
        ]),
    )
    .unwrap();
    assert_eq!(
        as_value(out),
        json!([
            {"score": 0.5, "floored": true}, // vip and 0.2 < 0.5
            {"score": 0.2},                  // not vip
            {"score": 0.9}                   // vip but already above the floor
        ])
    );
    // without inputs the script sees `()`
    let mut r = rows(json!([{"score": 0.1}]));
    c.apply(&mut r, &Context { inputs: None }).unwrap();
    assert_eq!(as_value(r), json!([{"score": 0.1}]));
}

#[test]
fn infinite_loop_hits_the_operation_limit_promptly() {
    let c = inline(
        Stage::Pre,
        "spin",
        "fn transform(row) { let i = 0; loop { i += 1; } row }",
        "",
    );
    let started = Instant::now();
    let e = run_pre(&c, json!([{"a": 1}, {"a": 2}])).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind, ErrorKind::Limit, "{e}");
    assert_eq!(e.step, "script spin");
    assert_eq!(e.row, Some(0));
    assert!(
        e.to_string()
            .contains("step 1 (script spin) failed on row 0"),
        "{e}"
    );
    assert!(e.message.contains("max_operations (100000)"), "{e}");
    assert!(!e.is_client_error());
    // 100k operations take milliseconds in release; allow a slow debug build on a busy CI box.
    assert!(took < Duration::from_secs(5), "took {took:?}");

    let c = inline(
        Stage::Pre,
        "spin",
        "fn transform(row) { loop { } }",
        "max_operations: 50",
    );
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit);
    assert!(e.message.contains("max_operations (50)"), "{e}");
}

#[test]
fn chain_stays_usable_after_a_failure() {
    let c = inline(
        Stage::Pre,
        "maybe",
        "fn transform(row) { if row.fail { loop {} } row.ok = true; row }",
        "max_operations: 1000",
    );
    let e = run_pre(&c, json!([{"fail": false}, {"fail": true}])).unwrap_err();
    assert_eq!((e.kind, e.row), (ErrorKind::Limit, Some(1)));
    let out = run_pre(&c, json!([{"fail": false}])).unwrap();
    assert_eq!(as_value(out), json!([{"fail": false, "ok": true}]));
    // a runtime error on one call does not poison the next either
    let e = run_pre(&c, json!([{"fail": "yes"}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fault, "{e}");
    let out = run_pre(&c, json!([{"fail": false}])).unwrap();
    assert_eq!(out[0]["ok"], json!(true));
}

#[test]
fn no_import_no_eval_no_host_functions() {
    let e = inline_err(Stage::Pre, "import \"x\" as x;\nfn transform(row) { row }");
    assert!(e.contains("syntax error in inline script `bad`"), "{e}");
    assert!(
        e.contains("'import' is a reserved keyword (line 1, position 1)"),
        "{e}"
    );

    let e = inline_err(Stage::Pre, "fn transform(row) { eval(\"row.x = 1\"); row }");
    assert!(e.contains("reserved keyword 'eval' is disabled"), "{e}");

    // Functions that do not exist in the sandbox fail at the call, as a Fault naming the script.
    let c = inline(
        Stage::Pre,
        "reader",
        "fn transform(row) { row.x = read_file(\"/etc/passwd\"); row }",
        "",
    );
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fault, "{e}");
    assert_eq!(e.row, Some(0));
    assert!(
        e.to_string().contains("(script reader) failed on row 0"),
        "{e}"
    );
    assert!(e.message.contains("read_file"), "{e}");
}

#[test]
fn deep_recursion_hits_the_call_level_limit() {
    let c = inline(
        Stage::Pre,
        "deep",
        "fn down(n) { down(n + 1) }\nfn transform(row) { down(0); row }",
        "",
    );
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit, "{e}");
    assert!(e.message.contains("max_call_levels"), "{e}");
}

#[test]
fn the_highest_call_level_limit_fits_a_2_mib_thread() {
    // Worker threads (tokio blocking pool, test harness) default to 2 MiB stacks; the ceiling
    // on max_call_levels must hit the limit before the native stack runs out.
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let c = inline(
                Stage::Pre,
                "deep",
                "fn down(n) { let a = [n, n + 1, #{x: n}]; down(a[1]) }\nfn transform(row) { down(0); row }",
                &format!("max_call_levels: {}", crate::script::MAX_CALL_LEVELS_CEILING),
            );
            run_pre(&c, json!([{}])).unwrap_err().kind
        })
        .unwrap();
    assert_eq!(handle.join().unwrap(), ErrorKind::Limit);
}

#[test]
fn huge_strings_arrays_and_maps_hit_size_limits() {
    let c = inline(
        Stage::Pre,
        "grow",
        "fn transform(row) { let s = \"x\"; loop { s += s; } row }",
        "",
    );
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit, "{e}");
    assert!(e.message.contains("data exceeded its limit"), "{e}");

    let c = inline(
        Stage::Pre,
        "grow",
        "fn transform(row) { let a = []; for i in 0..100 { a.push(i); } row }",
        "max_array_size: 10",
    );
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit, "{e}");

    let c = inline(
        Stage::Pre,
        "grow",
        "fn transform(row) { for i in 0..100 { row[`k${i}`] = i; } row }",
        "max_map_size: 10",
    );
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit, "{e}");
}

#[test]
fn bad_return_values_are_faults() {
    let c = inline(Stage::Pre, "num", "fn transform(row) { 42 }", "");
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fault);
    assert!(e.message.contains("returned i64, expected a map"), "{e}");

    // NaN has no JSON form: refused rather than turned into null
    let c = inline(
        Stage::Pre,
        "nan",
        "fn transform(row) { row.x = (-1.0).sqrt(); row }",
        "",
    );
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fault);
    assert!(
        e.message.contains("field `x`") && e.message.contains("not a finite number"),
        "{e}"
    );

    // chars and blobs convert; function pointers do not
    let c = inline(
        Stage::Pre,
        "conv",
        "fn transform(row) { row.c = 'z'; row.b = blob(2, 7); row.u = (); row }",
        "",
    );
    let out = run_pre(&c, json!([{}])).unwrap();
    assert_eq!(as_value(out), json!([{"c": "z", "b": [7, 7], "u": null}]));
    let c = inline(
        Stage::Pre,
        "fp",
        "fn transform(row) { row.f = Fn(\"transform\"); row }",
        "",
    );
    let e = run_pre(&c, json!([{}])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fault);
    assert!(e.message.contains("no JSON form"), "{e}");
}

#[test]
fn script_files_resolve_against_base_dir_and_report_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/ok.rhai"),
        "// doubles the amount\nfn transform(row) {\n    row.amount *= 2;\n    row\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules/broken.rhai"),
        "fn transform(row) {\n    row.amount = ;\n    row\n}\n",
    )
    .unwrap();
    let reg = Registry::new();
    let c = try_build_with(
        Stage::Pre,
        &yaml("- script: {file: rules/ok.rhai}"),
        dir.path(),
        &reg,
    )
    .unwrap();
    assert_eq!(c.step_names(), vec!["script rules/ok.rhai"]);
    let out = run_pre(&c, json!([{"amount": 21}])).unwrap();
    assert_eq!(out[0]["amount"], json!(42)); // 21 * 2

    let e = try_build_with(
        Stage::Pre,
        &yaml("- script: {file: rules/broken.rhai}"),
        dir.path(),
        &reg,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("broken.rhai"), "{e}");
    assert!(e.contains("line 2"), "{e}");

    let e = try_build_with(
        Stage::Pre,
        &yaml("- script: {file: nope.rhai}"),
        dir.path(),
        &reg,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cannot read script file") && e.contains("nope.rhai"),
        "{e}"
    );
}

#[test]
fn script_build_checks() {
    let e = inline_err(Stage::Post, "fn transform(row) { row }");
    assert!(e.contains("fn transform(row, input)"), "{e}");
    let e = inline_err(Stage::Pre, "fn other(row) { row }");
    assert!(e.contains("fn transform(row)"), "{e}");
    let e = inline_err(
        Stage::Pre,
        "fn transform(row) { row.x = undefined_var; row }",
    );
    assert!(e.contains("undefined_var"), "{e}");
    let e = build_err(
        Stage::Pre,
        "- script: {source: 'fn transform(r) { r }', max_operations: 0}",
    );
    assert!(e.contains("`max_operations` must be at least 1"), "{e}");
    let e = build_err(
        Stage::Pre,
        "- script: {source: 'fn transform(r) { r }', max_call_levels: 1000}",
    );
    assert!(e.contains("`max_call_levels` is at most"), "{e}");
    let e = build_err(
        Stage::Pre,
        "- script: {source: 'fn transform(r) { r }', file: x.rhai}",
    );
    assert!(e.contains("exactly one of `file`"), "{e}");
    let e = build_err(
        Stage::Pre,
        "- script: {source: 'fn transform(r) { r }', max_ops: 5}",
    );
    assert!(e.contains("unknown field `max_ops`"), "{e}");
}

#[test]
fn allocation_bombs_fail_fast() {
    // Each would allocate gigabytes if the size limits were not checked before allocating.
    for (name, body, kind) in [
        ("blob", "let b = blob(2000000000);", ErrorKind::Limit),
        (
            "pad_string",
            "let s = \"x\"; s.pad(2000000000, \"y\");",
            ErrorKind::Limit,
        ),
        (
            "pad_array",
            "let a = []; a.pad(2000000000, 0);",
            ErrorKind::Limit,
        ),
        // 60000 bytes fit max_string_size; the 60000 pieces do not fit max_array_size
        (
            "split_many",
            "let s = \"x\"; s.pad(60000, \",\"); let parts = s.split(\",\");",
            ErrorKind::Limit,
        ),
        // no string repetition operator in Rhai: a Fault, not an allocation
        (
            "repeat_string",
            "let s = \"xy\" * 2000000000;",
            ErrorKind::Fault,
        ),
    ] {
        let src = format!("fn transform(row) {{ {body} row }}");
        let c = inline(Stage::Pre, name, &src, "");
        let started = Instant::now();
        let e = run_pre(&c, json!([{}])).expect_err(name);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name} took {:?}",
            started.elapsed()
        );
        assert_eq!(e.kind, kind, "{name}: {e}");
    }
}

#[test]
fn expensive_operations_hit_the_time_limit() {
    // Few operations, each sorting 10000 elements: the operation limit alone would let this
    // run for a long time.
    let c = inline(
        Stage::Pre,
        "sorter",
        "fn transform(row) { let a = []; a.pad(10000, 1); loop { a.sort(); a.reverse(); } row }",
        "{max_operations: 100000000, max_time_ms: 50}",
    );
    let started = Instant::now();
    let e = run_pre(&c, json!([{}])).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind, ErrorKind::Limit, "{e}");
    assert!(e.message.contains("max_time_ms (50 ms)"), "{e}");
    assert!(took >= Duration::from_millis(50), "took {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // the deadline is per call: the next row gets a fresh budget
    let c = inline(
        Stage::Pre,
        "quick",
        "fn transform(row) { row.n = 1; row }",
        "max_time_ms: 50",
    );
    let out = run_pre(&c, json!([{}, {}])).unwrap();
    assert_eq!(as_value(out), json!([{"n": 1}, {"n": 1}]));
}
