#!/usr/bin/env bash
# Regenerates server/src/grpc/generated/ (from server/proto/) and features/src/feast/generated/
# (Feast's messages, from features/proto/) from the vendored protos.
# Needs protoc (apt-get install protobuf-compiler); building ferry itself does not.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || apt-get install -y protobuf-compiler
cargo run --quiet --manifest-path server/grpc-gen/Cargo.toml
cargo fmt --all
