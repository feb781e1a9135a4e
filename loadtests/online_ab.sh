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
echo "| round | binary | target | c | req/s | p50 µs | p99 µs | errors | server CPU µs/req |"
echo "|---|---|---|---|---|---|---|---|---|"
cd "$(dirname "$0")/.."
source loadtests/common.sh
ORT=$(python3 scripts/find-ort-lib.py)
churn_body "$WORK"/churn.json
echo '{"instances": [{"user_id": "u3", "amount": 12.5}]}' > "$WORK"/risk.json
# 64 rows: a request large enough for the column path (COLUMNS_MIN_ROWS).
python3 -c "import json; print(json.dumps({'instances': [{'user_id': f'u{i % 25 + 1}', 'amount': 10.0 + i} for i in range(64)]}))" > "$WORK"/risk64.json
for round in 1 2; do
for label in old new; do
  BIN=$OLD; [ $label = new ] && BIN=$NEW
  PORT=$((20000 + RANDOM % 20000))
  FERRY_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" --onnx-engine ort --ort-lib "$ORT" >"$WORK/$label.log" 2>&1 &
  PID=$!
  wait_ready "$PORT"
  for target in "churn:/v2/models/churn/infer" "risk:/v1/endpoints/risk/predict" "risk64:/v1/endpoints/risk/predict"; do
    name=${target%%:*}; path=${target#*:}
    for c in 1 64; do
      wrk_row "$PID" "$c" "http://127.0.0.1:$PORT$path" "$WORK/$name.json" "$round" "$label" "$name"
    done
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
done
