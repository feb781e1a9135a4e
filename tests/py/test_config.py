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


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def test_readme_lists_every_env_variable():
    """The README's table of flag variables is exactly the set `ferry serve --help` accepts:
    it says which keys have a variable, and cannot drift from the binary."""
    import re
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    help_text = subprocess.run([ferry_bin(), "serve", "--help"], capture_output=True,
                               text=True, timeout=30, env=env).stdout
    accepted = set(re.findall(r"env:\s+(FERRY_[A-Z_]+)", help_text))
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Configuration"):readme.index("```yaml",
                                                                   readme.index("## Configuration"))]
    table = {v for row in section.splitlines() if row.startswith("| ")
             for v in re.findall(r"`(FERRY_[A-Z_]+)`", row.split("|")[3])}
    assert table == accepted, (sorted(table - accepted), sorted(accepted - table))


def config_check(tmp_path, config, env=None, text=None):
    path = tmp_path / "check.yaml"
    path.write_text(text if text is not None else to_yaml(config))
    run_env = dict(os.environ, FERRY_ORT_LIB=ort_lib())
    run_env.update(env or {})
    return subprocess.run([ferry_bin(), "config", "check", str(path)], capture_output=True,
                          text=True, timeout=60, env=run_env, cwd=tmp_path)


def test_config_check_prints_the_effective_config_redacted(tmp_path, fixtures):
    """A valid config: exit 0, the effective config (file + FERRY_* variables) as JSON on
    stdout, credentials redacted, no model loaded and nothing listening."""
    import json
    cfg = base(fixtures, features={"repo": "features.yaml",
                                   "redis": "redis://:hunter2@127.0.0.1:1/0"})
    (tmp_path / "features.yaml").write_text(
        "project: p\nentities: [{name: user, join_key: user_id, dtype: string}]\n"
        "views: [{name: v, entity: user, features: [{name: f, dtype: float32}], "
        "source: {path: data/, format: parquet, timestamp: ts}}]\n")
    r = config_check(tmp_path, cfg, env={"FERRY_QUEUE_CAPACITY": "17",
                                         "FERRY_LISTEN": "127.0.0.1:1"})
    assert r.returncode == 0, r.stderr
    effective = json.loads(r.stdout)
    assert effective["queue_capacity"] == 17 and effective["listen"] == "127.0.0.1:1"
    assert effective["models"] == ["mlp@1"]
    assert "hunter2" not in r.stdout and "***" in effective["features"]["redis"]
    assert "loaded" not in r.stderr.lower()


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c.update(queue_capacity=0), "`queue_capacity`"),
    (lambda c: c.update(models=["not a ref!"]), "`models[0]`"),
    (lambda c: c.update(features={"repo": "missing.yaml"}), "`features.repo`"),
    (lambda c: c.update(endpoints=[{"name": "e", "variants": [{"name": "a", "model": "mlp@1",
                                                                "weight": 1}],
                                    "postprocess": [{"script": {"source": "let x = ;"}}]}]),
     "`endpoints[0].postprocess`"),
    (lambda c: c.update(io_threads=5000), "`io_threads`"),
    (lambda c: c.update(bogus_key=1), "bogus_key"),
])
def test_config_check_names_the_bad_key(tmp_path, fixtures, mutate, message):
    cfg = base(fixtures)
    mutate(cfg)
    r = config_check(tmp_path, cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert r.stdout == ""
