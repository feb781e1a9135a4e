#!/usr/bin/env python3
"""Engine alone on 65,536-row batches: the `trees` engine on XGBoost's and LightGBM's own files
against ONNX Runtime on the same models converted by onnxmltools, same rows, one process
(runtimes/examples/tree_rate.rs), at one and two threads; and the `trees` engine on those ONNX
files (what `onnx_engine: auto` now picks for them). On the LightGBM model also lleaves (PyPI
`lleaves`, which compiles the trees with LLVM) on the very same rows, at one and two threads.
Then one-row latency, `trees` vs ONNX Runtime in-process. Quote the ratios, not the rates.

Models are trained here with fixed seeds (issue 21): an XGBoost classifier (500 trees, depth 8,
50 features) and a LightGBM classifier (500 trees, 63 leaves).

    cargo build --release -p ferry-runtimes --no-default-features --features ort,tract,trees \
        --example tree_rate
    python3 loadtests/trees_bench.py [--seconds 3] [--append]   # --append: to RESULTS.md
"""
import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import warnings

import time

import lightgbm
import numpy as np
import onnx
import xgboost
from onnxmltools import convert_lightgbm, convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
N_FEATURES = 50


def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, N_FEATURES)).astype(np.float32)
    y = (X[:, :5].sum(axis=1) + rng.normal(size=len(X)) > 0).astype(int)
    X[rng.random(X.shape) < 0.1] = np.nan
    return X, y


def models(work):
    X, y = data()
    xgb = xgboost.XGBClassifier(n_estimators=500, max_depth=8, random_state=0, n_jobs=2,
                                tree_method="hist")
    xgb.fit(X, y)
    xgb.get_booster().save_model(os.path.join(work, "xgb.json"))
    xgb_onnx = convert_xgboost(xgb, initial_types=[("input", FloatTensorType([None, N_FEATURES]))])
    onnx.save(xgb_onnx, os.path.join(work, "xgb.onnx"))
    lgb = lightgbm.LGBMClassifier(n_estimators=500, num_leaves=63, random_state=0, n_jobs=2,
                                  verbose=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lgb.fit(X, y)
    lgb.booster_.save_model(os.path.join(work, "lgb.txt"))
    lgb_onnx = convert_lightgbm(lgb, initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
                                zipmap=False)
    onnx.save(lgb_onnx, os.path.join(work, "lgb.onnx"))
    return [("xgboost 500x depth 8", "xgboost", "xgb.json", xgb_onnx),
            ("lightgbm 500x63 leaves", "lightgbm", "lgb.txt", lgb_onnx)]


def ort_lib():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "find-ort-lib.py")],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def lleaves_rates(model_file, rows_file, n_rows, seconds):
    """lleaves' rows/s at 1 and 2 threads on the rows tree_rate scored (float64, as lleaves
    takes them; the conversion is outside the timed loop)."""
    import lleaves
    X = np.fromfile(rows_file, dtype="<f4").reshape(n_rows, N_FEATURES).astype(np.float64)
    model = lleaves.Model(model_file=model_file)
    model.compile(cache=model_file + ".lleaves.so")
    rates = {}
    for threads in (1, 2):
        model.predict(X, n_jobs=threads)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or calls < 3:
            model.predict(X, n_jobs=threads)
            calls += 1
        rates[threads] = int(calls * n_rows / (time.perf_counter() - started))
    return rates


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", default="3")
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    binary = os.path.join(TARGET, "release", "examples", "tree_rate")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not built: see the usage at the top of {__file__}")
    rows, peer_rows, latency_rows = [], [], []
    with tempfile.TemporaryDirectory() as work:
        for label, fmt, fname, proto in models(work):
            names = [o.name for o in proto.graph.output]
            outputs = ",".join(n for n in ("label", "probabilities") if n in names)
            rows_file = os.path.join(work, "rows.f32")
            base = [binary, "--trees", os.path.join(work, fname), "--format", fmt,
                    "--onnx", os.path.join(work, fname.split(".")[0] + ".onnx"),
                    "--ort-lib", ort_lib(), "--input", "input", "--outputs", outputs,
                    "--seconds", args.seconds]
            rates = run_rates(base + ["--rows", "65536", "--threads", "1,2",
                                      "--write-rows", rows_file])
            one = run_rates(base + ["--rows", "1", "--threads", "1", "--engines", "trees,ort"])
            t_us, o_us = 1e6 / one[("trees", 1)], 1e6 / one[("ort", 1)]
            latency_rows.append(f"| {label} | {t_us:.1f} | {o_us:.1f} | {t_us / o_us:.2f} |")
            if fmt == "lightgbm":
                peer = lleaves_rates(os.path.join(work, fname), rows_file, 65536,
                                     float(args.seconds))
                for t in (1, 2):
                    trees = rates[("trees", t)]
                    peer_rows.append(f"| {label} | {t} | {trees} | {peer[t]} | "
                                     f"{trees / peer[t]:.2f} |")
            for t in (1, 2):
                trees, ort = rates[("trees", t)], rates[("ort", t)]
                onnx_rate = rates.get(("trees_onnx", t))
                on_trees = f"{onnx_rate} | {onnx_rate / ort:.2f}" if onnx_rate else "— | —"
                rows.append(f"| {label} | {t} | {trees} | {ort} | {trees / ort:.2f} | {on_trees} |")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join([
        f"## Tree engine alone vs ONNX Runtime, 65,536-row batches (issue 21; {when})",
        "",
        f"`python3 loadtests/trees_bench.py --seconds {args.seconds}` (release build of "
        "`runtimes/examples/tree_rate.rs`; same rows, ~10% NaN, one process; ONNX Runtime on the "
        "onnxmltools conversion; 2-core machine shared with other builds: quote the ratios).",
        "",
        "| model | threads | trees rows/s | ort rows/s | trees ÷ ort | trees on the ONNX file "
        "rows/s | that ÷ ort |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Same rows, lleaves 1.3.0 (LLVM-compiled) on the LightGBM file:",
        "",
        "| model | threads | trees rows/s | lleaves rows/s | trees ÷ lleaves |",
        "|---|---|---|---|---|",
        *peer_rows,
        "",
        "One row per call, in-process (`--rows 1`, one thread):",
        "",
        "| model | trees µs | ort µs | trees ÷ ort |",
        "|---|---|---|---|",
        *latency_rows,
        "",
    ])
    report(table, args.append)


def report(table, append):
    """Prints a result table and, with --append, adds it to loadtests/RESULTS.md."""
    print(table)
    if append:
        with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
            f.write("\n" + table)


def run_rates(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    rates = {}
    for m in re.finditer(r"RESULT engine=(\w+) threads=(\d+) .* rows_per_s=(\d+)", out.stdout):
        rates[(m.group(1), int(m.group(2)))] = int(m.group(3))
    return rates


if __name__ == "__main__":
    main()
