"""The S3 model registry while serving: models pushed with `ferry models push` to a real S3
endpoint (moto on loopback) are served; moving an alias swaps versions without failing a
request; corrupt or unloadable versions never replace the serving one; an S3 outage does not
stop serving; a restart reuses the verified local cache.

Measurements (swap time, cold start from S3 vs cache) are printed; run with `-s` to see them.
"""
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import requests

from conftest import InferLoad, ferry_bin, read_tail

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_CHURN = os.path.join(HERE, "..", "..", "server", "demo", "registry", "churn", "1")
BUCKET = "models"
REGISTRY = f"s3://{BUCKET}/prod"
POLL = "200ms"
ROW = [0.1 * i for i in range(30)]


def model_dir(tmp_path, name="churn", artifact_bytes=None):
    """A training job's output: the artifact plus a model.yaml without name/version/digest."""
    d = tmp_path / f"{name}-{time.monotonic_ns()}"
    d.mkdir()
    if artifact_bytes is None:
        shutil.copy(os.path.join(DEMO_CHURN, "model.onnx"), d / "model.onnx")
    else:
        (d / "model.onnx").write_bytes(artifact_bytes)
    with open(os.path.join(DEMO_CHURN, "model.yaml")) as f:
        manifest = json.load(f)
    for key in ("name", "version", "sha256"):
        manifest.pop(key, None)
    manifest["metadata"] = {"git_commit": "abc123", "training_data": "s3://data/churn/2024-06"}
    (d / "model.yaml").write_text(json.dumps(manifest))
    return d


