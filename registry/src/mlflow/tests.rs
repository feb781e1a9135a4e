use super::*;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| vars.get(k).cloned()
}

#[test]
fn parses_registry_uris() {
    let e = Endpoint::parse("mlflow+http://127.0.0.1:5000", &env(&[])).unwrap();
    assert_eq!(e.base.as_str(), "http://127.0.0.1:5000/");
    assert_eq!(e.auth, Auth::None);
    assert_eq!(e.display(), "mlflow+http://127.0.0.1:5000");
    let e = Endpoint::parse("mlflow+https://mlflow.example.com/tracking", &env(&[])).unwrap();
    assert_eq!(e.base.as_str(), "https://mlflow.example.com/tracking/");
    // `mlflow` takes the server from the environment, as MLflow's clients do.
    let e = Endpoint::parse(
        "mlflow",
        &env(&[("MLFLOW_TRACKING_URI", "http://mlflow:5000/")]),
    )
    .unwrap();
    assert_eq!(e.base.as_str(), "http://mlflow:5000/");
    assert!(is_mlflow_uri("mlflow") && is_mlflow_uri("mlflow+http://x:1"));
    assert!(!is_mlflow_uri("s3://mlflow/x") && !is_mlflow_uri("mlflow-models"));
}

#[test]
fn refuses_bad_uris_naming_what_to_write() {
    for (uri, needle) in [
        ("mlflow+ftp://x", "mlflow+http://HOST:PORT"),
        ("mlflow+http://", "mlflow+http"),
        (
            "mlflow+http://user:secret@host:5000",
            "MLFLOW_TRACKING_PASSWORD",
        ),
        ("mlflow+http://host:5000/?x=1", "query"),
        ("mlflow+http://host:notaport", "mlflow+http"),
    ] {
        let err = Endpoint::parse(uri, &env(&[])).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, RegistryError::InvalidUri { .. }),
            "{uri}: {text}"
        );
        assert!(text.contains(needle), "{uri}: {needle:?} not in {text}");
        assert!(
            !text.contains("secret"),
            "{uri}: the password is shown: {text}"
        );
    }
    let err = Endpoint::parse("mlflow", &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("MLFLOW_TRACKING_URI"), "{err}");
    let err = Endpoint::parse(
        "mlflow",
        &env(&[("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("http:// or https://"), "{err}");
}

#[test]
fn reads_credentials_like_mlflow_clients() {
    let uri = "mlflow+https://mlflow.example.com";
    let e = Endpoint::parse(uri, &env(&[("MLFLOW_TRACKING_TOKEN", "tok")])).unwrap();
    assert_eq!(e.auth, Auth::Bearer("tok".into()));
    // Username and password win over a token, as in mlflow.utils.rest_utils.
    let e = Endpoint::parse(
        uri,
        &env(&[
            ("MLFLOW_TRACKING_TOKEN", "tok"),
            ("MLFLOW_TRACKING_USERNAME", "ann"),
            ("MLFLOW_TRACKING_PASSWORD", "pw"),
        ]),
    )
    .unwrap();
    assert_eq!(
        e.auth,
        Auth::Basic {
            username: "ann".into(),
            password: "pw".into()
        }
    );
    assert!(
        !format!("{e:?}").contains("pw"),
        "secrets stay out of Debug"
    );
    let err = Endpoint::parse(uri, &env(&[("MLFLOW_TRACKING_USERNAME", "ann")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("MLFLOW_TRACKING_PASSWORD is not"), "{err}");
    let e = Endpoint::parse(uri, &env(&[("MLFLOW_TRACKING_INSECURE_TLS", "true")])).unwrap();
    assert!(e.insecure_tls);
    let err = Endpoint::parse(uri, &env(&[("MLFLOW_TRACKING_INSECURE_TLS", "yes please")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("MLFLOW_TRACKING_INSECURE_TLS"), "{err}");
}

#[test]
fn parses_model_uris_for_import() {
    let (registry, model) = parse_model_uri("mlflow+http://127.0.0.1:5000/churn/3").unwrap();
    assert_eq!(registry, "mlflow+http://127.0.0.1:5000");
    assert_eq!(model.to_string(), "churn@3");
    let (registry, model) = parse_model_uri("mlflow+https://h/tracking/churn/champion/").unwrap();
    assert_eq!(registry, "mlflow+https://h/tracking");
    assert_eq!(model.selector, Selector::Alias("champion".into()));
    let (registry, model) = parse_model_uri("models:/churn/2").unwrap();
    assert_eq!(
        (registry.as_str(), model.to_string().as_str()),
        ("mlflow", "churn@2")
    );
    let (_, model) = parse_model_uri("models:/churn@champion").unwrap();
    assert_eq!(model.to_string(), "churn@champion");
    for bad in [
        "mlflow+http://127.0.0.1:5000/churn",
        "mlflow+http://127.0.0.1:5000",
        "models:/churn",
        "models:/Churn/1",
        "http://127.0.0.1:5000/churn/1",
        "mlflow+http://h/churn/0",
    ] {
        let err = parse_model_uri(bad).unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidUri { .. }),
            "{bad}: {err}"
        );
    }
}

/// A stand-in for a tracking server: answers each request with what `route` returns for its
/// path and query (status, body, and a Content-Length to announce instead of the body's).
mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Reply {
        pub status: u16,
        pub body: Vec<u8>,
        pub announce: Option<usize>,
    }

    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            body: body.to_string().into_bytes(),
            announce: None,
        }
    }

    pub fn bytes(body: &[u8]) -> Reply {
        Reply {
            status: 200,
            body: body.to_vec(),
            announce: None,
        }
    }

    pub type Route = dyn Fn(&str, &HashMap<String, String>) -> Reply + Send + Sync;

    pub async fn serve(route: Arc<Route>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let route = route.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let url = reqwest::Url::parse(&format!("http://x{target}")).unwrap();
                    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
                    seen.lock().unwrap().push(url.path().to_string());
                    let reply = route(url.path(), &query);
                    let length = reply.announce.unwrap_or(reply.body.len());
                    let response = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {length}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
                        reply.status
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.write_all(&reply.body).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (format!("mlflow+http://{addr}"), hits)
    }
}

/// What `Artifacts` is asked for to replace the get-download-uri answer.
const DOWNLOAD_URI: &str = "<download-uri>";

/// Replies that replace an artifact file's (`None`: the file as logged).
type Artifacts = Arc<dyn Fn(&str) -> Option<fake::Reply> + Send + Sync>;

const MLMODEL: &str =
    "flavors:\n  onnx:\n    data: model.onnx\n  python_function:\n    loader_module: mlflow.onnx\n";

/// A server with model `churn`: version 1 (READY, alias champion) whose artifacts are an
/// MLmodel and the sample graph with two external data files; version 2 still registering.
/// `created` is version 1's creation time; `artifact` overrides the files' replies.
fn churn_server(
    created: Arc<std::sync::atomic::AtomicI64>,
    artifact: Artifacts,
) -> Arc<fake::Route> {
    use fake::{bytes, json};
    use serde_json::json as j;
    let onnx = crate::onnx_graph::tests::sample_model();
    Arc::new(move |path, query| {
        let created = created.load(std::sync::atomic::Ordering::SeqCst);
        let version = |v: &str, status: &str| {
            j!({"model_version": {"name": "churn", "version": v, "source": "models:/m-1",
                "run_id": "r1", "status": status, "creation_timestamp": created}})
        };
        let name = query.get("name").map(String::as_str);
        let files = "/api/2.0/mlflow-artifacts/artifacts/0/models/m-1/artifacts/";
        match path {
            _ if name.is_some_and(|n| n != "churn") => json(
                404,
                j!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such model"}),
            ),
            "/api/2.0/mlflow/registered-models/alias" => match query["alias"].as_str() {
                "champion" => json(200, version("1", "READY")),
                "next" => json(200, version("2", "PENDING_REGISTRATION")),
                _ => json(
                    400,
                    j!({"error_code": "INVALID_PARAMETER_VALUE", "message": "alias not found"}),
                ),
            },
            "/api/2.0/mlflow/registered-models/get" => json(
                200,
                j!({"registered_model": {"name": "churn", "aliases": [
                    {"alias": "champion", "version": "1"}, {"alias": "next", "version": "2"}]}}),
            ),
            "/api/2.0/mlflow/model-versions/get" => match query["version"].as_str() {
                "1" => json(200, version("1", "READY")),
                "2" => json(200, version("2", "PENDING_REGISTRATION")),
                _ => json(
                    404,
                    j!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such version"}),
                ),
            },
            "/api/2.0/mlflow/model-versions/search" => json(
                200,
                j!({"model_versions": [version("1", "READY")["model_version"],
                                       version("2", "PENDING_REGISTRATION")["model_version"]]}),
            ),
            "/api/2.0/mlflow/model-versions/get-download-uri" => artifact(DOWNLOAD_URI)
                .unwrap_or_else(|| {
                    json(
                        200,
                        j!({"artifact_uri": "mlflow-artifacts:/0/models/m-1/artifacts"}),
                    )
                }),
            "/api/2.0/mlflow-artifacts/artifacts" => {
                // The listing agrees with the files served (a replaced file's own size).
                let size = |file: &str, logged: usize| match artifact(file) {
                    Some(r) if r.status == 200 => r.announce.unwrap_or(r.body.len()),
                    _ => logged,
                };
                json(
                    200,
                    j!({"files": [
                        {"path": "MLmodel", "is_dir": false, "file_size": MLMODEL.len()},
                        {"path": "model.onnx", "is_dir": false,
                         "file_size": size("model.onnx", onnx.len())},
                        {"path": "weights.data", "is_dir": false,
                         "file_size": size("weights.data", 7)},
                        {"path": "sub.data", "is_dir": false, "file_size": "3"}]}),
                )
            }
            _ if path.starts_with(files) => {
                let file = &path[files.len()..];
                if let Some(reply) = artifact(file) {
                    return reply;
                }
                match file {
                    "MLmodel" => bytes(MLMODEL.as_bytes()),
                    "model.onnx" => bytes(&onnx),
                    "weights.data" => bytes(b"weights"),
                    "sub.data" => bytes(b"sub"),
                    _ => json(
                        404,
                        j!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}),
                    ),
                }
            }
            _ => json(
                404,
                j!({"error_code": "ENDPOINT_NOT_FOUND", "message": path}),
            ),
        }
    })
}

