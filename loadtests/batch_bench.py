#!/usr/bin/env python3
"""Batch scoring throughput: `ferry batch` vs a pandas + onnxruntime script, same machine.

    cargo build --release -p ferry-server
    FERRY_BIN=$CARGO_TARGET_DIR/release/ferry FERRY_ORT_LIB=$(python3 scripts/find-ort-lib.py) \
        python3 loadtests/batch_bench.py [ROWS]

Writes ROWS (default 1,000,000) rows of `id` + `X` (30 float32) as one Parquet file (row groups
of 131,072 rows), then scores them with the demo tree model churn@1 (server/demo/registry):
  ferry   `ferry batch --endpoint churn` (wall clock of the process: model load, reading,
          the endpoint pipeline, writing Parquet with id + label + probabilities + variant +
          model + version + scored_at);
  python  pandas.read_parquet, onnxruntime InferenceSession.run in 8192-row chunks, a
          DataFrame of id + label + probabilities written with to_parquet.
Both use every core (ferry's automatic intra-op threads, onnxruntime's default). Prints rows/s
side by side and the ratio; the two label columns are compared so both did the same work.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
REGISTRY = os.path.join(ROOT, "server", "demo", "registry")
MODEL = os.path.join(REGISTRY, "churn", "1", "model.onnx")
CHUNK = 8192


def make_input(path, rows):
    rng = np.random.default_rng(20261129)
    x = rng.normal(size=(rows, 30)).astype(np.float32)
    values = pa.array(x.reshape(-1))
    col = pa.FixedSizeListArray.from_arrays(values, 30).cast(pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)), "X": col}), path,
                   row_group_size=131072)


def run_ferry(binary, workdir, inp, out):
    cfg = os.path.join(workdir, "ferry.yaml")
    with open(cfg, "w") as f:
        f.write(f"registry: {json.dumps({'uri': REGISTRY})}\n")
        f.write("onnx_engine: ort\n")
        f.write('endpoints: [{"name": "churn", "variants": [{"name": "main", '
                '"model": "churn@champion", "weight": 100}]}]\n')
    started = time.perf_counter()
    r = subprocess.run([binary, "batch", "--config", cfg, "--endpoint", "churn", "--input", inp,
                        "--output", out, "--id-columns", "id"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if r.returncode != 0:
        sys.exit(f"ferry batch failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}")
    print(r.stdout.strip())
    return seconds


def run_python(inp, out):
    started = time.perf_counter()
    df = pd.read_parquet(inp)
    x = np.stack(df["X"].to_numpy()).astype(np.float32)
    sess = onnxruntime.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    labels, probas = [], []
    for i in range(0, len(x), CHUNK):
        label, proba = sess.run(None, {"X": x[i:i + CHUNK]})
        labels.append(label)
        probas.append(proba)
    proba = np.concatenate(probas)
    result = pd.DataFrame({"id": df["id"], "label": np.concatenate(labels),
                           "probabilities": list(proba)})
    result.to_parquet(out)
    return time.perf_counter() - started


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    binary = os.environ.get("FERRY_BIN") or os.path.join(
        os.path.expanduser("~"), ".cache", "ferry-target", "release", "ferry")
    with tempfile.TemporaryDirectory(prefix="ferry-batch-bench-") as tmp:
        inp = os.path.join(tmp, "input.parquet")
        make_input(inp, rows)
        print(f"input: {rows} rows, {os.path.getsize(inp) / 1e6:.1f} MB Parquet; cores: "
              f"{os.cpu_count()}")
        ferry_s = run_ferry(binary, tmp, inp, os.path.join(tmp, "ferry-out"))
        py_s = run_python(inp, os.path.join(tmp, "python-out.parquet"))

        ferry_labels = pd.concat(
            pd.read_parquet(os.path.join(tmp, "ferry-out", f))
            for f in sorted(os.listdir(os.path.join(tmp, "ferry-out"))) if f.endswith(".parquet"))
        ferry_labels = ferry_labels.sort_values("id")["label"].to_numpy()
        py_labels = pd.read_parquet(os.path.join(tmp, "python-out.parquet"))["label"].to_numpy()
        agree = float(np.mean(ferry_labels == py_labels))

    print()
    print(f"{'':24}{'seconds':>10}{'rows/s':>12}")
    print(f"{'ferry batch':24}{ferry_s:>10.2f}{rows / ferry_s:>12.0f}")
    print(f"{'pandas + onnxruntime':24}{py_s:>10.2f}{rows / py_s:>12.0f}")
    print(f"ratio ferry/python: {py_s / ferry_s:.2f}x   labels agree: {agree:.6f}")


if __name__ == "__main__":
    main()
