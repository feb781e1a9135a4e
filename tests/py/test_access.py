"""Access: optional API keys on the inference routes, and names that cannot escape the
registry root (config, manifests, HTTP paths, control API)."""
import hashlib
import shutil
import subprocess
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
import yaml

from conftest import (assert_json_error, check_infer_response, ferry_bin, infer_path,
                      json_infer_body, to_yaml)

KEYS = ["k-alpha-0123456789", "k-beta-9876543210"]
ADMIN = "admin-secret-token"


@pytest.fixture(scope="module")
def keyed(ferry, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "api-keys"
    keys_file.write_text("# one key per line\n" + "\n".join(KEYS) + "\n")
    with ferry.running("keyed", ["churn@champion"], api_keys_file=str(keys_file)) as srv:
        srv.wait_ready()
        yield srv


def test_inference_without_key_is_401(keyed, fixtures):
    body = json_infer_body(fixtures.case("churn"))
    msg = assert_json_error(keyed.post(infer_path("churn"), json=body), 401, ["api key"])
    assert "Bearer" in msg
    v1 = {"instances": [[0.5] * 30]}
    assert_json_error(keyed.post("/v1/models/churn:predict", json=v1), 401)
    assert_json_error(keyed.post("/v1/endpoints/risk/predict", json={"instances": []}), 401)


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer k-alpha-012345678"},       # prefix of a key
    {"Authorization": "Bearer k-alpha-01234567890"},     # a key plus one character
    {"Authorization": f"Basic {KEYS[0]}"},
    {"Authorization": KEYS[0]},
    {"x-api-key": "nope"},
    {"x-api-key": ""},
])
def test_wrong_key_is_401(keyed, fixtures, headers):
    body = json_infer_body(fixtures.case("churn"))
    assert_json_error(keyed.post(infer_path("churn"), json=body, headers=headers), 401)


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {KEYS[0]}"},
    {"Authorization": f"Bearer {KEYS[1]}"},
    {"x-api-key": KEYS[1]},
])
def test_valid_key_serves(keyed, fixtures, headers):
    case = fixtures.case("churn")
    r = keyed.post(infer_path("churn"), json=json_infer_body(case), headers=headers)
    assert r.status_code == 200, r.text
    check_infer_response(r.json(), case)


def test_triton_client_with_key(keyed):
    x = httpclient.InferInput("X", [1, 30], "FP32")
    x.set_data_from_numpy(np.full((1, 30), 0.5, dtype=np.float32))
    result = keyed.triton.infer("churn", [x], headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert result.as_numpy("probabilities").shape == (1, 2)


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2",
                                  "/v2/models/churn", "/v2/models/churn/ready", "/metrics"])
def test_probes_and_metadata_need_no_key(keyed, path):
    assert keyed.get(path).status_code == 200


def test_env_keys_take_precedence(ferry, fixtures, monkeypatch):
    monkeypatch.setenv("FERRY_API_KEYS", "env-one, env-two")
    with ferry.running("envkeys", ["churn@champion"]) as srv:
        srv.wait_ready()
        body = json_infer_body(fixtures.case("churn"))
        assert_json_error(srv.post(infer_path("churn"), json=body), 401)
        r = srv.post(infer_path("churn"), json=body, headers={"x-api-key": "env-two"})
        assert r.status_code == 200, r.text


