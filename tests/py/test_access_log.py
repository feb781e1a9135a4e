"""The access log: one structured JSON line per HTTP request (target ferry::access) with the
fields operators search by, on by default, off by config, sampled under load."""
import json
import time

import numpy as np
import requests

from conftest import json_infer_body

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def access_lines(srv):
    lines = []
    with open(srv.log_path, errors="replace") as f:
        text = f.read()
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        entry = json.loads(raw)
        if entry.get("target") == "ferry::access":
            lines.append(entry["fields"])
    return lines


def wait_for_lines(srv, n, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = access_lines(srv)
        if len(lines) >= n:
            return lines
        time.sleep(0.1)
    return access_lines(srv)


def json_server(ferry, name, **extra):
    srv = ferry.new(name, ["churn@champion"], "ort", **extra)
    srv.env_overrides["FERRY_LOG_FORMAT"] = "json"
    return srv


def test_one_line_per_request_with_its_fields(ferry, fixtures):
    srv = json_server(ferry, "access")
    srv.start()
    try:
        srv.wait_ready()
        case = fixtures.case("churn")
        body = json.dumps(json_infer_body(case))
        r = requests.post(srv.url + "/v2/models/churn/infer", data=body,
                          headers={"traceparent": TRACEPARENT, "x-request-id": "req-42",
                                   "content-type": "application/json"})
        assert r.status_code == 200, r.text
        bad = requests.post(srv.url + "/v2/models/nosuch/infer", data=body)
        assert bad.status_code == 404
        lines = wait_for_lines(srv, 2)
        infer = [l for l in lines if l["path"] == "/v2/models/churn/infer"]
        assert len(infer) == 1, lines
        (line,) = infer
        assert line["method"] == "POST" and line["status"] == 200
        assert line["request_id"] == "req-42"
        assert line["trace_id"] == TRACEPARENT.split("-")[1]
        assert line["model"] == "churn" and line["version"] == "1"
        assert line["bytes_in"] == len(body) and line["bytes_out"] == len(r.content)
        assert line["latency_us"] > 0
        assert line["client"].startswith("127.0.0.1:")
        (miss,) = [l for l in lines if l["path"] == "/v2/models/nosuch/infer"]
        assert miss["status"] == 404 and "model" not in miss
    finally:
        srv.stop()


def test_endpoint_lines_name_endpoint_and_variant(ferry, fixtures):
    endpoints = [{"name": "scoring", "variants": [{"name": "blue", "model": "churn@champion",
                                                   "weight": 1}]}]
    srv = json_server(ferry, "access-endpoint", endpoints=endpoints)
    srv.start()
    try:
        srv.wait_ready()
        case = fixtures.case("churn")
        (x,) = case["inputs"]
        rows = np.array(x["data"], dtype=np.float64).reshape(x["shape"])[:2].tolist()
        r = requests.post(srv.url + "/v1/endpoints/scoring/predict",
                          json={"instances": [{"X": row} for row in rows]})
        assert r.status_code == 200, r.text
        (line,) = [l for l in wait_for_lines(srv, 1) if l["path"].startswith("/v1/endpoints")]
        assert (line["endpoint"], line["variant"], line["model"]) == ("scoring", "blue", "churn")
    finally:
        srv.stop()


def test_sampled_under_load_and_counted(ferry):
    """Beyond max_lines_per_second, lines are skipped (5xx never) and counted by outcome: every
    request is either written or skipped."""
    srv = json_server(ferry, "access-sampled", access_log={"max_lines_per_second": 3})
    srv.start()
    try:
        def counts():
            out = {"written": 0.0, "skipped": 0.0}
            for row in requests.get(srv.url + "/metrics").text.splitlines():
                if row.startswith("ferry_access_log_lines_total{"):
                    out[row.split('"')[1]] = float(row.split()[-1])
            return out

        before = counts()
        n = 40
        with requests.Session() as s:
            for _ in range(n):
                assert s.get(srv.url + "/v2/health/live").status_code == 200
        after = counts()
        skipped = after["skipped"] - before["skipped"]
        written = after["written"] - before["written"]
        assert skipped > 0, (before, after)
        # The first /metrics scrape is counted too (its line comes after its answer).
        assert written + skipped == n + 1, (before, after)
        assert len(access_lines(srv)) == after["written"]
    finally:
        srv.stop()


def test_off_by_config(ferry):
    srv = json_server(ferry, "access-off", access_log={"enabled": False})
    srv.start()
    try:
        srv.wait_ready()
        assert requests.get(srv.url + "/v2").status_code == 200
        time.sleep(0.3)
        assert access_lines(srv) == []
    finally:
        srv.stop()


def test_text_log_to_a_file_has_no_colour_codes(ferry, fixtures):
    """Logs that go to a file (a pipe, `kubectl logs`) are plain text: the terminal colour
    escape codes would reach log search as `\\x1b[2m` noise around every field."""
    srv = ferry.new("plain-text", ["churn@champion"], "ort")
    srv.start()
    try:
        srv.wait_ready()
        case = fixtures.case("churn")
        r = requests.post(srv.url + "/v2/models/churn/infer", json=json_infer_body(case))
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        text = ""
        while "ferry::access" not in text and time.monotonic() < deadline:
            time.sleep(0.1)
            text = open(srv.log_path, errors="replace").read()
        assert "ferry::access" in text and "path=/v2/models/churn/infer" in text, text[-2000:]
        assert "\x1b[" not in text, text[-2000:]
    finally:
        srv.stop()


def test_server_errors_are_logged_with_request_id_and_model(ferry):
    """A 5xx is logged at warn with the request's id and model at the default log level (the
    request span itself is debug-level, so the line carries them as its own fields)."""
    srv = ferry.new("fault-log", ["mlp@1"], "ort")
    srv.env_overrides["FERRY_LOG_FORMAT"] = "json"
    srv.start()
    try:
        srv.wait_ready()
        n = 20000
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [n, 64],
                            "data": [0.5] * (n * 64)}]}
        # Far more work than a 1 ms deadline allows: the queue answers 503.
        r = requests.post(srv.url + "/v2/models/mlp/infer", json=body, timeout=60,
                          headers={"x-ferry-timeout-ms": "1", "x-request-id": "slow-1"})
        assert r.status_code == 503, r.text[:300]
        deadline = time.monotonic() + 10
        failed = []
        while not failed and time.monotonic() < deadline:
            with open(srv.log_path, errors="replace") as f:
                entries = [json.loads(l) for l in f if l.strip().startswith("{")]
            failed = [e for e in entries if e["fields"].get("message") == "Request failed."]
            time.sleep(0.1)
        assert len(failed) == 1, failed
        (line,) = failed
        assert line["level"] == "WARN"
        fields = line["fields"]
        assert fields["request_id"] == "slow-1" and fields["model"] == "mlp", fields
        assert fields["error_type"] and "deadline" in fields["error"], fields
    finally:
        srv.stop()
