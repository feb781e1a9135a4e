//! gRPC ModelInferRequest messages (see `ferry_server::fuzzing::grpc_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_server::fuzzing::grpc_request(data));
