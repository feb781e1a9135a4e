"""Shared helpers for ferry's Python end-to-end tests.

The suite starts the real `ferry` binary ($FERRY_BIN, default
$HOME/.cache/ferry-target/debug/ferry) against a registry built by make_fixtures.py and
compares its answers with reference outputs computed by Python onnxruntime / scikit-learn.

Every dependency is imported at module level on purpose: a missing package must make the
suite fail, never skip.
"""
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import boto3
import moto.server  # noqa: F401  (the S3 endpoint the registry tests start)
import numpy as np
import onnxruntime
import pytest
import redis
import requests
import tritonclient.http as httpclient

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_FIXTURES = os.path.join(HERE, "make_fixtures.py")
DEFAULT_BIN = os.path.join(os.path.expanduser("~"), ".cache", "ferry-target", "debug", "ferry")

START_TIMEOUT = 60.0      # seconds until /v2/health/live must answer 200
LOAD_TIMEOUT = 120.0      # seconds until configured models must have settled
STOP_TIMEOUT = 30.0       # seconds for a graceful exit after SIGTERM
HTTP_TIMEOUT = 60.0       # per request

NP_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64,
             "BOOL": np.bool_}
FLOAT_TYPES = {"FP16", "FP32", "FP64"}
TOL = 1e-5


# ---------------------------------------------------------------------------------------------
# environment


def ferry_bin():
    return os.environ.get("FERRY_BIN") or DEFAULT_BIN


def ort_lib():
    """The versioned libonnxruntime.so shipped with the Python onnxruntime package."""
    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    libs = sorted(p for p in glob.glob(os.path.join(capi, "libonnxruntime.so*"))
                  if not os.path.islink(p))
    versioned = [p for p in libs if re.search(r"\.so\.\d", p)]
    chosen = (versioned or libs)
    if not chosen:
        pytest.fail(f"no libonnxruntime.so* found in {capi}")
    return chosen[-1]


_HANDED_OUT_PORTS = set()


def free_port():
    """A port nothing listens on now and that this session has not handed out before: two
    servers configured before either starts (replica A and B) must not get the same one."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT_PORTS:
            _HANDED_OUT_PORTS.add(port)
            return port
    raise RuntimeError("no fresh free port in 100 tries")


def to_yaml(cfg):
    """Top-level keys in block style, values as JSON flow scalars/collections (valid YAML)."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items())


def read_tail(path, limit=8000):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    text = data.decode("utf-8", "replace")
    return text[-limit:]


# ---------------------------------------------------------------------------------------------
# fixtures data


