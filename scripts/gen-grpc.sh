#!/usr/bin/env bash
# Regenerates server/src/grpc/generated/ from the vendored protos in server/proto/.
# Needs protoc (apt-get install protobuf-compiler); building ferry itself does not.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || apt-get install -y protobuf-compiler
cargo run --quiet --manifest-path server/grpc-gen/Cargo.toml
cargo fmt --all
