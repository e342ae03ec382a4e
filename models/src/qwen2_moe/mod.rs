//! Qwen2-MoE (`model_type` `qwen2_moe`): config and modules, named as transformers'
//! `modeling_qwen2_moe`.

mod config;
mod modeling;

pub use config::{QWEN2_MOE_MODEL_TYPE, Qwen2MoeConfig};
pub use modeling::{
    QWEN2_MOE, QWEN2_MOE_SITES, Qwen2MoeAttention, Qwen2MoeDecoderLayer, Qwen2MoeExperts,
    Qwen2MoeForCausalLM, Qwen2MoeMLP, Qwen2MoeModel, Qwen2MoeRMSNorm, Qwen2MoeRotaryEmbedding,
    Qwen2MoeSparseMoeBlock, Qwen2MoeTopKRouter,
};
