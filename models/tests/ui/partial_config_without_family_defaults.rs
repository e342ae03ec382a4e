//! A config written by hand cannot start from keys without a family: `DecoderKeys` has no
//! `Default`, so `..Default::default()` inside `common` (which would drop Llama's BOS/EOS ids
//! for another family's) does not compile. `LlamaConfig::builder()` or
//! `..LlamaConfig::default().common` keep the family's defaults.

use patchwork_models::decoder::DecoderKeys;
use patchwork_models::llama::LlamaConfig;

fn main() {
    let _config = LlamaConfig {
        common: DecoderKeys {
            hidden_size: 64,
            ..Default::default()
        },
        ..LlamaConfig::default()
    };
}
