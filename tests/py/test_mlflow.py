"""An MLflow Model Registry as ferry's registry (`registry.uri: mlflow+http://HOST:PORT`).

A real `mlflow server` (sqlite backend store, local artifact root served through its artifact
proxy, or S3 on moto) runs from the test's Python; models are scikit-learn classifiers
converted with skl2onnx and logged with `mlflow.onnx.log_model(..., registered_model_name=...)`,
and aliases move with `MlflowClient`. ferry's answers are compared with onnxruntime's on the
same ONNX graph. Nothing here is mocked, and nothing skips: a missing package fails the run.
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import mlflow.onnx
import mlflow.sklearn
import numpy as np
import onnxruntime
import pytest
import requests
import yaml
from mlflow import MlflowClient
from mlflow.models import infer_signature
from onnx import numpy_helper
from skl2onnx import to_onnx
from sklearn.neural_network import MLPClassifier

from conftest import InferLoad, ferry_bin, free_port, read_tail

# Wide enough that the coefficients pass onnx's 1 KiB external-data threshold: log_model saves
# them in a separate `<uuid>.data` file by default, which ferry must download too.
FEATURES = 400
ROWS = 5
POLL = "300ms"
MLFLOW_START_TIMEOUT = 240.0


# ---------------------------------------------------------------------------------------------
# MLflow


class MlflowServer:
    """`mlflow server` on a loopback port, in its own process group (uvicorn forks workers)."""

    def __init__(self, workdir, port=None, artifact_root=None, env=None, app_name=None):
        self.dir = str(workdir)
        self.app_name = app_name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = os.path.join(self.dir, "artifacts")
        self.artifact_root = artifact_root
        self.env = dict(env or {})
        self.log_path = os.path.join(self.dir, "mlflow.log")
        self.proc = None

    def start(self):
        args = [sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{os.path.join(self.dir, 'mlflow.db')}",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        if self.artifact_root:
            # Clients write straight to the store; get-download-uri answers s3:// URIs.
            args += ["--default-artifact-root", self.artifact_root, "--no-serve-artifacts"]
        else:
            args += ["--artifacts-destination", self.artifacts, "--serve-artifacts"]
        if self.app_name:
            args += ["--app-name", self.app_name]
        env = dict(os.environ)
        # The job runner (huey consumers) is not needed to serve the registry.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            # cwd: the basic-auth app keeps its user database in ./basic_auth.db.
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.dir, start_new_session=True)
        return self

    def wait(self, timeout=MLFLOW_START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}: "
                            f"{read_tail(self.log_path)}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"mlflow server not healthy within {timeout}s: {read_tail(self.log_path)}")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def client(self):
        return MlflowClient(tracking_uri=self.url)

    def local_artifacts(self, name, version):
        """The directory of a version's artifacts on disk (proxy-served stores only)."""
        uri = self.client().get_model_version_download_uri(name, str(version))
        assert uri.startswith("mlflow-artifacts:/"), uri
        return os.path.join(self.artifacts, uri[len("mlflow-artifacts:/"):])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow")).start().wait()
    try:
        yield srv
    finally:
        srv.stop()


