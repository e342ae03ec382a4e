//! The pre-norm residual decoder layer of every family here.

use candle_core::Tensor;
use patch_core::{Builder, Module, Result};

use crate::decoder::attention::{Attention, AttentionArgs};
use crate::decoder::children::Children;
use crate::decoder::context::LayerContext;
use crate::decoder::layer::{DecoderLayerArgs, FeedForward};
use crate::decoder::norm::{Norm, NormArgs};
use crate::decoder::outputs::LayerOutput;
use crate::decoder::sites::DecoderSites;
use crate::ops::add_scaled;

/// `h = x + attn(norm1(x))`, then `h + ff(norm2(h))`.
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
    /// Builds `self_attn`, `mlp`, `input_layernorm` and `post_attention_layernorm` under `b` as
    /// `S`'s sites (the order transformers' decoder layers create them in).
    pub fn load<S: DecoderSites>(b: &Builder, args: DecoderLayerArgs<'_>) -> Result<Self> {
        let config = args.config;
        let norm = NormArgs {
            config,
            dim: config.hidden_size,
        };
        Ok(Self {
            self_attn: b.pp("self_attn").build::<S::Attention>(AttentionArgs {
                config,
                layer_idx: args.layer_idx,
            })?,
            mlp: S::feed_forward(&b.pp("mlp"), args)?,
            input_layernorm: b.pp("input_layernorm").build::<S::Norm>(norm)?,
            post_attention_layernorm: b.pp("post_attention_layernorm").build::<S::Norm>(norm)?,
        })
    }

    /// Runs the layer.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<LayerOutput> {
        let residual = hidden_states;
        let h = self.input_layernorm.forward(hidden_states, ctx.pass)?;
        let h = self.self_attn.forward(&h, ctx)?;
        let h = add_scaled(residual, &h, None)?;
        let residual = &h;
        let x = self.post_attention_layernorm.forward(&h, ctx.pass)?;
        let (x, router) = self.mlp.forward(&x, ctx)?;
        Ok(LayerOutput {
            hidden_states: add_scaled(residual, &x, None)?,
            router,
        })
    }
}

impl Children for PreNormLayer {
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        visit("self_attn", &*self.self_attn);
        visit("mlp", self.mlp.as_module());
        visit("input_layernorm", &*self.input_layernorm);
        visit("post_attention_layernorm", &*self.post_attention_layernorm);
    }
}
