"""Configuration: unknown keys and bad values are rejected at startup; the default engine
(auto) serves every fixture model."""
import os
import subprocess

import pytest

from conftest import (FerryServer, assert_array_matches, check_infer_response, ferry_bin,
                      infer_path, json_infer_body, ort_lib, to_yaml, triton_inputs)


def run_expecting_exit(tmp_path, config):
    """Start `ferry serve` with a bad config; it must exit non-zero on its own."""
    path = tmp_path / "bad.yaml"
    path.write_text(to_yaml(config))
    env = dict(os.environ, FERRY_ORT_LIB=ort_lib(), FERRY_LOG="info")
    srv = FerryServer(tmp_path, config, "bad")  # only for a free address
    try:
        r = subprocess.run([ferry_bin(), "serve", "--config", str(path), "--listen", srv.addr],
                           capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ferry kept running with an invalid config:\n{to_yaml(config)}")
    assert r.returncode != 0, f"ferry exited 0 with an invalid config:\n{to_yaml(config)}"
    return r.stdout + r.stderr


def base(fixtures, **extra):
    cfg = {"registry": {"uri": fixtures.registry}, "models": ["mlp@1"]}
    cfg.update(extra)
    return cfg


def test_unknown_top_level_key_rejected(tmp_path, ferry, fixtures):
    out = run_expecting_exit(tmp_path, base(fixtures, bogus_key=1))
    assert "bogus_key" in out, out[-2000:]


def test_unknown_model_entry_key_rejected(tmp_path, ferry, fixtures):
    run_expecting_exit(tmp_path, base(fixtures, models=[{"model": "mlp@1", "bogus_entry": 1}]))


def test_unknown_registry_key_rejected(tmp_path, ferry, fixtures):
    out = run_expecting_exit(tmp_path, {"registry": {"uri": fixtures.registry, "bogus_reg": 1},
                                        "models": ["mlp@1"]})
    assert "bogus_reg" in out, out[-2000:]


def test_invalid_engine_rejected(tmp_path, ferry, fixtures):
    out = run_expecting_exit(tmp_path, base(fixtures, onnx_engine="gpu"))
    assert "gpu" in out or "onnx_engine" in out, out[-2000:]


@pytest.fixture(scope="module")
def auto_server(ferry, fixtures):
    models = [fixtures.model_ref(c) for c in fixtures.cases]
    with ferry.running("auto", models) as srv:  # onnx_engine left at its default (auto)
        srv.wait_ready()
        yield srv


@pytest.mark.parametrize("model", ["churn", "boosted", "mlp", "dtypes", "scaled", "svr"])
def test_auto_engine_serves_every_model(auto_server, fixtures, model):
    case = fixtures.case(model)
    meta = auto_server.triton.get_model_metadata(model)
    engine = (meta.get("parameters") or {}).get("engine")
    if model in ("churn", "boosted"):
        # Tree-ensemble graphs (skl2onnx forest, gradient boosting) go to the trees engine.
        assert engine == "trees", meta
    else:
        assert engine in ("ort", "tract"), meta
        assert engine in case["engines"], f"auto picked {engine}, which cannot run {model}"
    r = auto_server.post(infer_path(model), json=json_infer_body(case))
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), case)
    result = auto_server.triton.infer(model, triton_inputs(case, binary=True))
    for ref in case["outputs"]:
        assert_array_matches(result.as_numpy(ref["name"]), ref)
