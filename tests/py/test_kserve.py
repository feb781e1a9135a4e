"""KServe: ferry serves a plain model directory as KServe's storage initializer leaves it
(`--model-dir /mnt/models`, no manifest, signature read from the model file), and
deploy/kserve's ClusterServingRuntime runs as written against the real binary."""
import os
import re
import shutil
import subprocess

import numpy as np
import onnxruntime
import pytest
import requests
import yaml
from skl2onnx import to_onnx
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from conftest import Process, base_env, ferry_bin, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
DEMO_CHURN = os.path.join(ROOT, "server", "demo", "registry", "churn", "1", "model.onnx")
KSERVE = os.path.join(ROOT, "deploy", "kserve")


def serve_dir(model_dir, tmp_path, name="model", extra=()):
    port = free_port()
    args = [ferry_bin(), "serve", "--model-dir", str(model_dir), "--model-name", name,
            "--listen", f"127.0.0.1:{port}", "--grpc-listen", "off", *extra]
    return Process(args, base_env(), str(tmp_path / f"{name}.log")), f"http://127.0.0.1:{port}"


def served_and_onnxruntime(model_dir, tmp_path, name, x):
    """`model_dir` served as `name` and its model.onnx in onnxruntime, both given `x` on the
    graph's one input: (ferry's outputs, onnxruntime's), by output name."""
    sess = onnxruntime.InferenceSession(str(model_dir / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    proc, url = serve_dir(model_dir, tmp_path, name)
    with proc as p:
        p.wait_for(url + "/v2/health/ready")
        got = infer(url, name, x, input_name)
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {input_name: x})))
    return got, ref


def infer(url, name, x, input_name="X"):
    body = {"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    r = requests.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}


@pytest.mark.parametrize("layout", ["model.onnx", "1/model.onnx", "churn.onnx"])
def test_plain_onnx_directory_serves_with_the_graphs_signature(tmp_path, layout):
    """A directory holding only an ONNX file (at the top, one level down as KServe keeps a
    versioned storage URI, or under another name) is served under --model-name with the
    graph's inputs and outputs, and answers what onnxruntime answers."""
    d = tmp_path / "mnt-models"
    (d / layout).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO_CHURN, d / layout)
    sess = onnxruntime.InferenceSession(DEMO_CHURN, providers=["CPUExecutionProvider"])
    proc, url = serve_dir(d, tmp_path, "churn")
    with proc as p:
        p.wait_for(url + "/v2/health/ready")
        meta = requests.get(url + "/v2/models/churn", timeout=10).json()
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == \
            [(i.name, "FP32") for i in sess.get_inputs()]
        assert [o["name"] for o in meta["outputs"]] == [o.name for o in sess.get_outputs()]
        assert meta["inputs"][0]["shape"] == [-1, 30]
        x = np.random.default_rng(1).normal(size=(5, 30)).astype(np.float32)
        got = infer(url, "churn", x)
        label, proba = sess.run(None, {"X": x})
        np.testing.assert_array_equal(got["label"].ravel(), label)
        np.testing.assert_allclose(got["probabilities"], proba, rtol=1e-5, atol=1e-6)
        assert requests.get(url + "/v2/models/model", timeout=10).status_code == 404


def test_a_sklearn_model_exported_as_is_serves(tmp_path):
    """skl2onnx with zipmap off, saved as the user saves it: served and equal to onnxruntime;
    the same model with its default ZipMap output (a sequence of maps, not a tensor) is
    refused at start-up with a message saying how to export it."""
    x, y = make_classification(n_samples=200, n_features=6, random_state=0)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    d = tmp_path / "lr"
    d.mkdir()
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}})
    (d / "model.onnx").write_bytes(onx.SerializeToString())
    got, ref = served_and_onnxruntime(d, tmp_path, "lr", x[:4])
    np.testing.assert_array_equal(got["label"], ref["label"])
    np.testing.assert_allclose(got["probabilities"], ref["probabilities"], rtol=1e-5, atol=1e-6)

    z = tmp_path / "zipmap"
    z.mkdir()
    (z / "model.onnx").write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    r = subprocess.run([ferry_bin(), "serve", "--model-dir", str(z), "--listen",
                        f"127.0.0.1:{free_port()}", "--grpc-listen", "off"],
                       capture_output=True, text=True, timeout=60, env=base_env())
    assert r.returncode != 0
    assert "output_probability" in r.stderr and "zipmap" in r.stderr, r.stderr


