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

import pytest
import yaml

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
