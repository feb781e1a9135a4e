#!/usr/bin/env bash
# The one command that sets up what tests need and runs them all:
#   lints (fmt, clippy), Rust unit + engine + HTTP tests, then the end-to-end suite that drives
#   the real `ferry` binary with tritonclient and plain HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-deps.sh

# Reused across runs and clones (CI on the same machine keeps its build).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
export FERRY_ORT_LIB="${FERRY_ORT_LIB:-$(python3 scripts/find-ort-lib.py)}"
export PYTHONWARNINGS=ignore

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo test --workspace --locked

export FERRY_BIN="$CARGO_TARGET_DIR/debug/ferry"
python3 -m pytest tests/py -q
