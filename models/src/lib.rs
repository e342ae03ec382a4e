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
mod for_causal_lm;
mod generation;
pub mod implementations;
/// The CPU kernels the operations run on (the `patchwork-kernels` crate).
pub use patchwork_kernels as kernels;
pub mod llama;
mod load_checks;
mod load_options;
mod loading;
pub mod loss;
pub mod ops;
pub mod qwen2;
pub mod qwen2_moe;
pub mod qwen3;
pub mod qwen3_moe;
pub mod replacements;
pub mod rollouts;
pub mod routing;

pub use auto::AutoModelForCausalLM;
pub use causal_lm::{CausalLM, ForwardOptions, ForwardOutput, LogitsMode};
pub use error::{Error, Result};
pub use explain::ModelExplain;
pub use family::{ModelFamily, RegisteredFamily};
pub use for_causal_lm::ForCausalLM;
pub use generation::{Generation, GenerationConfig, GenerationDefaults, Sampling};
pub use load_options::LoadOptions;
pub use loading::{PackedPatches, model_location};

/// What writing a replacement for these models needs, in one import:
/// `use patchwork_models::prelude::*;` (patch-core's prelude and `Result`, the slots with
/// their arguments and contexts, the building blocks, the weight transforms a replacement
/// carries, the entry points). A family's site types come from its module
/// (`patchwork_models::qwen3::Qwen3Attention`).
///
/// The three kinds of replacement, with nothing else imported:
///
/// ```
/// use patchwork_models::prelude::*;
/// use patchwork_models::qwen3::Qwen3Attention;
///
/// // 1. One site, wrapped: `#[patch(Site)]` writes `Build` (the site's own constructor) and
/// //    `Deref`; the site's children stay listed (`q_norm`, `k_norm`, the projections).
/// #[patch(Qwen3Attention)]
/// pub struct LoggedQwen3Attention(Qwen3Attention);
/// impl Attention for LoggedQwen3Attention {
///     fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
///         self.0.forward(x, ctx)
///     }
/// }
///
/// // 2. Every family's attention (a pattern), wrapping what each site would build without it.
/// pub struct Scaled { inner: Box<dyn Attention> }
/// impl Build for Scaled {
///     type Slot = dyn Attention;
///     fn build(b: &Builder, args: AttentionArgs<'_>) -> Result<Box<dyn Attention>> {
///         Ok(Box::new(Self { inner: b.build_original(args)? }))
///     }
///     fn wraps(&self) -> Option<&dyn Module> { Some(&*self.inner) } // its children are listed
/// }
/// impl Attention for Scaled {
///     fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
///         self.inner.forward(x, ctx)? * 1.0
///     }
/// }
///
/// // 3. A new structure with its own weight layout: one fused gate/up tensor, carried as a
/// //    transform (the checkpoint's gate_proj and up_proj concatenated on load, split on save).
/// pub struct FusedMlp { gate_up: Linear, down: Linear, act: HiddenAct }
/// impl Build for FusedMlp {
///     type Slot = dyn Mlp;
///     fn build(b: &Builder, args: MlpArgs<'_>) -> Result<Box<dyn Mlp>> {
///         let (h, i, std) = (args.config.hidden_size, args.intermediate_size, args.config.initializer_range);
///         Ok(Box::new(Self {
///             gate_up: linear(b, "gate_up_proj", h, 2 * i, false, std)?,
///             down: linear(b, "down_proj", i, h, false, std)?,
///             act: args.config.hidden_act,
///         }))
///     }
///     fn transforms() -> Vec<Transform> {
///         vec![WeightConverter::new(["gate_proj", "up_proj"], ["gate_up_proj"], [Op::Concatenate { dim: 0 }]).into()]
///     }
///     fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
///         visit("gate_up_proj", &self.gate_up);
///         visit("down_proj", &self.down);
///     }
/// }
/// impl Mlp for FusedMlp {
///     fn forward(&self, x: &Tensor, _: &PassContext) -> candle_core::Result<Tensor> {
///         let gu = self.gate_up.forward(x)?.chunk(2, candle_core::D::Minus1)?;
///         self.down.forward(&(self.act.apply(&gu[0])? * &gu[1])?)
///     }
/// }
///
/// # fn main() -> patchwork_models::Result<()> {
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/qwen3-tiny");
/// let set = PatchSet::from_mapping([
///     (".*Attention$", Replacement::of::<Scaled>()),
///     ("Qwen3MLP", Replacement::of::<FusedMlp>()),
/// ])?;
/// let model = AutoModelForCausalLM::from_pretrained(dir, &LoadOptions::default().with_patches(set))?;
/// assert!(model.built_at("model.layers.0.self_attn")?.built::<Scaled>());
/// assert!(model.get_submodule("model.layers.0.self_attn.q_norm").is_ok());
/// assert!(model.get_submodule("model.layers.0.mlp.gate_up_proj").is_ok());
/// # Ok(()) }
/// ```
pub mod prelude {
    pub use candle_core::Tensor;
    pub use patch_core::prelude::*;

    pub use crate::decoder::HiddenAct;
    pub use crate::decoder::{
        Attention, AttentionArgs, Children, DecoderConfig, DecoderLayer, DecoderLayerArgs,
        Embedding, EmbeddingArgs, Experts, FeedForward, FusedProjections, GatedMlp, LayerContext,
        LayerOutput, Linear, Mlp, MlpArgs, MoeArgs, MoeOutput, Norm, NormArgs, PassContext,
        PreNormLayer, Projection, ProjectionArgs, RmsNorm, RotaryArgs, RotaryEmbedding, Router,
        RouterOutput, SelfAttention, SparseMoe, SparseMoeBlock, StackedExperts, TokenEmbedding,
        TopKRouter, attend, linear, projection,
    };
    pub use crate::ops::tokens_per_expert;
    pub use crate::{
        AutoModelForCausalLM, CausalLM, ForwardOptions, ForwardOutput, GenerationConfig,
        LoadOptions,
    };
    pub use patch_core::checkpoint::{Op, Transform, WeightConverter, WeightRenaming};
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
