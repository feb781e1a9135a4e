"""What users bring must work: scikit-learn (and LightGBM / XGBoost) models exported to ONNX load
and run on both ONNX engines, through the real binary over HTTP, and answer what Python
onnxruntime answers on the same inputs.

The zoo is trained here, at test time, with fixed seeds, and exported with the pinned skl2onnx /
onnxmltools (`zipmap=False`); every expected value comes from Python onnxruntime on the same
artifact. Labels must be equal; floats within ATOL / RTOL.

Models that an engine cannot serve by design are listed in REFUSED with a word that the refusal
reason must contain (README, "Engine choice", has the table).
"""
import json
import os
import warnings

import google.protobuf
import lightgbm
import numpy as np
import onnx
import onnxmltools
import onnxruntime
import pytest
import tritonclient.http as httpclient
import xgboost
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloatTensorType
from skl2onnx import to_onnx
from skl2onnx.common.data_types import StringTensorType
from sklearn.base import is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (ExtraTreesClassifier, ExtraTreesRegressor,
                              GradientBoostingClassifier, GradientBoostingRegressor,
                              HistGradientBoostingClassifier, HistGradientBoostingRegressor,
                              RandomForestClassifier, RandomForestRegressor)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (Binarizer, MinMaxScaler, Normalizer, OneHotEncoder,
                                   StandardScaler)
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

import conftest
from conftest import FerryServer, LOAD_TIMEOUT, infer_path
from make_fixtures import spec, write_version

SEED = 7
ATOL, RTOL = 1e-5, 1e-4
# `trees`: the native engine forced on every model; it takes the tree-ensemble graphs.
ENGINES = ["ort", "tract", "trees"]
N_FEATURES = 6
SKL_OPSET = {"": 17, "ai.onnx.ml": 3}
# onnxmltools 1.16 converts up to opset 15.
ML_OPSET = 15

# skl2onnx 1.20 writes Python bools into an int64 attribute of HistGradientBoosting trees, which
# protobuf 7 rejects; requirements.txt pins protobuf 6.
assert int(google.protobuf.__version__.split(".")[0]) < 7, \
    f"protobuf {google.protobuf.__version__}: pip install -r tests/py/requirements.txt"

ZOO = [
    "gb_binary", "gb_binary_exponential", "gb_multiclass", "gb_regressor",
    "rf_binary", "rf_multiclass", "rf_regressor",
    "et_classifier", "et_regressor",
    "dt_classifier", "dt_regressor",
    "hgb_binary", "hgb_multiclass", "hgb_regressor",
    "logreg_binary", "logreg_multiclass", "linear_regression", "ridge",
    "mlp_classifier", "mlp_binary",
    "pipe_standard_scaler", "pipe_minmax_scaler", "pipe_onehot", "pipe_imputer",
    "pipe_normalizer", "pipe_binarizer", "pipe_onehot_strings",
    "lgbm_binary", "lgbm_multiclass", "lgbm_regressor",
    "xgb_binary", "xgb_multiclass", "xgb_regressor",
] + [f"trees_{v}" for v in "abcdefghijklmnop"]

# Test rows with NaN (missing values): JSON cannot carry them, so only binary requests send them.
NAN_INPUTS = {"hgb_binary", "hgb_multiclass", "hgb_regressor", "pipe_imputer"}

# Models whose graph is one tree ensemble plus renames, casts and elementwise tails: the trees
# engine serves them, and `auto` picks it for them.
TREE_MODELS = [n for n in ZOO if n.split("_")[0] in
               ("gb", "rf", "et", "dt", "hgb", "lgbm", "xgb", "trees")]

# (model, engine) -> a word the UNAVAILABLE reason must contain.
REFUSED = {
    ("pipe_onehot_strings", "tract"): "BYTES",
    **{(n, "trees"): "tree-ensemble ONNX-ML" for n in ZOO if n not in TREE_MODELS},
}


# ---------------------------------------------------------------------------------------------
# the zoo


def _data(kind, seed=SEED):
    if kind == "binary":
        x, y = make_classification(n_samples=400, n_features=N_FEATURES, n_informative=4,
                                   random_state=seed)
    elif kind == "multiclass":
        x, y = make_classification(n_samples=450, n_features=N_FEATURES, n_informative=4,
                                   n_classes=3, random_state=seed)
    else:
        x, y = make_regression(n_samples=400, n_features=N_FEATURES, noise=5.0,
                               random_state=seed)
    return x.astype(np.float32), y


