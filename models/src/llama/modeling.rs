//! Llama's modules, in forward order, named as transformers' `modeling_llama`. Each layer type
//! is a site filling a shared decoder slot; parents build their children through the
//! [`Builder`](patch_core::Builder), so any of them can be replaced by a patch.

use crate::decoder::{GatedMlp, PreNormLayer, RmsNorm, RopeConfig, SelfAttention};
use crate::for_causal_lm::ForCausalLM;
use crate::llama::config::LlamaConfig;

crate::decoder_sites! {
    /// transformers' `LlamaModel`: the decoder body ([`crate::decoder::DecoderModel`]) built from
    /// Llama's sites.
    pub struct LlamaModel;
    /// Llama's sites, as upstream's modeling file orders them.
    pub const LLAMA_SITES;
    /// transformers' `LlamaRMSNorm`: `weight * x / sqrt(mean(x^2) + eps)`.
    LlamaRMSNorm: Norm(RmsNorm) = RmsNorm::load;
    /// transformers' `LlamaRotaryEmbedding`: cos/sin tables for a pass's positions, with the
    /// config's rope scaling (default, linear, dynamic, llama3, yarn).
    LlamaRotaryEmbedding: RotaryEmbedding(RopeConfig) = RopeConfig::load;
    /// transformers' `LlamaMLP`: `down_proj(silu(gate_proj(x)) * up_proj(x))`.
    LlamaMLP: Mlp(GatedMlp) = GatedMlp::load;
    /// transformers' `LlamaAttention`: q/k/v/o projections, rotary embeddings, grouped-query
    /// attention over the KV cache.
    LlamaAttention: Attention(SelfAttention) = SelfAttention::load::<LlamaModel>;
    /// transformers' `LlamaDecoderLayer`: pre-norm attention and MLP, each with a residual.
    LlamaDecoderLayer: DecoderLayer(PreNormLayer) = PreNormLayer::load::<LlamaModel>;
}

crate::decoder_family! {
    /// The Llama family (`model_type` `llama`), registered at link time.
    pub static LLAMA = LlamaModel(LlamaConfig, LLAMA_SITES);
}

/// transformers' `LlamaForCausalLM`: the entry points that build a Llama
/// [`CausalLM`](crate::CausalLM).
pub type LlamaForCausalLM = ForCausalLM<LlamaModel>;
