"""Inference against reference outputs, per engine (ort, tract), through tritonclient.http in
JSON and binary modes and through plain HTTP JSON."""
import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import (SERVED, TOL, assert_array_matches, assert_json_tensor_matches,
                      check_infer_response, infer_path, json_infer_body, ref_array, triton_inputs)

ALL_MODELS = ["churn", "boosted", "mlp", "dtypes", "scaled", "svr"]
VERSIONS = [pytest.param(None, id="default"), pytest.param("1", id="v1")]


@pytest.fixture(scope="module", params=sorted(SERVED))
def engine(request):
    return request.param


@pytest.fixture(scope="module")
def server(engine, ferry, fixtures):
    models = [fixtures.model_ref(c) for c in fixtures.cases if engine in c["engines"]]
    with ferry.running(f"infer-{engine}", models, onnx_engine=engine) as srv:
        srv.wait_ready()
        yield srv


def tri_version(version):
    return "" if version is None else version


def check_triton_result(result, case, outputs=None):
    resp = result.get_response()
    assert resp.get("model_name") == case["model"], f"model_name {resp.get('model_name')!r}"
    if "model_version" in resp:
        assert str(resp["model_version"]) == str(case["version"])
    wanted = outputs if outputs is not None else [o["name"] for o in case["outputs"]]
    got = sorted(o["name"] for o in resp.get("outputs", []))
    assert got == sorted(wanted), f"outputs {got} != requested {sorted(wanted)}"
    for ref in case["outputs"]:
        if ref["name"] not in wanted:
            continue
        meta = result.get_output(ref["name"])
        assert meta["datatype"] == ref["datatype"], f"{ref['name']}: datatype {meta['datatype']}"
        assert list(meta["shape"]) == list(ref["shape"]), f"{ref['name']}: shape {meta['shape']}"
        assert_array_matches(result.as_numpy(ref["name"]), ref, f"{case['model']}.{ref['name']}")


def test_reference_engines_match_suite(fixtures):
    """The static engine -> models table used for collection agrees with reference.json."""
    for engine, models in SERVED.items():
        expected = sorted(c["model"] for c in fixtures.cases if engine in c["engines"])
        assert sorted(models) == expected, engine


def test_all_models_ready(server, fixtures, engine):
    assert server.get("/v2/health/ready").status_code == 200
    for c in fixtures.cases:
        if engine in c["engines"]:
            assert server.get(f"/v2/models/{c['model']}/ready").status_code == 200, c["model"]
            assert server.get(
                f"/v2/models/{c['model']}/versions/{c['version']}/ready").status_code == 200


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_metadata_engine(server, engine, model):
    meta = server.triton.get_model_metadata(model)
    assert meta["platform"] == "onnx_onnxv1"
    params = meta.get("parameters") or {}
    assert params.get("engine") == engine, f"parameters {params!r}"
    assert isinstance(params.get("device"), str) and params["device"], f"parameters {params!r}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("model", ALL_MODELS)
def test_triton_json_mode(server, fixtures, model, version):
    case = fixtures.case(model)
    outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=False)
               for o in case["outputs"]]
    result = server.triton.infer(model, triton_inputs(case, binary=False),
                                 model_version=tri_version(version), outputs=outputs)
    # JSON mode: no binary section may be used for the outputs
    for o in result.get_response()["outputs"]:
        assert "data" in o, f"JSON mode output {o['name']} has no 'data'"
        assert "binary_data_size" not in (o.get("parameters") or {})
    check_triton_result(result, case)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("model", ALL_MODELS)
def test_triton_binary_mode(server, fixtures, model, version):
    case = fixtures.case(model)
    result = server.triton.infer(model, triton_inputs(case, binary=True),
                                 model_version=tri_version(version))
    for o in result.get_response()["outputs"]:
        assert "binary_data_size" in (o.get("parameters") or {}), \
            f"binary_data_output requested but {o['name']} came back as JSON"
    check_triton_result(result, case)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_triton_binary_explicit_outputs(server, fixtures, model):
    case = fixtures.case(model)
    outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=True)
               for o in case["outputs"]]
    result = server.triton.infer(model, triton_inputs(case, binary=True), outputs=outputs)
    check_triton_result(result, case)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_triton_binary_inputs_json_outputs(server, fixtures, model):
    case = fixtures.case(model)
    outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=False)
               for o in case["outputs"]]
    result = server.triton.infer(model, triton_inputs(case, binary=True), outputs=outputs,
                                 model_version="1")
    check_triton_result(result, case)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("model", ALL_MODELS)
