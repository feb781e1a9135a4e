//! Business endpoint request bodies (see `ferry_server::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_server::fuzzing::endpoint_request(data));
