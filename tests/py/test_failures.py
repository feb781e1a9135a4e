"""Models that fail to load are never served and are reported; the others keep serving.

- corrupt@1: manifest digest does not match the artifact.
- svr@1 under onnx_engine: tract: tract lacks the ONNX-ML `SVMRegressor` operator; a per-model
  `onnx_engine: ort` override serves it.
"""
import pytest
from tritonclient.utils import InferenceServerException

from conftest import (assert_array_matches, assert_json_error, check_infer_response, infer_path,
                      json_infer_body, triton_inputs)

DIGEST_WORDS = ["sha256", "digest"]


# -- corrupt artifact ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corrupt_server(ferry, fixtures):
    assert fixtures.reference["corrupt"] == [{"model": "corrupt", "version": 1}]
    with ferry.running("corrupt", ["corrupt@1", "mlp@1"], onnx_engine="ort") as srv:
        states = srv.wait_settled([("corrupt", 1), ("mlp", 1)])
        assert states[("mlp", 1)]["state"] == "READY", states
        yield srv


def test_corrupt_index_unavailable(corrupt_server):
    e = corrupt_server.index_entry("corrupt", 1)
    assert e is not None
    assert e["state"] == "UNAVAILABLE", e
    reason = e.get("reason") or ""
    assert any(w in reason.lower() for w in DIGEST_WORDS), f"reason {reason!r}"
    assert corrupt_server.index_entry("mlp", 1)["state"] == "READY"


@pytest.mark.parametrize("version", [None, "1"], ids=["default", "v1"])
def test_corrupt_infer_503(corrupt_server, fixtures, version):
    case = fixtures.case("mlp")  # same signature as corrupt
    r = corrupt_server.post(infer_path("corrupt", version), json=json_infer_body(case))
    assert_json_error(r, 503, DIGEST_WORDS)


def test_corrupt_v1_predict_503(corrupt_server, fixtures):
    x = fixtures.case("mlp")["inputs"][0]
    rows = [x["data"][i * 64:(i + 1) * 64] for i in range(x["shape"][0])]
    r = corrupt_server.post("/v1/models/corrupt:predict", json={"instances": rows})
    assert_json_error(r, 503, DIGEST_WORDS)


def test_corrupt_triton_infer_fails(corrupt_server, fixtures):
    case = fixtures.case("mlp")
    with pytest.raises(InferenceServerException) as e:
        corrupt_server.triton.infer("corrupt", triton_inputs(case, binary=True))
    assert e.value.status() == "503", e.value


def test_corrupt_model_not_ready(corrupt_server):
    assert corrupt_server.get("/v2/models/corrupt/ready").status_code == 503
    assert corrupt_server.get("/v2/models/corrupt/versions/1/ready").status_code == 503
    assert not corrupt_server.triton.is_model_ready("corrupt")


def test_corrupt_server_not_ready_but_live(corrupt_server):
    assert corrupt_server.get("/v2/health/live").status_code == 200
    assert corrupt_server.get("/v2/health/ready").status_code == 503
    assert corrupt_server.triton.is_server_live()
    assert not corrupt_server.triton.is_server_ready()


def test_corrupt_other_model_serves(corrupt_server, fixtures):
    case = fixtures.case("mlp")
    r = corrupt_server.post(infer_path("mlp"), json=json_infer_body(case))
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), case)
    assert corrupt_server.get("/v2/models/mlp/ready").status_code == 200


# -- tract refuses SVMRegressor -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tract_server(ferry, fixtures):
    assert {"model": "svr", "version": 1, "engine": "tract", "operator": "SVMRegressor"} \
        in fixtures.reference["refused"]
    with ferry.running("tract-refuses", ["mlp@1", "svr@1"], onnx_engine="tract") as srv:
        states = srv.wait_settled([("mlp", 1), ("svr", 1)])
        assert states[("mlp", 1)]["state"] == "READY", states
        yield srv


def test_tract_svr_unavailable(tract_server):
    e = tract_server.index_entry("svr", 1)
    assert e is not None and e["state"] == "UNAVAILABLE", e
    reason = e.get("reason") or ""
    assert "SVMRegressor" in reason, f"reason does not name the operator: {reason!r}"
    assert "ort" in reason, f"reason does not suggest the ort engine: {reason!r}"


def test_tract_svr_infer_503(tract_server, fixtures):
    r = tract_server.post(infer_path("svr"), json=json_infer_body(fixtures.case("svr")))
    msg = assert_json_error(r, 503, ["SVMRegressor"])
    assert "ort" in msg, f"message does not suggest the ort engine: {msg!r}"


def test_tract_readiness(tract_server):
    assert tract_server.get("/v2/health/ready").status_code == 503
    assert tract_server.get("/v2/models/svr/ready").status_code == 503
    assert tract_server.get("/v2/models/mlp/ready").status_code == 200


def test_tract_mlp_serves(tract_server, fixtures):
    case = fixtures.case("mlp")
    r = tract_server.post(infer_path("mlp", "1"), json=json_infer_body(case))
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), case)
    assert tract_server.triton.get_model_metadata("mlp")["parameters"]["engine"] == "tract"


# -- per-model engine override -------------------------------------------------------------------

@pytest.fixture(scope="module")
def override_server(ferry):
    with ferry.running("override", ["mlp@1", {"model": "svr@1", "onnx_engine": "ort"}],
                       onnx_engine="tract") as srv:
        srv.wait_ready()
        yield srv


def test_override_ready(override_server):
    assert override_server.get("/v2/health/ready").status_code == 200
    assert override_server.index_entry("svr", 1)["state"] == "READY"


def test_override_engines(override_server):
    c = override_server.triton
    assert c.get_model_metadata("svr")["parameters"]["engine"] == "ort"
    assert c.get_model_metadata("mlp")["parameters"]["engine"] == "tract"


@pytest.mark.parametrize("model", ["svr", "mlp"])
def test_override_serves_reference(override_server, fixtures, model):
    case = fixtures.case(model)
    r = override_server.post(infer_path(model), json=json_infer_body(case))
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), case)
    result = override_server.triton.infer(model, triton_inputs(case, binary=True),
                                          model_version="1")
    for ref in case["outputs"]:
        assert_array_matches(result.as_numpy(ref["name"]), ref)


# -- readiness waits for every pinned reference ---------------------------------------------------

def test_server_not_ready_while_a_second_pinned_version_is_missing(ferry):
    """DESIGN.md: ready = every pinned model loaded. With churn@champion loaded but churn@99
    (a second pinned reference to the same model) unresolvable, the server is live, serves
    churn, and is not ready."""
    import time
    with ferry.running("pinned", ["churn@champion", "churn@99"], onnx_engine="ort") as srv:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if srv.get("/v2/models/churn/ready").status_code == 200:
                break
            time.sleep(0.2)
        assert srv.get("/v2/models/churn/ready").status_code == 200
        time.sleep(1.0)
        assert srv.get("/v2/health/live").status_code == 200
        assert srv.get("/v2/health/ready").status_code == 503
        assert not srv.triton.is_server_ready()