@pytest.mark.parametrize("content,message", [
    ({}, "holds no model file"),
    ({"a.onnx": DEMO_CHURN, "b.onnx": DEMO_CHURN}, "several model files"),
    ({"model.onnx": b"not a model"}, "not an ONNX model"),
])
def test_a_directory_ferry_cannot_serve_is_refused_with_the_reason(tmp_path, content, message):
    d = tmp_path / "bad"
    d.mkdir()
    for name, src in content.items():
        if isinstance(src, bytes):
            (d / name).write_bytes(src)
        else:
            shutil.copy(src, d / name)
    r = subprocess.run([ferry_bin(), "serve", "--model-dir", str(d), "--listen",
                        f"127.0.0.1:{free_port()}", "--grpc-listen", "off"],
                       capture_output=True, text=True, timeout=60, env=base_env())
    assert r.returncode != 0
    assert "--model-dir" in r.stderr and message in r.stderr, r.stderr


def export_mlp_with_external_weights(d, fname, seed):
    """A scikit-learn MLP exported by skl2onnx into directory `d` as `fname`, its weights in
    `weights.data` beside it (onnx's save_as_external_data, as mlflow.onnx writes by default).
    Returns rows for it."""
    import onnx
    from onnx import numpy_helper
    from sklearn.neural_network import MLPClassifier
    x, y = make_classification(n_samples=200, n_features=6, random_state=seed)
    x = x.astype(np.float32)
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x, y)
    model = to_onnx(mlp, x[:1], options={id(mlp): {"zipmap": False}})
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init), init.name))
    d.mkdir()
    onnx.save_model(model, str(d / fname), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.data", size_threshold=1024)
    assert (d / "weights.data").stat().st_size > 0
    return x


def test_onnx_with_external_data_serves(tmp_path):
    """A graph whose weights live in a file beside it (onnx's save_as_external_data, as
    mlflow.onnx writes by default) is served with that file linked and verified."""
    d = tmp_path / "ext"
    x = export_mlp_with_external_weights(d, "model.onnx", seed=1)
    got, ref = served_and_onnxruntime(d, tmp_path, "mlp", x[:3])
    np.testing.assert_allclose(got["probabilities"], ref["probabilities"], rtol=1e-5, atol=1e-6)


def test_push_fills_an_onnx_manifest_and_the_version_serves(tmp_path):
    """`ferry models push` of a directory holding only an ONNX file (its weights external, as
    mlflow.onnx writes them), into a local registry not created yet, fills model.yaml from the
    graph (format, artifact, inputs, outputs, and the weights file with its digest), and the
    published version serves from the registry with what onnxruntime answers."""
    import hashlib

    src = tmp_path / "export"
    x = export_mlp_with_external_weights(src, "mlp.onnx", seed=2)
    # The first push into a local registry creates its directory; reading one that does not
    # exist is still an error (a typo).
    registry = tmp_path / "registries" / "team"
    r = subprocess.run([ferry_bin(), "models", "--registry", str(tmp_path / "nosuch"), "list"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "nosuch" in r.stderr, r.stderr
    r = subprocess.run([ferry_bin(), "models", "--registry", str(registry), "push", str(src),
                        "--name", "mlp"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Filled format, artifact, inputs, outputs, files" in r.stdout, r.stdout
    manifest = yaml.safe_load(open(registry / "mlp" / "1" / "model.yaml"))
    assert manifest["artifact"] == "mlp.onnx"
    weights = open(src / "weights.data", "rb").read()
    assert manifest["files"] == {"weights.data": hashlib.sha256(weights).hexdigest()}
    sess = onnxruntime.InferenceSession(str(src / "mlp.onnx"), providers=["CPUExecutionProvider"])
    assert [i["name"] for i in manifest["inputs"]] == [i.name for i in sess.get_inputs()]
    assert [o["name"] for o in manifest["outputs"]] == [o.name for o in sess.get_outputs()]

    port = free_port()
    args = [ferry_bin(), "serve", "--registry", str(registry), "--models", "mlp@1",
            "--listen", f"127.0.0.1:{port}", "--grpc-listen", "off"]
    url = f"http://127.0.0.1:{port}"
    with Process(args, base_env(), str(tmp_path / "serve.log")) as p:
        p.wait_for(url + "/v2/health/ready")
        input_name = sess.get_inputs()[0].name
        got = infer(url, "mlp", x[:4], input_name)
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {input_name: x[:4]})))
    np.testing.assert_array_equal(got["label"].ravel(), ref["label"])
    np.testing.assert_allclose(got["probabilities"], ref["probabilities"], rtol=1e-5, atol=1e-6)


def test_model_dir_excludes_registry_flags(tmp_path):
    r = subprocess.run([ferry_bin(), "serve", "--model-dir", str(tmp_path), "--registry",
                        str(tmp_path)], capture_output=True, text=True, timeout=30,
                       env=base_env())
    assert r.returncode == 2 and "--registry" in r.stderr, r.stderr


def test_xgboost_file_directory_serves_on_trees(tmp_path):
    """A storage URI holding an XGBoost model.json serves on the trees engine and equals
    xgboost's own predict."""
    import xgboost
    x, y = make_classification(n_samples=300, n_features=8, random_state=2)
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    d = tmp_path / "xgb"
    d.mkdir()
    model.save_model(str(d / "model.json"))
    proc, url = serve_dir(d, tmp_path, "xgb")
    with proc as p:
        p.wait_for(url + "/v2/health/ready")
        xs = x[:6].astype(np.float32)
        got = infer(url, "xgb", xs)
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(xs), atol=1e-5)


def test_cluster_serving_runtime_runs_as_written(tmp_path):
    """deploy/kserve: the runtime's container args, with KServe's substitutions made ({{.Name}}
    the InferenceService name, /mnt/models the storage initializer's download), start the real
    binary, which becomes ready on the probe's path and serves the model at
    /v2/models/<isvc name>/infer; the runtime declares what KServe needs to select it."""
    runtime = yaml.safe_load(open(os.path.join(KSERVE, "cluster-serving-runtime.yaml")))
    isvc = yaml.safe_load(open(os.path.join(KSERVE, "inference-service.yaml")))
    assert runtime["kind"] == "ClusterServingRuntime"
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats and "onnx" in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (c,) = runtime["spec"]["containers"]
    assert c["name"] == "kserve-container", "KServe injects the storage mount into this name"
    name = isvc["metadata"]["name"]
    mnt = tmp_path / "mnt" / "models"
    mnt.mkdir(parents=True)
    shutil.copy(DEMO_CHURN, mnt / "model.onnx")
    ports = {}
    args = []
    for a in c["args"]:
        a = a.replace("{{.Name}}", name).replace("/mnt/models", str(mnt))
        m = re.search(r"0\.0\.0\.0:(\d+)", a)
        if m:
            ports[int(m.group(1))] = free_port()
            a = a.replace(m.group(0), f"127.0.0.1:{ports[int(m.group(1))]}")
        args.append(a)
    http = ports[c["readinessProbe"]["httpGet"]["port"]]
    env = base_env(**{e["name"]: e["value"] for e in c.get("env", [])})
    with Process([ferry_bin(), *args], env, str(tmp_path / "kserve.log")) as p:
        p.wait_for(f"http://127.0.0.1:{http}{c['readinessProbe']['httpGet']['path']}")
        x = np.random.default_rng(4).normal(size=(3, 30)).astype(np.float32)
        got = infer(f"http://127.0.0.1:{http}", name, x)
        sess = onnxruntime.InferenceSession(DEMO_CHURN, providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(got["label"].ravel(), sess.run(None, {"X": x})[0])
