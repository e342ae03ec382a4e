//! What the slots return besides a tensor: a router's choice, a sparse block's output with its
//! routing, a decoder layer's output with its routing.

use candle_core::Tensor;

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

/// What a sparse block returns: its output and its router's output (which the decoder layer
/// hands up for recording).
#[derive(Clone, Debug)]
pub struct MoeOutput {
    /// `[batch, seq, hidden]`.
    pub hidden_states: Tensor,
    /// The routing that produced it.
    pub router: RouterOutput,
}

/// What a decoder layer returns: its output and, for MoE layers, its router's output.
#[derive(Clone, Debug)]
pub struct LayerOutput {
    /// `[batch, seq, hidden]`.
    pub hidden_states: Tensor,
    /// The routing of this layer's MoE block, if it has one.
    pub router: Option<RouterOutput>,
}
