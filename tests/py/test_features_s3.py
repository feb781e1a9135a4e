"""Feature views whose offline source is an S3 prefix (DESIGN.md "Feature format":
`source: {path: s3://bucket/features/user_stats/}`), against a real S3 endpoint (moto's server
on loopback, as the registry tests use) and a real redis-server, with the real `ferry` binary.

The S3 settings come from the config's `registry` section (`endpoint`, `path_style`, `region`),
the same ones the model registry uses; AWS_ENDPOINT_URL is removed from the environment so a
pass cannot come from it. Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID…).

Expected values are computed here from the written data: the newest row per entity (Redis
contents), pyarrow's as-of join (the point-in-time export), and Python onnxruntime on the values
read back from Redis (the served prediction). Which objects ferry downloaded is read from
moto's request log, not from ferry's own report alone.
"""
import io
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from conftest import FerryServer, ferry_bin, ort_lib, to_yaml
from test_batch import read_output
from test_features import expected_risk, load_demo_module

DATA_BUCKET = "data"
PREFIX = "features/user_stats/"
SOURCE = f"s3://{DATA_BUCKET}/{PREFIX}"
MODELS_BUCKET = "models"
REGISTRY = f"s3://{MODELS_BUCKET}/prod"
WATERMARK = "ferry:demo:_watermark:user_stats"



@pytest.fixture
def s3(moto_s3, monkeypatch):
    """moto with the data and model buckets; ferry must find it through the config alone."""
    client = moto_s3.client()
    client.create_bucket(Bucket=DATA_BUCKET)
    client.create_bucket(Bucket=MODELS_BUCKET)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return moto_s3


def registry_section(s3):
    return {"uri": REGISTRY, "endpoint": s3.endpoint, "path_style": True,
            "region": "us-east-1", "poll_interval": "0s"}


def ferry(*args, check=True):
    r = subprocess.run([ferry_bin(), *map(str, args)], capture_output=True, text=True,
                       timeout=180)
    if check:
        assert r.returncode == 0, f"ferry {args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def put_parquet(client, key, table):
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    client.put_object(Bucket=DATA_BUCKET, Key=key, Body=buf.getvalue())


def rows_table(rows):
    """rows: (user_id, event_ts ms, visits_7d, spend_30d), the demo view's columns."""
    users, ts, visits, spend = zip(*rows)
    return pa.table({
        "user_id": pa.array(users, pa.string()),
        "event_ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "visits_7d": pa.array(visits, pa.float32()),
        "spend_30d": pa.array(spend, pa.float32()),
    })


def as_rows(table):
    return [(r["user_id"], int(r["event_ts"].timestamp() * 1000), r["visits_7d"], r["spend_30d"])
            for r in table.to_pylist()]


def newest_per_user(rows):
    """The row materialization must keep: the newest event time (the first of equal times)."""
    newest = {}
    for row in rows:
        cur = newest.get(row[0])
        if cur is None or row[1] > cur[1]:
            newest[row[0]] = row
    return newest


def assert_redis_holds(r, newest):
    keys = sorted(r.keys("ferry:demo:user_stats:*"))
    assert keys == sorted(f"ferry:demo:user_stats:{u}" for u in newest)
    for user, (_, ts, visits, spend) in newest.items():
        h = r.hgetall(f"ferry:demo:user_stats:{user}")
        assert set(h) == {"_ts", "visits_7d", "spend_30d"}, (user, h)
        assert int(h["_ts"]) == ts, (user, h)
        # float32 features are stored as the shortest decimal that round-trips the f32 value.
        assert np.float32(float(h["visits_7d"])) == np.float32(visits), (user, h)
        assert np.float32(float(h["spend_30d"])) == np.float32(spend), (user, h)


