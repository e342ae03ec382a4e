//! Qwen2-MoE's modules, in forward order, named as transformers' `modeling_qwen2_moe`. Each
//! layer type is a site filling a shared decoder slot, so a replacement written for Llama's
//! attention (say) serves these too.

use crate::decoder::{
    GatedMlp, PreNormLayer, RmsNorm, RopeConfig, SelfAttention, SparseMoeBlock, StackedExperts,
    TopKRouter,
};
use crate::for_causal_lm::ForCausalLM;
use crate::qwen2_moe::config::{QWEN2_MOE_MODEL_TYPE, Qwen2MoeConfig};

crate::decoder_sites! {
    /// transformers' `Qwen2MoeModel`: the decoder body ([`crate::decoder::DecoderModel`]) built
    /// from Qwen2-MoE's sites.
    pub struct Qwen2MoeModel;
    /// Qwen2-MoE's sites, as upstream's modeling file orders them.
    pub const QWEN2_MOE_SITES;
    /// transformers' `Qwen2MoeRMSNorm`.
    Qwen2MoeRMSNorm: Norm(RmsNorm) = RmsNorm::load;
    /// transformers' `Qwen2MoeRotaryEmbedding`.
    Qwen2MoeRotaryEmbedding: RotaryEmbedding(RopeConfig) = RopeConfig::load;
    /// transformers' `Qwen2MoeMLP`: the dense layers' MLP and the shared expert.
    Qwen2MoeMLP: Mlp(GatedMlp) = GatedMlp::load;
    /// transformers' `Qwen2MoeAttention`: q/k/v projections with biases (`qkv_bias`), rotary
    /// embeddings, a sliding window on the layers configured for one.
    Qwen2MoeAttention: Attention(SelfAttention) = SelfAttention::load::<Qwen2MoeModel>;
    /// transformers' `Qwen2MoeExperts`: stacked expert weights (`gate_up_proj` `[E, 2I, H]`,
    /// `down_proj` `[E, H, I]`, filled from the per-expert checkpoint tensors by the qwen2_moe
    /// conversion mapping), grouped dispatch.
    Qwen2MoeExperts: Experts(StackedExperts) = StackedExperts::load;
    /// transformers' `Qwen2MoeTopKRouter`: returns the router logits, the top-k weights and
    /// the top-k expert ids.
    Qwen2MoeTopKRouter: Router(TopKRouter) = TopKRouter::load;
    /// transformers' `Qwen2MoeSparseMoeBlock`: routed experts plus a shared expert scaled by a
    /// sigmoid gate.
    Qwen2MoeSparseMoeBlock: SparseMoe(SparseMoeBlock) = SparseMoeBlock::load::<Qwen2MoeModel>;
    /// transformers' `Qwen2MoeDecoderLayer`: pre-norm attention, then a sparse MoE block or
    /// (for `mlp_only_layers` and off-step layers) a dense MLP.
    Qwen2MoeDecoderLayer: DecoderLayer(PreNormLayer) = PreNormLayer::load::<Qwen2MoeModel>;
}

crate::decoder_family! {
    /// The Qwen2-MoE family (`model_type` `qwen2_moe`), registered at link time.
    pub static QWEN2_MOE = Qwen2MoeModel(Qwen2MoeConfig, QWEN2_MOE_SITES);
}

/// transformers' `Qwen2MoeForCausalLM`: the entry points that build a Qwen2-MoE
/// [`CausalLM`](crate::CausalLM).
pub type Qwen2MoeForCausalLM = ForCausalLM<Qwen2MoeModel>;

// The checkpoint layout: transformers' qwen2_moe conversion mapping stacks the per-expert
// tensors into `mlp.experts.gate_up_proj` `[E, 2I, H]` (gate rows first) and
// `mlp.experts.down_proj` `[E, H, I]`, and splits them back on save. A link-time default,
// overridable with `register_checkpoint_conversion_mapping("qwen2_moe", .., true)`.
patch_checkpoint::submit_conversion_mapping!(
    QWEN2_MOE_MODEL_TYPE,
    patch_checkpoint::mappings::qwen2_moe
);
