//! `LlamaConfig`: Llama's `config.json`, as published.

use serde::{Deserialize, Serialize};

use crate::decoder::DecoderKeys;

/// The `model_type` of Llama configs.
pub const LLAMA_MODEL_TYPE: &str = "llama";

/// Llama's `config.json`: the decoder keys every family reads, plus Llama's biases. Both rope
/// key styles are read: `rope_theta` plus `rope_scaling`, or `rope_parameters`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// The keys every decoder family reads.
    #[serde(flatten)]
    pub common: DecoderKeys,
    /// Whether the attention projections (q, k, v and o) have biases.
    pub attention_bias: bool,
    /// Whether the MLP projections have biases.
    pub mlp_bias: bool,
}

impl Default for LlamaConfig {
    /// transformers' `LlamaConfig()` defaults (Llama-2-7B's shape).
    fn default() -> Self {
        Self {
            common: DecoderKeys {
                bos_token_id: Some(1.into()),
                eos_token_id: Some(2.into()),
                ..DecoderKeys::base()
            },
            attention_bias: false,
            mlp_bias: false,
        }
    }
}

crate::family_config! {
    LlamaConfig: LLAMA_MODEL_TYPE, "LlamaForCausalLM"; groups DecoderKeys;
    lower(self, check, c) {
        c.qkv_bias = self.attention_bias;
        c.o_proj_bias = self.attention_bias;
        c.mlp_bias = self.mlp_bias;
        Ok(())
    }
}

crate::decoder::family_setters!(LlamaConfig {
    /// Whether the attention projections (q, k, v and o) have biases.
    attention_bias: bool;
    /// Whether the MLP projections have biases.
    mlp_bias: bool;
});
