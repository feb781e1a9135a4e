#!/usr/bin/env python3
"""Build the embedded demo registry that `ferry serve` serves without a config.

Writes <out>/churn/1 (a scikit-learn random forest over 30 features, exported by skl2onnx
with ZipMap disabled: a TreeEnsembleClassifier), <out>/mlp/1 (an MLP regressor
64 -> 256 -> 256 -> 1) and the alias churn/aliases/champion -> 1, in the DESIGN.md artifact
layout. Seeds are fixed, so re-running gives the same models (byte-identical ONNX files for
the same scikit-learn/skl2onnx versions).

Usage: python3 scripts/make_demo_models.py [OUT_DIR]   (default: server/demo/registry)
"""
import hashlib
import json
import os
import sys

import numpy as np
import sklearn
import skl2onnx
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.neural_network import MLPRegressor

SEED = 20261122


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_version(root, name, version, onx, inputs, outputs, metadata):
    vdir = os.path.join(root, name, str(version))
    os.makedirs(vdir, exist_ok=True)
    artifact = os.path.join(vdir, "model.onnx")
    with open(artifact, "wb") as f:
        f.write(onx.SerializeToString())
    manifest = {
        "name": name,
        "version": version,
        "format": "onnx",
        "artifact": "model.onnx",
        "sha256": sha256(artifact),
        "inputs": inputs,
        "outputs": outputs,
        "metadata": metadata,
    }
    # JSON is valid YAML; it keeps this script free of a PyYAML dependency.
    with open(os.path.join(vdir, "model.yaml"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "server", "demo", "registry")
    lineage = {"sklearn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
               "seed": SEED, "script": "scripts/make_demo_models.py"}

    x, y = make_classification(n_samples=2000, n_features=30, n_informative=12,
                               random_state=SEED)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=SEED).fit(x, y)
    onx = to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    write_version(out, "churn", 1, onx,
                  [{"name": "X", "datatype": "FP32", "shape": [-1, 30]}],
                  [{"name": "label", "datatype": "INT64", "shape": [-1]},
                   {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
                  dict(lineage, training_data="make_classification(n=2000, features=30)",
                       train_accuracy=float(forest.score(x, y))))
    os.makedirs(os.path.join(out, "churn", "aliases"), exist_ok=True)
    with open(os.path.join(out, "churn", "aliases", "champion"), "w") as f:
        f.write("1\n")

    xr, yr = make_regression(n_samples=2000, n_features=64, random_state=SEED)
    xr = xr.astype(np.float32)
    mlp = MLPRegressor(hidden_layer_sizes=(256, 256), max_iter=30, random_state=SEED).fit(xr, yr)
    onx = to_onnx(mlp, xr[:1], target_opset=17)
    write_version(out, "mlp", 1, onx,
                  [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}],
                  [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}],
                  dict(lineage, training_data="make_regression(n=2000, features=64)"))


if __name__ == "__main__":
    main()
