"""deploy/ checked offline: Kubernetes manifests agree with DESIGN.md's health endpoints and
ferry's drain, the Dockerfile runs non-root with a healthcheck, the Grafana dashboard only
queries metrics ferry exports, and the ConfigMap's ferry.yaml uses known config keys."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import boto3
import kubernetes_validate
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from conftest import Process, base_env, ferry_bin, free_port, read_tail

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DEPLOY = os.path.join(ROOT, "deploy")


def manifests():
    docs = {}
    for path in sorted(glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml"))):
        if path.endswith("kustomization.yaml"):
            continue
        for doc in yaml.safe_load_all(open(path)):
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), path
            docs[doc["kind"]] = doc
    return docs


def test_every_kind_is_there():
    assert set(manifests()) >= {"Deployment", "Service", "HorizontalPodAutoscaler",
                                "PodDisruptionBudget", "ConfigMap", "ServiceAccount"}


def test_probes_drain_and_resources():
    d = manifests()["Deployment"]
    spec = d["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # Readiness over gRPC health, on the port the container serves gRPC on.
    grpc_port = c["readinessProbe"]["grpc"]["port"]
    assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in c["ports"]
    assert c["args"][c["args"].index("--grpc-listen") + 1] == f"0.0.0.0:{grpc_port}"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # ferry drains by itself (drain.delay, then drain.timeout): a preStop sleep would only
    # add to it; the grace period must cover every step before SIGKILL.
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    ferry_cfg = yaml.safe_load(manifests()["ConfigMap"]["data"]["ferry.yaml"])
    seconds = {"s": 1, "ms": 0.001, "m": 60}
    delay, timeout = (float(v[:-len(u)]) * seconds[u]
                      for v in (ferry_cfg["drain"]["delay"], ferry_cfg["drain"]["timeout"])
                      for u in [re.search(r"(ms|s|m)$", v).group(1)])
    assert delay > 0, "behind a Service the pod must keep serving while it leaves the endpoints"
    assert timeout >= ferry_cfg["request_timeout_ms"] / 1000, \
        "the drain must let the longest request finish"
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + delay + timeout, \
        "grace period must cover preStop, the drain delay and the drain timeout"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = d["spec"]["template"]["metadata"]["labels"]
    for kind in ["Service", "PodDisruptionBudget"]:
        m = manifests()[kind]
        sel = m["spec"]["selector"].get("matchLabels", m["spec"]["selector"])
        assert all(labels.get(k) == v for k, v in sel.items()), kind
    assert manifests()["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]
    sa = manifests()["ServiceAccount"]
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    assert spec["serviceAccountName"] == sa["metadata"]["name"]


def test_configmap_uses_known_config_keys():
    cfg = yaml.safe_load(manifests()["ConfigMap"]["data"]["ferry.yaml"])
    src = open(os.path.join(ROOT, "server", "src", "config.rs")).read()
    struct = src[src.index("pub struct ServerConfig"):]
    struct = struct[:struct.index("\n}\n")]
    known = set(re.findall(r"pub (\w+):", struct))
    assert set(cfg) <= known, set(cfg) - known


def test_kubectl_renders_offline():
    if not shutil.which("kubectl"):
        pytest.fail("kubectl not installed (scripts/setup-test-deps.sh installs Debian's "
                    "kubernetes-client)")
    r = subprocess.run(["kubectl", "kustomize", os.path.join(DEPLOY, "k8s")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\nkind: ") + r.stdout.startswith("kind: ") >= 6


def test_dockerfile():
    text = open(os.path.join(DEPLOY, "Dockerfile")).read()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 3, "multi-stage build"
    assert re.search(r"^USER 10001", text, re.M), "runs as non-root"
    assert "HEALTHCHECK" in text and "/v2/health/live" in text
    assert "libonnxruntime.so" in text and "onnxruntime==" in text
    req = open(os.path.join(ROOT, "tests", "py", "requirements.txt")).read()
    pinned = re.search(r"onnxruntime==([\d.]+)", req).group(1)
    assert f"onnxruntime=={pinned}" in text, "Dockerfile and tests use the same ORT wheel"
    # The image starts on its own: the default command names no file the image lacks.
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    copied = re.findall(r"^COPY .* (\S+)$", text, re.M)
    for arg in cmd:
        if arg.startswith("/"):
            assert any(arg.startswith(c) for c in copied), f"CMD reads {arg}, not in the image"
    # The non-root user's home does not exist: the cache dir must come from XDG_CACHE_HOME
    # and be a directory the image creates and hands to that user.
    cache = re.search(r"XDG_CACHE_HOME=(\S+)", text).group(1)
    assert f"{cache}/ferry" in text and re.search(rf"chown ferry:ferry {cache}/ferry", text)


def test_dashboard_queries_only_exported_metrics():
    dash = json.load(open(os.path.join(DEPLOY, "grafana", "ferry-dashboard.json")))
    # The server's families and those of ferry-models and ferry-pipeline, registered into the
    # same registry.
    catalogues = [("server", "src", "telemetry", "metrics.rs"), ("models", "src", "metrics.rs"),
                  ("pipeline", "src", "metrics.rs")]
    exported = set()
    for parts in catalogues:
        exported |= set(re.findall(r'"(ferry_\w+)"', open(os.path.join(ROOT, *parts)).read()))
    used = set()
    for panel in dash["panels"]:
        for t in panel["targets"]:
            used |= set(re.findall(r"ferry_\w+", t["expr"]))
    base = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    assert base <= exported, base - exported
    assert len(dash["panels"]) >= 8


def test_nginx_config_retries_idempotent_inference():
    text = open(os.path.join(DEPLOY, "nginx", "ferry.conf")).read()
    nu = re.search(r"proxy_next_upstream ([^;]+);", text).group(1).split()
    assert {"error", "timeout", "non_idempotent"} <= set(nu)
    assert "max_fails=" in text


def test_batch_indexed_job_and_airflow_dag():
    """deploy/batch: an Indexed Job whose FERRY_SHARDS equals its completions, running
    `ferry batch`; deploy/airflow: the DAG compiles and shards the same way."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(
        open(os.path.join(DEPLOY, "batch", "batch-job.yaml")))}
    assert set(docs) == {"ServiceAccount", "ConfigMap", "Job"}
    job = docs["Job"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["backoffLimitPerIndex"] >= 1
    spec = job["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["args"][0] == "batch"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert int(env["FERRY_SHARDS"]) == job["completions"]
    assert not any(a.startswith("--shard") for a in c["args"]), "the index comes from the Job"
    cfg = yaml.safe_load(docs["ConfigMap"]["data"]["ferry.yaml"])
    endpoint = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--endpoint="))
    assert endpoint in [e["name"] for e in cfg["endpoints"]]
    assert spec["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]

    dag = os.path.join(DEPLOY, "airflow", "ferry_batch_dag.py")
    r = subprocess.run([sys.executable, "-m", "py_compile", dag], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    text = open(dag).read()
    assert "KubernetesPodOperator" in text and "{{ ds }}" in text and "retries" in text
    assert "--shard={shard}/{SHARDS}" in text and "catchup=True" in text


def test_batch_job_renders_with_kubectl():
    if not shutil.which("kubectl"):
        pytest.fail("kubectl not installed (scripts/setup-test-deps.sh installs Debian's "
                    "kubernetes-client)")
    r = subprocess.run(["kubectl", "kustomize", os.path.join(DEPLOY, "batch")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout)]
    assert sorted(kinds) == ["ConfigMap", "Job", "ServiceAccount"]


def rendered(kustomize_dir):
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is required (scripts/setup-test-deps.sh installs it)"
    r = subprocess.run([kubectl, "kustomize", os.path.join(DEPLOY, kustomize_dir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.mark.parametrize("kustomize_dir", ["k8s", "batch"])
def test_every_file_a_pods_config_names_is_mounted(kustomize_dir):
    """The config file in the container args, and the files that config names (feature repo),
    are keys of a ConfigMap (or Secret) mounted at that path: a pod never starts without them."""
    docs = rendered(kustomize_dir)
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert pods
    for spec in pods:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            mounted = {}
            for m in c.get("volumeMounts", []):
                source = volumes[m["name"]].get("configMap")
                if source is None:
                    continue
                data = configmaps[source["name"]]["data"]
                if "subPath" in m:
                    mounted[m["mountPath"]] = data[m["subPath"]]
                else:
                    for key, text in data.items():
                        mounted[os.path.join(m["mountPath"], key)] = text
            args = " ".join(c.get("args", []))
            config_path = re.search(r"--config[= ](\S+)", args).group(1)
            assert config_path in mounted, f"{config_path} is not mounted: {sorted(mounted)}"
            config = yaml.safe_load(mounted[config_path])
            repo = (config.get("features") or {}).get("repo")
            if repo:
                assert repo in mounted, f"features.repo {repo} is not mounted: {sorted(mounted)}"
                views = yaml.safe_load(mounted[repo])["views"]
                assert views and all(v["source"]["path"] for v in views)


# Kinds from CRDs, which have no schema in kubernetes-validate: checked by the tests that name
# them (KEDA in test_autoscaling_metric_*, KServe in test_kserve_*).
CRD_KINDS = {"ScaledObject", "ClusterServingRuntime", "InferenceService"}
KUSTOMIZATIONS = ["k8s", "batch", "k8s-keda"]


@pytest.mark.parametrize("kustomize_dir", KUSTOMIZATIONS)
def test_rendered_objects_validate_against_the_kubernetes_schemas(kustomize_dir):
    """Every object kustomize renders is valid for Kubernetes 1.33 (strict: unknown fields
    are errors), so a typo in a manifest fails CI rather than `kubectl apply`."""
    docs = rendered(kustomize_dir)
    assert docs
    for d in docs:
        if d["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(d, "1.33", strict=True)


@pytest.mark.parametrize("kustomize_dir", KUSTOMIZATIONS)
def test_every_configmap_and_secret_a_pod_names_is_shipped_or_optional(kustomize_dir):
    """A pod whose volume, env or envFrom names a ConfigMap or Secret that is neither shipped
    nor `optional: true` stays in CreateContainerConfigError."""
    docs = rendered(kustomize_dir)
    shipped = {(d["kind"], d["metadata"]["name"]) for d in docs}
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert pods
    refs = []
    for spec in pods:
        for v in spec.get("volumes", []):
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"]["name"], v["configMap"]))
            if "secret" in v:
                refs.append(("Secret", v["secret"]["secretName"], v["secret"]))
        for c in spec["containers"] + spec.get("initContainers", []):
            for e in c.get("env", []):
                source = e.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    refs.append(("ConfigMap", source["configMapKeyRef"]["name"],
                                 source["configMapKeyRef"]))
                if "secretKeyRef" in source:
                    refs.append(("Secret", source["secretKeyRef"]["name"],
                                 source["secretKeyRef"]))
            for e in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in e:
                        refs.append((kind, e[key]["name"], e[key]))
    for kind, name, ref in refs:
        assert (kind, name) in shipped or ref.get("optional") is True, \
            f"{kustomize_dir}: a pod needs {kind} {name}, which is neither shipped nor optional"


def exported_metric_names(url):
    text = requests.get(url + "/metrics", timeout=10).text
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_autoscaling_and_dashboard_metrics_exist_in_metrics(tmp_path):
    """The HPA's Pods metric, the Prometheus adapter's series, the KEDA query and every
    dashboard query name metrics a running ferry really exports under those names (the demo
    models behind an endpoint with a shadow and capture, traces on, after some traffic), and
    the process collector's families are there."""
    demo = os.path.join(ROOT, "server", "demo")
    cfg = {"registry": {"uri": os.path.join(demo, "registry")}, "models": ["churn@champion"],
           "features": {"repo": os.path.join(demo, "features", "features.yaml")},
           "endpoints": [{"name": "risk",
                          "variants": [{"name": "control", "model": "risk@1", "weight": 1}],
                          "shadow": [{"model": "risk@1", "name": "shadow", "sample": 1.0}],
                          "capture": {"sample_percent": 100,
                                      "destination": str(tmp_path / "capture"),
                                      "format": "jsonl"}}]}
    (tmp_path / "ferry.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Traces on, to a receiver that is not there: the span counters exist and count failures.
    env = base_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    with Process([ferry_bin(), "serve", "--config", str(tmp_path / "ferry.yaml"), "--listen",
                  f"127.0.0.1:{port}", "--grpc-listen", "off"], env,
                 str(tmp_path / "demo.log")) as p:
        p.wait_for(url + "/v2/health/ready")
        body = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32",
                            "data": [0.5] * 30}]}
        assert requests.post(url + "/v2/models/churn/infer", json=body).status_code == 200
        assert requests.post(url + "/v2/models/churn/infer", json={"inputs": []}).status_code == 400
        r = requests.post(url + "/v1/endpoints/risk/predict",
                          json={"instances": [{"user_id": "u1", "amount": 3.0},
                                              {"user_id": "nobody", "amount": 1.0}]})
        assert r.status_code == 200, r.text
        bad = requests.post(url + "/v1/endpoints/risk/predict",
                            json={"instances": [{"amount": "lots"}]})
        assert bad.status_code == 400, bad.text
        deadline = time.monotonic() + 20
        while True:
            names = exported_metric_names(url)
            wanted = {"ferry_shadow_requests_total", "ferry_capture_records_total",
                      "ferry_otel_spans_total"}
            if wanted <= names or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    hpa = yaml.safe_load(open(os.path.join(DEPLOY, "k8s", "hpa.yaml")))
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                    if m["type"] == "Pods"]
    assert pods_metrics == ["ferry_inflight_requests"], "the HPA scales on a load metric"
    adapter = yaml.safe_load(open(os.path.join(DEPLOY, "k8s", "autoscaling",
                                               "prometheus-adapter-values.yaml")))
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] in pods_metrics
    keda = yaml.safe_load(open(os.path.join(DEPLOY, "k8s-keda", "scaledobject.yaml")))
    queries = [t["metadata"]["query"] for t in keda["spec"]["triggers"]
               if t["type"] == "prometheus"]
    used = set(re.findall(r"\b(?:ferry|process)_\w+", rule["seriesQuery"] + " ".join(queries)))
    dash = json.load(open(os.path.join(DEPLOY, "grafana", "ferry-dashboard.json")))
    for panel in dash["panels"]:
        for t in panel["targets"]:
            used |= {re.sub(r"_(bucket|sum|count)$", "", m)
                     for m in re.findall(r"\b(?:ferry|process)_\w+", t["expr"])}
    assert used <= bases, f"queried but not exported: {sorted(used - bases)}"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "process_start_time_seconds"} <= names
    assert {"ferry_inflight_requests", "ferry_inflight_requests_limit"} <= names


def test_inflight_gauge_moves_with_load(basic_server):
    """ferry_inflight_requests counts requests being served at scrape time: with requests held
    open it is above zero, and it returns to 0 when they finish."""
    def gauge():
        text = requests.get(basic_server.url + "/metrics", timeout=10).text
        return int(float(re.search(r"^ferry_inflight_requests (\S+)$", text, re.M).group(1)))

    assert gauge() == 0
    # Slow uploads hold their permits: the body arrives after the scrape.
    import socket
    held = []
    body = json.dumps({"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32",
                                   "data": [0.5] * 30}]}).encode()
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", basic_server.port), timeout=10)
        s.sendall(b"POST /v2/models/churn/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        held.append(s)
    try:
        deadline = time.monotonic() + 10
        while gauge() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gauge() == 3
    finally:
        for s in held:
            s.sendall(body[10:])
            assert b" 200 " in s.recv(4096).split(b"\r\n")[0]
            s.close()
    assert gauge() == 0


DEMO = os.path.join(ROOT, "server", "demo")


def mount_pod_files(docs, spec, container, root):
    """Writes what the pod would see under `root`: ConfigMap keys at their mount paths (subPath
    too) and emptyDir mounts as empty dirs. Returns {mountPath: local dir or file}."""
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        vol = volumes[m["name"]]
        target = root + m["mountPath"]
        if "configMap" in vol:
            data = configmaps[vol["configMap"]["name"]]["data"]
            items = {m["subPath"]: target} if "subPath" in m else {
                k: os.path.join(target, k) for k in data}
            for key, path in items.items():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(data[key])
        elif "emptyDir" in vol:
            os.makedirs(target, exist_ok=True)
        else:
            pytest.fail(f"volume {m['name']}: only configMap and emptyDir mounts are expected")


def rewrite_paths(value, root):
    """Absolute paths in a config (YAML tree) moved under `root`, as the pod's mounts are."""
    if isinstance(value, dict):
        return {k: rewrite_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_paths(v, root) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return root + value
    return value


def rewrite_config_files(root, config_path, replace):
    """Rewrites the mounted ferry.yaml (and the feature repo it names): absolute paths under
    `root`, then the `replace` pairs (cluster addresses → loopback servers)."""
    path = root + config_path
    cfg = rewrite_paths(yaml.safe_load(open(path)), root)
    text = yaml.safe_dump(cfg)
    for old, new in replace:
        text = text.replace(old, new)
    with open(path, "w") as f:
        f.write(text)
    return yaml.safe_load(text)


def container_env(container, **extra):
    """The container's env as Kubernetes would set it with no Secret created: literal values,
    and optional secret keys left unset."""
    env = base_env(**extra)
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"].get("secretKeyRef") or e["valueFrom"].get("configMapKeyRef")
            assert ref and ref.get("optional") is True, e
            env.pop(e["name"], None)
    return env


def publish_demo_churn(registry_uri, tmp_path):
    """churn@champion published into `registry_uri` as a training job would (ferry models push)."""
    d = tmp_path / "churn-train"
    d.mkdir()
    shutil.copy(os.path.join(DEMO, "registry", "churn", "1", "model.onnx"), d / "model.onnx")
    manifest = yaml.safe_load(open(os.path.join(DEMO, "registry", "churn", "1", "model.yaml")))
    for key in ("name", "version", "sha256"):
        manifest.pop(key, None)
    (d / "model.yaml").write_text(json.dumps(manifest))
    r = subprocess.run([ferry_bin(), "models", "--registry", registry_uri, "push", str(d),
                        "--name", "churn", "--alias", "champion"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def make_bucket(moto_s3, uri, region):
    bucket = uri[len("s3://"):].split("/", 1)[0]
    moto_s3.client().create_bucket(Bucket=bucket,
                                   CreateBucketConfiguration={"LocationConstraint": region})


def test_rendered_deployment_runs_until_ready(moto_s3, tmp_path):
    """deploy/k8s as rendered: the container's args, env and mounted ConfigMap run against the
    real binary (absolute paths under a temp root, listen addresses on loopback, the S3
    registry on a local S3 endpoint holding churn@champion, no Secret created) until HTTP
    readiness and the gRPC port the readiness probe uses both answer, then it drains on SIGTERM
    with exit 0."""
    docs = rendered("k8s")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    root = str(tmp_path / "pod")
    mount_pod_files(docs, spec, c, root)
    args = list(c["args"])
    config_path = args[args.index("--config") + 1]
    cfg = rewrite_config_files(root, config_path, [])
    make_bucket(moto_s3, cfg["registry"]["uri"], cfg["registry"]["region"])
    publish_demo_churn(cfg["registry"]["uri"], tmp_path)
    ports = {}
    for i, a in enumerate(args):
        if a.startswith("/"):
            args[i] = root + a
        elif re.fullmatch(r"0\.0\.0\.0:\d+", a):
            ports[int(a.split(":")[1])] = free_port()
            args[i] = f"127.0.0.1:{ports[int(a.split(':')[1])]}"
    http_port = ports[next(p["containerPort"] for p in c["ports"] if p["name"] == "http")]
    grpc_port = ports[c["readinessProbe"]["grpc"]["port"]]
    env = container_env(c, **{**moto_s3.env(), "AWS_REGION": cfg["registry"]["region"]})
    with Process([ferry_bin(), *args], env, str(tmp_path / "pod.log")) as p:
        p.wait_for(f"http://127.0.0.1:{http_port}{c['readinessProbe'].get('httpGet', {}).get('path', '/v2/health/ready')}", timeout=90)
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        body = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32",
                            "data": [0.5] * 30}]}
        r = requests.post(f"http://127.0.0.1:{http_port}/v2/models/churn/infer", json=body)
        assert r.status_code == 200, r.text
        p.proc.terminate()
        assert p.proc.wait(timeout=60) == 0, read_tail(p.log_path)
    assert "Inference routes are open" in open(tmp_path / "pod.log").read(), \
        "without the Secret the open server says so"


def test_rendered_batch_job_scores_every_row_once(moto_s3, redis_server, tmp_path):
    """deploy/batch as rendered: every index of the Indexed Job (JOB_COMPLETION_INDEX, with the
    Job's env) runs the container's args with the mounted ConfigMap (paths under a temp root,
    S3 on a local endpoint, the feature store's Redis on a local redis-server); each exits 0
    and together they score every input row exactly once."""
    docs = rendered("batch")
    (job,) = [d for d in docs if d["kind"] == "Job"]
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    root = str(tmp_path / "pod")
    mount_pod_files(docs, spec, c, root)
    args = list(c["args"])
    config_arg = next(a for a in args if a.startswith("--config="))
    config_path = config_arg.split("=", 1)[1]
    redis_in_config = re.search(r"redis://[^\s]+",
                                open(root + config_path).read()).group(0)
    cfg = rewrite_config_files(root, config_path, [(redis_in_config, redis_server.url)])
    region = cfg["registry"]["region"]
    make_bucket(moto_s3, cfg["registry"]["uri"], region)
    publish_demo_churn(cfg["registry"]["uri"], tmp_path)
    input_uri = next(a for a in args if a.startswith("--input=")).split("=", 1)[1]
    output_uri = next(a for a in args if a.startswith("--output=")).split("=", 1)[1]
    make_bucket(moto_s3, input_uri, region)
    s3 = moto_s3.client()
    bucket, prefix = input_uri[len("s3://"):].split("/", 1)
    rng = np.random.default_rng(3)
    ids = []
    for part in range(12):
        user_ids = [f"u{part}-{i}" for i in range(25)]
        ids += user_ids
        table = pa.table({"user_id": user_ids,
                          "X": [list(map(float, row)) for row in
                                rng.normal(size=(25, 30)).astype(np.float32)]})
        local = tmp_path / f"part-{part}.parquet"
        pq.write_table(table, local)
        s3.upload_file(str(local), bucket, f"{prefix}part-{part:02d}.parquet")
    for i, a in enumerate(args):
        if a.startswith("--config="):
            args[i] = "--config=" + root + config_path
    env = container_env(c, **{**moto_s3.env(), "AWS_REGION": region})
    env["TMPDIR"] = root + env["TMPDIR"]
    completions = job["spec"]["completions"]
    for index in range(completions):
        env["JOB_COMPLETION_INDEX"] = str(index)
        r = subprocess.run([ferry_bin(), *args], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"index {index}: {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    out_bucket, out_prefix = output_uri[len("s3://"):].split("/", 1)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=out_bucket, Prefix=out_prefix)
            .get("Contents", []) if o["Key"].endswith(".parquet")]
    scored = []
    for key in keys:
        local = tmp_path / "out.parquet"
        s3.download_file(out_bucket, key, str(local))
        scored += pq.read_table(local).column("user_id").to_pylist()
    assert sorted(scored) == sorted(ids)


CHART = os.path.join(DEPLOY, "helm", "ferry")


def helm_template(values):
    """`helm template` for the subset of Go templates the generated chart uses (Helm is not
    installable here): `{{ .Values.x }}`, and `{{- [toYaml] .Values.x | nindent N }}`."""
    def lookup(path):
        v = {"Values": values}
        for part in path.strip(".").split("."):
            v = v[part]
        return v

    def block(m):
        value = lookup(m.group(2))
        text = yaml.safe_dump(value, sort_keys=False) if m.group(1) else value
        pad = " " * int(m.group(3))
        return "".join("\n" + pad + line for line in text.rstrip("\n").split("\n"))

    docs = []
    for name in sorted(os.listdir(os.path.join(CHART, "templates"))):
        text = open(os.path.join(CHART, "templates", name)).read()
        text = re.sub(r"\s*\{\{-\s*(toYaml\s+)?(\.Values[\w.]+)\s*\|\s*nindent\s+(\d+)\s*\}\}",
                      block, text)
        text = re.sub(r"\{\{\s*(\.Values[\w.]+)\s*\}\}", lambda m: str(lookup(m.group(1))), text)
        assert "{{" not in text, f"{name}: a template form the test renderer does not know"
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def test_helm_chart_is_generated_from_the_kustomize_base():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen-helm-chart.py"),
                        "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_helm_chart_renders_the_base_and_takes_values():
    """With its default values the chart renders exactly the objects of deploy/k8s; values
    users set (replicas, image, config, autoscaling) land where they belong."""
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    key = lambda d: (d["kind"], d["metadata"]["name"])
    assert sorted(helm_template(values), key=key) == sorted(rendered("k8s"), key=key)
    values["replicaCount"] = 7
    values["image"]["tag"] = "9.9.9"
    values["autoscaling"]["maxReplicas"] = 50
    values["config"] = values["config"].replace("churn@champion", "fraud@champion")
    docs = {d["kind"]: d for d in helm_template(values)}
    dep = docs["Deployment"]["spec"]
    assert dep["replicas"] == 7
    assert dep["template"]["spec"]["containers"][0]["image"].endswith(":9.9.9")
    assert docs["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 50
    assert "fraud@champion" in docs["ConfigMap"]["data"]["ferry.yaml"]
    for d in docs.values():
        kubernetes_validate.validate(d, "1.33", strict=True)