async fn open_fake(
    artifact: Artifacts,
) -> (
    crate::Registry,
    tempfile::TempDir,
    Arc<std::sync::atomic::AtomicI64>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let created = Arc::new(std::sync::atomic::AtomicI64::new(1_700_000_000_000));
    let (uri, hits) = fake::serve(churn_server(created.clone(), artifact)).await;
    let cache = tempfile::tempdir().unwrap();
    let mut options = crate::RegistryOptions::new(uri);
    options.cache_dir = Some(cache.path().to_path_buf());
    let registry = crate::Registry::open(&options).await.unwrap();
    (registry, cache, created, hits)
}

use std::sync::Arc;

#[tokio::test]
async fn resolves_aliases_versions_and_reports_what_exists() {
    let (registry, _cache, _, _) = open_fake(Arc::new(|_| None)).await;
    let resolve = |r: &str| {
        let registry = registry.clone();
        let model = ModelRef::parse(r).unwrap();
        async move { registry.resolve(&model).await }
    };
    assert_eq!(resolve("churn@champion").await.unwrap(), 1);
    assert_eq!(resolve("churn@1").await.unwrap(), 1);
    assert_eq!(
        resolve("churn").await.unwrap(),
        1,
        "the highest READY version"
    );
    let err = resolve("churn@gone").await.unwrap_err();
    assert!(
        matches!(&err, RegistryError::AliasNotFound { available, .. } if available == &["champion", "next"]),
        "{err}"
    );
    let err = resolve("churn@9").await.unwrap_err();
    assert!(
        matches!(&err, RegistryError::VersionNotFound { available, .. } if available == &[1, 2]),
        "{err}"
    );
    let err = resolve("fraud@champion").await.unwrap_err();
    assert!(matches!(err, RegistryError::ModelNotFound { .. }), "{err}");
    let err = resolve("churn@next").await.unwrap_err();
    assert!(err.to_string().contains("PENDING_REGISTRATION"), "{err}");
    assert!(!err.is_unavailable());
    assert!(registry.set_alias("churn", "champion", 1).await.is_err());
}

