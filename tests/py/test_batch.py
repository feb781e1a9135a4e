"""`ferry batch` end to end: the real binary, a real redis-server and a real S3 endpoint (moto's
server on loopback), both started here. Expected predictions come from the online endpoint of
a `ferry serve` started by the test, or from Python onnxruntime on hand-joined features.

A missing redis-server, moto, pyarrow or onnxruntime fails these tests, never skips them.
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import onnxruntime
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import requests

from conftest import FerryServer, ferry_bin, ort_lib, to_yaml
from test_features import load_demo_module, newest_offline, run_ferry

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_REGISTRY = os.path.join(HERE, "..", "..", "server", "demo", "registry")
META = ["variant", "model", "version", "scored_at"]



@pytest.fixture
def env(tmp_path, redis_server):
    """risk@1 (features from Redis) and churn@champion (plain) behind endpoints risk/churn."""
    mod = load_demo_module()
    registry = tmp_path / "registry"
    features = tmp_path / "features"
    mod.build(str(registry), str(features))
    mod.build(str(registry), str(features), version=2)  # the same model, as a second version
    shutil.copytree(os.path.join(DEMO_REGISTRY, "churn"), str(registry / "churn"))
    shutil.copytree(os.path.join(DEMO_REGISTRY, "mlp"), str(registry / "mlp"))
    run_ferry("features", "--features", str(features / "features.yaml"), "--redis",
              redis_server.url, "materialize")
    cfg = {
        "registry": {"uri": str(registry)},
        "onnx_engine": "ort",
        "intra_op_threads": 1,
        "features": {"repo": str(features / "features.yaml"), "redis": redis_server.url,
                     "timeout": "2s", "on_missing": "default"},
        "endpoints": [
            # An A/B split by user: batch must assign rows exactly as the server does.
            {"name": "risk", "sticky_key": "user_id",
             "variants": [{"name": "control", "model": "risk@1", "weight": 70},
                          {"name": "treatment", "model": "risk@2", "weight": 30}]},
            {"name": "churn", "variants": [{"name": "main", "model": "churn@champion",
                                            "weight": 100}]},
            # A regressor: one FP32 output of shape [-1, 1].
            {"name": "price", "variants": [{"name": "main", "model": "mlp@1", "weight": 100}]},
            # A sticky split of a plain model by an integer key (the column-wise path).
            {"name": "churn-ab", "sticky_key": "id",
             "variants": [{"name": "a", "model": "churn@1", "weight": 60},
                          {"name": "b", "model": "churn@champion", "weight": 40}]},
            # Built-in transforms around the features model (each has a column form).
            {"name": "risk-tf", "sticky_key": "user_id",
             "variants": [{"name": "control", "model": "risk@1", "weight": 50},
                          {"name": "treatment", "model": "risk@2", "weight": 50}],
             "preprocess": [
                 {"fill_missing": {"amount": 0}},
                 {"clip": {"amount": {"min": 0, "max": 60}}},
                 {"standardize": {"user_stats.spend_30d": {"mean": 250, "std": 120}}},
                 {"log1p": ["user_stats.visits_7d"]}],
             "postprocess": [
                 {"threshold": {"field": "probabilities", "index": 1, "threshold": 0.5,
                                "labels": ["approve", "review"], "output": "decision"}},
                 {"calibrate": {"field": "probabilities", "index": 1,
                                "table": [[0, 0], [0.5, 0.4], [1, 1]], "output": "score"}},
                 {"select": ["decision", "score", "label"]}]},
        ],
    }
    config = tmp_path / "ferry.yaml"
    config.write_text(to_yaml(cfg))
    return {"cfg": cfg, "config": str(config), "registry": registry, "features": features,
            "tmp": tmp_path}


def batch(env, *args, extra_env=None, check=True, expect=0):
    e = dict(os.environ)
    e["FERRY_ORT_LIB"] = ort_lib()
    e.pop("JOB_COMPLETION_INDEX", None)
    e.update(extra_env or {})
    r = subprocess.run([ferry_bin(), "batch", "--config", env["config"], *args],
                       capture_output=True, text=True, timeout=300, env=e)
    if check:
        assert r.returncode == expect, \
            f"ferry batch {args} exited {r.returncode}, expected {expect}:\n{r.stdout}\n{r.stderr}"
    return r


def risk_rows(n, seed):
    rng = np.random.default_rng(seed)
    users = [f"u{int(i)}" for i in rng.integers(1, 26, n)]  # u21..u25 have no features
    amounts = [round(float(a), 2) for a in rng.gamma(2.0, 20.0, n)]
    return [{"user_id": u, "amount": a} for u, a in zip(users, amounts)]


def churn_rows(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 30)).astype(np.float32)
    return [{"id": int(seed * 1000 + i), "X": [float(v) for v in row]} for i, row in enumerate(x)]


def write_parquet(path, rows, row_group_size=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist(rows)
    if "X" in table.column_names:
        table = table.set_column(table.column_names.index("X"), "X",
                                 pa.array([r["X"] for r in rows], pa.list_(pa.float32())))
    pq.write_table(table, path, row_group_size=row_group_size)


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def write_csv(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pacsv.write_csv(pa.Table.from_pylist(rows), path)


def read_output(out_dir, fmt="parquet"):
    """Committed outputs only: top-level files, never _tmp/, _markers/ or _errors/. The
    classifiers' `label` and `probabilities` columns are put back together as `prediction`, the
    object the online endpoint answers per row."""
    rows = []
    for p in sorted(glob.glob(os.path.join(str(out_dir), f"*.{fmt}"))):
        if fmt == "parquet":
            rows.extend(pq.read_table(p).to_pylist())
        else:
            with open(p) as f:
                rows.extend(json.loads(line) for line in f)
    for r in rows:
        if "label" in r:
            r["prediction"] = {"label": r.pop("label"), "probabilities": r.pop("probabilities")}
    return rows


def key(r, cols):
    return json.dumps([r[c] for c in cols] + [r["prediction"], r["variant"]], sort_keys=True)


def expected_risk(env, rows):
    """onnxruntime on [visits_7d, spend_30d, amount], features joined by hand (defaults 0)."""
    newest = newest_offline(env["features"])
    x = []
    for r in rows:
        f = newest.get(r["user_id"])
        x.append([f["visits_7d"] if f else 0.0, f["spend_30d"] if f else 0.0, r["amount"]])
    sess = onnxruntime.InferenceSession(str(env["registry"] / "risk" / "1" / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    label, proba = sess.run(None, {"X": np.array(x, dtype=np.float32)})
    return label, proba


def assert_risk_matches(env, out_rows):
    label, proba = expected_risk(env, out_rows)
    for i, r in enumerate(out_rows):
        assert r["prediction"]["label"] == int(label[i]), r
        np.testing.assert_allclose(r["prediction"]["probabilities"], proba[i], rtol=1e-5,
                                   atol=1e-6)


# ---------------------------------------------------------------------------------------------


def test_online_batch_parity_with_features_and_plain(env):
    tmp = env["tmp"]
    risk = risk_rows(300, 1)
    churn = churn_rows(200, 2)
    write_parquet(str(tmp / "in-risk" / "a.parquet"), risk[:150])
    write_parquet(str(tmp / "in-risk" / "b.parquet"), risk[150:])
    write_parquet(str(tmp / "in-churn" / "c.parquet"), churn, row_group_size=64)

    workdir = tmp / "server"
    workdir.mkdir()
    srv = FerryServer(workdir, env["cfg"], "parity")
    srv.start()
    try:
        srv.wait_ready()
        online = {}
        # churn (a tree ensemble) goes in the 64-row calls batch makes of its row groups:
        # ONNX Runtime's tree kernels sum in an order that depends on the batch size and the
        # thread count (pinned to 1 in the config), so the last float32 bit could differ.
        for name, rows, size in (("risk", risk, len(risk)), ("churn", churn, 64)):
            online[name] = {"predictions": [], "variants": [], "versions": []}
            for i in range(0, len(rows), size):
                r = requests.post(f"{srv.url}/v1/endpoints/{name}/predict",
                                  json={"instances": rows[i:i + size]}, timeout=60)
                assert r.status_code == 200, r.text
                online[name]["predictions"] += r.json()["predictions"]
                online[name]["variants"] += r.json()["variants"]
                online[name]["versions"] += [int(v) for v in r.json()["versions"]]
    finally:
        srv.stop()

    out = batch(env, "--endpoint", "risk", "--input", str(tmp / "in-risk"), "--output",
                str(tmp / "out-risk"), "--chunk-rows", "64")
    assert "0 failed" in out.stdout, out.stdout
    # The features endpoint joins column-wise (key column + request column + one lookup per
    # chunk) and still equals the online answers row for row below.
    assert f"batch: {len(risk)} of {len(risk)} scored rows went column-wise" in out.stdout, \
        out.stdout
    got = read_output(tmp / "out-risk")
    assert [(r["user_id"], r["amount"]) for r in got] == \
        [(r["user_id"], r["amount"]) for r in risk]
    assert [r["prediction"] for r in got] == online["risk"]["predictions"]
    assert [r["variant"] for r in got] == online["risk"]["variants"]
    assert [r["version"] for r in got] == online["risk"]["versions"]
    assert {r["model"] for r in got} == {"risk"}
    assert set(online["risk"]["variants"]) == {"control", "treatment"}
    assert_risk_matches(env, got)

    # A single Parquet file with 4 row groups: one unit per row group, ids kept as typed.
    batch(env, "--endpoint", "churn", "--input", str(tmp / "in-churn" / "c.parquet"),
          "--output", str(tmp / "out-churn"), "--id-columns", "id")
    assert len(glob.glob(str(tmp / "out-churn" / "_markers" / "*.json"))) == 4
    got = read_output(tmp / "out-churn")
    t = pq.read_table(sorted(glob.glob(str(tmp / "out-churn" / "*.parquet")))[0])
    assert t.column_names == ["id", "label", "probabilities"] + META
    assert t.schema.field("id").type == pa.int64()
    assert [r["id"] for r in got] == [r["id"] for r in churn]
    assert [r["prediction"] for r in got] == online["churn"]["predictions"]
    assert [r["variant"] for r in got] == online["churn"]["variants"]
    sess = onnxruntime.InferenceSession(os.path.join(DEMO_REGISTRY, "churn", "1", "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    label, _ = sess.run(None, {"X": np.array([r["X"] for r in churn], dtype=np.float32)})
    assert [r["prediction"]["label"] for r in got] == [int(v) for v in label]


def test_union_of_shards_equals_single_run(env):
    tmp = env["tmp"]
    rows = risk_rows(420, 3)
    inp = tmp / "in"
    for i in range(7):
        part = rows[i * 60:(i + 1) * 60]
        if i % 3 == 0:
            write_parquet(str(inp / f"day={i}" / "part.parquet"), part)
        elif i % 3 == 1:
            write_jsonl(str(inp / f"day={i}" / "part.jsonl"), part)
        else:
            write_csv(str(inp / f"day={i}" / "part.csv"), part)
    batch(env, "--endpoint", "risk", "--input", str(inp), "--output", str(tmp / "single"))
    single = read_output(tmp / "single")
    assert len(single) == 420

    # Three shards at once into one output, as an Indexed Job would run them.
    e = dict(os.environ, FERRY_ORT_LIB=ort_lib(), FERRY_SHARDS="3")
    procs = []
    for i in range(3):
        e_i = dict(e, JOB_COMPLETION_INDEX=str(i))
        procs.append(subprocess.Popen(
            [ferry_bin(), "batch", "--config", env["config"], "--endpoint", "risk", "--input",
             str(inp), "--output", str(tmp / "sharded")],
            env=e_i, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    in_shard = 0
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, f"{stdout}\n{stderr}"
        in_shard += int(stdout.split("batch: ")[1].split(" units")[0])
    assert in_shard == 7, "every unit belongs to exactly one shard"
    sharded = read_output(tmp / "sharded")
    cols = ["user_id", "amount"]
    assert len(sharded) == 420
    assert sorted(key(r, cols) for r in sharded) == sorted(key(r, cols) for r in single)
    # No duplicates: the input rows are distinct, so every output row must be too.
    assert len({(r["user_id"], r["amount"]) for r in rows}) == len(rows)
    assert len({key(r, cols) for r in sharded}) == len(sharded)
    assert_risk_matches(env, sharded)

    # An output under the input directory is never read back as input.
    for _ in range(2):
        r = batch(env, "--endpoint", "risk", "--input", str(inp), "--output", str(inp / "scored"))
        assert "batch: 7 units" in r.stdout, r.stdout
    assert "0 scored, 7 skipped" in r.stdout, r.stdout


def test_killed_run_resumes_without_duplicates_or_leftovers(env):
    tmp = env["tmp"]
    rows = risk_rows(600, 4)
    inp = tmp / "in"
    for i in range(6):
        write_parquet(str(inp / f"part-{i}.parquet"), rows[i * 100:(i + 1) * 100])
    out = tmp / "out"
    e = dict(os.environ, FERRY_ORT_LIB=ort_lib(), FERRY_BATCH_TEST_STALL_AFTER_UNITS="2")
    p = subprocess.Popen([ferry_bin(), "batch", "--config", env["config"], "--endpoint", "risk",
                          "--input", str(inp), "--output", str(out), "--chunk-rows", "30"],
                         env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        markers = glob.glob(str(out / "_markers" / "*.json"))
        temps = glob.glob(str(out / "_tmp" / "*.tmp"))
        if len(markers) == 2 and temps:
            break
        assert p.poll() is None, f"ferry batch exited early: {p.stderr.read()}"
        time.sleep(0.05)
    else:
        p.kill()
        pytest.fail("the stalled run never committed 2 units and started a third")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    # Killed mid-unit: 2 committed outputs, the partial third only as a temporary file.
    assert len(glob.glob(str(out / "*.parquet"))) == 2
    assert glob.glob(str(out / "_tmp" / "*.tmp"))
    assert len(read_output(out)) == 200

    r = batch(env, "--endpoint", "risk", "--input", str(inp), "--output", str(out))
    assert "4 scored, 2 skipped" in r.stdout, r.stdout
    got = read_output(out)
    assert len(got) == 600
    assert sorted(key(x, ["user_id", "amount"]) for x in got) == sorted(
        key(x, ["user_id", "amount"]) for x in read_output_fresh(env, inp, tmp / "fresh"))
    assert glob.glob(str(out / "_tmp" / "*.tmp")) == []
    assert len(glob.glob(str(out / "_markers" / "*.json"))) == 6
    assert_risk_matches(env, got)


def test_transforms_run_column_wise_and_answer_as_online(env):
    """An endpoint with built-in pre and post steps around a features model: batch over
    Parquet runs them on columns (the summary counts those rows) and writes, per row, the
    online answer's fields as typed columns; null amounts are filled as online."""
    tmp = env["tmp"]
    rows = risk_rows(400, 5)
    for i in range(0, len(rows), 7):
        rows[i]["amount"] = None
    write_parquet(str(tmp / "in-tf" / "a.parquet"), rows)

    (tmp / "server-tf").mkdir()
    srv = FerryServer(tmp / "server-tf", env["cfg"], "transforms")
    srv.start()
    try:
        srv.wait_ready()
        r = requests.post(f"{srv.url}/v1/endpoints/risk-tf/predict",
                          json={"instances": rows}, timeout=60)
        assert r.status_code == 200, r.text
        online = r.json()
    finally:
        srv.stop()

    out = batch(env, "--endpoint", "risk-tf", "--input", str(tmp / "in-tf"), "--output",
                str(tmp / "out-tf"), "--chunk-rows", "50")
    assert "0 failed" in out.stdout, out.stdout
    # The job's first chunk fixes the answer's columns through its JSON form; the rest go
    # column-wise.
    counted = re.search(r"batch: (\d+) of (\d+) scored rows went column-wise", out.stdout)
    assert counted, out.stdout
    assert int(counted.group(2)) == len(rows)
    assert int(counted.group(1)) >= len(rows) // 2, out.stdout
    table = pq.read_table(sorted(glob.glob(str(tmp / "out-tf" / "*.parquet")))[0])
    assert table.schema.field("decision").type == pa.string()
    assert table.schema.field("score").type == pa.float64()
    assert table.schema.field("label").type == pa.int64()
    got = table.to_pylist()
    assert [r["user_id"] for r in got] == [r["user_id"] for r in rows]
    assert [{k: r[k] for k in ("decision", "score", "label")} for r in got] == \
        online["predictions"]
    assert [r["variant"] for r in got] == online["variants"]
    assert {"approve", "review"} >= {r["decision"] for r in got}


