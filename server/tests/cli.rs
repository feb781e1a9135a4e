//! The `ferry` binary as a user runs it: config errors, flag/env overrides, the embedded demo,
//! graceful shutdown.

use ferry_e2e::{FerryProcess, run};
use std::path::Path;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

#[test]
fn bad_config_exits_nonzero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.yaml");
    std::fs::write(
        &cfg,
        "registry: {uri: /tmp}\nmodels: [churn@1]\nonnx_engin: ort\n",
    )
    .unwrap();
    let (status, out) = run(bin(), &["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert!(!status.success());
    assert!(
        out.contains("unknown field `onnx_engin`") && out.contains("ferry.yaml"),
        "{out}"
    );

    std::fs::write(&cfg, "registry: {uri: /tmp}\nmodels: [churn@1]\n").unwrap();
    let (status, out) = run(
        bin(),
        &["serve", "--config", cfg.to_str().unwrap()],
        &[("FERRY_QUEUE_CAPACITY", "0")],
    );
    assert!(!status.success());
    assert!(out.contains("`queue_capacity`"), "{out}");
}

#[test]
fn help_documents_flags_and_their_environment_variables() {
    let (status, out) = run(bin(), &["serve", "--help"], &[]);
    assert!(status.success());
    for needle in [
        "--config",
        "FERRY_CONFIG",
        "--onnx-engine",
        "FERRY_ONNX_ENGINE",
        "FERRY_ORT_LIB",
        "FERRY_MAX_BODY_BYTES",
        "FERRY_QUEUE_CAPACITY",
    ] {
        assert!(out.contains(needle), "{needle} missing from --help:\n{out}");
    }
}

#[test]
fn demo_serves_without_config_and_sigterm_exits_cleanly() {
    let ferry = FerryProcess::start(bin(), &["--onnx-engine", "tract"], &[]).unwrap();
    assert!(
        ferry.wait_ready(Duration::from_secs(60)),
        "{}",
        ferry.logs()
    );
    let row: Vec<String> = (0..30).map(|i| format!("{}", i as f32 / 10.0)).collect();
    let body = format!(r#"{{"instances": [[{}]]}}"#, row.join(","));
    let response = ferry
        .request("POST", "/v1/models/churn:predict", &body)
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.body.contains("\"probabilities\""),
        "{}",
        response.body
    );
    assert!(response.header("x-request-id").is_some());
    let logs = ferry.logs();
    assert!(logs.contains("embedded demo registry"), "{logs}");
    let status = ferry.terminate();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn environment_overrides_the_config_file() {
    let demo = ferry_server::demo::extract().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.yaml");
    // The file names a model that does not exist; FERRY_MODELS replaces the list.
    std::fs::write(
        &cfg,
        format!(
            "registry: {{uri: {}}}\nmodels: [missing@1]\nonnx_engine: tract\n",
            demo.path().display()
        ),
    )
    .unwrap();
    let ferry = FerryProcess::start(
        bin(),
        &["--config", cfg.to_str().unwrap()],
        &[("FERRY_MODELS", "mlp@1")],
    )
    .unwrap();
    assert!(
        ferry.wait_ready(Duration::from_secs(60)),
        "{}",
        ferry.logs()
    );
    assert_eq!(
        ferry
            .request("GET", "/v2/models/mlp/ready", "")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        ferry
            .request("GET", "/v2/models/missing", "")
            .unwrap()
            .status,
        404
    );
}