#[tokio::test]
async fn downloads_the_onnx_flavor_into_the_verified_cache() {
    let (registry, cache, created, hits) = open_fake(Arc::new(|_| None)).await;
    let model = registry.fetch("churn", 1).await.unwrap();
    assert!(!model.from_cache);
    let m = &model.manifest;
    assert_eq!(m.artifact, "model.onnx");
    assert_eq!(
        m.files.keys().collect::<Vec<_>>(),
        ["MLmodel", "sub.data", "weights.data"]
    );
    assert_eq!(
        m.files["weights.data"],
        hex::encode(Sha256::digest(b"weights"))
    );
    assert_eq!(m.inputs[0].name, "X");
    assert_eq!(m.metadata["mlflow"]["signature_from"], "onnx graph");
    assert_eq!(m.metadata["mlflow"]["run_id"], "r1");
    assert!(model.dir.starts_with(cache.path()));
    assert!(model.dir.join(crate::VERIFIED_MARKER).is_file());
    // Again: one REST call to check the registration, no download.
    hits.lock().unwrap().clear();
    let again = registry.fetch("churn", 1).await.unwrap();
    assert!(again.from_cache);
    assert_eq!(
        *hits.lock().unwrap(),
        ["/api/2.0/mlflow/model-versions/get"]
    );
    // The version was deleted and registered again: another model under the same number.
    created.store(1_800_000_000_000, std::sync::atomic::Ordering::SeqCst);
    assert!(!registry.fetch("churn", 1).await.unwrap().from_cache);
}

