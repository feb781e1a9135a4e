#!/usr/bin/env python3
"""Load time, RSS and single-request latency per engine for the parity MLP and MiniLM.

    python3 tests/py/make_candle_fixtures.py /tmp/cf
    FERRY_BIN=target/debug/ferry FERRY_ORT_LIB=$(python3 scripts/find-ort-lib.py) \
        python3 loadtests/candle_engines.py /tmp/cf/registry

Starts one ferry per (model, engine) with intra_op_threads 1 and batching off, reads the
"Model version loaded" line for the load time, VmRSS after warm-up, and the median of 50
sequential single-row JSON requests.
"""
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import requests

CASES = [
    ("tabmlp@1", "tabmlp", {"onnx_engine": "ort"}, "ort",
     {"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [0.1, -0.2, 0.3, 1.0]}),
    ("tabmlp@1", "tabmlp", {"onnx_engine": "tract"}, "tract",
     {"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [0.1, -0.2, 0.3, 1.0]}),
    ("tabmlp@2", "tabmlp", {}, "candle",
     {"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [0.1, -0.2, 0.3, 1.0]}),
    ("minilm@1", "minilm", {}, "candle",
     {"name": "text", "datatype": "BYTES", "shape": [1],
      "data": ["The quick brown fox jumps over the lazy dog."]}),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    registry = sys.argv[1]
    binary = os.environ["FERRY_BIN"]
    for ref, name, settings, engine, tensor in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = {"registry": {"uri": registry}, "intra_op_threads": 1,
                   "batching": {"max_batch_size": 1},
                   "models": [{"model": ref, **settings}]}
            path = os.path.join(tmp, "ferry.yaml")
            with open(path, "w") as f:
                json.dump(cfg, f)
            port = free_port()
            log = open(os.path.join(tmp, "log"), "w+")
            proc = subprocess.Popen([binary, "serve", "--config", path, "--listen",
                                     f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "FERRY_LOG": "info"})
            url = f"http://127.0.0.1:{port}"
            try:
                for _ in range(600):
                    try:
                        if requests.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                            break
                    except requests.ConnectionError:
                        pass
                    time.sleep(0.1)
                log.seek(0)
                text = re.sub(r"\x1b\[[0-9;]*m", "", log.read())
                line = next((l for l in text.splitlines() if "Model version loaded" in l), "")
                m = re.search(r"seconds\W+([0-9.]+)", line)
                body = {"inputs": [tensor]}
                times = []
                for _ in range(50):
                    t = time.perf_counter()
                    r = requests.post(f"{url}/v2/models/{name}/infer", json=body)
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                with open(f"/proc/{proc.pid}/status") as f:
                    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
                print(f"{ref:10} {engine:7} load {float(m.group(1)) if m else float('nan'):.3f} s"
                      f"  RSS {rss / 1024:6.1f} MiB"
                      f"  p50 {statistics.median(times) * 1e3:6.2f} ms"
                      f"  min {min(times) * 1e3:6.2f} ms")
            finally:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
