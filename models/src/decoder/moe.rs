//! The mixture-of-experts slots: the router, the experts, and the sparse block that combines
//! them; what they return and receive.

use candle_core::Tensor;
use patch_core::{Module, Observed, ObservedSite, Slot};

use crate::decoder::capture::PassContext;
use crate::decoder::config::DecoderConfig;
use crate::decoder::context::LayerContext;
use crate::decoder::outputs::{MoeOutput, RouterOutput};

/// The router slot: chooses `top_k` experts per token.
pub trait Router: Module {
    /// Routes `x` (`[tokens, hidden]`); honours `ctx.forced_experts` when set.
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput>;
}

/// The experts slot: runs each token through its chosen experts and sums the results with
/// their routing weights.
pub trait Experts: Module {
    /// `x` `[tokens, hidden]`, `indices` `[tokens, top_k]` (u32), `weights` `[tokens, top_k]`;
    /// returns `[tokens, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
        pass: &PassContext,
    ) -> candle_core::Result<Tensor>;
}

/// The sparse MoE block slot: sits in a decoder layer's feed-forward position.
pub trait SparseMoe: Module {
    /// Applies the block to `x` (`[batch, seq, hidden]`).
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<MoeOutput>;
}

/// What every router, experts and sparse-block constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct MoeArgs<'a> {
    /// The model's config view (its `moe` part is set).
    pub config: &'a DecoderConfig,
    /// Index of the layer.
    pub layer_idx: usize,
}

impl Slot for dyn Router {
    const NAME: &'static str = "Router";
    type Args<'a> = MoeArgs<'a>;

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}

impl Slot for dyn Experts {
    const NAME: &'static str = "Experts";
    type Args<'a> = MoeArgs<'a>;

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}

impl Slot for dyn SparseMoe {
    const NAME: &'static str = "SparseMoe";
    type Args<'a> = MoeArgs<'a>;

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}
