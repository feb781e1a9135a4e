#!/usr/bin/env python3
"""ferry side by side with the servers users would otherwise run, in one invocation.

Starts, on loopback only, for the demo tree-ensemble classifier (`churn`, 30 features) and
the demo MLP (`mlp`, 64 -> 256 -> 256 -> 1):
  ferry (ONNX Runtime, dynamic batching on: max 64 rows, no added delay)
  FastAPI + uvicorn + onnxruntime with 1 and 2 workers (peers/fastapi_onnx.py)
  Seldon MLServer 1.7.1 with an onnxruntime runtime, parallel_workers 0 and its default (1)
  the HTTP ceiling: a bare axum handler returning a fixed body (tree model row only)
drives each with wrk (Debian) at concurrency 1, 8 and 64, measures server CPU seconds per
request from /proc, the in-process engine rate (no HTTP), MLP batching on vs off, and a 4x
overload run with `hey` (Debian; its per-request CSV gives the latency of accepted requests
apart from the 429s). Every process it starts runs in its own process group and is stopped
at exit. Prints one table and writes loadtests/RESULTS.md.

Usage: python3 loadtests/run.py [--duration SECONDS] [--out loadtests/RESULTS.md]
"""
import argparse
import csv
import datetime
import io
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
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/ferry-target"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROCS = []


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name, cmd, cwd=None, env=None, log_dir="."):
        self.name = name
        self.log = open(os.path.join(log_dir, f"{name}.log"), "w")
        self.p = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})},
                                  stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        PROCS.append(self)

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait()
        self.log.close()

    def cpu_seconds(self):
        """utime + stime of the process and all its descendants that are alive now."""
        stats = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                stats[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
            except (OSError, IndexError):
                continue
        tree, frontier = {self.p.pid}, [self.p.pid]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, _) in stats.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        return sum(stats[p][1] for p in tree if p in stats) / CLK_TCK


def stop_all():
    for p in reversed(PROCS):
        p.stop()
    PROCS.clear()


def wait_ready(port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.p.poll() is not None:
            raise SystemExit(f"{proc.name} exited early; see its log in the work dir")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{proc.name} was not ready within {timeout} s")


def wrk(port, model, body, conns, duration):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", "-s",
         os.path.join(ROOT, "loadtests", "wrk_report.lua"), f"http://127.0.0.1:{port}/v2/models/{model}/infer"],
        env={**os.environ, "WRK_BODY": body}, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT"))
    kv = dict(p.split("=") for p in line.split()[1:])
    return {"requests": int(kv["requests"]), "seconds": float(kv["seconds"]),
            "p50_us": int(kv["p50_us"]), "p99_us": int(kv["p99_us"]), "errors": int(kv["errors"])}


def measure(proc, port, model, body, conns, duration):
    before = proc.cpu_seconds()
    r = wrk(port, model, body, conns, duration)
    r["cpu_us_per_req"] = (proc.cpu_seconds() - before) * 1e6 / max(1, r["requests"])
    r["rps"] = r["requests"] / r["seconds"]
    return r


def hey(port, model, body, conns, duration):
    out = subprocess.run(
        ["hey", "-z", f"{duration}s", "-c", str(conns), "-m", "POST", "-T", "application/json",
         "-D", body, "-o", "csv", f"http://127.0.0.1:{port}/v2/models/{model}/infer"],
        capture_output=True, text=True, check=True).stdout
    ok, rejected, other = [], 0, 0
    for row in csv.DictReader(io.StringIO(out)):
        status = int(row["status-code"])
        if status == 200:
            ok.append(float(row["response-time"]) * 1e6)
        elif status in (429, 503):  # shed: refused before any work, with Retry-After
            rejected += 1
        else:
            other += 1
    ok.sort()
    pct = lambda q: int(ok[min(len(ok) - 1, int(len(ok) * q))]) if ok else 0
    return {"ok": len(ok), "rejected": rejected, "other": other, "p50_us": pct(0.5),
            "p99_us": pct(0.99), "rps": len(ok) / duration}


def body_file(work, model, features):
    random.seed(7)
    data = [round(random.uniform(-2, 2), 4) for _ in range(features)]
    path = os.path.join(work, f"{model}.json")
    with open(path, "w") as f:
        json.dump({"inputs": [{"name": "X", "shape": [1, features], "datatype": "FP32", "data": data}]}, f)
    return path


