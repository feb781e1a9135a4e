"""ferry against the real Feast (`feast` package) on a real redis-server (started here, never
mocked): a Feast repo written into a temporary directory (file offline source → Parquet, Redis
online store on the test's redis-server) is `feast apply`-ed and materialized by Feast's own CLI,
then ferry (`online_format: feast`) must answer exactly what `FeatureStore.get_online_features`
answers, through `POST /v1/features` and a business endpoint; and the reverse: what `ferry
features materialize` writes, Feast reads back unchanged (byte for byte the hashes Feast writes).

A missing feast, redis-server or pyarrow makes these tests fail, never skip.
"""
import base64
import datetime as dt
import importlib.util
import os
import subprocess

import numpy as np
import onnxruntime
import pytest
import redis
import requests
from feast import FeatureStore

import feast_repo as fr
from conftest import FerryServer, ferry_bin

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_SCRIPT = os.path.join(HERE, "..", "..", "scripts", "make_demo_features.py")

BYTES_FEATURES = {"blob", "blobs"}


def run_ferry(*args, check=True):
    r = subprocess.run([ferry_bin(), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, \
            f"ferry {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def now_ms():
    """Now, truncated to whole milliseconds: ferry keeps event times in milliseconds, so rows
    on whole milliseconds are written byte-identical by both."""
    t = dt.datetime.now(dt.timezone.utc)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def rows(now):
    """u1: every type set; u2: mostly null; old: 3 days old (user_stats' TTL is 1 day)."""
    h = dt.timedelta(hours=1)
    user = [
        dict(user_id="u1", event_ts=now - 5 * h, visits_7d=0.1, spend_30d=2.5, orders=1,
             age=30, country="de", vip=False, blob=b"old", scores=[9.0]),
        dict(user_id="u1", event_ts=now - h, visits_7d=0.1, spend_30d=2.5, orders=3, age=40,
             country="fr", vip=True, blob=b"\x00\xff", scores=[1.5, -2.0],
             weights=[0.25, 1e-300], counts=[1, -1, 2**62], small=[7, -2**31], tags=["a", ""],
             flags=[True, False], blobs=[b"x", b""]),
        dict(user_id="u2", event_ts=now - 2 * h, visits_7d=2.0, counts=[]),
        dict(user_id="old", event_ts=now - dt.timedelta(days=3), visits_7d=9.0, spend_30d=90.0,
             orders=9),
    ]
    pair = [
        dict(user_id="u1", merchant_id=7, event_ts=now - h, pair_spend=12.5, pair_orders=2),
        dict(user_id="u1", merchant_id=-8, event_ts=now - h, pair_spend=0.5, pair_orders=1),
        dict(user_id="u2", merchant_id=7, event_ts=now - h, pair_spend=None, pair_orders=5),
    ]
    profile = [
        dict(user_id="u1", event_ts=now - 3 * h, segment="gold", tenure=4),
        dict(user_id="u3", event_ts=now - 3 * h, segment="new", tenure=None),
    ]
    return user, pair, profile


@pytest.fixture
def feast_env(tmp_path, redis_server):
    now = now_ms()
    user, pair, profile = rows(now)
    feast_dir, ferry_repo = fr.write_repo(str(tmp_path), redis_server.port, user, pair, profile)
    fr.feast_cli(feast_dir, "apply")
    return dict(now=now, feast_dir=feast_dir, ferry_repo=ferry_repo, tmp=tmp_path,
                redis=redis_server, store=FeatureStore(repo_path=feast_dir))


def feast_materialize_incremental(env):
    end = env["now"] + dt.timedelta(minutes=1)
    fr.feast_cli(env["feast_dir"], "materialize-incremental", end.isoformat())


def feast_read(env, refs, entity_rows):
    """`FeatureStore.get_online_features(...).to_dict()` for `view.feature` refs."""
    features = [r.replace(".", ":", 1) for r in refs]
    return env["store"].get_online_features(features=features,
                                            entity_rows=entity_rows).to_dict()


def ferry_values(result, refs):
    """A /v1/features result row as {feature: value}, bytes decoded from base64."""
    out = {}
    for ref, value in zip(refs, result["values"]):
        name = ref.split(".", 1)[1]
        if name in BYTES_FEATURES and value is not None:
            value = ([base64.b64decode(v) for v in value] if isinstance(value, list)
                     else base64.b64decode(value))
        out[name] = value
    return out


def assert_same_as_feast(env, srv, refs, entities):
    """ferry's /v1/features equals Feast's get_online_features for these entities; returns
    ferry's results."""
    n = len(next(iter(entities.values())))
    entity_rows = [{k: v[i] for k, v in entities.items()} for i in range(n)]
    want = feast_read(env, refs, entity_rows)
    r = srv.post("/v1/features", json={"entities": entities, "features": refs})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == n
    for i, res in enumerate(results):
        got = ferry_values(res, refs)
        for ref in refs:
            name = ref.split(".", 1)[1]
            assert got[name] == want[name][i], \
                f"{ref} for {entity_rows[i]}: ferry {got[name]!r}, feast {want[name][i]!r}"
            # The same Python type too (an int is not a float, a bool not an int).
            assert type(got[name]) is type(want[name][i]), (ref, got[name], want[name][i])
    return results


USER_REFS = [f"user_stats.{f}" for f in fr.USER_FEATURES]
PAIR_REFS = [f"pair_stats.{f}" for f in fr.PAIR_FEATURES]
PROFILE_REFS = [f"user_profile.{f}" for f in fr.PROFILE_FEATURES]


def load_demo():
    spec = importlib.util.spec_from_file_location("make_demo_features", DEMO_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ferry_server(env, name="feast"):
    """ferry serving the Feast repo's features, plus endpoint `risk` (the demo model over
    [user_stats.visits_7d, user_stats.spend_30d, request.amount])."""
    registry = env["tmp"] / "registry"
    load_demo().build(str(registry), str(env["tmp"] / "demo_features"))
    workdir = env["tmp"] / name
    workdir.mkdir()
    cfg = {
        "registry": {"uri": str(registry)},
        "onnx_engine": "ort",
        "features": {"repo": env["ferry_repo"], "redis": env["redis"].url, "timeout": "2s"},
        "endpoints": [{"name": "risk", "variants": [{"name": "control", "model": "risk@1",
                                                     "weight": 100}]}],
    }
    srv = FerryServer(workdir, cfg, name)
    srv.start()
    srv.wait_ready()
    return srv, registry


def test_ferry_serves_what_feast_materialized(feast_env):
    env = feast_env
    feast_materialize_incremental(env)
    srv, registry = ferry_server(env)
    try:
        users = ["u1", "u2", "old", "nobody"]
        results = assert_same_as_feast(env, srv, USER_REFS, {"user_id": users})
        # Known entities: present (u2's nulls are missing); `old` was never materialized
        # (older than the TTL) and `nobody` does not exist: null, like Feast.
        assert results[0]["statuses"] == ["present"] * len(USER_REFS)
        assert results[0]["event_timestamps"][0] == \
            int((env["now"] - dt.timedelta(hours=1)).timestamp() * 1000)
        assert results[1]["statuses"][0] == "present" and results[1]["statuses"][1] == "missing"
        assert results[2]["statuses"] == ["missing"] * len(USER_REFS)
        assert results[3]["statuses"] == ["missing"] * len(USER_REFS)
        assert results[0]["values"][0] == pytest.approx(0.1, rel=1e-7)  # a float32 value

        # Two views of one entity share Feast's hash: each reads its own fields (u3 has only
        # a profile, u2 only stats).
        assert_same_as_feast(env, srv, ["user_stats.orders"] + PROFILE_REFS,
                             {"user_id": ["u1", "u2", "u3", "nobody"]})
        # Compound key (string + int64): known pairs, an unknown pair, keys given as ints.
        assert_same_as_feast(env, srv, PAIR_REFS,
                             {"user_id": ["u1", "u1", "u2", "u1"], "merchant_id": [7, -8, 7, 9]})
        # Both views in one request: each view takes the join keys it is keyed by.
        assert_same_as_feast(env, srv, ["user_stats.orders", "pair_stats.pair_spend"],
                             {"user_id": ["u1", "u2", "nobody"], "merchant_id": [7, 7, 7]})
        # A compound view without one of its join keys is a client mistake.
        r = srv.post("/v1/features", json={"entities": {"user_id": ["u1"]},
                                           "features": PAIR_REFS})
        assert r.status_code == 400 and "merchant_id" in r.json()["error"], r.text

        # The business endpoint: the model's inputs are Feast's values (null → NaN).
        want = feast_read(env, ["user_stats.visits_7d", "user_stats.spend_30d"],
                          [{"user_id": u} for u in users])
        amounts = [12.5, 80.0, 3.0, 1.0]
        x = np.array([[np.nan if v is None else v for v in (want["visits_7d"][i],
                                                             want["spend_30d"][i])] + [a]
                      for i, a in enumerate(amounts)], dtype=np.float32)
        sess = onnxruntime.InferenceSession(str(registry / "risk" / "1" / "model.onnx"),
                                            providers=["CPUExecutionProvider"])
        label, proba = sess.run(None, {"X": x})
        r = requests.post(srv.url + "/v1/endpoints/risk/predict", timeout=30, json={
            "instances": [{"user_id": u, "amount": a} for u, a in zip(users, amounts)]})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["label"] for p in preds] == label.tolist()
        # A NaN input gives NaN probabilities, which JSON carries as null.
        got = np.array([[np.nan if v is None else v for v in p["probabilities"]] for p in preds])
        np.testing.assert_allclose(got, proba, rtol=1e-5, atol=1e-6, equal_nan=True)
        assert np.isnan(proba[3]).all() and not np.isnan(proba[0]).any()

        # Feast applies the TTL when it materializes, not when it reads: materializing an
        # explicit window that holds the 3-day-old row makes Feast serve it, and ferry too.
        start = env["now"] - dt.timedelta(days=10)
        end = env["now"] + dt.timedelta(minutes=1)
        fr.feast_cli(env["feast_dir"], "materialize", start.isoformat(), end.isoformat())
        results = assert_same_as_feast(env, srv, USER_REFS, {"user_id": ["old", "u1"]})
        assert results[0]["values"][2] == 9 and results[0]["statuses"][2] == "present"
    finally:
        srv.stop()


def redis_dump(redis_server):
    """Every hash in Redis except ferry's own watermark keys, as {key: {field: value}} (raw
    bytes: Feast's keys and fields are binary)."""
    c = redis.Redis(host="127.0.0.1", port=redis_server.port)
    return {k: c.hgetall(k) for k in c.keys("*") if not k.startswith(b"ferry:")}


def test_feast_reads_what_ferry_materialized(feast_env):
    env = feast_env
    entity_rows = [{"user_id": u} for u in ["u1", "u2", "old", "nobody"]]
    pair_rows = [{"user_id": "u1", "merchant_id": 7}, {"user_id": "u2", "merchant_id": 7},
                 {"user_id": "u1", "merchant_id": -8}, {"user_id": "u9", "merchant_id": 7}]
    # Reference: what Feast reads, and the hashes it writes, after its own materialization.
    feast_materialize_incremental(env)
    want_users = feast_read(env, USER_REFS, entity_rows)
    want_pairs = feast_read(env, PAIR_REFS, pair_rows)
    want_profiles = feast_read(env, PROFILE_REFS, entity_rows + [{"user_id": "u3"}])
    feast_hashes = redis_dump(env["redis"])
    # u1 (stats and profile in one hash), u2, u3 and three pairs; `old` is expired.
    assert len(feast_hashes) == 6
    env["redis"].client().flushall()

    out = run_ferry("features", "--features", env["ferry_repo"], "--redis", env["redis"].url,
                    "materialize").stdout
    assert "1 older than the TTL not written" in out, out
    assert redis_dump(env["redis"]) == feast_hashes
    assert feast_read(env, USER_REFS, entity_rows) == want_users
    assert feast_read(env, PAIR_REFS, pair_rows) == want_pairs
    assert feast_read(env, PROFILE_REFS, entity_rows + [{"user_id": "u3"}]) == want_profiles
    assert want_profiles["segment"] == ["gold", None, None, None, "new"]
    assert want_users["orders"] == [3, None, None, None]

    # Materializing again writes nothing (no newer rows), as Feast skips equal timestamps.
    out = run_ferry("features", "--features", env["ferry_repo"], "--redis", env["redis"].url,
                    "materialize", "--full").stdout
    assert "0 keys written" in out, out
    assert redis_dump(env["redis"]) == feast_hashes

    # `ferry features get` reads the Feast layout (the key shown in hex).
    got = run_ferry("features", "--features", env["ferry_repo"], "--redis", env["redis"].url,
                    "get", "--view", "user_stats", "--key", "u1").stdout
    assert '"orders": 3' in got and "73686f70" in got, got  # "shop" ends the key
    got = run_ferry("features", "--features", env["ferry_repo"], "--redis", env["redis"].url,
                    "get", "--view", "pair_stats", "--key", '["u1", -8]').stdout
    assert '"pair_spend": 0.5' in got and '"pair_orders": 1' in got, got


def test_older_entity_key_serialization_is_refused(tmp_path):
    repo = tmp_path / "features.yaml"
    repo.write_text(fr.FERRY_REPO.replace("entity_key_serialization_version: 3",
                                          "entity_key_serialization_version: 2"))
    r = run_ferry("features", "--features", str(repo), "get", "--view", "user_stats", "--key",
                  "u1", check=False)
    assert r.returncode != 0
    assert "`entity_key_serialization_version` is 2" in r.stderr, r.stderr
    # Feast-only types and compound keys need the feast format.
    repo.write_text(fr.FERRY_REPO.replace("online_format: feast\n", "")
                    .replace("entity_key_serialization_version: 3\n", ""))
    r = run_ferry("features", "--features", str(repo), "get", "--view", "user_stats", "--key",
                  "u1", check=False)
    assert r.returncode != 0 and "needs `online_format: feast`" in r.stderr, r.stderr
