"""Hostile input: a corpus of malformed requests. Each must get a 4xx JSON {"error": ...}
(protocol-level framing errors that hyper rejects before ferry sees a request get a bare 4xx
or a closed connection), the process must stay alive and keep serving, and its memory must
stay bounded: no allocation sized by a number the client sent."""
import json
import socket
import struct

import pytest

from conftest import assert_json_error, check_infer_response, infer_path, json_infer_body

MAX_BODY = 8 * 1024 * 1024
INFER = "/v2/models/churn/infer"
DTYPES = "/v2/models/dtypes/infer"
V1 = "/v1/models/churn:predict"
ENDPOINT = "/v1/endpoints/risk/predict"
ROW = [0.5] * 30


def x(**override):
    t = {"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}
    t.update(override)
    return {k: v for k, v in t.items() if v is not DROP}


DROP = object()


def j(obj):
    return json.dumps(obj).encode()


def binary(header, tail, header_length=None):
    head = j(header)
    n = str(len(head)) if header_length is None else header_length
    return head + tail, {"Inference-Header-Content-Length": n,
                         "Content-Type": "application/octet-stream"}


def bin_input(name, shape, datatype, size, **params):
    return {"name": name, "shape": shape, "datatype": datatype,
            "parameters": {"binary_data_size": size, **params}}


def deep(n, leaf="1"):
    return ("[" * n + leaf + "]" * n).encode()


def bytes_elem(b):
    return struct.pack("<I", len(b)) + b


# (id, path, body, extra headers). Every case must answer 4xx JSON.
CASES = [
    # -- not an inference request at all
    ("empty-body", INFER, b"", {}),
    ("json-null", INFER, b"null", {}),
    ("json-array", INFER, b"[]", {}),
    ("json-string", INFER, b'"inputs"', {}),
    ("xml", INFER, b"<infer><inputs/></infer>", {"Content-Type": "application/xml"}),
    ("form-encoded", INFER, b"inputs=X&shape=1,30", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("nul-bytes", INFER, b"\x00" * 4096, {}),
    ("invalid-utf8-json", INFER, b'{"inputs": [{"name": "\xff\xfe", "shape": [1], "datatype": "FP32", "data": [1]}]}', {}),
    ("lone-surrogate", INFER, b'{"inputs": [{"name": "\\ud800", "shape": [1], "datatype": "FP32", "data": [1]}]}', {}),
    ("truncated-json", INFER, j({"inputs": [x()]})[:-7], {}),
    ("trailing-garbage", INFER, j({"inputs": [x()]}) + b"}}}", {}),
    ("deep-nesting-body", INFER, deep(200_000), {}),
    ("deep-nesting-data", INFER, b'{"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ' + deep(100_000) + b"}]}", {}),
    ("deep-nesting-object", INFER, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, {}),
    # -- wrong types for every field
    ("inputs-object", INFER, j({"inputs": {"X": ROW}}), {}),
    ("inputs-null", INFER, j({"inputs": None}), {}),
    ("inputs-missing", INFER, j({"outputs": []}), {}),
    ("name-number", INFER, j({"inputs": [x(name=5)]}), {}),
    ("name-missing", INFER, j({"inputs": [x(name=DROP)]}), {}),
    ("shape-string", INFER, j({"inputs": [x(shape="1,30")]}), {}),
    ("shape-float", INFER, j({"inputs": [x(shape=[1.5, 30])]}), {}),
    ("shape-missing", INFER, j({"inputs": [x(shape=DROP)]}), {}),
    ("shape-beyond-u64", INFER, j({"inputs": [x(shape=[2 ** 64, 30])]}), {}),
    ("datatype-number", INFER, j({"inputs": [x(datatype=7)]}), {}),
    ("datatype-unknown", INFER, j({"inputs": [x(datatype="FP128")]}), {}),
    ("data-string", INFER, j({"inputs": [x(data="0.5,0.5")]}), {}),
    ("data-object", INFER, j({"inputs": [x(data={"0": 0.5})]}), {}),
    ("data-nulls", INFER, j({"inputs": [x(data=[None] * 30)]}), {}),
    ("data-bools-for-fp32", INFER, j({"inputs": [x(data=[True] * 30)]}), {}),
    ("data-fp32-overflow", INFER, j({"inputs": [x(data=[1e39] * 30)]}), {}),
    ("data-missing", INFER, j({"inputs": [x(data=DROP)]}), {}),
    ("parameters-string", INFER, j({"inputs": [x()], "parameters": "binary"}), {}),
    ("outputs-string", INFER, j({"inputs": [x()], "outputs": "label"}), {}),
    ("output-name-number", INFER, j({"inputs": [x()], "outputs": [{"name": 1}]}), {}),
    ("binary-output-flag-string", INFER, j({"inputs": [x()], "parameters": {"binary_data_output": "yes"}}), {}),
    ("id-number", INFER, j({"inputs": [x()], "id": 5}), {}),
    # -- shapes a client can lie with
    ("negative-dim", INFER, j({"inputs": [x(shape=[-1, 30])]}), {}),
    ("shape-overflow-i64", INFER, j({"inputs": [x(shape=[2 ** 62, 2 ** 62, 16])]}), {}),
    ("shape-huge-no-data", INFER, j({"inputs": [x(shape=[2 ** 40, 30], data=[0.5])]}), {}),
    ("shape-long-list", INFER, j({"inputs": [x(shape=[1] * 100_000)]}), {}),
    ("huge-name", INFER, j({"inputs": [x(name="X" * 4_000_000)]}), {}),
    ("huge-datatype", INFER, j({"inputs": [x(datatype="F" * 4_000_000)]}), {}),
    ("many-inputs", INFER, j({"inputs": [x(name=f"in{i}", shape=[2 ** 40]) for i in range(20_000)]}), {}),
    # -- binary tensor extension
    ("binary-truncated", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", 120)]}, b"\0" * 60)),
    ("binary-size-lies-huge", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", 2 ** 62)]}, b"\0" * 120)),
    ("binary-size-negative", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", -120)]}, b"\0" * 120)),
    ("binary-size-string", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", "120")]}, b"\0" * 120)),
    ("binary-size-float", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", 119.5)]}, b"\0" * 120)),
    ("binary-shape-x-dtype-overflow", INFER, *binary({"inputs": [bin_input("X", [2 ** 61, 1], "FP32", 8)]}, b"\0" * 8)),
    ("binary-and-data", INFER, *binary({"inputs": [dict(bin_input("X", [1, 30], "FP32", 120), data=ROW)]}, b"\0" * 120)),
    ("binary-header-length-zero", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", 120)]}, b"\0" * 120, "0")),
    ("binary-header-length-negative", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", 120)]}, b"\0" * 120, "-5")),
    ("binary-header-length-huge", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", 120)]}, b"\0" * 120, "99999999999999999999999")),
    ("binary-header-length-text", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", 120)]}, b"\0" * 120, "ten")),
    ("binary-header-length-inside-json", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", 120)]}, b"\0" * 120, "20")),
    ("binary-trailing-bytes", INFER, *binary({"inputs": [bin_input("X", [1, 30], "FP32", 120)]}, b"\0" * 180)),
    ("bytes-invalid-utf8", INFER, *binary({"inputs": [bin_input("X", [2], "BYTES", 14)]}, bytes_elem(b"\xff\xfe") + bytes_elem(b"\xc3\x28\xa0\xa1"))),
    ("bytes-length-prefix-lies", INFER, *binary({"inputs": [bin_input("X", [1], "BYTES", 8)]}, struct.pack("<I", 2 ** 32 - 1) + b"abcd")),
    ("bytes-length-prefix-truncated", INFER, *binary({"inputs": [bin_input("X", [1], "BYTES", 2)]}, b"\x05\x00")),
    ("bytes-more-elements-than-shape", INFER, *binary({"inputs": [bin_input("X", [1], "BYTES", 10)]}, bytes_elem(b"a") + bytes_elem(b"b"))),
    ("bytes-huge-shape", INFER, *binary({"inputs": [bin_input("X", [2 ** 62], "BYTES", 5)]}, bytes_elem(b"a"))),
    ("bool-not-0-or-1", DTYPES, *binary({"inputs": [bin_input("flag", [1, 2], "BOOL", 2)]}, b"\x07\x01")),
    # -- v1 predict
    ("v1-instances-number", V1, j({"instances": 5}), {}),
    ("v1-instances-strings", V1, j({"instances": [["a"] * 30]}), {}),
    ("v1-inputs-string", V1, j({"inputs": "x"}), {}),
    ("v1-ragged", V1, j({"instances": [ROW, ROW[:3]]}), {}),
    ("v1-deep", V1, b'{"instances": ' + deep(100_000) + b"}", {}),
    # -- business endpoint request decoder
    ("endpoint-not-json", ENDPOINT, b"user_id=u1", {}),
    ("endpoint-instances-string", ENDPOINT, j({"instances": "u1"}), {}),
    ("endpoint-instances-numbers", ENDPOINT, j({"instances": [1, 2]}), {}),
    ("endpoint-unknown-field", ENDPOINT, j({"instances": [{"user_id": "u1"}], "explain": True}), {}),
    ("endpoint-deep", ENDPOINT, b'{"instances": [{"user_id": ' + deep(100_000) + b"}]}", {}),
    ("endpoint-huge-key", ENDPOINT, j({"instances": [{"user_id": "u" * 4_000_000}]}), {}),
    ("features-wrong-types", "/v1/features", j({"entities": ["u1"], "features": "x"}), {}),
    # -- paths and headers
    ("path-traversal-model", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", j({"inputs": [x()]}), {}),
    ("path-traversal-dots", "/v2/models/../../../etc/infer", j({"inputs": [x()]}), {}),
    ("path-traversal-version", "/v2/models/churn/versions/..%2F1/infer", j({"inputs": [x()]}), {}),
    ("version-negative", "/v2/models/churn/versions/-1/infer", j({"inputs": [x()]}), {}),
    ("version-beyond-u64", "/v2/models/churn/versions/99999999999999999999999/infer", j({"inputs": [x()]}), {}),
    ("model-name-huge", "/v2/models/" + "m" * 8000 + "/infer", j({"inputs": [x()]}), {}),
    ("timeout-header-text", INFER, j({"inputs": [x()]}), {"x-ferry-timeout-ms": "soon"}),
    ("timeout-header-huge", INFER, j({"inputs": [x()]}), {"x-ferry-timeout-ms": "18446744073709551616"}),
    ("body-over-limit", INFER, b" " * (MAX_BODY + 1), {}),
]


@pytest.fixture(scope="module")
def server(ferry):
    with ferry.running("hostile", ["churn@champion", "dtypes@1"], onnx_engine="ort",
                       max_body_bytes=MAX_BODY) as srv:
        srv.wait_ready()
        yield srv


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_corpus_is_large():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("name,path,body,headers", CASES, ids=[c[0] for c in CASES])
def test_malformed_request(server, name, path, body, headers):
    r = server.post(path, data=body, headers=headers)
    assert_json_error(r)
    assert server.proc.poll() is None, f"server died on {name}"


def raw(server, request, read_timeout=10.0):
    """Sends raw bytes, returns what came back before the server closed or went quiet."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=read_timeout) as s:
        try:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server already answered and closed: fine, read what it said
        chunks = []
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
        except socket.timeout:
            pass
    return b"".join(chunks)


def status_of(response):
    assert response.startswith(b"HTTP/1.1 "), f"no HTTP response: {response[:200]!r}"
    return int(response[9:12])


FRAMING = [
    # hyper refuses these before a handler runs: a bare 400, never a crash.
    ("content-length-text", b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"),
    ("content-length-negative", b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}"),
    ("content-length-conflicting", b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{} "),
    ("chunked-bad-size", b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
    ("header-line-garbage", b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n\x00\x01\x02\r\n\r\n"),
    ("request-line-garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
]


@pytest.mark.parametrize("name,request_bytes", FRAMING, ids=[c[0] for c in FRAMING])
def test_broken_http_framing(server, name, request_bytes):
    response = raw(server, request_bytes)
    if response:
        assert 400 <= status_of(response) < 500, response[:300]
    assert server.proc.poll() is None, f"server died on {name}"


def test_content_length_shorter_than_body(server):
    body = j({"inputs": [x()]})
    req = (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           + f"Content-Length: {len(body) // 2}\r\nConnection: close\r\n\r\n".encode() + body)
    response = raw(server, req)
    assert 400 <= status_of(response) < 500, response[:300]
    head, _, payload = response.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower()
    assert b'"error"' in payload
    assert server.proc.poll() is None


def test_content_length_longer_than_body(server):
    """The client promises more than it sends and hangs up: no response is owed, no crash."""
    body = j({"inputs": [x()]})
    req = (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
           + f"Content-Length: {len(body) * 10}\r\n\r\n".encode() + body)
    response = raw(server, req, read_timeout=5.0)
    if response:
        assert 400 <= status_of(response) < 500, response[:300]
    assert server.proc.poll() is None


def test_memory_bounded_and_still_serving(server, fixtures):
    """Replays the corpus's number-lying cases many times: resident memory must not grow with
    the numbers clients claim, and a good request still succeeds afterwards."""
    lying = {"shape-huge-no-data", "binary-size-lies-huge", "binary-shape-x-dtype-overflow",
             "bytes-length-prefix-lies", "bytes-huge-shape", "shape-overflow-i64",
             "many-inputs", "deep-nesting-body"}
    cases = [c for c in CASES if c[0] in lying]
    assert len(cases) == len(lying)
    for _, path, body, headers in cases:  # warm up allocator arenas
        server.post(path, data=body, headers=headers)
    before = rss_kib(server.proc.pid)
    for _ in range(10):
        for name, path, body, headers in cases:
            r = server.post(path, data=body, headers=headers)
            assert 400 <= r.status_code < 500, f"{name}: {r.status_code} {r.text[:200]}"
    after = rss_kib(server.proc.pid)
    assert after - before < 256 * 1024, f"RSS grew from {before} KiB to {after} KiB"
    case = fixtures.case("churn")
    r = server.post(infer_path("churn"), json=json_infer_body(case))
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), case)
    assert server.proc.poll() is None
