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
TICK_US=$((1000000 / $(getconf CLK_TCK)))
LUA=loadtests/wrk_report.lua
ORT=$(python3 scripts/find-ort-lib.py)
REG="$PWD/server/demo/registry"
python3 -c "import json,random; random.seed(1); print(json.dumps({'inputs':[{'name':'X','shape':[1,30],'datatype':'FP32','data':[round(random.uniform(-2,2),4) for _ in range(30)]}]}))" > "$WORK"/churn.json
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "| round | engine | c | req/s | p50 µs | p99 µs | errors | server CPU µs/req |"
echo "|---|---|---|---|---|---|---|---|"
for round in 1 2; do
for engine in ort trees; do
  PORT=$((20000 + RANDOM % 20000))
  printf 'registry: {uri: %s}\nmodels: [churn@champion]\nonnx_engine: %s\n' "$REG" "$engine" > "$WORK/ferry.yaml"
  "$BIN" serve --config "$WORK/ferry.yaml" --listen "127.0.0.1:$PORT" --grpc-listen off --ort-lib "$ORT" >"$WORK/$engine.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.1; done
  grep -q "engine=$engine" "$WORK/$engine.log" || { echo "churn did not load on $engine:"; cat "$WORK/$engine.log"; exit 1; }
  for c in 1 64; do
    before=$(cpu "$PID")
    out=$(WRK_BODY="$WORK/churn.json" wrk -t1 -c"$c" -d"${DUR}s" -s "$LUA" "http://127.0.0.1:$PORT/v2/models/churn/infer" | grep RESULT)
    after=$(cpu "$PID")
    python3 loadtests/result_row.py "$out" "$((after - before))" "$TICK_US" "$round" "$engine" "$c"
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
done
