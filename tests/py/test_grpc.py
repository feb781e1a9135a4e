"""gRPC: the real `tritonclient.grpc` client (raw binary tensors, its default) and the standard
gRPC health and reflection clients against the real binary, beside the HTTP answer for the same
rows."""
import os
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import (FerryServer, TOL, assert_array_matches, ferry_bin, free_port,
                      json_infer_body, infer_path, ref_array)

ADMIN_TOKEN = "grpc-admin-secret"
MODELS = ["churn", "boosted", "mlp", "dtypes", "scaled", "svr"]


@pytest.fixture(scope="module")
def server(ferry, fixtures, tmp_path_factory):
    models = [fixtures.model_ref(c) for c in fixtures.cases if "ort" in c["engines"]]
    workdir = tmp_path_factory.mktemp("ferry-grpc")
    srv = FerryServer(workdir, ferry.config(models, onnx_engine="ort"), "grpc",
                      env={"FERRY_ADMIN_TOKEN": ADMIN_TOKEN})
    srv.start()
    try:
        srv.wait_ready()
        yield srv
    except BaseException:
        srv.kill()
        raise
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(url=server.grpc_addr)
    yield c
    c.close()


def grpc_inputs(case):
    inputs = []
    for t in case["inputs"]:
        arr = ref_array(t)
        inp = grpcclient.InferInput(t["name"], list(arr.shape), t["datatype"])
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def test_live_ready_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "ferry"
    assert "model_repository" in meta["extensions"]


@pytest.mark.parametrize("model", MODELS)
def test_infer_equals_the_http_answer_for_the_same_rows(server, client, fixtures, model):
    case = fixtures.case(model)
    assert client.is_model_ready(model)
    meta = client.get_model_metadata(model, as_json=True)
    http_meta = server.get(f"/v2/models/{model}").json()
    assert meta["name"] == model and meta["platform"] == http_meta["platform"]
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in http_meta["inputs"]]
    assert [o["datatype"] for o in meta["outputs"]] == [o["datatype"] for o in http_meta["outputs"]]

    result = client.infer(model, grpc_inputs(case), request_id="rid-7")
    response = result.get_response(as_json=True)
    assert response["model_name"] == model
    assert response["id"] == "rid-7"
    http = server.post(infer_path(model), json=json_infer_body(case))
    assert http.status_code == 200, http.text
    http_outputs = {o["name"]: o for o in http.json()["outputs"]}
    for ref in case["outputs"]:
        got = result.as_numpy(ref["name"])
        h = http_outputs[ref["name"]]
        # (tritonclient's get_output(as_json=True) returns None: read the message.)
        out_meta = result.get_output(ref["name"])
        assert out_meta.datatype == h["datatype"]
        assert list(out_meta.shape) == h["shape"]
        np.testing.assert_allclose(got.reshape(-1).astype(np.float64),
                                   np.asarray(h["data"], dtype=np.float64).reshape(-1),
                                   rtol=0, atol=TOL)
        assert_array_matches(got, ref, f"{model}.{ref['name']}")


def test_typed_contents_infer_answers_typed_contents(server, fixtures):
    """A request with `contents` (no raw inputs) gets typed contents back, as Triton does."""
    case = fixtures.case("churn")
    t = case["inputs"][0]
    arr = ref_array(t)
    req = service_pb2.ModelInferRequest(model_name="churn")
    inp = req.inputs.add(name=t["name"], datatype=t["datatype"], shape=list(arr.shape))
    inp.contents.fp32_contents.extend(arr.reshape(-1).tolist())
    with grpc.insecure_channel(server.grpc_addr) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    assert len(resp.raw_output_contents) == 0
    outs = {o.name: o for o in resp.outputs}
    for ref in case["outputs"]:
        o = outs[ref["name"]]
        values = (o.contents.int64_contents if o.datatype == "INT64"
                  else o.contents.fp32_contents)
        assert_array_matches(np.asarray(values).reshape([int(d) for d in o.shape]), ref,
                             f"churn.{ref['name']}")


def test_requested_outputs_only(client, fixtures):
    case = fixtures.case("churn")
    name = case["outputs"][-1]["name"]
    result = client.infer("churn", grpc_inputs(case),
                          outputs=[grpcclient.InferRequestedOutput(name)])
    names = [o["name"] for o in result.get_response(as_json=True)["outputs"]]
    assert names == [name]