class Fixtures:
    def __init__(self, out_dir):
        self.dir = str(out_dir)
        self.registry = os.path.join(self.dir, "registry")
        with open(os.path.join(self.dir, "reference.json")) as f:
            self.reference = json.load(f)
        self.cases = self.reference["cases"]

    def case(self, model):
        for c in self.cases:
            if c["model"] == model:
                return c
        raise KeyError(model)

    @staticmethod
    def model_ref(case):
        """How a case's model is pinned in the config (churn goes through its alias)."""
        if case["model"] == "churn":
            return "churn@champion"
        return f"{case['model']}@{case['version']}"


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixtures")
    r = subprocess.run([sys.executable, MAKE_FIXTURES, str(out)], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"make_fixtures.py failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return Fixtures(out)


# ---------------------------------------------------------------------------------------------
# server process


class FerryServer:
    def __init__(self, workdir, config, name, env=None):
        """`env`: variables to set for the process (None as a value removes one)."""
        self.workdir = str(workdir)
        self.env_overrides = dict(env or {})
        self.name = name
        self.config = config
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.addr}"
        # gRPC on a port of its own (None: the binary's default, HTTP port + 1).
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        self.config_path = os.path.join(self.workdir, f"{name}.yaml")
        self.log_path = os.path.join(self.workdir, f"{name}.log")
        self.proc = None
        self._log = None
        self._triton = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self):
        binary = ferry_bin()
        if not os.access(binary, os.X_OK):
            pytest.fail(f"ferry binary not found or not executable: {binary} (set FERRY_BIN)")
        with open(self.config_path, "w") as f:
            f.write(to_yaml(self.config))
        env = dict(os.environ)
        env["FERRY_ORT_LIB"] = ort_lib()
        env["FERRY_LOG"] = "info"
        for key, value in self.env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self._log = open(self.log_path, "wb")
        args = [binary, "serve", "--config", self.config_path, "--listen", self.addr]
        if self.grpc_addr is not None:
            args += ["--grpc-listen", self.grpc_addr]
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ferry ({self.name}) exited early with code {self.proc.returncode}; "
                            f"config:\n{to_yaml(self.config)}\nlog:\n{self.log()}")
            try:
                r = requests.get(self.url + "/v2/health/live", timeout=2)
                if r.status_code == 200:
                    return self
                last = f"status {r.status_code}"
            except requests.RequestException as e:
                last = repr(e)
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"ferry ({self.name}) not live after {START_TIMEOUT}s (last: {last}); "
                    f"log:\n{self.log()}")

    def terminate(self):
        """Send SIGTERM; returns the exit code, or None when it did not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_log()

    def stop(self):
        """Graceful stop: SIGTERM must make the process exit 0."""
        if self.proc is None:
            return
        already = self.proc.poll()
        code = self.terminate()
        if code is None:
            self.kill()
            raise AssertionError(f"ferry ({self.name}) did not exit within {STOP_TIMEOUT}s of "
                                 f"SIGTERM; log:\n{self.log()}")
        self._close_log()
        if already is not None:
            raise AssertionError(f"ferry ({self.name}) had already exited with {already} before "
                                 f"teardown; log:\n{self.log()}")
        assert code == 0, \
            f"ferry ({self.name}) exited with {code} after SIGTERM; log:\n{self.log()}"

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self):
        return read_tail(self.log_path)

    # -- HTTP ----------------------------------------------------------------------------------
    def get(self, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return requests.get(self.url + path, **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return requests.post(self.url + path, **kw)

    def request(self, method, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return requests.request(method, self.url + path, **kw)

    @property
    def triton(self):
        if self._triton is None:
            self._triton = httpclient.InferenceServerClient(
                url=self.addr, connection_timeout=HTTP_TIMEOUT, network_timeout=HTTP_TIMEOUT)
        return self._triton

    def repository_index(self):
        r = self.post("/v2/repository/index", json={})
        assert r.status_code == 200, f"repository index: {r.status_code} {r.text}"
        body = r.json()
        assert isinstance(body, list), f"repository index is not a JSON list: {body!r}"
        return body

    def index_entry(self, model, version):
        for e in self.repository_index():
            if e.get("name") == model and str(e.get("version")) == str(version):
                return e
        return None

    # -- waiting -------------------------------------------------------------------------------
    def wait_ready(self, timeout=LOAD_TIMEOUT):
        """Wait for /v2/health/ready == 200 (every configured model loaded)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            r = self.get("/v2/health/ready", timeout=5)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
            time.sleep(0.3)
        pytest.fail(f"ferry ({self.name}) not ready after {timeout}s (last: {last}); "
                    f"log:\n{self.log()}")

    def wait_settled(self, models, timeout=LOAD_TIMEOUT):
        """Wait until each (model, version) is READY or UNAVAILABLE in the repository index.

        Returns {(model, version): entry}."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                index = self.repository_index()
            except AssertionError as e:
                last = str(e)
                time.sleep(0.3)
                continue
            found = {}
            for model, version in models:
                for e in index:
                    if e.get("name") == model and str(e.get("version")) == str(version):
                        found[(model, version)] = e
            if len(found) == len(models) and all(
                    e.get("state") in ("READY", "UNAVAILABLE") for e in found.values()):
                return found
            last = json.dumps(index)
            time.sleep(0.3)
        pytest.fail(f"ferry ({self.name}): models {models} did not settle in the repository "
                    f"index within {timeout}s (last index: {last}); log:\n{self.log()}")

    def _check_alive(self):
        if self.proc.poll() is not None:
            pytest.fail(f"ferry ({self.name}) exited with {self.proc.returncode}; "
                        f"log:\n{self.log()}")


class Process:
    """Any ferry command (as a manifest or KServe runs it), its output in `log_path`; stopped
    (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, args, env, log_path, cwd=None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd)

    def wait_for(self, url, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"exited with {self.proc.returncode}:\n{read_tail(self.log_path)}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        pytest.fail(f"{url} not 200 within {timeout}s:\n{read_tail(self.log_path)}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def base_env(**extra):
    """The test process's environment with ferry's ONNX Runtime library, plus `extra`."""
    env = dict(os.environ)
    env["FERRY_ORT_LIB"] = ort_lib()
    env.update(extra)
    return env


class InferLoad:
    """Threads sending inference requests back to back (`send(session)` returns the response),
    recording every outcome: the version each success came from, with its time, every failure,
    and readiness, probed every 10th request (it must not flip while versions swap)."""

    def __init__(self, srv, send, threads=2):
        self.srv, self.send = srv, send
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.failures = []
        self.versions = []          # (time, version) in completion order
        self.not_ready = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        session = requests.Session()
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                r = self.send(session)
                ok = r.status_code == 200
                version = r.json().get("model_version") if ok else None
                detail = None if ok else f"{r.status_code} {r.text[:200]}"
            except requests.RequestException as e:
                ok, version, detail = False, None, repr(e)
            ready = True
            if n % 10 == 0:
                try:
                    ready = session.get(self.srv.url + "/v2/health/ready",
                                        timeout=10).status_code == 200
                except requests.RequestException:
                    ready = False
            with self.lock:
                self.sent += 1
                if not ok:
                    self.failures.append(detail)
                else:
                    self.versions.append((time.monotonic(), version))
                if not ready:
                    self.not_ready += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def serving(self, version):
        """Whether the latest success came from `version`."""
        with self.lock:
            return bool(self.versions) and self.versions[-1][1] == str(version)

    def first_time_serving(self, version, after):
        with self.lock:
            return next((t for t, v in self.versions if v == version and t >= after), None)


class ServerFactory:
    def __init__(self, tmp_path_factory, fixtures):
        self.tmp_path_factory = tmp_path_factory
        self.fixtures = fixtures

    def config(self, models, onnx_engine=None, **extra):
        cfg = {"registry": {"uri": self.fixtures.registry}, "models": list(models)}
        if onnx_engine is not None:
            cfg["onnx_engine"] = onnx_engine
        cfg.update(extra)
        return cfg

    @contextlib.contextmanager
    def running(self, name, models, onnx_engine=None, **extra):
        """Start a server, yield it, stop it with SIGTERM and require exit code 0."""
        workdir = self.tmp_path_factory.mktemp(f"ferry-{name}")
        srv = FerryServer(workdir, self.config(models, onnx_engine, **extra), name)
        try:
            srv.start()
            yield srv
        except BaseException:
            srv.kill()
            raise
        srv.stop()

    def new(self, name, models, onnx_engine=None, **extra):
        """An unstarted server whose lifecycle the caller manages."""
        workdir = self.tmp_path_factory.mktemp(f"ferry-{name}")
        return FerryServer(workdir, self.config(models, onnx_engine, **extra), name)


@pytest.fixture(scope="session")
def ferry(tmp_path_factory, fixtures):
    binary = ferry_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"ferry binary not found or not executable: {binary} (set FERRY_BIN)")
    return ServerFactory(tmp_path_factory, fixtures)


