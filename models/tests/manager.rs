//! The model manager over a real local registry (the demo models, on tract): what it serves,
//! how a moved alias swaps versions, what a version that cannot load leaves serving, the
//! manifest `features` check, and the control API's unload.

use ferry_features::FeatureRepo;
use ferry_models::{
    LookupError, ModelManager, ModelMetrics, ModelSettings, ModelsConfig, SyncOutcome,
};
use ferry_registry::{Registry, RegistryOptions};
use ferry_runtimes::OnnxEngine;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/demo")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A writable copy of the demo registry and a manager serving `models` from it.
async fn serving(
    models: &[&str],
    features: Option<FeatureRepo>,
) -> (Arc<ModelManager>, ModelMetrics, Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&demo().join("registry"), dir.path());
    let registry = Registry::open(&RegistryOptions::new(dir.path().to_str().unwrap()))
        .await
        .unwrap();
    let mut config = ModelsConfig::new(models.iter().map(|m| ModelSettings::new(*m)).collect());
    config.onnx_engine = OnnxEngine::Tract;
    let metrics = ModelMetrics::new();
    let manager = ModelManager::new(registry.clone(), config, metrics.clone())
        .with_feature_repo(features.map(Arc::new));
    (Arc::new(manager), metrics, registry, dir)
}

/// Publishes churn@1's files again as the next version.
async fn republish_churn(registry: &Registry, registry_dir: &Path) -> u64 {
    let work = tempfile::tempdir().unwrap();
    copy_dir(&registry_dir.join("churn/1"), work.path());
    registry
        .publish(work.path(), "churn", None)
        .await
        .unwrap()
        .version
}

#[tokio::test]
async fn serves_configured_models_and_explains_what_it_cannot_serve() {
    let (manager, metrics, _registry, _dir) = serving(&["churn@champion", "mlp@1"], None).await;
    assert!(
        !manager.is_ready(),
        "nothing is loaded before load_configured"
    );
    manager.load_configured().await;
    assert!(manager.is_ready());

    let churn = manager.lookup("churn", None).unwrap();
    assert_eq!((churn.name.as_str(), churn.version), ("churn", 1));
    assert_eq!(manager.lookup("mlp", Some("1")).unwrap().version, 1);
    assert_eq!(
        metrics.model_ready.with_label_values(&["churn", "1"]).get(),
        1
    );
    assert_eq!(
        metrics
            .model_loads
            .with_label_values(&["mlp", "1", "ready"])
            .get(),
        1
    );

    match manager.lookup("fraud", None) {
        Err(LookupError::UnknownModel { available, .. }) => {
            assert_eq!(available, vec!["churn", "mlp"])
        }
        other => panic!("{:?}", other.map(|m| m.version)),
    }
    match manager.lookup("churn", Some("7")) {
        Err(LookupError::UnknownVersion { loaded, .. }) => assert_eq!(loaded, vec![1]),
        other => panic!("{:?}", other.map(|m| m.version)),
    }
    let index = manager.index();
    assert!(
        index.iter().all(|e| e.state == "READY"),
        "{:?}",
        index.iter().map(|e| (&e.name, e.state)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_moved_alias_swaps_in_the_new_version_and_retires_the_old_one() {
    let (manager, metrics, registry, dir) = serving(&["churn@champion"], None).await;
    manager.load_configured().await;
    let v2 = republish_churn(&registry, dir.path()).await;
    registry.set_alias("churn", "champion", v2).await.unwrap();

    let outcome = manager
        .sync(&ModelSettings::new("churn@champion"), false)
        .await
        .unwrap();
    assert_eq!(outcome, SyncOutcome::Serving(v2));
    assert_eq!(manager.lookup("churn", None).unwrap().version, v2);
    assert_eq!(manager.ready_versions("churn"), vec![v2]);
    assert_eq!(
        metrics.model_ready.with_label_values(&["churn", "1"]).get(),
        0,
        "the retired version is no longer reported ready"
    );
}

#[tokio::test]
async fn a_version_that_fails_verification_leaves_the_previous_one_serving() {
    let (manager, metrics, registry, dir) = serving(&["churn@champion"], None).await;
    manager.load_configured().await;
    let bad = republish_churn(&registry, dir.path()).await;
    // The artifact no longer matches the digest its manifest records.
    std::fs::write(
        dir.path().join(format!("churn/{bad}/model.onnx")),
        b"not a model",
    )
    .unwrap();
    registry.set_alias("churn", "champion", bad).await.unwrap();

    let outcome = manager
        .sync(&ModelSettings::new("churn@champion"), false)
        .await
        .unwrap();
    let SyncOutcome::Failed { version, reason } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(version, bad);
    assert!(reason.contains("sha256 digest mismatch"), "{reason}");
    assert_eq!(manager.lookup("churn", None).unwrap().version, 1);
    assert!(manager.is_ready());
    assert!(
        manager
            .index()
            .iter()
            .any(|e| e.version == Some(bad.to_string()) && e.state == "UNAVAILABLE")
    );
    assert_eq!(
        metrics
            .model_loads
            .with_label_values(&["churn", &bad.to_string(), "failed"])
            .get(),
        1
    );
}

#[tokio::test]
async fn a_features_section_the_server_cannot_serve_fails_the_load() {
    let (manager, _metrics, _registry, _dir) = serving(&["risk@1"], None).await;
    manager.load_configured().await;
    assert!(!manager.is_ready());
    match manager.lookup("risk", None) {
        Err(LookupError::NotReady { reason, .. }) => assert!(
            reason.contains("the server has no `features` config"),
            "{reason}"
        ),
        other => panic!("{:?}", other.map(|m| m.version)),
    }

    let repo = FeatureRepo::load(&demo().join("features/features.yaml")).unwrap();
    let (manager, _metrics, _registry, _dir) = serving(&["risk@1"], Some(repo)).await;
    manager.load_configured().await;
    assert_eq!(manager.lookup("risk", None).unwrap().version, 1);
}

#[tokio::test]
async fn unload_stops_serving_and_load_brings_the_model_back() {
    let (manager, _metrics, _registry, _dir) = serving(&["mlp@1"], None).await;
    manager.load_configured().await;
    assert_eq!(manager.control_unload("mlp").await.unwrap(), vec![1]);
    assert!(matches!(
        manager.lookup("mlp", None),
        Err(LookupError::UnknownModel { .. })
    ));
    assert!(!manager.is_ready(), "no model served means not ready");
    assert_eq!(manager.control_load("mlp").await.unwrap(), 1);
    assert!(manager.is_ready());
}