def test_empty_keys_file_is_a_config_error(ferry, tmp_path):
    empty = tmp_path / "keys"
    empty.write_text("# nothing\n\n")
    srv = ferry.new("emptykeys", ["churn@champion"], api_keys_file=str(empty))
    with open(srv.config_path, "w") as f:
        f.write(to_yaml(srv.config))
    r = subprocess.run([ferry_bin(), "serve", "--config", srv.config_path, "--listen", srv.addr],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "api_keys_file" in (r.stdout + r.stderr)


# -- path traversal ---------------------------------------------------------------------------

@pytest.mark.parametrize("ref", ["../../etc@1", "churn/../../x@1", "churn@../../1", "..@1",
                                 "/etc/passwd@1", "churn@..%2F..%2Fx"])
def test_config_model_refs_cannot_escape(ferry, tmp_path, ref):
    srv = ferry.new("badref", [ref])
    with open(srv.config_path, "w") as f:
        f.write(to_yaml(srv.config))
    r = subprocess.run([ferry_bin(), "serve", "--config", srv.config_path, "--listen", srv.addr],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, f"ferry accepted model ref {ref!r}"


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def evil_registry(fixtures, tmp_path_factory):
    """A copy of the test registry plus versions whose manifests point outside the root: the
    artifact, or another listed file, is ../../secret (a real file with a matching digest)."""
    root = tmp_path_factory.mktemp("evil")
    secret = root / "secret"
    secret.write_bytes(b"do not serve me")
    reg = root / "reg" / "registry"
    shutil.copytree(fixtures.registry, reg)
    src = reg / "churn" / "1"
    manifest_text = (src / "model.yaml").read_text()
    base = yaml.safe_load(manifest_text)
    for name, edit in [
        ("escape-artifact", lambda m: m.update(artifact="../../../secret", sha256=sha256_of(secret))),
        ("escape-file", lambda m: m.update(files={"../../../secret": sha256_of(secret)})),
        ("absolute-file", lambda m: m.update(files={str(secret): sha256_of(secret)})),
    ]:
        d = reg / name / "1"
        shutil.copytree(src, d)
        m = dict(base, name=name, version=1)
        edit(m)
        (d / "model.yaml").write_text(yaml.safe_dump(m))
    # an alias whose contents try to walk out of the model directory
    (reg / "churn" / "aliases" / "sneaky").write_text("../../escape-artifact/1\n")
    return str(reg)


def test_manifests_cannot_point_outside_the_registry(ferry, evil_registry):
    models = ["escape-artifact@1", "escape-file@1", "absolute-file@1", "churn@champion"]
    with ferry.running("evil", models, registry={"uri": evil_registry}) as srv:
        settled = srv.wait_settled([("escape-artifact", 1), ("escape-file", 1),
                                    ("absolute-file", 1), ("churn", 1)])
        for name in ["escape-artifact", "escape-file", "absolute-file"]:
            entry = settled[(name, 1)]
            assert entry["state"] == "UNAVAILABLE", entry
            assert "relative path" in entry.get("reason", ""), entry
            r = srv.post(infer_path(name), json={"inputs": []})
            assert 400 <= r.status_code < 600 and r.status_code != 200
        assert settled[("churn", 1)]["state"] == "READY"


def test_alias_cannot_point_outside_the_model(ferry, evil_registry):
    srv = ferry.new("sneaky", ["churn@sneaky"], registry={"uri": evil_registry})
    srv.start()
    try:
        refused = None
        for _ in range(150):
            index = srv.repository_index()
            refused = [e for e in index if e.get("state") == "UNAVAILABLE" or e.get("reason")]
            if refused:
                break
            time.sleep(0.2)
        assert refused, f"alias `sneaky` was not refused: {index}"
        assert srv.get("/v2/health/ready").status_code == 503
        assert srv.get("/v2/models/escape-artifact").status_code == 404
    finally:
        srv.stop()


@pytest.mark.parametrize("path", [
    "/v2/models/..%2F..%2Fetc/infer",
    "/v2/models/..%2Fchurn/infer",
    "/v2/models/%2E%2E/infer",
    "/v2/models/churn%2F..%2F..%2Fsecret/infer",
    "/v2/models/churn/versions/..%2F..%2F1/infer",
    "/v2/models/churn/versions/1%2F..%2F..%2F2/infer",
    "/v2/models/..%2F..%2Fetc",
    "/v1/models/..%2F..%2Fetc:predict",
    "/v1/endpoints/..%2F..%2Fetc/predict",
])
def test_http_paths_cannot_escape(keyed, path):
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    req = requests.Request("POST" if path.endswith(("infer", "predict")) else "GET",
                           keyed.url + path, json={"inputs": []}, headers=headers).prepare()
    req.url = keyed.url + path   # keep the %2F encoding as sent
    r = requests.Session().send(req, timeout=30)
    assert_json_error(r, (400, 404))


def test_control_api_names_cannot_escape(ferry, monkeypatch):
    monkeypatch.setenv("FERRY_ADMIN_TOKEN", ADMIN)
    with ferry.running("control-escape", ["churn@champion"]) as srv:
        srv.wait_ready()
        for model in ["..%2F..%2Fetc", "%2E%2E", "churn%2F..%2F..%2Fx", "a" * 200, "churn@..%2F1"]:
            for verb in ["load", "unload"]:
                url = f"{srv.url}/v2/repository/models/{model}/{verb}"
                req = requests.Request("POST", url, json={},
                                       headers={"Authorization": f"Bearer {ADMIN}"}).prepare()
                req.url = url
                r = requests.Session().send(req, timeout=30)
                assert_json_error(r, (400, 404))
        assert srv.get("/v2/models/churn").status_code == 200