@pytest.fixture(scope="module")
def basic_server(ferry):
    """churn@champion + mlp@1 on ort, all loaded. One per test module that uses it."""
    with ferry.running("basic", ["churn@champion", "mlp@1"], onnx_engine="ort") as srv:
        srv.wait_ready()
        yield srv


# ---------------------------------------------------------------------------------------------
# comparisons


def flatten(data):
    out = []

    def walk(x):
        if isinstance(x, list):
            for y in x:
                walk(y)
        else:
            out.append(x)
    walk(data)
    return out


def ref_array(ref):
    return np.array(ref["data"], dtype=NP_DTYPES[ref["datatype"]]).reshape(ref["shape"])


def assert_array_matches(actual, ref, what=""):
    """Compare a numpy array with a reference tensor {name, datatype, shape, data}."""
    expected = ref_array(ref)
    actual = np.asarray(actual)
    label = what or ref["name"]
    assert list(actual.shape) == list(ref["shape"]), \
        f"{label}: shape {list(actual.shape)} != reference {ref['shape']}"
    if ref["datatype"] in FLOAT_TYPES:
        assert actual.dtype.kind == "f", f"{label}: dtype {actual.dtype} is not floating point"
        np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                                   rtol=TOL, atol=TOL, err_msg=label)
    elif ref["datatype"] == "BOOL":
        assert actual.dtype == np.bool_, f"{label}: dtype {actual.dtype} is not bool"
        np.testing.assert_array_equal(actual, expected, err_msg=label)
    else:
        assert actual.dtype.kind in "iu", f"{label}: dtype {actual.dtype} is not integer"
        np.testing.assert_array_equal(actual.astype(np.int64), expected.astype(np.int64),
                                      err_msg=label)


