//! Feature-store bench (run by loadtests/features_join.sh against a private redis-server):
//! 1. writes an offline Parquet dataset, materializes it into Redis and reports rows/s;
//! 2. measures the serving join (`JoinPlan::join`: one pipelined Redis round trip + matrix
//!    assembly) for 1 and 10 entities per request, sequentially, and reports p50/p99.
//!
//! Usage: feature_bench REDIS_URL [ROWS] [ENTITIES] [ITERATIONS]

use arrow_array::{
    Float32Array, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use ferry_features::materialize::{MaterializeOptions, Quiet, materialize_view};
use ferry_features::offline::OfflineSource;
use ferry_features::online::RedisStore;
use ferry_features::{FeatureRepo, JoinPlan, OnMissing, OnlineFeatures};
use parquet::arrow::ArrowWriter;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REPO: &str = r#"
project: bench
entities:
  - {name: user, join_key: user_id}
views:
  - name: user_stats
    entity: user
    features:
      - {name: visits_7d, dtype: float32, default: 0}
      - {name: spend_30d, dtype: float64, default: 0}
      - {name: sessions, dtype: float32, default: 0}
    source: {path: data/, timestamp: event_ts}
"#;

fn write_data(dir: &std::path::Path, rows: usize, entities: usize) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new(
            "event_ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("visits_7d", DataType::Float32, true),
        Field::new("spend_30d", DataType::Float64, true),
        Field::new("sessions", DataType::Float32, true),
    ]));
    let files = 4;
    for f in 0..files {
        let file = std::fs::File::create(dir.join(format!("data/part-{f}.parquet"))).unwrap();
        let mut w = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        let per_file = rows / files;
        for chunk in (0..per_file).step_by(65536) {
            let n = 65536.min(per_file - chunk);
            let ids: Vec<usize> = (0..n)
                .map(|i| (f * per_file + chunk + i) * 7919 % entities)
                .collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        ids.iter().map(|i| format!("u{i}")),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        (0..n).map(|i| 1_700_000_000_000 + (f * per_file + chunk + i) as i64),
                    )),
                    Arc::new(Float32Array::from_iter_values(
                        ids.iter().map(|&i| (i % 17) as f32),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        ids.iter().map(|&i| i as f64 * 0.5),
                    )),
                    Arc::new(Float32Array::from_iter_values(
                        ids.iter().map(|&i| (i % 5) as f32),
                    )),
                ],
            )
            .unwrap();
            w.write(&batch).unwrap();
        }
        w.close().unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .expect("usage: feature_bench REDIS_URL [ROWS] [ENTITIES] [ITERATIONS]");
    let rows: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let entities: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(100_000);
    let iterations: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(5000);

    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path(), rows, entities);
    std::fs::write(dir.path().join("features.yaml"), REPO).unwrap();
    let repo = FeatureRepo::load(&dir.path().join("features.yaml")).unwrap();

    let store = RedisStore::connect(url, Duration::from_secs(30))
        .await
        .unwrap();
    let source = OfflineSource::open(&repo.views[0], &Default::default())
        .await
        .unwrap();
    let report = materialize_view(
        &repo,
        &repo.views[0],
        &source,
        &store,
        &MaterializeOptions {
            full: true,
            ..Default::default()
        },
        &Quiet,
    )
    .await
    .unwrap();
    println!(
        "materialize: {} rows, {} entities, {} keys written in {:.2} s = {:.0} rows/s",
        report.rows_read,
        entities,
        report.keys_written,
        report.seconds,
        report.rows_per_second()
    );

    let serving = RedisStore::connect(url, Duration::from_millis(50))
        .await
        .unwrap();
    let online = OnlineFeatures {
        repo: Arc::new(repo.clone()),
        store: Arc::new(serving),
        timeout: Duration::from_millis(50),
        on_missing: OnMissing::Default,
    };
    let columns: Vec<String> = [
        "user_stats.visits_7d",
        "user_stats.spend_30d",
        "user_stats.sessions",
        "request.amount",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plan = JoinPlan::new(Some(&repo), "user_id", &columns).unwrap();
    for n in [1usize, 10] {
        let mut times = Vec::with_capacity(iterations);
        for it in 0..iterations + 200 {
            let rows: Vec<Map<String, Value>> = (0..n)
                .map(|k| {
                    let v = json!({"user_id": format!("u{}", (it * 31 + k * 101) % entities), "amount": 1.5});
                    v.as_object().unwrap().clone()
                })
                .collect();
            let started = Instant::now();
            let joined = plan.join(Some(&online), &rows).await.unwrap();
            let elapsed = started.elapsed();
            assert_eq!(joined.table.unwrap().defaulted, 0);
            if it >= 200 {
                times.push(elapsed);
            }
        }
        times.sort();
        println!(
            "join {n:>2} entities: p50 {:.0} µs, p99 {:.0} µs ({iterations} sequential requests)",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }
}
