//! Qwen2's modules, in forward order, named as transformers' `modeling_qwen2`: Llama's layer
//! with q/k/v biases and Qwen's sliding-window layers.

use crate::decoder::{GatedMlp, PreNormLayer, RmsNorm, RopeConfig, SelfAttention};
use crate::for_causal_lm::ForCausalLM;
use crate::qwen2::config::Qwen2Config;

crate::decoder_sites! {
    /// transformers' `Qwen2Model`: the decoder body ([`crate::decoder::DecoderModel`]) built
    /// from Qwen2's sites.
    pub struct Qwen2Model;
    /// Qwen2's sites, as upstream's modeling file orders them.
    pub const QWEN2_SITES;
    /// transformers' `Qwen2RMSNorm`.
    Qwen2RMSNorm: Norm(RmsNorm) = RmsNorm::load;
    /// transformers' `Qwen2RotaryEmbedding`.
    Qwen2RotaryEmbedding: RotaryEmbedding(RopeConfig) = RopeConfig::load;
    /// transformers' `Qwen2MLP`.
    Qwen2MLP: Mlp(GatedMlp) = GatedMlp::load;
    /// transformers' `Qwen2Attention`: q/k/v projections with biases, an output projection
    /// without, a sliding window on the layers configured for one.
    Qwen2Attention: Attention(SelfAttention) = SelfAttention::load::<Qwen2Model>;
    /// transformers' `Qwen2DecoderLayer`.
    Qwen2DecoderLayer: DecoderLayer(PreNormLayer) = PreNormLayer::load::<Qwen2Model>;
}

crate::decoder_family! {
    /// The Qwen2 family (`model_type` `qwen2`), registered at link time.
    pub static QWEN2 = Qwen2Model(Qwen2Config, QWEN2_SITES);
}

/// transformers' `Qwen2ForCausalLM`: the entry points that build a Qwen2
/// [`CausalLM`](crate::CausalLM).
pub type Qwen2ForCausalLM = ForCausalLM<Qwen2Model>;
