//! `Qwen3Config`: Qwen3's `config.json`, as published.

use serde::{Deserialize, Serialize};

use crate::decoder::{DecoderKeys, SlidingWindowKeys};

/// The `model_type` of Qwen3 configs.
pub const QWEN3_MODEL_TYPE: &str = "qwen3";

/// Qwen3's `config.json`: the shared decoder and sliding-window keys, plus its attention
/// biases. Queries and keys are RMS-normalised per head (`q_norm`, `k_norm`); `head_dim` is
/// independent of `hidden_size / num_attention_heads`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Qwen3Config {
    /// The keys every decoder family reads.
    #[serde(flatten)]
    pub common: DecoderKeys,
    /// The sliding-window keys (`max_window_layers`, `layer_types` as Qwen3 reads them).
    #[serde(flatten)]
    pub sliding: SlidingWindowKeys,
    /// Whether the attention projections (q, k, v and o) have biases.
    pub attention_bias: bool,
}

impl Default for Qwen3Config {
    /// transformers' `Qwen3Config()` defaults (Qwen3-8B's shape).
    fn default() -> Self {
        Self {
            common: DecoderKeys {
                vocab_size: 151936,
                intermediate_size: 22016,
                num_key_value_heads: Some(32),
                head_dim: Some(128),
                max_position_embeddings: 32768,
                ..DecoderKeys::base()
            },
            sliding: SlidingWindowKeys::qwen(),
            attention_bias: false,
        }
    }
}

crate::family_config! {
    Qwen3Config: QWEN3_MODEL_TYPE, "Qwen3ForCausalLM"; groups DecoderKeys, SlidingWindowKeys;
    lower(self, check, c) {
        c.qkv_bias = self.attention_bias;
        c.o_proj_bias = self.attention_bias;
        c.qk_norm = true;
        self.sliding.lower(check, c)
    }
}

crate::decoder::family_setters!(Qwen3Config {
    /// Whether the attention projections (q, k, v and o) have biases.
    attention_bias: bool;
});
