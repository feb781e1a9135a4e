"""Concurrency: requests batched together still get their own answers; a full per-model queue
answers 429 with Retry-After (never a 5xx)."""
import threading

import numpy as np
import pytest
import requests

from conftest import (TOL, assert_json_error, binary_infer_body, infer_path, ref_array)


def run_threads(fn, n):
    results = [None] * n
    barrier = threading.Barrier(n)

    def wrap(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:  # reported by the caller
            results[i] = e
    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(not t.is_alive() for t in threads), "client threads hung"
    return results


def test_concurrent_requests_get_their_own_rows(basic_server, fixtures):
    """Many concurrent requests with different rows and batch sizes, for two models: if the
    server batches them together, each response must still hold exactly its own rows."""
    cases = {m: fixtures.case(m) for m in ("churn", "mlp")}
    arrays = {m: (ref_array(c["inputs"][0]), {o["name"]: ref_array(o) for o in c["outputs"]})
              for m, c in cases.items()}
    n = 60

    def one(i):
        rng = np.random.default_rng(1000 + i)
        model = ("churn", "mlp")[i % 2]
        x, outs = arrays[model]
        rows = rng.integers(0, x.shape[0], size=int(rng.integers(1, 2 * x.shape[0])))
        xs = x[rows]
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(xs.shape),
                            "data": xs.reshape(-1).tolist()}]}
        r = requests.post(basic_server.url + infer_path(model), json=body, timeout=120)
        if r.status_code != 200:
            return f"{model} request {i}: {r.status_code} {r.text[:200]}"
        got = {o["name"]: o for o in r.json()["outputs"]}
        for name, ref in outs.items():
            exp = ref[rows]
            arr = np.array(got[name]["data"]).reshape(got[name]["shape"])
            if list(arr.shape) != list(exp.shape):
                return f"{model} request {i}: {name} shape {arr.shape} != {exp.shape}"
            if exp.dtype.kind == "f":
                if not np.allclose(arr, exp, rtol=TOL, atol=TOL):
                    return f"{model} request {i}: {name} values differ from its own rows"
            elif not np.array_equal(arr, exp):
                return f"{model} request {i}: {name} values differ from its own rows"
        return None

    results = run_threads(one, n)
    bad = [r for r in results if r is not None]
    assert not bad, f"{len(bad)}/{n} wrong: {bad[:5]}"


@pytest.fixture(scope="module")
def tiny_queue_server(ferry):
    # Batching off and one engine thread: the queue of one is then the only buffer between
    # the clients and the compute thread, so concurrent requests must overflow it.
    with ferry.running("tiny-queue", ["mlp@1"], onnx_engine="ort", queue_capacity=1,
                       batching={"max_batch_size": 1}, intra_op_threads=1) as srv:
        srv.wait_ready()
        yield srv


def test_full_queue_answers_429(tiny_queue_server, fixtures):
    case = fixtures.case("mlp")
    x = ref_array(case["inputs"][0])
    y = ref_array(case["outputs"][0])
    reps = 400
    xs = np.tile(x, (reps, 1)).astype("<f4")
    ys = np.tile(y, (reps, 1))
    raw = xs.tobytes()
    body, headers = binary_infer_body(
        {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(xs.shape),
                     "parameters": {"binary_data_size": len(raw)}}]}, [raw])
    n = 40

    def one(i):
        return requests.post(tiny_queue_server.url + infer_path("mlp"), data=body,
                             headers=headers, timeout=120)

    results = run_threads(one, n)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    statuses = sorted(r.status_code for r in results)
    odd = [r.text[:200] for r in results if r.status_code not in (200, 429)]
    assert set(statuses) <= {200, 429}, f"statuses {statuses}: {odd[:3]}"
    for r in results:
        if r.status_code == 200:
            out = r.json()["outputs"][0]
            np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), ys,
                                       rtol=TOL, atol=TOL)
        else:
            assert r.headers.get("retry-after"), f"429 without Retry-After: {dict(r.headers)}"
            assert_json_error(r, 429, ["queue", "full", "busy", "retry", "overload"])
    assert 429 in statuses, f"40 concurrent requests never filled a queue of 1: {statuses}"
    assert 200 in statuses
    # and it recovers
    r = requests.post(tiny_queue_server.url + infer_path("mlp"), data=body, headers=headers,
                      timeout=120)
    assert r.status_code == 200, r.text[:300]