def _test_rows(x, nan=False):
    """Training rows (they sit on the trees' paths) and fresh rows, some far out."""
    rng = np.random.default_rng(SEED + 1)
    fresh = rng.normal(size=(10, x.shape[1])).astype(np.float32) * 2.0
    rows = np.concatenate([x[:6], fresh]).astype(np.float32)
    if nan:
        rows[1, 0] = np.nan
        rows[7, 2] = np.nan
        rows[9, :] = np.nan
    return rows


def _skl(estimator, kind, nan=False):
    x, y = _data(kind)
    if nan:
        x = x.copy()
        x[::7, 0] = np.nan
        x[3::11, 2] = np.nan
    estimator.fit(x, y)
    options = {"zipmap": False} if is_classifier(estimator) else None
    onx = to_onnx(estimator, x[:1], options=options, target_opset=SKL_OPSET)
    return onx.SerializeToString(), {"X": _test_rows(x, nan)}


def _onehot_numeric():
    # Columns 3 and 4 hold integer-valued category codes next to three numeric columns.
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    x[:, 3] = rng.integers(0, 4, size=400)
    x[:, 4] = rng.integers(0, 3, size=400)
    y = ((x[:, 0] + (x[:, 3] == 2) - (x[:, 4] == 1)) > 0.3).astype(np.int64)
    columns = ColumnTransformer([("num", StandardScaler(), [0, 1, 2]),
                                 ("cat", OneHotEncoder(handle_unknown="ignore"), [3, 4])])
    pipe = make_pipeline(columns, LogisticRegression()).fit(x, y)
    onx = to_onnx(pipe, x[:1], options={"zipmap": False}, target_opset=SKL_OPSET)
    test = x[:12].copy()
    test[5, 3] = 7.0  # a category never seen in training: all zeros
    return onx.SerializeToString(), {"X": test}


def _onehot_strings():
    rng = np.random.default_rng(SEED)
    cats = np.array(["red", "green", "blue", "grey"], dtype=object)
    x = cats[rng.integers(0, 4, size=(300, 1))]
    y = (x[:, 0] == "red").astype(np.int64) ^ (rng.random(300) < 0.1)
    pipe = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression()).fit(x, y)
    onx = to_onnx(pipe, initial_types=[("X", StringTensorType([None, 1]))],
                  options={"zipmap": False}, target_opset=SKL_OPSET)
    return onx.SerializeToString(), {"X": x[:8]}


def _lgbm(estimator, kind):
    x, y = _data(kind)
    estimator.fit(x, y)
    extra = {"zipmap": False} if kind != "regression" else {}
    onx = onnxmltools.convert_lightgbm(
        estimator, initial_types=[("X", MLFloatTensorType([None, N_FEATURES]))],
        target_opset=ML_OPSET, **extra)
    return onx.SerializeToString(), {"X": _test_rows(x)}


def _xgb(estimator, kind):
    x, y = _data(kind)
    estimator.fit(x, y)
    onx = onnxmltools.convert_xgboost(
        estimator, initial_types=[("X", MLFloatTensorType([None, N_FEATURES]))],
        target_opset=ML_OPSET)
    return onx.SerializeToString(), {"X": _test_rows(x)}


# Hand-made tree ensembles for the attribute combinations onnxruntime treats specially (two
# classes voting through one or both classes, one or two base values, all-positive weights,
# labels other than 0/1, classes no leaf votes for, averaged multi-target regression).
# (classes, voted class ids, all weights positive, base_values, post_transform, labels)
TREE_VARIANTS = {
    "a": (2, [0], False, [0.2, -0.4], "LOGISTIC", None),
    "b": (2, [0], False, [0.2, -0.4], "NONE", None),
    "c": (2, [0], True, [], "LOGISTIC", None),
    "d": (2, [0], False, [], "NONE", [3, 8]),
    "e": (2, [0, 1], False, [], "SOFTMAX", [3, 8]),
    "f": (2, [0, 1], False, [0.1], "LOGISTIC", None),
    "g": (2, [0, 1], True, [0.1, 0.2], "NONE", None),
    "h": (3, [0, 2], False, [], "NONE", None),
    "i": (3, [0, 1, 2], False, [0.1, 0.2, 0.3], "LOGISTIC", None),
    "l": (2, [0], True, [], "SOFTMAX", None),
    "m": (2, [0], False, [0.1], "SOFTMAX", None),
    "n": (2, [0], False, [0.2, -0.4], "SOFTMAX", None),
    "o": (2, [0], True, [0.3], "NONE", None),
    "p": (2, [0], True, [0.2, 0.4], "LOGISTIC", None),
}
# (targets, aggregate_function, base_values)
TREE_REGRESSOR_VARIANTS = {"j": (2, "AVERAGE", [1.0, 2.0]), "k": (1, "AVERAGE", [])}


