//! Prediction capture against real destinations: a local directory and S3 (moto on loopback,
//! the AWS SDK is not mocked). Files are read back independently of the writer's encoder.

use bytes::Bytes;
use ferry_e2e::MotoServer;
use ferry_pipeline::PipelineMetrics;
use ferry_pipeline::capture::{Capture, CaptureConfig, CaptureFormat, CaptureRecord};
use ferry_registry::{S3Options, S3Store};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn config(destination: &str, format: CaptureFormat) -> CaptureConfig {
    CaptureConfig {
        sample_percent: 100.0,
        destination: destination.to_string(),
        format,
        max_batch_rows: 1000,
        flush_interval: "1h".into(),
        queue_capacity: 10_000,
    }
}

/// Row `i`: varied values, nested JSON, unicode, null features on every third row.
fn record(i: u64) -> CaptureRecord {
    CaptureRecord {
        request_id: format!("req-{}", i / 2),
        timestamp_ms: 1_764_000_000_000 + i as i64,
        endpoint: "churn".into(),
        variant: if i.is_multiple_of(2) {
            "champion"
        } else {
            "challenger"
        }
        .into(),
        model: "churn-model".into(),
        version: 3 + i % 2,
        shadow: i % 5 == 4,
        input: json!({"customer_id": format!("c{i}"), "tenure": i as f64 * 1.5, "tags": ["a", "é"]}),
        features: if i.is_multiple_of(3) {
            Value::Null
        } else {
            json!({"customer.spend_30d": i * 10, "customer.plan": "pro"})
        },
        output: json!({"score": 0.25, "label": i.is_multiple_of(2)}),
    }
}

/// What `record(i)` must look like in a file, written out by hand.
fn expected(i: u64) -> Value {
    let features = if i.is_multiple_of(3) {
        Value::Null
    } else {
        json!({"customer.spend_30d": i * 10, "customer.plan": "pro"})
    };
    json!({
        "request_id": format!("req-{}", i / 2),
        "timestamp_ms": 1_764_000_000_000_i64 + i as i64,
        "endpoint": "churn",
        "variant": if i.is_multiple_of(2) { "champion" } else { "challenger" },
        "model": "churn-model",
        "version": 3 + i % 2,
        "shadow": i % 5 == 4,
        "input": {"customer_id": format!("c{i}"), "tenure": i as f64 * 1.5, "tags": ["a", "é"]},
        "features": features,
        "output": {"score": 0.25, "label": i.is_multiple_of(2)},
    })
}

/// (key relative to the destination, contents) of every complete file under `root`, in write
/// order. Like a dataset reader, skips `.`-prefixed names: a write in progress.
fn local_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = local_files_and_temps(root)
        .into_iter()
        .filter(|(key, _)| !key.rsplit('/').next().unwrap().starts_with('.'))
        .collect::<Vec<_>>();
    files.sort_by_key(|(key, _)| file_order(key));
    files
}

