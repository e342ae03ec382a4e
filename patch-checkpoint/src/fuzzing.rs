//! Entry points for fuzzing (the `fuzz/` targets and the bounded pass in `tests/fuzz.rs`): each
//! runs a reader over untrusted bytes and must return, never panic or abort, whatever the
//! bytes. Not public API.

use std::path::Path;

use candle_core::{DType, Device};

/// Parses `bytes` as a safetensors file and reads every tensor it declares, as checkpoints and
/// input files are read.
pub fn safetensors(bytes: &[u8]) {
    let path = Path::new("fuzz.safetensors");
    let Ok(tensors) = crate::safetensors_header::parse(path, bytes) else {
        return;
    };
    for (name, meta) in &tensors {
        for dtype in [DType::F32, DType::BF16] {
            let _ =
                crate::safetensors_io::decode_tensor(path, bytes, name, meta, dtype, &Device::Cpu);
        }
    }
}

/// Parses `bytes` as a sharded checkpoint's `model.safetensors.index.json`.
pub fn index(bytes: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let _ = crate::checkpoint::index_shards(Path::new("fuzz.index.json"), &value);
    }
}