class MotoLog:
    """Object downloads (GetObject) seen by moto since the last call."""

    def __init__(self, s3):
        self.path = s3.log_path
        self.offset = os.path.getsize(self.path)

    def new_gets(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
            self.offset = f.tell()
        return re.findall(rf'"GET /{DATA_BUCKET}/({re.escape(PREFIX)}[^ ?"]*)[^ "]* HTTP', text)


def model_dir(tmp_path, registry):
    """The demo model (risk@1) as a training job's output: artifact + model.yaml to push."""
    src = registry / "risk" / "1"
    d = tmp_path / "risk-push"
    d.mkdir()
    shutil.copy(src / "model.onnx", d / "model.onnx")
    manifest = json.loads((src / "model.yaml").read_text())
    for key in ("name", "version", "sha256"):
        manifest.pop(key, None)
    (d / "model.yaml").write_text(json.dumps(manifest))
    return d


def test_s3_views_materialize_incrementally_export_and_serve(tmp_path, s3, redis_server):
    demo = load_demo_module()
    local_registry = tmp_path / "local-registry"
    demo.build(str(local_registry), str(tmp_path / "unused-features"))
    client = s3.client()
    log = MotoLog(s3)

    # A feature job's output: a Spark-style prefix whose first listing page (1000 keys) holds
    # only `_temporary/` leftovers, so the data file is found only by following the
    # continuation token; `_SUCCESS` is skipped too.
    def put_marker(i):
        client.put_object(Bucket=DATA_BUCKET, Key=f"{PREFIX}_temporary/0/part-{i:04}.parquet",
                          Body=b"not parquet")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put_marker, range(1000)))
    part0 = as_rows(demo.offline_rows())
    put_parquet(client, PREFIX + "part-0.parquet", rows_table(part0))
    client.put_object(Bucket=DATA_BUCKET, Key=PREFIX + "_SUCCESS", Body=b"")

    repo = tmp_path / "features.yaml"
    repo.write_text(demo.FEATURES_YAML.replace("path: user_stats/", f"path: {SOURCE}"))
    assert SOURCE in repo.read_text()
    config = tmp_path / "ferry.yaml"
    config.write_text(to_yaml({
        "registry": registry_section(s3),
        "features": {"repo": str(repo), "redis": redis_server.url},
    }))
    r = redis_server.client()

    # First run: the one data object is downloaded and every row read.
    out = ferry("features", "--config", config, "materialize").stdout
    assert f"1 of 1 files read, {len(part0)} rows read (0 skipped" in out, out
    assert log.new_gets() == [PREFIX + "part-0.parquet"]
    newest = newest_per_user(part0)
    assert_redis_holds(r, newest)
    # The watermark identifies the object by key and ETag.
    etag0 = client.head_object(Bucket=DATA_BUCKET, Key=PREFIX + "part-0.parquet")["ETag"]
    assert r.hget(WATERMARK, SOURCE + "part-0.parquet").startswith(f"etag:{etag0.strip(chr(34))}:")

    # Nothing new: nothing downloaded, nothing written.
    out = ferry("features", "--config", config, "materialize").stdout
    assert "0 of 1 files read, 0 rows read" in out and "0 keys written" in out, out
    assert log.new_gets() == []

    # A new object: newer rows for some users, an older row for u1 (never wins), a new user.
    base = max(row[1] for row in part0)
    part1 = [("u1", 1000, 99.0, 99.0), ("u2", base + 10, 42.0, 420.5),
             ("u5", base + 20, 7.0, 70.25), ("u21", base + 30, 1.0, 10.0)]
    put_parquet(client, PREFIX + "part-1.parquet", rows_table(part1))
    out = ferry("features", "--config", config, "materialize").stdout
    assert f"1 of 2 files read, {len(part1)} rows read" in out, out
    assert "3 keys written, 1 not newer" in out, out
    assert log.new_gets() == [PREFIX + "part-1.parquet"]
    newest = newest_per_user(part0 + part1)
    assert_redis_holds(r, newest)

    # The same key rewritten (new ETag) is read again; the other object is not.
    part1 = part1 + [("u3", base + 40, 3.0, 33.5)]
    put_parquet(client, PREFIX + "part-1.parquet", rows_table(part1))
    out = ferry("features", "--config", config, "materialize").stdout
    assert f"1 of 2 files read, {len(part1)} rows read" in out, out
    assert log.new_gets() == [PREFIX + "part-1.parquet"]
    newest = newest_per_user(part0 + part1)
    assert_redis_holds(r, newest)

    # Point-in-time export from the same prefix, checked against pyarrow's as-of join.
    all_rows = part0 + part1
    users = sorted({row[0] for row in all_rows}) + ["nobody"]
    times = sorted({row[1] for row in all_rows})
    probe = [(u, t + d) for u in users for t in times[::7] for d in (-1, 0, 1)]
    probe += [("u1", base + 10**9), ("u21", base + 30), ("u21", base + 29)]
    entities = tmp_path / "entities.parquet"
    pq.write_table(pa.table({
        "user_id": pa.array([p[0] for p in probe], pa.string()),
        "event_ts": pa.array([p[1] for p in probe], pa.int64()),
        "label": pa.array(list(range(len(probe))), pa.int64()),
    }), entities)
    train = tmp_path / "train.parquet"
    out = ferry("features", "--config", config, "export", "--entities", entities,
                "--out", train).stdout
    assert f"wrote {len(probe)} rows" in out, out
    got = pq.read_table(train)
    history = pa.table({
        "user_id": pa.array([row[0] for row in all_rows], pa.string()),
        "event_ts": pa.array([row[1] for row in all_rows], pa.int64()),
        "visits_7d": pa.array([row[2] for row in all_rows], pa.float32()),
        "spend_30d": pa.array([row[3] for row in all_rows], pa.float32()),
    }).sort_by("event_ts")
    left = pq.read_table(entities).sort_by("event_ts")
    ref = left.join_asof(history, on="event_ts", by="user_id", tolerance=-(1 << 60))
    ref = {row["label"]: row for row in ref.to_pylist()}
    assert got.column_names == ["user_id", "event_ts", "label", "user_stats.visits_7d",
                                "user_stats.spend_30d"]
    checked = 0
    for row in got.to_pylist():
        want = ref[row["label"]]
        for f in ("visits_7d", "spend_30d"):
            expected = want[f] if want[f] is not None else 0.0  # the features' default
            assert row[f"user_stats.{f}"] == expected, (row, want)
            checked += 1
    assert checked == 2 * len(probe)
    assert any(ref[i]["visits_7d"] is None for i in ref) and any(
        ref[i]["visits_7d"] is not None for i in ref)

    # Serving: the model comes from the S3 registry (same settings), features from Redis.
    ferry("models", "--config", config, "push", model_dir(tmp_path, local_registry),
          "--name", "risk")
    cfg = {
        "registry": {**registry_section(s3), "cache_dir": str(tmp_path / "cache")},
        "onnx_engine": "ort",
        "features": {"repo": str(repo), "redis": redis_server.url, "timeout": "500ms",
                     "on_missing": "default"},
        "endpoints": [{"name": "risk", "variants": [{"name": "control", "model": "risk@1",
                                                     "weight": 100}]}],
    }
    workdir = tmp_path / "serve"
    workdir.mkdir()
    srv = FerryServer(workdir, cfg, "serve")
    srv.start()
    try:
        srv.wait_ready()
        instances = [{"user_id": u, "amount": a}
                     for u, a in (("u1", 12.5), ("u2", 80.0), ("u21", 5.0), ("nobody", 3.0))]
        rows = []
        for inst in instances:
            h = r.hgetall(f"ferry:demo:user_stats:{inst['user_id']}")
            rows.append([float(h.get("visits_7d", 0.0)), float(h.get("spend_30d", 0.0)),
                         inst["amount"]])
        label, proba = expected_risk(local_registry, rows)
        resp = requests.post(srv.url + "/v1/endpoints/risk/predict",
                             json={"instances": instances}, timeout=10)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert [p["label"] for p in body["predictions"]] == label.tolist()
        np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], proba,
                                   rtol=1e-5, atol=1e-6)
        assert resp.headers["x-ferry-features-defaulted"] == "2"  # `nobody`'s two features
    finally:
        srv.stop()

    # A batch join without Redis: the in-process store is loaded from the same S3 prefix and
    # gives the same predictions.
    batch_cfg = tmp_path / "batch.yaml"
    batch_cfg.write_text(to_yaml({**cfg, "features": {"repo": str(repo), "timeout": "2s"}}))
    batch_in = tmp_path / "batch-in" / "rows.parquet"
    batch_in.parent.mkdir()
    pq.write_table(pa.table({"user_id": [i["user_id"] for i in instances],
                             "amount": pa.array([i["amount"] for i in instances],
                                                pa.float64())}), batch_in)
    env = {**os.environ, "FERRY_ORT_LIB": ort_lib()}
    log.new_gets()
    done = subprocess.run([ferry_bin(), "batch", "--config", str(batch_cfg), "--endpoint", "risk",
                           "--input", str(batch_in), "--output", str(tmp_path / "batch-out")],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert log.new_gets() == [PREFIX + "part-0.parquet", PREFIX + "part-1.parquet"]
    got = read_output(tmp_path / "batch-out")
    assert [g["user_id"] for g in got] == [i["user_id"] for i in instances]
    assert [g["prediction"] for g in got] == body["predictions"]


def test_s3_view_without_redis_loads_the_prefix_into_the_in_process_store(tmp_path, s3):
    """`ferry features get` without Redis (the in-process store used by serving and batch
    joins when no Redis is configured) reads the S3 prefix: every object, the newest row."""
    client = s3.client()
    put_parquet(client, PREFIX + "a/part-0.parquet",
                rows_table([("u1", 1000, 1.0, 10.0), ("u2", 1000, 2.0, 20.0)]))
    put_parquet(client, PREFIX + "b/part-0.parquet", rows_table([("u1", 2000, 3.0, 30.0)]))
    demo = load_demo_module()
    repo = tmp_path / "features.yaml"
    repo.write_text(demo.FEATURES_YAML.replace("path: user_stats/", f"path: {SOURCE}"))
    config = tmp_path / "ferry.yaml"
    config.write_text(to_yaml({"registry": registry_section(s3),
                               "features": {"repo": str(repo)}}))
    out = ferry("features", "--config", config, "get", "--view", "user_stats",
                "--key", "u1").stdout
    assert '"_ts": 2000' in out and '"visits_7d": 3.0' in out, out

    # A source naming one object (no trailing slash) reads only that object.
    one = f"{SOURCE}a/part-0.parquet"
    repo.write_text(demo.FEATURES_YAML.replace("path: user_stats/", f"path: {one}"))
    out = ferry("features", "--config", config, "get", "--view", "user_stats",
                "--key", "u1").stdout
    assert '"_ts": 1000' in out and '"visits_7d": 1.0' in out, out
    missing = f"{SOURCE}a/missing.parquet"
    repo.write_text(demo.FEATURES_YAML.replace("path: user_stats/", f"path: {missing}"))
    r = ferry("features", "--config", config, "get", "--view", "user_stats", "--key", "u1",
              check=False)
    assert r.returncode != 0 and missing in r.stderr and "no such object" in r.stderr, \
        r.stderr


def test_s3_source_errors_name_the_uri_and_the_fix(tmp_path, s3, redis_server, monkeypatch):
    demo = load_demo_module()
    config = tmp_path / "ferry.yaml"
    repo = tmp_path / "features.yaml"
    config.write_text(to_yaml({"registry": registry_section(s3),
                               "features": {"repo": str(repo), "redis": redis_server.url}}))

    missing = "s3://no-such-bucket/features/user_stats/"
    repo.write_text(demo.FEATURES_YAML.replace("path: user_stats/", f"path: {missing}"))
    r = ferry("features", "--config", config, "materialize", check=False)
    assert r.returncode != 0
    assert missing in r.stderr and "bucket does not exist" in r.stderr, r.stderr

    repo.write_text(demo.FEATURES_YAML.replace("path: user_stats/", f"path: {SOURCE}"))
    with monkeypatch.context() as m:
        m.delenv("AWS_ACCESS_KEY_ID")
        m.delenv("AWS_SECRET_ACCESS_KEY")
        m.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        r = ferry("features", "--config", config, "materialize", check=False)
    assert r.returncode != 0
    assert SOURCE in r.stderr and "no AWS credentials found" in r.stderr, r.stderr

    # An object that is not Parquet: named by its S3 URI, not a temporary path.
    s3.client().put_object(Bucket=DATA_BUCKET, Key=PREFIX + "broken.parquet", Body=b"garbage")
    repo.write_text(demo.FEATURES_YAML.replace("path: user_stats/", f"path: {SOURCE}"))
    r = ferry("features", "--config", config, "materialize", check=False)
    assert r.returncode != 0
    assert f"{SOURCE}broken.parquet" in r.stderr and "not a readable Parquet file" in r.stderr, \
        r.stderr
    assert "ferry-offline-" not in r.stderr, r.stderr  # the temporary download's name
    # Nothing was recorded for the unreadable object: a fixed object is read next time.
    assert redis_server.client().hlen(WATERMARK) == 0
    put_parquet(s3.client(), PREFIX + "broken.parquet", rows_table([("u1", 1000, 1.0, 2.0)]))
    out = ferry("features", "--config", config, "materialize").stdout
    assert "1 of 1 files read, 1 rows read" in out, out
