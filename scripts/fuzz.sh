#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/) with cargo fuzz on the stable toolchain. Not part of CI's
# test.sh (the instrumented build and the run are long); CI runs the same entry points over the
# seed corpus in `cargo test` (server/tests/fuzz_entries.rs).
#   bash scripts/fuzz.sh oip_request 600        # target, seconds
# Installs cargo-fuzz (crates.io) when it is missing.
set -euo pipefail
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd "$(dirname "$0")/../fuzz"
target="${1:-oip_request}"
seconds="${2:-60}"
export RUSTC_BOOTSTRAP=1   # cargo fuzz uses -Z flags; this machine has only a stable rustc
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/ferry-fuzz-target}"
mkdir -p "corpus/$target"
cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