def expect_error(call, code, *words):
    with pytest.raises(InferenceServerException) as e:
        call()
    status = e.value.status()
    assert status == f"StatusCode.{code}", f"{status}: {e.value.message()}"
    for w in words:
        assert w in e.value.message(), e.value.message()
    return e.value.message()


def test_bad_inputs_are_invalid_argument_saying_what_to_fix(client, fixtures):
    case = fixtures.case("churn")
    arr = ref_array(case["inputs"][0])
    name = case["inputs"][0]["name"]

    wrong_shape = grpcclient.InferInput(name, [arr.shape[0], arr.shape[1] + 1], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((arr.shape[0], arr.shape[1] + 1), np.float32))
    expect_error(lambda: client.infer("churn", [wrong_shape]), "INVALID_ARGUMENT", name)

    wrong_type = grpcclient.InferInput(name, list(arr.shape), "FP64")
    wrong_type.set_data_from_numpy(arr.astype(np.float64))
    expect_error(lambda: client.infer("churn", [wrong_type]), "INVALID_ARGUMENT", "FP64")

    wrong_name = grpcclient.InferInput("nope", list(arr.shape), "FP32")
    wrong_name.set_data_from_numpy(arr)
    expect_error(lambda: client.infer("churn", [wrong_name]), "INVALID_ARGUMENT", "nope")

    expect_error(lambda: client.infer("churn", grpc_inputs(case),
                                      outputs=[grpcclient.InferRequestedOutput("ghost")]),
                 "INVALID_ARGUMENT", "ghost")


def test_unknown_model_and_version_are_not_found(client, fixtures):
    case = fixtures.case("churn")
    expect_error(lambda: client.infer("no_such_model", grpc_inputs(case)), "NOT_FOUND",
                 "no_such_model")
    expect_error(lambda: client.infer("churn", grpc_inputs(case), model_version="99"),
                 "NOT_FOUND", "99")
    expect_error(lambda: client.get_model_metadata("no_such_model"), "NOT_FOUND")


def test_unimplemented_rpcs_say_so(client):
    expect_error(lambda: client.get_model_config("churn"), "UNIMPLEMENTED", "ModelConfig")
    expect_error(lambda: client.get_system_shared_memory_status(), "UNIMPLEMENTED",
                 "SystemSharedMemoryStatus")


def test_statistics_count_the_requests_just_sent(server, client, fixtures):
    case = fixtures.case("mlp")

    def success_count():
        stats = client.get_inference_statistics("mlp", as_json=True)
        (entry,) = [s for s in stats["model_stats"] if s["name"] == "mlp"]
        return int(entry["inference_stats"]["success"].get("count", 0)), entry

    before, _ = success_count()
    for _ in range(3):
        client.infer("mlp", grpc_inputs(case))
    after, entry = success_count()
    assert after == before + 3
    assert int(entry["inference_stats"]["compute_infer"]["count"]) >= 3
    assert int(entry["inference_count"]) >= 3 * ref_array(case["inputs"][0]).shape[0]
    # The same numbers over HTTP, in Triton's JSON shape.
    http = server.get("/v2/models/mlp/versions/1/stats")
    assert http.status_code == 200, http.text
    (h,) = http.json()["model_stats"]
    assert h["name"] == "mlp" and h["version"] == "1"
    assert h["inference_stats"]["success"]["count"] == after
    assert server.get("/v2/models/nope/stats").status_code == 404
    all_stats = server.get("/v2/models/stats").json()["model_stats"]
    assert {"churn", "mlp"} <= {s["name"] for s in all_stats}


def test_load_unload_need_the_admin_token(server, client):
    expect_error(lambda: client.unload_model("mlp"), "UNAUTHENTICATED", "Bearer")
    expect_error(lambda: client.unload_model("mlp", headers={"authorization": "Bearer wrong"}),
                 "UNAUTHENTICATED", "wrong")
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    client.unload_model("mlp", headers=auth)
    index = client.get_model_repository_index(as_json=True)["models"]
    assert not any(m["name"] == "mlp" and m.get("state") == "READY" for m in index), index
    expect_error(lambda: client.get_model_metadata("mlp"), "NOT_FOUND")
    client.load_model("mlp", headers=auth)
    assert client.is_model_ready("mlp")


