#!/usr/bin/env bash
# Single-request latency (concurrency 1) of the demo models, side by side in one invocation:
#   ferry with ONNX Runtime, ferry with tract, and FastAPI + uvicorn + onnxruntime (1 worker)
# on the same ONNX file and the same OIP v2 JSON request. Loopback only; every process it
# starts is stopped by PID at exit. Quote ratios: this machine is shared and noisy.
#
# Usage: bash loadtests/latency.sh [SECONDS_PER_RUN]     (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r loadtests/requirements.txt
cargo build --release --locked -p ferry-server >/dev/null
FERRY="$CARGO_TARGET_DIR/release/ferry"
ORT_LIB="$(python3 scripts/find-ort-lib.py)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$1/v2/health/ready" >/dev/null && return 0; sleep 0.1
  done
  echo "server on port $1 did not become ready" >&2; return 1
}
body() { # model features rows -> file
  python3 -c "import json,random; random.seed(1); n=$2*$3; print(json.dumps({'inputs':[{'name':'X','shape':[$3,$2],'datatype':'FP32','data':[round(random.uniform(-2,2),4) for _ in range(n)]}]}))" > "$WORK/$1.json"
}
body churn 30 1
body mlp 64 1

run() { # label port model
  WRK_BODY="$WORK/$3.json" wrk -t1 -c1 -d"${DURATION}s" -s loadtests/wrk_report.lua \
    "http://127.0.0.1:$2/v2/models/$3/infer" | grep RESULT | sed "s/^RESULT/$1 $3/"
}

P_ORT=$(port); "$FERRY" serve --listen "127.0.0.1:$P_ORT" --onnx-engine ort --ort-lib "$ORT_LIB" 2>"$WORK/ort.log" & PIDS+=($!)
P_TRACT=$(port); "$FERRY" serve --listen "127.0.0.1:$P_TRACT" --onnx-engine tract 2>"$WORK/tract.log" & PIDS+=($!)
wait_ready "$P_ORT"; wait_ready "$P_TRACT"

RESULTS="$WORK/results.txt"
for model in churn mlp; do
  run ferry-ort "$P_ORT" "$model" >> "$RESULTS"
  run ferry-tract "$P_TRACT" "$model" >> "$RESULTS"
  P_PEER=$(port)
  python3 loadtests/peers/fastapi_onnx.py "server/demo/registry/$model/1/model.onnx" "$P_PEER" 1 2>"$WORK/peer.log" & PEER=$!; PIDS+=($PEER)
  wait_ready "$P_PEER"
  run fastapi-onnxruntime "$P_PEER" "$model" >> "$RESULTS"
  kill "$PEER"; wait "$PEER" 2>/dev/null || true
done

python3 - "$RESULTS" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    parts = line.split()
    kv = dict(p.split("=") for p in parts[2:])
    rows.append((parts[0], parts[1], kv))
print(f"{'server':22} {'model':6} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>6}  p50 vs fastapi")
for server, model, kv in rows:
    rps = int(kv["requests"]) / float(kv["seconds"])
    peer = next(k for s, m, k in rows if s == "fastapi-onnxruntime" and m == model)
    ratio = int(peer["p50_us"]) / max(1, int(kv["p50_us"]))
    print(f"{server:22} {model:6} {rps:9.0f} {kv['p50_us']:>8} {kv['p99_us']:>8} {kv['errors']:>6}  {ratio:5.1f}x faster")
PY
