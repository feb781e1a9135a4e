"""The `trees` engine serves XGBoost and LightGBM models from their own files, through the real
binary over HTTP (OIP v2, binary tensors: the rows carry NaN), and answers what the libraries'
own `predict` / `predict_proba` answer on the same rows.

Models are trained here with fixed seeds on random data with ~10% missing values and published
with `ferry models push` from a directory holding only the model file (the manifest is filled
from it). scikit-learn tree ensembles exported by skl2onnx (`zipmap=False`) are served from their
ONNX files under `onnx_engine: auto`, which must pick the trees engine for them with and without
ONNX Runtime loaded, and answer what Python onnxruntime answers. Probabilities within 1e-5 absolute; regression outputs within 1e-5 relative; labels
equal. Refusals (a corrupted file, an unsupported objective, a linear_tree model) must fail the
load with a reason naming the file and the cause, while the previous version keeps serving.
"""
import hashlib
import json
import os
import re
import subprocess
import time
import warnings

import lightgbm
import numpy as np
import onnxruntime
import pytest
import requests
import tritonclient.http as httpclient
import xgboost
import yaml
from skl2onnx import to_onnx
from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier,
                              GradientBoostingRegressor, HistGradientBoostingClassifier,
                              HistGradientBoostingRegressor, RandomForestClassifier,
                              RandomForestRegressor)
from sklearn.linear_model import LogisticRegression

from conftest import FerryServer, ferry_bin

N_ROWS = 10_000
N_FEATURES = 8
CAT = 7            # LightGBM's categorical column (integer codes; NaN and negatives included)
ATOL = 1e-5
RTOL = 1e-5


