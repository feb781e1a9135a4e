//! Writes the Rust code of ferry's gRPC service from the vendored protos.
//!
//! The generated code is committed so that building ferry needs no `protoc`; run
//! `bash scripts/gen-grpc.sh` after changing a file under `server/proto/`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let proto = server.join("proto");
    let out = server.join("src/grpc/generated");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&out)
        // Server reflection answers from this descriptor set.
        .file_descriptor_set_path(out.join("inference_descriptor.bin"))
        .compile_protos(&[proto.join("grpc_service.proto")], &[proto])?;
    Ok(())
}