#[tokio::test]
async fn truncated_missing_and_foreign_artifacts_leave_nothing_in_the_cache() {
    let cases: [(&str, Artifacts, &str); 3] = [
        (
            "truncated",
            Arc::new(|f: &str| {
                (f == "weights.data").then(|| fake::Reply {
                    status: 200,
                    body: b"wei".to_vec(),
                    announce: Some(7),
                })
            }),
            "unreachable",
        ),
        (
            "missing",
            Arc::new(|f: &str| {
                (f == "model.onnx").then(|| fake::json(404, serde_json::json!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"})))
            }),
            "does not exist",
        ),
        (
            "not onnx",
            Arc::new(|f: &str| (f == "model.onnx").then(|| fake::bytes(b"\xff\xff garbage"))),
            "not an ONNX model",
        ),
    ];
    for (case, artifact, needle) in cases {
        let (registry, cache, _, _) = open_fake(artifact).await;
        let err = registry.fetch("churn", 1).await.unwrap_err();
        assert!(err.to_string().contains(needle), "{case}: {err}");
        let leftovers: Vec<_> = walk(cache.path())
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        assert!(leftovers.is_empty(), "{case}: {leftovers:?}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[tokio::test]
async fn reads_artifacts_from_a_shared_file_system() {
    let artifacts = tempfile::tempdir().unwrap();
    std::fs::write(artifacts.path().join("MLmodel"), MLMODEL).unwrap();
    std::fs::write(
        artifacts.path().join("model.onnx"),
        crate::onnx_graph::tests::sample_model(),
    )
    .unwrap();
    std::fs::write(artifacts.path().join("weights.data"), b"weights").unwrap();
    std::fs::write(artifacts.path().join("sub.data"), b"sub").unwrap();
    let uri = format!("file://{}", artifacts.path().display());
    let (registry, _cache, _, _) = open_fake(Arc::new(move |f: &str| {
        (f == DOWNLOAD_URI).then(|| fake::json(200, serde_json::json!({"artifact_uri": uri})))
    }))
    .await;
    let model = registry.fetch("churn", 1).await.unwrap();
    assert_eq!(
        std::fs::read(model.dir.join("weights.data")).unwrap(),
        b"weights"
    );
    assert!(
        model.manifest.metadata["mlflow"]["artifact_uri"]
            .as_str()
            .unwrap()
            .starts_with("file://")
    );
    // A store ferry cannot read is named in the error.
    let (registry, cache, _, _) = open_fake(Arc::new(|f: &str| {
        (f == DOWNLOAD_URI).then(|| {
            fake::json(
                200,
                serde_json::json!({"artifact_uri": "gs://bucket/0/m-1/artifacts"}),
            )
        })
    }))
    .await;
    let err = registry.fetch("churn", 1).await.unwrap_err().to_string();
    assert!(
        err.contains("gs://bucket/0/m-1/artifacts") && err.contains("cannot read"),
        "{err}"
    );
    assert!(walk(cache.path()).iter().all(|p| !p.is_file()));
}
