//! What a decoder layer and its children receive for one forward pass, instead of hidden
//! instance state.

use candle_core::Tensor;

use crate::decoder::capture::PassContext;
use crate::decoder::kv_cache::LayerKvCache;
use crate::decoder::rope::RopeTables;
use crate::ops::AttentionMask;

/// What a decoder layer and its children receive for one forward pass, instead of hidden
/// instance state: the rope tables of the pass's positions, the attention mask for this
/// layer's attention kind, this layer's KV cache, and (MoE layers) expert indices to replay.
///
/// Outputs travel up in return values (the router's logits and choices in
/// [`RouterOutput`](crate::decoder::RouterOutput)); what a pass records besides goes to its
/// [`PassContext`], which every built module reaches whatever class was replaced along the way.
pub struct LayerContext<'a> {
    /// Index of the layer.
    pub layer_idx: usize,
    /// cos/sin for the positions of this pass.
    pub rope: &'a RopeTables,
    /// Which keys each query sees for this layer's attention kind (causal, padding, sliding
    /// window); [`AttentionMask::bias`] gives it as an additive bias.
    pub mask: &'a AttentionMask,
    /// This layer's KV cache, when the pass uses one.
    pub cache: Option<&'a mut LayerKvCache>,
    /// Expert ids `[batch * seq, top_k]` (any integer dtype) the router of this layer must
    /// choose instead of its own top-k (replaying a recorded routing); an id of -1 leaves that
    /// choice to the router (partial replay). `None` to route normally.
    pub forced_experts: Option<&'a Tensor>,
    /// The layer's sliding window, if it has one (the mask applies it already).
    pub sliding_window: Option<usize>,
    /// The pass's captures and implementations.
    pub pass: &'a PassContext,
}
