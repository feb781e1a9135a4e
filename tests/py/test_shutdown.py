"""Graceful shutdown: SIGTERM while requests are in flight -> every request that gets an answer
gets a complete, correct 200 (no 5xx), and the process exits 0."""
import json
import signal
import subprocess
import threading
import time

import numpy as np
import requests

from conftest import STOP_TIMEOUT, TOL, infer_path, ref_array

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