class Model:
    """A small MLP classifier on FEATURES inputs, as ONNX, with onnxruntime's answers."""

    def __init__(self, seed):
        rng = np.random.RandomState(seed)
        x = rng.rand(300, FEATURES).astype(np.float32)
        y = (x[:, :5].sum(axis=1) + 0.3 * rng.rand(300) > 2.6).astype(np.int64)
        self.sklearn = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300,
                                     random_state=seed).fit(x, y)
        self.onnx = to_onnx(self.sklearn, x[:1], options={"zipmap": False})
        # skl2onnx writes weights as float_data, which onnx never moves out of the graph; as
        # raw_data (what PyTorch exporters write) log_model saves them in a `<uuid>.data` file.
        for i, init in enumerate(self.onnx.graph.initializer):
            self.onnx.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init), init.name))
        self.rows = rng.rand(ROWS, FEATURES).astype(np.float32)
        session = onnxruntime.InferenceSession(self.onnx.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        self.label, self.probabilities = session.run(["label", "probabilities"],
                                                     {"X": self.rows})

    def log(self, server, name, named_signature=False):
        """Logs and registers the ONNX graph; returns the new version number."""
        signature = None
        if named_signature:
            signature = infer_signature({"X": self.rows},
                                        {"label": self.label, "probabilities": self.probabilities})
        mlflow.set_tracking_uri(server.url)
        with mlflow.start_run():
            # pip_requirements: skips MLflow's requirement inference (a subprocess per model).
            info = mlflow.onnx.log_model(self.onnx, name="model", registered_model_name=name,
                                         signature=signature, pip_requirements=["onnxruntime"])
        return int(info.registered_model_version)

    def check(self, srv, name, version=None):
        """ferry's answer for the rows equals onnxruntime's; returns the served version."""
        r = infer(srv, name, self.rows, version)
        assert r.status_code == 200, r.text
        body = r.json()
        out = {o["name"]: o for o in body["outputs"]}
        assert out["probabilities"]["datatype"] == "FP32"
        assert out["label"]["datatype"] == "INT64"
        np.testing.assert_allclose(
            np.array(out["probabilities"]["data"], dtype=np.float32).reshape(ROWS, 2),
            self.probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.array(out["label"]["data"], dtype=np.int64),
                                      self.label)
        return body["model_version"]


def infer(srv, name, rows, version=None, session=None, timeout=30):
    path = f"/v2/models/{name}/infer" if version is None else \
        f"/v2/models/{name}/versions/{version}/infer"
    body = {"inputs": [{"name": "X", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.flatten().tolist()}]}
    return (session or requests).post(srv.url + path, json=body, timeout=timeout)


def registry(server_url, tmp_path, **extra):
    return {"uri": f"mlflow+{server_url}", "poll_interval": POLL,
            "cache_dir": str(tmp_path / "cache"), **extra}


def wait_for(what, predicate, srv, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; log:\n{srv.log()}")


def failed_entry(srv, name, version):
    e = srv.index_entry(name, version)
    return e if e and e["state"] == "UNAVAILABLE" else None


def cached_manifest(tmp_path, name, version):
    found = list((tmp_path / "cache").glob(f"mlflow-*/{name}/{version}/model.yaml"))
    assert len(found) == 1, f"no single cached manifest for {name}@{version}: {found}"
    return yaml.safe_load(found[0].read_text()), found[0].parent


def full_log(srv):
    """The whole server log without terminal colours (access lines push others out of a tail)."""
    with open(srv.log_path, "rb") as f:
        return re.sub(r"\x1b\[[0-9;]*m", "", f.read().decode("utf-8", "replace"))


def ferry_models(*args, env=None):
    r = subprocess.run([ferry_bin(), "models", *map(str, args)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **(env or {})})
    assert r.returncode == 0, f"ferry models {args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


# ---------------------------------------------------------------------------------------------
# tests


def test_serves_aliases_and_versions_like_onnxruntime(ferry, mlflow_server, tmp_path):
    first, second = Model(seed=1), Model(seed=2)
    assert first.log(mlflow_server, "churn", named_signature=True) == 1
    assert second.log(mlflow_server, "churn") == 2
    mlflow_server.client().set_registered_model_alias("churn", "champion", 1)
    # The logged graph really keeps its weights in an external data file.
    files = os.listdir(mlflow_server.local_artifacts("churn", 1))
    assert any(f.endswith(".data") for f in files), files

    models = ["churn@champion", "churn@2"]
    with ferry.running("mlflow-serve", models,
                       registry=registry(mlflow_server.url, tmp_path)) as srv:
        srv.wait_ready()
        # Readiness follows each model's first reference (churn@champion); churn@2 may
        # still be loading.
        settled = srv.wait_settled([("churn", 1), ("churn", 2)])
        assert all(e["state"] == "READY" for e in settled.values()), settled
        assert first.check(srv, "churn") == "1"
        assert first.check(srv, "churn", version=1) == "1"
        assert second.check(srv, "churn", version=2) == "2"
        meta = srv.get("/v2/models/churn/versions/1").json()
        assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, FEATURES]}], meta
        assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}, meta

    # The verified cache holds what ferry wrote from MLmodel and the graph: digests of every
    # downloaded file, and where it came from.
    for version, signature_from in [(1, "MLmodel"), (2, "onnx graph")]:
        manifest, directory = cached_manifest(tmp_path, "churn", version)
        lineage = manifest["metadata"]["mlflow"]
        assert lineage["signature_from"] == signature_from, lineage
        assert lineage["artifact_uri"].startswith("mlflow-artifacts:/"), lineage
        assert manifest["artifact"] == "model.onnx"
        external = [f for f in manifest["files"] if f.endswith(".data")]
        assert external, manifest["files"]
        for f, digest in [(manifest["artifact"], manifest["sha256"]), *manifest["files"].items()]:
            assert hashlib.sha256((directory / f).read_bytes()).hexdigest() == digest, f


