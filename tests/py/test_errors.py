"""Client mistakes: each must be a 4xx JSON {"error": ...} naming the problem, and the server
must keep answering good requests afterwards."""
import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import (assert_json_error, binary_infer_body, check_infer_response, infer_path,
                      json_infer_body, ref_array)

MAX_BODY = 65536


@pytest.fixture(scope="module")
def server(ferry):
    with ferry.running("errors", ["churn@champion", "mlp@1", "dtypes@1"], onnx_engine="ort",
                       max_body_bytes=MAX_BODY) as srv:
        srv.wait_ready()
        yield srv


@pytest.fixture(scope="module")
def churn(fixtures):
    return fixtures.case("churn")


@pytest.fixture
def still_serving(server, fixtures):
    """After the test's bad request(s), a good request still succeeds."""
    yield
    case = fixtures.case("churn")
    r = server.post(infer_path("churn"), json=json_infer_body(case))
    assert r.status_code == 200, f"good request after bad one failed: {r.status_code} {r.text}"
    check_infer_response(r.json(), case)
    assert server.proc.poll() is None, "server died"


def x_tensor(churn, **override):
    t = dict(churn["inputs"][0])
    t.update(override)
    return t


def post_json(server, path, obj):
    return server.post(path, data=json.dumps(obj).encode(),
                       headers={"Content-Type": "application/json"})


def churn_x_bytes(churn):
    return ref_array(churn["inputs"][0]).astype("<f4").tobytes()


# -- JSON body mistakes --------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b'{"inputs": [', b"not json at all", b"", b"[1, 2, 3]",
                                  b'{"inputs": {"name": "X"}}'],
                         ids=["truncated", "garbage", "empty", "array", "inputs-not-list"])
def test_malformed_json(server, still_serving, body):
    r = server.post(infer_path("churn"), data=body, headers={"Content-Type": "application/json"})
    assert_json_error(r, 400)


def test_malformed_json_message(server, still_serving):
    r = server.post(infer_path("churn"), data=b'{"inputs": [',
                    headers={"Content-Type": "application/json"})
    assert_json_error(r, 400, ["json", "parse", "syntax", "eof", "expected", "invalid"])


def test_wrong_datatype(server, churn, still_serving):
    r = post_json(server, infer_path("churn"), {"inputs": [x_tensor(churn, datatype="FP64")]})
    assert_json_error(r, 400, ["datatype", "FP64", "FP32"])


def test_unknown_datatype(server, churn, still_serving):
    r = post_json(server, infer_path("churn"), {"inputs": [x_tensor(churn, datatype="FP99")]})
    assert_json_error(r, 400, ["datatype", "FP99"])


def test_wrong_shape(server, churn, still_serving):
    data = ref_array(churn["inputs"][0])[:2, :29].reshape(-1).tolist()
    r = post_json(server, infer_path("churn"),
                  {"inputs": [x_tensor(churn, shape=[2, 29], data=data)]})
    assert_json_error(r, 400, ["shape", "29"])


def test_wrong_rank(server, churn, still_serving):
    data = ref_array(churn["inputs"][0])[:2].reshape(-1).tolist()
    r = post_json(server, infer_path("churn"), {"inputs": [x_tensor(churn, shape=[60], data=data)]})
    assert_json_error(r, 400, ["shape", "rank", "dimension"])


def test_negative_shape(server, churn, still_serving):
    r = post_json(server, infer_path("churn"), {"inputs": [x_tensor(churn, shape=[-1, 30])]})
    assert_json_error(r, 400, ["shape", "-1", "negative"])


def test_data_length_mismatch(server, churn, still_serving):
    data = ref_array(churn["inputs"][0])[:2].reshape(-1).tolist()[:59]
    r = post_json(server, infer_path("churn"),
                  {"inputs": [x_tensor(churn, shape=[2, 30], data=data)]})
    assert_json_error(r, 400, ["shape", "59", "60", "length", "element", "size"])


@pytest.mark.parametrize("shape", [[2 ** 40, 30], [2 ** 62, 2 ** 62], [2 ** 31, 2 ** 31, 30]],
                         ids=["huge", "overflow-2d", "overflow-3d"])
def test_absurd_shape(server, churn, still_serving, shape):
    """Shapes whose element count is huge or overflows must be refused, not allocated."""
    r = post_json(server, infer_path("churn"),
                  {"inputs": [x_tensor(churn, shape=shape, data=[1.0] * 30)]})
    assert_json_error(r, 400, ["shape", "element", "size", "rank", "too"])


def test_absurd_shape_binary(server, churn, still_serving):
    raw = churn_x_bytes(churn)
    hdr = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2 ** 62, 30],
                       "parameters": {"binary_data_size": len(raw)}}]}
    body, headers = binary_infer_body(hdr, [raw])
    assert_json_error(server.post(infer_path("churn"), data=body, headers=headers), 400)


def test_duplicate_input(server, churn, still_serving):
    r = post_json(server, infer_path("churn"), {"inputs": [x_tensor(churn), x_tensor(churn)]})
    assert_json_error(r, 400, ["X", "twice", "duplicate"])


