#!/usr/bin/env python3
"""Online feature lookups from the same Feast Redis data, in one run: ferry's `POST /v1/features`
(`online_format: feast`) against Feast's Python SDK (`FeatureStore.get_online_features`,
in-process: no HTTP) and Feast's feature server (`feast serve`, `POST /get-online-features`).

The Feast repo of tests/py/feast_repo.py (view `user_stats`: 14 features of every scalar and
list type) with 1,000 users is materialized by Feast itself (`feast materialize-incremental`)
into a private redis-server; every lookup asks for all 14 features of 1 or 10 random users.
Requests are sequential (one at a time) over a keep-alive connection (http.client, the
lightest Python client), so the numbers are per-lookup latencies; the three clients take turns
in rounds of 250 lookups. Quote the ratios: the machine
is shared.

    cargo build --release -p ferry-server --bin ferry
    python3 loadtests/feast_bench.py [--requests 2000] [--append]   # --append: to RESULTS.md
"""
import argparse
import datetime as dt
import http.client
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import redis
from feast import FeatureStore

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import feast_repo as fr  # noqa: E402

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
USERS = 1000
REFS = [f"user_stats.{f}" for f in fr.USER_FEATURES]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, proc, what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not answer on port {port} within {timeout} s")


def user_rows(now):
    rng = random.Random(0)
    rows = []
    for i in range(USERS):
        rows.append(dict(
            user_id=f"u{i}", event_ts=now - dt.timedelta(minutes=rng.randint(1, 600)),
            visits_7d=rng.random() * 10, spend_30d=rng.random() * 1000, orders=rng.randint(0, 99),
            age=rng.randint(18, 90), country=rng.choice(["fr", "de", "us"]), vip=rng.random() < .1,
            blob=bytes(rng.randrange(256) for _ in range(16)),
            scores=[rng.random() for _ in range(8)], weights=[rng.random() for _ in range(8)],
            counts=[rng.randint(0, 9) for _ in range(8)], small=[rng.randint(0, 9)] * 4,
            tags=["a", "b"], flags=[True, False], blobs=[b"x", b"yz"]))
    return rows


def percentiles(samples_s):
    us = np.array(samples_s) * 1e6
    return float(np.percentile(us, 50)), float(np.percentile(us, 99))


