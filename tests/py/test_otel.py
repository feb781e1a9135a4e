"""OpenTelemetry traces: with OTEL_EXPORTER_OTLP_ENDPOINT set, ferry exports a server span per
request with a child span per stage, continuing the caller's W3C traceparent, to a real OTLP
receiver started here (HTTP protobuf on /v1/traces, and gRPC), decoded with the
opentelemetry-proto messages; the access log carries the trace id."""
import json
import os
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import Process, base_env, ferry_bin, free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
ROW = [0.5] * 30


class Receiver:
    """Collects every span of every ExportTraceServiceRequest it is sent."""

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()

    def add(self, raw):
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(raw)
        with self.lock:
            self.requests.append(req)

    def spans(self):
        out = []
        with self.lock:
            for req in self.requests:
                for rs in req.resource_spans:
                    service = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            out.append({"name": s.name, "trace_id": s.trace_id.hex(),
                                        "span_id": s.span_id.hex(),
                                        "parent": s.parent_span_id.hex(),
                                        "service": service.get("service.name"),
                                        "attributes": {a.key: a.value for a in s.attributes}})
        return out

    def wait_for(self, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans()
            if predicate(spans):
                return spans
            time.sleep(0.1)
        pytest.fail(f"spans never matched; got {self.spans()}")


@pytest.fixture
def http_receiver():
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            receiver.add(body)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield receiver
    server.shutdown()


@pytest.fixture
def grpc_receiver():
    receiver = Receiver()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            receiver.add(request.SerializeToString())
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    yield receiver
    server.stop(0)


def demo(tmp_path, env):
    """The embedded demo (churn, and the `risk` endpoint joining online features)."""
    port = free_port()
    full_env = base_env(FERRY_LOG_FORMAT="json", **env)
    proc = Process([ferry_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--grpc-listen", "off"],
                   full_env, str(tmp_path / "ferry.log"))
    url = f"http://127.0.0.1:{port}"
    proc.wait_for(url + "/v2/health/ready")
    return proc, url


def infer_body():
    return {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}


def by_name(spans, trace_id):
    return {s["name"]: s for s in spans if s["trace_id"] == trace_id}


def test_http_otlp_export_continues_the_callers_trace(tmp_path, http_receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
           "OTEL_SERVICE_NAME": "ferry-test"}
    proc, url = demo(tmp_path, env)
    with proc:
        r = requests.post(url + "/v2/models/churn/infer", json=infer_body(),
                          headers={"traceparent": TRACEPARENT})
        assert r.status_code == 200, r.text
        spans = http_receiver.wait_for(
            lambda s: {"POST /v2/models/{model}/infer", "encode"} <= set(by_name(s, TRACE_ID)))
        mine = by_name(spans, TRACE_ID)
        server = mine["POST /v2/models/{model}/infer"]
        assert server["parent"] == PARENT_SPAN, "the caller's span is the server span's parent"
        assert server["service"] == "ferry-test"
        assert server["attributes"]["http.response.status_code"].int_value == 200
        for stage in ["decode", "queue", "model", "encode"]:
            assert stage in mine, (stage, sorted(mine))
            assert mine[stage]["parent"] == server["span_id"], (stage, mine[stage])

        # An endpoint request without a traceparent starts its own trace, with the pipeline
        # stages, and the access log line carries that trace id.
        r = requests.post(url + "/v1/endpoints/risk/predict",
                          json={"instances": [{"user_id": "u1", "amount": 3.0}]})
        assert r.status_code == 200, r.text
        spans = http_receiver.wait_for(
            lambda s: any(x["name"] == "POST /v1/endpoints/{endpoint}/predict" for x in s))
        (server,) = [s for s in spans if s["name"] == "POST /v1/endpoints/{endpoint}/predict"]
        assert server["parent"] == ""
        trace = server["trace_id"]
        spans = http_receiver.wait_for(lambda s: "encode" in by_name(s, trace))
        stages = by_name(spans, trace)
        for stage in ["decode", "assign", "features", "queue", "model", "encode"]:
            assert stage in stages, (stage, sorted(stages))
        with open(tmp_path / "ferry.log") as f:
            access = [json.loads(l)["fields"] for l in f if '"ferry::access"' in l]
        by_path = {a["path"]: a for a in access}
        assert by_path["/v1/endpoints/risk/predict"]["trace_id"] == trace
        assert by_path["/v2/models/churn/infer"]["trace_id"] == TRACE_ID

        metrics = requests.get(url + "/metrics").text
        assert 'ferry_otel_spans_total{outcome="exported"}' in metrics


def test_grpc_otlp_export(tmp_path, grpc_receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.endpoint,
           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    proc, url = demo(tmp_path, env)
    with proc:
        r = requests.post(url + "/v2/models/churn/infer", json=infer_body(),
                          headers={"traceparent": TRACEPARENT})
        assert r.status_code == 200, r.text
        spans = grpc_receiver.wait_for(lambda s: "model" in by_name(s, TRACE_ID))
        server = by_name(spans, TRACE_ID)["POST /v2/models/{model}/infer"]
        assert server["service"] == "ferry", "OTEL_SERVICE_NAME unset: the service is ferry"


def test_a_receiver_that_is_down_never_fails_requests(tmp_path):
    """Export failures are counted, never felt by requests."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    proc, url = demo(tmp_path, env)
    with proc:
        for _ in range(20):
            assert requests.post(url + "/v2/models/churn/infer",
                                 json=infer_body()).status_code == 200
        deadline = time.monotonic() + 20
        failed = 0
        while time.monotonic() < deadline and failed == 0:
            for line in requests.get(url + "/metrics").text.splitlines():
                if line.startswith('ferry_otel_spans_total{outcome="failed"}'):
                    failed = float(line.split()[-1])
            time.sleep(0.2)
        assert failed > 0


def test_off_without_the_variables(tmp_path):
    env = {k: None for k in os.environ if k.startswith("OTEL_")}
    full = base_env()
    for k in env:
        full.pop(k, None)
    port = free_port()
    with Process([ferry_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--grpc-listen", "off"],
                 full, str(tmp_path / "ferry.log")) as p:
        p.wait_for(f"http://127.0.0.1:{port}/v2/health/ready")
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics").text
        assert "ferry_otel_spans_total" not in metrics
        assert "Exporting traces" not in open(tmp_path / "ferry.log").read()


def test_grpc_inference_requests_are_traced_and_logged(tmp_path, http_receiver):
    """A gRPC ModelInfer with traceparent metadata continues the caller's trace (server span
    inference.GRPCInferenceService/ModelInfer, queue and model stages) and writes an access line
    with the rpc, code, model and trace id."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    port, grpc_port = free_port(), free_port()
    env = base_env(FERRY_LOG_FORMAT="json", OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint)
    with Process([ferry_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--grpc-listen",
                  f"127.0.0.1:{grpc_port}"], env, str(tmp_path / "ferry.log")) as p:
        p.wait_for(f"http://127.0.0.1:{port}/v2/health/ready")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = grpcclient.InferInput("X", [1, 30], "FP32")
        x.set_data_from_numpy(np.full((1, 30), 0.5, dtype=np.float32))
        client.infer("churn", [x], headers={"traceparent": TRACEPARENT})
        spans = http_receiver.wait_for(lambda s: "model" in by_name(s, TRACE_ID))
        mine = by_name(spans, TRACE_ID)
        server = mine["inference.GRPCInferenceService/ModelInfer"]
        assert server["parent"] == PARENT_SPAN
        assert mine["queue"]["parent"] == server["span_id"]
        deadline = time.monotonic() + 10
        lines = []
        while not lines and time.monotonic() < deadline:
            with open(tmp_path / "ferry.log") as f:
                lines = [json.loads(l)["fields"] for l in f
                         if '"ferry::access"' in l and '"grpc"' in l]
            time.sleep(0.1)
        (line,) = lines
        assert (line["rpc"], line["grpc_code"], line["model"]) == ("ModelInfer", "Ok", "churn")
        assert line["trace_id"] == TRACE_ID and line["client"].startswith("127.0.0.1:")