def read_output_fresh(env, inp, out):
    batch(env, "--endpoint", "risk", "--input", str(inp), "--output", str(out))
    return read_output(out)


def test_bad_rows_go_to_the_error_file_and_the_rest_are_scored(env):
    tmp = env["tmp"]
    good = churn_rows(5, 5)
    lines = [
        good[0],
        {"id": 9001, "X": ["a"] * 30},          # wrong type
        good[1],
        {"id": 9002},                            # missing column
        "this is not json",
        good[2],
        {"id": 9003, "X": [1.0] * 7},            # wrong width
        good[3],
        good[4],
    ]
    write_jsonl(str(tmp / "in" / "bad.jsonl"), lines)
    r = batch(env, "--endpoint", "churn", "--input", str(tmp / "in"), "--output",
              str(tmp / "out"), "--format", "jsonl", "--id-columns", "id", expect=2)
    assert "5 scored, 4 failed" in r.stdout or "4 failed" in r.stdout, r.stdout
    got = read_output(tmp / "out", "jsonl")
    assert [x["id"] for x in got] == [g["id"] for g in good]
    sess = onnxruntime.InferenceSession(os.path.join(DEMO_REGISTRY, "churn", "1", "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    label, proba = sess.run(None, {"X": np.array([g["X"] for g in good], dtype=np.float32)})
    assert [x["prediction"]["label"] for x in got] == [int(v) for v in label]
    np.testing.assert_allclose([x["prediction"]["probabilities"] for x in got], proba,
                               rtol=1e-5, atol=1e-6)
    with open(tmp / "out" / "_errors" / "bad.jsonl") as f:
        errors = [json.loads(line) for line in f]
    assert [e["row"] for e in errors] == [1, 3, 4, 6]
    assert errors[0]["value"]["id"] == 9001 and "X" in errors[0]["reason"]
    assert "no key `X`" in errors[1]["reason"], errors[1]
    assert "invalid JSON" in errors[2]["reason"] and errors[2]["value"] == "this is not json"
    assert errors[3]["value"]["id"] == 9003
    marker = json.load(open(tmp / "out" / "_markers" / "bad.json"))
    assert (marker["rows"], marker["scored"], marker["failed"]) == (9, 5, 4)
    assert "rejected rows: " + str(tmp / "out" / "_errors" / "bad.jsonl") in r.stdout, r.stdout

    # A retry (Airflow's, a re-run) skips the committed unit but answers 2 again: the rejected
    # rows still stand, and a retry must never turn a partly failed job into a success.
    for extra in ([], ["--incremental"]):
        again = batch(env, "--endpoint", "churn", "--input", str(tmp / "in"), "--output",
                      str(tmp / "out"), "--format", "jsonl", "--id-columns", "id", *extra,
                      expect=2)
        assert "1 skipped" in again.stdout, again.stdout
        assert "4 rows were rejected in units an earlier run committed" in again.stdout
        assert "rejected rows: " + str(tmp / "out" / "_errors" / "bad.jsonl") in again.stdout

    # Parquet rows are bisected the same way: a null X and a too-short X among good rows.
    pgood = churn_rows(6, 8)
    prow = pgood[:2] + [{"id": 9101, "X": None}] + pgood[2:5] + [{"id": 9102, "X": [0.5] * 7}] \
        + pgood[5:]
    write_parquet(str(tmp / "inp" / "bad.parquet"), prow)
    batch(env, "--endpoint", "churn", "--input", str(tmp / "inp"), "--output",
          str(tmp / "outp"), "--chunk-rows", "8", expect=2)
    got = read_output(tmp / "outp")
    assert [x["id"] for x in got] == [g["id"] for g in pgood]
    label, _ = sess.run(None, {"X": np.array([g["X"] for g in pgood], dtype=np.float32)})
    assert [x["prediction"]["label"] for x in got] == [int(v) for v in label]
    with open(tmp / "outp" / "_errors" / "bad.jsonl") as f:
        errors = [json.loads(line) for line in f]
    assert [(e["row"], e["value"]["id"]) for e in errors] == [(2, 9101), (6, 9102)]
    assert all("X" in e["reason"] for e in errors), errors

    # Features endpoint: a row without its entity key and one with a wrong-typed amount.
    risk = risk_rows(4, 6)
    write_jsonl(str(tmp / "in2" / "r.jsonl"),
                [risk[0], {"amount": 3.0}, risk[1], {"user_id": "u1", "amount": "lots"},
                 risk[2], risk[3]])
    batch(env, "--endpoint", "risk", "--input", str(tmp / "in2"), "--output",
          str(tmp / "out2"), "--id-columns", "user_id", expect=2)
    got = read_output(tmp / "out2")
    assert [x["user_id"] for x in got] == [x["user_id"] for x in risk]
    assert_risk_matches(env, [dict(g, amount=r["amount"]) for g, r in zip(got, risk)])
    with open(tmp / "out2" / "_errors" / "r.jsonl") as f:
        errors = [json.loads(line) for line in f]
    assert [e["row"] for e in errors] == [1, 3]
    assert "user_id" in errors[0]["reason"]
    assert "amount" in errors[1]["reason"]


def test_s3_inputs_outputs_and_incremental(env, moto_s3):
    tmp = env["tmp"]
    s3 = moto_s3.client()
    s3.create_bucket(Bucket="batch-in")
    s3.create_bucket(Bucket="batch-out")
    rows = risk_rows(90, 7)
    parts = {"data/p.parquet": rows[:30], "data/c.csv": rows[30:60], "data/j.jsonl": rows[60:]}
    local = tmp / "stage"
    for k, part in parts.items():
        path = str(local / k)
        {"parquet": write_parquet, "csv": write_csv, "jsonl": write_jsonl}[k.rsplit(".", 1)[1]](
            path, part)
        s3.upload_file(path, "batch-in", k)
    s3.put_object(Bucket="batch-in", Key="data/_SUCCESS", Body=b"")

    r = batch(env, "--endpoint", "risk", "--input", "s3://batch-in/data/", "--output",
              "s3://batch-out/scored")
    assert "3 scored, 0 skipped" in r.stdout, r.stdout
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="batch-out")["Contents"])
    assert keys == ["scored/_markers/c.json", "scored/_markers/j.json", "scored/_markers/p.json",
                    "scored/c.parquet", "scored/j.parquet", "scored/p.parquet"]
    dl = tmp / "dl"
    dl.mkdir()
    for k in keys:
        if not k.startswith("scored/_"):
            s3.download_file("batch-out", k, str(dl / os.path.basename(k)))
    got = read_output(dl)
    assert sorted((x["user_id"], x["amount"]) for x in got) == \
        sorted((x["user_id"], x["amount"]) for x in rows)
    assert_risk_matches(env, got)
    marker = json.loads(s3.get_object(Bucket="batch-out", Key="scored/_markers/c.json")["Body"].read())
    etag = s3.head_object(Bucket="batch-in", Key="data/c.csv")["ETag"]
    assert marker["fingerprint"]["etag"] == etag and marker["rows"] == 30

    # One S3 object as the input.
    batch(env, "--endpoint", "risk", "--input", "s3://batch-in/data/p.parquet", "--output",
          str(tmp / "one"))
    got_one = read_output(tmp / "one")
    assert [(x["user_id"], x["amount"]) for x in got_one] == \
        [(x["user_id"], x["amount"]) for x in rows[:30]]

    # A glob from S3 to a local directory, as JSON Lines.
    batch(env, "--endpoint", "risk", "--input", "s3://batch-in/data/*.csv", "--output",
          str(tmp / "local"), "--format", "jsonl")
    got_local = read_output(tmp / "local", "jsonl")
    assert sorted((x["user_id"], x["amount"]) for x in got_local) == \
        sorted((x["user_id"], x["amount"]) for x in rows[30:60])

    # Unchanged inputs are skipped; a changed input is scored again only with --incremental.
    r = batch(env, "--endpoint", "risk", "--input", "s3://batch-in/data/", "--output",
              "s3://batch-out/scored", "--incremental")
    assert "0 scored, 3 skipped" in r.stdout, r.stdout
    changed = [dict(x, amount=x["amount"] + 100.0) for x in rows[30:60]]
    write_csv(str(local / "data/c.csv"), changed)
    s3.upload_file(str(local / "data/c.csv"), "batch-in", "data/c.csv")
    r = batch(env, "--endpoint", "risk", "--input", "s3://batch-in/data/", "--output",
              "s3://batch-out/scored")
    assert "0 scored, 3 skipped" in r.stdout, r.stdout
    r = batch(env, "--endpoint", "risk", "--input", "s3://batch-in/data/", "--output",
              "s3://batch-out/scored", "--incremental")
    assert "1 scored, 2 skipped" in r.stdout, r.stdout
    s3.download_file("batch-out", "scored/c.parquet", str(dl / "c.parquet"))
    got = [x for x in read_output(dl) if x["amount"] >= 100.0]
    assert sorted((x["user_id"], x["amount"]) for x in got) == \
        sorted((x["user_id"], x["amount"]) for x in changed)
    assert_risk_matches(env, got)


