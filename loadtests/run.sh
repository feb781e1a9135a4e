#!/usr/bin/env bash
# One command for the side-by-side load tests: installs the load tools (wrk, hey from Debian)
# and the peer servers (FastAPI, uvicorn, onnxruntime, Seldon MLServer from PyPI), builds ferry
# in release mode, runs loadtests/run.py, and writes loadtests/RESULTS.md.
#   bash loadtests/run.sh [--duration SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
missing=()
for tool in wrk hey; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r loadtests/requirements.txt
exec python3 loadtests/run.py "$@"