def rows(seed, n, train=False):
    """~10% NaN. Training rows have none in column 6, so LightGBM gives its splits missing type
    None (NaN compared as 0); scored rows have NaN there, and exact zeros everywhere (missing
    type Zero, `zero_as_missing`)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    X[:, CAT] = rng.integers(0, 12, size=n)
    missing = rng.random(X.shape) < 0.1
    if train:
        missing[:, 6] = False
    else:
        X[rng.random(X.shape) < 0.05] = 0.0
    X[missing] = np.nan
    return X


def targets(X, seed):
    rng = np.random.default_rng(seed)
    z = np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) ** 2 \
        + np.isin(X[:, CAT], [1, 4, 7]) - 0.5 + rng.normal(scale=0.5, size=len(X))
    return {
        "binary": (z > 0).astype(int),
        "multi": np.digitize(z, [-0.5, 0.5]),
        "real": z,
        "unit": 1 / (1 + np.exp(-z)),
        "count": rng.poisson(np.exp(np.clip(z, -2, 2) / 2)),
    }


def softmax(m):
    e = np.exp(m - m.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# name -> (objective, target, file). Classifiers answer label + probabilities, the rest
# predictions (binary:logitraw: the raw margin, as XGBoost's predict returns it).
XGB = {
    "xgb-logistic": ("binary:logistic", "binary", "model.json"),
    "xgb-logistic-ubj": ("binary:logistic", "binary", "model.ubj"),
    "xgb-logitraw": ("binary:logitraw", "binary", "model.json"),
    "xgb-softprob": ("multi:softprob", "multi", "model.ubj"),
    "xgb-softmax": ("multi:softmax", "multi", "model.json"),
    "xgb-squarederror": ("reg:squarederror", "real", "model.json"),
    "xgb-reglogistic": ("reg:logistic", "unit", "model.json"),
    "xgb-poisson": ("count:poisson", "count", "model.json"),
}
LGB = {
    "lgb-binary": ("binary", "binary"),
    "lgb-multiclass": ("multiclass", "multi"),
    "lgb-regression": ("regression", "real"),       # zero_as_missing

    "lgb-poisson": ("poisson", "count"),
}


def train_xgboost(objective, y, X):
    params = {"objective": objective, "max_depth": 5, "eta": 0.3, "seed": 0, "nthread": 1}
    if objective.startswith("multi:"):
        params["num_class"] = 3
    return xgboost.train(params, xgboost.DMatrix(X, label=y), num_boost_round=30)


def xgboost_reference(booster, objective, X):
    d = xgboost.DMatrix(X)
    pred = booster.predict(d)
    if objective == "binary:logistic":
        return {"label": (pred > 0.5).astype(np.int64),
                "probabilities": np.stack([1 - pred, pred], axis=1)}
    if objective == "multi:softprob":
        return {"label": pred.argmax(axis=1), "probabilities": pred}
    if objective == "multi:softmax":
        return {"label": pred.astype(np.int64),
                "probabilities": softmax(booster.predict(d, output_margin=True).astype(np.float64))}
    return {"predictions": pred.reshape(-1, 1)}


def train_lightgbm(objective, y, X):
    params = dict(objective=objective, n_estimators=30, num_leaves=15, random_state=0,
                  n_jobs=1, verbose=-1, min_child_samples=10, cat_smooth=1,
                  min_data_per_group=10)
    if objective == "regression":
        params["zero_as_missing"] = True
    if objective in ("binary", "multiclass"):
        model = lightgbm.LGBMClassifier(**params)
    else:
        model = lightgbm.LGBMRegressor(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y, categorical_feature=[CAT])
    return model


def lightgbm_reference(model, X):
    if isinstance(model, lightgbm.LGBMClassifier):
        return {"label": model.predict(X).astype(np.int64), "probabilities": model.predict_proba(X)}
    return {"predictions": model.predict(X).reshape(-1, 1)}


def push(registry, src, name):
    r = subprocess.run([ferry_bin(), "models", "--registry", registry, "push", src, "--name", name],
                       capture_output=True, text=True, timeout=120)
    return r


def write_version(registry, name, version, files, manifest):
    """A version written by hand (push refuses broken files), digests as push computes them."""
    d = os.path.join(registry, name, str(version))
    os.makedirs(d)
    for fname, data in files.items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data)
    manifest = dict(manifest, name=name, version=version,
                    sha256=hashlib.sha256(files[manifest["artifact"]]).hexdigest())
    with open(os.path.join(d, "model.yaml"), "w") as f:
        yaml.safe_dump(manifest, f)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    work = tmp_path_factory.mktemp("trees")
    registry = str(work / "registry")
    os.makedirs(registry)
    X_train = rows(1, 3000, train=True)
    ys = targets(X_train, 2)
    X = rows(3, N_ROWS)
    X[:50, CAT] = -1.0           # negative categories go right in LightGBM
    X[50:60, CAT] = 2.7          # and fractional ones truncate
    cases = {}
    for name, (objective, target, fname) in XGB.items():
        booster = train_xgboost(objective, ys[target], X_train)
        src = work / name
        os.makedirs(src)
        booster.save_model(str(src / fname))
        cases[name] = xgboost_reference(booster, objective, X)
        r = push(registry, str(src), name)
        assert r.returncode == 0, f"push {name}: {r.stdout}\n{r.stderr}"
        assert "Filled" in r.stdout, r.stdout
    for name, (objective, target) in LGB.items():
        model = train_lightgbm(objective, ys[target], X_train)
        src = work / name
        os.makedirs(src)
        model.booster_.save_model(str(src / "model.txt"))
        cases[name] = lightgbm_reference(model, X)
        if name == "lgb-binary":
            # A manifest with metadata only: push keeps it and fills in the rest.
            with open(src / "model.yaml", "w") as f:
                f.write("metadata: {team: risk}\n")
        r = push(registry, str(src), name)
        assert r.returncode == 0, f"push {name}: {r.stdout}\n{r.stderr}"
    for name in ("lgb-binary", "lgb-multiclass"):
        text = open(work / name / "model.txt").read()
        assert re.search(r"^num_cat=[1-9]", text, re.M), f"{name} has no categorical split"
    missing_types = {
        name: {(int(d) >> 2) & 3 for line in re.findall(r"^decision_type=(.*)$",
                                                         open(work / name / "model.txt").read(), re.M)
               for d in line.split() if not int(d) & 1}
        for name in LGB}
    assert 0 in missing_types["lgb-binary"], missing_types     # None
    assert 2 in missing_types["lgb-binary"], missing_types     # NaN
    assert 1 in missing_types["lgb-regression"], missing_types  # Zero
    return {"registry": registry, "work": work, "X": X, "cases": cases}


@pytest.fixture(scope="module")
def server(zoo, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ferry-trees")
    models = [f"{n}@1" for n in zoo["cases"]]
    srv = FerryServer(workdir, {"registry": {"uri": zoo["registry"]}, "models": models}, "trees")
    srv.start()
    try:
        srv.wait_ready()
        yield srv
    except BaseException:
        srv.kill()
        raise
    srv.stop()


def infer(srv, model, X, outputs):
    inp = httpclient.InferInput("X", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=True)
    out = [httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs]
    result = srv.triton.infer(model, [inp], outputs=out)
    return {o: result.as_numpy(o) for o in outputs}


@pytest.mark.parametrize("model", list(XGB) + list(LGB))
def test_trees_equal_the_library(server, zoo, model):
    expected = zoo["cases"][model]
    got = infer(server, model, zoo["X"], list(expected))
    for name, want in expected.items():
        have = got[name]
        assert have.shape == want.shape, f"{model} {name}: {have.shape} vs {want.shape}"
        if name == "label":
            assert have.dtype == np.int64
            bad = np.flatnonzero(have != want)
            assert bad.size == 0, f"{model}: labels differ at rows {bad[:10]}"
        elif name == "probabilities":
            err = np.abs(have.astype(np.float64) - want)
            assert err.max() <= ATOL, f"{model}: max |diff| {err.max()} at row {err.max(axis=1).argmax()}"
        else:
            np.testing.assert_allclose(have, want, rtol=RTOL, atol=ATOL, err_msg=model)


@pytest.mark.parametrize("model", ["xgb-logistic", "lgb-binary"])
def test_missing_values_in_parquet_and_json_rows_equal_the_library(server, zoo, model, tmp_path):
    """Missing values as users' files and JSON hold them: NaN and null in a Parquet list column
    (`ferry batch`, column-wise into Parquet and through JSON rows into JSON Lines) and null in
    v1 `instances` (JSON has no NaN) reach the model as NaN and answer what the library
    answers for NaN; no row is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    X, want = zoo["X"], zoo["cases"][model]
    n = 3000
    flat = pa.array(X[:n].reshape(-1), mask=np.isnan(X[:n].reshape(-1)) & (np.arange(n * N_FEATURES) % 2 == 0))
    column = pa.FixedSizeListArray.from_arrays(flat, N_FEATURES).cast(pa.list_(pa.float32()))
    assert column.flatten().null_count > 0 and np.isnan(column.flatten().to_numpy(zero_copy_only=False)).sum() > 0
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"id": pa.array(np.arange(n)), "X": column}), inp / "rows.parquet")
    cfg = tmp_path / "ferry.json"
    cfg.write_text(json.dumps({"registry": {"uri": zoo["registry"]},
                               "endpoints": [{"name": "scored", "variants": [
                                   {"name": "main", "model": f"{model}@1"}]}]}))
    for fmt, path in (("parquet", "column-wise"), ("jsonl", "JSON rows")):
        out = tmp_path / f"out-{fmt}"
        r = subprocess.run([ferry_bin(), "batch", "--config", str(cfg), "--endpoint", "scored",
                            "--input", str(inp), "--output", str(out), "--id-columns", "id",
                            "--chunk-rows", "1000", "--format", fmt],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"{n} rows read, {n} scored, 0 failed" in r.stdout, r.stdout
        columnar = int(re.search(r"(\d+) of \d+ scored rows went column-wise", r.stdout).group(1))
        assert (columnar == n) if path == "column-wise" else (columnar == 0), r.stdout
        if fmt == "parquet":
            got = pq.read_table(str(out)).sort_by("id").to_pydict()
        else:
            lines = [json.loads(line) for line in open(out / "rows.jsonl")]
            got = {k: [row[k] for row in sorted(lines, key=lambda row: row["id"])]
                   for k in ("label", "probabilities")}
        np.testing.assert_array_equal(got["label"], want["label"][:n], err_msg=path)
        probs = np.array(got["probabilities"], dtype=np.float64)
        assert np.abs(probs - want["probabilities"][:n]).max() <= ATOL, path

    instances = [[None if np.isnan(v) else float(v) for v in row] for row in X[:200]]
    resp = server.post(f"/v1/models/{model}:predict", json={"instances": instances})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["label"] for p in preds] == want["label"][:200].tolist()
    assert np.abs(np.array([p["probabilities"] for p in preds])
                  - want["probabilities"][:200]).max() <= ATOL


