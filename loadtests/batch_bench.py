#!/usr/bin/env python3
"""Batch scoring throughput: `ferry batch` beside its peers on the same arrays, in one run.

    cargo build --release --locked -p ferry-server
    FERRY_BIN=$CARGO_TARGET_DIR/release/ferry FERRY_ORT_LIB=$(python3 scripts/find-ort-lib.py) \\
    [FERRY_BASELINE_BIN=/path/to/previous/ferry] \\
        python3 loadtests/batch_bench.py [--rows 1000000] [--rounds 3] [--profile loadtests/profiles]

Writes ROWS rows as Parquet (row groups of 131,072 rows) for two demo models:
  churn  `id` + `X` (30 float32, list<float32>) for the tree model churn@1
         (server/demo/registry/churn/1);
  risk   `id` + `user_id` (u1..u25; u21..u25 have no features, so they get the defaults) +
         `amount` (float64) for risk@1, whose manifest joins user_stats.visits_7d and
         user_stats.spend_30d from the demo feature repo (server/demo/features, ferry's
         in-process online store) with the request column `amount`.
Then, interleaved over ROUNDS rounds (medians reported), each as its own process:
  ort        ONNX Runtime alone on the model input as numpy (65,536-row chunks; reading the
             file and building the array are not timed; best of 3 passes): the engine's ceiling;
  pyarrow    loadtests/batch_pyarrow.py (read_table, score in 65,536-row chunks, write_table
             with typed label / probabilities);
  pandas     churn only: read_parquet, onnxruntime in 8,192-row chunks, to_parquet (the first
             peer of this bench);
  ferry      `ferry batch` (wall clock of the process: start, model load, reading, the endpoint
             pipeline, writing Parquet with id + label + probabilities + variant + model +
             version + scored_at), ONNX Runtime engine, default --chunk-rows/--inflight;
  ferry+script risk only: the same endpoint with a Rhai business rule after the model
             (reads the probabilities and the request's amount, writes a decision);
  ferry+tf   risk only: the same endpoint with built-in transforms (fill_missing, clip,
             standardize, log1p before the model; threshold, calibrate, select after).
Python peers report their own time from reading to written (interpreter start and imports
excluded, which favours them); ferry's is its whole process. Every peer uses every core
(onnxruntime's default threads, ferry's automatic intra-op threads). Peak RSS comes from
/usr/bin/time. ferry's labels must equal the pyarrow script's and its probabilities be within
1e-5, or the run fails: the rates are for the same work.

--profile DIR also runs `ferry batch` once more per model under `perf record` (DWARF call
graphs) and writes DIR/<job>.folded (collapsed stacks, the hottest ones) and DIR/<job>.stages.txt
(CPU samples grouped by pipeline stage); needs `perf` (Debian: linux-perf).
"""
import argparse
import collections
import json
import os
import re
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
ROOT = os.path.join(HERE, "..")
REGISTRY = os.path.join(ROOT, "server", "demo", "registry")
FEATURES = os.path.join(ROOT, "server", "demo", "features")
ORT_CHUNK = 65_536
PANDAS_CHUNK = 8192


# ---------------------------------------------------------------------------------------------
# Peers that run as their own process (so each has its own peak RSS): `batch_bench.py --peer`.