def test_plain_http_json(server, fixtures, model, version):
    case = fixtures.case(model)
    r = server.post(infer_path(model, version), json=json_infer_body(case))
    assert r.status_code == 200, r.text
    assert "json" in r.headers.get("content-type", ""), r.headers
    check_infer_response(r.json(), case)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_plain_http_nested_data(server, fixtures, model):
    """OIP allows tensor data as nested arrays in the tensor's shape."""
    case = fixtures.case(model)
    body = {"inputs": [dict(t, data=ref_array(t).tolist()) for t in case["inputs"]]}
    r = server.post(infer_path(model), json=body)
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), case)


def test_churn_matches_sklearn(server, fixtures):
    case = fixtures.case("churn")
    result = server.triton.infer("churn", triton_inputs(case, binary=True))
    proba = result.as_numpy("probabilities")
    expected = np.array(case["sklearn_predict_proba"], dtype=np.float64).reshape(proba.shape)
    np.testing.assert_allclose(proba.astype(np.float64), expected, rtol=TOL, atol=TOL)
    labels = result.as_numpy("label")
    np.testing.assert_array_equal(labels, expected.argmax(axis=1))
    # plain HTTP agrees too
    r = server.post(infer_path("churn", "1"), json=json_infer_body(case, outputs=["probabilities"]))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"], dtype=np.float64).reshape(proba.shape),
                               expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_output_subset_triton(server, fixtures, binary):
    case = fixtures.case("churn")
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = server.triton.infer("churn", triton_inputs(case, binary=binary), outputs=outputs)
    check_triton_result(result, case, outputs=["probabilities"])

    case = fixtures.case("dtypes")
    wanted = ["i64_out", "flag_out"]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in wanted]
    result = server.triton.infer("dtypes", triton_inputs(case, binary=binary), outputs=outputs,
                                 model_version="1")
    check_triton_result(result, case, outputs=wanted)


def test_output_subset_mixed_binary_and_json(server, fixtures):
    case = fixtures.case("churn")
    outputs = [httpclient.InferRequestedOutput("label", binary_data=True),
               httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    result = server.triton.infer("churn", triton_inputs(case, binary=True), outputs=outputs)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert "binary_data_size" in (by_name["label"].get("parameters") or {})
    assert "data" in by_name["probabilities"]
    check_triton_result(result, case)


@pytest.mark.parametrize("version", VERSIONS)
def test_output_subset_plain_http(server, fixtures, version):
    case = fixtures.case("churn")
    r = server.post(infer_path("churn", version), json=json_infer_body(case, outputs=["label"]))
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), case, outputs=["label"])

    case = fixtures.case("dtypes")
    r = server.post(infer_path("dtypes", version),
                    json=json_infer_body(case, outputs=["f64_out", "i32_out"]))
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), case, outputs=["f64_out", "i32_out"])


def test_single_row(server, fixtures):
    """Batch dimension 1 works and gives the first reference row."""
    case = fixtures.case("mlp")
    x = ref_array(case["inputs"][0])[:1]
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64],
                        "data": x.reshape(-1).tolist()}]}
    r = server.post(infer_path("mlp"), json=body)
    assert r.status_code == 200, r.text
    ref = dict(case["outputs"][0])
    full = ref_array(ref)
    ref = {"name": ref["name"], "datatype": ref["datatype"], "shape": [1, 1],
           "data": full[:1].reshape(-1).tolist()}
    assert_json_tensor_matches(r.json()["outputs"][0], ref)


def test_oip_request_id_echoed_in_body(server, fixtures):
    """OIP: the response carries the request's "id"."""
    case = fixtures.case("churn")
    r = server.post(infer_path("churn"), json=json_infer_body(case, id="oip-req-42"))
    assert r.status_code == 200, r.text
    assert r.json().get("id") == "oip-req-42", r.text[:300]
    result = server.triton.infer("churn", triton_inputs(case, binary=True), request_id="oip-req-43")
    assert result.get_response().get("id") == "oip-req-43"
