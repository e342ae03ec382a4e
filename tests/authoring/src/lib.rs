//! The upstream page's main use cases, written as a user crate writes them: each replacement in
//! the shortest form the API allows. Linked into `tests/authoring.rs` (`use authoring_patches as
//! _;`), whose every model is built with these link-time patches.

use std::sync::atomic::{AtomicUsize, Ordering};

use patchwork_models::implementations::{AttentionInput, AttentionOutput, ExpertsInput};
use patchwork_models::llama::{LlamaAttention, LlamaDecoderLayer};
use patchwork_models::ops::tokens_per_expert;
use patchwork_models::prelude::*;
use patchwork_models::qwen3_moe::Qwen3MoeExperts;

/// How many times a [`CountingAttention`] ran.
pub static ATTENTION_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Quickstart: every `LlamaAttention` replaced by one that counts its calls and delegates.
#[patch(LlamaAttention)]
pub struct CountingAttention(LlamaAttention);

impl Attention for CountingAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        ATTENTION_CALLS.fetch_add(1, Ordering::Relaxed);
        self.0.forward(x, ctx)
    }
}

/// A decoder layer replaced by a wrapper: its children (`self_attn`, `mlp`, the norms) stay
/// reachable through it, as a wrapper never hides what it wraps; the original layer is built
/// as usual, its attention patched above.
#[patch(LlamaDecoderLayer)]
pub struct WrappedLayer(LlamaDecoderLayer);

impl DecoderLayer for WrappedLayer {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<LayerOutput> {
        self.0.forward(x, ctx)
    }
}

/// ModuleList experts (one MLP per expert, loaded from the per-expert checkpoint keys as they
/// are, no conversion override needed) for Qwen3-MoE; the slot is checked against the site's.
#[patch(Qwen3MoeExperts)]
pub struct ModuleListExperts {
    experts: Vec<GatedMlp>,
}

impl Build for ModuleListExperts {
    type Slot = dyn Experts;
    fn build(b: &Builder, args: MoeArgs<'_>) -> patch_core::Result<Box<dyn Experts>> {
        let mlp = MlpArgs::expert(args.config)?;
        let n = args.config.moe()?.num_experts;
        let experts = (0..n).map(|i| GatedMlp::load(&b.pp(i.to_string()), mlp));
        Ok(Box::new(Self {
            experts: experts.collect::<patch_core::Result<_>>()?,
        }))
    }
}

impl Experts for ModuleListExperts {
    fn forward(
        &self,
        x: &Tensor,
        ids: &Tensor,
        w: &Tensor,
        _: &PassContext,
    ) -> candle_core::Result<Tensor> {
        let mut out = x.zeros_like()?;
        for group in tokens_per_expert(ids, w, self.experts.len())? {
            let y = self.experts[group.expert].forward(&x.index_select(&group.rows, 0)?)?;
            out = out.index_add(&group.rows, &y.broadcast_mul(&group.weights)?, 0)?;
        }
        Ok(out)
    }
}

/// How many times [`counted_attention`] ran.
pub static CUSTOM_ATTENTION_CALLS: AtomicUsize = AtomicUsize::new(0);

/// An attention implementation of this crate, registered at link time: the textbook softmax
/// attention on candle's ops (so it declares gradients and probabilities), counting its calls.
#[patchwork_models::attention_implementation("counted", gradients, weights)]
pub fn counted_attention(input: &AttentionInput<'_>) -> candle_core::Result<AttentionOutput> {
    CUSTOM_ATTENTION_CALLS.fetch_add(1, Ordering::Relaxed);
    let (b, t, heads, _) = input.q.dims4()?;
    let k = input.kv.keys.narrow(2, 0, input.kv.len)?;
    let v = input.kv.values.narrow(2, 0, input.kv.len)?;
    let (y, weights) = patchwork_models::ops::eager_attention(
        &input.q.transpose(1, 2)?,
        &k,
        &v,
        Some(input.mask),
        input.scale,
        input.want_weights,
    )?;
    let output = y.transpose(1, 2)?.reshape((b, t, heads * v.dim(3)?))?;
    Ok(AttentionOutput { output, weights })
}

/// A routed-experts implementation of this crate: the reference per-expert loop.
#[patchwork_models::experts_implementation("looped")]
pub fn looped_experts(input: &ExpertsInput<'_>) -> candle_core::Result<Tensor> {
    patchwork_models::ops::experts_per_expert_loop(
        input.x,
        input.gate_up,
        input.down,
        input.indices,
        input.weights,
        input.act,
    )
}