def test_alias_move_under_load_swaps_with_zero_failed_requests(ferry, mlflow_server, tmp_path):
    first, second = Model(seed=3), Model(seed=4)
    assert first.log(mlflow_server, "fraud") == 1
    assert second.log(mlflow_server, "fraud") == 2
    client = mlflow_server.client()
    client.set_registered_model_alias("fraud", "champion", 1)
    with ferry.running("mlflow-swap", ["fraud@champion"],
                       registry=registry(mlflow_server.url, tmp_path)) as srv:
        srv.wait_ready()
        assert first.check(srv, "fraud") == "1"
        with InferLoad(srv, lambda session: infer(srv, "fraud", first.rows, session=session)) \
                as hammer:
            time.sleep(1.0)
            client.set_registered_model_alias("fraud", "champion", 2)
            wait_for("version 2 to serve", lambda: hammer.serving(2), srv)
            time.sleep(1.0)
        print(f"\nMLFLOW SWAP: requests={hammer.sent} failures={len(hammer.failures)}")
        assert hammer.failures == [], hammer.failures[:5]
        assert hammer.sent > 20
        assert {v for _, v in hammer.versions} == {"1", "2"}
        assert second.check(srv, "fraud") == "2"
        assert srv.get("/v2/health/ready").status_code == 200
        wait_for("version 1 to be unloaded", lambda: srv.index_entry("fraud", 1) is None, srv)


def test_missing_or_non_onnx_versions_keep_the_old_one(ferry, mlflow_server, tmp_path):
    good = Model(seed=5)
    name = "risk"
    assert good.log(mlflow_server, name) == 1
    client = mlflow_server.client()
    client.set_registered_model_alias(name, "champion", 1)
    with ferry.running("mlflow-bad", [f"{name}@champion"],
                       registry=registry(mlflow_server.url, tmp_path)) as srv:
        srv.wait_ready()
        with InferLoad(srv, lambda session: infer(srv, name, good.rows, session=session),
                       threads=1) as hammer:
            # 2: the ONNX file was deleted from the artifact store.
            assert Model(seed=6).log(mlflow_server, name) == 2
            os.remove(os.path.join(mlflow_server.local_artifacts(name, 2), "model.onnx"))
            client.set_registered_model_alias(name, "champion", 2)
            entry = wait_for("version 2 to fail", lambda: failed_entry(srv, name, 2), srv)
            assert "does not exist" in entry["reason"] and "model.onnx" in entry["reason"], entry

            # 3: a scikit-learn flavor, no ONNX.
            mlflow.set_tracking_uri(mlflow_server.url)
            with mlflow.start_run():
                info = mlflow.sklearn.log_model(good.sklearn, name="model",
                                                registered_model_name=name,
                                                serialization_format="cloudpickle",
                                                pip_requirements=["scikit-learn"])
            assert int(info.registered_model_version) == 3
            client.set_registered_model_alias(name, "champion", 3)
            entry = wait_for("version 3 to fail", lambda: failed_entry(srv, name, 3), srv)
            assert "not an ONNX model" in entry["reason"] and "sklearn" in entry["reason"], entry

            # 4: the ONNX file's bytes are not ONNX.
            assert Model(seed=7).log(mlflow_server, name) == 4
            with open(os.path.join(mlflow_server.local_artifacts(name, 4), "model.onnx"),
                      "wb") as f:
                f.write(b"this is not an onnx graph")
            client.set_registered_model_alias(name, "champion", 4)
            entry = wait_for("version 4 to fail", lambda: failed_entry(srv, name, 4), srv)
            assert "not an ONNX model" in entry["reason"], entry
            time.sleep(1.0)
            assert good.check(srv, name) == "1"

            # A good version after the bad ones is picked up.
            fixed = Model(seed=8)
            assert fixed.log(mlflow_server, name) == 5
            client.set_registered_model_alias(name, "champion", 5)
            wait_for("version 5 to serve", lambda: hammer.serving(5), srv)
        assert hammer.failures == [], hammer.failures[:5]
        assert {v for _, v in hammer.versions} <= {"1", "5"}, {v for _, v in hammer.versions}
        assert fixed.check(srv, name) == "5"
        log = full_log(srv)
        assert "previous version keeps serving" in log
    # Nothing half-downloaded or broken reached the cache.
    for bad in (2, 3, 4):
        assert not list((tmp_path / "cache").glob(f"mlflow-*/{name}/{bad}")), bad
    assert not list((tmp_path / "cache").glob(f"mlflow-*/{name}/.tmp-*"))


