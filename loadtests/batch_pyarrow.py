#!/usr/bin/env python3
"""The short pyarrow + onnxruntime batch scorer that `ferry batch` is measured against.

    python3 loadtests/batch_pyarrow.py churn MODEL_DIR INPUT.parquet OUTPUT.parquet
    python3 loadtests/batch_pyarrow.py risk  MODEL_DIR INPUT.parquet OUTPUT.parquet FEATURES_DIR

What a data engineer would write: read the whole file with pyarrow, build the model's input
matrix from the Arrow buffers (no pandas, no per-row Python), score it with onnxruntime in
65,536-row chunks, write `id` + typed `label` (int64) + `probabilities`
(fixed_size_list<float32, 2>) with write_table.
  churn  the input column `X` (list<float32> of 30) is the model input as it is;
  risk   each row's `user_id` is joined with the latest `user_stats` row of that user in the
         feature repo's offline Parquet files (defaults 0 for unknown users), then
         [visits_7d, spend_30d, amount] is the model input — the join ferry does from its
         in-process online store.
Prints one line `seconds=<read to written>` (imports and interpreter start excluded, the
onnxruntime session creation included). loadtests/batch_bench.py runs it beside ferry.
"""
import os
import sys
import time

import numpy as np
import onnxruntime
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CHUNK = 65_536


def churn_inputs(table):
    x = table.column("X").combine_chunks()
    return x.flatten().to_numpy().reshape(len(table), -1)


def risk_inputs(table, features_dir):
    stats = pq.read_table(os.path.join(features_dir, "user_stats"))
    # The online value of a feature is its latest offline value (per user, by event time).
    latest = stats.sort_by([("user_id", "ascending"), ("event_ts", "descending")])
    first = np.ones(len(latest), dtype=bool)
    users = latest.column("user_id").to_numpy(zero_copy_only=False)
    first[1:] = users[1:] != users[:-1]
    latest = latest.filter(pa.array(first))
    at = pc.index_in(table.column("user_id"), value_set=latest.column("user_id"))
    columns = [pc.fill_null(pc.take(latest.column(f), at), 0.0).to_numpy(zero_copy_only=False)
               for f in ("visits_7d", "spend_30d")]
    columns.append(table.column("amount").to_numpy())
    return np.column_stack(columns).astype(np.float32)


def main():
    kind, model_dir, inp, out = sys.argv[1:5]
    started = time.perf_counter()
    table = pq.read_table(inp)
    x = churn_inputs(table) if kind == "churn" else risk_inputs(table, sys.argv[5])
    sess = onnxruntime.InferenceSession(os.path.join(model_dir, "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    labels, probas = [], []
    for i in range(0, len(x), CHUNK):
        label, proba = sess.run(None, {"X": x[i:i + CHUNK]})
        labels.append(label)
        probas.append(proba)
    proba = np.concatenate(probas)
    pq.write_table(pa.table({
        "id": table.column("id"),
        "label": pa.array(np.concatenate(labels), pa.int64()),
        "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(proba.reshape(-1)), 2),
    }), out)
    print(f"seconds={time.perf_counter() - started:.4f}")


if __name__ == "__main__":
    main()