def models_cli(*args):
    r = subprocess.run([ferry_bin(), "models", "--registry", REGISTRY, *map(str, args)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"ferry models {args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def push(tmp_path, alias=None, **kw):
    args = ["push", model_dir(tmp_path, **kw), "--name", "churn"]
    if alias:
        args += ["--alias", alias]
    out = models_cli(*args)
    return int(re.search(r"Published churn@(\d+)", out).group(1))


def s3_config(ferry, tmp_path, models, cache_dir=None, poll=POLL):
    return {"registry": {"uri": REGISTRY, "poll_interval": poll,
                         "cache_dir": str(cache_dir or tmp_path / "cache")},
            "models": models}


def infer(srv, session=None, timeout=10):
    body = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
    return (session or requests).post(srv.url + "/v2/models/churn/infer", json=body,
                                      timeout=timeout)


def served_version(srv):
    r = infer(srv)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


def wait_for(what, predicate, srv, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; log:\n{srv.log()}")


def metric(srv, name, **labels):
    text = srv.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_alias_move_swaps_versions_with_zero_failed_requests(ferry, moto_s3, tmp_path):
    moto_s3.client().create_bucket(Bucket=BUCKET)
    assert push(tmp_path, alias="champion") == 1
    assert push(tmp_path) == 2
    cfg = s3_config(ferry, tmp_path, ["churn@champion"])
    with ferry.running("s3-swap", cfg["models"], registry=cfg["registry"]) as srv:
        srv.wait_ready()
        assert served_version(srv) == "1"
        with InferLoad(srv, lambda session: infer(srv, session)) as client:
            time.sleep(1.0)
            models_cli("alias", "churn", "champion", 2)
            moved = time.monotonic()
            wait_for("version 2 to serve", lambda: client.first_time_serving("2", moved), srv)
            time.sleep(1.0)
        swap_seconds = client.first_time_serving("2", moved) - moved
        print(f"\nSWAP: requests={client.sent} failures={len(client.failures)} "
              f"not_ready={client.not_ready} alias->serving={swap_seconds:.3f}s "
              f"(poll_interval {POLL})")
        assert client.failures == [], client.failures[:5]
        assert client.not_ready == 0, "readiness flipped during the swap"
        assert client.sent > 20
        assert {v for _, v in client.versions} == {"1", "2"}
        assert served_version(srv) == "2"
        # The old version drains and is freed.
        wait_for("version 1 to be unloaded",
                 lambda: srv.index_entry("churn", 1) is None, srv)
        assert metric(srv, "ferry_model_ready", model="churn", version="1") == 0
        assert metric(srv, "ferry_model_ready", model="churn", version="2") == 1
        # Lineage from the manifest shows in model metadata.
        meta = srv.get("/v2/models/churn").json()
        assert "abc123" in json.dumps(meta), meta


def test_corrupt_and_unloadable_versions_never_replace_the_serving_one(ferry, moto_s3,
                                                                       tmp_path):
    s3 = moto_s3.client()
    s3.create_bucket(Bucket=BUCKET)
    assert push(tmp_path, alias="champion") == 1
    cache = tmp_path / "cache"
    cfg = s3_config(ferry, tmp_path, ["churn@champion"], cache_dir=cache)
    with ferry.running("s3-bad", cfg["models"], registry=cfg["registry"]) as srv:
        srv.wait_ready()
        with InferLoad(srv, lambda session: infer(srv, session), threads=1) as client:
            # A corrupt upload: the artifact in S3 no longer matches the manifest digest.
            assert push(tmp_path) == 2
            s3.put_object(Bucket=BUCKET, Key="prod/churn/2/model.onnx", Body=b"corrupted bytes")
            models_cli("alias", "churn", "champion", 2)
            entry = wait_for("version 2 to fail", lambda: (
                e if (e := srv.index_entry("churn", 2)) and e["state"] == "UNAVAILABLE"
                else None), srv)
            assert "sha256" in entry["reason"], entry
            assert metric(srv, "ferry_model_loads_total", model="churn", version="2",
                          outcome="failed") == 1
            assert not list(cache.glob("*/churn/2")), "a corrupt download reached the cache"
            assert not list(cache.glob("*/churn/.tmp-*")), "temporary download left behind"

            # An unloadable model: digests match, but the bytes are not a model.
            assert push(tmp_path, artifact_bytes=b"this is not an onnx model") == 3
            models_cli("alias", "churn", "champion", 3)
            entry = wait_for("version 3 to fail", lambda: (
                e if (e := srv.index_entry("churn", 3)) and e["state"] == "UNAVAILABLE"
                else None), srv)
            assert metric(srv, "ferry_model_loads_total", model="churn", version="3",
                          outcome="failed") == 1
            time.sleep(1.0)  # several polls: failed versions are not retried in a loop
            assert metric(srv, "ferry_model_loads_total", model="churn", version="3",
                          outcome="failed") == 1
            assert served_version(srv) == "1"

            # A good version after the bad ones is still picked up.
            assert push(tmp_path) == 4
            models_cli("alias", "churn", "champion", 4)
            wait_for("version 4 to serve", lambda: served_version(srv) == "4", srv)
        assert client.failures == [], client.failures[:5]
        assert client.not_ready == 0
        assert {v for _, v in client.versions} <= {"1", "4"}
        assert "previous version keeps serving" in full_log(srv)


def test_s3_outage_keeps_serving_the_loaded_model(ferry, moto_s3, tmp_path):
    moto_s3.client().create_bucket(Bucket=BUCKET)
    push(tmp_path, alias="champion")
    cfg = s3_config(ferry, tmp_path, ["churn@champion"])
    with ferry.running("s3-outage", cfg["models"], registry=cfg["registry"]) as srv:
        srv.wait_ready()
        moto_s3.stop()
        with InferLoad(srv, lambda session: infer(srv, session), threads=1) as client:
            time.sleep(3.0)  # many poll intervals with S3 gone
        assert client.failures == [], client.failures[:5]
        assert client.not_ready == 0
        assert client.sent > 10
        assert {v for _, v in client.versions} == {"1"}
        log = full_log(srv)
        assert log.count("Registry unreachable") == 1, log


def full_log(srv):
    """The whole server log without terminal colours."""
    with open(srv.log_path, "rb") as f:
        return re.sub(r"\x1b\[[0-9;]*m", "", f.read().decode("utf-8", "replace"))


def time_to_ready(srv, started):
    srv.wait_ready()
    return time.monotonic() - started


def test_restart_reuses_the_verified_cache(ferry, moto_s3, tmp_path):
    moto_s3.client().create_bucket(Bucket=BUCKET)
    push(tmp_path, alias="champion")
    cache = tmp_path / "cache"
    cfg = s3_config(ferry, tmp_path, ["churn@1"], cache_dir=cache)

    cold = ferry.new("s3-cold", cfg["models"], registry=cfg["registry"])
    started = time.monotonic()
    cold.start()
    from_s3 = time_to_ready(cold, started)
    assert "source=\"download\"" in full_log(cold), cold.log()
    cold.stop()
    [version_dir] = list(cache.glob("*/churn/1"))
    assert (version_dir / ".ferry-verified").is_file()

    # S3 is gone: a pinned version still starts from the verified cache.
    moto_s3.stop()
    warm = ferry.new("s3-warm", cfg["models"], registry=cfg["registry"])
    started = time.monotonic()
    warm.start()
    from_cache = time_to_ready(warm, started)
    assert "source=\"cache\"" in full_log(warm), warm.log()
    assert served_version(warm) == "1"
    warm.stop()
    print(f"\nCOLD START: from S3 {from_s3:.3f}s, from cache {from_cache:.3f}s (to ready)")


CACHE_FS_BYTES = 1 << 20     # the whole cache filesystem: 1 MiB
LEFT_FREE = 16 << 10         # room left for version 2: less than its 57 kB artifact


def privileged(cmd):
    return cmd if os.geteuid() == 0 else ["sudo", "-n", *cmd]


@pytest.fixture
def small_cache_fs(tmp_path):
    """A real 1 MiB tmpfs as the cache directory, so writes beyond it fail with ENOSPC."""
    mnt = tmp_path / "small-cache"
    mnt.mkdir()
    r = subprocess.run(privileged(["mount", "-t", "tmpfs", "-o",
                                   f"size={CACHE_FS_BYTES},mode=1777", "ferry-test-cache",
                                   str(mnt)]), capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("the disk-full test mounts a 1 MiB tmpfs (root or passwordless sudo): "
                    f"{r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(privileged(["umount", "-l", str(mnt)]), capture_output=True)


def fill_leaving(path, free_bytes):
    """Fills the filesystem of `path` up to ENOSPC, then frees `free_bytes`."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            assert e.errno == 28, e
    size = filler.stat().st_size
    os.truncate(filler, size - free_bytes)
    st = os.statvfs(path)
    return filler, st.f_bavail * st.f_frsize


def test_full_cache_disk_keeps_serving_the_old_version(ferry, moto_s3, tmp_path,
                                                       small_cache_fs, monkeypatch):
    monkeypatch.setenv("FERRY_ADMIN_TOKEN", "disk-full-admin")
    moto_s3.client().create_bucket(Bucket=BUCKET)
    assert push(tmp_path, alias="champion") == 1
    cfg = s3_config(ferry, tmp_path, ["churn@champion"], cache_dir=small_cache_fs)
    with ferry.running("s3-disk-full", cfg["models"], registry=cfg["registry"]) as srv:
        srv.wait_ready()
        assert served_version(srv) == "1"
        filler, free = fill_leaving(small_cache_fs, LEFT_FREE)
        artifact = os.path.getsize(os.path.join(DEMO_CHURN, "model.onnx"))
        assert 0 < free < artifact, (free, artifact)
        with InferLoad(srv, lambda session: infer(srv, session), threads=2) as client:
            # Version 2 starts downloading, writes what fits, then gets ENOSPC mid-file.
            assert push(tmp_path) == 2
            models_cli("alias", "churn", "champion", 2)
            entry = wait_for("version 2 to fail", lambda: (
                e if (e := srv.index_entry("churn", 2)) and e["state"] == "UNAVAILABLE"
                else None), srv)
            time.sleep(1.0)  # several polls and requests with the disk still full
            served_during = served_version(srv)
        assert "No space left on device" in entry["reason"], entry
        assert "model cache" in entry["reason"] and "full" in entry["reason"], entry
        log = full_log(srv)
        assert "No space left on device" in log and "previous version keeps serving" in log
        # Nothing half-written is left where a later lookup could find it.
        assert not list(small_cache_fs.glob("*/churn/2")), "a partial download reached the cache"
        assert not list(small_cache_fs.glob("*/churn/.tmp-*")), "partial download left behind"
        assert served_during == "1"
        print(f"\nDISK FULL: sent={client.sent} failed={len(client.failures)} "
              f"not_ready={client.not_ready} free_before={free}B artifact={artifact}B\n"
              f"  reason: {entry['reason']}")
        assert client.failures == [], client.failures[:5]
        assert client.not_ready == 0
        assert client.sent > 10
        assert {v for _, v in client.versions} == {"1"}

        # Space freed: the operator reloads and version 2 is downloaded, verified and served.
        filler.unlink()
        r = srv.post("/v2/repository/models/churn/load",
                     headers={"Authorization": "Bearer disk-full-admin"}, json={}, timeout=60)
        assert r.status_code == 200, r.text
        assert served_version(srv) == "2"
        [v2] = list(small_cache_fs.glob("*/churn/2"))
        assert (v2 / ".ferry-verified").is_file()
        assert (v2 / "model.onnx").stat().st_size == artifact
