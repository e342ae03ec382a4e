//! The decoder layer slot, what it returns, and what sits in its feed-forward position.

use candle_core::Tensor;
use patch_core::{Module, Observed, ObservedSite, Slot};

use crate::decoder::config::DecoderConfig;
use crate::decoder::context::LayerContext;
use crate::decoder::mlp::Mlp;
use crate::decoder::moe::SparseMoe;
use crate::decoder::outputs::{LayerOutput, RouterOutput};

/// The decoder layer slot. Its children (`self_attn`, `mlp`, the norms) are listed by the
/// module itself ([`patch_core::Module::children`]), what
/// [`CausalLM::named_modules`](crate::CausalLM::named_modules) walks.
pub trait DecoderLayer: Module {
    /// Runs the layer on `hidden_states` (`[batch, seq, hidden]`).
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<LayerOutput>;
}

/// What every decoder layer constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct DecoderLayerArgs<'a> {
    /// The model's config view.
    pub config: &'a DecoderConfig,
    /// Index of the layer.
    pub layer_idx: usize,
}

impl Slot for dyn DecoderLayer {
    const NAME: &'static str = "DecoderLayer";
    type Args<'a> = DecoderLayerArgs<'a>;

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}

/// What sits in a decoder layer's feed-forward position: a dense MLP or a sparse MoE block
/// (chosen per layer by [`DecoderConfig::feed_forward_kind`]).
pub enum FeedForward {
    /// A dense MLP.
    Dense(Box<dyn Mlp>),
    /// A mixture-of-experts block.
    Sparse(Box<dyn SparseMoe>),
}

impl FeedForward {
    /// The module, whichever kind it is.
    pub fn as_module(&self) -> &dyn Module {
        match self {
            FeedForward::Dense(m) => &**m,
            FeedForward::Sparse(m) => &**m,
        }
    }

    /// Applies it; a sparse block also returns its routing.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext<'_>,
    ) -> candle_core::Result<(Tensor, Option<RouterOutput>)> {
        match self {
            FeedForward::Dense(mlp) => Ok((mlp.forward(x, ctx.pass)?, None)),
            FeedForward::Sparse(moe) => {
                let out = moe.forward(x, ctx)?;
                Ok((out.hidden_states, Some(out.router)))
            }
        }
    }
}