def prom_sum(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("inline_below_us", [10_000, 0])
def test_cheap_one_row_requests_run_inline_with_the_same_answers(ferry, fixtures, inline_below_us):
    """Sequential 1-row requests on the small tree model: with an inline limit they run on
    the I/O thread once the model's cost is known (ferry_inline_runs_total counts them), with
    0 every one goes through the compute queue; the answers are the reference's either way."""
    case = fixtures.case("churn")
    x = ref_array(case["inputs"][0])
    outs = {o["name"]: ref_array(o) for o in case["outputs"]}
    n = 30
    with ferry.running(f"inline-{inline_below_us}", ["churn@1"], onnx_engine="ort",
                       batching={"inline_below_us": inline_below_us}) as srv:
        srv.wait_ready()
        for i in range(n):
            row = i % x.shape[0]
            body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, x.shape[1]],
                                "data": x[row].tolist()}]}
            r = requests.post(srv.url + infer_path("churn"), json=body, timeout=30)
            assert r.status_code == 200, r.text[:300]
            for out in r.json()["outputs"]:
                exp = outs[out["name"]][row:row + 1]
                got = np.array(out["data"]).reshape(out["shape"])
                if exp.dtype.kind == "f":
                    np.testing.assert_allclose(got, exp, rtol=TOL, atol=TOL)
                else:
                    np.testing.assert_array_equal(got, exp)
        text = requests.get(srv.url + "/metrics", timeout=10).text
    inline = prom_sum(text, "ferry_inline_runs_total", model="churn", version="1")
    queued = prom_sum(text, "ferry_queue_pushed_total", model="churn", version="1")
    if inline_below_us:
        # The warm-up call at load does not pass the queue; the first request has no cost
        # estimate yet, so at least it queues.
        assert inline >= n - 2 and queued >= 1, (inline, queued)
    else:
        assert (inline, queued) == (0, n), (inline, queued)
    assert inline + queued == n


@pytest.mark.parametrize("io_threads", [1, 3])
def test_every_connection_is_served_whatever_the_io_thread_count(ferry, fixtures, io_threads):
    """Connections are pinned to I/O threads: with one thread (every connection on it) or with
    more threads than cores, many concurrent keep-alive connections each get their own rows
    back, and the log says how many threads serve."""
    case = fixtures.case("churn")
    x = ref_array(case["inputs"][0])
    outs = {o["name"]: ref_array(o) for o in case["outputs"]}
    n = 12
    with ferry.running(f"io-threads-{io_threads}", ["churn@1"], onnx_engine="ort",
                       io_threads=io_threads) as srv:
        srv.wait_ready()
        with open(srv.log_path, encoding="utf-8") as f:
            start_log = f.read()
        assert f"io_threads={io_threads}" in start_log, start_log[-2000:]

        def one(i):
            with requests.Session() as session:
                for k in range(10):
                    row = (i + k) % x.shape[0]
                    body = {"inputs": [{"name": "X", "datatype": "FP32",
                                        "shape": [1, x.shape[1]], "data": x[row].tolist()}]}
                    r = session.post(srv.url + infer_path("churn"), json=body, timeout=30)
                    if r.status_code != 200:
                        return f"connection {i}: {r.status_code} {r.text[:200]}"
                    got = {o["name"]: np.array(o["data"]) for o in r.json()["outputs"]}
                    for name, ref in outs.items():
                        exp = ref[row:row + 1].reshape(-1)
                        ok = (np.allclose(got[name], exp, rtol=TOL, atol=TOL)
                              if exp.dtype.kind == "f" else np.array_equal(got[name], exp))
                        if not ok:
                            return f"connection {i}: {name} differs from row {row}'s"
            return None

        bad = [r for r in run_threads(one, n) if r is not None]
        assert not bad, bad[:5]
