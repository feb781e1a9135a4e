"""Request ids, Prometheus metrics and the OpenAPI document."""
import re

import pytest

from conftest import infer_path, json_infer_body

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """[(name, {label: value}, float)] for every sample line."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples


def scrape(server):
    r = server.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    return r.text, parse_metrics(r.text)


def churn_requests_total(samples):
    return sum(v for n, l, v in samples
               if n == "ferry_requests_total" and l.get("model") == "churn"
               and l.get("version") == "1")


# -- request id ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [("GET", "/v2/health/live"), ("GET", "/v2"),
                                         ("GET", "/v2/models/churn"), ("GET", "/metrics"),
                                         ("GET", "/v2/models/nosuchmodel"),
                                         ("GET", "/no/such/route")])
def test_request_id_echo(basic_server, method, path):
    rid = "e2e-req-7f3a9c"
    r = basic_server.request(method, path, headers={"x-request-id": rid})
    assert r.headers.get("x-request-id") == rid, (r.status_code, dict(r.headers))


def test_request_id_echo_on_infer(basic_server, fixtures):
    case = fixtures.case("churn")
    rid = "e2e-infer-0001"
    r = basic_server.post(infer_path("churn"), json=json_infer_body(case),
                          headers={"x-request-id": rid})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id") == rid
    r = basic_server.post(infer_path("churn"), data=b"{bad",
                          headers={"x-request-id": rid, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.headers.get("x-request-id") == rid
    x = case["inputs"][0]
    rows = [x["data"][i * 30:(i + 1) * 30] for i in range(x["shape"][0])]
    r = basic_server.post("/v1/models/churn:predict", json={"instances": rows},
                          headers={"x-request-id": rid})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id") == rid


def test_request_id_generated(basic_server):
    ids = []
    for _ in range(3):
        r = basic_server.get("/v2/health/live")
        rid = r.headers.get("x-request-id")
        assert rid and rid.strip(), dict(r.headers)
        ids.append(rid)
    assert len(set(ids)) == len(ids), f"generated request ids repeat: {ids}"


# -- metrics -------------------------------------------------------------------------------------

def test_metrics_count_requests(basic_server, fixtures):
    case = fixtures.case("churn")
    _, before = scrape(basic_server)
    n = 3
    for _ in range(n):
        r = basic_server.post(infer_path("churn"), json=json_infer_body(case))
        assert r.status_code == 200, r.text
    x = case["inputs"][0]
    rows = [x["data"][i * 30:(i + 1) * 30] for i in range(x["shape"][0])]
    r = basic_server.post("/v1/models/churn:predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    text, after = scrape(basic_server)
    assert re.search(r'^ferry_requests_total\{[^}]*model="churn"[^}]*\}', text, re.M), text[:3000]
    delta = churn_requests_total(after) - churn_requests_total(before)
    assert delta >= n + 1, f"ferry_requests_total{{model=churn,version=1}} grew by {delta}"


def test_metrics_type_lines(basic_server, fixtures):
    case = fixtures.case("churn")
    assert basic_server.post(infer_path("churn"), json=json_infer_body(case)).status_code == 200
    text, _ = scrape(basic_server)
    assert re.search(r"^# TYPE ferry_requests_total counter$", text, re.M), text[:3000]
    assert re.search(r"^# TYPE ferry_request_duration_seconds histogram$", text, re.M), text[:3000]


def test_metrics_duration_histogram(basic_server, fixtures):
    case = fixtures.case("mlp")
    assert basic_server.post(infer_path("mlp", "1"), json=json_infer_body(case)).status_code == 200
    _, samples = scrape(basic_server)

    def series(suffix, model):
        return [(l, v) for n, l, v in samples
                if n == "ferry_request_duration_seconds" + suffix and l.get("model") == model
                and l.get("version") == "1"]
    for model in ("mlp",):
        buckets = series("_bucket", model)
        counts = series("_count", model)
        sums = series("_sum", model)
        assert buckets and counts and sums, f"no duration histogram for {model}"
        assert any(l.get("le") == "+Inf" for l, _ in buckets)
        assert sum(v for _, v in counts) >= 1
        inf_total = sum(v for l, v in buckets if l.get("le") == "+Inf")
        assert inf_total == sum(v for _, v in counts)


# -- OpenAPI -------------------------------------------------------------------------------------

def normalize(path):
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_openapi(basic_server):
    r = basic_server.get("/openapi.json")
    assert r.status_code == 200, r.text
    assert "json" in r.headers.get("content-type", "")
    doc = r.json()
    assert str(doc.get("openapi", "")).startswith("3."), doc.get("openapi")
    assert isinstance(doc.get("info"), dict)
    paths = doc.get("paths")
    assert isinstance(paths, dict) and paths
    norm = {}
    for p, item in paths.items():
        norm.setdefault(normalize(p), {}).update({k.lower(): v for k, v in item.items()})
    required = {
        "/v2/health/live": "get", "/v2/health/ready": "get", "/v2": "get",
        "/v2/models/{}": "get", "/v2/models/{}/versions/{}": "get",
        "/v2/models/{}/ready": "get",
        "/v2/models/{}/infer": "post", "/v2/models/{}/versions/{}/infer": "post",
        "/v2/repository/index": "post", "/v1/models/{}:predict": "post",
    }
    missing = [f"{m.upper()} {p}" for p, m in required.items()
               if p not in norm or m not in norm[p]]
    assert not missing, f"OpenAPI paths missing {missing}; has {sorted(paths)}"
