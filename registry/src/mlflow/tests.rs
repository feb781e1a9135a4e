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
        assert!(!text.contains("secret") || uri.contains("secret") && text.contains(uri));
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