def peer_ort(model, inp, features):
    """ONNX Runtime alone: the input matrix is built first (untimed), then only sess.run over
    all rows, best of 3 passes (the engine's ceiling on this machine at this moment)."""
    import onnxruntime
    sys.path.insert(0, HERE)
    import batch_pyarrow
    table = pq.read_table(inp)
    x = (batch_pyarrow.churn_inputs(table) if model == "churn"
         else batch_pyarrow.risk_inputs(table, features))
    x = np.ascontiguousarray(x)
    sess = onnxruntime.InferenceSession(os.path.join(REGISTRY, model, "1", "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    sess.run(None, {"X": x[:16]})
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in range(0, len(x), ORT_CHUNK):
            sess.run(None, {"X": x[i:i + ORT_CHUNK]})
        best = min(best, time.perf_counter() - started)
    print(f"seconds={best:.4f}")


def peer_pandas(inp, out):
    import onnxruntime
    import pandas as pd
    started = time.perf_counter()
    df = pd.read_parquet(inp)
    x = np.stack(df["X"].to_numpy()).astype(np.float32)
    sess = onnxruntime.InferenceSession(os.path.join(REGISTRY, "churn", "1", "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    labels, probas = [], []
    for i in range(0, len(x), PANDAS_CHUNK):
        label, proba = sess.run(None, {"X": x[i:i + PANDAS_CHUNK]})
        labels.append(label)
        probas.append(proba)
    proba = np.concatenate(probas)
    result = pd.DataFrame({"id": df["id"], "label": np.concatenate(labels),
                           "probabilities": list(proba)})
    result.to_parquet(out)
    print(f"seconds={time.perf_counter() - started:.4f}")


# ---------------------------------------------------------------------------------------------
# Inputs and the ferry job.

def make_churn(path, rows):
    rng = np.random.default_rng(20261129)
    x = rng.normal(size=(rows, 30)).astype(np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 30).cast(
        pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)), "X": col}), path,
                   row_group_size=131072)


def make_risk(path, rows):
    rng = np.random.default_rng(20261206)
    users = np.char.add("u", (rng.integers(1, 26, rows)).astype(str))
    pq.write_table(pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "user_id": pa.array(users, pa.string()),
        "amount": pa.array(np.round(rng.gamma(2.0, 20.0, rows), 2)),
    }), path, row_group_size=131072)


def ferry_config(path):
    ort = os.environ.get("FERRY_ORT_LIB") or subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "find-ort-lib.py")],
        capture_output=True, text=True, check=True).stdout.strip()
    with open(path, "w") as f:
        json.dump({
            "registry": {"uri": REGISTRY},
            "onnx_engine": "ort",
            "onnxruntime_lib": ort,
            "features": {"repo": os.path.join(FEATURES, "features.yaml")},
            "endpoints": [
                {"name": "churn", "variants": [{"name": "main", "model": "churn@1"}]},
                {"name": "risk", "variants": [{"name": "main", "model": "risk@1"}]},
                {"name": "risk_tf", "variants": [{"name": "main", "model": "risk@1"}],
                 "preprocess": [
                     {"fill_missing": {"amount": 0}},
                     {"clip": {"amount": {"min": 0, "max": 1000}}},
                     {"standardize": {"user_stats.spend_30d": {"mean": 250, "std": 120}}},
                     {"log1p": ["user_stats.visits_7d"]}],
                 "postprocess": [
                     {"threshold": {"field": "probabilities", "index": 1, "threshold": 0.5,
                                    "labels": ["approve", "review"], "output": "decision"}},
                     {"calibrate": {"field": "probabilities", "index": 1,
                                    "table": [[0, 0], [0.5, 0.4], [1, 1]], "output": "score"}},
                     {"select": ["decision", "score"]}]},
                {"name": "risk_script", "variants": [{"name": "main", "model": "risk@1"}],
                 "postprocess": [{"script": {"source": (
                     "fn transform(row, input) { row.decision = if row.probabilities[1] > 0.8 "
                     "{ \"review\" } else { \"approve\" }; row.amount = input.amount; row }")}}]},
            ],
        }, f)


def ferry_command(binary, cfg, endpoint, inp, out):
    return [binary, "batch", "--config", cfg, "--endpoint", endpoint, "--input", inp,
            "--output", out, "--id-columns", "id"]


def timed(cmd, workdir, name):
    """Runs cmd under /usr/bin/time; returns (process seconds, own seconds or None, peak MiB,
    cpu seconds, stdout)."""
    stats = os.path.join(workdir, f"{name}.time")
    started = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", stats] + cmd,
                       capture_output=True, text=True)
    wall = time.perf_counter() - started
    if r.returncode != 0:
        sys.exit(f"{name} failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n"
                 f"{r.stderr[-4000:]}")
    rss_kb, user, system = open(stats).read().split()[-3:]
    own = re.search(r"seconds=([0-9.]+)", r.stdout)
    return wall, float(own.group(1)) if own else None, int(rss_kb) / 1024, \
        float(user) + float(system), r.stdout


