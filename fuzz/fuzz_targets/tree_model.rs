//! XGBoost and LightGBM model files read by the trees engine (see `ferry_server::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_server::fuzzing::tree_model(data));
