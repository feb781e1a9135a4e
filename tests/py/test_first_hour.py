"""What a new user meets in the first hour, each a defect once seen from outside:

- a model whose manifest `features` lists only `request.*` columns needs no feature repo;
- a model whose columns read feature views, on a server without a feature repo, is refused
  when its version loads (not answered with a 500 per request);
- no password, token or key from the config or the environment reaches anything ferry prints
  or answers (logs, CLI output, errors, metadata, metrics).
"""
import json
import os
import shutil
import subprocess

import numpy as np
import onnxruntime
import redis

from conftest import FerryServer, MotoS3, RedisServer, ferry_bin, ort_lib

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, "..", "..", "server", "demo")
RISK = os.path.join(DEMO, "registry", "risk", "1")


def copy_risk(directory):
    """The demo risk model's artifact copied into `directory`; returns its manifest."""
    os.makedirs(directory)
    shutil.copy(os.path.join(RISK, "model.onnx"), directory)
    with open(os.path.join(RISK, "model.yaml")) as f:
        return json.load(f)


def risk_version(registry, name, columns):
    """The demo risk model (input X [-1, 3]) under `name`@1 with its own `features` columns."""
    vdir = os.path.join(registry, name, "1")
    manifest = copy_risk(vdir)
    manifest["name"] = name
    manifest["features"] = {"entity": "user_id", "columns": columns}
    with open(os.path.join(vdir, "model.yaml"), "w") as f:
        json.dump(manifest, f)


def expected(rows):
    sess = onnxruntime.InferenceSession(os.path.join(RISK, "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": np.array(rows, dtype=np.float32)})


def test_request_only_features_need_no_repo_and_view_columns_are_refused_at_load(tmp_path):
    registry = str(tmp_path / "registry")
    risk_version(registry, "reqonly", ["request.visits", "request.spend", "request.amount"])
    risk_version(registry, "viewcols", ["user_stats.visits_7d", "request.amount",
                                        "request.spend"])
    cfg = {"registry": {"uri": registry}, "onnx_engine": "ort",
           "models": ["reqonly@1", "viewcols@1"],
           "endpoints": [
               {"name": "plain", "variants": [{"name": "a", "model": "reqonly@1"}]},
               {"name": "broken", "variants": [{"name": "a", "model": "viewcols@1"}]}]}
    srv = FerryServer(tmp_path, cfg, "reqonly")
    srv.start()
    try:
        settled = srv.wait_settled([("reqonly", 1), ("viewcols", 1)])
        assert settled[("reqonly", 1)]["state"] == "READY", settled
        refused = settled[("viewcols", 1)]
        assert refused["state"] == "UNAVAILABLE", settled
        assert "features" in refused["reason"] and "user_stats.visits_7d" in refused["reason"], \
            refused

        rows = [{"visits": 3.0, "spend": 120.5, "amount": 12.5},
                {"visits": 0.0, "spend": 0.0, "amount": 99.0}]
        r = srv.post("/v1/endpoints/plain/predict", json={"instances": rows})
        assert r.status_code == 200, r.text
        label, proba = expected([[x["visits"], x["spend"], x["amount"]] for x in rows])
        got = r.json()["predictions"]
        assert [p["label"] for p in got] == label.tolist()
        np.testing.assert_allclose([p["probabilities"] for p in got], proba, rtol=1e-4,
                                   atol=1e-5)

        # A missing request field is the client's mistake, named.
        r = srv.post("/v1/endpoints/plain/predict", json={"instances": [{"visits": 1}]})
        assert r.status_code == 400, r.text
        assert "spend" in r.json()["error"]

        # The refused model is not ready: a 503 saying so, never a 500 per request.
        r = srv.post("/v1/endpoints/broken/predict",
                     json={"instances": [{"user_id": "u1", "amount": 1.0, "spend": 2.0}]})
        assert r.status_code == 503, r.text
        assert r.json()["error"]
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------
# secrets

REDIS_PASSWORD = "rEd1s-pw-Qx7"
ADMIN_TOKEN = "adm1n-tok-Vb4"
S3_KEY_ID = "AKIAFERRYTESTKEY0042"
S3_SECRET = "s3-secret-Zq9wLp"
SECRETS = [REDIS_PASSWORD, ADMIN_TOKEN, S3_KEY_ID, S3_SECRET]


def training_output(tmp_path):
    """The demo risk model as a training job writes it (no name/version/digest)."""
    d = tmp_path / "risk-out"
    manifest = copy_risk(d)
    for key in ("name", "version", "sha256"):
        manifest.pop(key, None)
    (d / "model.yaml").write_text(json.dumps(manifest))
    return d


