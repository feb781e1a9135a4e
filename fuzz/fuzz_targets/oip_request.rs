//! Open Inference Protocol v2 bodies, JSON and binary tensors (see `ferry_server::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_server::fuzzing::oip_request(data));
