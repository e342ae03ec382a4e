//! `cargo fuzz run forward_inputs`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patchwork_models::fuzzing::forward_inputs(data));
