#![warn(missing_docs)]
//! Llama, Qwen2, Qwen2-MoE, Qwen3 and Qwen3-MoE on candle, built from patchable sites.
//!
//! - [`decoder`]: the shared contracts (slots) every family's layers fill — attention, MLP,
//!   norm, rotary embedding, decoder layer, router, experts, sparse MoE block — with one
//!   config view ([`DecoderConfig`](decoder::DecoderConfig)) and explicit forward contexts,
//!   so one replacement serves several families; plus the building blocks, the attention
//!   kernel and the KV cache.
//! - [`llama`], [`qwen2`], [`qwen2_moe`], [`qwen3`], [`qwen3_moe`]: the families; every layer type is a
//!   site named as upstream (`LlamaAttention`, `Qwen3MoeTopKRouter`, ...).
//! - [`ops`]: the operations layers compute with, each choosing between the CPU kernels
//!   ([`kernels`]) and candle's differentiable ops in one place; [`loss`]: the training losses.
//! - [`AutoModelForCausalLM`]: load (`from_pretrained`) or create (`from_config`) a model of
//!   whichever linked family a config names; families register at link time ([`family`]).
//! - [`CausalLM`]: forward with padding masks and a KV cache, [`generate`](CausalLM::generate),
//!   [`explain`](CausalLM::explain).
//! - [`routing`]: recorded MoE routing, ready to replay exactly in a later pass; [`rollouts`]:
//!   rollouts from vLLM and SGLang as one padded training batch, and the rollout-vs-trainer
//!   routing report.
//!
//! ```
//! use patchwork_models::{AutoModelForCausalLM, GenerationConfig, LoadOptions};
//! let config = serde_json::json!({
//!     "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
//!     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
//! });
//! let model = AutoModelForCausalLM::from_config(&config, &LoadOptions::default())?;
//! let out = model.generate(&[vec![1, 2, 3]], &GenerationConfig::greedy(5))?;
//! assert_eq!(out.sequences[0].len(), 8);
//! # Ok::<(), patchwork_models::Error>(())
//! ```

mod auto;
mod causal_lm;
pub mod compare;
pub mod decoder;
mod error;
mod explain;
pub mod family;
mod generation;
pub mod implementations;
/// The CPU kernels the operations run on (the `patchwork-kernels` crate).
pub use patchwork_kernels as kernels;
pub mod llama;
mod load_checks;
mod load_options;
pub mod loss;
pub mod ops;
pub mod qwen2;
pub mod qwen2_moe;
pub mod qwen3;
pub mod qwen3_moe;
pub mod replacements;
pub mod rollouts;
pub mod routing;

pub use auto::{AutoModelForCausalLM, ForCausalLM};
pub use causal_lm::{CausalLM, ForwardOptions, ForwardOutput, LogitsMode};
pub use error::{Error, Result};
pub use explain::ModelExplain;
pub use family::{ModelFamily, RegisteredFamily};
pub use generation::{Generation, GenerationConfig, GenerationDefaults, Sampling};
pub use load_options::LoadOptions;

/// What writing a replacement for these models needs, in one import:
/// `use patchwork_models::prelude::*;` (patch-core's prelude, the slots with their arguments
/// and contexts, the building blocks, the entry points).
pub mod prelude {
    pub use candle_core::Tensor;
    pub use patch_core::prelude::*;

    pub use crate::decoder::{
        Attention, AttentionArgs, Children, DecoderConfig, DecoderLayer, DecoderLayerArgs,
        Embedding, EmbeddingArgs, Experts, FeedForward, FusedProjections, GatedMlp, LayerContext,
        LayerOutput, Linear, Mlp, MlpArgs, MoeArgs, MoeOutput, Norm, NormArgs, PassContext,
        PreNormLayer, Projection, ProjectionArgs, RmsNorm, RotaryArgs, RotaryEmbedding, Router,
        RouterOutput, SelfAttention, SparseMoe, SparseMoeBlock, StackedExperts, TokenEmbedding,
        TopKRouter, attend, linear, projection,
    };
    pub use crate::{
        AutoModelForCausalLM, CausalLM, ForwardOptions, ForwardOutput, GenerationConfig,
        LoadOptions,
    };
    pub use patch_core::{PatchKey, Result, named_modules};
}

/// Registers a function as a named attention implementation at link time:
/// `#[attention_implementation("my_attention", gradients, weights)]` on a
/// `fn(&AttentionInput<'_>) -> candle_core::Result<AttentionOutput>` (see [`implementations`]).
pub use patchwork_models_macros::attention_implementation;

/// Registers a function as a named routed-experts implementation at link time:
/// `#[experts_implementation("my_experts", gradients)]` on a
/// `fn(&ExpertsInput<'_>) -> candle_core::Result<Tensor>` (see [`implementations`]).
pub use patchwork_models_macros::experts_implementation;

#[doc(hidden)]
pub mod fuzzing;

/// Not public API: what the macros expand to.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