def assert_json_tensor_matches(out, ref, what=""):
    """Compare an OIP JSON output tensor object with a reference tensor."""
    label = what or ref["name"]
    assert out.get("name") == ref["name"], f"{label}: name {out.get('name')!r}"
    assert out.get("datatype") == ref["datatype"], \
        f"{label}: datatype {out.get('datatype')!r} != {ref['datatype']!r}"
    assert list(out.get("shape", [])) == list(ref["shape"]), \
        f"{label}: shape {out.get('shape')!r} != {ref['shape']!r}"
    assert "data" in out, f"{label}: no 'data' in JSON output {out!r}"
    data = flatten(out["data"])
    n = int(np.prod(ref["shape"]))
    assert len(data) == n, f"{label}: {len(data)} elements, expected {n}"
    if ref["datatype"] == "BOOL":
        assert all(isinstance(v, bool) for v in data), f"{label}: BOOL data must be JSON booleans"
    elif ref["datatype"] in FLOAT_TYPES:
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data), \
            f"{label}: non-numeric data"
    else:
        assert all(isinstance(v, int) and not isinstance(v, bool) for v in data), \
            f"{label}: integer datatype but data {data[:5]!r}..."
    arr = np.array(data, dtype=NP_DTYPES[ref["datatype"]]).reshape(ref["shape"])
    assert_array_matches(arr, ref, label)


def assert_json_error(resp, status=None, keywords=()):
    """A JSON error response: 4xx (or the given status), body {"error": "<non-empty>"}, and the
    message names the problem (contains at least one of `keywords`, case-insensitive)."""
    desc = f"{resp.request.method} {resp.request.url} -> {resp.status_code} {resp.text[:500]!r}"
    if status is None:
        assert 400 <= resp.status_code < 500, f"expected a 4xx: {desc}"
    elif isinstance(status, (tuple, list, set)):
        assert resp.status_code in status, f"expected one of {status}: {desc}"
    else:
        assert resp.status_code == status, f"expected {status}: {desc}"
    ctype = resp.headers.get("content-type", "")
    assert "json" in ctype.lower(), f"error content-type {ctype!r} is not JSON: {desc}"
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {desc}")
    assert isinstance(body, dict), f"error body is not an object: {desc}"
    msg = body.get("error")
    assert isinstance(msg, str) and msg.strip(), f"no non-empty 'error' string: {desc}"
    if keywords:
        low = msg.lower()
        assert any(k.lower() in low for k in keywords), \
            f"error message {msg!r} mentions none of {list(keywords)}"
    return msg


