#!/usr/bin/env bash
# Online cost of the trees engine against ONNX Runtime (issue 21): one ferry binary serving the
# demo's churn model (100 trees, 30 features, OIP v2 JSON, 1 row) with `onnx_engine: ort` and
# `onnx_engine: trees`, alternated over two rounds, wrk -t1 on loopback at c=1 and c=64.
# Server CPU per request from /proc/<pid>/stat. Quote the ratios: the machine is shared.
#
# Usage: bash loadtests/trees_online.sh FERRY_BIN [SECONDS_PER_RUN]   (needs wrk)
set -euo pipefail
BIN=$1; DUR=${2:-6}
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$(dirname "$0")/.."
source loadtests/common.sh
ORT=$(python3 scripts/find-ort-lib.py)
REG="$PWD/server/demo/registry"
churn_body "$WORK"/churn.json
echo "| round | engine | c | req/s | p50 µs | p99 µs | errors | server CPU µs/req |"
echo "|---|---|---|---|---|---|---|---|"
for round in 1 2; do
for engine in ort trees; do
  PORT=$((20000 + RANDOM % 20000))
  printf 'registry: {uri: %s}\nmodels: [churn@champion]\nonnx_engine: %s\n' "$REG" "$engine" > "$WORK/ferry.yaml"
  "$BIN" serve --config "$WORK/ferry.yaml" --listen "127.0.0.1:$PORT" --grpc-listen off --ort-lib "$ORT" >"$WORK/$engine.log" 2>&1 &
  PID=$!
  wait_ready "$PORT"
  grep -q "engine=$engine" "$WORK/$engine.log" || { echo "churn did not load on $engine:"; cat "$WORK/$engine.log"; exit 1; }
  for c in 1 64; do
    wrk_row "$PID" "$c" "http://127.0.0.1:$PORT/v2/models/churn/infer" "$WORK/churn.json" "$round" "$engine"
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
done
