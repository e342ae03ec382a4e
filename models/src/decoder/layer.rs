//! The decoder layer slot, the per-layer forward context, and the pre-norm residual layer
//! of the Llama-style families.

use candle_core::Tensor;
use patch_core::{Module, Slot};

use crate::decoder::attention::Attention;
use crate::decoder::config::DecoderConfig;
use crate::decoder::kv_cache::LayerKvCache;
use crate::decoder::mlp::Mlp;
use crate::decoder::moe::{RouterOutput, SparseMoe};
use crate::decoder::norm::Norm;
use crate::decoder::rotary::RopeTables;
use crate::ops::add_scaled;

/// What a decoder layer and its children receive for one forward pass, instead of hidden
/// instance state: the rope tables of the pass's positions, the attention bias for this
/// layer's attention kind, this layer's KV cache, and (MoE layers) expert indices to replay.
///
/// Outputs are never written here: a child returns what it produced (the router's logits and
/// choices in [`RouterOutput`]) and its parent hands it up in its own return value, so the
/// model records it whatever class was replaced along the way.
pub struct LayerContext<'a> {
    /// Index of the layer.
    pub layer_idx: usize,
    /// cos/sin for the positions of this pass.
    pub rope: &'a RopeTables,
    /// Additive attention bias `[batch, 1, seq, kv_len]` for this layer's attention kind
    /// (causal, padding, sliding window); `None` when nothing is masked.
    pub mask: Option<&'a Tensor>,
    /// This layer's KV cache, when the pass uses one.
    pub cache: Option<&'a mut LayerKvCache>,
    /// Expert ids `[batch * seq, top_k]` (any integer dtype) the router of this layer must
    /// choose instead of its own top-k (replaying a recorded routing); an id of -1 leaves that
    /// choice to the router (partial replay). `None` to route normally.
    pub forced_experts: Option<&'a Tensor>,
}

/// What a decoder layer returns: its output and, for MoE layers, its router's output.
#[derive(Clone, Debug)]
pub struct LayerOutput {
    /// `[batch, seq, hidden]`.
    pub hidden_states: Tensor,
    /// The routing of this layer's MoE block, if it has one.
    pub router: Option<RouterOutput>,
}

/// The decoder layer slot.
pub trait DecoderLayer: Module {
    /// Runs the layer on `hidden_states` (`[batch, seq, hidden]`).
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<LayerOutput>;
}

/// What every decoder layer constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct DecoderLayerArgs<'a> {
    /// The model's config view.
    pub config: &'a DecoderConfig,
    /// Index of the layer.
    pub layer_idx: usize,
}

impl Slot for dyn DecoderLayer {
    const NAME: &'static str = "DecoderLayer";
    type Args<'a> = DecoderLayerArgs<'a>;
}

/// What sits in a decoder layer's feed-forward position: a dense MLP or a sparse MoE block
/// (chosen per layer by [`DecoderConfig::feed_forward_kind`]).
pub enum FeedForward {
    /// A dense MLP.
    Dense(Box<dyn Mlp>),
    /// A mixture-of-experts block.
    Sparse(Box<dyn SparseMoe>),
}

impl FeedForward {
    /// The module, whichever kind it is.
    pub fn as_module(&self) -> &dyn Module {
        match self {
            FeedForward::Dense(m) => &**m,
            FeedForward::Sparse(m) => &**m,
        }
    }

    /// Applies it; a sparse block also returns its routing.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext<'_>,
    ) -> candle_core::Result<(Tensor, Option<RouterOutput>)> {
        match self {
            FeedForward::Dense(mlp) => Ok((mlp.forward(x)?, None)),
            FeedForward::Sparse(moe) => {
                let out = moe.forward(x, ctx)?;
                Ok((out.hidden_states, Some(out.router)))
            }
        }
    }
}

/// `x + attn(norm1(x))`, then `h + ff(norm2(h))`: the layer body of Llama and Qwen2-MoE.
pub struct PreNormLayer {
    /// Norm before attention.
    pub input_layernorm: Box<dyn Norm>,
    /// Self-attention.
    pub self_attn: Box<dyn Attention>,
    /// Norm before the feed-forward.
    pub post_attention_layernorm: Box<dyn Norm>,
    /// The feed-forward (dense MLP or MoE block).
    pub mlp: FeedForward,
}

impl PreNormLayer {
    /// Runs the layer.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<LayerOutput> {
        let residual = hidden_states;
        let h = self.input_layernorm.forward(hidden_states)?;
        let h = self.self_attn.forward(&h, ctx)?;
        let h = add_scaled(residual, &h, None)?;
        let residual = &h;
        let x = self.post_attention_layernorm.forward(&h)?;
        let (x, router) = self.mlp.forward(&x, ctx)?;
        Ok(LayerOutput {
            hidden_states: add_scaled(residual, &x, None)?,
            router,
        })
    }
}
