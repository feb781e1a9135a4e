#!/usr/bin/env python3
"""Build the embedded demo's feature store and the model that uses it.

Writes, with fixed seeds:
  <registry>/risk/1     LogisticRegression over [user_stats.visits_7d, user_stats.spend_30d,
                        request.amount] (skl2onnx, zipmap=False) whose model.yaml has a
                        `features` section (entity user_id)
  <features>/features.yaml          project `demo`, entity `user`, view `user_stats`
  <features>/user_stats/part-0.parquet   offline rows for users u1..u20 (several per user)

`ferry serve` without a config serves this as endpoint `risk`, with features from an
in-process store loaded from the Parquet file (no Redis needed). The end-to-end tests call
`build()` to make the same layout in a temporary directory.

Usage: python3 scripts/make_demo_features.py [REGISTRY_DIR FEATURES_DIR]
       (default: server/demo/registry server/demo/features)
"""
import hashlib
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

SEED = 20261122
COLUMNS = ["user_stats.visits_7d", "user_stats.spend_30d", "request.amount"]
FEATURES_YAML = """\
# The demo feature repo (DESIGN.md "Feature format"). Written by scripts/make_demo_features.py.
project: demo
entities:
  - {name: user, join_key: user_id, dtype: string}
views:
  - name: user_stats
    entity: user
    features:
      - {name: visits_7d, dtype: float32, default: 0}
      - {name: spend_30d, dtype: float32, default: 0}
    source: {path: user_stats/, format: parquet, timestamp: event_ts}
"""
# 2026-01-01T00:00:00Z in Unix milliseconds; offline rows are spread over the following days.
BASE_MS = 1767225600000
DAY_MS = 86400000


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def train():
    rng = np.random.default_rng(SEED)
    x = np.column_stack([rng.poisson(5, 2000), rng.gamma(2.0, 50.0, 2000),
                         rng.gamma(2.0, 20.0, 2000)]).astype(np.float32)
    logit = -0.3 * x[:, 0] + 0.01 * x[:, 1] + 0.03 * x[:, 2] - 1.0
    y = (rng.random(2000) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    model = LogisticRegression(max_iter=500).fit(x, y)
    return to_onnx(model, x[:1], options={id(model): {"zipmap": False}},
                   target_opset={"": 17, "ai.onnx.ml": 3})


def offline_rows():
    rng = np.random.default_rng(SEED + 1)
    users, ts, visits, spend = [], [], [], []
    for u in range(1, 21):
        for day in range(3):
            users.append(f"u{u}")
            ts.append(BASE_MS + day * DAY_MS + u * 1000)
            visits.append(float(rng.integers(0, 15)))
            spend.append(round(float(rng.gamma(2.0, 50.0)), 2))
    return pa.table({
        "user_id": pa.array(users, pa.string()),
        "event_ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "visits_7d": pa.array(visits, pa.float32()),
        "spend_30d": pa.array(spend, pa.float32()),
    })


def build(registry, features, name="risk", version=1):
    vdir = os.path.join(registry, name, str(version))
    os.makedirs(vdir, exist_ok=True)
    artifact = os.path.join(vdir, "model.onnx")
    with open(artifact, "wb") as f:
        f.write(train().SerializeToString())
    manifest = {
        "name": name, "version": version, "format": "onnx", "artifact": "model.onnx",
        "sha256": sha256(artifact),
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, len(COLUMNS)]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
        "features": {"entity": "user_id", "columns": COLUMNS},
        "metadata": {"seed": SEED, "script": "scripts/make_demo_features.py"},
    }
    with open(os.path.join(vdir, "model.yaml"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.makedirs(os.path.join(features, "user_stats"), exist_ok=True)
    with open(os.path.join(features, "features.yaml"), "w") as f:
        f.write(FEATURES_YAML)
    pq.write_table(offline_rows(), os.path.join(features, "user_stats", "part-0.parquet"),
                   compression="snappy")


if __name__ == "__main__":
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server", "demo")
    registry = sys.argv[1] if len(sys.argv) > 2 else os.path.join(here, "registry")
    features = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "features")
    build(registry, features)