def test_deadline_is_honoured(server, client, fixtures):
    """A request that cannot finish within its deadline gets DEADLINE_EXCEEDED: the gRPC
    deadline as the client sees it, and the server's own answer (its message) for a deadline
    in `x-ferry-timeout-ms` metadata, which the server applies like the gRPC deadline."""
    case = fixtures.case("mlp")
    spec = case["inputs"][0]
    # 20,000 rows through the 64-256-256-1 MLP: tens of milliseconds of compute.
    big = np.repeat(ref_array(spec)[:1], 20000, axis=0)
    inp = grpcclient.InferInput(spec["name"], list(big.shape), spec["datatype"])
    inp.set_data_from_numpy(big)
    msg = expect_error(lambda: client.infer("mlp", [inp], headers={"x-ferry-timeout-ms": "1"},
                                            client_timeout=60),
                       "DEADLINE_EXCEEDED", "retry")
    assert "mlp" in msg
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [inp], client_timeout=0.005)
    assert "DEADLINE_EXCEEDED" in e.value.status()
    # The server is unharmed and requests within their deadline succeed.
    client.infer("mlp", [inp], client_timeout=60)
    client.infer("mlp", grpc_inputs(case), client_timeout=30)


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.grpc_addr) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "inference.GRPCInferenceService"):
            r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as e:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        services = {s.name for a in answers for s in a.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services


def test_metrics_carry_the_grpc_protocol(server, client, fixtures):
    client.infer("churn", grpc_inputs(fixtures.case("churn")))
    text = server.get("/metrics").text
    assert 'ferry_requests_total{model="churn",protocol="grpc",version="1"}' in text
    assert 'ferry_grpc_responses_total{code="Ok",rpc="ModelInfer"}' in text


def test_grpc_listens_on_the_http_port_plus_one_by_default(ferry, fixtures, tmp_path):
    # Find a port whose successor is free too.
    for _ in range(50):
        port = free_port()
        try:
            import socket
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            continue
    srv = FerryServer(tmp_path, ferry.config(["churn@champion"], onnx_engine="ort"), "grpc-default")
    srv.port, srv.addr = port, f"127.0.0.1:{port}"
    srv.url = f"http://{srv.addr}"
    srv.grpc_addr = None  # let the binary choose
    srv.start()
    try:
        srv.wait_ready()
        c = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port + 1}")
        assert c.is_server_ready()
        c.close()
    finally:
        srv.stop()


