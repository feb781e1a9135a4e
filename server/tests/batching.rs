//! Dynamic batching with real engines: concurrent requests merged by the scheduler give the
//! same numbers (within 1e-6) as running each request alone, on ONNX Runtime and tract.

use ferry_models::{BatchPolicy, ComputeQueue, ModelMetrics, QueueOptions};
use ferry_registry::{Registry, RegistryOptions};
use ferry_runtimes::{LoadOptions, OnnxEngine, Runtime, Tensor, TensorData, load_onnx};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn ort_library() -> PathBuf {
    if let Ok(p) = std::env::var("FERRY_ORT_LIB") {
        return PathBuf::from(p);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/find-ort-lib.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the onnxruntime wheel is needed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

async fn mlp(engine: OnnxEngine) -> Arc<dyn Runtime> {
    if engine == OnnxEngine::Ort {
        ferry_runtimes::ort::init(&ort_library()).expect("ONNX Runtime loads");
    }
    let demo = ferry_server::demo::extract().unwrap();
    let registry = Registry::open(&RegistryOptions::new(demo.path().to_str().unwrap()))
        .await
        .unwrap();
    let model = registry.fetch("mlp", 1).await.unwrap();
    let options = LoadOptions {
        onnx_engine: engine,
        ..LoadOptions::default()
    };
    load_onnx(
        &model.artifact_path(),
        &model.manifest.signature(),
        &options,
    )
    .unwrap()
}

fn request(caller: usize) -> Vec<Tensor> {
    let rows = 1 + caller % 4;
    let data = (0..rows * 64)
        .map(|k| ((caller * 131 + k * 17) % 97) as f32 / 48.5 - 1.0)
        .collect();
    vec![Tensor::new("X", vec![rows, 64], TensorData::Fp32(data)).unwrap()]
}

async fn check(engine: OnnxEngine) {
    let runtime = mlp(engine).await;
    let metrics = ModelMetrics::new();
    let policy = BatchPolicy {
        max_batch_rows: 32,
        max_delay: Duration::from_micros(500),
        preferred_rows: vec![],
    };
    let options = QueueOptions {
        threads: 1,
        capacity: 4096,
        batching: Some(policy),
        default_timeout: None,
        inline_below: None,
        // Every caller is answered, however long the burst queues.
        shed_after_calls: None,
        shed_min_wait: Duration::ZERO,
    };
    let queue =
        Arc::new(ComputeQueue::start("mlp", 1, runtime.clone(), options, metrics.clone()).unwrap());
    let callers = 300;
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let q = queue.clone();
            tokio::spawn(async move { (c, q.submit(request(c)).await.unwrap()) })
        })
        .collect();
    let mut worst = 0f32;
    for task in tasks {
        let (c, batched) = task.await.unwrap();
        let alone = runtime.run(&request(c)).unwrap();
        assert_eq!(batched[0].shape, alone[0].shape, "caller {c}");
        let (TensorData::Fp32(a), TensorData::Fp32(b)) = (&batched[0].data, &alone[0].data) else {
            panic!()
        };
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs() / y.abs().max(1.0));
        }
    }
    assert!(
        worst <= 1e-6,
        "{engine:?}: batching changed results by {worst}"
    );
    let batches = metrics
        .batch_rows
        .with_label_values(&["mlp", "1"])
        .get_sample_count();
    assert!(
        batches < callers as u64,
        "{engine:?}: requests were merged ({batches} engine calls for {callers} requests)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_keeps_results_on_tract() {
    check(OnnxEngine::Tract).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_keeps_results_on_onnx_runtime() {
    check(OnnxEngine::Ort).await;
}