def ferry_config(work, name, batching=64, queue=256, inflight=1024):
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(f"registry: {{uri: {ROOT}/server/demo/registry}}\nmodels: [churn@1, mlp@1]\n"
                f"onnx_engine: ort\nqueue_capacity: {queue}\nmax_concurrent_requests: {inflight}\n"
                f"batching: {{max_batch_size: {batching}, max_queue_delay_us: 0}}\n")
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(ROOT, "loadtests", "RESULTS.md"))
    ap.add_argument("--only", choices=["overload"], help="run one section alone (report not written)")
    args = ap.parse_args()
    for tool in ("wrk", "hey"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is required: apt-get install -y wrk hey")
    sh("cargo", "build", "--release", "--locked", "-p", "ferry-server", "-p", "ferry-loadtests", cwd=ROOT,
       stdout=subprocess.DEVNULL, env={**os.environ, "CARGO_TARGET_DIR": TARGET})
    ort_lib = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "find-ort-lib.py")],
                             capture_output=True, text=True, check=True).stdout.strip()
    ferry_bin = os.path.join(TARGET, "release", "ferry")
    work = tempfile.mkdtemp(prefix="ferry-loadtest-")
    models = {"churn": 30, "mlp": 64}
    bodies = {m: body_file(work, m, n) for m, n in models.items()}
    onnx = {m: os.path.join(ROOT, "server", "demo", "registry", m, "1", "model.onnx") for m in models}
    conc = [1, 8, 64]
    rows, notes = [], []

    def start_ferry(name, config):
        port = free_port()
        p = Proc(name, [ferry_bin, "serve", "--config", config, "--listen", f"127.0.0.1:{port}",
                        "--ort-lib", ort_lib], env={"FERRY_LOG": "warn"}, log_dir=work)
        wait_ready(port, p)
        return p, port

    def start_fastapi(name, model, workers):
        port = free_port()
        p = Proc(name, [sys.executable, os.path.join(ROOT, "loadtests", "peers", "fastapi_onnx.py"),
                        onnx[model], str(port), str(workers)], log_dir=work)
        wait_ready(port, p)
        return p, port

    def start_mlserver(name, model, workers):
        port, grpc, metrics = free_port(), free_port(), free_port()
        repo = os.path.join(work, name)
        sh(sys.executable, os.path.join(ROOT, "loadtests", "peers", "mlserver", "configure.py"),
           repo, model, onnx[model], str(port), str(grpc), str(metrics), str(workers))
        p = Proc(name, ["mlserver", "start", repo], log_dir=work)
        wait_ready(port, p)
        return p, port

    def start_ceiling(name):
        port = free_port()
        p = Proc(name, [os.path.join(TARGET, "release", "http-ceiling"), "--listen", f"127.0.0.1:{port}"],
                 log_dir=work)
        wait_ready(port, p)
        return p, port

    if args.only == "overload":
        try:
            print(json.dumps(overload_section(work, start_ferry, bodies, args.duration), indent=1))
        finally:
            stop_all()
        return

    try:
        for model in models:
            servers = [
                ("ferry", lambda: start_ferry("ferry", ferry_config(work, "ferry"))),
                ("fastapi-1w", lambda: start_fastapi("fastapi-1w", model, 1)),
                ("fastapi-2w", lambda: start_fastapi("fastapi-2w", model, 2)),
                ("mlserver-pw0", lambda: start_mlserver("mlserver-pw0", model, 0)),
                ("mlserver-pw1", lambda: start_mlserver("mlserver-pw1", model, 1)),
            ]
            if model == "churn":
                servers.append(("axum-ceiling", lambda: start_ceiling("axum-ceiling")))
            for name, start in servers:
                proc, port = start()
                for c in conc:
                    r = measure(proc, port, model, bodies[model], c, args.duration)
                    rows.append({"model": model, "server": name, "c": c, **r})
                    print(f"{model:6} {name:13} c={c:<3} {r['rps']:9.0f} req/s  p50 {r['p50_us']:6} us  "
                          f"p99 {r['p99_us']:6} us  errors {r['errors']}  cpu {r['cpu_us_per_req']:.1f} us/req",
                          flush=True)
                proc.stop()

        # In-process engine rate: the compute ceiling.
        engine = {}
        for model in models:
            for eng in ("ort", "tract"):
                out = subprocess.run([os.path.join(TARGET, "release", "engine-rate"), "--registry",
                                      os.path.join(ROOT, "server", "demo", "registry"), "--model", model,
                                      "--engine", eng, "--ort-lib", ort_lib, "--seconds", "3"],
                                     capture_output=True, text=True, check=True).stdout
                kv = dict(p.split("=") for p in out.split()[1:])
                engine[(model, eng)] = {"rate": int(kv["calls"]) / float(kv["seconds"]),
                                        "p50_us": int(kv["p50_us"]), "p99_us": int(kv["p99_us"])}

        # MLP at c=64: batching on vs off.
        batching = {}
        for label, size in (("on", 64), ("off", 1)):
            proc, port = start_ferry(f"ferry-batching-{label}", ferry_config(work, f"b-{label}", batching=size))
            batching[label] = measure(proc, port, "mlp", bodies["mlp"], 64, args.duration)
            proc.stop()

        overload = overload_section(work, start_ferry, bodies, args.duration)
    finally:
        stop_all()

    report = render(rows, engine, batching, overload, args)
    print(report)
    with open(args.out, "w") as f:
        f.write(report)
    shutil.rmtree(work, ignore_errors=True)


