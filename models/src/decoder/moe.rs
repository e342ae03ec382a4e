//! The mixture-of-experts slots: the router, the experts, and the sparse block that combines
//! them; what they return and receive.

use candle_core::Tensor;
use patch_core::{Module, Slot};

use crate::decoder::config::DecoderConfig;
use crate::decoder::context::LayerContext;

/// What a router returns, as transformers' `TopKRouter`: the raw logits, and the chosen
/// experts with their weights.
#[derive(Clone, Debug)]
pub struct RouterOutput {
    /// Router logits before softmax, `[tokens, num_experts]`.
    pub logits: Tensor,
    /// Routing weights of the chosen experts, `[tokens, top_k]`.
    pub weights: Tensor,
    /// Chosen expert ids, `[tokens, top_k]` (u32), in top-k order.
    pub indices: Tensor,
}

/// The router slot: chooses `top_k` experts per token.
pub trait Router: Module {
    /// Routes `x` (`[tokens, hidden]`); honours `ctx.forced_experts` when set.
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput>;
}

/// The experts slot: runs each token through its chosen experts and sums the results with
/// their routing weights.
pub trait Experts: Module {
    /// `x` `[tokens, hidden]`, `indices` `[tokens, top_k]` (u32), `weights` `[tokens, top_k]`;
    /// returns `[tokens, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
    ) -> candle_core::Result<Tensor>;
}

/// What a sparse block returns: its output and its router's output (which the decoder layer
/// hands up for recording).
#[derive(Clone, Debug)]
pub struct MoeOutput {
    /// `[batch, seq, hidden]`.
    pub hidden_states: Tensor,
    /// The routing that produced it.
    pub router: RouterOutput,
}

/// The sparse MoE block slot: sits in a decoder layer's feed-forward position.
pub trait SparseMoe: Module {
    /// Applies the block to `x` (`[batch, seq, hidden]`).
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<MoeOutput>;
}

/// What every router, experts and sparse-block constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct MoeArgs<'a> {
    /// The model's config view (its `moe` part is set).
    pub config: &'a DecoderConfig,
    /// Index of the layer.
    pub layer_idx: usize,
}

impl Slot for dyn Router {
    const NAME: &'static str = "Router";
    type Args<'a> = MoeArgs<'a>;
}

impl Slot for dyn Experts {
    const NAME: &'static str = "Experts";
    type Args<'a> = MoeArgs<'a>;
}

impl Slot for dyn SparseMoe {
    const NAME: &'static str = "SparseMoe";
    type Args<'a> = MoeArgs<'a>;
}
