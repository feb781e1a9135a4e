#!/usr/bin/env bash
# Two ferry binaries (e.g. the previous commit's release build and this one's) in the same run,
# alternating, two rounds: OIP v2 churn infer (1 row) and the embedded demo's `risk` endpoint
# (1 row and 64 rows, in-process features) at c=1 and c=64 (wrk -t1, loopback), server CPU per request
# from /proc/<pid>/stat. Prints a Markdown table; quote ratios (the machine is shared).
#
# Usage: bash loadtests/online_ab.sh OLD_FERRY NEW_FERRY [SECONDS_PER_RUN]   (needs wrk)
set -euo pipefail
OLD=$1; NEW=$2; DUR=${3:-6}
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
TICK_US=$((1000000 / $(getconf CLK_TCK)))
echo "| round | binary | target | c | req/s | p50 µs | p99 µs | errors | server CPU µs/req |"
echo "|---|---|---|---|---|---|---|---|---|"
cd "$(dirname "$0")/.."
LUA=loadtests/wrk_report.lua
ORT=$(python3 scripts/find-ort-lib.py)
python3 -c "import json,random; random.seed(1); print(json.dumps({'inputs':[{'name':'X','shape':[1,30],'datatype':'FP32','data':[round(random.uniform(-2,2),4) for _ in range(30)]}]}))" > "$WORK"/churn.json
echo '{"instances": [{"user_id": "u3", "amount": 12.5}]}' > "$WORK"/risk.json
# 64 rows: a request large enough for the column path (COLUMNS_MIN_ROWS).
python3 -c "import json; print(json.dumps({'instances': [{'user_id': f'u{i % 25 + 1}', 'amount': 10.0 + i} for i in range(64)]}))" > "$WORK"/risk64.json
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
for round in 1 2; do
for label in old new; do
  BIN=$OLD; [ $label = new ] && BIN=$NEW
  PORT=$((20000 + RANDOM % 20000))
  FERRY_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" --onnx-engine ort --ort-lib "$ORT" >"$WORK/$label.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.1; done
  for target in "churn:/v2/models/churn/infer" "risk:/v1/endpoints/risk/predict" "risk64:/v1/endpoints/risk/predict"; do
    name=${target%%:*}; path=${target#*:}
    for c in 1 64; do
      before=$(cpu "$PID")
      out=$(WRK_BODY="$WORK/$name.json" wrk -t1 -c"$c" -d"${DUR}s" -s "$LUA" "http://127.0.0.1:$PORT$path" | grep RESULT)
      after=$(cpu "$PID")
      python3 loadtests/result_row.py "$out" "$((after - before))" "$TICK_US" "$round" "$label" "$name" "$c"
    done
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
done
