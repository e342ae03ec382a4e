//! What a forward pass is asked for: which logits, router outputs, labels, captured states.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::decoder::{Extensions, Recorders, Selection};

/// Which positions get logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogitsMode {
    /// Every position: `[batch, seq, vocab]`.
    #[default]
    All,
    /// The last position of each row only: `[batch, 1, vocab]` (what generation needs; the
    /// output head then runs on one position instead of all).
    Last,
    /// None (the pass only fills the cache or records routing).
    None,
}

/// Options of [`CausalLM::forward_with`](crate::CausalLM::forward_with).
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    /// Which positions get logits.
    pub logits: LogitsMode,
    /// Return each MoE layer's router output, and the load-balancing loss (transformers'
    /// `output_router_logits`); `None` takes the config's `output_router_logits` (false when
    /// absent).
    pub output_router_logits: Option<bool>,
    /// Expert ids `[batch * seq, top_k]` (any integer dtype) to force, by absolute MoE layer
    /// index (replaying a recorded routing); an id of -1 lets that token choose freely. Empty
    /// to route normally.
    pub forced_experts: BTreeMap<usize, Tensor>,
    /// Labels `[batch, seq]` (any integer dtype; -100 ignores a position): the pass then
    /// returns the causal-LM loss ([`ForwardOutput::loss`](crate::ForwardOutput::loss)). Needs [`LogitsMode::All`].
    pub labels: Option<Tensor>,
    /// Which hidden states to return ([`ForwardOutput::hidden_states`](crate::ForwardOutput::hidden_states)), by index
    /// `0..=num_hidden_layers` (negatives count from the end).
    pub output_hidden_states: Selection,
    /// Which layers' attention probabilities to return ([`ForwardOutput::attentions`](crate::ForwardOutput::attentions)), by
    /// layer index (negatives count from the end). Those layers attend on the eager path.
    pub output_attentions: Selection,
    /// Which sites' outputs to record ([`ForwardOutput::records`](crate::ForwardOutput::records)), by site name or regex.
    pub recorders: Recorders,
    /// Values for the modules that read them on this call (a LoRA projection's adapter choice,
    /// say): handed to every module through [`PassContext::extension`](crate::decoder::PassContext::extension).
    pub extensions: Extensions,
}
