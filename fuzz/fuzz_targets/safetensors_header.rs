//! `cargo fuzz run safetensors_header`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patch_checkpoint::fuzzing::safetensors(data));
