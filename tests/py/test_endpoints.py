"""Business endpoints end to end with the real `ferry` binary: A/B split by the documented
sticky hash (recomputed here with hashlib), forcing, reweighting by SIGHUP without a restart,
transforms, shadows that are slow or failing, and prediction capture read back from disk.

Models: the demo `risk` model (scripts/make_demo_features.py) as versions 1 and 2, and a
`riskbad` copy whose features section needs a request field nobody sends. Features: the
in-process store loaded from the demo's offline Parquet (Redis is covered in test_features).
"""
import glob
import hashlib
import json
import os
import shutil
import signal
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from conftest import FerryServer
from test_features import expected_risk, load_demo_module, newest_offline


def documented_variant(salt, key, weights):
    """README "A/B experiments": the formula analysts use, written independently of ferry."""
    b = int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big") % 10000
    total, cumulative = sum(weights), 0
    for i, w in enumerate(weights):
        cumulative += w
        if b < cumulative * 10000 // total:
            return i
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("endpoints")
    mod = load_demo_module()
    registry, features = root / "registry", root / "features"
    mod.build(str(registry), str(features))
    mod.build(str(registry), str(features), version=2)
    bad = registry / "riskbad" / "1"
    shutil.copytree(registry / "risk" / "1", bad)
    manifest = json.loads((bad / "model.yaml").read_text())
    manifest["name"] = "riskbad"
    manifest["features"]["columns"][-1] = "request.nobody_sends_this"
    (bad / "model.yaml").write_text(json.dumps(manifest))
    # risk@3: the same model with a `preprocess` of its own (it travels with the version).
    mod.build(str(registry), str(features), version=3)
    v3 = registry / "risk" / "3" / "model.yaml"
    manifest = json.loads(v3.read_text())
    manifest["preprocess"] = [{"scale": {"amount": {"factor": 2.0, "offset": 1.0}}}]
    v3.write_text(json.dumps(manifest))
    return root, registry, features


def base_config(registry, features, endpoints, models=()):
    return {
        "registry": {"uri": str(registry)},
        "onnx_engine": "ort",
        "features": {"repo": str(features / "features.yaml")},
        "models": list(models),
        "endpoints": endpoints,
    }


def start(root, name, cfg):
    workdir = root / name
    workdir.mkdir()
    srv = FerryServer(workdir, cfg, name)
    srv.start()
    srv.wait_ready()
    return srv


def predict(srv, endpoint, instances, headers=None):
    return requests.post(f"{srv.url}/v1/endpoints/{endpoint}/predict",
                         json={"instances": instances}, headers=headers or {}, timeout=30)


