#!/usr/bin/env python3
"""`ferry batch` over 1M Parquet rows: the `trees` engine against ONNX Runtime, same job, same
rows, one invocation (issue 21: trees >= 2x ONNX Runtime).

    cargo build --release --locked -p ferry-server
    FERRY_BIN=$CARGO_TARGET_DIR/release/ferry python3 loadtests/trees_batch.py \\
        [--rows 1000000] [--rounds 3] [--append]

Models, trained here with fixed seeds as in trees_bench.py: an XGBoost classifier (500 trees,
depth 8, 50 features) and a LightGBM classifier (500 trees, 63 leaves), each published twice
with `ferry models push`: its own file (xgboost JSON / LightGBM text: engine `trees`) and the
onnxmltools conversion (ONNX). Plus the demo's `churn` (100 trees, 30 features, skl2onnx).
Input: ROWS rows of `id` + the feature vector as list<float32> (~10% NaN for the 50-feature
models), row groups of 131,072. Jobs, interleaved over ROUNDS rounds (medians reported), each a
whole `ferry batch` process at default settings:
  ort          the ONNX file, `--onnx-engine ort` (ONNX Runtime from the PyPI wheel);
  trees        the model's own file (churn: the ONNX file with `--onnx-engine trees`);
  trees-onnx   the ONNX file, `--onnx-engine trees` (what `auto` picks for it).
Answers are checked before the numbers count: the ONNX jobs against each other (labels equal,
probabilities within 1e-5), the native-file job against the library's own `predict` on the same
rows (xgboost / lightgbm; onnxmltools' float32 conversion of LightGBM's double thresholds moves
a few probabilities by up to ~0.04, so the ONNX file is not the reference for the .txt).
Wall and CPU seconds come from /usr/bin/time; quote the ratios.
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import trees_bench  # noqa: E402  (the same models, trained the same way)

CHURN = os.path.join(ROOT, "server", "demo", "registry", "churn", "1", "model.onnx")


def ferry():
    binary = os.environ.get("FERRY_BIN") or os.path.join(trees_bench.TARGET, "release", "ferry")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not built: see the usage at the top of {__file__}")
    return binary


def push(binary, registry, name, model_file, work):
    src = os.path.join(work, "push", name)
    os.makedirs(src)
    # The registry's file names: model.json (XGBoost), model.txt (LightGBM), model.onnx.
    shutil.copy(model_file, os.path.join(src, "model" + os.path.splitext(model_file)[1]))
    subprocess.run([binary, "models", "--registry", registry, "push", src, "--name", name],
                   check=True, capture_output=True)


def write_input(path, column, x):
    n, width = x.shape
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), width).cast(
        pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array(np.arange(n, dtype=np.int64)), column: col}), path,
                   row_group_size=131072)


def run_job(binary, cfg, endpoint, engine, inp, out, work):
    shutil.rmtree(out, ignore_errors=True)
    stats = os.path.join(work, "time.txt")
    cmd = ["/usr/bin/time", "-f", "%U %S", "-o", stats, binary, "batch", "--config", cfg,
           "--endpoint", endpoint, "--input", inp, "--output", out, "--id-columns", "id",
           "--onnx-engine", engine]
    started = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    user, system = open(stats).read().split()[-2:]
    return wall, float(user) + float(system)


def answers(out):
    files = sorted(f for f in os.listdir(out) if f.endswith(".parquet"))
    t = pa.concat_tables(pq.read_table(os.path.join(out, f)) for f in files).sort_by("id")
    probs = t.column("probabilities").combine_chunks().flatten().to_numpy()
    return t.column("label").to_numpy(), probs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--append", action="store_true", help="append the table to RESULTS.md")
    args = ap.parse_args()
    binary = ferry()
    ort_lib = trees_bench.ort_lib()
    with tempfile.TemporaryDirectory() as work:
        registry = os.path.join(work, "registry")
        os.makedirs(registry)
        trained = trees_bench.models(work)
        push(binary, registry, "xgb", os.path.join(work, "xgb.json"), work)
        push(binary, registry, "xgb_onnx", os.path.join(work, "xgb.onnx"), work)
        push(binary, registry, "lgb", os.path.join(work, "lgb.txt"), work)
        push(binary, registry, "lgb_onnx", os.path.join(work, "lgb.onnx"), work)
        push(binary, registry, "churn", CHURN, work)

        rng = np.random.default_rng(20261206)
        x50 = rng.normal(size=(args.rows, trees_bench.N_FEATURES)).astype(np.float32)
        x50[rng.random(x50.shape) < 0.1] = np.nan
        x30 = rng.normal(size=(args.rows, 30)).astype(np.float32)
        # The tree files name their input X, the onnxmltools graphs `input`: same rows in both.
        inputs = {"X50": os.path.join(work, "x50.parquet"),
                  "input50": os.path.join(work, "input50.parquet"),
                  "X30": os.path.join(work, "x30.parquet")}
        write_input(inputs["X50"], "X", x50)
        write_input(inputs["input50"], "input", x50)
        write_input(inputs["X30"], "X", x30)
        del x30
        import lightgbm
        import xgboost
        library = {
            "xgb": xgboost.Booster(model_file=os.path.join(work, "xgb.json")).predict(
                xgboost.DMatrix(x50, missing=np.nan)),
            "lgb": lightgbm.Booster(model_file=os.path.join(work, "lgb.txt")).predict(x50),
        }
        del x50

        cfg = os.path.join(work, "ferry.json")
        names = ["xgb", "xgb_onnx", "lgb", "lgb_onnx", "churn"]
        with open(cfg, "w") as f:
            json.dump({"registry": {"uri": registry}, "onnxruntime_lib": ort_lib,
                       "endpoints": [{"name": n, "variants": [{"name": "main",
                                                              "model": f"{n}@1"}]}
                                     for n in names]}, f)
        titles = {"xgb": trained[0][0], "lgb": trained[1][0],
                  "churn": "churn (demo, 100 trees, 30 features)"}
        # (model, job) -> (endpoint, --onnx-engine, input)
        jobs = {}
        for m in ("xgb", "lgb"):
            jobs[(m, "ort")] = (f"{m}_onnx", "ort", "input50")
            jobs[(m, "trees")] = (m, "trees", "X50")
            jobs[(m, "trees-onnx")] = (f"{m}_onnx", "trees", "input50")
        jobs[("churn", "ort")] = ("churn", "ort", "X30")
        jobs[("churn", "trees")] = ("churn", "trees", "X30")

        results = {key: [] for key in jobs}
        for rnd in range(args.rounds):
            for key, (endpoint, engine, inp) in jobs.items():
                out = os.path.join(work, "out", f"{key[0]}-{key[1]}")
                results[key].append(run_job(binary, cfg, endpoint, engine, inputs[inp], out,
                                            work))
                if rnd == 0:
                    labels, probs = answers(out)
                    if key[1] == "ort":
                        reference = (labels, probs)
                    elif key[1] == "trees" and key[0] in library:
                        p1 = library[key[0]]
                        diff = float(np.max(np.abs(probs[1::2] - p1)))
                        assert diff <= 1e-5, f"{key}: {diff} from the library's predict"
                        decided = np.abs(p1 - 0.5) > 1e-6
                        assert np.array_equal(labels[decided], (p1 > 0.5)[decided]), key
                    else:
                        assert np.array_equal(labels, reference[0]), f"{key}: labels differ"
                        diff = float(np.max(np.abs(probs - reference[1])))
                        assert diff <= 1e-5, f"{key}: probabilities differ by {diff}"
                print(f"round {rnd + 1} {key}: {results[key][-1][0]:.2f} s", file=sys.stderr)

    rows = []
    for model in ("xgb", "lgb", "churn"):
        ort_wall = statistics.median(w for w, _ in results[(model, "ort")])
        ort_cpu = statistics.median(c for _, c in results[(model, "ort")])
        for job in ("ort", "trees", "trees-onnx"):
            if (model, job) not in results:
                continue
            wall = statistics.median(w for w, _ in results[(model, job)])
            cpu = statistics.median(c for _, c in results[(model, job)])
            rows.append(f"| {titles[model]} | {job} | {wall:.2f} | {cpu:.2f} | "
                        f"{ort_wall / wall:.2f} | {ort_cpu / cpu:.2f} |")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join([
        f"## `ferry batch`, trees vs ONNX Runtime, {args.rows:,} Parquet rows (issue 21; {when})",
        "",
        f"`python3 loadtests/trees_batch.py --rows {args.rows} --rounds {args.rounds}` "
        "(release build; medians; answers checked first: the ONNX jobs agree within 1e-5, the "
        "native-file jobs are within 1e-5 of xgboost's / lightgbm's own predict; "
        "2-core machine: quote the ratios).",
        "",
        "| model | job | wall s | CPU s | ort wall ÷ this | ort CPU ÷ this |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    trees_bench.report(table, args.append)


if __name__ == "__main__":
    main()