def test_mlflow_down_at_start_then_serves_from_its_s3_artifacts(ferry, moto_s3, tmp_path,
                                                                monkeypatch):
    """ferry starts while MLflow is down: not ready, retrying; once MLflow is up and has the
    model, ferry becomes ready, reading the version's artifacts straight from S3."""
    moto_s3.client().create_bucket(Bucket="mlflow-artifacts")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    srv = ferry.new("mlflow-down", ["late@champion"], registry=registry(url, tmp_path))
    mlflow_srv = MlflowServer(tmp_path / "mlflow-s3", port=port,
                              artifact_root="s3://mlflow-artifacts/",
                              env={"MLFLOW_S3_ENDPOINT_URL": moto_s3.endpoint})
    (tmp_path / "mlflow-s3").mkdir()
    try:
        srv.start()
        time.sleep(3.0)
        r = srv.get("/v2/health/ready")
        assert r.status_code == 503, r.text
        assert "unreachable" in full_log(srv), srv.log()

        mlflow_srv.start().wait()
        # The test's own MLflow client uploads to moto as well.
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto_s3.endpoint)
        model = Model(seed=9)
        assert model.log(mlflow_srv, "late") == 1
        mlflow_srv.client().set_registered_model_alias("late", "champion", 1)
        srv.wait_ready(timeout=240)
        assert model.check(srv, "late") == "1"
        assert "Registry reachable again" in full_log(srv)
        srv.stop()
    except BaseException:
        srv.kill()
        raise
    finally:
        mlflow_srv.stop()
    manifest, _ = cached_manifest(tmp_path, "late", 1)
    assert manifest["metadata"]["mlflow"]["artifact_uri"].startswith("s3://mlflow-artifacts/")


