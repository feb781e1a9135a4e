# Sourced by the online load scripts (run from the repository root): what they all measure with.
LUA=loadtests/wrk_report.lua
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# CPU ticks (user + system) process $1 and its child processes (a peer's workers) have used
# so far.
cpu() {
  local t=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}

# The demo churn model's 1-row OIP v2 JSON body (fixed seed), written to file $1.
churn_body() {
  python3 -c "import json,random; random.seed(1); print(json.dumps({'inputs':[{'name':'X','shape':[1,30],'datatype':'FP32','data':[round(random.uniform(-2,2),4) for _ in range(30)]}]}))" > "$1"
}

# Waits up to 10 s for the server on port $1 to answer ready.
wait_ready() {
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$1/v2/health/ready" >/dev/null && return; sleep 0.1; done
}

# wrk_row PID C URL BODY LABEL...: wrk -t1 at C connections for $DUR seconds, POSTing BODY to
# URL, and the table row of loadtests/result_row.py with the server's CPU per request
# (LABEL... are its leading columns, C the last).
wrk_row() {
  local pid=$1 c=$2 url=$3 body=$4; shift 4
  local before after out
  before=$(cpu "$pid")
  out=$(WRK_BODY="$body" wrk -t1 -c"$c" -d"${DUR}s" -s "$LUA" "$url" | grep RESULT)
  after=$(cpu "$pid")
  python3 loadtests/result_row.py "$out" "$((after - before))" "$TICK_US" "$@" "$c"
}
