"""Server/model metadata, health and readiness via tritonclient and plain HTTP."""
import pytest
from tritonclient.utils import InferenceServerException

from conftest import assert_json_error

CHURN_INPUTS = [{"name": "X", "datatype": "FP32", "shape": [-1, 30]}]
CHURN_OUTPUTS = [{"name": "label", "datatype": "INT64", "shape": [-1]},
                 {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
MLP_INPUTS = [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
MLP_OUTPUTS = [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}]


def tensors(meta_list):
    return [{"name": t["name"], "datatype": t["datatype"], "shape": list(t["shape"])}
            for t in meta_list]


def check_model_metadata(meta, name, inputs, outputs):
    assert meta["name"] == name
    assert "1" in [str(v) for v in meta.get("versions", [])], f"versions {meta.get('versions')!r}"
    assert meta["platform"] == "onnx_onnxv1"
    assert tensors(meta["inputs"]) == inputs
    assert tensors(meta["outputs"]) == outputs
    params = meta.get("parameters") or {}
    assert params.get("engine") == "ort", f"parameters {params!r}"
    assert isinstance(params.get("device"), str) and params["device"], f"parameters {params!r}"


def test_triton_server_live_ready(basic_server):
    c = basic_server.triton
    assert c.is_server_live()
    assert c.is_server_ready()


def test_triton_server_metadata(basic_server):
    meta = basic_server.triton.get_server_metadata()
    assert meta["name"] == "ferry"
    assert isinstance(meta.get("version"), str) and meta["version"]
    assert isinstance(meta.get("extensions"), list)
    assert all(isinstance(e, str) for e in meta["extensions"])


def test_triton_model_ready(basic_server):
    c = basic_server.triton
    assert c.is_model_ready("churn")
    assert c.is_model_ready("churn", "1")
    assert c.is_model_ready("mlp")
    assert c.is_model_ready("mlp", "1")
    assert not c.is_model_ready("nosuchmodel")
    assert not c.is_model_ready("churn", "42")


@pytest.mark.parametrize("version", ["", "1"], ids=["default", "v1"])
def test_triton_model_metadata(basic_server, version):
    c = basic_server.triton
    check_model_metadata(c.get_model_metadata("churn", version), "churn", CHURN_INPUTS,
                         CHURN_OUTPUTS)
    check_model_metadata(c.get_model_metadata("mlp", version), "mlp", MLP_INPUTS, MLP_OUTPUTS)


def test_triton_model_metadata_unknown(basic_server):
    with pytest.raises(InferenceServerException) as e:
        basic_server.triton.get_model_metadata("nosuchmodel")
    assert e.value.status() == "404", e.value
    with pytest.raises(InferenceServerException) as e:
        basic_server.triton.get_model_metadata("churn", "42")
    assert e.value.status() == "404", e.value


def test_http_health(basic_server):
    assert basic_server.get("/v2/health/live").status_code == 200
    assert basic_server.get("/v2/health/ready").status_code == 200


def test_http_server_metadata(basic_server):
    r = basic_server.get("/v2")
    assert r.status_code == 200, r.text
    assert "json" in r.headers.get("content-type", "")
    body = r.json()
    assert body["name"] == "ferry"
    assert isinstance(body["version"], str) and body["version"]
    assert isinstance(body["extensions"], list)


@pytest.mark.parametrize("suffix", ["", "/versions/1"], ids=["default", "v1"])
def test_http_model_metadata(basic_server, suffix):
    r = basic_server.get(f"/v2/models/churn{suffix}")
    assert r.status_code == 200, r.text
    check_model_metadata(r.json(), "churn", CHURN_INPUTS, CHURN_OUTPUTS)
    r = basic_server.get(f"/v2/models/mlp{suffix}")
    assert r.status_code == 200, r.text
    check_model_metadata(r.json(), "mlp", MLP_INPUTS, MLP_OUTPUTS)


def test_small_onnx_models_get_a_runtime_session_per_usable_core(basic_server):
    """So every I/O thread can run a cheap request inline at once: the demo models are tiny,
    so each gets as many ONNX Runtime sessions as the server found usable cores."""
    cores = None
    for line in basic_server.get("/metrics").text.splitlines():
        if line.startswith('ferry_devices{kind="cpu"}'):
            cores = int(float(line.rsplit(" ", 1)[1]))
    assert cores and cores >= 1
    for model in ("churn", "mlp"):
        params = basic_server.get(f"/v2/models/{model}").json()["parameters"]
        assert params["engine"] == "ort", params
        assert params["onnxruntime_sessions"] == cores, params


@pytest.mark.parametrize("suffix", ["/ready", "/versions/1/ready"], ids=["default", "v1"])
def test_http_model_ready(basic_server, suffix):
    assert basic_server.get(f"/v2/models/churn{suffix}").status_code == 200
    assert basic_server.get(f"/v2/models/mlp{suffix}").status_code == 200


def test_http_unknown_model_and_version(basic_server):
    assert_json_error(basic_server.get("/v2/models/nosuchmodel"), 404, ["nosuchmodel"])
    assert_json_error(basic_server.get("/v2/models/nosuchmodel/ready"), 404)
    assert_json_error(basic_server.get("/v2/models/churn/versions/42"), 404, ["42"])
    assert_json_error(basic_server.get("/v2/models/churn/versions/42/ready"), 404)


def test_repository_index(basic_server):
    index = basic_server.repository_index()
    by_key = {(e.get("name"), str(e.get("version"))): e for e in index}
    for model in ("churn", "mlp"):
        e = by_key.get((model, "1"))
        assert e is not None, f"{model} v1 missing from index {index!r}"
        assert e["state"] == "READY", e
        assert "reason" in e, f"index entries carry a 'reason' field: {e!r}"
    for e in index:
        assert set(e) >= {"name", "version", "state", "reason"}, e
