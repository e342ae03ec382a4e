//! `Qwen2MoeConfig`: Qwen2-MoE's `config.json`, as published.

use serde::{Deserialize, Serialize};

use crate::decoder::{DecoderKeys, MoeKeys, SlidingWindowKeys};

/// The `model_type` of Qwen2-MoE configs.
pub const QWEN2_MOE_MODEL_TYPE: &str = "qwen2_moe";

/// Qwen2-MoE's `config.json`: the shared decoder, MoE and sliding-window keys, plus its shared
/// expert and q/k/v biases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Qwen2MoeConfig {
    /// The keys every decoder family reads.
    #[serde(flatten)]
    pub common: DecoderKeys,
    /// The mixture-of-experts keys.
    #[serde(flatten)]
    pub moe: MoeKeys,
    /// The sliding-window keys.
    #[serde(flatten)]
    pub sliding: SlidingWindowKeys,
    /// Intermediate size of the shared expert (0: none).
    pub shared_expert_intermediate_size: usize,
    /// Whether q/k/v projections have biases.
    pub qkv_bias: bool,
}

impl Default for Qwen2MoeConfig {
    /// transformers' `Qwen2MoeConfig()` defaults (Qwen1.5-MoE-A2.7B's shape).
    fn default() -> Self {
        Self {
            common: DecoderKeys {
                vocab_size: 151936,
                hidden_size: 2048,
                intermediate_size: 5632,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                num_key_value_heads: Some(16),
                max_position_embeddings: 32768,
                ..DecoderKeys::base()
            },
            moe: MoeKeys::base(),
            sliding: SlidingWindowKeys::qwen(),
            shared_expert_intermediate_size: 5632,
            qkv_bias: true,
        }
    }
}

crate::family_config! {
    Qwen2MoeConfig: QWEN2_MOE_MODEL_TYPE, "Qwen2MoeForCausalLM";
    groups DecoderKeys, MoeKeys, SlidingWindowKeys;
    // Sparse layers and sliding ones: see `MoeKeys::lower` and `SlidingWindowKeys::lower`.
    lower(self, check, c) {
        c.qkv_bias = self.qkv_bias;
        self.sliding.lower(check, c)?;
        self.moe.lower(check, c, self.shared_expert_intermediate_size)
    }
}

crate::decoder::family_setters!(Qwen2MoeConfig {
    /// Intermediate size of the shared expert (0: none).
    shared_expert_intermediate_size: usize;
    /// Whether q/k/v projections have biases.
    qkv_bias: bool;
});