def test_metadata_and_filled_manifest(server, zoo):
    meta = server.get("/v2/models/lgb-binary").json()
    assert meta["platform"] == "lightgbm_trees", meta
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, N_FEATURES]}], meta
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}, meta
    assert "trees" in json.dumps(meta.get("parameters", {})), meta
    manifest = yaml.safe_load(open(zoo["work"] / "lgb-binary" / "model.yaml"))
    assert manifest["format"] == "lightgbm" and manifest["artifact"] == "model.txt"
    assert manifest["metadata"]["team"] == "risk"
    assert len(manifest["metadata"]["feature_names"]) == N_FEATURES
    reg = yaml.safe_load(open(zoo["work"] / "xgb-poisson" / "model.yaml"))
    assert reg["format"] == "xgboost"
    assert reg["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [-1, 1]}]


def test_wrong_width_is_a_client_error(server):
    X = np.zeros((2, N_FEATURES + 1), dtype=np.float32)
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(X.shape),
                        "data": X.ravel().tolist()}]}
    r = server.post("/v2/models/xgb-logistic/infer", json=body)
    assert r.status_code == 400, r.text
    assert "X" in r.json()["error"], r.text


def test_push_refuses_a_file_it_cannot_read(zoo):
    src = zoo["work"] / "push-corrupt"
    os.makedirs(src)
    with open(src / "model.txt", "w") as f:
        f.write("tree\nversion=v4\nnum_class=1\n")
    r = push(zoo["registry"], str(src), "push-corrupt")
    assert r.returncode != 0
    assert "model.txt" in r.stderr and "LightGBM" in r.stderr, r.stderr