def test_grpc_off_and_bad_values(ferry, tmp_path):
    cfg = ferry.config(["churn@champion"], onnx_engine="ort")
    path = tmp_path / "bad.yaml"
    import json
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    r = subprocess.run([ferry_bin(), "serve", "--config", str(path), "--listen",
                        f"127.0.0.1:{free_port()}", "--grpc-listen", "nonsense"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "grpc_listen" in r.stderr and "off" in r.stderr, r.stderr

    srv = FerryServer(tmp_path, cfg, "grpc-off", env={"FERRY_GRPC_LISTEN": "off"})
    srv.grpc_addr = None
    srv.start()
    try:
        srv.wait_ready()
        assert "gRPC listening" not in srv.log()
    finally:
        srv.stop()


def test_endpoints_over_grpc(demo_env_server):
    """A business endpoint as model `endpoint/<name>`: one input tensor per instance field."""
    srv = demo_env_server
    c = grpcclient.InferenceServerClient(url=srv.grpc_addr)
    users = np.array([b"u1", b"u7", b"u99"], dtype=object)
    amounts = np.array([12.5, 80.0, 3.0], dtype=np.float64)
    a = grpcclient.InferInput("user_id", [3], "BYTES")
    a.set_data_from_numpy(users)
    b = grpcclient.InferInput("amount", [3], "FP64")
    b.set_data_from_numpy(amounts)
    result = c.infer("endpoint/risk", [a, b])
    http = srv.post("/v1/endpoints/risk/predict", json={"instances": [
        {"user_id": "u1", "amount": 12.5}, {"user_id": "u7", "amount": 80.0},
        {"user_id": "u99", "amount": 3.0}]})
    assert http.status_code == 200, http.text
    preds = http.json()["predictions"]
    for field in preds[0]:
        got = result.as_numpy(field)
        want = np.asarray([p[field] for p in preds])
        if want.dtype.kind in "fi":
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                       rtol=0, atol=1e-6)
        else:
            assert [x.decode() if isinstance(x, bytes) else x for x in got.tolist()] == \
                want.tolist()
    assert [v.decode() for v in result.as_numpy("variant").tolist()] == \
        http.json()["variants"]
    expect_error(lambda: c.infer("endpoint/nope", [a, b]), "NOT_FOUND", "nope")
    expect_error(lambda: c.get_model_metadata("endpoint/nope"), "NOT_FOUND", "nope", "risk")
    assert c.is_model_ready("endpoint/risk")
    short = grpcclient.InferInput("amount", [2], "FP64")
    short.set_data_from_numpy(amounts[:2])
    expect_error(lambda: c.infer("endpoint/risk", [a, short]), "INVALID_ARGUMENT",
                 "first dimension")
    c.close()


@pytest.fixture
def demo_env_server(tmp_path):
    """The embedded demo (`ferry serve` with no config): churn and the `risk` endpoint."""
    port, gport = free_port(), free_port()
    env = dict(os.environ)
    env["FERRY_LOG"] = "info"
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen([ferry_bin(), "serve", "--listen", f"127.0.0.1:{port}",
                             "--grpc-listen", f"127.0.0.1:{gport}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)

    class Demo:
        grpc_addr = f"127.0.0.1:{gport}"
        url = f"http://127.0.0.1:{port}"

        def post(self, path, **kw):
            return requests.post(self.url + path, timeout=60, **kw)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "demo.log").read_text()
        try:
            if requests.get(Demo.url + "/v2/health/ready", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("demo server not ready: " + (tmp_path / "demo.log").read_text())
    yield Demo()
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    log.close()


def test_shutdown_turns_grpc_health_off_and_keeps_serving_during_the_drain_delay(ferry, fixtures):
    """The gRPC listener follows HTTP's drain: after SIGTERM, health and ServerReady report
    not ready at once while ModelInfer is still answered for `drain.delay`; then the process
    exits 0."""
    srv = ferry.new("grpc-drain", ["churn@champion"], onnx_engine="ort",
                    drain={"delay": "3s", "timeout": "10s"})
    srv.start()
    try:
        srv.wait_ready()
        c = grpcclient.InferenceServerClient(url=srv.grpc_addr)
        inputs = grpc_inputs(fixtures.case("churn"))
        with grpc.insecure_channel(srv.grpc_addr) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status \
                == health_pb2.HealthCheckResponse.SERVING
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                if status.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.05)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not c.is_server_ready()
            c.infer("churn", inputs)  # still served during the delay
        c.close()
        assert srv.proc.wait(timeout=30) == 0
    finally:
        srv.kill()


def test_oversized_messages_are_resource_exhausted(ferry, fixtures):
    srv = ferry.new("grpc-small", ["churn@champion"], onnx_engine="ort",
                    grpc_max_message_bytes=4096)
    srv.start()
    try:
        srv.wait_ready()
        c = grpcclient.InferenceServerClient(url=srv.grpc_addr)
        big = grpcclient.InferInput("X", [100, 30], "FP32")
        big.set_data_from_numpy(np.zeros((100, 30), np.float32))
        expect_error(lambda: c.infer("churn", [big]), "RESOURCE_EXHAUSTED",
                     "4096 bytes", "grpc_max_message_bytes")
        small = grpcclient.InferInput("X", [1, 30], "FP32")
        small.set_data_from_numpy(np.zeros((1, 30), np.float32))
        c.infer("churn", [small])
        c.close()
    finally:
        srv.stop()


def test_a_taken_default_grpc_port_leaves_http_serving_but_a_taken_explicit_one_stops(
        ferry, tmp_path):
    import json
    import socket
    cfg = ferry.config(["churn@champion"], onnx_engine="ort")
    blocker = None
    for _ in range(50):  # a held port whose predecessor is free for the HTTP listener
        b = socket.socket()
        b.bind(("127.0.0.1", 0))
        taken = b.getsockname()[1]
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", taken - 1))
        except OSError:
            b.close()
            continue
        blocker = b
        break
    assert blocker is not None, "no free pair of ports found"
    with blocker:
        blocker.listen()
        srv = FerryServer(tmp_path, cfg, "grpc-taken")
        srv.port, srv.addr = taken - 1, f"127.0.0.1:{taken - 1}"
        srv.url = f"http://{srv.addr}"
        srv.grpc_addr = None  # the default: HTTP port + 1, which `blocker` holds
        srv.start()
        try:
            srv.wait_ready()
            assert "serving HTTP only" in srv.log()
        finally:
            srv.stop()

        path = tmp_path / "explicit.yaml"
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
        r = subprocess.run([ferry_bin(), "serve", "--config", str(path), "--listen",
                            f"127.0.0.1:{free_port()}", "--grpc-listen", f"127.0.0.1:{taken}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert "could not listen for gRPC" in r.stderr and "grpc_listen" in r.stderr, r.stderr
