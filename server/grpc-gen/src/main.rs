//! Writes the Rust code of ferry's gRPC service, and the Feast messages the feature store reads
//! and writes, from the vendored protos.
//!
//! The generated code is committed so that building ferry needs no `protoc`; run
//! `bash scripts/gen-grpc.sh` after changing a file under `server/proto/` or `features/proto/`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let server = root.join("server");
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

    // Feast's `feast.types` messages (Value, EntityKey): plain prost messages, no services.
    let features = root.join("features");
    let feast_proto = features.join("proto");
    let feast_out = features.join("src/feast/generated");
    std::fs::create_dir_all(&feast_out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .out_dir(&feast_out)
        .compile_protos(
            &[
                feast_proto.join("feast/types/Value.proto"),
                feast_proto.join("feast/types/EntityKey.proto"),
            ],
            &[feast_proto],
        )?;
    Ok(())
}
