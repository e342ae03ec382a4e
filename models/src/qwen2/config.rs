//! `Qwen2Config`: Qwen2's `config.json`, as published.

use serde::{Deserialize, Serialize};

use crate::decoder::{DecoderKeys, SlidingWindowKeys};

/// The `model_type` of Qwen2 configs.
pub const QWEN2_MODEL_TYPE: &str = "qwen2";

/// Qwen2's `config.json` (Qwen2 and Qwen2.5): the shared decoder and sliding-window keys. Its
/// q, k and v projections always have biases (the output projection none), as transformers'
/// `Qwen2Attention` builds them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Qwen2Config {
    /// The keys every decoder family reads.
    #[serde(flatten)]
    pub common: DecoderKeys,
    /// The sliding-window keys (`use_sliding_window`, `sliding_window`, `max_window_layers`).
    #[serde(flatten)]
    pub sliding: SlidingWindowKeys,
}

impl Default for Qwen2Config {
    /// transformers' `Qwen2Config()` defaults (Qwen2-7B's shape).
    fn default() -> Self {
        Self {
            common: DecoderKeys {
                vocab_size: 151936,
                intermediate_size: 22016,
                num_key_value_heads: Some(32),
                max_position_embeddings: 32768,
                ..DecoderKeys::base()
            },
            sliding: SlidingWindowKeys::qwen(),
        }
    }
}

crate::family_config! {
    Qwen2Config: QWEN2_MODEL_TYPE, "Qwen2ForCausalLM"; groups DecoderKeys, SlidingWindowKeys;
    lower(self, check, c) {
        c.qkv_bias = true;
        self.sliding.lower(check, c)
    }
}
