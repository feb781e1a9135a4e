#!/usr/bin/env python3
"""Overload at default limits (issue 17): ferry with default settings serving the demo churn
model (cheap: runs inline) and the wide MLP (loadtests/wide_mlp.py: the engine dominates, so
requests queue and batch). For each, `hey` finds the concurrency that saturates the server
(the smallest of 8..128 within 5% of the best rate), then drives it and 4x that, and the script reports accepted goodput, sheds (429/503), any other status,
and the latency of accepted requests (hey's per-request CSV), with the issue's targets:
goodput at 4x >= 90% of the saturated rate, no status but 200/429/503, accepted p99 at 4x
<= 3x the saturated p99. Loopback only; hey shares the 2 cores with the server, so quote the
ratios.

Usage: python3 loadtests/overload.py [--duration SECONDS]   (needs hey and wrk: apt-get install hey wrk)
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (Proc, free_port, wait_ready, hey, stop_all)
import wide_mlp  # noqa: E402

ROOT, TARGET = run.ROOT, run.TARGET
MODELS = ("churn", "wide")
CANDIDATES = (8, 16, 32, 64, 128)


def saturating(port, model, body):
    """The smallest concurrency whose accepted rate is within 5% of the best of CANDIDATES
    (2 s each): more clients than that only queue."""
    rates = {c: run.hey(port, model, body, c, 2)["rps"] for c in CANDIDATES}
    best = max(rates.values())
    print(f"{model}: accepted req/s by concurrency {rates}", flush=True)
    return min(c for c, r in rates.items() if r >= 0.95 * best)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--extra", default="",
                    help="YAML lines added to ferry's config (default: none, default settings), "
                         "e.g. 'batching: {shed_after_calls: 3}'")
    args = ap.parse_args()
    for tool in ("hey", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is required: apt-get install -y {tool}")
    run.sh("cargo", "build", "--release", "--locked", "-p", "ferry-server", cwd=ROOT,
           stdout=subprocess.DEVNULL, env={**os.environ, "CARGO_TARGET_DIR": TARGET})
    ferry = os.path.join(TARGET, "release", "ferry")
    ort_lib = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "find-ort-lib.py")],
                             capture_output=True, text=True, check=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="ferry-overload-")
    registry = os.path.join(work, "registry")
    shutil.copytree(os.path.join(ROOT, "server", "demo", "registry"), registry)
    wide_mlp.write(work)
    run.sh(ferry, "models", "push", os.path.join(work, "wide"), "--name", "wide", "--registry",
           registry, stdout=subprocess.DEVNULL)
    bodies = {"churn": run.body_file(work, "churn", 30), "wide": os.path.join(work, "wide.json")}
    config = os.path.join(work, "ferry.yaml")
    with open(config, "w") as f:
        f.write(f"registry: {{uri: {registry}}}\nmodels: [churn@champion, wide@1]\n{args.extra}\n")
    port = run.free_port()
    proc = run.Proc("ferry", [ferry, "serve", "--config", config, "--listen", f"127.0.0.1:{port}",
                              "--grpc-listen", "off", "--ort-lib", ort_lib], log_dir=work)
    results = {}
    try:
        run.wait_ready(port, proc)
        saturated = {}
        for model in MODELS:
            saturated[model] = c = saturating(port, model, bodies[model])
            for label, conns in (("saturated", c), ("4x", 4 * c)):
                results[(model, label)] = r = run.hey(port, model, bodies[model], conns, args.duration)
                print(f"{model:6} {label:9} c={conns:<4} accepted {r['rps']:8.0f}/s  shed {r['rejected']:6}  "
                      f"other {r['other']:3}  p50 {r['p50_us']:6} us  p99 {r['p99_us']:6} us", flush=True)
    finally:
        run.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    print("\n| model | load | c | accepted req/s | shed (429/503) | other statuses | accepted p50 µs | accepted p99 µs |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, label), r in results.items():
        conns = saturated[model] * (4 if label == "4x" else 1)
        print(f"| {model} | {label} | {conns} | {r['rps']:.0f} | {r['rejected']} | {r['other']} | "
              f"{r['p50_us']} | {r['p99_us']} |")
    print()
    for model in MODELS:
        s, o = results[(model, "saturated")], results[(model, "4x")]
        goodput = o["rps"] / max(s["rps"], 1)
        p99 = o["p99_us"] / max(s["p99_us"], 1)
        print(f"- {model}: goodput at 4x ÷ saturated {100 * goodput:.0f}% (target ≥ 90%) "
              f"{'met' if goodput >= 0.9 else 'NOT met'}; other statuses {o['other']} (target 0) "
              f"{'met' if o['other'] == 0 else 'NOT met'}; accepted p99 at 4x ÷ saturated {p99:.2f}× "
              f"(target ≤ 3×) {'met' if p99 <= 3 else 'NOT met'}")


if __name__ == "__main__":
    try:
        main()
    finally:
        run.stop_all()
