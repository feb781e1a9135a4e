#!/usr/bin/env bash
# What the access log and trace export cost on the hot path: one ferry binary, the demo's churn
# model (OIP v2, 1 row) at c=1 and c=64 (wrk -t1, loopback), in four settings run alternately,
# two rounds: access log off; access log on (the default: FERRY_LOG=info, 1000 lines/s, then
# sampled); on and every line written (max_lines_per_second high); and OTLP trace export on
# (to a local sink that answers 200). Server CPU per request from /proc/<pid>/stat.
#
# Usage: bash loadtests/observability_cost.sh FERRY_BIN [SECONDS_PER_RUN]   (needs wrk)
set -euo pipefail
BIN=$1; DUR=${2:-6}
WORK="$(mktemp -d)"
SINK_PID=""
trap 'rm -rf "$WORK"; [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null' EXIT
cd "$(dirname "$0")/.."
TICK_US=$((1000000 / $(getconf CLK_TCK)))
LUA=loadtests/wrk_report.lua
ORT=$(python3 scripts/find-ort-lib.py)
REG="$PWD/server/demo/registry"
python3 -c "import json,random; random.seed(1); print(json.dumps({'inputs':[{'name':'X','shape':[1,30],'datatype':'FP32','data':[round(random.uniform(-2,2),4) for _ in range(30)]}]}))" > "$WORK"/churn.json
SINK_PORT=$((20000 + RANDOM % 20000))
python3 -c "
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length'])); self.send_response(200)
        self.send_header('Content-Length', '0'); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()" "$SINK_PORT" &
SINK_PID=$!
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "| round | setting | c | req/s | p50 µs | p99 µs | errors | server CPU µs/req |"
echo "|---|---|---|---|---|---|---|---|"
for round in 1 2; do
for setting in off default all traces; do
  PORT=$((20000 + RANDOM % 20000))
  case $setting in
    off) AL="{enabled: false}" ;;
    all) AL="{max_lines_per_second: 1000000000}" ;;
    *) AL="{}" ;;
  esac
  printf 'registry: {uri: %s}\nmodels: [churn@champion]\nonnx_engine: ort\naccess_log: %s\n' "$REG" "$AL" > "$WORK/ferry.yaml"
  ENVS=(FERRY_LOG=info FERRY_LOG_FORMAT=json)
  [ "$setting" = traces ] && ENVS+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT")
  env "${ENVS[@]}" "$BIN" serve --config "$WORK/ferry.yaml" --listen "127.0.0.1:$PORT" --grpc-listen off --ort-lib "$ORT" >"$WORK/$setting.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.1; done
  for c in 1 64; do
    before=$(cpu "$PID")
    out=$(WRK_BODY="$WORK/churn.json" wrk -t1 -c"$c" -d"${DUR}s" -s "$LUA" "http://127.0.0.1:$PORT/v2/models/churn/infer" | grep RESULT)
    after=$(cpu "$PID")
    python3 loadtests/result_row.py "$out" "$((after - before))" "$TICK_US" "$round" "$setting" "$c"
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
done
