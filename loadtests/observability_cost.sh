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
source loadtests/common.sh
ORT=$(python3 scripts/find-ort-lib.py)
REG="$PWD/server/demo/registry"
churn_body "$WORK"/churn.json
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
  wait_ready "$PORT"
  for c in 1 64; do
    wrk_row "$PID" "$c" "http://127.0.0.1:$PORT/v2/models/churn/infer" "$WORK/churn.json" "$round" "$setting"
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
done