def _tree_nodes():
    """Two stumps: x0 <= 0 and x1 < 0.5, each with two leaves (node ids 1 and 2)."""
    return {"nodes_treeids": [0, 0, 0, 1, 1, 1], "nodes_nodeids": [0, 1, 2, 0, 1, 2],
            "nodes_featureids": [0, 0, 0, 1, 0, 0],
            "nodes_modes": ["BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_LT", "LEAF", "LEAF"],
            "nodes_values": [0.0, 0.0, 0.0, 0.5, 0.0, 0.0],
            "nodes_truenodeids": [1, 0, 0, 1, 0, 0], "nodes_falsenodeids": [2, 0, 0, 2, 0, 0]}


def _tree_rows():
    rng = np.random.default_rng(SEED)
    rows = rng.normal(size=(14, 2)).astype(np.float32)
    rows[0] = [0.0, 0.5]  # on both thresholds
    rows[1] = [-0.0, 0.49]
    return rows


def _leaf_votes(voted, positive, prefix):
    rng = np.random.default_rng(len(voted) * 10 + positive)
    ids, trees, nodes, weights = [], [], [], []
    for tree in (0, 1):
        for leaf in (1, 2):
            for c in voted:
                ids.append(c)
                trees.append(tree)
                nodes.append(leaf)
                w = float(rng.uniform(0.05, 0.9))
                weights.append(w if positive or (leaf + c + tree) % 2 else -w)
    return {f"{prefix}_ids": ids, f"{prefix}_treeids": trees, f"{prefix}_nodeids": nodes,
            f"{prefix}_weights": weights}


