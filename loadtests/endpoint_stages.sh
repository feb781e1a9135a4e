#!/usr/bin/env bash
# Overhead of the endpoint transform stage and of prediction capture, measured side by side in
# one invocation on one release `ferry` serving the demo `risk` model (features from the
# in-process store, so Redis noise stays out):
#   plain       features -> model
#   builtin     + 4 pre steps (fill_missing, clip, standardize, log1p) and 3 post steps
#               (threshold, calibrate, select)
#   script      + a Rhai post-processing rule (per-row call)
#   capture     plain + capture of 100% of requests (JSONL to a local dir)
#   capture_pq  plain + capture of 100% of requests (Parquet)
#   capture10   plain + capture of 10% of requests (JSONL), a typical production rate
# Each endpoint gets ROUNDS rounds of SECONDS at concurrency 1 (wrk), interleaved so drift
# hits all of them alike; the table gives the median p50/p99 over rounds and the ratio to
# `plain`. Quote ratios: this machine is shared and noisy.
#
# Usage: bash loadtests/endpoint_stages.sh [SECONDS_PER_RUN] [ROUNDS] [ROWS_PER_REQUEST]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-5}"
ROUNDS="${2:-3}"
ROWS="${3:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --locked -p ferry-server >/dev/null
FERRY="$CARGO_TARGET_DIR/release/ferry"
ORT_LIB="$(python3 scripts/find-ort-lib.py)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

python3 -c "import sys; sys.path.insert(0, 'scripts'); import make_demo_features as m; m.build('$WORK/registry', '$WORK/features')"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/ferry.yaml" <<YAML
registry: {uri: $WORK/registry}
onnx_engine: ort
onnxruntime_lib: $ORT_LIB
features: {repo: $WORK/features/features.yaml}
endpoints:
  - name: plain
    variants: [{name: a, model: risk@1}]
  - name: builtin
    variants: [{name: a, model: risk@1}]
    preprocess:
      - fill_missing: {amount: 0}
      - clip: {amount: {min: 0, max: 1000}}
      - standardize: {user_stats.spend_30d: {mean: 250, std: 120}}
      - log1p: [user_stats.visits_7d]
    postprocess:
      - threshold: {field: probabilities, index: 1, threshold: 0.5, labels: [approve, review], output: decision}
      - calibrate: {field: probabilities, index: 1, table: [[0, 0], [0.5, 0.4], [1, 1]], output: score}
      - select: [decision, score]
  - name: script
    variants: [{name: a, model: risk@1}]
    postprocess:
      - script: {name: vip, source: 'fn transform(row, input) { if input.amount > 500.0 { row.review = true; } else { row.review = false; } row }'}
  - name: capture
    variants: [{name: a, model: risk@1}]
    capture: {sample_percent: 100, destination: $WORK/captured, format: jsonl}
  - name: capture_pq
    variants: [{name: a, model: risk@1}]
    capture: {sample_percent: 100, destination: $WORK/captured, format: parquet}
  - name: capture10
    variants: [{name: a, model: risk@1}]
    capture: {sample_percent: 10, destination: $WORK/captured, format: jsonl}
YAML
"$FERRY" serve --config "$WORK/ferry.yaml" --listen "127.0.0.1:$PORT" 2>"$WORK/ferry.log" & PIDS+=($!)
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.1; done
python3 -c "import json; print(json.dumps({'instances': [{'user_id': f'u{i % 50 + 1}', 'amount': 12.5 + i} for i in range($ROWS)]}))" > "$WORK/body.json"
for e in plain builtin script capture capture_pq capture10; do
  code=$(curl -s -o "$WORK/check.json" -w '%{http_code}' -H 'content-type: application/json' --data @"$WORK/body.json" "http://127.0.0.1:$PORT/v1/endpoints/$e/predict")
  [ "$code" = 200 ] || { echo "endpoint $e answered $code: $(cat "$WORK/check.json")" >&2; exit 1; }
done

RESULTS="$WORK/results.txt"
for round in $(seq 1 "$ROUNDS"); do
  for e in plain builtin script capture capture_pq capture10; do
    WRK_BODY="$WORK/body.json" wrk -t1 -c1 -d"${DURATION}s" -s loadtests/wrk_report.lua \
      "http://127.0.0.1:$PORT/v1/endpoints/$e/predict" | grep RESULT | sed "s/^RESULT/$e $round/" >> "$RESULTS"
  done
done
captured=$(find "$WORK/captured" -type f | wc -l)

python3 - "$RESULTS" "$ROWS" "$captured" <<'PY'
import statistics, sys
by = {}
for line in open(sys.argv[1]):
    parts = line.split()
    kv = dict(p.split("=") for p in parts[2:])
    by.setdefault(parts[0], []).append(kv)
med = lambda xs: statistics.median(xs)
base = by["plain"]
b50 = med([int(k["p50_us"]) for k in base]); b99 = med([int(k["p99_us"]) for k in base])
print(f"rows/request={sys.argv[2]}, rounds={len(base)}, capture files written={sys.argv[3]}")
print(f"{'endpoint':11} {'req/s':>8} {'p50 us':>7} {'p99 us':>7} {'errors':>6}  p50 vs plain  p99 vs plain")
for e, runs in by.items():
    rps = med([int(k["requests"]) / float(k["seconds"]) for k in runs])
    p50 = med([int(k["p50_us"]) for k in runs]); p99 = med([int(k["p99_us"]) for k in runs])
    errors = sum(int(k["errors"]) for k in runs)
    print(f"{e:11} {rps:8.0f} {p50:7.0f} {p99:7.0f} {errors:6d}  {p50 / b50:11.2f}x {p99 / b99:12.2f}x   (+{p50 - b50:.0f} us p50)")
PY
