#!/usr/bin/env python3
"""Build the test registry and the reference outputs that ferry's tests compare against.

Usage: python3 tests/py/make_fixtures.py OUT_DIR

Writes OUT_DIR/registry (DESIGN.md artifact layout) and OUT_DIR/reference.json. Every expected
value in reference.json is computed here, at test time, by Python onnxruntime (and scikit-learn's
predict_proba for the forest), never copied from ferry's own output.

Models:
  churn@1 (alias champion)  RandomForestClassifier, 30 features, skl2onnx zipmap=False
  mlp@1                     MLPRegressor 64 -> 256 -> 256 -> 1
  boosted@1                 GradientBoostingClassifier (binary): a two-class tree ensemble with
                            one base value, which tract alone refuses (ferry rewrites it)
  dtypes@1                  hand-built graph over FP64, INT32, INT64 and BOOL inputs
  scaled@1                  StandardScaler + LogisticRegression: the ONNX-ML `Scaler` and
                            `LinearClassifier` operators (ferry rewrites Scaler for tract)
  svr@1                     SVR: the ONNX-ML `SVMRegressor` operator, which tract lacks (must be
                            refused at load by tract)
  corrupt@1                 a valid model whose manifest digest does not match the artifact
"""
import hashlib
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

SEED = 7
DTYPE_NAMES = {np.float32: "FP32", np.float64: "FP64", np.int32: "INT32", np.int64: "INT64",
               np.bool_: "BOOL"}


def datatype(arr):
    for t, n in DTYPE_NAMES.items():
        if arr.dtype == t:
            return n
    raise ValueError(arr.dtype)


def tensor_json(name, arr):
    data = arr.reshape(-1).tolist()
    return {"name": name, "datatype": datatype(arr), "shape": list(arr.shape), "data": data}


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_version(root, name, version, model_bytes, inputs, outputs, digest=None):
    vdir = os.path.join(root, name, str(version))
    os.makedirs(vdir, exist_ok=True)
    path = os.path.join(vdir, "model.onnx")
    with open(path, "wb") as f:
        f.write(model_bytes)
    manifest = {"name": name, "version": version, "format": "onnx", "artifact": "model.onnx",
                "sha256": digest or sha256_file(path), "inputs": inputs, "outputs": outputs,
                "metadata": {"source": "tests/py/make_fixtures.py"}}
    with open(os.path.join(vdir, "model.yaml"), "w") as f:
        json.dump(manifest, f, indent=2)


def spec(name, dt, shape):
    return {"name": name, "datatype": dt, "shape": shape}


def run_ort(model_bytes, feeds):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [tensor_json(n, np.asarray(v)) for n, v in zip(names, sess.run(names, feeds))]