def online_predictions(srv, endpoint, rows, size):
    """The endpoint's answers in calls of `size` rows, the chunk size the batch job uses."""
    out = []
    for i in range(0, len(rows), size):
        r = requests.post(f"{srv.url}/v1/endpoints/{endpoint}/predict",
                          json={"instances": rows[i:i + size]}, timeout=60)
        assert r.status_code == 200, r.text
        out += r.json()["predictions"]
    return out


def test_column_wise_sticky_split_assigns_rows_as_the_server_does(env):
    """Parquet over a split endpoint without features or transforms is scored column-wise:
    variants come from the same sticky hash of the integer key column as online, and the
    interleaved variant columns hold each row's own answer."""
    tmp = env["tmp"]
    rows = churn_rows(300, 21)
    write_parquet(str(tmp / "in-ab" / "ab.parquet"), rows)
    workdir = tmp / "server-ab"
    workdir.mkdir()
    srv = FerryServer(workdir, env["cfg"], "ab")
    srv.start()
    try:
        srv.wait_ready()
        online, variants = [], []
        for i in range(0, len(rows), 64):
            r = requests.post(f"{srv.url}/v1/endpoints/churn-ab/predict",
                              json={"instances": rows[i:i + 64]}, timeout=60)
            assert r.status_code == 200, r.text
            online += r.json()["predictions"]
            variants += r.json()["variants"]
    finally:
        srv.stop()
    assert set(variants) == {"a", "b"}, "the split sends rows to both variants"
    r = batch(env, "--endpoint", "churn-ab", "--input", str(tmp / "in-ab"), "--output",
              str(tmp / "out-ab"), "--id-columns", "id", "--chunk-rows", "64", "--inflight", "1")
    assert f"batch: {len(rows)} of {len(rows)} scored rows went column-wise" in r.stdout, \
        r.stdout
    t = pq.read_table(str(tmp / "out-ab" / "ab.parquet"))
    assert t.column("id").to_pylist() == [x["id"] for x in rows]
    assert t.column("variant").to_pylist() == variants
    assert t.column("label").to_pylist() == [p["label"] for p in online]
    np.testing.assert_allclose(
        t.column("probabilities").to_pylist(), [p["probabilities"] for p in online],
        rtol=1e-6, atol=1e-7)


