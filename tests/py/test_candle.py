"""The Candle engine end to end: all-MiniLM-L6-v2 sentence embeddings over OIP v2 (BYTES in,
JSON and binary), the same MLP served from ONNX (ort, tract) and safetensors (candle), device
reporting, CUDA fallback / strict refusal, and memory released on unload.

References come from tests/py/make_candle_fixtures.py (scikit-learn, and a numpy BERT forward
pass over the same weights with sentence-transformers' pooling), computed at test time.
"""
import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from conftest import HERE, FerryServer

MAKE = os.path.join(HERE, "make_candle_fixtures.py")
TOKEN = "candle-test-token"


@pytest.fixture(scope="module")
def cfx(tmp_path_factory):
    out = tmp_path_factory.mktemp("candle-fixtures")
    r = subprocess.run([sys.executable, MAKE, str(out)], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        pytest.fail(f"make_candle_fixtures.py failed:\n{r.stdout}\n{r.stderr}")
    with open(out / "candle_reference.json") as f:
        ref = json.load(f)
    return {"registry": str(out / "registry"), "ref": ref, "dir": out}


@contextlib.contextmanager
def server(tmp_path_factory, cfx, name, models, **extra):
    workdir = tmp_path_factory.mktemp(f"ferry-{name}")
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    cfg = {"registry": {"uri": cfx["registry"]}, "models": models,
           "admin_token_file": str(token_file), **extra}
    srv = FerryServer(workdir, cfg, name)
    try:
        srv.start()
        yield srv
    except BaseException:
        srv.kill()
        raise
    srv.stop()


@pytest.fixture(scope="module")
def candle_server(tmp_path_factory, cfx):
    models = ["minilm@1", {"model": "tabmlp@1", "onnx_engine": "ort"}, "tabmlp@2",
              {"model": "catmlp@1", "device": "cuda:0"}]
    with server(tmp_path_factory, cfx, "candle", models) as srv:
        srv.wait_ready()
        yield srv


def cosines(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))


def test_minilm_embeddings_over_json_match_the_reference(candle_server, cfx):
    ref = cfx["ref"]["minilm"]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(ref["sentences"])],
                        "data": ref["sentences"]}]}
    r = candle_server.post("/v2/models/minilm/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "embedding" and out["datatype"] == "FP32"
    assert out["shape"] == [len(ref["sentences"]), 384]
    got = np.asarray(out["data"]).reshape(out["shape"])
    assert cosines(got, ref["embedding"]).min() >= 0.999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_minilm_embeddings_over_binary_tritonclient_match_the_reference(candle_server, cfx):
    ref = cfx["ref"]["minilm"]
    client = httpclient.InferenceServerClient(candle_server.addr)
    text = np.array([s.encode() for s in ref["sentences"]], dtype=object)
    inp = httpclient.InferInput("text", [len(text)], "BYTES")
    inp.set_data_from_numpy(text, binary_data=True)
    res = client.infer("minilm", [inp],
                       outputs=[httpclient.InferRequestedOutput("embedding", binary_data=True)])
    got = res.as_numpy("embedding")
    assert got.dtype == np.float32 and got.shape == (len(text), 384)
    assert cosines(got, ref["embedding"]).min() >= 0.999


def test_text_that_is_not_utf8_is_a_client_error(candle_server):
    client = httpclient.InferenceServerClient(candle_server.addr)
    inp = httpclient.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object), binary_data=True)
    with pytest.raises(Exception) as e:
        client.infer("minilm", [inp])
    assert "UTF-8" in str(e.value)


def test_the_same_mlp_from_onnx_and_safetensors_agrees_through_the_server(candle_server, cfx):
    ref = cfx["ref"]["tabmlp"]
    x = np.asarray(ref["inputs"]["X"], dtype=np.float32)
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.reshape(-1).tolist()}]}
    outs = {}
    for version in (1, 2):
        r = candle_server.post(f"/v2/models/tabmlp/versions/{version}/infer", json=body)
        assert r.status_code == 200, r.text
        outs[version] = np.asarray(r.json()["outputs"][0]["data"]).reshape(-1, 3)
        assert np.abs(outs[version] - np.asarray(ref["probabilities"])).max() <= 1e-5
    assert np.abs(outs[1] - outs[2]).max() <= 1e-5


