"""Graceful shutdown: SIGTERM while requests are in flight -> every request that gets an answer
gets a complete, correct 200 (no 5xx), and the process exits 0."""
import json
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import requests

from conftest import STOP_TIMEOUT, TOL, infer_path, json_infer_body, ref_array

N_REQUESTS = 50
ROWS = 2000


def test_graceful_shutdown_drains_in_flight(ferry, fixtures):
    case = fixtures.case("mlp")
    x = ref_array(case["inputs"][0])
    y = ref_array(case["outputs"][0])
    reps = ROWS // x.shape[0]
    xs = np.tile(x, (reps, 1))
    ys = np.tile(y, (reps, 1))
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": list(xs.shape),
                                   "data": xs.reshape(-1).tolist()}]}).encode()

    srv = ferry.new("shutdown", ["mlp@1"], onnx_engine="ort")
    srv.start()
    try:
        srv.wait_ready()
        url = srv.url + infer_path("mlp")
        headers = {"Content-Type": "application/json"}
        # the request itself is good
        r = requests.post(url, data=body, headers=headers, timeout=120)
        assert r.status_code == 200, r.text

        results = [None] * N_REQUESTS
        barrier = threading.Barrier(N_REQUESTS + 1)

        def worker(i):
            barrier.wait()
            try:
                resp = requests.post(url, data=body, headers=headers, timeout=120)
            except requests.RequestException as e:
                results[i] = ("no-response", repr(e))
                return
            if resp.status_code != 200:
                results[i] = ("status", resp.status_code, resp.text[:300])
                return
            try:
                out = resp.json()["outputs"][0]
                got = np.array(out["data"], dtype=np.float64).reshape(out["shape"])
                np.testing.assert_allclose(got, ys, rtol=TOL, atol=TOL)
            except Exception as e:  # incomplete or wrong answer
                results[i] = ("bad-body", repr(e)[:300])
                return
            results[i] = ("ok",)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                   for i in range(N_REQUESTS)]
        for t in threads:
            t.start()
        barrier.wait()
        time.sleep(0.5)  # let the requests reach the server
        srv.proc.send_signal(signal.SIGTERM)
        try:
            code = srv.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ferry did not exit within {STOP_TIMEOUT}s of SIGTERM; "
                                 f"results so far: {results}; log:\n{srv.log()}")
        for t in threads:
            t.join(timeout=120)
        assert all(not t.is_alive() for t in threads), "client threads hung after server exit"

        kinds = {}
        for r in results:
            kinds.setdefault(r[0], []).append(r)
        summary = {k: len(v) for k, v in kinds.items()}
        print(f"shutdown outcome: {summary}")
        assert not kinds.get("status"), f"answered with non-200 during shutdown: " \
                                        f"{kinds['status'][:5]} (summary {summary})"
        assert not kinds.get("bad-body"), f"incomplete/wrong answers: {kinds['bad-body'][:5]}"
        assert kinds.get("ok"), f"no in-flight request was drained: {summary}; " \
                                f"{kinds.get('no-response', [])[:3]}"
        assert code == 0, f"exit code {code} after SIGTERM; log:\n{srv.log()}"
    finally:
        srv.kill()


def test_drain_delay_keeps_serving_with_readiness_off(ferry, fixtures):
    """`drain.delay`: after SIGTERM readiness is 503 at once while inference is still answered
    (each response asking the client to close its connection) until the delay has passed;
    then new connections are refused and the process exits 0."""
    case = fixtures.case("churn")
    delay = 2.0
    srv = ferry.new("drain-delay", ["churn@champion"], drain={"delay": f"{delay}s",
                                                              "timeout": "10s"})
    srv.start()
    try:
        srv.wait_ready()
        url = srv.url + infer_path("churn")
        body = json_infer_body(case)
        session = requests.Session()
        r = session.post(url, json=body, timeout=30)
        assert r.status_code == 200 and r.headers.get("connection", "") != "close", r.headers
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        during = []        # (seconds after SIGTERM, infer status, Connection header, ready status)
        while time.monotonic() - t0 < delay - 0.5:
            inf = requests.post(url, json=body, timeout=30)
            ready = requests.get(srv.url + "/v2/health/ready", timeout=30)
            during.append((time.monotonic() - t0, inf.status_code,
                           inf.headers.get("connection"), ready.status_code))
            time.sleep(0.1)
        assert len(during) >= 5, during
        assert all(s == 200 and c == "close" and rd == 503 for _, s, c, rd in during), during
        # After the delay: connections are refused, and the process exits 0.
        refused_at = None
        while time.monotonic() - t0 < delay + 10:
            try:
                requests.post(url, json=body, timeout=5)
            except requests.RequestException:
                refused_at = time.monotonic() - t0
                break
            time.sleep(0.05)
        code = srv.proc.wait(timeout=STOP_TIMEOUT)
        exited_at = time.monotonic() - t0
        print(f"\ndrain: {len(during)} requests answered during the {delay}s delay; "
              f"refused from {refused_at:.2f}s; exited at {exited_at:.2f}s")
        assert refused_at is not None and refused_at >= delay - 0.1, refused_at
        assert exited_at >= delay
        assert code == 0, f"exit code {code}; log:\n{srv.log()}"
        assert "Draining: no new connections" in srv.log()
    finally:
        srv.kill()


def test_drain_timeout_bounds_the_wait_for_stuck_requests(ferry, fixtures):
    """A request that never completes (its body stops arriving) cannot hold the process past
    `drain.timeout`: ferry exits 0 once it runs out, saying so."""
    srv = ferry.new("drain-timeout", ["churn@champion"], drain={"delay": "0s", "timeout": "1s"})
    srv.start()
    try:
        srv.wait_ready()
        stuck = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        stuck.sendall(b"POST /v2/models/churn/infer HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\"")
        time.sleep(0.5)   # the server is now waiting for the rest of the body
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(timeout=STOP_TIMEOUT)
        took = time.monotonic() - t0
        stuck.close()
        print(f"\ndrain timeout 1s: exited after {took:.2f}s with a stuck request")
        assert code == 0, srv.log()
        assert 1.0 <= took < 5.0, took
        assert "drain timeout ran out" in srv.log(), srv.log()
    finally:
        srv.kill()