def test_output_columns_are_typed_and_equal_the_online_answers(env):
    """Issue 15, defect 5: one typed column per model output, holding the online answer."""
    tmp = env["tmp"]
    churn = churn_rows(150, 11)
    xr = np.random.default_rng(12).normal(size=(120, 64)).astype(np.float32)
    price = [{"id": 5000 + i, "X": [float(v) for v in row]} for i, row in enumerate(xr)]
    write_parquet(str(tmp / "in-churn" / "c.parquet"), churn)
    write_parquet(str(tmp / "in-price" / "p.parquet"), price)

    workdir = tmp / "server"
    workdir.mkdir()
    srv = FerryServer(workdir, env["cfg"], "typed")
    srv.start()
    try:
        srv.wait_ready()
        # 64-row calls, one chunk at a time in batch (--inflight 1): the same engine calls,
        # so even the tree ensemble's float sums are bit-equal.
        online_churn = online_predictions(srv, "churn", churn, 64)
        online_price = online_predictions(srv, "price", price, 64)
    finally:
        srv.stop()

    for name, inp, n in (("churn", "in-churn", len(churn)), ("price", "in-price", len(price))):
        for fmt in ("parquet", "jsonl"):
            r = batch(env, "--endpoint", name, "--input", str(tmp / inp), "--output",
                      str(tmp / f"out-{name}-{fmt}"), "--id-columns", "id", "--chunk-rows",
                      "64", "--inflight", "1", "--format", fmt)
            # Parquet to Parquet over a plain endpoint never builds JSON rows; the answers
            # below are still bit-equal to the online (JSON) ones.
            columnar = n if fmt == "parquet" else 0
            assert f"batch: {columnar} of {n} scored rows went column-wise" in r.stdout, r.stdout

    # Classifier: label INT64 [-1] and probabilities FP32 [-1, 2].
    t = pq.read_table(str(tmp / "out-churn-parquet" / "c.parquet"))
    assert t.column_names == ["id", "label", "probabilities"] + META
    assert t.schema.field("label").type == pa.int64()
    assert t.schema.field("probabilities").type == pa.list_(pa.float32(), 2)
    assert t.schema.field("version").type == pa.uint64()
    # Strings are dictionary-encoded, floats are not (interning distinct floats costs and
    # saves nothing).
    meta = pq.ParquetFile(str(tmp / "out-churn-parquet" / "c.parquet")).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings
                 for i in range(meta.num_columns)}
    assert any("DICTIONARY" in e for e in encodings["variant"]), encodings
    assert not any("DICTIONARY" in e for e in encodings["probabilities.list.item"]), encodings
    assert t.column("id").to_pylist() == [r["id"] for r in churn]
    assert t.column("label").to_pylist() == [p["label"] for p in online_churn]
    np.testing.assert_array_equal(
        t.column("probabilities").combine_chunks().flatten().to_numpy().reshape(-1, 2),
        np.array([p["probabilities"] for p in online_churn], dtype=np.float32))
    sess = onnxruntime.InferenceSession(os.path.join(DEMO_REGISTRY, "churn", "1", "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    label, proba = sess.run(None, {"X": np.array([r["X"] for r in churn], dtype=np.float32)})
    assert t.column("label").to_pylist() == [int(v) for v in label]
    np.testing.assert_allclose(t.column("probabilities").to_pylist(), proba, rtol=1e-5, atol=1e-6)

    # Regressor: one FP32 [-1, 1] output is a plain float32 column.
    t = pq.read_table(str(tmp / "out-price-parquet" / "p.parquet"))
    assert t.column_names == ["id", "variable"] + META
    assert t.schema.field("variable").type == pa.float32()
    assert t.column("variable").to_pylist() == [p[0] for p in online_price]
    sess = onnxruntime.InferenceSession(os.path.join(DEMO_REGISTRY, "mlp", "1", "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"X": xr})
    np.testing.assert_allclose(t.column("variable").to_numpy(), ref[:, 0], rtol=1e-4, atol=1e-4)

    # JSON Lines: the same columns, numbers as numbers and lists as arrays.
    with open(tmp / "out-churn-jsonl" / "c.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert list(lines[0]) == ["id", "label", "probabilities"] + META
    assert [x["label"] for x in lines] == [p["label"] for p in online_churn]
    assert [x["probabilities"] for x in lines] == [p["probabilities"] for p in online_churn]
    assert all(type(x["label"]) is int for x in lines)
    with open(tmp / "out-price-jsonl" / "p.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert [x["variable"] for x in lines] == [p[0] for p in online_price]
    assert all(type(x["variable"]) is float for x in lines)


def write_bad_shape_model(registry, name, label_skip, proba_skip, width):
    """A model whose manifest declares label INT64 [-1] and probabilities FP32 [-1, 2], but
    which answers a label for all rows but the first `label_skip` and `width` probabilities
    for all rows but the first `proba_skip`."""
    from onnx import TensorProto, helper, numpy_helper
    big = np.iinfo(np.int64).max
    inits = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in (
        ("label_from", [label_skip]), ("proba_from", [proba_skip]), ("rows_to", [big]),
        ("axis0", [0]), ("cols_from", [0]), ("cols_to", [width]), ("axis1", [1]))]
    nodes = [
        helper.make_node("Slice", ["X", "label_from", "rows_to", "axis0"], ["label_rows"]),
        helper.make_node("ArgMax", ["label_rows"], ["label"], axis=1, keepdims=0),
        helper.make_node("Slice", ["X", "proba_from", "rows_to", "axis0"], ["proba_rows"]),
        helper.make_node("Slice", ["proba_rows", "cols_from", "cols_to", "axis1"],
                         ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["L"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["P", "K"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    vdir = os.path.join(str(registry), name, "1")
    os.makedirs(vdir)
    path = os.path.join(vdir, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    with open(path, "rb") as f:
        digest = __import__("hashlib").sha256(f.read()).hexdigest()
    manifest = {"name": name, "version": 1, "format": "onnx", "artifact": "model.onnx",
                "sha256": digest,
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]}
    with open(os.path.join(vdir, "model.yaml"), "w") as f:
        json.dump(manifest, f)


def test_a_model_answering_the_wrong_shape_fails_the_unit_not_rows(env):
    """Issue 15, defect 7a: a model answering with outputs that break its own signature is the
    model's fault: the unit fails (exit 3) and commits nothing, no row is blamed."""
    tmp = env["tmp"]
    write_bad_shape_model(env["registry"], "wide", 0, 0, 3)    # [N, 3] for a declared [-1, 2]
    write_bad_shape_model(env["registry"], "short", 1, 1, 2)   # N - 1 rows
    write_bad_shape_model(env["registry"], "uneven", 0, 1, 2)  # N labels, N - 1 probabilities
    cfg = dict(env["cfg"])
    # Without dynamic batching no merge-and-split step notices a short answer on its way.
    cfg["batching"] = {"max_batch_size": 0}
    cfg["endpoints"] = [{"name": n, "variants": [{"name": "main", "model": f"{n}@1",
                                                  "weight": 100}]}
                        for n in ("wide", "short", "uneven")]
    config = tmp / "bad-shape.yaml"
    config.write_text(to_yaml(cfg))
    bad_env = dict(env, config=str(config))
    rng = np.random.default_rng(13)
    rows = [{"id": i, "X": [float(v) for v in rng.normal(size=4)]} for i in range(20)]
    write_jsonl(str(tmp / "in" / "x.jsonl"), rows)

    for name, says in (("wide", "`probabilities` with shape [8, 3] for 8 rows"),
                       ("short", "`label` with shape [7] for 8 rows"),
                       ("uneven", "`probabilities` with shape [7, 2] for 8 rows")):
        out = tmp / f"out-{name}"
        r = batch(bad_env, "--endpoint", name, "--input", str(tmp / "in"), "--output", str(out),
                  "--chunk-rows", "8", "--inflight", "1", expect=3)
        assert "0 scored, 0 skipped (already committed), 1 failed;" in r.stdout, r.stdout
        assert says in r.stderr and f"model {name}@1" in r.stderr, r.stderr
        assert glob.glob(str(out / "*.parquet")) == []
        assert not os.path.exists(out / "_errors"), "a model fault must not be blamed on rows"
        assert not os.path.exists(out / "_markers" / "x.json")


def test_postprocess_fields_become_columns_and_clashes_are_refused(env):
    """A postprocess's fields are columns, typed by the output signature where a field keeps an
    output's name and by their values otherwise, fixed once for the job (`_schema.json`).
    Output names that clash, and variants whose outputs differ, stop the job (exit 1)."""
    tmp = env["tmp"]
    decide = {"name": "decide", "variants": [{"name": "main", "model": "churn@champion",
                                              "weight": 100}],
              "postprocess": [
                  {"threshold": {"field": "probabilities", "index": 1, "threshold": 0.5,
                                 "labels": ["no", "yes"], "output": "decision"}},
                  {"rename": {"probabilities": "scores"}}]}
    clash = {"name": "clash", "variants": [{"name": "main", "model": "churn@champion",
                                            "weight": 100}],
             "postprocess": [{"rename": {"label": "version"}}]}
    mixed = {"name": "mixed", "variants": [{"name": "a", "model": "churn@champion", "weight": 50},
                                           {"name": "b", "model": "mlp@1", "weight": 50}]}
    cfg = dict(env["cfg"], endpoints=env["cfg"]["endpoints"] + [decide, clash, mixed])
    config = tmp / "post.yaml"
    config.write_text(to_yaml(cfg))
    penv = dict(env, config=str(config))
    rows = churn_rows(100, 21)
    write_parquet(str(tmp / "in" / "a.parquet"), rows[:64])

    workdir = tmp / "server"
    workdir.mkdir()
    srv = FerryServer(workdir, cfg, "post")
    srv.start()
    try:
        srv.wait_ready()
        online = online_predictions(srv, "decide", rows, 64)
    finally:
        srv.stop()

    out = tmp / "out"
    batch(penv, "--endpoint", "decide", "--input", str(tmp / "in"), "--output", str(out),
          "--id-columns", "id", "--chunk-rows", "64", "--inflight", "1")
    # A second unit scored by a later run gets the same columns.
    write_parquet(str(tmp / "in" / "b.parquet"), rows[64:])
    batch(penv, "--endpoint", "decide", "--input", str(tmp / "in"), "--output", str(out),
          "--id-columns", "id", "--chunk-rows", "64", "--inflight", "1")
    schema = json.load(open(out / "_schema.json"))
    assert [c["name"] for c in schema["columns"]] == ["decision", "label", "scores"]
    tables = [pq.read_table(str(out / f"{u}.parquet")) for u in ("a", "b")]
    assert tables[0].schema == tables[1].schema
    t = pa.concat_tables(tables)
    assert t.column_names == ["id", "decision", "label", "scores"] + META
    assert t.schema.field("decision").type == pa.string()
    assert t.schema.field("label").type == pa.int64()  # an output's name: typed by it
    assert t.schema.field("scores").type == pa.list_(pa.float64())  # typed by its values
    assert t.column("id").to_pylist() == [r["id"] for r in rows]
    assert t.drop_columns(["id"] + META).to_pylist() == online

    for endpoint, says in (("clash", "prediction field `version` clashes"),
                           ("mixed", "different outputs")):
        r = batch(penv, "--endpoint", endpoint, "--input", str(tmp / "in"), "--output",
                  str(tmp / f"out-{endpoint}"), expect=1)
        assert says in r.stderr, r.stderr
    # An id column named like an output.
    write_parquet(str(tmp / "in-ids" / "x.parquet"), [dict(r, label=1) for r in rows[:5]])
    r = batch(penv, "--endpoint", "churn", "--input", str(tmp / "in-ids"), "--output",
              str(tmp / "out-ids"), expect=1)
    assert "input column `label` clashes" in r.stderr, r.stderr
    assert glob.glob(str(tmp / "out-ids" / "*.parquet")) == []