def test_missing_input(server, fixtures, still_serving):
    case = fixtures.case("dtypes")
    body = {"inputs": [t for t in case["inputs"] if t["name"] != "flag"]}
    r = post_json(server, infer_path("dtypes"), body)
    assert_json_error(r, 400, ["flag"])


def test_no_inputs(server, still_serving):
    r = post_json(server, infer_path("churn"), {"inputs": []})
    assert_json_error(r, 400, ["X", "input"])


def test_unknown_input_name(server, churn, still_serving):
    r = post_json(server, infer_path("churn"),
                  {"inputs": [x_tensor(churn), x_tensor(churn, name="bogus_in")]})
    assert_json_error(r, 400, ["bogus_in"])


def test_renamed_input(server, churn, still_serving):
    r = post_json(server, infer_path("churn"), {"inputs": [x_tensor(churn, name="bogus_in")]})
    assert_json_error(r, 400, ["bogus_in", "\"X\"", "'X'", "`X`", " X "])


def test_unknown_output_name(server, churn, still_serving):
    r = post_json(server, infer_path("churn"),
                  {"inputs": [x_tensor(churn)], "outputs": [{"name": "bogus_out"}]})
    assert_json_error(r, 400, ["bogus_out"])


@pytest.mark.parametrize("data", [["a"] * 210, [None] * 210, [{"v": 1}] * 210, "abc"],
                         ids=["strings", "nulls", "objects", "string"])
def test_non_numeric_data(server, churn, still_serving, data):
    r = post_json(server, infer_path("churn"), {"inputs": [x_tensor(churn, data=data)]})
    assert_json_error(r, 400)


def test_non_numeric_data_message(server, churn, still_serving):
    r = post_json(server, infer_path("churn"), {"inputs": [x_tensor(churn, data=["a"] * 210)]})
    assert_json_error(r, 400, ["data", "number", "numeric", "fp32", "float", "type", "string"])


def test_float_data_for_int_input(server, fixtures, still_serving):
    case = fixtures.case("dtypes")
    inputs = [dict(t) for t in case["inputs"]]
    for t in inputs:
        if t["name"] == "i32":
            t["data"] = [v + 0.5 for v in t["data"]]
    r = post_json(server, infer_path("dtypes"), {"inputs": inputs})
    assert_json_error(r, 400, ["i32", "INT32", "integer", "data", "type"])


# -- model / version / route ---------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v2/models/nosuchmodel/infer",
                                  "/v2/models/nosuchmodel/versions/1/infer"])
def test_unknown_model(server, churn, still_serving, path):
    r = post_json(server, path, json_infer_body(churn))
    assert_json_error(r, 404, ["nosuchmodel"])


def test_unknown_version(server, churn, still_serving):
    r = post_json(server, "/v2/models/churn/versions/99/infer", json_infer_body(churn))
    assert_json_error(r, 404, ["99"])


@pytest.mark.parametrize("version", ["0", "abc", "-1"])
def test_invalid_version(server, churn, still_serving, version):
    r = post_json(server, f"/v2/models/churn/versions/{version}/infer", json_infer_body(churn))
    assert_json_error(r, (400, 404))


def test_wrong_method_on_infer(server, still_serving):
    assert_json_error(server.get(infer_path("churn")), 405)
    assert_json_error(server.request("PUT", infer_path("churn", "1"), data=b"{}"), 405)


def test_wrong_method_on_health(server, still_serving):
    assert_json_error(server.request("DELETE", "/v2/health/live"), 405)


@pytest.mark.parametrize("path", ["/v2/nope", "/no/such/route", "/v2/models/churn/infer/extra"])
def test_unknown_route(server, still_serving, path):
    assert_json_error(server.get(path), (404, 405))
    assert_json_error(server.post(path, json={}), (404, 405))


def test_unknown_route_is_404(server, still_serving):
    assert_json_error(server.get("/no/such/route"), 404)


# -- body size -----------------------------------------------------------------------------------

def big_churn_body(churn, rows=400):
    x = np.tile(ref_array(churn["inputs"][0]), (rows // 7 + 1, 1))[:rows]
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.reshape(-1).tolist()}]}).encode()
    assert len(body) > 2 * MAX_BODY
    return body


def test_body_too_large(server, churn, still_serving):
    r = server.post(infer_path("churn"), data=big_churn_body(churn),
                    headers={"Content-Type": "application/json"})
    assert_json_error(r, 413, ["large", "limit", "size", "bytes", "body"])


def padded_body(churn, size):
    body = json.dumps(json_infer_body(churn)).encode()
    assert body.endswith(b"}") and len(body) < size
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_body_at_limit_accepted(server, churn):
    r = server.post(infer_path("churn"), data=padded_body(churn, MAX_BODY),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, f"a body of exactly max_body_bytes was refused: {r.text[:300]}"
    check_infer_response(r.json(), churn)


def test_body_one_over_limit(server, churn, still_serving):
    r = server.post(infer_path("churn"), data=padded_body(churn, MAX_BODY + 1),
                    headers={"Content-Type": "application/json"})
    assert_json_error(r, 413)


def test_body_too_large_keeps_request_id(server, churn, still_serving):
    r = server.post(infer_path("churn"), data=big_churn_body(churn),
                    headers={"Content-Type": "application/json", "x-request-id": "big-1"})
    assert r.status_code == 413
    assert r.headers.get("x-request-id") == "big-1"


def test_body_too_large_chunked(server, churn, still_serving):
    body = big_churn_body(churn)

    def chunks():
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]
    r = server.post(infer_path("churn"), data=chunks(),
                    headers={"Content-Type": "application/json"})
    assert_json_error(r, 413)