def read_dir(path):
    files = sorted(f for f in os.listdir(path) if f.endswith(".parquet"))
    return pa.concat_tables(pq.read_table(os.path.join(path, f)) for f in files).sort_by("id")


def check_same(ferry_out, peer_out, what):
    """ferry's typed columns must hold the peer's answers, row for row."""
    ferry, peer = read_dir(ferry_out), pq.read_table(peer_out).sort_by("id")
    assert ferry.num_rows == peer.num_rows, (what, ferry.num_rows, peer.num_rows)
    assert ferry.column("id").equals(peer.column("id")), what
    assert ferry.schema.field("label").type == pa.int64(), ferry.schema
    assert ferry.schema.field("probabilities").type == pa.list_(pa.float32(), 2), ferry.schema
    labels = ferry.column("label").to_numpy()
    assert np.array_equal(labels, peer.column("label").to_numpy()), f"{what}: labels differ"
    fp = ferry.column("probabilities").combine_chunks().flatten().to_numpy()
    pp = peer.column("probabilities").combine_chunks().flatten().to_numpy()
    diff = float(np.max(np.abs(fp - pp)))
    assert diff <= 1e-5, f"{what}: probabilities differ by up to {diff}"
    return diff


# ---------------------------------------------------------------------------------------------
# Profile: perf samples grouped by pipeline stage.

# A sample belongs to the stage of the deepest frame of its stack that names one (so malloc,
# memcpy or a hash map called from a stage count for it). Order matters only within a frame.
STAGE_RULES = [
    ("engine (ONNX Runtime)", r"libonnxruntime|ferry_runtimes::ort|^ort::|OrtApi|onnxruntime"),
    ("JSON clone", r"<serde_json::(value::Value|map::Map).* as core::clone::Clone>::clone"),
    ("JSON free", r"BTreeMap<K,V,A> as core::ops::drop::Drop|btree::map::IntoIter<K,V,A>::dying_next|"
                  r"drop_in_place<(serde_json|alloc::vec::Vec<serde_json|"
                  r"ferry_server::batch::score::ScoredRow|alloc::vec::Vec<core::option::Option<"
                  r"ferry_server::batch::score::ScoredRow|alloc::vec::Vec<ferry_server::batch::"
                  r"score::ScoredRow|\(serde_json|ferry_server::pipeline::Predictions|"
                  r"ferry_server::pipeline::VariantRun|alloc::vec::Vec<alloc::string::String)"),
    ("Arrow -> JSON rows", r"batch::read::(batch_to_rows|column_values|array_value|list|float)"
                           r"|batch::score::score_isolating::\{\{closure\}\}::\{\{closure\}\}"),
    ("JSON -> tensor", r"pipeline::rows::(to_tensors|rows_to_tensors|instances_to_tensors|"
                       r"nested_shape)|pipeline::json_tensor|JoinPlan.*matrix"),
    ("tensor -> JSON predictions", r"pipeline::rows::(predictions|nested|element)"),
    ("JSON -> typed output columns", r"batch::columns::"),
    ("feature join", r"ferry_features::"),
    ("transforms", r"ferry_transforms::"),
    ("variant assignment", r"pipeline::assign::|Endpoint::assign"),
    ("Parquet write", r"parquet::arrow::arrow_writer|parquet::file::writer|"
                      r"parquet::column::writer|batch::write::"),
    ("Parquet read/decode", r"parquet::arrow::arrow_reader|parquet::arrow::array_reader|"
                            r"parquet::column::reader|parquet::file::serialized_reader|"
                            r"parquet::arrow::record_reader|batch::read::|UnitReader"),
    ("scheduler / queue", r"ferry_server::scheduler::"),
    # What is left inside the per-chunk functions: per-row ScoredRow (variant, model Strings),
    # Vec<row> moves and frees that exist because the chunk is a Vec of JSON rows.
    ("pipeline glue on JSON rows", r"batch::score::|pipeline::run_group|pipeline::Pipeline::"
                                   r"predict|pipeline::Core::run_variant|batch::run_unit"),
]
STAGES = [name for name, _ in STAGE_RULES] + ["other (tokio, thread start, kernel, unknown)"]
THREADS = [("tokio", "ferry-io"), ("reader", "ferry-batch-rea"), ("compute", "ferry-compute"),
           ("compute", "ferry-batcher")]


