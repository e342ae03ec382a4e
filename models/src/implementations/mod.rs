//! How attention and routed experts compute, chosen by name (transformers'
//! `AttentionInterface` / `attn_implementation` and `ExpertsInterface` /
//! `experts_implementation`): the light way the upstream page recommends before a patch, for a
//! different computation over the same weights and structure.
//!
//! Built-ins: attention `"sdpa"` (the fused CPU kernel over the KV cache, the default) and
//! `"eager"` (candle's ops, differentiable, with probabilities); experts `"grouped_mm"`
//! (grouped dispatch on the CPU kernels, the default) and `"eager"` (a reference per-expert
//! loop on candle's ops, differentiable). Users add theirs at link time
//! ([`attention_implementation`](crate::attention_implementation) /
//! [`experts_implementation`](crate::experts_implementation) on a function) or at run time
//! ([`register_attention_implementation`]), globally, or for one model only
//! ([`CausalLM::register_attention_implementation`](crate::CausalLM::register_attention_implementation)).
//! A model picks one with [`LoadOptions::attn_implementation`](crate::LoadOptions) or the
//! config's `attn_implementation` key (`experts_implementation` likewise), and switches with
//! [`CausalLM::set_attn_implementation`](crate::CausalLM::set_attn_implementation), without
//! reloading anything.
//!
//! When a pass tracks gradients, an implementation that does not declare it supports them is
//! replaced by the `"eager"` one for that pass (and for attention probabilities asked for, by
//! one that returns them): the training path of one model is one of these implementations.

pub(crate) mod attention;
pub(crate) mod experts;
mod named;
mod selected;

pub use attention::{
    AttentionFn, AttentionImplementation, AttentionImplementationEntry, AttentionInput,
    AttentionOutput, register_attention_implementation,
};
pub use experts::{
    ExpertsFn, ExpertsImplementation, ExpertsImplementationEntry, ExpertsInput,
    register_experts_implementation,
};
pub use selected::Implementations;