def time_http(port, path, bodies):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}
    samples = []
    for body in bodies:
        data = json.dumps(body)
        t = time.perf_counter()
        conn.request("POST", path, data, headers)
        resp = conn.getresponse()
        payload = resp.read()
        samples.append(time.perf_counter() - t)
        if resp.status != 200:
            sys.exit(f"POST {path} on {port}: {resp.status} {payload[:300]!r}")
    conn.close()
    return samples


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="lookups per case and client")
    ap.add_argument("--ferry-bin", default=os.path.join(TARGET, "release", "ferry"))
    ap.add_argument("--append", action="store_true", help="append the table to RESULTS.md")
    args = ap.parse_args()
    if not os.access(args.ferry_bin, os.X_OK):
        sys.exit(f"no ferry binary at {args.ferry_bin}: cargo build --release -p ferry-server")
    work = tempfile.mkdtemp(prefix="feast-bench-")
    procs = []
    try:
        port = free_port()
        procs.append(subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work],
            stdout=subprocess.DEVNULL))
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        now = dt.datetime.now(dt.timezone.utc)
        feast_dir, ferry_repo = fr.write_repo(work, port, user_rows(now), [])
        fr.feast_cli(feast_dir, "apply")
        fr.feast_cli(feast_dir, "materialize-incremental",
                     (now + dt.timedelta(minutes=1)).isoformat())

        ferry_port = free_port()
        cfg = os.path.join(work, "ferry.yaml")
        # A server needs a model: the demo's (not called here).
        spec = importlib.util.spec_from_file_location(
            "make_demo_features", os.path.join(ROOT, "scripts", "make_demo_features.py"))
        demo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(demo)
        registry = os.path.join(work, "registry")
        demo.build(registry, os.path.join(work, "demo_features"))
        with open(cfg, "w") as f:
            f.write(f"listen: 127.0.0.1:{ferry_port}\n"
                    f"registry: {{uri: {registry}}}\n"
                    "models: [risk@1]\n"
                    "onnx_engine: tract\n"
                    f"features: {{repo: {ferry_repo}, redis: 'redis://127.0.0.1:{port}', "
                    f"timeout: 1s}}\n")
        env = dict(os.environ, FERRY_LOG="warn")
        procs.append(subprocess.Popen([args.ferry_bin, "serve", "--config", cfg,
                                       "--grpc-listen", f"127.0.0.1:{free_port()}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=env))
        wait_http(ferry_port, "/v2/health/live", procs[-1], "ferry")

        feast_port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "feast.cli.cli", "serve", "-h", "127.0.0.1", "-p",
             # Worker recycling off (its default restarts the worker every ~1,000
             # requests, which would close the connection mid-run).
             str(feast_port), "--no-access-log", "--max-requests", "0"], cwd=feast_dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        procs[-1].own_session = True
        wait_http(feast_port, "/health", procs[-1], "feast serve")
        store = FeatureStore(repo_path=feast_dir)
        feast_refs = [r.replace(".", ":") for r in REFS]

        rng = random.Random(1)
        results = []
        for n in (1, 10):
            batches = [[f"u{rng.randrange(USERS)}" for _ in range(n)]
                       for _ in range(args.requests)]
            # Same answers first: ferry's values equal the SDK's for one batch.
            check = batches[0]
            sdk = store.get_online_features(features=feast_refs, entity_rows=[
                {"user_id": u} for u in check]).to_dict()
            conn = http.client.HTTPConnection("127.0.0.1", ferry_port)
            conn.request("POST", "/v1/features", json.dumps(
                {"entities": {"user_id": check}, "features": REFS}),
                {"Content-Type": "application/json"})
            got = json.loads(conn.getresponse().read())["results"]
            for i, row in enumerate(got):
                assert row["values"][0] == sdk["visits_7d"][i], (row, sdk["visits_7d"][i])
                assert row["values"][2] == sdk["orders"][i]
            ferry_bodies = [{"entities": {"user_id": b}, "features": REFS} for b in batches]
            feast_bodies = [{"entities": {"user_id": b}, "features": feast_refs} for b in batches]
            # Warm-up, then the three clients in alternating rounds of 250 lookups, so that
            # load from elsewhere on the shared machine falls on all three alike.
            time_http(ferry_port, "/v1/features", ferry_bodies[:100])
            time_http(feast_port, "/get-online-features", feast_bodies[:100])
            for b in batches[:100]:
                store.get_online_features(features=feast_refs,
                                          entity_rows=[{"user_id": u} for u in b])
            ferry_s, serve_s, sdk_s = [], [], []
            for start in range(0, len(batches), 250):
                end = start + 250
                ferry_s += time_http(ferry_port, "/v1/features", ferry_bodies[start:end])
                serve_s += time_http(feast_port, "/get-online-features",
                                     feast_bodies[start:end])
                for b in batches[start:end]:
                    t = time.perf_counter()
                    store.get_online_features(features=feast_refs, entity_rows=[
                        {"user_id": u} for u in b]).to_dict()
                    sdk_s.append(time.perf_counter() - t)
            ferry_p = percentiles(ferry_s)
            for name, samples in (("ferry /v1/features", ferry_s),
                                  ("feast serve /get-online-features", serve_s),
                                  ("feast SDK get_online_features (in-process)", sdk_s)):
                p50, p99 = percentiles(samples)
                results.append((n, name, p50, p99, p50 / ferry_p[0], p99 / ferry_p[1]))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                # `feast serve` runs in a session of its own (its workers with it).
                if getattr(p, "own_session", False):
                    os.killpg(p.pid, signal.SIGTERM)
                else:
                    p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"\n## Online features from Feast's Redis layout: ferry vs Feast (issue 20)\n",
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC with "
        f"`python3 loadtests/feast_bench.py --requests {args.requests}` (feast "
        f"{__import__('feast').__version__}, "
        f"{'release' if '/release/' in args.ferry_bin else 'debug (not for quoting)'} ferry, "
        "one redis-server, all on the same shared 2 cores, load average "
        f"{os.getloadavg()[0]:.1f} from other work; sequential lookups of the 14 `user_stats` "
        "features of 1 or 10 random users out of 1,000 materialized by `feast "
        "materialize-incremental`, the three clients taking turns in rounds of 250; HTTP "
        "clients: one keep-alive http.client connection per round; `feast serve --max-requests "
        "0`: no worker recycling). Quote ratios.\n",
        "| entities | client | p50 µs | p99 µs | p50 ÷ ferry | p99 ÷ ferry |",
        "|---|---|---|---|---|---|",
    ]
    for n, name, p50, p99, r50, r99 in results:
        lines.append(f"| {n} | {name} | {p50:.0f} | {p99:.0f} | {r50:.1f} | {r99:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
