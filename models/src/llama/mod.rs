//! Llama (`model_type` `llama`): config and modules, named as transformers' `modeling_llama`.

mod config;
mod modeling;

pub use config::{LLAMA_MODEL_TYPE, LlamaConfig};
pub use modeling::{
    LLAMA, LLAMA_SITES, LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel,
    LlamaRMSNorm, LlamaRotaryEmbedding,
};