# ---------------------------------------------------------------------------------------------
# request builders


def json_infer_body(case, outputs=None, **extra):
    body = {"inputs": [dict(t) for t in case["inputs"]]}
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    body.update(extra)
    return body


def triton_inputs(case, binary):
    inputs = []
    for t in case["inputs"]:
        arr = ref_array(t)
        inp = httpclient.InferInput(t["name"], list(arr.shape), t["datatype"])
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


def binary_infer_body(header, blobs):
    """A binary-extension request: JSON header followed by raw tensor bytes."""
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(len(head))}


def infer_path(model, version=None):
    if version is None:
        return f"/v2/models/{model}/infer"
    return f"/v2/models/{model}/versions/{version}/infer"


def check_infer_response(body, case, outputs=None):
    """Check a plain-JSON OIP infer response body against the case's reference."""
    assert body.get("model_name") == case["model"], f"model_name {body.get('model_name')!r}"
    if "model_version" in body:
        assert str(body["model_version"]) == str(case["version"]), \
            f"model_version {body['model_version']!r}"
    wanted = outputs if outputs is not None else [o["name"] for o in case["outputs"]]
    got = {o.get("name"): o for o in body.get("outputs", [])}
    assert sorted(got) == sorted(wanted), f"outputs {sorted(got)} != requested {sorted(wanted)}"
    for ref in case["outputs"]:
        if ref["name"] in wanted:
            assert_json_tensor_matches(got[ref["name"]], ref, f"{case['model']}.{ref['name']}")


# ---------------------------------------------------------------------------------------------
# collection: the inference module runs (engine, model) pairs only where the engine serves it

SERVED = {"ort": ["churn", "boosted", "mlp", "dtypes", "scaled", "svr"],
          "tract": ["churn", "boosted", "mlp", "dtypes", "scaled"]}


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        cs = getattr(item, "callspec", None)
        if cs is not None and "engine" in cs.params and "model" in cs.params \
                and cs.params["model"] not in SERVED[cs.params["engine"]]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ---------------------------------------------------------------------------------------------
# S3: moto's standalone server on loopback (a real S3 HTTP endpoint; the AWS SDK is not mocked)


class MotoS3:
    """`python -m moto.server` on a free loopback port. Fails the test if it cannot start."""

    def __init__(self, workdir):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(str(workdir), "moto.log")
        self.proc = None
        self._log = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"moto exited with {self.proc.returncode}: {read_tail(self.log_path)}")
            try:
                if requests.get(self.endpoint, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        pytest.fail(f"moto did not answer on {self.endpoint} within 30 s: "
                    f"{read_tail(self.log_path)}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def env(self):
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def moto_s3(tmp_path, monkeypatch):
    """A fresh S3 endpoint per test; the AWS_* variables point ferry processes at it."""
    s3 = MotoS3(tmp_path).start()
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    try:
        yield s3
    finally:
        s3.stop()


# ---------------------------------------------------------------------------------------------
# Redis: a private redis-server on a free loopback port (the Redis client is not mocked)


class RedisServer:
    """A private redis-server child process on a fixed free port (restartable)."""

    def __init__(self, workdir):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("redis-server is not installed (scripts/setup-test-deps.sh installs it "
                        "with apt-get install -y redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.workdir = str(workdir)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.05)
        pytest.fail("redis-server did not answer PING within 20 s")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                           socket_timeout=5)


@pytest.fixture
def redis_server(tmp_path):
    srv = RedisServer(tmp_path).start()
    yield srv
    srv.stop()
