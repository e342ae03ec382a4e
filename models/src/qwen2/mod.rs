//! Qwen2 and Qwen2.5 (`model_type` `qwen2`): config and modules, named as transformers'
//! `modeling_qwen2`.

mod config;
mod modeling;

pub use config::{QWEN2_MODEL_TYPE, Qwen2Config};
pub use modeling::{
    QWEN2, QWEN2_SITES, Qwen2Attention, Qwen2DecoderLayer, Qwen2ForCausalLM, Qwen2MLP, Qwen2Model,
    Qwen2RMSNorm, Qwen2RotaryEmbedding,
};