def main():
    out = sys.argv[1]
    reg = os.path.join(out, "registry")
    rng = np.random.default_rng(SEED)
    cases, refused, corrupt = [], [], []

    # Tree ensemble, like the demo model.
    x, y = make_classification(n_samples=600, n_features=30, n_informative=10, random_state=SEED)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=15, max_depth=5, random_state=SEED).fit(x, y)
    onx = to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()
    write_version(reg, "churn", 1, onx, [spec("X", "FP32", [-1, 30])],
                  [spec("label", "INT64", [-1]), spec("probabilities", "FP32", [-1, 2])])
    os.makedirs(os.path.join(reg, "churn", "aliases"), exist_ok=True)
    with open(os.path.join(reg, "churn", "aliases", "champion"), "w") as f:
        f.write("1\n")
    xt = rng.normal(size=(7, 30)).astype(np.float32) * 2
    cases.append({"model": "churn", "version": 1, "engines": ["ort", "tract"],
                  "inputs": [tensor_json("X", xt)],
                  "outputs": run_ort(onx, {"X": xt}),
                  "sklearn_predict_proba": forest.predict_proba(xt).reshape(-1).tolist()})

    # Gradient boosting, binary: one base value for two classes, margins through LOGISTIC.
    xg, yg = x[:, :8], y
    boosted = GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=SEED)
    boosted.fit(xg, yg)
    onx = to_onnx(boosted, xg[:1], options={id(boosted): {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()
    write_version(reg, "boosted", 1, onx, [spec("X", "FP32", [-1, 8])],
                  [spec("label", "INT64", [-1]), spec("probabilities", "FP32", [-1, 2])])
    xt = rng.normal(size=(9, 8)).astype(np.float32)
    cases.append({"model": "boosted", "version": 1, "engines": ["ort", "tract"],
                  "inputs": [tensor_json("X", xt)],
                  "outputs": run_ort(onx, {"X": xt}),
                  "sklearn_predict_proba": boosted.predict_proba(xt).reshape(-1).tolist()})

    # MLP 64 -> 256 -> 256 -> 1.
    xr, yr = make_regression(n_samples=400, n_features=64, random_state=SEED)
    xr = xr.astype(np.float32)
    mlp = MLPRegressor(hidden_layer_sizes=(256, 256), max_iter=5, random_state=SEED).fit(xr, yr)
    onx = to_onnx(mlp, xr[:1], target_opset=17).SerializeToString()
    write_version(reg, "mlp", 1, onx, [spec("X", "FP32", [-1, 64])],
                  [spec("variable", "FP32", [-1, 1])])
    xt = rng.normal(size=(5, 64)).astype(np.float32)
    cases.append({"model": "mlp", "version": 1, "engines": ["ort", "tract"],
                  "inputs": [tensor_json("X", xt)], "outputs": run_ort(onx, {"X": xt})})

    # Datatypes: FP64, INT32, INT64, BOOL in and out.
    g = helper.make_graph(
        [helper.make_node("Mul", ["f64", "two"], ["f64_out"]),
         helper.make_node("Add", ["i32", "one32"], ["i32_out"]),
         helper.make_node("Add", ["i64", "one64"], ["i64_out"]),
         helper.make_node("Not", ["flag"], ["flag_out"])],
        "dtypes",
        [helper.make_tensor_value_info("f64", TensorProto.DOUBLE, ["N", 3]),
         helper.make_tensor_value_info("i32", TensorProto.INT32, ["N", 2]),
         helper.make_tensor_value_info("i64", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N", 2])],
        [helper.make_tensor_value_info("f64_out", TensorProto.DOUBLE, ["N", 3]),
         helper.make_tensor_value_info("i32_out", TensorProto.INT32, ["N", 2]),
         helper.make_tensor_value_info("i64_out", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("flag_out", TensorProto.BOOL, ["N", 2])],
        [helper.make_tensor("two", TensorProto.DOUBLE, [], [2.0]),
         helper.make_tensor("one32", TensorProto.INT32, [], [1]),
         helper.make_tensor("one64", TensorProto.INT64, [], [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onx = m.SerializeToString()
    write_version(reg, "dtypes", 1, onx,
                  [spec("f64", "FP64", [-1, 3]), spec("i32", "INT32", [-1, 2]),
                   spec("i64", "INT64", [-1]), spec("flag", "BOOL", [-1, 2])],
                  [spec("f64_out", "FP64", [-1, 3]), spec("i32_out", "INT32", [-1, 2]),
                   spec("i64_out", "INT64", [-1]), spec("flag_out", "BOOL", [-1, 2])])
    feeds = {"f64": rng.normal(size=(4, 3)),
             "i32": rng.integers(-1000, 1000, size=(4, 2), dtype=np.int32),
             "i64": rng.integers(-2**40, 2**40, size=(4,), dtype=np.int64),
             "flag": rng.integers(0, 2, size=(4, 2)).astype(np.bool_)}
    cases.append({"model": "dtypes", "version": 1, "engines": ["ort", "tract"],
                  "inputs": [tensor_json(k, v) for k, v in feeds.items()],
                  "outputs": run_ort(onx, feeds)})

    # Scaler (ONNX-ML), which tract lacks and ferry rewrites into Sub/Mul for it.
    xs, ys = make_classification(n_samples=300, n_features=4, random_state=SEED)
    xs = xs.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(xs, ys)
    onx = to_onnx(pipe, xs[:1], options={"zipmap": False},
                  target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()
    ops = {n.op_type for n in onnx.load_from_string(onx).graph.node}
    assert "Scaler" in ops, ops
    write_version(reg, "scaled", 1, onx, [spec("X", "FP32", [-1, 4])],
                  [spec("label", "INT64", [-1]), spec("probabilities", "FP32", [-1, 2])])
    xt = rng.normal(size=(3, 4)).astype(np.float32)
    cases.append({"model": "scaled", "version": 1, "engines": ["ort", "tract"],
                  "inputs": [tensor_json("X", xt)], "outputs": run_ort(onx, {"X": xt})})

    # SVMRegressor (ONNX-ML), which tract does not implement: ort serves it, tract must refuse it.
    svr = SVR(C=2.0).fit(xs[:80], ys[:80].astype(np.float32))
    onx = to_onnx(svr, xs[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()
    ops = {n.op_type for n in onnx.load_from_string(onx).graph.node}
    assert "SVMRegressor" in ops, ops
    write_version(reg, "svr", 1, onx, [spec("X", "FP32", [-1, 4])],
                  [spec("variable", "FP32", [-1, 1])])
    cases.append({"model": "svr", "version": 1, "engines": ["ort"],
                  "inputs": [tensor_json("X", xt)], "outputs": run_ort(onx, {"X": xt})})
    refused.append({"model": "svr", "version": 1, "engine": "tract", "operator": "SVMRegressor"})

    # Digest mismatch: a working model whose manifest lists another digest.
    corrupt_bytes = bytearray(open(os.path.join(reg, "mlp", "1", "model.onnx"), "rb").read())
    write_version(reg, "corrupt", 1, bytes(corrupt_bytes), [spec("X", "FP32", [-1, 64])],
                  [spec("variable", "FP32", [-1, 1])], digest="0" * 64)
    corrupt.append({"model": "corrupt", "version": 1})

    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"cases": cases, "refused": refused, "corrupt": corrupt}, f)


if __name__ == "__main__":
    main()
