#!/usr/bin/env bash
# Feature-store bench: materialization rows/s and the added latency of the serving feature join
# (one pipelined Redis round trip + matrix assembly) for 1 and 10 entities per request.
# Starts a private redis-server on a free loopback port; release build.
#   bash loadtests/features_join.sh [ROWS] [ENTITIES] [ITERATIONS]
# Measured on the 2-core dev machine (defaults: 1M rows, 100k entities, 4 files, 3 features;
# three runs): materialize 98k–121k rows/s; join 1 entity p50 53–118 µs, p99 145–572 µs;
# 10 entities p50 109–179 µs, p99 340–542 µs (loopback Redis 7.0, sequential requests).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIR=$(mktemp -d)
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" --daemonize yes --pidfile "$DIR/redis.pid" >/dev/null
trap 'kill "$(cat "$DIR/redis.pid")" 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
cargo run --quiet --release -p ferry-features --example feature_bench -- "redis://127.0.0.1:$PORT" "$@"
