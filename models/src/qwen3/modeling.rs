//! Qwen3's modules, in forward order, named as transformers' `modeling_qwen3`: Llama's layer
//! with per-head q/k RMS norms in the attention and Qwen's sliding-window layers.

use crate::decoder::{GatedMlp, PreNormLayer, RmsNorm, RopeConfig, SelfAttention};
use crate::for_causal_lm::ForCausalLM;
use crate::qwen3::config::Qwen3Config;

crate::decoder_sites! {
    /// transformers' `Qwen3Model`: the decoder body ([`crate::decoder::DecoderModel`]) built
    /// from Qwen3's sites.
    pub struct Qwen3Model;
    /// Qwen3's sites, as upstream's modeling file orders them.
    pub const QWEN3_SITES;
    /// transformers' `Qwen3RMSNorm`: the layers' norms, the final norm, and the per-head q/k
    /// norms of the attention.
    Qwen3RMSNorm: Norm(RmsNorm) = RmsNorm::load;
    /// transformers' `Qwen3RotaryEmbedding` (rope default or yarn, Qwen3's published
    /// long-context setting).
    Qwen3RotaryEmbedding: RotaryEmbedding(RopeConfig) = RopeConfig::load;
    /// transformers' `Qwen3MLP`.
    Qwen3MLP: Mlp(GatedMlp) = GatedMlp::load;
    /// transformers' `Qwen3Attention`: q/k/v/o projections, `q_norm`/`k_norm` (RMS over each
    /// head) before the rotary embedding, a sliding window on the layers configured for one.
    Qwen3Attention: Attention(SelfAttention) = SelfAttention::load::<Qwen3Model>;
    /// transformers' `Qwen3DecoderLayer`.
    Qwen3DecoderLayer: DecoderLayer(PreNormLayer) = PreNormLayer::load::<Qwen3Model>;
}

crate::decoder_family! {
    /// The Qwen3 family (`model_type` `qwen3`), registered at link time.
    pub static QWEN3 = Qwen3Model(Qwen3Config, QWEN3_SITES);
}

/// transformers' `Qwen3ForCausalLM`: the entry points that build a Qwen3
/// [`CausalLM`](crate::CausalLM).
pub type Qwen3ForCausalLM = ForCausalLM<Qwen3Model>;
