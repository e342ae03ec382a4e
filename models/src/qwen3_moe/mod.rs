//! Qwen3-MoE (`model_type` `qwen3_moe`): config and modules, named as transformers'
//! `modeling_qwen3_moe`.

mod config;
mod modeling;

pub use config::{QWEN3_MOE_MODEL_TYPE, Qwen3MoeConfig};
pub use modeling::{
    QWEN3_MOE, QWEN3_MOE_SITES, Qwen3MoeAttention, Qwen3MoeDecoderLayer, Qwen3MoeExperts,
    Qwen3MoeForCausalLM, Qwen3MoeMLP, Qwen3MoeModel, Qwen3MoeRMSNorm, Qwen3MoeRotaryEmbedding,
    Qwen3MoeSparseMoeBlock, Qwen3MoeTopKRouter,
};
