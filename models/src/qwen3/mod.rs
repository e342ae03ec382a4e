//! Qwen3 (`model_type` `qwen3`): config and modules, named as transformers' `modeling_qwen3`.

mod config;
mod modeling;

pub use config::{QWEN3_MODEL_TYPE, Qwen3Config};
pub use modeling::{
    QWEN3, QWEN3_SITES, Qwen3Attention, Qwen3DecoderLayer, Qwen3ForCausalLM, Qwen3MLP, Qwen3Model,
    Qwen3RMSNorm, Qwen3RotaryEmbedding,
};