def thread_group(comm):
    """ferry's threads by name; ONNX Runtime's pool threads keep the process name."""
    return next((g for g, prefix in THREADS if comm.startswith(prefix)), "ORT pool/main")
COMPILED = [(name, re.compile(p)) for name, p in STAGE_RULES]


def stage_of(comm, frames):
    """frames: leaf first, each (symbol, dso)."""
    for sym, dso in frames:
        for name, rx in COMPILED:
            if rx.search(sym) or (name.startswith("engine") and rx.search(dso)):
                return name
    if comm.startswith("ferry-batch-rea"):
        return "Parquet read/decode"
    return STAGES[-1]


def short(sym):
    sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
    return sym.replace(";", ":")[:200]


def fold(perf_data):
    """perf script → Counter of 'comm;root;...;leaf' stacks and of stages."""
    p = subprocess.Popen(["perf", "script", "-i", perf_data, "-F", "comm,ip,sym,dso",
                          "--no-inline"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, errors="replace")
    stacks, stages = collections.Counter(), collections.Counter()
    comm, frames = None, []

    def flush():
        if comm is None:
            return
        stages[(stage_of(comm, frames), thread_group(comm))] += 1
        stacks[";".join([comm] + [short(s) for s, _ in reversed(frames)])] += 1

    for line in p.stdout:
        if not line.strip():
            flush()
            comm, frames = None, []
        elif not line[0].isspace():
            comm = line.split()[0] if line.split() else "?"
            frames = []
        else:
            m = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
            if m:
                frames.append((m.group(1), m.group(2)))
    flush()
    p.wait()
    return stacks, stages


def profile(binary, cfg, endpoint, inp, tmp, outdir, wall, label):
    out = os.path.join(tmp, f"prof-{endpoint}")
    data = os.path.join(tmp, f"{endpoint}.perf.data")
    cmd = ["perf", "record", "-F", "999", "-g", "--call-graph", "dwarf,16384", "-o", data,
           "--"] + ferry_command(binary, cfg, endpoint, inp, out)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"perf record failed ({r.returncode}):\n{r.stderr[-3000:]}")
    stacks, by_thread = fold(data)
    stages = collections.Counter()
    for (stage, _), n in by_thread.items():
        stages[stage] += n
    total = sum(stages.values())
    groups = ["tokio", "reader", "compute", "ORT pool/main"]
    os.makedirs(outdir, exist_ok=True)
    kept, budget = [], 350_000
    for stack, n in stacks.most_common():
        line = f"{stack} {n}\n"
        budget -= len(line)
        if budget < 0:
            break
        kept.append(line)
    with open(os.path.join(outdir, f"{label}.folded"), "w") as f:
        f.writelines(kept)
    lines = [f"`ferry batch --endpoint {endpoint}` under perf record -F 999 --call-graph dwarf: "
             f"{total} CPU samples (~{total / 999:.2f} CPU-s; untraced run: {wall:.2f} s wall)",
             "", "| stage | CPU samples | share | " + " | ".join(f"on {g}" for g in groups) + " |",
             "|---|---|---|" + "---|" * len(groups)]
    for s in STAGES:
        if stages[s]:
            lines.append(f"| {s} | {stages[s]} | {100 * stages[s] / total:.1f}% | "
                         + " | ".join(str(by_thread[(s, g)]) for g in groups) + " |")
    lines.append("| all | " + f"{total} | 100% | "
                 + " | ".join(str(sum(n for (_, g2), n in by_thread.items() if g2 == g))
                              for g in groups) + " |")
    lines += ["", "Threads: tokio = ferry-io (the runtime's workers), reader = ferry-batch-read, "
              "compute = ferry-compute-*/ferry-batcher-*, main = the thread running the job "
              "loop (and the writer); ONNX Runtime's pool threads inherit the name of the "
              "thread that created them, so engine samples show under several names."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(outdir, f"{label}.stages.txt"), "w") as f:
        f.write(text)
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                             "--no-inline", "-g", "none", "--percent-limit", "0.5",
                             "--sort", "dso,sym"], capture_output=True, text=True)
    with open(os.path.join(outdir, f"{label}.report.txt"), "w") as f:
        f.write("\n".join(l for l in report.stdout.splitlines() if not l.startswith("#"))[:200_000])
    return text


