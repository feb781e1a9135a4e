#!/usr/bin/env bash
# gRPC beside HTTP/JSON on the same ferry process and model, in the same run: 1-row OIP v2
# ModelInfer (raw FP32 contents, as tritonclient.grpc sends) driven by grpc-load (one thread,
# 16 streams per HTTP/2 connection) against 1-row OIP v2 JSON infer driven by wrk -t1, at c=1
# and c=64, two rounds, server CPU per request from /proc/<pid>/stat. Prints a Markdown table;
# quote ratios (the machine is shared).
#
# Usage: bash loadtests/grpc_vs_http.sh [FERRY_BIN] [SECONDS_PER_RUN] [MODEL] [ENGINE]
#   FERRY_BIN defaults to $CARGO_TARGET_DIR/release/ferry; grpc-load is built next to it:
#   cargo build --release --locked -p ferry-server --bin ferry -p ferry-loadtests --bin grpc-load
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
BIN=${1:-$TARGET/release/ferry}; DUR=${2:-6}; MODEL=${3:-churn}; ENGINE=${4:-ort}
LOAD="$TARGET/release/grpc-load"
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
[ -x "$LOAD" ] || { echo "build grpc-load first (see the usage above)" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
source loadtests/common.sh
ORT=$(python3 scripts/find-ort-lib.py)
churn_body "$WORK/body.json"
PORT=$((20000 + RANDOM % 20000)); GPORT=$((PORT + 1))
FERRY_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$GPORT" \
  --onnx-engine "$ENGINE" --ort-lib "$ORT" >"$WORK/ferry.log" 2>&1 &
PID=$!
wait_ready "$PORT"
echo "model $MODEL, engine $ENGINE, $DUR s per run"
echo "| round | protocol | c | req/s | p50 µs | p99 µs | errors | server CPU µs/req |"
echo "|---|---|---|---|---|---|---|---|"
for round in 1 2; do
  for c in 1 64; do
    for proto in http grpc; do
      before=$(cpu "$PID")
      if [ "$proto" = http ]; then
        out=$(WRK_BODY="$WORK/body.json" wrk -t1 -c"$c" -d"${DUR}s" -s "$LUA" \
          "http://127.0.0.1:$PORT/v2/models/$MODEL/infer" | grep RESULT)
      else
        out=$("$LOAD" --addr "127.0.0.1:$GPORT" --model "$MODEL" --shape 1,30 \
          --concurrency "$c" --seconds "$DUR" | grep RESULT)
      fi
      after=$(cpu "$PID")
      python3 loadtests/result_row.py "$out" "$((after - before))" "$TICK_US" "$round" "$proto" "$c"
    done
  done
done
