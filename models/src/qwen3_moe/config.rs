//! `Qwen3MoeConfig`: Qwen3-MoE's `config.json`, as published.

use serde::{Deserialize, Serialize};

use crate::decoder::{DecoderKeys, MoeKeys, SlidingWindowKeys};

/// The `model_type` of Qwen3-MoE configs.
pub const QWEN3_MOE_MODEL_TYPE: &str = "qwen3_moe";

/// Qwen3-MoE's `config.json`: the shared decoder, MoE and sliding-window keys, plus its
/// attention biases. No shared expert; per-head q/k RMS norms as Qwen3.
///
/// Sliding windows as transformers' Qwen3-MoE applies them: with `use_sliding_window`, every
/// layer slides (`max_window_layers`, which the published configs carry, is read and
/// ignored, as upstream ignores it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Qwen3MoeConfig {
    /// The keys every decoder family reads.
    #[serde(flatten)]
    pub common: DecoderKeys,
    /// The mixture-of-experts keys.
    #[serde(flatten)]
    pub moe: MoeKeys,
    /// The sliding-window keys.
    #[serde(flatten)]
    pub sliding: SlidingWindowKeys,
    /// Whether the attention projections (q, k, v and o) have biases.
    pub attention_bias: bool,
}

impl Default for Qwen3MoeConfig {
    /// transformers' `Qwen3MoeConfig()` defaults (Qwen3-30B-A3B's shape).
    fn default() -> Self {
        Self {
            common: DecoderKeys {
                vocab_size: 151936,
                hidden_size: 2048,
                intermediate_size: 6144,
                num_hidden_layers: 24,
                num_key_value_heads: Some(4),
                max_position_embeddings: 32768,
                ..DecoderKeys::base()
            },
            moe: MoeKeys {
                moe_intermediate_size: 768,
                num_experts_per_tok: 8,
                num_experts: 128,
                ..MoeKeys::base()
            },
            sliding: SlidingWindowKeys::qwen(),
            attention_bias: false,
        }
    }
}

crate::family_config! {
    Qwen3MoeConfig: QWEN3_MOE_MODEL_TYPE, "Qwen3MoeForCausalLM";
    groups DecoderKeys, MoeKeys, SlidingWindowKeys;
    // Every layer slides when enabled (see the type's docs); no shared expert.
    lower(self, check, c) {
        c.qkv_bias = self.attention_bias;
        c.o_proj_bias = self.attention_bias;
        c.qk_norm = true;
        let every_layer = SlidingWindowKeys {
            max_window_layers: 0,
            layer_types: None,
            ..self.sliding.clone()
        };
        every_layer.lower(check, c)?;
        self.moe.lower(check, c, 0)
    }
}

crate::decoder::family_setters!(Qwen3MoeConfig {
    /// Whether the attention projections (q, k, v and o) have biases.
    attention_bias: bool;
});