# ---------------------------------------------------------------------------------------------

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        kind = sys.argv[2]
        if kind == "ort":
            return peer_ort(sys.argv[3], sys.argv[4], FEATURES)
        if kind == "pandas":
            return peer_pandas(sys.argv[3], sys.argv[4])
        sys.exit(f"unknown peer {kind}")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", metavar="DIR", help="also profile ferry batch with perf")
    args = ap.parse_args()
    binary = os.environ.get("FERRY_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/ferry-target")),
        "release", "ferry")
    me, py = os.path.abspath(__file__), sys.executable
    pyarrow_script = os.path.join(HERE, "batch_pyarrow.py")
    rows = args.rows

    with tempfile.TemporaryDirectory(prefix="ferry-batch-bench-") as tmp:
        cfg = os.path.join(tmp, "ferry.yaml")
        ferry_config(cfg)
        inputs = {"churn": os.path.join(tmp, "churn.parquet"),
                  "risk": os.path.join(tmp, "risk.parquet")}
        make_churn(inputs["churn"], rows)
        make_risk(inputs["risk"], rows)
        print(f"input: {rows} rows; churn {os.path.getsize(inputs['churn']) / 1e6:.1f} MB, "
              f"risk {os.path.getsize(inputs['risk']) / 1e6:.1f} MB Parquet; "
              f"cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}; ferry: {binary}")
        models = {m: os.path.join(REGISTRY, m, "1") for m in inputs}

        def out(name):
            return os.path.join(tmp, f"{name}-out")

        # name -> (model, command, output to clear between rounds)
        runs = {
            "churn/ort": ("churn", [py, me, "--peer", "ort", "churn", inputs["churn"]], None),
            "churn/pyarrow": ("churn", [py, pyarrow_script, "churn", models["churn"],
                                        inputs["churn"], out("churn-pyarrow")], None),
            "churn/pandas": ("churn", [py, me, "--peer", "pandas", inputs["churn"],
                                       out("churn-pandas")], None),
            "churn/ferry": ("churn", ferry_command(binary, cfg, "churn", inputs["churn"],
                                                   out("churn-ferry")), out("churn-ferry")),
            "risk/ort": ("risk", [py, me, "--peer", "ort", "risk", inputs["risk"]], None),
            "risk/pyarrow": ("risk", [py, pyarrow_script, "risk", models["risk"],
                                      inputs["risk"], out("risk-pyarrow"), FEATURES], None),
            "risk/ferry": ("risk", ferry_command(binary, cfg, "risk", inputs["risk"],
                                                 out("risk-ferry")), out("risk-ferry")),
            "risk/ferry+tf": ("risk", ferry_command(binary, cfg, "risk_tf", inputs["risk"],
                                                    out("risk-ferry-tf")), out("risk-ferry-tf")),
            "risk/ferry+script": ("risk", ferry_command(binary, cfg, "risk_script",
                                                        inputs["risk"], out("risk-ferry-script")),
                                  out("risk-ferry-script")),
        }
        # Another ferry binary (e.g. the previous commit's) beside this one, in the same rounds.
        baseline = os.environ.get("FERRY_BASELINE_BIN")
        if baseline:
            for model in ("churn", "risk"):
                runs[f"{model}/ferry-baseline"] = (
                    model, ferry_command(baseline, cfg, model, inputs[model],
                                         out(f"{model}-ferry-baseline")),
                    out(f"{model}-ferry-baseline"))
            runs["risk/ferry+script-baseline"] = (
                "risk", ferry_command(baseline, cfg, "risk_script", inputs["risk"],
                                      out("risk-ferry-script-baseline")),
                out("risk-ferry-script-baseline"))
        results = collections.defaultdict(list)
        for rnd in range(args.rounds):
            for name, (_, cmd, clear) in runs.items():
                if clear:
                    shutil.rmtree(clear, ignore_errors=True)
                wall, own, rss, cpu, _ = timed(cmd, tmp, name.replace("/", "-"))
                results[name].append((own if own is not None else wall, wall, rss, cpu))
            print(f"round {rnd + 1}/{args.rounds} done", flush=True)

        diff_churn = check_same(out("churn-ferry"), out("churn-pyarrow"), "churn")
        diff_risk = check_same(out("risk-ferry"), out("risk-pyarrow"), "risk")
        tf = read_dir(out("risk-ferry-tf"))
        assert tf.num_rows == rows and set(tf.column_names) >= {"decision", "score"}, tf.schema
        scripted = read_dir(out("risk-ferry-script"))
        assert scripted.num_rows == rows and {"decision", "amount"} <= set(scripted.column_names)

        print(f"load average after the rounds: {os.getloadavg()[0]:.1f}")
        med = {n: tuple(statistics.median(r[i] for r in rs) for i in range(4))
               for n, rs in results.items()}
        print()
        print(f"{rows} rows, {args.rounds} rounds (medians); seconds: ferry = its whole process, "
              "python = read to written (ort: sess.run only)")
        print("| run | seconds | rows/s | rows/s over rounds | peak RSS MiB | CPU s | "
              "ferry rows/s ÷ this |")
        print("|---|---|---|---|---|---|---|")
        for name, (secs, _, rss, cpu) in med.items():
            model = runs[name][0]
            ferry = med[f"{model}/ferry"][0]
            rates = sorted(rows / r[0] for r in results[name])
            print(f"| {name} | {secs:.3f} | {rows / secs:,.0f} | {rates[0]:,.0f}–{rates[-1]:,.0f} "
                  f"| {rss:.0f} | {cpu:.2f} | {secs / ferry:.2f} |")
        print()
        best = {n: min(r[0] for r in rs) for n, rs in results.items()}
        for how, t in (("median", {n: v[0] for n, v in med.items()}), ("best round", best)):
            c = (t["churn/pyarrow"] / t["churn/ferry"], t["churn/ort"] / t["churn/ferry"],
                 t["risk/pyarrow"] / t["risk/ferry"], t["risk/pyarrow"] / t["risk/ferry+tf"])
            print(f"{how:>10}: churn ferry ÷ pyarrow {c[0]:.2f}x (target ≥ 1.5x), ferry ÷ ORT "
                  f"alone {100 * c[1]:.0f}% (target ≥ 40%); risk ferry ÷ pyarrow {c[2]:.2f}x, "
                  f"with transforms (the script without) {c[3]:.2f}x")
        print(f"risk: ferry+tf ÷ ferry {med['risk/ferry'][0] / med['risk/ferry+tf'][0]:.2f}x (the "
              "model is a 3-input logistic regression: ORT alone is no ceiling there); "
              f"ferry+script ÷ ferry {med['risk/ferry'][0] / med['risk/ferry+script'][0]:.2f}x")
        print(f"outputs: labels equal to the pyarrow script's; probabilities within "
              f"{diff_churn:.1e} (churn), {diff_risk:.1e} (risk)")

        if args.profile:
            for label, endpoint, model in (("churn", "churn", "churn"),
                                           ("risk_tf", "risk_tf", "risk")):
                wall = med[f"{model}/ferry" + ("+tf" if endpoint == "risk_tf" else "")][1]
                print()
                print(profile(binary, cfg, endpoint, inputs[model], tmp, args.profile, wall,
                              label))


if __name__ == "__main__":
    main()
