//! `ferry models push | list | alias` as a user runs them, against a local directory and a
//! real S3 endpoint (moto on loopback; the AWS SDK is not mocked).

use ferry_e2e::{MotoServer, run};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

fn demo_model(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/registry/churn/1");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(src.join("model.onnx"), dir.join("model.onnx")).unwrap();
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("model.yaml")).unwrap()).unwrap();
    let m = manifest.as_object_mut().unwrap();
    // What a training job writes: no name, version or digest yet.
    for key in ["name", "version", "sha256"] {
        m.remove(key);
    }
    m.insert(
        "metadata".into(),
        serde_json::json!({"git_commit": "abc123", "training_data": "s3://data/churn/2024-06"}),
    );
    std::fs::write(dir.join("model.yaml"), manifest.to_string()).unwrap();
    dir.to_path_buf()
}

struct Registry {
    uri: String,
    envs: Vec<(&'static str, String)>,
}

impl Registry {
    fn ferry(&self, args: &[&str]) -> (bool, String) {
        let mut full = vec!["models", "--registry", &self.uri];
        full.extend_from_slice(args);
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, out) = run(bin(), &full, &envs);
        (status.success(), out)
    }

    fn list_json(&self, name: &str) -> Value {
        let (ok, out) = self.ferry(&["list", name, "--json"]);
        assert!(ok, "{out}");
        let start = out.find('[').expect("JSON output");
        serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

fn round_trip(registry: &Registry, work: &Path) {
    let model = demo_model(&work.join("churn"));
    let model = model.to_str().unwrap();

    let (ok, out) = registry.ferry(&["push", model, "--name", "churn", "--alias", "champion"]);
    assert!(ok, "{out}");
    assert!(out.contains("Published churn@1"), "{out}");
    let (ok, out) = registry.ferry(&["push", model, "--name", "churn"]);
    assert!(ok && out.contains("Published churn@2"), "{out}");

    // Versions are immutable: pushing an existing one fails cleanly and changes nothing.
    let (ok, out) = registry.ferry(&["push", model, "--name", "churn", "--version", "1"]);
    assert!(!ok, "{out}");
    assert!(out.contains("version 1 already exists"), "{out}");

    let (ok, out) = registry.ferry(&["alias", "churn", "challenger", "2"]);
    assert!(ok, "{out}");
    let (ok, out) = registry.ferry(&["alias", "churn", "challenger", "9"]);
    assert!(!ok && out.contains("no version 9"), "{out}");

    let listed = registry.list_json("churn");
    let versions = listed[0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{listed}");
    assert_eq!(listed[0]["aliases"]["champion"], 1);
    assert_eq!(listed[0]["aliases"]["challenger"], 2);
    assert_eq!(versions[0]["aliases"][0], "champion");
    assert_eq!(versions[0]["metadata"]["git_commit"], "abc123");
    assert!(versions[0]["size"].as_u64().unwrap() > 50_000, "{listed}");
    assert!(
        versions[0]["created"].as_u64().unwrap() > 1_600_000_000,
        "{listed}"
    );

    let (ok, table) = registry.ferry(&["list"]);
    assert!(ok, "{table}");
    assert!(
        table.contains("champion -> 1") && table.contains("git_commit"),
        "{table}"
    );

    // The directory's model.yaml now records what was published last.
    let written = std::fs::read_to_string(Path::new(model).join("model.yaml")).unwrap();
    assert!(
        written.contains("name: churn") && written.contains("version: 2"),
        "{written}"
    );
}

#[test]
fn push_list_alias_round_trip_on_a_local_registry() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("registry");
    std::fs::create_dir_all(&root).unwrap();
    let registry = Registry {
        uri: root.to_str().unwrap().to_string(),
        envs: Vec::new(),
    };
    round_trip(&registry, dir.path());
}

#[test]
fn push_list_alias_round_trip_on_s3() {
    let moto = MotoServer::start().expect("an S3 endpoint for the test");
    moto.create_bucket("models").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry {
        uri: "s3://models/prod/registry".into(),
        envs: moto.env(),
    };
    round_trip(&registry, dir.path());
}

#[test]
fn concurrent_pushes_get_distinct_versions_on_s3() {
    let moto = MotoServer::start().expect("an S3 endpoint for the test");
    moto.create_bucket("race").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let envs = moto.env();
    let pushers: Vec<_> = (0..3)
        .map(|i| {
            let model = demo_model(&dir.path().join(format!("m{i}")));
            let envs = envs.clone();
            std::thread::spawn(move || {
                let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                run(
                    bin(),
                    &[
                        "models",
                        "--registry",
                        "s3://race",
                        "push",
                        model.to_str().unwrap(),
                        "--name",
                        "fraud",
                    ],
                    &envs,
                )
            })
        })
        .collect();
    for pusher in pushers {
        let (status, out) = pusher.join().unwrap();
        assert!(status.success(), "{out}");
    }
    let registry = Registry {
        uri: "s3://race".into(),
        envs,
    };
    let listed = registry.list_json("fraud");
    let versions: Vec<u64> = listed[0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions.len(), 3, "every push is its own version: {listed}");
}

#[test]
fn s3_without_a_region_is_a_clear_error() {
    let moto = MotoServer::start().expect("an S3 endpoint for the test");
    let envs: Vec<(&str, &str)> = vec![
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_REGION", ""),
        ("AWS_DEFAULT_REGION", ""),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let (status, out) = run(
        bin(),
        &["models", "--registry", "s3://models", "list"],
        &envs,
    );
    assert!(!status.success());
    assert!(out.contains("AWS_REGION"), "{out}");
}