def test_metadata_reports_engine_device_and_machine(candle_server):
    meta = candle_server.get("/v2/models/minilm").json()
    assert meta["platform"] == "safetensors_candle"
    assert meta["parameters"]["engine"] == "candle"
    assert meta["parameters"]["device"] == "cpu"
    assert meta["parameters"]["intra_op_threads"] >= 1
    assert meta["inputs"][0]["datatype"] == "BYTES"
    onnx = candle_server.get("/v2/models/tabmlp/versions/1").json()
    assert onnx["platform"] == "onnx_onnxv1" and onnx["parameters"]["engine"] == "ort"
    devices = candle_server.get("/v2").json()["devices"]
    cpu = devices["cpu"]
    assert 1 <= cpu["usable_cores"] <= cpu["logical_cores"] == len(os.sched_getaffinity(0))
    assert isinstance(devices["cuda"], list)
    metrics = candle_server.get("/metrics").text
    assert f'ferry_devices{{kind="cpu"}} {cpu["usable_cores"]}' in metrics
    assert 'ferry_model_intra_op_threads{device="cpu",model="minilm",version="1"}' in metrics


def test_cuda_on_a_machine_without_it_falls_back_to_cpu_with_a_warning(candle_server):
    meta = candle_server.get("/v2/models/catmlp").json()
    assert meta["parameters"]["device"] == "cpu"
    assert "Using CPU instead" in candle_server.log()
    assert "cuda:0" in candle_server.log()


def test_strict_cuda_refuses_to_load(tmp_path_factory, cfx):
    devices_has_cuda = os.path.isdir("/proc/driver/nvidia/gpus")
    models = ["tabmlp@2", {"model": "catmlp@1", "device": "cuda:0", "device_strict": True}]
    with server(tmp_path_factory, cfx, "strict", models) as srv:
        settled = srv.wait_settled([("catmlp", 1), ("tabmlp", 2)])
        if devices_has_cuda:
            pytest.fail("this test expects a machine without CUDA")
        entry = settled[("catmlp", 1)]
        assert entry["state"] == "UNAVAILABLE"
        assert "device_strict" in entry["reason"], entry
        assert settled[("tabmlp", 2)]["state"] == "READY"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unloading_minilm_releases_its_memory(tmp_path_factory, cfx):
    # One shared instance per version: 4 compute threads must not hold 4 copies of the weights.
    models = ["tabmlp@2", {"model": "minilm@1", "instances": 4}]
    with server(tmp_path_factory, cfx, "rss", models) as srv:
        srv.wait_ready()
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                            "data": ["warm", "up"]}]}
        for _ in range(4):
            assert srv.post("/v2/models/minilm/infer", json=body).status_code == 200
        loaded = rss_kib(srv.proc.pid)
        r = srv.post("/v2/repository/models/minilm/unload",
                     headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "Old model version drained" not in srv.log():
            time.sleep(0.1)
        time.sleep(0.5)
        unloaded = rss_kib(srv.proc.pid)
        print(f"RSS with minilm loaded: {loaded / 1024:.1f} MiB; unloaded: {unloaded / 1024:.1f} MiB")
        weights_mib = os.path.getsize(os.path.join(cfx["registry"], "minilm", "1",
                                                   "model.safetensors")) / 2**20
        # A single copy of the 87 MiB weights: four copies would be ~350 MiB over the base.
        assert loaded / 1024 < 3 * weights_mib + 150, loaded
        # Most of the weights go back to the OS (allocator slack aside).
        assert loaded - unloaded >= 0.5 * weights_mib * 1024, (loaded, unloaded)
        assert srv.get("/v2/models/minilm").status_code == 404
        assert srv.get("/v2/models/tabmlp").status_code == 200