def overload_section(work, start_ferry, bodies, duration):
    """Nominal load (16 clients) vs 4x (64 clients) against a ferry admitting 16 requests in
    flight, so the excess is shed with 429 before any work is done."""
    overload = {}
    proc, port = start_ferry("ferry-overload", ferry_config(work, "overload", queue=16, inflight=16))
    overload["nominal"] = hey(port, "churn", bodies["churn"], 16, duration)
    overload["4x"] = hey(port, "churn", bodies["churn"], 64, duration)
    proc.stop()
    return overload


def render(rows, engine, batching, overload, args):
    get = lambda m, s, c: next((r for r in rows if r["model"] == m and r["server"] == s and r["c"] == c), None)
    out = [f"# ferry load tests\n",
           f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
           f"with `python3 loadtests/run.py --duration {args.duration}` (wrk -t1, loopback; the load "
           f"generator shares the 2 cores with the server). Quote ratios, not absolute numbers.\n",
           "| model | server | c | req/s | p50 µs | p99 µs | errors | server CPU µs/req | ferry req/s ÷ this |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = get(r["model"], "ferry", r["c"])
        ratio = f["rps"] / r["rps"] if f and r["rps"] else 0
        out.append(f"| {r['model']} | {r['server']} | {r['c']} | {r['rps']:.0f} | {r['p50_us']} | {r['p99_us']} | "
                   f"{r['errors']} | {r['cpu_us_per_req']:.1f} | {ratio:.2f} |")
    out.append("\n## In-process engine (one thread, one row, no HTTP)\n")
    out.append("| model | engine | calls/s | p50 µs | p99 µs |\n|---|---|---|---|---|")
    for (m, e), v in engine.items():
        out.append(f"| {m} | {e} | {v['rate']:.0f} | {v['p50_us']} | {v['p99_us']} |")
    out.append("\n## MLP at c=64, dynamic batching on (max 64 rows) vs off\n")
    on, off = batching["on"], batching["off"]
    out.append(f"on: {on['rps']:.0f} req/s (p99 {on['p99_us']} µs); off: {off['rps']:.0f} req/s "
               f"(p99 {off['p99_us']} µs); ratio {on['rps'] / off['rps']:.2f}x (target ≥ 2x)\n")
    n, o = overload["nominal"], overload["4x"]
    out.append("## Overload (tree model, max_concurrent_requests 16, queue_capacity 16; hey: latency of accepted requests only)\n")
    out.append("| load | accepted req/s | 429s | other errors | p50 µs | p99 µs |\n|---|---|---|---|---|---|")
    for label, v in (("c=16", n), ("c=64 (4x)", o)):
        out.append(f"| {label} | {v['rps']:.0f} | {v['rejected']} | {v['other']} | {v['p50_us']} | {v['p99_us']} |")
    out.append(f"\np99 of accepted requests under 4x load ÷ at nominal load: "
               f"{o['p99_us'] / max(1, n['p99_us']):.2f} (target ≤ 2)\n")
    out.append("## Targets\n")
    t = lambda s, c=64: get("churn", s, c)
    f64, f1 = t("ferry"), t("ferry", 1)
    checks = []
    if f64:
        for peer, goal in (("fastapi-2w", 5), ("mlserver-pw0", 10), ("mlserver-pw1", 10)):
            p = t(peer)
            if p:
                checks.append(f"- tree c=64 ferry ÷ {peer}: {f64['rps'] / p['rps']:.1f}x (target ≥ {goal}x)")
        ceil = t("axum-ceiling")
        if ceil:
            checks.append(f"- tree c=64 ferry ÷ bare-axum ceiling: {100 * f64['rps'] / ceil['rps']:.0f}% (target ≥ 60%)")
        worst_peer_p99 = min(r["p99_us"] for r in rows if r["model"] == "churn" and r["c"] == 64
                             and r["server"] not in ("ferry", "axum-ceiling"))
        checks.append(f"- tree c=64 ferry p99 {f64['p99_us']} µs vs best peer p99 {worst_peer_p99} µs")
        checks.append(f"- tree server CPU per request at c=64: {f64['cpu_us_per_req']:.1f} µs (target ≤ 25 µs)")
    if f1:
        e = engine.get(("churn", "ort"))
        checks.append(f"- tree c=1: ferry p50 {f1['p50_us']} µs − engine p50 {e['p50_us']} µs = "
                      f"{f1['p50_us'] - e['p50_us']} µs (target ≤ 100 µs)")
    out.extend(checks)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