def test_refusals_name_the_cause_and_the_old_version_keeps_serving(zoo, tmp_path_factory):
    registry = zoo["registry"]
    X_train = rows(1, 500, train=True)
    ys = targets(X_train, 2)
    good = open(zoo["work"] / "xgb-logistic" / "model.json", "rb").read()
    bad = {}
    bad["corrupt"] = ({"model.json": good[: len(good) // 2]}, "xgboost", "model.json",
                      ["model.json", "XGBoost", "not valid JSON"])
    ranker = xgboost.train({"objective": "rank:pairwise", "max_depth": 2, "seed": 0},
                           xgboost.DMatrix(X_train, label=ys["binary"], group=[500]), 2)
    bad["objective"] = ({"model.json": bytes(ranker.save_raw("json"))}, "xgboost", "model.json",
                        ["model.json", "objective `rank:pairwise`"])
    linear = lightgbm.train({"objective": "regression", "linear_tree": True, "verbose": -1,
                             "num_leaves": 4, "seed": 0},
                            lightgbm.Dataset(np.nan_to_num(X_train), label=ys["real"]), 2)
    bad["linear"] = ({"model.txt": linear.model_to_string().encode()}, "lightgbm", "model.txt",
                     ["model.txt", "LightGBM", "linear_tree"])
    sig = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
           "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                       {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]}
    reg_sig = dict(sig, outputs=[{"name": "predictions", "datatype": "FP32", "shape": [-1, 1]}])
    # Version 1 of `refused` is good and aliased `prod`; versions 2-4 are the broken files.
    write_version(registry, "refused", 1, {"model.json": good},
                  dict(sig, format="xgboost", artifact="model.json"))
    for version, (files, fmt, artifact, _) in zip((2, 3, 4), bad.values()):
        write_version(registry, "refused", version, files,
                      dict(reg_sig if fmt == "lightgbm" else sig, format=fmt, artifact=artifact))
    os.makedirs(os.path.join(registry, "refused", "aliases"))
    alias = os.path.join(registry, "refused", "aliases", "prod")
    with open(alias, "w") as f:
        f.write("1\n")

    workdir = tmp_path_factory.mktemp("ferry-trees-refusals")
    srv = FerryServer(workdir, {"registry": {"uri": registry, "poll_interval": "300ms"},
                                "models": ["refused@prod", "refused@2", "refused@3", "refused@4"]},
                      "refusals")
    srv.start()
    try:
        states = srv.wait_settled([("refused", v) for v in ("1", "2", "3", "4")])
        assert states[("refused", "1")]["state"] == "READY", states
        for version, (_, _, _, words) in zip(("2", "3", "4"), bad.values()):
            entry = states[("refused", version)]
            assert entry["state"] == "UNAVAILABLE", entry
            for word in words:
                assert word in entry.get("reason", ""), (word, entry)
        X = rows(5, 20)
        before = infer(srv, "refused", X, ["probabilities"])["probabilities"]
        # Point the alias at a broken version: the load fails, version 1 keeps answering.
        with open(alias, "w") as f:
            f.write("3\n")
        time.sleep(2.0)
        after = infer(srv, "refused", X, ["probabilities"])["probabilities"]
        np.testing.assert_array_equal(before, after)
        r = srv.get("/v2/models/refused")
        assert r.status_code == 200 and "1" in r.json()["versions"], r.text
    except BaseException:
        srv.kill()
        raise
    srv.stop()


# ---------------------------------------------------------------------------------------------
# scikit-learn tree ensembles exported to ONNX, served on the trees engine by `auto`

ONNX_ROWS = 2_000
# name -> (estimator, target, NaN in the rows). Only HistGradientBoosting is given missing values:
# it is the estimator whose export carries their direction (nodes_missing_value_tracks_true).
SKL = {
    "onnx-rf-binary": (lambda: RandomForestClassifier(n_estimators=40, max_depth=8,
                                                      random_state=0), "binary", False),
    "onnx-rf-multi": (lambda: RandomForestClassifier(n_estimators=20, max_depth=8,
                                                     random_state=0), "multi", False),
    "onnx-et-binary": (lambda: ExtraTreesClassifier(n_estimators=40, max_depth=8,
                                                    random_state=0), "binary", False),
    "onnx-et-multi": (lambda: ExtraTreesClassifier(n_estimators=20, max_depth=8,
                                                   random_state=0), "multi", False),
    "onnx-gb-binary": (lambda: GradientBoostingClassifier(n_estimators=30, random_state=0),
                       "binary", False),
    "onnx-gb-exponential": (lambda: GradientBoostingClassifier(
        n_estimators=30, loss="exponential", random_state=0), "binary", False),
    "onnx-gb-multi": (lambda: GradientBoostingClassifier(n_estimators=20, random_state=0),
                      "multi", False),
    "onnx-hgb-binary": (lambda: HistGradientBoostingClassifier(max_iter=30, random_state=0),
                        "binary", True),
    "onnx-hgb-multi": (lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0),
                       "multi", True),
    "onnx-rf-regressor": (lambda: RandomForestRegressor(n_estimators=20, max_depth=8,
                                                        random_state=0), "real", False),
    "onnx-gb-regressor": (lambda: GradientBoostingRegressor(n_estimators=30, random_state=0),
                          "real", False),
    "onnx-hgb-regressor": (lambda: HistGradientBoostingRegressor(max_iter=30, random_state=0),
                           "real", True),
}
# Not tree graphs: `auto` serves them as before (tract without ONNX Runtime, ort with it).
OTHER = {
    "onnx-logreg": (lambda: LogisticRegression(max_iter=500), "binary", False, False),
    # ZipMap outputs (a sequence of maps): only ONNX Runtime serves them.
    "onnx-rf-zipmap": (lambda: RandomForestClassifier(n_estimators=5, random_state=0), "binary",
                       False, True),
}


@pytest.fixture(scope="module")
def skl_zoo(tmp_path_factory):
    work = tmp_path_factory.mktemp("skl-trees")
    registry = str(work / "registry")
    os.makedirs(registry)
    X_train = rows(11, 3000)
    ys = targets(X_train, 13)
    cases = {}
    entries = {n: (make, target, nan, False) for n, (make, target, nan) in SKL.items()}
    entries.update(OTHER)
    for name, (make, target, nan, zipmap) in entries.items():
        X_fit = X_train if nan else np.nan_to_num(X_train)
        estimator = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator.fit(X_fit, ys[target])
            options = {"zipmap": zipmap} if hasattr(estimator, "predict_proba") else None
            onx = to_onnx(estimator, X_fit[:1], options=options,
                          target_opset={"": 17, "ai.onnx.ml": 3})
        model = onx.SerializeToString()
        X = rows(14, ONNX_ROWS) if nan else np.nan_to_num(rows(14, ONNX_ROWS))
        sess = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        expected = dict(zip(names, sess.run(names, {"X": X})))
        # A ZipMap output (a sequence of maps) has no tensor type to declare: list the label.
        outputs = [{"name": o.name, "datatype": "INT64" if o.type == "tensor(int64)" else "FP32",
                    "shape": [-1] + list(expected[o.name].shape[1:])}
                   for o in sess.get_outputs() if o.type.startswith("tensor(")]
        write_version(registry, name, 1, {"model.onnx": model},
                      {"format": "onnx", "artifact": "model.onnx",
                       "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
                       "outputs": outputs})
        tracks = {i for n in onx.graph.node for a in n.attribute
                  if a.name == "nodes_missing_value_tracks_true" for i in a.ints}
        cases[name] = {"X": X, "expected": {k: v for k, v in expected.items()
                                            if isinstance(v, np.ndarray)},
                       "ops": {n.op_type for n in onx.graph.node}, "tracks": tracks}
    assert "ZipMap" in cases["onnx-rf-zipmap"]["ops"]
    # NaN rows take the direction HistGradientBoosting learnt for them, both ways.
    assert cases["onnx-hgb-binary"]["tracks"] == {0, 1}, cases["onnx-hgb-binary"]["tracks"]
    return {"registry": registry, "cases": cases}


def skl_server(skl_zoo, tmp_path_factory, with_ort):
    names = list(SKL) + (["onnx-rf-zipmap"] if with_ort else ["onnx-logreg"])
    config = {"registry": {"uri": skl_zoo["registry"]}, "models": [f"{n}@1" for n in names]}
    env = None if with_ort else {"FERRY_ORT_LIB": "/nonexistent/libonnxruntime.so"}
    tag = "with-ort" if with_ort else "no-ort"
    srv = FerryServer(tmp_path_factory.mktemp(f"ferry-skl-{tag}"), config, f"skl-{tag}", env=env)
    srv.start()
    try:
        srv.wait_ready()
    except BaseException:
        srv.kill()
        raise
    return srv


@pytest.fixture(scope="module", params=["no-ort", "with-ort"])
def auto_server(request, skl_zoo, tmp_path_factory):
    srv = skl_server(skl_zoo, tmp_path_factory, request.param == "with-ort")
    srv.with_ort = request.param == "with-ort"
    yield srv
    srv.stop()


@pytest.mark.parametrize("model", list(SKL))
def test_sklearn_onnx_trees_run_on_trees_and_equal_onnxruntime(auto_server, skl_zoo, model):
    meta = auto_server.get(f"/v2/models/{model}").json()
    assert meta["parameters"]["engine"] == "trees", meta
    assert meta["platform"] == "onnx_trees", meta
    case = skl_zoo["cases"][model]
    got = infer(auto_server, model, case["X"], list(case["expected"]))
    for name, want in case["expected"].items():
        have = got[name]
        assert have.shape == want.shape, f"{model} {name}: {have.shape} vs {want.shape}"
        if want.dtype == np.int64:
            bad = np.flatnonzero(have != want)
            assert bad.size == 0, f"{model}: labels differ at rows {bad[:10]}"
        elif name == "probabilities":
            err = np.abs(have.astype(np.float64) - want)
            assert err.max() <= ATOL, f"{model}: max |diff| {err.max()}"
        else:
            np.testing.assert_allclose(have, want, rtol=RTOL, atol=ATOL, err_msg=model)


def test_other_onnx_graphs_fall_back_to_what_auto_picked_before(auto_server, skl_zoo):
    if auto_server.with_ort:
        model, engine = "onnx-rf-zipmap", "ort"
    else:
        model, engine = "onnx-logreg", "tract"
    meta = auto_server.get(f"/v2/models/{model}").json()
    assert meta["parameters"]["engine"] == engine, meta
    assert meta["platform"] == "onnx_onnxv1", meta
