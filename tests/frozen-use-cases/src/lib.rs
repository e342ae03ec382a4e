//! FROZEN: the upstream page's (`transformers/docs/source/*/monkey_patching.md`) use cases,
//! written once against patchwork 0.2.0, as a user's crate of patches writes them from the
//! README. Never edited afterwards except by applying a migration line of CHANGELOG.md (name
//! the line in the commit): a compile error or a failing test here is a break users meet, seen
//! the day it happens. New API goes in `tests/authoring`, not here.
//!
//! This file holds the replacements (the page's classes); `tests/registration.rs` and
//! `tests/weights_and_routing.rs` the blocks that use them, one test per code block of the
//! page.

use std::sync::atomic::{AtomicUsize, Ordering};

use patchwork_models::llama::LlamaAttention;
use patchwork_models::prelude::*;

/// How many times a [`CustomLlamaAttention`] ran.
pub static CUSTOM_LLAMA_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Quickstart: `class CustomLlamaAttention(LlamaAttention)` whose `forward` reports itself and
/// calls `super().forward`. Registered at link time for every `LlamaAttention`.
#[patch(LlamaAttention)]
pub struct CustomLlamaAttention(LlamaAttention);

impl Attention for CustomLlamaAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        CUSTOM_LLAMA_CALLS.fetch_add(1, Ordering::Relaxed);
        self.0.forward(x, ctx)
    }
}

/// How many times a [`CustomAttention`] ran.
pub static CUSTOM_CALLS: AtomicUsize = AtomicUsize::new(0);

/// `CustomAttention` of the registration and pattern blocks: one replacement for any family's
/// attention (registered by pattern), wrapping what each site would build without it.
pub struct CustomAttention {
    inner: Box<dyn Attention>,
}

impl Build for CustomAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Self {
            inner: b.build_original(args)?,
        }))
    }
    fn wraps(&self) -> Option<&dyn Module> {
        Some(&*self.inner)
    }
}

impl Attention for CustomAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        CUSTOM_CALLS.fetch_add(1, Ordering::Relaxed);
        self.inner.forward(x, ctx)
    }
}

/// The complete example's `ModuleListExperts` (and the registration block's
/// `SequentialExperts`): one `MoeMLP` per expert, loaded from the per-expert checkpoint keys,
/// each expert run over the tokens routed to it.
pub struct ModuleListExperts {
    experts: Vec<GatedMlp>,
}

impl Build for ModuleListExperts {
    type Slot = dyn Experts;
    fn build(b: &Builder, args: MoeArgs<'_>) -> Result<Box<dyn Experts>> {
        let mlp = MlpArgs::expert(args.config)?;
        let n = args.config.moe()?.num_experts;
        let experts = (0..n).map(|i| GatedMlp::load(&b.pp(i.to_string()), mlp));
        Ok(Box::new(Self {
            experts: experts.collect::<Result<_>>()?,
        }))
    }
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        for (i, expert) in self.experts.iter().enumerate() {
            expert.children(&mut |name, child| visit(&format!("{i}.{name}"), child));
        }
    }
}

impl Experts for ModuleListExperts {
    fn forward(
        &self,
        x: &Tensor,
        ids: &Tensor,
        w: &Tensor,
        pass: &PassContext,
    ) -> candle_core::Result<Tensor> {
        let mut out = x.zeros_like()?;
        for group in tokens_per_expert(ids, w, self.experts.len())? {
            let rows = x.index_select(&group.rows, 0)?;
            let y = self.experts[group.expert].forward_with(&rows, pass)?;
            out = out.index_add(&group.rows, &y.broadcast_mul(&group.weights)?, 0)?;
        }
        Ok(out)
    }
}

/// The complete example's `FusedQKVAttention` (and the weight-mismatch block's
/// `LlamaFusedAttention`): one `qkv_proj` for q, k and v. It asks for `qkv_proj`, which no
/// checkpoint has: a registered conversion mapping must make it.
pub struct FusedQkvAttention(SelfAttention);

impl Build for FusedQkvAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> Result<Box<dyn Attention>> {
        let c = args.config;
        let (hidden, d, std) = (c.hidden_size, c.head_dim, c.initializer_range);
        let (heads, kv) = (c.num_attention_heads, c.num_key_value_heads);
        let qkv = linear(b, "qkv_proj", hidden, (heads + 2 * kv) * d, c.qkv_bias, std)?;
        let o_proj = linear(b, "o_proj", heads * d, hidden, c.o_proj_bias, std)?;
        let attention = SelfAttention::from_fused(c, qkv, Box::new(o_proj), None, None)?;
        Ok(Box::new(Self(attention)))
    }
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        self.0.children(visit);
    }
}

impl Attention for FusedQkvAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.0.forward(x, ctx)
    }
}

/// The replay block's router after training moved it: it routes a transformed input (so it
/// chooses other experts), still the family's router underneath, which honours forced
/// experts as the page's `ReplayableQwen3MoeTopKRouter` does.
pub struct MovedRouter {
    inner: Box<dyn Router>,
}

impl Build for MovedRouter {
    type Slot = dyn Router;
    fn build(b: &Builder, args: MoeArgs<'_>) -> Result<Box<dyn Router>> {
        Ok(Box::new(Self {
            inner: b.build_original(args)?,
        }))
    }
    fn wraps(&self) -> Option<&dyn Module> {
        Some(&*self.inner)
    }
}

impl Router for MovedRouter {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput> {
        self.inner.forward(&(x.affine(-3.0, 0.0)? + x.sqr()?)?, ctx)
    }
}