/// Every file, temp files included.
fn local_files_and_temps(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let key = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((key, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort_by_key(|(key, _)| key.clone());
    out
}

/// Files sort by (unix_ms, seq) taken from `<unix_ms>-<replica>-<seq>.<ext>`.
fn file_order(key: &str) -> (i64, u64) {
    let name = key.rsplit('/').next().unwrap();
    let stem = name.split('.').next().unwrap();
    let parts: Vec<&str> = stem.split('-').collect();
    assert_eq!(parts.len(), 3, "file name {name}");
    (parts[0].parse().unwrap(), parts[2].parse().unwrap())
}

/// Checks the layout of `key`: `<endpoint>/date=YYYY-MM-DD/hour=HH/<ms>-<replica>-<seq>.<ext>`
/// with the write time between `from` and `to`.
fn assert_layout(key: &str, endpoint: &str, ext: &str, from: i64, to: i64) {
    let parts: Vec<&str> = key.split('/').collect();
    assert_eq!(parts.len(), 4, "{key}");
    assert_eq!(parts[0], endpoint, "{key}");
    let date = parts[1].strip_prefix("date=").expect(key);
    assert!(
        date.len() == 10 && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-',
        "{key}"
    );
    let hour: u32 = parts[2].strip_prefix("hour=").expect(key).parse().unwrap();
    assert!(hour < 24 && parts[2].len() == 7, "{key}");
    assert!(parts[3].ends_with(&format!(".{ext}")), "{key}");
    let (ms, _) = file_order(key);
    assert!(
        (from..=to).contains(&ms),
        "{key} written at {ms}, not in {from}..={to}"
    );
    // The date/hour partition is the write time in UTC: days since the epoch and hour of day.
    let (days, hour_of_day) = (ms / 86_400_000, (ms % 86_400_000) / 3_600_000);
    assert_eq!(hour as i64, hour_of_day, "{key}");
    assert_eq!(date, civil_date(days), "{key}");
}

/// Proleptic Gregorian date of `days` since 1970-01-01 (Hinnant's civil_from_days).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[test]
fn civil_date_reference_points() {
    assert_eq!(civil_date(0), "1970-01-01");
    assert_eq!(civil_date(19_782), "2024-02-29");
    assert_eq!(civil_date(20_000), "2024-10-04");
}

fn jsonl_rows(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.ends_with('\n'), "every line is terminated");
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Rows of a Parquet capture file as JSON objects, the JSON-text columns parsed.
fn parquet_rows(bytes: Vec<u8>) -> Vec<Value> {
    use arrow_array::{Array, BooleanArray, Int64Array, StringArray};
    use arrow_schema::DataType;
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "request_id",
                "timestamp_ms",
                "endpoint",
                "variant",
                "model",
                "version",
                "shadow",
                "input",
                "features",
                "output"
            ]
        );
        for field in schema.fields() {
            let want = match field.name().as_str() {
                "timestamp_ms" | "version" => DataType::Int64,
                "shadow" => DataType::Boolean,
                _ => DataType::Utf8,
            };
            assert_eq!(field.data_type(), &want, "{}", field.name());
        }
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let int = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        let shadow = batch
            .column_by_name("shadow")
            .unwrap()
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap()
            .clone();
        let json_text = |a: &StringArray, i: usize| -> Value {
            if a.is_null(i) {
                Value::Null
            } else {
                serde_json::from_str(a.value(i)).unwrap()
            }
        };
        let (input, features, output) = (text("input"), text("features"), text("output"));
        for i in 0..batch.num_rows() {
            rows.push(json!({
                "request_id": text("request_id").value(i),
                "timestamp_ms": int("timestamp_ms").value(i),
                "endpoint": text("endpoint").value(i),
                "variant": text("variant").value(i),
                "model": text("model").value(i),
                "version": int("version").value(i),
                "shadow": shadow.value(i),
                "input": json_text(&input, i),
                "features": json_text(&features, i),
                "output": json_text(&output, i),
            }));
        }
    }
    rows
}

fn rows_of(format: CaptureFormat, bytes: Vec<u8>) -> Vec<Value> {
    match format {
        CaptureFormat::Jsonl => jsonl_rows(&bytes),
        CaptureFormat::Parquet => parquet_rows(bytes),
    }
}

fn count(metrics: &PipelineMetrics, endpoint: &str, outcome: &str) -> u64 {
    metrics
        .capture_records
        .with_label_values(&[endpoint, outcome])
        .get()
}

/// Polls until `done` or 20 s pass (the machine may be busy building).
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