def _tree_variant(key):
    x = onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [None, 2])
    if key in TREE_VARIANTS:
        classes, voted, positive, base, post, labels = TREE_VARIANTS[key]
        attrs = dict(_tree_nodes(), **_leaf_votes(voted, positive, "class"),
                     classlabels_int64s=labels or list(range(classes)), post_transform=post)
        if base:
            attrs["base_values"] = base
        node = onnx.helper.make_node("TreeEnsembleClassifier", ["X"], ["label", "probabilities"],
                                     domain="ai.onnx.ml", **attrs)
        outputs = [onnx.helper.make_tensor_value_info("label", onnx.TensorProto.INT64, [None]),
                   onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT,
                                                      [None, classes])]
    else:
        targets, aggregate, base = TREE_REGRESSOR_VARIANTS[key]
        attrs = dict(_tree_nodes(), **_leaf_votes(list(range(targets)), False, "target"),
                     n_targets=targets, aggregate_function=aggregate)
        if base:
            attrs["base_values"] = base
        node = onnx.helper.make_node("TreeEnsembleRegressor", ["X"], ["variable"],
                                     domain="ai.onnx.ml", **attrs)
        outputs = [onnx.helper.make_tensor_value_info("variable", onnx.TensorProto.FLOAT,
                                                      [None, targets])]
    graph = onnx.helper.make_graph([node], f"trees_{key}", [x], outputs)
    model = onnx.helper.make_model(graph, opset_imports=[
        onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), {"X": _tree_rows()}


def build(name):
    """(ONNX bytes, {input name: test array}) for one zoo entry."""
    s = SEED
    builders = {
        "gb_binary": lambda: _skl(GradientBoostingClassifier(n_estimators=20, random_state=s),
                                  "binary"),
        "gb_binary_exponential": lambda: _skl(GradientBoostingClassifier(
            loss="exponential", n_estimators=20, random_state=s), "binary"),
        "gb_multiclass": lambda: _skl(GradientBoostingClassifier(n_estimators=10, random_state=s),
                                      "multiclass"),
        "gb_regressor": lambda: _skl(GradientBoostingRegressor(n_estimators=20, random_state=s),
                                     "regression"),
        "rf_binary": lambda: _skl(RandomForestClassifier(n_estimators=10, max_depth=6,
                                                         random_state=s), "binary"),
        "rf_multiclass": lambda: _skl(RandomForestClassifier(n_estimators=10, max_depth=6,
                                                             random_state=s), "multiclass"),
        "rf_regressor": lambda: _skl(RandomForestRegressor(n_estimators=10, max_depth=6,
                                                           random_state=s), "regression"),
        "et_classifier": lambda: _skl(ExtraTreesClassifier(n_estimators=10, max_depth=6,
                                                           random_state=s), "multiclass"),
        "et_regressor": lambda: _skl(ExtraTreesRegressor(n_estimators=10, max_depth=6,
                                                         random_state=s), "regression"),
        "dt_classifier": lambda: _skl(DecisionTreeClassifier(max_depth=5, random_state=s),
                                      "multiclass"),
        "dt_regressor": lambda: _skl(DecisionTreeRegressor(max_depth=5, random_state=s),
                                     "regression"),
        "hgb_binary": lambda: _skl(HistGradientBoostingClassifier(max_iter=15, random_state=s),
                                   "binary", nan=True),
        "hgb_multiclass": lambda: _skl(HistGradientBoostingClassifier(max_iter=10,
                                                                      random_state=s),
                                       "multiclass", nan=True),
        "hgb_regressor": lambda: _skl(HistGradientBoostingRegressor(max_iter=15, random_state=s),
                                      "regression", nan=True),
        "logreg_binary": lambda: _skl(LogisticRegression(), "binary"),
        "logreg_multiclass": lambda: _skl(LogisticRegression(), "multiclass"),
        "linear_regression": lambda: _skl(LinearRegression(), "regression"),
        "ridge": lambda: _skl(Ridge(alpha=0.5), "regression"),
        "mlp_classifier": lambda: _skl(MLPClassifier(hidden_layer_sizes=(16,), max_iter=300,
                                                     random_state=s), "multiclass"),
        "mlp_binary": lambda: _skl(MLPClassifier(hidden_layer_sizes=(16,), max_iter=300,
                                                 random_state=s), "binary"),
        "pipe_standard_scaler": lambda: _skl(make_pipeline(StandardScaler(),
                                                           LogisticRegression()), "multiclass"),
        "pipe_minmax_scaler": lambda: _skl(make_pipeline(MinMaxScaler(), Ridge()), "regression"),
        "pipe_onehot": _onehot_numeric,
        "pipe_imputer": lambda: _skl(make_pipeline(SimpleImputer(), StandardScaler(),
                                                   LogisticRegression()), "binary", nan=True),
        "pipe_normalizer": lambda: _skl(make_pipeline(Normalizer(norm="l2"),
                                                      LogisticRegression()), "multiclass"),
        "pipe_binarizer": lambda: _skl(make_pipeline(Binarizer(threshold=0.3),
                                                     LogisticRegression()), "binary"),
        "pipe_onehot_strings": _onehot_strings,
        "lgbm_binary": lambda: _lgbm(lightgbm.LGBMClassifier(n_estimators=15, random_state=s,
                                                             verbose=-1), "binary"),
        "lgbm_multiclass": lambda: _lgbm(lightgbm.LGBMClassifier(n_estimators=10, random_state=s,
                                                                 verbose=-1), "multiclass"),
        "lgbm_regressor": lambda: _lgbm(lightgbm.LGBMRegressor(n_estimators=15, random_state=s,
                                                               verbose=-1), "regression"),
        "xgb_binary": lambda: _xgb(xgboost.XGBClassifier(n_estimators=15, max_depth=3,
                                                         random_state=s), "binary"),
        "xgb_multiclass": lambda: _xgb(xgboost.XGBClassifier(n_estimators=10, max_depth=3,
                                                             random_state=s), "multiclass"),
        "xgb_regressor": lambda: _xgb(xgboost.XGBRegressor(n_estimators=15, max_depth=3,
                                                           random_state=s), "regression"),
    }
    for key in list(TREE_VARIANTS) + list(TREE_REGRESSOR_VARIANTS):
        builders[f"trees_{key}"] = (lambda k: lambda: _tree_variant(k))(key)
    assert sorted(builders) == sorted(ZOO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return builders[name]()


DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
             np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(object): "BYTES"}


def _datatype(arr):
    return DATATYPES[np.asarray(arr).dtype]


class Zoo:
    def __init__(self, root):
        self.registry = os.path.join(root, "registry")
        self.inputs, self.expected, self.onnx_ops = {}, {}, {}
        for name in ZOO:
            model, feeds = build(name)
            sess = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            outputs = dict(zip(names, sess.run(names, feeds)))
            in_specs = [spec(k, _datatype(v), [-1] + list(v.shape[1:])) for k, v in feeds.items()]
            out_specs = [spec(k, _datatype(v), [-1] + list(v.shape[1:]))
                         for k, v in outputs.items()]
            write_version(self.registry, name, 1, model, in_specs, out_specs)
            self.inputs[name] = feeds
            self.expected[name] = outputs
            graph = onnx.load_from_string(model).graph
            self.onnx_ops[name] = sorted({n.op_type for n in graph.node})


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return Zoo(str(tmp_path_factory.mktemp("zoo")))


# Not `engine`/`model`: conftest deselects (engine, model) pairs of its own fixture suite.
@pytest.fixture(scope="module", params=ENGINES)
def engine_name(request):
    return request.param


@pytest.fixture(scope="module")
def zoo_server(engine_name, zoo, tmp_path_factory, ferry):
    config = {"registry": {"uri": zoo.registry}, "models": [f"{n}@1" for n in ZOO],
              "onnx_engine": engine_name}
    srv = FerryServer(tmp_path_factory.mktemp(f"ferry-zoo-{engine_name}"), config,
                      f"zoo-{engine_name}")
    try:
        srv.start()
        states = srv.wait_settled([(n, 1) for n in ZOO], timeout=LOAD_TIMEOUT * 2)
        srv.states = {name: states[(name, 1)] for name in ZOO}
        yield srv
    except BaseException:
        srv.kill()
        raise
    srv.stop()


# ---------------------------------------------------------------------------------------------
# comparisons


def _assert_matches(name, out_name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    label = f"{name}.{out_name}"
    assert got.shape == want.shape, f"{label}: shape {got.shape} != onnxruntime {want.shape}"
    if want.dtype.kind == "f":
        assert got.dtype.kind == "f", f"{label}: dtype {got.dtype}"
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   atol=ATOL, rtol=RTOL, err_msg=label)
    else:
        np.testing.assert_array_equal(got, want, err_msg=label)


def _triton_inputs(feeds):
    inputs = []
    for k, v in feeds.items():
        inp = httpclient.InferInput(k, list(v.shape), _datatype(v))
        inp.set_data_from_numpy(v, binary_data=True)
        inputs.append(inp)
    return inputs


@pytest.mark.parametrize("estimator", ZOO)
def test_zoo_model_loads_or_is_refused_with_reason(zoo_server, engine_name, estimator):
    state = zoo_server.states[estimator]
    refused = REFUSED.get((estimator, engine_name))
    if refused is None:
        assert state["state"] == "READY", \
            f"{estimator} on {engine_name}: {state.get('reason')!r}; log:\n{zoo_server.log()}"
    else:
        assert state["state"] == "UNAVAILABLE", f"{estimator} on {engine_name} was expected refused"
        assert refused in (state.get("reason") or ""), state


@pytest.mark.parametrize("estimator", ZOO)
def test_zoo_binary_request_matches_onnxruntime(zoo_server, zoo, engine_name, estimator):
    if (estimator, engine_name) in REFUSED:
        r = zoo_server.post(infer_path(estimator), json={"inputs": []})
        assert r.status_code == 503, r.text
        return
    assert zoo_server.states[estimator]["state"] == "READY", zoo_server.states[estimator]
    expected = zoo.expected[estimator]
    result = zoo_server.triton.infer(estimator, _triton_inputs(zoo.inputs[estimator]))
    for out_name, want in expected.items():
        _assert_matches(estimator, out_name, result.as_numpy(out_name), want)


@pytest.mark.parametrize("estimator", [m for m in ZOO if m not in NAN_INPUTS])
def test_zoo_json_request_matches_onnxruntime(zoo_server, zoo, engine_name, estimator):
    feeds = zoo.inputs[estimator]
    assert not any(v.dtype.kind == "f" and np.isnan(v).any() for v in feeds.values()), estimator
    if (estimator, engine_name) in REFUSED:
        r = zoo_server.post(infer_path(estimator), json={"inputs": []})
        assert r.status_code == 503, r.text
        return
    body = {"inputs": [{"name": k, "datatype": _datatype(v), "shape": list(v.shape),
                        "data": v.reshape(-1).tolist()} for k, v in feeds.items()]}
    r = zoo_server.post(infer_path(estimator), json=body)
    assert r.status_code == 200, r.text
    got = {o["name"]: o for o in r.json()["outputs"]}
    for out_name, want in zoo.expected[estimator].items():
        o = got[out_name]
        dtype = np.object_ if o["datatype"] == "BYTES" else \
            {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64,
             "INT32": np.int32}[o["datatype"]]
        _assert_matches(estimator, out_name, np.array(o["data"], dtype=dtype).reshape(o["shape"]),
                        want)


def test_zoo_covers_the_onnx_ml_operators(zoo):
    """The zoo exercises the ONNX-ML operators ferry rewrites for tract (so a converter change
    that stops emitting one is noticed)."""
    seen = set().union(*zoo.onnx_ops.values())
    for op in ["TreeEnsembleClassifier", "TreeEnsembleRegressor", "Scaler", "LinearClassifier",
               "LinearRegressor", "Normalizer", "Imputer", "OneHotEncoder",
               "ArrayFeatureExtractor", "Binarizer"]:
        assert op in seen, f"no zoo model uses {op}: {json.dumps(zoo.onnx_ops)}"


def test_auto_without_onnxruntime_is_ready_and_serves_the_zoo_on_tract(zoo, tmp_path_factory,
                                                                        ferry):
    """What a new user gets: `onnx_engine: auto` (the default) with no ONNX Runtime library.
    Tree-ensemble graphs load on the trees engine, every other model tract can serve on tract,
    so the server becomes ready."""
    served = [n for n in ZOO if (n, "tract") not in REFUSED]
    config = {"registry": {"uri": zoo.registry}, "models": [f"{n}@1" for n in served]}
    srv = FerryServer(tmp_path_factory.mktemp("ferry-zoo-auto"), config, "zoo-auto-no-ort")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conftest, "ort_lib", lambda: "/nonexistent/libonnxruntime.so")
        srv.start()
    try:
        srv.wait_ready(timeout=LOAD_TIMEOUT * 2)
        for name in ("gb_binary", "hgb_binary", "pipe_imputer", "xgb_binary"):
            meta = srv.triton.get_model_metadata(name)
            want = "trees" if name in TREE_MODELS else "tract"
            assert meta["parameters"]["engine"] == want, meta
            result = srv.triton.infer(name, _triton_inputs(zoo.inputs[name]))
            for out_name, want in zoo.expected[name].items():
                _assert_matches(name, out_name, result.as_numpy(out_name), want)
    except BaseException:
        srv.kill()
        raise
    srv.stop()