def run(args, env, seen, expect_ok=True):
    r = subprocess.run([ferry_bin(), *args], capture_output=True, text=True, timeout=120,
                       env=env)
    # Only what ferry printed: the command line itself holds the secrets on purpose.
    seen.append(f"$ ferry {args[0]} (exit {r.returncode})\n{r.stdout}\n{r.stderr}")
    if expect_ok:
        assert r.returncode == 0, f"ferry {args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_no_secret_reaches_logs_errors_metadata_or_metrics(tmp_path):
    s3 = MotoS3(tmp_path).start()
    redis_srv = RedisServer(tmp_path)
    redis_srv.start()
    try:
        redis_srv.client().config_set("requirepass", REDIS_PASSWORD)
        s3.client().create_bucket(Bucket="models")
        env = dict(os.environ, AWS_ENDPOINT_URL=s3.endpoint, AWS_ACCESS_KEY_ID=S3_KEY_ID,
                   AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_REGION="us-east-1",
                   AWS_EC2_METADATA_DISABLED="true", FERRY_ADMIN_TOKEN=ADMIN_TOKEN,
                   FERRY_ORT_LIB=ort_lib(), FERRY_LOG="info")
        redis_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_srv.port}"
        features = tmp_path / "features"
        shutil.copytree(os.path.join(DEMO, "features"), features)
        repo = str(features / "features.yaml")
        seen = []

        run(["models", "--registry", "s3://models/prod", "push", str(training_output(tmp_path)),
             "--name", "risk"], env, seen)
        run(["features", "--features", repo, "--redis", redis_url, "materialize"], env, seen)
        run(["features", "--features", repo, "--redis", redis_url, "get", "--view",
             "user_stats", "--key", "u1"], env, seen)
        wrong = f"redis://:not-{REDIS_PASSWORD}@127.0.0.1:{redis_srv.port}"
        failed = run(["features", "--features", repo, "--redis", wrong, "materialize"], env,
                     seen, expect_ok=False)
        assert failed.returncode != 0

        cfg = {"registry": {"uri": "s3://models/prod", "endpoint": s3.endpoint,
                            "cache_dir": str(tmp_path / "cache")},
               "models": ["risk@1"],
               "features": {"repo": repo, "redis": redis_url, "on_missing": "default"},
               "endpoints": [{"name": "risk", "variants": [{"name": "a", "model": "risk@1"}]}]}
        srv = FerryServer(tmp_path, cfg, "secrets", env={
            k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                "AWS_REGION", "AWS_EC2_METADATA_DISABLED", "FERRY_ADMIN_TOKEN")})
        srv.start()
        try:
            srv.wait_ready()
            answers = []

            def keep(r):
                answers.append(f"{r.request.method} {r.url} -> {r.status_code} "
                               f"{dict(r.headers)}\n{r.text}")
                return r

            r = keep(srv.post("/v1/endpoints/risk/predict",
                              json={"instances": [{"user_id": "u1", "amount": 3.0}]}))
            assert r.status_code == 200, r.text
            assert r.headers.get("x-ferry-features-defaulted") is None, r.headers
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert keep(srv.post("/v2/repository/models/risk/load", headers=auth)).status_code \
                == 200
            bad = {"Authorization": f"Bearer x{ADMIN_TOKEN}"}
            assert keep(srv.post("/v2/repository/models/risk/load", headers=bad)).status_code \
                in (401, 403)
            for path in ("/v2", "/v2/models/risk", "/v2/models/risk/versions/1", "/metrics",
                         "/openapi.json", "/v2/models/nope", "/v1/endpoints/nope/predict"):
                keep(srv.get(path))
            keep(srv.post("/v2/repository/index", json={}))
            keep(srv.post("/v1/endpoints/risk/predict", data=b"{not json"))
            # Redis refuses the password now: errors on the way must not carry it either.
            redis.Redis(host="127.0.0.1", port=redis_srv.port, password=REDIS_PASSWORD,
                        socket_timeout=5).config_set("requirepass", "rotated-pw")
            keep(srv.post("/v1/endpoints/risk/predict",
                          json={"instances": [{"user_id": "u2", "amount": 3.0}]}))
        finally:
            srv.stop()
        with open(srv.log_path, errors="replace") as f:
            seen.append(f.read())
        seen.extend(answers)
        everything = "\n".join(seen)
        assert "Effective configuration" in everything
        assert "redis://***@127.0.0.1" in everything, "the Redis URL is logged, redacted"
        for secret in SECRETS:
            assert secret not in everything, \
                f"{secret!r} was printed:\n" + "\n".join(
                    line for line in everything.splitlines() if secret in line)[:4000]
    finally:
        redis_srv.stop()
        s3.stop()


def test_v1_predict_refuses_outputs_outside_the_signature(tmp_path):
    """A model answering N-1 rows (or a wider row than declared) must not have its answers
    zipped onto the wrong instances: a 500 naming the model, as on endpoints."""
    from test_batch import write_bad_shape_model
    registry = tmp_path / "registry"
    write_bad_shape_model(registry, "short", 1, 1, 2)
    write_bad_shape_model(registry, "wide", 0, 0, 3)
    cfg = {"registry": {"uri": str(registry)}, "onnx_engine": "ort", "models": ["short@1",
                                                                                 "wide@1"],
           "batching": {"max_batch_size": 0}}
    srv = FerryServer(tmp_path, cfg, "badshape")
    srv.start()
    try:
        srv.wait_ready()
        rows = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0], [0.0, 0.0, 0.0, 1.0]]
        for name, says in (("short", "`label` with shape [2] for 3 rows"),
                           ("wide", "`probabilities` with shape [3, 3] for 3 rows")):
            r = srv.post(f"/v1/models/{name}:predict", json={"instances": rows})
            assert r.status_code == 500, r.text
            assert says in r.json()["error"] and f"model {name}@1" in r.json()["error"], r.text
    finally:
        srv.stop()