def test_import_copies_a_version_into_ferry_registries(ferry, mlflow_server, moto_s3, tmp_path):
    model = Model(seed=10)
    assert model.log(mlflow_server, "imported") == 1
    target = tmp_path / "registry"
    target.mkdir()
    # The MLflow download is cached where the CLI's default cache is.
    cache = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    out = ferry_models("import", f"mlflow+{mlflow_server.url}/imported/1", "--to", target,
                       env=cache)
    assert "Imported imported@1" in out, out
    version_dir = target / "imported" / "1"
    manifest = yaml.safe_load((version_dir / "model.yaml").read_text())
    assert manifest["name"] == "imported" and manifest["version"] == 1
    assert manifest["metadata"]["mlflow"]["version"] == "1"
    assert any(f.endswith(".data") for f in manifest["files"]), manifest["files"]
    for f, digest in [(manifest["artifact"], manifest["sha256"]), *manifest["files"].items()]:
        assert hashlib.sha256((version_dir / f).read_bytes()).hexdigest() == digest, f
    listing = json.loads(ferry_models("--registry", f"mlflow+{mlflow_server.url}", "list",
                                      "imported", "--json"))
    assert [v["version"] for v in listing[0]["versions"]] == [1], listing
    assert listing[0]["versions"][0]["metadata"]["status"] == "READY", listing
    # Versions are immutable: importing again changes nothing.
    again = ferry_models("import", f"mlflow+{mlflow_server.url}/imported/1", "--to", target,
                         env=cache)
    assert "already" in again, again

    # MLflow's own model URI, the server from MLFLOW_TRACKING_URI, into S3 with an alias.
    moto_s3.client().create_bucket(Bucket="models")
    out = ferry_models("import", "models:/imported/1", "--to", "s3://models/prod",
                       "--alias", "champion",
                       env={**cache, "MLFLOW_TRACKING_URI": mlflow_server.url})
    assert "Alias imported@champion -> 1" in out, out

    # Both copies serve without MLflow in the loop.
    with ferry.running("imported-local", ["imported@1"],
                       registry={"uri": str(target)}) as srv:
        srv.wait_ready()
        assert model.check(srv, "imported") == "1"
    with ferry.running("imported-s3", ["imported@champion"],
                       registry={"uri": "s3://models/prod",
                                 "cache_dir": str(tmp_path / "s3-cache")}) as srv:
        srv.wait_ready()
        assert model.check(srv, "imported") == "1"


def test_basic_auth_credentials_come_from_the_environment(ferry, tmp_path, monkeypatch):
    password = "ferry-Test-password-42"
    workdir = tmp_path / "mlflow-auth"
    workdir.mkdir()
    mlflow_srv = MlflowServer(workdir, app_name="basic-auth",
                              env={"MLFLOW_AUTH_ADMIN_PASSWORD": password,
                                   "MLFLOW_FLASK_SERVER_SECRET_KEY": "ferry-test-secret"})
    mlflow_srv.start().wait()
    try:
        r = requests.get(mlflow_srv.url + "/api/2.0/mlflow/registered-models/search", timeout=10)
        assert r.status_code == 401, f"the server must require credentials: {r.status_code}"
        # MLflow's Python client and ferry read the same variables.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        model = Model(seed=11)
        assert model.log(mlflow_srv, "secured") == 1
        mlflow_srv.client().set_registered_model_alias("secured", "champion", 1)
        with ferry.running("mlflow-auth", ["secured@champion"],
                           registry=registry(mlflow_srv.url, tmp_path)) as srv:
            srv.wait_ready()
            assert model.check(srv, "secured") == "1"
        # Without them: a clear error naming the variables, not a crash or a hang.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        r = subprocess.run([ferry_bin(), "models", "--registry", f"mlflow+{mlflow_srv.url}",
                            "list"], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode != 0
        assert "401" in r.stderr and "MLFLOW_TRACKING_USERNAME" in r.stderr, r.stderr
        # Wrong password: refused the same way.
        env.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="wrong")
        r = subprocess.run([ferry_bin(), "models", "--registry", f"mlflow+{mlflow_srv.url}",
                            "list"], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode != 0 and "401" in r.stderr, r.stderr
        assert "wrong" not in r.stderr, "the password must not be printed"
    finally:
        mlflow_srv.stop()


def test_bad_mlflow_config_is_a_clear_error(tmp_path):
    config = tmp_path / "ferry.yaml"
    config.write_text(json.dumps({"registry": {"uri": "mlflow"}, "models": ["churn@champion"]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    r = subprocess.run([ferry_bin(), "serve", "--config", str(config), "--listen",
                        f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode != 0
    assert "MLFLOW_TRACKING_URI" in r.stderr + r.stdout, r.stderr
    r = subprocess.run([ferry_bin(), "models", "--registry",
                        "mlflow+http://user:secret@127.0.0.1:5000", "list"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0
    assert "MLFLOW_TRACKING_PASSWORD" in r.stderr, r.stderr
    assert "secret" not in r.stderr, r.stderr