@pytest.fixture(scope="module")
def pushed_zoo_server(zoo, tmp_path_factory):
    """Every zoo model as the converter wrote it, published with `ferry models push` from a
    directory holding only model.onnx: the manifest comes from the graph, as a user's would."""
    import subprocess
    work = tmp_path_factory.mktemp("zoo-pushed")
    registry = work / "registry"
    registry.mkdir()
    for name in ZOO:
        src = work / "src" / name
        src.mkdir(parents=True)
        with open(os.path.join(zoo.registry, name, "1", "model.onnx"), "rb") as f:
            (src / "model.onnx").write_bytes(f.read())
        r = subprocess.run([conftest.ferry_bin(), "models", "--registry", str(registry), "push",
                            str(src), "--name", name], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"push {name}: {r.stderr}"
    config = {"registry": {"uri": str(registry)}, "models": [f"{n}@1" for n in ZOO],
              "onnx_engine": "ort"}
    (work / "server").mkdir()
    srv = FerryServer(work / "server", config, "zoo-pushed")
    try:
        srv.start()
        srv.wait_settled([(n, 1) for n in ZOO], timeout=LOAD_TIMEOUT * 2)
        yield srv
    except BaseException:
        srv.kill()
        raise
    srv.stop()


@pytest.mark.parametrize("estimator", ZOO)
def test_zoo_pushed_as_exported_answers_many_rows(pushed_zoo_server, zoo, estimator):
    """The graph's own signature serves batches: onnxmltools declares LightGBM's `label` as
    `[1]`, which taken literally failed every request of more than one row."""
    result = pushed_zoo_server.triton.infer(estimator, _triton_inputs(zoo.inputs[estimator]))
    for out_name, want in zoo.expected[estimator].items():
        assert len(want) > 1
        _assert_matches(estimator, out_name, result.as_numpy(out_name), want)
