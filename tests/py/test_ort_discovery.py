"""`onnx_engine: auto` finds ONNX Runtime where `pip install onnxruntime` put it.

Each server here starts without FERRY_ORT_LIB, the way a new user starts it, with only the
Python environment variables a user's shell has. The library comes from the real onnxruntime
wheel of the test environment (linked into a fake virtualenv / conda prefix where needed).
"""
import os
import re
import sys

import pytest

from conftest import FerryServer, ort_lib

NO_ORT_ENV = {"FERRY_ORT_LIB": None, "ORT_DYLIB_PATH": None, "VIRTUAL_ENV": None,
              "CONDA_PREFIX": None}
# A PATH without any python3: only the directory of a shell.
BARE_PATH = "/nonexistent-ferry-test-dir"


def full_log(srv):
    with open(srv.log_path, errors="replace") as f:
        return f.read()


def loaded_line(log):
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)
    return re.search(r"ONNX Runtime loaded from ([^\n]*)\. library=(\S+)", log)


def engine_of(srv, model):
    meta = srv.get(f"/v2/models/{model}").json()
    return meta["parameters"]["engine"]


def wheel_into(prefix):
    """Links the real wheel's library into `prefix`/lib/python3.x/site-packages like pip does."""
    capi = os.path.join(prefix, "lib", f"python3.{sys.version_info.minor}", "site-packages",
                        "onnxruntime", "capi")
    os.makedirs(capi)
    lib = os.path.join(capi, os.path.basename(ort_lib()))
    os.symlink(ort_lib(), lib)
    return lib


def serve(tmp_path, fixtures, name, env):
    cfg = {"registry": {"uri": fixtures.registry}, "models": ["mlp@1"], "onnx_engine": "auto"}
    srv = FerryServer(tmp_path, cfg, name, env={**NO_ORT_ENV, **env})
    srv.start()
    srv.wait_ready()
    return srv


@pytest.mark.parametrize("variable", ["VIRTUAL_ENV", "CONDA_PREFIX"])
def test_auto_finds_the_wheel_of_the_active_python_environment(tmp_path, fixtures, variable):
    prefix = str(tmp_path / variable.lower())
    lib = wheel_into(prefix)
    srv = serve(tmp_path, fixtures, variable.lower(), {variable: prefix, "PATH": BARE_PATH})
    try:
        m = loaded_line(full_log(srv))
        assert m, full_log(srv)[-3000:]
        assert variable in m.group(1)
        assert m.group(2) == lib
        assert engine_of(srv, "mlp") == "ort"
        # ONNX Runtime's INFO chatter (one line per graph transformer) stays out by default.
        assert "GraphTransformer" not in full_log(srv)
    finally:
        srv.stop()


def test_auto_finds_the_wheel_of_python3_on_path(tmp_path, fixtures):
    python_dir = os.path.dirname(sys.executable)
    srv = serve(tmp_path, fixtures, "path", {"PATH": python_dir + os.pathsep + BARE_PATH})
    try:
        m = loaded_line(full_log(srv))
        assert m, full_log(srv)[-3000:]
        assert "python3 on PATH" in m.group(1)
        assert os.path.realpath(m.group(2)) == os.path.realpath(ort_lib())
        assert engine_of(srv, "mlp") == "ort"
    finally:
        srv.stop()


def test_explicit_library_wins_over_the_active_environment(tmp_path, fixtures):
    wheel_into(str(tmp_path / "venv"))
    chosen = str(tmp_path / "libonnxruntime.so.explicit")
    os.symlink(ort_lib(), chosen)
    srv = serve(tmp_path, fixtures, "explicit", {"VIRTUAL_ENV": str(tmp_path / "venv"),
                                                 "FERRY_ORT_LIB": chosen})
    try:
        m = loaded_line(full_log(srv))
        assert m, full_log(srv)[-3000:]
        assert "configured path" in m.group(1)
        assert m.group(2) == chosen
    finally:
        srv.stop()


def test_without_any_onnxruntime_auto_serves_on_tract(tmp_path, fixtures):
    srv = serve(tmp_path, fixtures, "none", {"PATH": BARE_PATH})
    try:
        assert loaded_line(full_log(srv)) is None, full_log(srv)[-3000:]
        assert "ONNX models run on tract" in full_log(srv)
        assert engine_of(srv, "mlp") == "tract"
    finally:
        srv.stop()