async fn local_round_trip(format: CaptureFormat, ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path().to_str().unwrap(), format);
    c.max_batch_rows = 4;
    let metrics = PipelineMetrics::new();
    let from = now_ms();
    let capture = Capture::start("churn", &c, &S3Options::default(), metrics.clone())
        .await
        .unwrap();
    // Requests of 3, 1 and 6 rows: 10 rows -> batches of 4, 4 and (at shutdown) 2.
    capture.record((0..3).map(record).collect());
    capture.record(vec![record(3)]);
    capture.record((4..10).map(record).collect());
    capture.shutdown().await;
    let to = now_ms();

    let files = local_files(dir.path());
    assert_eq!(
        local_files_and_temps(dir.path()).len(),
        files.len(),
        "no temp files are left"
    );
    let sizes: Vec<usize> = files
        .iter()
        .map(|(key, bytes)| {
            assert_layout(key, "churn", ext, from, to);
            rows_of(format, bytes.clone()).len()
        })
        .collect();
    assert_eq!(
        sizes,
        [4, 4, 2],
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let rows: Vec<Value> = files
        .into_iter()
        .flat_map(|(_, bytes)| rows_of(format, bytes))
        .collect();
    let want: Vec<Value> = (0..10).map(expected).collect();
    assert_eq!(rows, want);
    assert_eq!(count(&metrics, "churn", "written"), 10);
    assert_eq!(count(&metrics, "churn", "failed"), 0);
    assert_eq!(count(&metrics, "churn", "dropped"), 0);
    assert_eq!(metrics.capture_queue.with_label_values(&["churn"]).get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_files_round_trip() {
    local_round_trip(CaptureFormat::Jsonl, "jsonl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_files_round_trip() {
    local_round_trip(CaptureFormat::Parquet, "parquet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_lines_have_exactly_the_record_fields() {
    let dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(
        "e",
        &config(
            &format!("file://{}", dir.path().display()),
            CaptureFormat::Jsonl,
        ),
        &S3Options::default(),
        PipelineMetrics::new(),
    )
    .await
    .unwrap();
    capture.record(vec![record(1)]);
    capture.shutdown().await;
    let files = local_files(dir.path());
    assert_eq!(files.len(), 1);
    let line = std::str::from_utf8(&files[0].1).unwrap().trim_end();
    let object: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "endpoint",
            "features",
            "input",
            "model",
            "output",
            "request_id",
            "shadow",
            "timestamp_ms",
            "variant",
            "version"
        ]
    );
    assert!(object["timestamp_ms"].is_i64());
    assert!(object["input"].is_object(), "nested JSON, not a string");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_is_written_without_waiting_for_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path().to_str().unwrap(), CaptureFormat::Jsonl);
    c.max_batch_rows = 10;
    let capture = Capture::start("e", &c, &S3Options::default(), PipelineMetrics::new())
        .await
        .unwrap();
    for i in 0..25 {
        capture.record(vec![record(i)]);
    }
    assert!(
        eventually(|| local_files(dir.path()).len() == 2).await,
        "two full batches are written long before the 1h interval"
    );
    // The 5 remaining rows wait for the interval (1h) or shutdown.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let files = local_files(dir.path());
    assert_eq!(files.len(), 2);
    for (_, bytes) in &files {
        assert_eq!(jsonl_rows(bytes).len(), 10);
    }
    capture.shutdown().await;
    let files = local_files(dir.path());
    assert_eq!(files.len(), 3);
    assert_eq!(
        jsonl_rows(&files[2].1),
        (20..25).map(expected).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_is_written_after_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path().to_str().unwrap(), CaptureFormat::Jsonl);
    c.flush_interval = "700ms".into();
    let capture = Capture::start("e", &c, &S3Options::default(), PipelineMetrics::new())
        .await
        .unwrap();
    let recorded = Instant::now();
    capture.record((0..3).map(record).collect());
    assert!(
        eventually(|| !local_files(dir.path()).is_empty()).await,
        "the batch is written within 20 s"
    );
    let waited = recorded.elapsed();
    assert!(
        waited >= Duration::from_millis(690),
        "written after {waited:?}, before the 700ms interval"
    );
    let files = local_files(dir.path());
    assert_eq!(files.len(), 1);
    assert_eq!(
        jsonl_rows(&files[0].1),
        (0..3).map(expected).collect::<Vec<_>>()
    );
    // A second partial batch gets its own interval.
    capture.record(vec![record(3)]);
    assert!(eventually(|| local_files(dir.path()).len() == 2).await);
    capture.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_a_partial_batch_and_later_records_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = PipelineMetrics::new();
    let capture = Capture::start(
        "e",
        &config(dir.path().to_str().unwrap(), CaptureFormat::Parquet),
        &S3Options::default(),
        metrics.clone(),
    )
    .await
    .unwrap();
    capture.record((0..7).map(record).collect());
    assert!(
        local_files(dir.path()).is_empty(),
        "1h interval, 1000-row batches"
    );
    let clone = capture.clone();
    capture.shutdown().await;
    let files = local_files(dir.path());
    assert_eq!(files.len(), 1);
    assert_eq!(
        parquet_rows(files[0].1.clone()),
        (0..7).map(expected).collect::<Vec<_>>()
    );
    clone.record(vec![record(7), record(8)]);
    clone.shutdown().await;
    assert_eq!(count(&metrics, "e", "written"), 7);
    assert_eq!(count(&metrics, "e", "dropped"), 2);
    assert_eq!(local_files(dir.path()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_flushes_too() {
    let dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(
        "e",
        &config(dir.path().to_str().unwrap(), CaptureFormat::Jsonl),
        &S3Options::default(),
        PipelineMetrics::new(),
    )
    .await
    .unwrap();
    capture.record(vec![record(0), record(1)]);
    drop(capture);
    assert!(eventually(|| local_files(dir.path()).len() == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path().to_str().unwrap(), CaptureFormat::Jsonl);
    c.max_batch_rows = 100;
    c.queue_capacity = 100;
    let metrics = PipelineMetrics::new();
    let capture = Capture::start("e", &c, &S3Options::default(), metrics.clone())
        .await
        .unwrap();
    // 60 rows wait for a 100-row batch (1h interval); 60 more would exceed the 100-record queue.
    capture.record((0..60).map(record).collect());
    capture.record((60..120).map(record).collect());
    assert_eq!(count(&metrics, "e", "dropped"), 60);
    assert_eq!(metrics.capture_queue.with_label_values(&["e"]).get(), 60);
    // Hammering a full queue returns at once every time. (A blocked call would wait for the
    // 1h flush interval; the bounds only leave room for a busy CI machine's scheduling.)
    let mut total = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    for i in 0..10_000 {
        let rows = vec![record(200 + i % 7); 41];
        let t = Instant::now();
        capture.record(rows);
        let took = t.elapsed();
        total += took;
        slowest = slowest.max(took);
    }
    assert_eq!(count(&metrics, "e", "dropped"), 60 + 41 * 10_000);
    assert!(
        slowest < Duration::from_millis(250),
        "slowest record() call {slowest:?}"
    );
    assert!(
        total < Duration::from_secs(5),
        "10k record() calls took {total:?}"
    );
    // 40 more fit exactly and complete the batch.
    capture.record((120..160).map(record).collect());
    capture.shutdown().await;
    assert_eq!(count(&metrics, "e", "written"), 100);
    let rows: Vec<Value> = local_files(dir.path())
        .into_iter()
        .flat_map(|(_, b)| jsonl_rows(&b))
        .collect();
    let want: Vec<Value> = (0..60).chain(120..160).map(expected).collect();
    assert_eq!(rows, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_directory_counts_failures_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let destination = file.join("capture");
    let mut c = config(destination.to_str().unwrap(), CaptureFormat::Parquet);
    c.max_batch_rows = 10;
    c.queue_capacity = 20;
    let metrics = PipelineMetrics::new();
    let capture = Capture::start("e", &c, &S3Options::default(), metrics.clone())
        .await
        .expect("an unwritable destination does not stop the server from starting");
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        capture.record(vec![record(i)]);
        slowest = slowest.max(t.elapsed());
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    assert!(
        slowest < Duration::from_millis(250),
        "slowest record() {slowest:?}"
    );
    let t = Instant::now();
    capture.shutdown().await;
    // At most 20 queued records = 2 batches, each 3 attempts with 0.1 s + 0.4 s backoff.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t.elapsed()
    );
    let (failed, dropped) = (
        count(&metrics, "e", "failed"),
        count(&metrics, "e", "dropped"),
    );
    assert_eq!(count(&metrics, "e", "written"), 0);
    // At least the first full batch was attempted; how many later records found room in the
    // queue depends on how long the failing attempts took.
    assert!(failed >= 10, "failed {failed}");
    assert_eq!(failed + dropped, 200, "failed {failed} + dropped {dropped}");
    assert_eq!(metrics.capture_queue.with_label_values(&["e"]).get(), 0);
}

#[test]
fn capture_runs_against_s3() {
    let moto = MotoServer::start().expect("an S3 endpoint for the test");
    moto.create_bucket("capture-bucket").unwrap();
    // The AWS SDK reads credentials and region from the environment, which a test cannot
    // set safely in its own (multi-threaded) process: run the S3 half in a child process.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["s3_child", "--ignored", "--nocapture"])
        .envs(moto.env())
        .env("FERRY_CAPTURE_TEST_S3", &moto.endpoint)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned()
        + String::from_utf8_lossy(&out.stderr).as_ref();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("test result: ok. 2 passed"),
        "the child ran both S3 tests: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by capture_runs_against_s3 in a child process with moto's environment"]
async fn s3_child() {
    let endpoint = std::env::var("FERRY_CAPTURE_TEST_S3")
        .expect("run through capture_runs_against_s3, which starts moto");
    // Like `registry.endpoint` in ferry.yaml (the environment has AWS_ENDPOINT_URL too).
    let s3 = S3Options {
        endpoint: Some(endpoint),
        path_style: None,
        region: None,
    };
    for (format, ext) in [
        (CaptureFormat::Jsonl, "jsonl"),
        (CaptureFormat::Parquet, "parquet"),
    ] {
        let prefix = format!("s3://capture-bucket/prod/{ext}");
        let mut c = config(&prefix, format);
        c.max_batch_rows = 4;
        let metrics = PipelineMetrics::new();
        let from = now_ms();
        let capture = Capture::start("churn", &c, &s3, metrics.clone())
            .await
            .unwrap();
        capture.record((0..6).map(record).collect());
        capture.shutdown().await;
        let to = now_ms();
        assert_eq!(count(&metrics, "churn", "written"), 6, "{ext}");
        let store = S3Store::connect(&prefix, &s3).await.unwrap();
        let mut objects = store.list_recursive("").await.unwrap();
        objects.sort_by_key(|o| file_order(&o.key));
        assert_eq!(objects.len(), 2, "{objects:?}");
        let mut rows = Vec::new();
        for object in &objects {
            assert_layout(&object.key, "churn", ext, from, to);
            let bytes = store.read(&object.key).await.unwrap().unwrap();
            rows.extend(rows_of(format, bytes));
        }
        assert_eq!(rows, (0..6).map(expected).collect::<Vec<_>>(), "{ext}");
    }

    // A bucket that does not exist: writes fail and are counted, requests never wait.
    let mut c = config("s3://no-such-bucket/x", CaptureFormat::Jsonl);
    c.max_batch_rows = 5;
    c.queue_capacity = 10;
    let metrics = PipelineMetrics::new();
    let capture = Capture::start("churn", &c, &s3, metrics.clone())
        .await
        .unwrap();
    assert_record_never_waits(&capture, 50);
    capture.shutdown().await;
    let (failed, dropped) = (
        count(&metrics, "churn", "failed"),
        count(&metrics, "churn", "dropped"),
    );
    assert_eq!(count(&metrics, "churn", "written"), 0);
    assert!(failed >= 5, "failed {failed}");
    assert_eq!(failed + dropped, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by capture_runs_against_s3 in a child process with moto's environment"]
async fn s3_child_unresponsive() {
    std::env::var("FERRY_CAPTURE_TEST_S3")
        .expect("run through capture_runs_against_s3, which sets up the AWS environment");
    // An endpoint that accepts connections and never answers (the SDK's read timeout is 60 s).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let s3 = S3Options {
        endpoint: Some(endpoint),
        path_style: Some(true),
        region: None,
    };
    let mut c = config("s3://silent/x", CaptureFormat::Jsonl);
    c.max_batch_rows = 5;
    c.queue_capacity = 20;
    let metrics = PipelineMetrics::new();
    let capture = Capture::start("churn", &c, &s3, metrics.clone())
        .await
        .unwrap();
    assert_record_never_waits(&capture, 100);
    let t = Instant::now();
    capture.shutdown().await;
    let took = t.elapsed();
    // Shutdown gives the last writes 10 s in all.
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    let (failed, dropped) = (
        count(&metrics, "churn", "failed"),
        count(&metrics, "churn", "dropped"),
    );
    assert_eq!(count(&metrics, "churn", "written"), 0);
    assert_eq!(failed, 20, "the queue held 20 records when shutdown began");
    assert_eq!(dropped, 80);
}

/// Records `n` one-row requests; none may wait on the (failing or silent) destination.
fn assert_record_never_waits(capture: &Capture, n: u64) {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        capture.record(vec![record(i)]);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(250),
        "slowest record() {slowest:?}"
    );
}