def test_body_too_large_v1(server, churn, still_serving):
    x = np.tile(ref_array(churn["inputs"][0]), (60, 1))
    r = server.post("/v1/models/churn:predict", json={"instances": x.tolist()})
    assert_json_error(r, 413)


# -- binary tensor extension ---------------------------------------------------------------------

def binary_header(churn, size):
    return {"inputs": [{"name": "X", "datatype": "FP32", "shape": churn["inputs"][0]["shape"],
                        "parameters": {"binary_data_size": size}}]}


def test_binary_manual_ok(server, churn):
    """Sanity check of the hand-built binary request used by the negative cases below."""
    raw = churn_x_bytes(churn)
    body, headers = binary_infer_body(binary_header(churn, len(raw)), [raw])
    r = server.post(infer_path("churn"), data=body, headers=headers)
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), churn)


@pytest.mark.parametrize("size", [-4, 2 ** 63, "840"], ids=["negative", "huge", "string"])
def test_binary_data_size_invalid(server, churn, still_serving, size):
    raw = churn_x_bytes(churn)
    body, headers = binary_infer_body(binary_header(churn, size), [raw])
    assert_json_error(server.post(infer_path("churn"), data=body, headers=headers), 400)


def test_binary_header_length_beyond_body(server, churn, still_serving):
    raw = churn_x_bytes(churn)
    body, headers = binary_infer_body(binary_header(churn, len(raw)), [raw])
    headers["Inference-Header-Content-Length"] = str(len(body) + 100)
    r = server.post(infer_path("churn"), data=body, headers=headers)
    assert_json_error(r, 400, ["header", "length", "inference-header-content-length"])


@pytest.mark.parametrize("value", ["abc", "-5"])
def test_binary_header_length_invalid(server, churn, still_serving, value):
    raw = churn_x_bytes(churn)
    body, headers = binary_infer_body(binary_header(churn, len(raw)), [raw])
    headers["Inference-Header-Content-Length"] = value
    r = server.post(infer_path("churn"), data=body, headers=headers)
    assert_json_error(r, 400)


def test_binary_header_length_cuts_json(server, churn, still_serving):
    raw = churn_x_bytes(churn)
    body, headers = binary_infer_body(binary_header(churn, len(raw)), [raw])
    cut = int(headers["Inference-Header-Content-Length"]) - 10
    headers["Inference-Header-Content-Length"] = str(cut)
    r = server.post(infer_path("churn"), data=body, headers=headers)
    assert_json_error(r, 400)


def test_binary_data_size_larger_than_body(server, churn, still_serving):
    raw = churn_x_bytes(churn)
    body, headers = binary_infer_body(binary_header(churn, len(raw) + 400), [raw])
    r = server.post(infer_path("churn"), data=body, headers=headers)
    assert_json_error(r, 400, ["binary", "size", "bytes", "data"])


def test_binary_data_size_smaller_than_shape(server, churn, still_serving):
    raw = churn_x_bytes(churn)
    body, headers = binary_infer_body(binary_header(churn, 16), [raw[:16]])
    r = server.post(infer_path("churn"), data=body, headers=headers)
    assert_json_error(r, 400, ["binary", "size", "bytes", "shape", "840", "16", "element"])


def test_binary_data_size_smaller_with_trailing_bytes(server, churn, still_serving):
    raw = churn_x_bytes(churn)
    body, headers = binary_infer_body(binary_header(churn, 16), [raw])
    r = server.post(infer_path("churn"), data=body, headers=headers)
    assert_json_error(r, 400)


def test_binary_data_size_not_multiple_of_element(server, churn, still_serving):
    raw = churn_x_bytes(churn)
    body, headers = binary_infer_body(binary_header(churn, len(raw) - 1), [raw[:-1]])
    r = server.post(infer_path("churn"), data=body, headers=headers)
    assert_json_error(r, 400)


def test_triton_client_wrong_shape(server, churn, still_serving):
    x = ref_array(churn["inputs"][0])[:, :29].copy()
    inp = httpclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        server.triton.infer("churn", [inp])
    assert e.value.status() == "400", e.value
    assert "shape" in str(e.value.message()).lower() or "29" in str(e.value.message())


def test_triton_client_wrong_datatype(server, churn, still_serving):
    x = ref_array(churn["inputs"][0]).astype(np.float64)
    inp = httpclient.InferInput("X", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        server.triton.infer("churn", [inp])
    assert e.value.status() == "400", e.value
    msg = str(e.value.message()).lower()
    assert "datatype" in msg or "fp64" in msg or "fp32" in msg, msg