def metric(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def ab_endpoint(weights):
    return {"name": "exp", "sticky_key": "customer",
            "variants": [{"name": "control", "model": "risk@1", "weight": weights[0]},
                         {"name": "treatment", "model": "risk@2", "weight": weights[1]}]}


def test_split_is_the_documented_hash_forcible_and_reweighted_by_sighup(env):
    root, registry, features = env
    srv = start(root, "ab", base_config(registry, features, [ab_endpoint((80, 20))]))
    try:
        keys = [f"customer-{i}" for i in range(5000)]
        rows = [{"user_id": "u1", "customer": k, "amount": 10.0} for k in keys]
        r = predict(srv, "exp", rows)
        assert r.status_code == 200, r.text
        body = r.json()
        before = body["variants"]
        expected = [["control", "treatment"][documented_variant("exp", k, [80, 20])] for k in keys]
        assert before == expected
        share = before.count("control") / len(keys)
        assert 0.77 <= share <= 0.83, share
        # Each row says which model version answered it; split rows have no common variant.
        assert body["versions"] == ["1" if v == "control" else "2" for v in before]
        assert body["variant"] is None and "x-ferry-variant" not in r.headers

        # Same key, same variant, one row at a time.
        for k in keys[:40]:
            one = predict(srv, "exp", [{"user_id": "u1", "customer": k, "amount": 10.0}])
            assert one.json()["variants"] == [before[keys.index(k)]]
            assert one.headers["x-ferry-variant"] == before[keys.index(k)]

        # Forcing a variant.
        forced = predict(srv, "exp", rows[:100], headers={"x-ferry-variant": "treatment"})
        assert forced.status_code == 200
        assert set(forced.json()["variants"]) == {"treatment"}
        assert forced.headers["x-ferry-model-version"] == "2"
        unknown = predict(srv, "exp", rows[:1], headers={"x-ferry-variant": "nope"})
        assert unknown.status_code == 400 and "treatment" in unknown.json()["error"]

        # 80/20 -> 50/50 by editing the file and SIGHUP; same process, no restart.
        pid = srv.proc.pid
        srv.config["endpoints"] = [ab_endpoint((50, 50))]
        with open(srv.config_path, "w") as f:
            json.dump(srv.config, f)
        srv.proc.send_signal(signal.SIGHUP)
        want = [["control", "treatment"][documented_variant("exp", k, [50, 50])] for k in keys]
        deadline = time.monotonic() + 30
        while True:
            after = predict(srv, "exp", rows).json()["variants"]
            if after == want:
                break
            assert time.monotonic() < deadline, "the 50/50 weights were not applied after SIGHUP"
            time.sleep(0.3)
        assert srv.proc.pid == pid and srv.proc.poll() is None
        kept_control = [k for k, b, a in zip(keys, before, after) if a == "control"]
        assert all(before[keys.index(k)] == "control" for k in kept_control)
        assert all(a == "treatment" for b, a in zip(before, after) if b == "treatment")
        assert 0.47 <= after.count("control") / len(keys) <= 0.53

        # A config that does not validate changes nothing.
        srv.config["endpoints"] = [ab_endpoint((0, 0))]
        with open(srv.config_path, "w") as f:
            json.dump(srv.config, f)
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert predict(srv, "exp", rows).json()["variants"] == want
        assert "Config reload failed" in srv.log()
        m = srv.get("/metrics").text
        assert metric(m, "ferry_endpoint_requests_total", endpoint="exp", variant="treatment",
                      version="2") > 0
        # JSON rows whose fields map onto typed columns take the column path; the request
        # with a forced variant (100 rows) and the 40 one-row requests (below
        # COLUMNS_MIN_ROWS) took the row path.
        assert metric(m, "ferry_endpoint_rows_total", endpoint="exp", path="columns") >= 5040
        assert metric(m, "ferry_endpoint_rows_total", endpoint="exp", path="rows") == 140
    finally:
        srv.stop()


def test_transforms_shape_inputs_and_answers(env):
    root, registry, features = env
    endpoint = {
        "name": "priced",
        "variants": [{"name": "only", "model": "risk@1"}],
        "preprocess": [{"fill_missing": {"amount": 7.5}}, {"clip": {"amount": {"max": 100}}}],
        "postprocess": [
            {"threshold": {"field": "probabilities", "index": 1, "threshold": 0.5,
                           "labels": ["approve", "review"], "output": "decision"}},
            {"script": {"name": "vip_rule", "source":
                        'fn transform(row, input) { if input.tier == "vip" { row.decision = "approve"; } row }'}},
            {"select": ["decision", "probabilities"]},
        ],
    }
    srv = start(root, "transforms", base_config(registry, features, [endpoint]))
    try:
        newest = newest_offline(features)
        sent = [{"user_id": "u1"}, {"user_id": "u2", "amount": 500.0},
                {"user_id": "u3", "amount": 20.0, "tier": "vip"}]
        r = predict(srv, "priced", sent)
        assert r.status_code == 200, r.text
        amounts = [7.5, 100.0, 20.0]  # filled, clipped, as sent
        vec = [[newest[s["user_id"]]["visits_7d"], newest[s["user_id"]]["spend_30d"], a]
               for s, a in zip(sent, amounts)]
        _, proba = expected_risk(registry, vec)
        preds = r.json()["predictions"]
        np.testing.assert_allclose([p["probabilities"] for p in preds], proba, rtol=1e-5, atol=1e-6)
        for i, p in enumerate(preds):
            assert set(p) == {"decision", "probabilities"}
            want = "review" if proba[i][1] >= 0.5 else "approve"
            if sent[i].get("tier") == "vip":
                want = "approve"
            assert p["decision"] == want, (i, p)
        # A value a built-in step cannot use: 400 naming the step and the row.
        bad = predict(srv, "priced", [{"user_id": "u1", "amount": 1.0}, {"user_id": "u1", "amount": "x"}])
        assert bad.status_code == 400, bad.text
        assert "clip" in bad.json()["error"] and "row 1" in bad.json()["error"]
    finally:
        srv.stop()


def test_model_owned_preprocess_travels_with_the_version(env):
    root, registry, features = env
    endpoints = [{"name": "v1", "variants": [{"name": "a", "model": "risk@1"}]},
                 {"name": "v3", "variants": [{"name": "a", "model": "risk@3"}]}]
    srv = start(root, "model-preprocess", base_config(registry, features, endpoints))
    try:
        sent = [{"user_id": f"u{i}", "amount": 4.0 * i} for i in range(1, 8)]
        scaled = [dict(r, amount=r["amount"] * 2.0 + 1.0) for r in sent]
        got = predict(srv, "v3", sent)
        assert got.status_code == 200, got.text
        ref = predict(srv, "v1", scaled).json()["predictions"]
        assert [p["probabilities"] for p in got.json()["predictions"]] == [p["probabilities"] for p in ref]
        assert got.json()["versions"] == ["3"] * len(sent)
    finally:
        srv.stop()


def test_slow_and_failing_shadows_never_reach_callers_and_are_captured(env):
    root, registry, features = env
    capture_dir = root / "captured"
    endpoint = {
        "name": "risk",
        "variants": [{"name": "control", "model": "risk@1"}],
        "shadow": [
            # risk@2 batches with a 1.5 s queue delay, far past the shadow's 50 ms timeout.
            {"model": "risk@2", "name": "slow", "sample": 1.0, "timeout": "50ms"},
            {"model": "riskbad@1", "name": "broken", "sample": 1.0, "timeout": "5s"},
            # Not in the registry at all: must not hold back readiness (start() waits for it).
            {"model": "ghost@1", "name": "ghost", "sample": 1.0},
        ],
        "capture": {"sample_percent": 100, "destination": str(capture_dir), "format": "jsonl",
                    "max_batch_rows": 50, "flush_interval": "500ms"},
    }
    slow = {"model": "risk@2", "batching": {"max_batch_size": 4096,
                                            "max_queue_delay_us": 1500000}}
    srv = start(root, "shadow", base_config(registry, features, [endpoint], models=[slow]))
    try:
        newest = newest_offline(features)
        served = {}
        for i in range(30):
            user = f"u{i % 10 + 1}"
            inst = {"user_id": user, "amount": float(i)}
            r = predict(srv, "risk", [inst], headers={"x-request-id": f"req-{i}"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["variants"] == ["control"] and body["versions"] == ["1"]
            _, proba = expected_risk(registry, [[newest[user]["visits_7d"],
                                                 newest[user]["spend_30d"], float(i)]])
            np.testing.assert_allclose(body["predictions"][0]["probabilities"], proba[0],
                                       rtol=1e-5, atol=1e-6)
            served[f"req-{i}"] = (inst, body["predictions"][0])
        deadline = time.monotonic() + 30
        while True:
            m = srv.get("/metrics").text
            timeouts = metric(m, "ferry_shadow_requests_total", variant="slow", outcome="timeout")
            dropped = metric(m, "ferry_shadow_requests_total", variant="slow", outcome="dropped")
            errors = metric(m, "ferry_shadow_requests_total", variant="broken", outcome="error")
            ghost = metric(m, "ferry_shadow_requests_total", variant="ghost", outcome="error")
            if timeouts + dropped == 30 and errors == 30 and ghost == 30:
                break
            assert time.monotonic() < deadline, (timeouts, dropped, errors, ghost)
            time.sleep(0.3)
        assert timeouts >= 1
        assert metric(m, "ferry_shadow_requests_total", variant="slow", outcome="ok") == 0
    finally:
        srv.stop()  # flushes the capture buffer
    records = []
    for path in sorted(glob.glob(str(capture_dir / "risk" / "**" / "*.jsonl"), recursive=True)):
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip()]
    primary = [r for r in records if not r["shadow"]]
    assert sorted(r["request_id"] for r in primary) == sorted(served)
    for rec in primary:
        inst, prediction = served[rec["request_id"]]
        assert rec["input"] == inst and rec["output"] == prediction
        assert rec["variant"] == "control" and rec["model"] == "risk" and rec["version"] == 1
        assert rec["endpoint"] == "risk"
        user = inst["user_id"]
        assert rec["features"]["user_stats.visits_7d"] == pytest.approx(newest[user]["visits_7d"])
        assert rec["features"]["user_stats.spend_30d"] == pytest.approx(newest[user]["spend_30d"], rel=1e-6)
    # Neither shadow produced an answer, so none was captured.
    assert not [r for r in records if r["shadow"]]


def test_capture_as_parquet_round_trips(env):
    root, registry, features = env
    capture_dir = root / "captured-parquet"
    endpoint = {"name": "risk", "variants": [{"name": "control", "model": "risk@1"}],
                "shadow": [{"model": "risk@2", "name": "candidate", "sample": 1.0}],
                "capture": {"sample_percent": 100, "destination": f"file://{capture_dir}",
                            "format": "parquet", "max_batch_rows": 1000, "flush_interval": "60s"}}
    srv = start(root, "capture-parquet", base_config(registry, features, [endpoint]))
    sent = [{"user_id": f"u{i}", "amount": 3.0 * i} for i in range(1, 6)]
    try:
        r = predict(srv, "risk", sent, headers={"x-request-id": "batch-1"})
        assert r.status_code == 200
        answers = r.json()["predictions"]
        deadline = time.monotonic() + 20
        while metric(srv.get("/metrics").text, "ferry_shadow_requests_total",
                     variant="candidate", outcome="ok") < 1:
            assert time.monotonic() < deadline, "the shadow never answered"
            time.sleep(0.2)
    finally:
        srv.stop()  # the 60 s flush interval has not passed: shutdown must write the batch
    files = glob.glob(str(capture_dir / "risk" / "**" / "*.parquet"), recursive=True)
    assert files, "no capture file written on shutdown"
    rows = []
    for f in files:
        rows += pq.read_table(f).to_pylist()
    primary = sorted((r for r in rows if not r["shadow"]), key=lambda r: json.loads(r["input"])["user_id"])
    assert len(primary) == 5
    for rec, inst, ans in zip(primary, sent, answers):
        assert rec["request_id"] == "batch-1" and rec["variant"] == "control"
        assert json.loads(rec["input"]) == inst and json.loads(rec["output"]) == ans
    shadow = [r for r in rows if r["shadow"]]
    # The shadow (same model, version 2) answered the same rows; its answers were captured.
    assert len(shadow) == 5 and {r["variant"] for r in shadow} == {"candidate"}
    assert {r["version"] for r in shadow} == {2}
    by_user = {json.loads(r["input"])["user_id"]: json.loads(r["output"]) for r in shadow}
    for inst, ans in zip(sent, answers):
        np.testing.assert_allclose(by_user[inst["user_id"]]["probabilities"], ans["probabilities"],
                                   rtol=1e-6)


def test_sighup_recompiles_a_changed_script_file(env):
    root, registry, features = env
    workdir = root / "script-file"
    workdir.mkdir()
    rule = workdir / "rule.rhai"
    rule.write_text('fn transform(row, input) { row.tag = "v1"; row }')
    endpoint = {"name": "tagged", "variants": [{"name": "a", "model": "risk@1"}],
                "postprocess": [{"script": {"file": "rule.rhai"}}]}
    srv = FerryServer(workdir, base_config(registry, features, [endpoint]), "script-file")
    srv.start()
    try:
        srv.wait_ready()
        rows = [{"user_id": "u1", "amount": 1.0}]
        assert predict(srv, "tagged", rows).json()["predictions"][0]["tag"] == "v1"
        # The config file is unchanged; only the script it names is.
        rule.write_text('fn transform(row, input) { row.tag = "v2"; row }')
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while predict(srv, "tagged", rows).json()["predictions"][0]["tag"] != "v2":
            assert time.monotonic() < deadline, "the edited script was not picked up"
            time.sleep(0.2)
        # A script that no longer compiles is refused; the previous one keeps serving.
        rule.write_text("fn transform(row, input) { row.tag = ; row }")
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "Config reload failed" not in srv.log():
            assert time.monotonic() < deadline, "the broken script was not reported"
            time.sleep(0.2)
        assert predict(srv, "tagged", rows).json()["predictions"][0]["tag"] == "v2"
    finally:
        srv.stop()
