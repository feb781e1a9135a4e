"""TF-Serving / KServe v1 predict in row format."""
import numpy as np
import pytest

from conftest import TOL, assert_json_error, ref_array


@pytest.fixture(scope="module")
def basic_server(ferry):
    """This module's own server: churn@champion, mlp@1 and the multi-input dtypes@1 on ort."""
    with ferry.running("v1", ["churn@champion", "mlp@1", "dtypes@1"], onnx_engine="ort") as srv:
        srv.wait_ready()
        yield srv


def test_v1_churn(basic_server, fixtures):
    case = fixtures.case("churn")
    x = ref_array(case["inputs"][0])
    r = basic_server.post("/v1/models/churn:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert isinstance(preds, list) and len(preds) == x.shape[0], preds
    refs = {o["name"]: ref_array(o) for o in case["outputs"]}
    sk = np.array(case["sklearn_predict_proba"]).reshape(-1, 2)
    for i, p in enumerate(preds):
        assert isinstance(p, dict) and sorted(p) == ["label", "probabilities"], p
        assert isinstance(p["label"], int) and not isinstance(p["label"], bool), p
        assert p["label"] == int(refs["label"][i]), (i, p)
        assert isinstance(p["probabilities"], list) and len(p["probabilities"]) == 2, p
        np.testing.assert_allclose(p["probabilities"], refs["probabilities"][i],
                                   rtol=TOL, atol=TOL)
        np.testing.assert_allclose(p["probabilities"], sk[i], rtol=TOL, atol=TOL)


def test_v1_mlp(basic_server, fixtures):
    case = fixtures.case("mlp")
    x = ref_array(case["inputs"][0])
    r = basic_server.post("/v1/models/mlp:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    ref = ref_array(case["outputs"][0])
    assert isinstance(preds, list) and len(preds) == x.shape[0], preds
    for i, p in enumerate(preds):
        assert isinstance(p, list) and len(p) == 1, f"row {i}: expected [y], got {p!r}"
        np.testing.assert_allclose(p, ref[i], rtol=TOL, atol=TOL)


def test_v1_single_instance(basic_server, fixtures):
    case = fixtures.case("mlp")
    x = ref_array(case["inputs"][0])
    r = basic_server.post("/v1/models/mlp:predict", json={"instances": x[2:3].tolist()})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 1
    np.testing.assert_allclose(preds[0], ref_array(case["outputs"][0])[2], rtol=TOL, atol=TOL)


def test_v1_errors(basic_server, fixtures):
    x = ref_array(fixtures.case("churn")["inputs"][0])
    # unknown model
    assert_json_error(basic_server.post("/v1/models/nosuchmodel:predict",
                                        json={"instances": x.tolist()}), 404, ["nosuchmodel"])
    # wrong row width
    assert_json_error(basic_server.post("/v1/models/churn:predict",
                                        json={"instances": x[:, :29].tolist()}), 400,
                      ["shape", "29", "30", "length", "column", "feature"])
    # missing "instances"
    assert_json_error(basic_server.post("/v1/models/churn:predict", json={"rows": x.tolist()}),
                      400, ["instances"])
    # malformed JSON
    assert_json_error(basic_server.post("/v1/models/churn:predict", data=b'{"instances": [[1,',
                                        headers={"Content-Type": "application/json"}), 400)
    # still serving
    r = basic_server.post("/v1/models/churn:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text


def test_v1_multi_input_rows(basic_server, fixtures):
    """TF-Serving row format for a model with several inputs: one object per instance keyed by
    input name; the answer has one object per instance keyed by output name."""
    case = fixtures.case("dtypes")
    ins = {t["name"]: ref_array(t) for t in case["inputs"]}
    n = case["inputs"][0]["shape"][0]
    instances = [{k: v[i].tolist() for k, v in ins.items()} for i in range(n)]
    r = basic_server.post("/v1/models/dtypes:predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert isinstance(preds, list) and len(preds) == n, preds
    outs = {o["name"]: (o, ref_array(o)) for o in case["outputs"]}
    for i, p in enumerate(preds):
        assert isinstance(p, dict) and sorted(p) == sorted(outs), p
        for name, (ref, arr) in outs.items():
            got, exp = p[name], arr[i]
            if ref["datatype"] == "FP64":
                np.testing.assert_allclose(got, exp, rtol=TOL, atol=TOL)
            else:
                assert got == exp.tolist(), (i, name, got, exp.tolist())
                if ref["datatype"] == "BOOL":
                    assert all(isinstance(b, bool) for b in got), (i, name, got)
