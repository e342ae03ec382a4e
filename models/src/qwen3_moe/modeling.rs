//! Qwen3-MoE's modules, in forward order, named as transformers' `modeling_qwen3_moe`: Qwen3's
//! attention with Qwen-MoE's sparse blocks (no shared expert).

use crate::decoder::{
    GatedMlp, PreNormLayer, RmsNorm, RopeConfig, SelfAttention, SparseMoeBlock, StackedExperts,
    TopKRouter,
};
use crate::for_causal_lm::ForCausalLM;
use crate::qwen3_moe::config::{QWEN3_MOE_MODEL_TYPE, Qwen3MoeConfig};

crate::decoder_sites! {
    /// transformers' `Qwen3MoeModel`: the decoder body ([`crate::decoder::DecoderModel`]) built
    /// from Qwen3-MoE's sites.
    pub struct Qwen3MoeModel;
    /// Qwen3-MoE's sites, as upstream's modeling file orders them.
    pub const QWEN3_MOE_SITES;
    /// transformers' `Qwen3MoeRMSNorm`: the layers' norms, the final norm, and the per-head
    /// q/k norms of the attention.
    Qwen3MoeRMSNorm: Norm(RmsNorm) = RmsNorm::load;
    /// transformers' `Qwen3MoeRotaryEmbedding`.
    Qwen3MoeRotaryEmbedding: RotaryEmbedding(RopeConfig) = RopeConfig::load;
    /// transformers' `Qwen3MoeMLP`: the MLP of the dense layers (`mlp_only_layers`).
    Qwen3MoeMLP: Mlp(GatedMlp) = GatedMlp::load;
    /// transformers' `Qwen3MoeAttention`: q/k/v/o projections, `q_norm`/`k_norm` before the
    /// rotary embedding.
    Qwen3MoeAttention: Attention(SelfAttention) = SelfAttention::load::<Qwen3MoeModel>;
    /// transformers' `Qwen3MoeExperts`: stacked expert weights, grouped dispatch.
    Qwen3MoeExperts: Experts(StackedExperts) = StackedExperts::load;
    /// transformers' `Qwen3MoeTopKRouter`: softmax, top-k, renormalised when
    /// `norm_topk_prob` (the page's replay recipe patches this one).
    Qwen3MoeTopKRouter: Router(TopKRouter) = TopKRouter::load;
    /// transformers' `Qwen3MoeSparseMoeBlock`: routed experts only.
    Qwen3MoeSparseMoeBlock: SparseMoe(SparseMoeBlock) = SparseMoeBlock::load::<Qwen3MoeModel>;
    /// transformers' `Qwen3MoeDecoderLayer`.
    Qwen3MoeDecoderLayer: DecoderLayer(PreNormLayer) = PreNormLayer::load::<Qwen3MoeModel>;
}

crate::decoder_family! {
    /// The Qwen3-MoE family (`model_type` `qwen3_moe`), registered at link time.
    pub static QWEN3_MOE = Qwen3MoeModel(Qwen3MoeConfig, QWEN3_MOE_SITES);
}

/// transformers' `Qwen3MoeForCausalLM`: the entry points that build a Qwen3-MoE
/// [`CausalLM`](crate::CausalLM).
pub type Qwen3MoeForCausalLM = ForCausalLM<Qwen3MoeModel>;

// The checkpoint layout: transformers maps qwen3_moe to the qwen2_moe conversion (per-expert
// tensors stacked into `mlp.experts.gate_up_proj` / `mlp.experts.down_proj`, split back on
// save). A link-time default, overridable with
// `register_checkpoint_conversion_mapping("qwen3_moe", .., true)`.
patch_checkpoint::submit_conversion_mapping!(
    QWEN3_MOE_MODEL_TYPE,
    patch_checkpoint::mappings::qwen2_moe
);
