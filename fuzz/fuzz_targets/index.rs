//! `cargo fuzz run index`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patch_checkpoint::fuzzing::index(data));
