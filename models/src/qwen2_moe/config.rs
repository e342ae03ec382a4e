//! `Qwen2MoeConfig`: Qwen2-MoE's `config.json`, as published.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Result;
use crate::decoder::{ConfigCheck, DecoderConfig, DecoderKeys, MoeKeys, SlidingWindowKeys};

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
                ..DecoderKeys::default()
            },
            moe: MoeKeys {
                decoder_sparse_step: 1,
                mlp_only_layers: Vec::new(),
                moe_intermediate_size: 1408,
                num_experts_per_tok: 4,
                num_experts: 60,
                norm_topk_prob: false,
                router_aux_loss_coef: 0.001,
                output_router_logits: false,
            },
            sliding: SlidingWindowKeys {
                use_sliding_window: false,
                sliding_window: Some(4096),
                max_window_layers: 28,
                layer_types: None,
            },
            shared_expert_intermediate_size: 5632,
            qkv_bias: true,
        }
    }
}

crate::family_config!(Qwen2MoeConfig: QWEN2_MOE_MODEL_TYPE, "Qwen2MoeForCausalLM";
    groups DecoderKeys, MoeKeys, SlidingWindowKeys);

impl Qwen2MoeConfig {
    /// Validates this config and lowers it to the common view; `json` is the config as
    /// published. See [`MoeKeys::lower`] and [`SlidingWindowKeys::lower`] for which layers are
    /// sparse and which slide.
    pub fn decoder_config(&self, json: Arc<Value>, source_name: &str) -> Result<DecoderConfig> {
        let check = ConfigCheck::new(source_name);
        let mut c = self.common.lower(QWEN2_MOE_MODEL_TYPE, &check, json)?;
        c.qkv_bias = self.qkv_bias;
        self.sliding.lower(&check, &mut c)?;
        self.moe
            .lower(&check, &mut c, self.shared_expert_intermediate_size)?;
        c.checked(&check)
    }
}
