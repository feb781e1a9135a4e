#!/usr/bin/env bash
# The one command that sets up what tests need and runs them all:
#   lints (fmt, clippy), Rust unit + engine + HTTP tests, then the end-to-end suite that drives
#   the real `ferry` binary with tritonclient and plain HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-deps.sh
# Python runs from the project venv setup-test-deps.sh filled (PEP 668: never the system one).
export FERRY_VENV="${FERRY_VENV:-$HOME/.cache/ferry-venv}"
export PATH="$FERRY_VENV/bin:$PATH"

# Reused across runs and clones (CI on the same machine keeps its build).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
# Incremental caches are per checkout path, so in a shared target dir every fresh clone adds
# its own (18 GiB had piled up and filled the disk); a test run gains nothing from them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export FERRY_ORT_LIB="${FERRY_ORT_LIB:-$(python3 scripts/find-ort-lib.py)}"
export PYTHONWARNINGS=ignore

cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
shellcheck scripts/*.sh .ci/run
# Deployment files, offline: manifests render (kustomize, no cluster), the dashboard is JSON,
# nginx accepts the load-balancer config (the LB test runs it for real).
kubectl kustomize deploy/k8s >/dev/null
kubectl kustomize deploy/batch >/dev/null
kubectl kustomize deploy/k8s-keda >/dev/null
python3 -m json.tool deploy/grafana/ferry-dashboard.json >/dev/null
python3 -m py_compile deploy/airflow/ferry_batch_dag.py
# Supply chain: licenses, bans, sources and (when the RustSec DB is reachable or cached)
# advisories of Cargo.lock (deny.toml); setup-test-deps.sh installs cargo-deny.
bash scripts/deny.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo test --workspace --locked

export FERRY_BIN="$CARGO_TARGET_DIR/debug/ferry"
python3 -m pytest tests/py -q
